"""`loa-controller user ...` and `loa-controller urgent ...` against a running controller."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import BrokerUnderTest, wait_until
from l10n_support import english_fragments_in
from web_rig import PASSWORD, WebRig

from controller.cli import main
from controller.samples import tone
from controller.users import load_users, verify_password


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    out, err = capsys.readouterr()
    return int(ended.value.code or 0), out, err


def test_user_add_passwd_disable_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    users = tmp_path / "users.yaml"
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh-t\n  name: Tỉnh Thử\n  communes:\n"
        "    - {id: xa-a, name: Xã An, clusters: [{id: a-01, name: Chợ}]}\n",
        encoding="utf-8",
    )
    (tmp_path / "playlists").mkdir()
    config = tmp_path / "controller.yaml"
    config.write_text(
        "fleet: fleet.yaml\nplaylists: [playlists]\nprivate_key: k.key\ncontent_dir: content\n"
        "web:\n  users_file: users.yaml\n  work_dir: web\n",
        encoding="utf-8",
    )
    monkeypatch.setattr("sys.stdin", io.StringIO("mot-mat-khau-dai\n"))
    code, out, _ = run(["user", "add", "can-bo-a", "--config", str(config), "--scope", "xa-a",
                        "--display-name", "Nguyễn Văn An", "--password-stdin"], capsys)
    assert code == 0, out
    assert "added can-bo-a (operator, scope xa-a)" in out
    [user] = load_users(users)
    assert verify_password(user.password, "mot-mat-khau-dai")
    assert users.stat().st_mode & 0o077 == 0  # the hashes are the owner's only

    monkeypatch.setattr("sys.stdin", io.StringIO("x\n"))
    code, _, err = run(["user", "add", "ke-la", "--config", str(config), "--scope", "xa-aa",
                        "--password-stdin"], capsys)
    assert code == 1
    assert "did you mean 'xa-a'" in err

    monkeypatch.setattr("sys.stdin", io.StringIO("mat-khau-moi-123\n"))
    code, _, _ = run(["user", "passwd", "can-bo-a", "--users", str(users), "--password-stdin"],
                     capsys)
    assert code == 0
    assert verify_password(load_users(users)[0].password, "mat-khau-moi-123")

    monkeypatch.setattr("sys.stdin", io.StringIO("ngan\n"))
    code, _, err = run(["user", "passwd", "can-bo-a", "--users", str(users),
                        "--password-stdin"], capsys)
    assert code == 1
    assert "at least 8 characters" in err

    code, out, _ = run(["user", "disable", "can-bo-a", "--users", str(users)], capsys)
    assert code == 0
    code, out, _ = run(["user", "list", "--users", str(users)], capsys)
    assert "can-bo-a" in out
    assert "disabled" in out
    code, _, err = run(["user", "passwd", "nobody", "--users", str(users)], capsys)
    assert code == 1
    assert "no user 'nobody'" in err


@pytest.fixture
def rig(tmp_path: Path, broker: BrokerUnderTest) -> Iterator[WebRig]:
    r = WebRig(tmp_path, broker.address)
    r.start()
    try:
        yield r
    finally:
        r.stop()


def test_urgent_waits_for_every_reachable_cluster_and_lists_the_offline_ones(
    rig: WebRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rig.agents.pop("a-03").stop()
    wait_until(lambda: rig.state("a-03") == "offline", 20, "a-03 to be seen offline")
    monkeypatch.setenv("LOA_PASSWORD", PASSWORD)
    audio = tone(rig.tmp / "thong-bao.wav", 1.5)
    code, out, err = run(["urgent", "--url", rig.url, "--user", "can-bo-a", "--target", "xa-a",
                          "--audio", str(audio), "--level", "priority", "--wait"], capsys)
    assert code == 0, out + err
    assert "to 3 clusters" in out
    assert "a-01" in out
    assert "playing" in out
    assert "played on 2 of 2 reachable clusters" in out
    assert "offline (1): a-03" in out


def test_urgent_to_another_commune_is_refused(
    rig: WebRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOA_PASSWORD", PASSWORD)
    code, _, err = run(["urgent", "--url", rig.url, "--user", "can-bo-a", "--target", "xa-b",
                          "--text", "Thử", "--wait"], capsys)
    assert code == 1
    assert "refused (403)" in err
    assert "outside what can-bo-a may reach (Xã An)" in err
    monkeypatch.setenv("LOA_PASSWORD", "wrong-password")
    code, _, err = run(["urgent", "--url", rig.url, "--user", "can-bo-a", "--target", "xa-a",
                          "--text", "Thử"], capsys)
    assert code == 1
    assert "refused (401)" in err


def test_urgent_speaks_vietnamese_with_lang_vi(
    rig: WebRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's own words and the controller's refusal (asked for in Vietnamese with
    Accept-Language) alike."""
    monkeypatch.setenv("LOA_PASSWORD", PASSWORD)
    code, _, err = run(["urgent", "--lang", "vi", "--url", rig.url, "--user", "can-bo-a",
                        "--target", "xa-b", "--text", "Thử"], capsys)
    assert code == 1
    assert err.startswith("loa-controller urgent: bị từ chối (403): xa-b nằm ngoài phạm vi "
                          "của can-bo-a (Xã An); không có gì được gửi"), err
    code, _, err = run(["urgent", "--lang", "vi", "--url", rig.url, "--user", "can-bo-a",
                        "--target", "xa-a", "--text", "Thử", "--repeat", "11"], capsys)
    assert code == 1
    assert "bị từ chối (422)" in err or "bị từ chối (400)" in err
    audio = tone(rig.tmp / "thong-bao.wav", 1.5)
    code, out, err = run(["urgent", "--lang", "vi", "--url", rig.url, "--user", "can-bo-a",
                          "--target", "ap-a2", "--audio", str(audio), "--level", "priority"],
                         capsys)
    assert code == 0, err
    assert "(ưu tiên, 1,5 giây) tới 1 cụm loa" in out
    assert "theo dõi tại: http" in out
    assert english_fragments_in(out + err) == []


