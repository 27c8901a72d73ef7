"""The controller's configuration file (see config/controller.example.yaml).

Loaded like every other file managers edit: unknown keys, wrong types and bad values
are reported together as file:line:col. Relative paths (fleet, playlists, private_key,
content_dir, and the database file of a sqlite:/// store URL) are resolved against the
folder of the configuration file, so the controller finds the same files wherever it is
started from. The files themselves are checked by their own loaders (the fleet, the
playlists) or created on demand (the key by `loa-controller keygen`, the content
folder on first use).
"""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from controller.voices import PLACEHOLDERS, Voice, catalogue, check_voice_name
from protocol.config_errors import ConfigError
from protocol.durations import Duration
from protocol.l10n import N_, _
from protocol.mqtt import BrokerAddress
from protocol.topics import check_id
from protocol.validation import suggest, validate
from protocol.yamlload import load_yaml


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is None or value.is_absolute():
        return value
    return Path(os.path.normpath(Path(base) / value))


ConfigPath = Annotated[
    Path,
    AfterValidator(_relative_to_config),
    Field(json_schema_extra={"description": "a path, relative to this file's folder"}),
]


def _broker_url(value: str) -> str:
    BrokerAddress.from_url(value)  # raises ValueError with an example of a good URL
    return value


def _store_url(value: str, info: ValidationInfo) -> str:
    scheme = urlsplit(value).scheme
    if scheme not in ("sqlite", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        raise ValueError(_(
            "{value!r}: write sqlite:///relative/file.db, sqlite:////absolute/file.db or "
            "postgresql://user@host/database", value=value,
        ))
    base = (info.context or {}).get("base_dir")
    prefix = "sqlite:///"
    if scheme == "sqlite" and base is not None and value.startswith(prefix):
        file = value.removeprefix(prefix)
        if file and file != ":memory:" and not file.startswith("/"):
            return prefix + os.path.normpath(Path(base) / file)
    return value


def _timezone(value: str) -> str:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        close = suggest(value, zoneinfo.available_timezones())
        hint = _("did you mean {close!r}? ", close=close) if close else ""
        raise ValueError(_(
            "unknown time zone {value!r}: {hint}write an IANA zone such as Asia/Ho_Chi_Minh",
            value=value, hint=hint,
        )) from None
    return value


class _Strict(BaseModel):
    # Field docstrings become descriptions in the JSON Schema (editor hover text).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class AudioConfig(_Strict):
    """How bulletins are prepared for the clusters (once, on the controller)."""

    bitrate_kbps: Annotated[int, Field(ge=6, le=256)] = 24
    """Opus bit rate; 16-32 is clear speech, more costs 4G data on every cluster."""
    sample_rate_hz: Literal[8000, 12000, 16000, 24000, 48000] = 16000
    """Sample rate of the encoded audio."""
    chunk_size_kb: Annotated[int, Field(ge=1, le=1024)] = 64
    """Size of the pieces audio is sent in."""
    loudness_lufs: Annotated[float, Field(ge=-40, le=-5)] | None = -16.0
    """Integrated loudness (EBU R128) every bulletin is brought to; null keeps it as it came."""
    true_peak_dbtp: Annotated[float, Field(ge=-9, le=0)] = -1.0
    """True-peak ceiling (dBTP), measured on the encoded audio decoded again."""


def _feed_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(_(
            "{value!r}: a CAP feed is fetched over HTTP; write http://host/path or "
            "https://host/path (for files on this machine use watch_dir)", value=value,
        ))
    return value


def _tile_url(value: str) -> str:
    parts = urlsplit(value.replace("{", "").replace("}", ""))
    if parts.scheme not in ("http", "https") or not parts.hostname or not all(
        key in value for key in ("{z}", "{x}", "{y}")
    ):
        raise ValueError(_(
            "{value!r}: write the tile server's URL with {z}, {x} and {y} in it, "
            "e.g. {example}", value=value, z="{z}", x="{x}", y="{y}",
            example="https://tiles.example.vn/{z}/{x}/{y}.png",
        ))
    return value


def _distinct_feeds(value: list[CapFeedConfig]) -> list[CapFeedConfig]:
    urls = [f.url for f in value]
    twice = sorted({u for u in urls if urls.count(u) > 1})
    if twice:
        raise ValueError(
            _("{urls} is listed more than once; keep one entry", urls=", ".join(twice))
        )
    return value


class CapFeedConfig(_Strict):
    """One address polled for CAP alerts (controller.cap_feed)."""

    url: Annotated[str, AfterValidator(_feed_url)]
    """http:// or https://: a CAP 1.2 <alert>, or an Atom or RSS feed of them."""
    every_s: Annotated[float, Field(ge=10, le=86400)] = 60
    """Seconds between two polls of this address."""
    timeout_s: Annotated[float, Field(gt=0, le=120)] = 10
    """Seconds to wait for the server before giving up until the next poll."""


SEVERITIES = ("Extreme", "Severe", "Moderate", "Minor", "Unknown")
URGENCIES = ("Immediate", "Expected", "Future", "Past", "Unknown")
CERTAINTIES = ("Observed", "Likely", "Possible", "Unlikely", "Unknown")


def _cap_values(allowed: tuple[str, ...]) -> Any:
    def check(values: list[str]) -> list[str]:
        wrong = [v for v in values if v != "*" and v not in allowed]
        if wrong:
            raise ValueError(_(
                "{wrong}: CAP 1.2 knows {allowed} (or * for any)",
                wrong=", ".join(map(repr, wrong)), allowed=", ".join(allowed),
            ))
        return values

    return AfterValidator(check)


class CapRule(_Strict):
    """One row of the CAP policy: alerts whose severity, urgency and certainty are listed
    (CAP 1.2's words; * for any) are aired at this level, so many times, this often."""

    severity: Annotated[list[str], Field(min_length=1), _cap_values(SEVERITIES)]
    urgency: Annotated[list[str], Field(min_length=1), _cap_values(URGENCIES)]
    certainty: Annotated[list[str], Field(min_length=1), _cap_values(CERTAINTIES)]
    action: Literal["send", "approve"]
    """send: aired at once (or when it takes effect); approve: waits for a manager."""
    level: Literal["emergency", "priority"] = "emergency"
    repeat: Annotated[int, Field(ge=1, le=10)] | None = None
    """Times the text is spoken in one airing (default: the cap section's repeat)."""
    every: Duration | None = None
    """Aired again this often until the alert's <expires> (none: once)."""


def _default_cap_rules() -> list[CapRule]:
    return [
        CapRule(severity=["Extreme", "Severe"], urgency=["Immediate", "Expected"],
                certainty=["Observed", "Likely"], action="send", level="emergency"),
        CapRule(severity=["*"], urgency=["*"], certainty=["*"], action="approve",
                level="priority"),
    ]  # fmt: skip


class CapSender(_Strict):
    """A warning authority the province takes alerts from."""

    sender: Annotated[str, Field(min_length=1, max_length=200)]
    """Its CAP <sender>, or a pattern of them (shell-style: *, ?), e.g. *@kttv.gov.vn."""
    wide_areas: bool = False
    """Trusted to send alerts over more than max_share of the fleet, or several provinces,
    without a manager's approval."""
    certificate: ConfigPath | None = None
    """A PEM certificate: its alerts must carry an XML Signature this certificate made."""


class CapConfig(_Strict):
    """CAP 1.2 alerts taken in by POST /api/v1/cap (controller.cap)."""

    policy: Literal["send", "approve"] = "send"
    """send: each alert does what the rules say (at once, when it takes effect, or after a
    manager's approval); approve: every alert waits for a manager."""
    repeat: Annotated[int, Field(ge=1, le=10)] = 2
    """How many times the alert's text is spoken, where a rule does not say."""
    rules: Annotated[list[CapRule], Field(min_length=1)] = Field(
        default_factory=_default_cap_rules
    )
    """The policy table, first match wins (docs/cap.md); an alert no rule matches waits
    for a manager."""
    senders: list[CapSender] = Field(default_factory=list)
    """The warning authorities taken in (none listed: any sender, none trusted for wide
    areas)."""
    unknown_senders: Literal["refuse", "approve"] = "refuse"
    """When senders are listed, what an alert from another sender gets."""
    max_share: Annotated[float, Field(gt=0, le=1)] = 0.5
    """An alert whose area takes more than this share of the fleet waits for a manager,
    unless its sender is trusted for wide areas."""
    future: Literal["hold", "now"] = "hold"
    """An alert whose <effective> or <onset> is ahead: held until then, or aired at once."""
    watch_dir: ConfigPath | None = None
    """A folder where a feed fetcher (or a person) drops CAP XML files to take in."""
    feeds: Annotated[list[CapFeedConfig], AfterValidator(_distinct_feeds)] = Field(
        default_factory=list
    )
    """Addresses polled for CAP alerts: a CAP document, or an Atom or RSS feed of them."""


def _proxy_network(value: str) -> str:
    try:
        ipaddress.ip_network(value)
    except ValueError:
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(_(
                "{value!r} is not an address or a network: write e.g. 127.0.0.1, ::1 or "
                "10.8.0.0/24 (the proxy's address as the controller sees it)", value=value,
            )) from None
        raise ValueError(
            _("{value!r} has bits set past its prefix: write {net}", value=value, net=net)
        ) from None
    return value


class WebConfig(_Strict):
    """The web app and JSON API for urgent announcements, served by `loa-controller run`."""

    listen: str = "127.0.0.1"
    """The address to listen on; 0.0.0.0 for every interface (serve it over TLS then)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    """The TCP port of the web app."""
    users_file: ConfigPath
    """The users and their roles (`loa-controller user add` writes it)."""
    work_dir: ConfigPath
    """Where uploads and speech are kept while an announcement is prepared."""
    tls_cert_file: ConfigPath | None = None
    """The web app's TLS certificate (PEM, its chain after it); with tls_key_file the app is
    served over HTTPS only."""
    tls_key_file: ConfigPath | None = None
    """The private key of tls_cert_file (PEM, readable by the controller only)."""
    trusted_proxies: list[Annotated[str, AfterValidator(_proxy_network)]] = []
    """Addresses or networks of reverse proxies in front of the app: their X-Forwarded-For
    and X-Forwarded-Proto are believed, nobody else's. None by default."""
    secure_cookies: bool = False
    """true: cookies carry Secure even on requests that came over plain HTTP (a proxy that
    ends TLS but is not in trusted_proxies). Over HTTPS they always do."""
    tts_voice: str | None = Field(None, json_schema_extra={"deprecated": True})
    """Moved: voices are named in the fleet file and defined under `speech.voices`."""
    cap: CapConfig | None = None
    """CAP 1.2 alert intake; left out: off."""
    map_tiles: Annotated[str, AfterValidator(_tile_url)] | None = None
    """A tile server for the fleet page's map, as a URL template:
    https://tiles.example.vn/{z}/{x}/{y}.png. Left out: the map is drawn from the
    clusters' coordinates alone (no network needed)."""
    map_attribution: Annotated[str, Field(max_length=300)] = ""
    """The credit the tile server asks to show on the map."""

    @model_validator(mode="after")
    def _tls_pair(self) -> WebConfig:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            given, missing = (
                ("tls_cert_file", "tls_key_file") if self.tls_key_file is None
                else ("tls_key_file", "tls_cert_file")
            )
            raise ValueError(_(
                "{given} is set but {missing} is not: give both to serve HTTPS, or neither",
                given=given, missing=missing,
            ))
        return self

    @property
    def tls(self) -> tuple[Path, Path] | None:
        """(certificate, key) when the app is served over HTTPS."""
        if self.tls_cert_file is None or self.tls_key_file is None:
            return None
        return self.tls_cert_file, self.tls_key_file

    @property
    def proxy_networks(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p) for p in self.trusted_proxies]


    @field_validator("tts_voice")
    @classmethod
    def _tts_voice_moved(cls, value: str | None) -> str | None:
        if value is not None:
            raise ValueError(_(
                "tts_voice has moved: name the voice in the fleet file (voice: mien-nam on "
                "the province or a commune) and remove tts_voice here; other voices are "
                "defined under `speech.voices` (docs/speech.md)"
            ))
        return value


