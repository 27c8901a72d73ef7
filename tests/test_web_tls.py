"""The web app over HTTPS, and forwarded headers believed only from trusted proxies.

A real uvicorn server on a free port with a certificate made for the test (the
`cryptography` package): cookies carry Secure and every answer Strict-Transport-Security;
over plain HTTP neither (unless `secure_cookies`). `loa-controller urgent` reaches it with
--ca-file, and says what to do without. X-Forwarded-For and X-Forwarded-Proto from a
peer that is not a configured proxy are ignored (the limit counts the peer's own
address, however the header is rotated); from a configured one they are believed.
The config refuses a certificate without its key, and a proxy entry that is not an
address or network, saying what to write; a broken pair stops `loa-controller run` at
start with the files named.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import BrokerUnderTest, free_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from web_rig import PASSWORD, WebRig

from controller.cli import main
from controller.config import load_controller_config
from controller.web.server import TlsFilesError, check_tls
from protocol.config_errors import ConfigError
from protocol.signing import generate_keypair


def self_signed(folder: Path, name: str = "loa-test") -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / f"{name}.crt", folder / f"{name}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return cert_file, key_file


def sign_in_page(c: httpx.Client) -> httpx.Response:
    c.get("/login")
    token = c.cookies.get("loa_login_csrf") or ""
    return c.post("/login", data={"name": "can-bo-a", "password": PASSWORD,
                                  "csrf_token": token})


def set_cookies(r: httpx.Response) -> dict[str, str]:
    """Each cookie an answer sets, by name: its whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in r.headers.get_list("set-cookie")}


@pytest.fixture
def https_rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address, tls=self_signed(tmp_path / "tls"))
    r.start(agents=[])
    try:
        yield r
    finally:
        r.stop()


@pytest.fixture
def http_rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.start(agents=[])
    try:
        yield r
    finally:
        r.stop()


def test_over_https_cookies_are_secure_and_browsers_are_told_to_stay(https_rig: WebRig) -> None:
    assert https_rig.url.startswith("https://127.0.0.1:")
    with https_rig.client() as c:
        page = c.get("/login?lang=en")
        assert page.status_code == 200
        assert page.headers["strict-transport-security"] == "max-age=31536000"
        cookies = set_cookies(page)
        assert "; secure" in cookies["loa_login_csrf"].lower()
        assert "; secure" in cookies["lang"].lower()
        r = c.post("/login", data={"name": "can-bo-a", "password": PASSWORD,
                                   "csrf_token": c.cookies.get("loa_login_csrf") or ""})
        assert r.status_code == 303
        session = set_cookies(r)["loa_session"].lower()
        assert "; secure" in session
        assert "; httponly" in session
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        api = c.get("/api/v1/me")
        assert api.headers["strict-transport-security"] == "max-age=31536000"


def test_plain_http_has_no_hsts_and_cookies_as_configured(http_rig: WebRig) -> None:
    with http_rig.client() as c:
        r = sign_in_page(c)
        assert r.status_code == 303
        assert "strict-transport-security" not in r.headers
        assert "secure" not in set_cookies(r)["loa_session"].lower()
    # secure_cookies: a proxy ends TLS without being listed as trusted. (The browser
    # then sends them back only over HTTPS: through that proxy.)
    http_rig.ctx.secure_cookies = True
    with http_rig.client() as c:
        r = c.get("/login")
        assert "; secure" in set_cookies(r)["loa_login_csrf"].lower()
        assert "strict-transport-security" not in r.headers


def test_loa_controller_urgent_trusts_the_certificate_it_is_given(
    https_rig: WebRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert https_rig.tls is not None
    monkeypatch.setenv("LOA_PASSWORD", PASSWORD)
    argv = ["urgent", "--url", https_rig.url, "--user", "can-bo-a", "--target", "xa-b",
            "--text", "Thử"]
    with pytest.raises(SystemExit) as ended:
        main(argv)
    _, err = capsys.readouterr()
    assert ended.value.code == 1
    assert "certificate is not trusted" in err
    assert "--ca-file" in err
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--ca-file", str(https_rig.tls[0])])
    _, err = capsys.readouterr()
    # Signed in over TLS, and refused for the target outside the user's commune.
    assert ended.value.code == 1
    assert "refused (403)" in err


# --- forwarded headers ----------------------------------------------------------------------


def fail_as(c: httpx.Client, name: str, forwarded_for: str) -> int:
    r = c.post("/api/v1/login", json={"name": name, "password": "wrong-password"},
               headers={"X-Forwarded-For": forwarded_for})
    return r.status_code


def test_forwarded_headers_from_an_untrusted_peer_are_ignored(http_rig: WebRig) -> None:
    """No trusted_proxies (the default): rotating X-Forwarded-For buys nothing. Eleven
    names from "eleven addresses" are eleven tries from this one peer, and the address
    limit (ten free tries) holds the eleventh back."""
    with http_rig.client() as c:
        answers = [fail_as(c, f"user-{i}", f"198.51.100.{i + 1}") for i in range(11)]
        assert answers == [401] * 10 + [429]
        r = c.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert "strict-transport-security" not in r.headers


@pytest.fixture
def proxied_rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address,
               trusted_proxies=[ipaddress.ip_network("127.0.0.1/32")])
    r.start(agents=[])
    try:
        yield r
    finally:
        r.stop()


