"""The agent's configuration file (one per cluster, written by the field technician).

    cluster_id: hg-phung-hiep-07
    broker_url: mqtts://broker.example.vn:8883
    username: hg-phung-hiep-07
    password_file: broker.password # the broker password, in a file of its own (0640 root:loa)
    controller_public_key: controller.pub
    enrolment_token_file: enrolment.token   # from the provisioning bundle
    data_dir: /var/lib/loa-agent
    groups: [commune-tan-long]     # until the controller's membership arrives
    output:
      kind: opusdec                # opusdec (sound card), ffmpeg (sound card), file, null
      device: alsa:default
    relay:
      driver: lcus                 # the amplifier's relay board (none: always powered)
      url: /dev/ttyUSB0

Loaded like every file people edit by hand: unknown keys, wrong types and bad values are
all reported at once as file:line:col with what to write instead. Relative paths are
resolved against the folder of the configuration file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationInfo,
    model_validator,
)

from device_agent.output import OPUSDEC_DEVICE_HELP, parse_device
from device_agent.relays.config import RelayConfig
from protocol.config_errors import ConfigError, Problem
from protocol.l10n import N_, _
from protocol.mqtt import BrokerAddress
from protocol.topics import check_id
from protocol.validation import validate
from protocol.yamlload import LocationMap, load_yaml

log = logging.getLogger(__name__)


def _relative_to_config(value: Path, info: ValidationInfo) -> Path:
    base = (info.context or {}).get("base_dir")
    if base is None or value.is_absolute():
        return value
    return Path(os.path.normpath(Path(base) / value))


ConfigPath = Annotated[Path, AfterValidator(_relative_to_config)]


def _topic_id(value: str) -> str:
    return check_id(value, N_("this id"))  # ValueError says which characters are allowed


TopicId = Annotated[str, AfterValidator(_topic_id)]


def _broker_url(value: str) -> str:
    BrokerAddress.from_url(value)  # raises ValueError with an example of a good URL
    return value


def read_secret(path: Path) -> str:
    """The first line of a secret file (a password, a token), without its line end."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(_(
            "cannot read {path} ({why}): it must exist and be readable by the agent's user "
            "(install -o root -g loa -m 0640)", path=path, why=exc.strerror,
        )) from None
    except UnicodeDecodeError:
        raise ValueError(_("{path} is not UTF-8 text", path=path)) from None
    secret = text.splitlines()[0] if text else ""
    if not secret:
        raise ValueError(_("{path} is empty: copy the file from the cluster's bundle again",
                           path=path))
    return secret


def _readable_secret(value: Path) -> Path:
    read_secret(value)  # raises ValueError saying what is wrong with the file
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _device(value: str) -> str:
    parse_device(value)  # raises ValueError with the forms accepted
    return value


def _bare_null(value: object) -> object:
    # YAML reads `kind: null` as nothing at all; that is what the writer meant.
    return "null" if value is None else value


class OutputConfig(_Strict):
    """Where the audio goes."""

    kind: Annotated[
        Literal["opusdec", "ffmpeg", "file", "null"], BeforeValidator(_bare_null)
    ] = "opusdec"
    """opusdec: the sound card through opusdec and aplay (light); ffmpeg: the sound card
    through ffmpeg (ALSA or PulseAudio); file: one WAV per play in out_dir; null: silent
    simulation."""
    device: Annotated[str, Field(min_length=1), AfterValidator(_device)] | None = None
    """For opusdec and ffmpeg: the output device, e.g. alsa:default, alsa:plughw:1,0,
    null (ALSA's null device, at real-time pace) or, for ffmpeg only, pulse:default."""
    out_dir: ConfigPath | None = None
    """For file: the folder the WAV files are written to."""
    ffmpeg: Annotated[str, Field(min_length=1)] | None = None
    """The ffmpeg program, if it is not on PATH."""
    opusdec: Annotated[str, Field(min_length=1)] = "opusdec"
    """For opusdec: the opusdec program (opus-tools), if it is not on PATH."""
    aplay: Annotated[str, Field(min_length=1)] = "aplay"
    """For opusdec: the aplay program (alsa-utils), if it is not on PATH."""
    volume: Annotated[int, Field(ge=0, le=100)] = 100
    """Output level in percent (linear gain) for plays whose command sets no volume."""

    @model_validator(mode="after")
    def _file_needs_a_folder(self) -> OutputConfig:
        if self.kind == "file" and self.out_dir is None:
            raise ValueError(_("the file output needs a folder: add `out_dir: /some/folder`"))
        if self.kind == "opusdec" and self.device and parse_device(self.device)[0] == "pulse":
            raise ValueError(_("device {device!r}: {help}", device=self.device,
                                 help=_(OPUSDEC_DEVICE_HELP)))
        return self