class VoiceConfig(_Strict):
    """A voice the fleet file may name (controller.voices)."""

    engine: Literal["espeak-ng", "command"] = "espeak-ng"
    """espeak-ng, or command: any program that reads the text on its input and writes WAV."""
    voice: Annotated[str, Field(min_length=1, max_length=64)] = "vi"
    """espeak-ng's voice: vi (Northern), vi-vn-x-central, vi-vn-x-south; for a command,
    what {voice} is replaced with."""
    speed: Annotated[int, Field(ge=80, le=300)] = 150
    """Words per minute (espeak-ng -s); {speed} for a command."""
    pitch: Annotated[int, Field(ge=0, le=99)] = 50
    """0-99 (espeak-ng -p); {pitch} for a command."""
    command: Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1)] | None = (
        None
    )
    """For engine: command, the program and its arguments, e.g. [/opt/tts/speak, --out,
    "{out}"]; {out} is the WAV file to write (without it, WAV is read from its output),
    {voice}, {speed} and {pitch} are replaced; the text comes on its standard input."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 120
    """How long the program may take to speak one announcement."""

    @model_validator(mode="after")
    def _command_engine(self) -> VoiceConfig:
        if self.engine == "command" and not self.command:
            raise ValueError(_(
                'engine: command needs `command: [program, arguments...]`, e.g. {example}',
                example='[/opt/tts/speak, --out, "{out}"]',
            ))
        if self.engine == "espeak-ng" and self.command:
            raise ValueError(
                _("`command` is for engine: command; espeak-ng needs only `voice`")
            )
        for arg in self.command or []:
            for found in re.findall(r"\{[^{}]*\}", arg):
                if found not in PLACEHOLDERS:
                    raise ValueError(_(
                        "command: {found} is not replaced; write one of {placeholders}",
                        found=found, placeholders=", ".join(PLACEHOLDERS),
                    ))
        return self

    def as_voice(self, name: str) -> Voice:
        return Voice(
            name=name, engine=self.engine, voice=self.voice, speed=self.speed, pitch=self.pitch,
            command=tuple(self.command or ()), timeout_s=self.timeout_s,
        )


class NumbersConfig(_Strict):
    """The number words that differ between regions (controller.vi_numbers)."""

    zero_tens: Literal["linh", "lẻ"] = "linh"
    """105: một trăm linh năm (linh) or một trăm lẻ năm (lẻ)."""
    thousand: Literal["nghìn", "ngàn"] = "nghìn"
    """1.000: một nghìn (nghìn) or một ngàn (ngàn)."""


VoiceName = Annotated[str, AfterValidator(check_voice_name)]


class SpeechConfig(_Strict):
    """How typed text is spoken (docs/speech.md)."""

    voices: dict[VoiceName, VoiceConfig] = {}
    """Voices the fleet file may name, besides the built-in mien-bac, mien-trung and
    mien-nam (a voice here with one of their names replaces it)."""
    numbers: NumbersConfig = NumbersConfig()
    """linh or lẻ, nghìn or ngàn."""
    abbreviations: list[ConfigPath] = []
    """Files of the province's abbreviations (abbreviations: {ABBR: words}), read after
    the shipped dictionary; an entry here replaces the shipped one."""

    def voice_table(self) -> dict[str, Voice]:
        return {name: v.as_voice(name) for name, v in self.voices.items()}

    def voice_names(self) -> list[str]:
        """Every voice the fleet file may name: the built-in ones and these."""
        return sorted(catalogue(self.voice_table()))


def _agent_broker_url(value: str) -> str:
    address = BrokerAddress.from_url(value)  # raises ValueError with an example of a good URL
    if address.username or address.password:
        raise ValueError(_(
            "{value!r}: write the address only (mqtts://host:port); every cluster gets its own "
            "login in its bundle", value=value,
        ))
    return value


def _account_name(value: str) -> str:
    check_id(value, N_("the controller's broker user name"))
    return value


class ProvisioningConfig(_Strict):
    """Cluster bundles and broker accounts (`loa-controller provision`, `broker-config`)."""

    agent_broker_url: Annotated[str, AfterValidator(_agent_broker_url)] | None = None
    """The broker as the clusters reach it (mqtts://broker.example.vn:8883); the
    controller's broker_url, without its login, if left out."""
    ca_file: ConfigPath | None = None
    """The broker's CA certificate, copied into every bundle when agent_broker_url is
    mqtts://; broker_ca_file if left out (none: the boxes trust the system's CAs)."""
    credentials_file: ConfigPath | None = None
    """The broker logins of the clusters and of the controller (mode 0600); if left out,
    broker-credentials.yaml in the folder of private_key."""
    controller_username: Annotated[str, AfterValidator(_account_name)] = "loa-controller"
    """The controller's own broker login; it logs in with it when broker_url names none."""


def _web_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError(_(
            "advertised_url must be the address other controllers reach this one's web app "
            "at, such as http://10.0.0.5:8080 (http:// or https://)"
        ))
    return value.rstrip("/") if value else value


class LeadershipConfig(_Strict):
    """Several controllers on one store: one leads (docs/operations.md, Two controllers)."""

    ttl: Annotated[
        Duration,
        Field(ge=timedelta(seconds=1), le=timedelta(minutes=5),
              json_schema_extra={"default": "10s"}),
    ] = timedelta(seconds=10)
    """How long the leader's lease lasts without renewal: a standby takes over at most
    this long (plus about a second) after the leader dies; the leader renews it every
    third of it and steps down by itself when it could not for four fifths of it."""
    advertised_url: Annotated[str | None, AfterValidator(_web_url)] = None
    """Where the other controllers reach this one's web app, to forward the sends made on
    them while this one leads (http://10.0.0.5:8080). Left out: http://<host name>:<web
    port>."""


class ControllerConfig(_Strict):
    """config/controller.yaml."""

    broker_url: Annotated[str, AfterValidator(_broker_url)] = "mqtt://127.0.0.1:1883"
    """mqtt://[user[:password]@]host[:port], or mqtts:// for TLS."""
    broker_fallback_urls: Annotated[
        list[Annotated[str, AfterValidator(_broker_url)]], Field(max_length=16)
    ] = Field(default_factory=list)
    """Other nodes of the same broker cluster, tried in turn when the one in use cannot
    be reached (broker_url's login and CA; docs/operations.md, broker clusters)."""
    broker_ca_file: ConfigPath | None = None
    """For mqtts://: the CA certificate (PEM) that signed the broker's certificate; only
    it is trusted. The system's CAs if left out."""
    client_id: Annotated[str, Field(min_length=1, max_length=64)] = "loa-controller"
    """The MQTT client id of this controller."""
    fleet: ConfigPath
    """The fleet file: the administrative tree and its clusters."""
    playlists: Annotated[list[ConfigPath], Field(min_length=1)]
    """Playlist files, or folders of them."""
    holidays: ConfigPath | None = None
    """The holiday calendar file (lịch nghỉ lễ) that playlists skip or air on
    (`skip: holidays`); the national public holidays built into Loa if left out."""
    timezone: Annotated[str, AfterValidator(_timezone)] = "Asia/Ho_Chi_Minh"
    """The IANA time zone of the times in the playlists."""
    # Four slashes: an absolute path (three would be relative to this file's folder).
    store_url: Annotated[str, AfterValidator(_store_url)] = "sqlite:////var/loa/controller.db"
    """sqlite:///relative.db, sqlite:////absolute.db or postgresql://user@host/db."""
    private_key: ConfigPath
    """The Ed25519 key that signs commands (created by `loa-controller keygen`)."""
    content_dir: ConfigPath
    """Where prepared audio is kept."""
    lead_time: Annotated[
        Duration,
        Field(ge=timedelta(0), le=timedelta(hours=24), json_schema_extra={"default": "30m"}),
    ] = timedelta(minutes=30)
    """How long before its start a scheduled play is sent to the clusters."""
    command_ttl: Annotated[
        Duration,
        Field(gt=timedelta(0), le=timedelta(days=7), json_schema_extra={"default": "2h"}),
    ] = timedelta(hours=2)
    """How long a command stays valid after it is issued."""
    membership_republish: Annotated[
        Duration,
        Field(ge=timedelta(0), le=timedelta(days=1), json_schema_extra={"default": "10m"}),
    ] = timedelta(minutes=10)
    """How often every cluster's membership is published again on the broker (it is also
    published after every reconnection); 0s: only then."""
    urgent_expiry: Annotated[
        Duration,
        Field(ge=timedelta(seconds=1), le=timedelta(hours=1), json_schema_extra={"default": "3m"}),
    ] = timedelta(minutes=3)
    """How long after it is sent an urgent announcement may still start: its command
    expires then, and a cluster that gets it later (it was offline, the broker was down)
    reports it `expired` and plays nothing."""
    events_retention_days: Annotated[int, Field(ge=31, le=36500)] = 1827
    """How long status events (the proof of play) are kept, in days: `loa-controller db
    prune` deletes only those before the first day of the month this many days back, so
    a report of the period stays whole (five years by default)."""
    audio: AudioConfig = AudioConfig()
    """Audio preparation."""
    web: WebConfig | None = None
    """The web app and JSON API (urgent announcements); left out: not served."""
    provisioning: ProvisioningConfig = ProvisioningConfig()
    """Cluster bundles and broker accounts (loa-controller provision, broker-config)."""
    speech: SpeechConfig = SpeechConfig()
    """Voices, number words and abbreviations for typed announcements (docs/speech.md)."""
    leadership: LeadershipConfig = LeadershipConfig()
    """Two or more controllers on one PostgreSQL store: the lease that decides which one
    leads (docs/operations.md, Two controllers)."""
    require_signed_events: bool = True
    """Store only what a cluster's registered key signed. false only while upgrading from
    agents that did not sign: unsigned messages of clusters with no registered key are
    then taken, with a warning (docs/operations.md, Upgrading to signed events)."""

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> ControllerConfig:
        _check_ca_file(self.broker_url, self.broker_ca_file)
        return self

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def broker(self) -> BrokerAddress:
        """The broker address, with the CA of this file for mqtts://."""
        return BrokerAddress.from_url(
            self.broker_url, ca_file=str(self.broker_ca_file) if self.broker_ca_file else None
        )

    @property
    def credentials_file(self) -> Path:
        """Where the broker logins are kept (provisioning.credentials_file)."""
        return self.provisioning.credentials_file or (
            self.private_key.parent / "broker-credentials.yaml"
        )

    @property
    def agent_broker_url(self) -> str:
        """The broker address written into bundles: scheme, host and port only."""
        if self.provisioning.agent_broker_url:
            return self.provisioning.agent_broker_url
        address = BrokerAddress.from_url(self.broker_url)
        host = f"[{address.host}]" if ":" in address.host else address.host
        return f"{'mqtts' if address.tls else 'mqtt'}://{host}:{address.port}"

    @property
    def agent_ca_file(self) -> Path | None:
        """The CA certificate bundles carry, for an mqtts:// agent_broker_url."""
        if not BrokerAddress.from_url(self.agent_broker_url).tls:
            return None
        return self.provisioning.ca_file or self.broker_ca_file


def _check_ca_file(broker_url: str, ca_file: Path | None) -> None:
    if ca_file is not None and not BrokerAddress.from_url(broker_url).tls:
        raise ValueError(_(
            "broker_ca_file is set but broker_url {url!r} is plain MQTT: write "
            "mqtts://host:8883 to connect over TLS, or leave broker_ca_file out", url=broker_url,
        ))


def json_schema() -> dict[str, Any]:
    """JSON Schema of the controller configuration, for editors."""
    schema = ControllerConfig.model_json_schema()
    schema["title"] = "Loa controller configuration"
    return schema


def load_controller_config(path: Path) -> ControllerConfig:
    """Load the controller configuration; raise ConfigError listing every problem."""
    data, locations = load_yaml(path)
    context = {"base_dir": Path(path).resolve().parent}
    config = validate(ControllerConfig, data, locations, context=context)
    if isinstance(config, list):
        raise ConfigError(config)
    return config