def test_urgent_exits_1_when_a_reachable_cluster_did_not_play_it(
    rig: WebRig, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped halfway (by a manager in the page, say): not every cluster played it."""
    monkeypatch.setenv("LOA_PASSWORD", PASSWORD)
    audio = tone(rig.tmp / "dai.wav", 20.0)
    import threading

    def stop_when_playing() -> None:
        manager = rig.user("quan-ly")
        wait_until(lambda: rig.service.recent(manager), 30, "the announcement")
        aid = rig.service.recent(manager)[0].id
        wait_until(
            lambda: rig.controller.store.events.play_states(aid).get("b-01") == "playing", 30,
            "b-01 to play",
        )
        rig.service.stop(manager, aid)

    stopper = threading.Thread(target=stop_when_playing)
    stopper.start()
    code, out, _ = run(["urgent", "--url", rig.url, "--user", "can-bo-b", "--target", "xa-b",
                        "--audio", str(audio), "--wait"], capsys)
    stopper.join(30)
    assert code == 1
    assert "played on 0 of 1 reachable clusters" in out
    assert "not played:" in out
    assert "interrupted" in out


def test_loa_controller_run_serves_the_web_app_when_configured(
    tmp_path: Path, broker: BrokerUnderTest
) -> None:
    import os
    import subprocess
    import sys

    import httpx
    from conftest import free_port

    from controller.users import User, hash_password, save_users
    from protocol.signing import generate_keypair

    root = Path(__file__).resolve().parent.parent
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh-t\n  name: Tỉnh Thử\n  communes:\n"
        "    - {id: xa-a, name: Xã An, clusters: [{id: a-01, name: Chợ}]}\n",
        encoding="utf-8",
    )
    (tmp_path / "playlists").mkdir()
    save_users(tmp_path / "users.yaml", [
        User(name="can-bo-a", role="operator", scope=["xa-a"], password=hash_password(PASSWORD))
    ])
    port = free_port()
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"broker_url: {broker.url}\nfleet: fleet.yaml\nplaylists: [playlists]\n"
        "store_url: sqlite:///controller.db\nprivate_key: controller.key\n"
        f"content_dir: content\nweb:\n  port: {port}\n  users_file: users.yaml\n"
        "  work_dir: web\n",
        encoding="utf-8",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "controller.cli", "run", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(root)}, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        def answers() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/login", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(answers, 30, "the web app of `loa-controller run`")
        r = httpx.post(f"http://127.0.0.1:{port}/api/v1/login",
                       json={"name": "can-bo-a", "password": PASSWORD})
        assert r.status_code == 200
        assert r.json()["scope"] == ["xa-a"]
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err.decode()