class AgentConfig(_Strict):
    """The agent configuration of one cluster."""

    cluster_id: TopicId
    """This cluster's id, exactly as in the controller's fleet file."""
    broker_url: Annotated[str, AfterValidator(_broker_url)]
    """mqtt://host[:port], or mqtts://host[:port] for TLS."""
    broker_fallback_urls: Annotated[
        list[Annotated[str, AfterValidator(_broker_url)]], Field(max_length=16)
    ] = []
    """Other nodes of the same broker cluster, tried in turn when the one in use cannot
    be reached (same login and CA as broker_url; docs/operations.md, broker clusters)."""
    broker_ca_file: ConfigPath | None = None
    """For mqtts://: the CA certificate (PEM) that signed the broker's certificate; only
    it is trusted. The system's CAs if left out."""
    username: Annotated[str, Field(min_length=1)] | None = None
    """Broker user name (usually the cluster id)."""
    password: SecretStr | None = None
    """Broker password (prefer password_file: a secret in a file of its own)."""
    password_file: Annotated[ConfigPath, AfterValidator(_readable_secret)] | None = None
    """A file whose first line is the broker password (the provisioning bundle's
    broker.password); readable by the agent's user only."""
    controller_public_key: ConfigPath
    """The controller's public key (controller.pub): only commands signed with it play."""
    enrolment_token_file: ConfigPath | None = None
    """The one-time enrolment token of this cluster (a file of the provisioning bundle):
    with it the agent asks the controller to register the key it made in data_dir. Once
    registered the file is no longer read and may be deleted."""
    data_dir: ConfigPath = Path("/var/lib/loa-agent")
    """Where the schedule, the outbox, the audio cache and this cluster's key are kept."""
    groups: Annotated[list[TopicId], Field(max_length=32)] = []
    """Groups to listen to until the controller's membership arrives."""
    output: OutputConfig = OutputConfig()
    """Where the audio goes."""
    keepalive: Annotated[int, Field(ge=5, le=3600)] = 30
    """Seconds between MQTT keepalives; the broker, and the controller from the heartbeats,
    declare the cluster offline after 1.5x without a message."""
    outbox_resend_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """Seconds before an unacknowledged status event is sent again."""
    heartbeat_s: Annotated[float, Field(ge=1, le=3600)] | None = None
    """Seconds between heartbeats (uptime, disk, temperature, relay, clock offset); the
    keepalive when left out, and never more than the keepalive (see heartbeat_interval_s)."""
    relay: RelayConfig = RelayConfig()
    """The relay board that powers the amplifier (driver: none when there is none)."""
    cache_max_mb: Annotated[int, Field(ge=16, le=1_000_000)] = 1024
    """Megabytes of audio kept for repeats; beyond it the least recently used audio is
    removed, never that of a play still scheduled or playing."""

    @model_validator(mode="after")
    def _ca_file_needs_tls(self) -> AgentConfig:
        if self.broker_ca_file is not None and not BrokerAddress.from_url(self.broker_url).tls:
            raise ValueError(_(
                "broker_ca_file is set but broker_url {url!r} is plain MQTT: write "
                "mqtts://host:8883 to connect over TLS, or leave broker_ca_file out",
                url=self.broker_url,
            ))
        return self

    @model_validator(mode="after")
    def _one_password(self) -> AgentConfig:
        if self.password is not None and self.password_file is not None:
            raise ValueError(_(
                "password and password_file are both set: keep password_file (the bundle's "
                "broker.password) and remove the password line"
            ))
        return self

    @property
    def heartbeat_interval_s(self) -> float:
        """heartbeat_s, at most the keepalive: the controller counts a cluster silent
        after 1.5 keepalives without a message, so a heartbeat must come every keepalive."""
        if self.heartbeat_s is None:
            return float(self.keepalive)
        return min(self.heartbeat_s, float(self.keepalive))

    def fallback_brokers(self) -> list[BrokerAddress]:
        """broker_fallback_urls, each with broker()'s login and CA."""
        first = self.broker()
        return [
            dataclasses.replace(first, host=a.host, port=a.port, tls=a.tls)
            for a in map(BrokerAddress.from_url, self.broker_fallback_urls)
        ]

    def broker(self) -> BrokerAddress:
        """The broker address, with the credentials of this file."""
        address = BrokerAddress.from_url(
            self.broker_url, ca_file=str(self.broker_ca_file) if self.broker_ca_file else None
        )
        password = address.password
        if self.password is not None:
            password = self.password.get_secret_value()
        elif self.password_file is not None:
            password = read_secret(self.password_file)
        return BrokerAddress(
            host=address.host,
            port=address.port,
            username=self.username or address.username,
            password=password,
            tls=address.tls,
            ca_file=address.ca_file,
        )


def load_agent_config(path: Path) -> AgentConfig:
    """Load the agent configuration; raise ConfigError listing every problem. What is
    accepted but changed (warnings, as file:line:col) is logged."""
    data, locations = load_yaml(path)
    context = {"base_dir": Path(path).resolve().parent}
    config = validate(AgentConfig, data, locations, context=context)
    if isinstance(config, list):
        raise ConfigError(config)
    for warning in config_warnings(config, locations):
        log.warning("%s", warning)
    return config


def config_warnings(config: AgentConfig, locations: LocationMap) -> list[Problem]:
    """What the agent accepts but changes, located in the file."""
    warnings = []
    if config.heartbeat_s is not None and config.heartbeat_s > config.keepalive:
        warnings.append(locations.problem(
            ("heartbeat_s",),
            _("heartbeat_s {heartbeat:g} is longer than keepalive "
              "{keepalive}: heartbeats are sent every {keepalive} s instead, "
              "since the controller counts a cluster offline after 1.5 × keepalive without "
              "a message; write heartbeat_s: {keepalive} or less (or leave it out)",
              heartbeat=config.heartbeat_s, keepalive=config.keepalive),
            severity="warning",
        ))  # fmt: skip
    return warnings