def test_forwarded_headers_from_a_trusted_proxy_are_believed(proxied_rig: WebRig) -> None:
    with proxied_rig.client() as c:
        # Each client behind the proxy is counted on its own address...
        answers = [fail_as(c, f"user-{i}", f"198.51.100.{i + 1}") for i in range(11)]
        assert answers == [401] * 11
        # ... and one client trying many names is held back.
        answers = [fail_as(c, f"user-{i}", "203.0.113.5") for i in range(11)]
        assert answers == [401] * 10 + [429]
        # What the client wrote before the proxy's entry is not believed: the proxy
        # appends the address it saw, the right-most untrusted one counts.
        assert fail_as(c, "user-x", "192.0.2.1, 203.0.113.5") == 429
        # TLS ended at the proxy: Secure cookies and HSTS.
        r = c.get("/login", headers={"X-Forwarded-Proto": "https"})
        assert r.headers["strict-transport-security"] == "max-age=31536000"
        assert "; secure" in set_cookies(r)["loa_login_csrf"].lower()
        r = c.get("/login", headers={"X-Forwarded-Proto": "http"})
        assert "strict-transport-security" not in r.headers


# --- configuration --------------------------------------------------------------------------

CONFIG = """\
fleet: fleet.yaml
playlists: [playlists]
private_key: controller.key
content_dir: content
web:
  users_file: users.yaml
  work_dir: web
"""


def test_the_config_wants_both_files_and_real_proxy_addresses(tmp_path: Path) -> None:
    path = tmp_path / "controller.yaml"
    path.write_text(CONFIG + "  tls_cert_file: web.crt\n", encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_controller_config(path)
    assert "tls_cert_file is set but tls_key_file is not" in str(refused.value)
    path.write_text(CONFIG + "  trusted_proxies: [127.0.0.1, nginx, 10.8.0.1/24]\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        load_controller_config(path)
    message = str(refused.value)
    assert "'nginx' is not an address or a network" in message
    assert "'10.8.0.1/24' has bits set past its prefix: write 10.8.0.0/24" in message
    path.write_text(
        CONFIG + "  tls_cert_file: tls/web.crt\n  tls_key_file: tls/web.key\n"
        "  trusted_proxies: [127.0.0.1, '::1', 10.8.0.0/24]\n",
        encoding="utf-8",
    )
    web = load_controller_config(path).web
    assert web is not None
    assert web.tls == (tmp_path / "tls" / "web.crt", tmp_path / "tls" / "web.key")
    assert [str(n) for n in web.proxy_networks] == ["127.0.0.1/32", "::1/128", "10.8.0.0/24"]


def test_a_certificate_that_cannot_be_used_stops_the_start_naming_the_files(
    tmp_path: Path,
) -> None:
    cert, key = self_signed(tmp_path / "a")
    _, other_key = self_signed(tmp_path / "b")
    check_tls(cert, key)
    with pytest.raises(TlsFilesError, match=r"with web.tls_key_file .*b/loa-test.key"):
        check_tls(cert, other_key)
    with pytest.raises(TlsFilesError, match="does not exist"):
        check_tls(tmp_path / "missing.crt", key)


def test_loa_controller_run_refuses_a_key_of_another_certificate(
    tmp_path: Path, broker: BrokerUnderTest, capsys: pytest.CaptureFixture[str]
) -> None:
    cert, _ = self_signed(tmp_path / "tls")
    _, other_key = self_signed(tmp_path / "other")
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh-t\n  name: Tỉnh Thử\n  communes:\n"
        "    - {id: xa-a, name: Xã An, clusters: [{id: a-01, name: Chợ}]}\n",
        encoding="utf-8",
    )
    (tmp_path / "playlists").mkdir()
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"broker_url: {broker.url}\nstore_url: sqlite:///controller.db\n" + CONFIG
        + f"  port: {free_port()}\n  tls_cert_file: {cert}\n  tls_key_file: {other_key}\n",
        encoding="utf-8",
    )
    with pytest.raises(SystemExit) as ended:
        main(["run", "--config", str(config)])
    _, err = capsys.readouterr()
    assert ended.value.code == 1
    assert f"web.tls_cert_file {cert} with web.tls_key_file {other_key}: cannot be used" in err
