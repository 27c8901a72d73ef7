"""Key files: private keys are 0600 whatever was there before, written whole or not at all."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from protocol.files import write_atomic
from protocol.signing import generate_keypair, load_private_key, load_public_key, public_pem

ROOT = Path(__file__).resolve().parent.parent


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def keygen(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", "keygen", *args],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=60, check=False,
    )


def test_keygen_force_over_a_world_readable_key_leaves_it_0600(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.mkdir()
    old = keys / "controller.key"
    old.write_text("an old key someone made readable\n")
    old.chmod(0o644)
    (keys / "controller.pub").write_text("old\n")

    result = keygen("--out", str(keys), "--force")

    assert result.returncode == 0, result.stderr
    assert "mode 0600" in result.stdout
    assert mode(old) == 0o600, oct(mode(old))
    assert mode(keys / "controller.pub") == 0o644
    key = load_private_key(old)  # the new key, whole
    assert public_pem(key.public_key()) == (keys / "controller.pub").read_bytes()


def test_keygen_ignores_a_permissive_umask(tmp_path: Path) -> None:
    previous = os.umask(0)
    try:
        generate_keypair(tmp_path / "k.key", tmp_path / "k.pub")
    finally:
        os.umask(previous)
    assert mode(tmp_path / "k.key") == 0o600
    assert mode(tmp_path / "k.pub") == 0o644
    load_public_key(tmp_path / "k.pub")


def test_keygen_replaces_a_symlink_instead_of_writing_through_it(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("not a key\n")
    elsewhere.chmod(0o644)
    (tmp_path / "c.key").symlink_to(elsewhere)

    generate_keypair(tmp_path / "c.key", tmp_path / "c.pub", overwrite=True)

    assert elsewhere.read_text() == "not a key\n"
    assert not (tmp_path / "c.key").is_symlink()
    assert mode(tmp_path / "c.key") == 0o600


def test_keygen_without_force_keeps_the_existing_key(tmp_path: Path) -> None:
    generate_keypair(tmp_path / "controller.key", tmp_path / "controller.pub")
    before = (tmp_path / "controller.key").read_bytes()
    result = keygen("--out", str(tmp_path))
    assert result.returncode == 1
    assert "refusing to overwrite a key (use --force)" in result.stderr
    assert (tmp_path / "controller.key").read_bytes() == before


def test_write_atomic_leaves_the_old_file_and_no_temporary_when_it_fails(
    tmp_path: Path,
) -> None:
    target = tmp_path / "secret"
    write_atomic(target, b"first")
    with pytest.raises(TypeError):
        write_atomic(target, "text, not bytes")  # type: ignore[arg-type]  # the failure
    assert target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secret"]


def test_write_atomic_keeps_the_owner_of_the_file_it_replaces(tmp_path: Path) -> None:
    """A broker's password file handed to the broker's user stays its own when the
    controller writes it again (root may give a file away; others keep their own)."""
    target = tmp_path / "mosquitto.passwd"
    write_atomic(target, b"first\n")
    if os.geteuid() != 0:
        write_atomic(target, b"second\n")
        assert target.stat().st_uid == os.geteuid()
        return
    os.chown(target, 65534, 65534)  # nobody:nogroup, as `chown mosquitto:` would
    write_atomic(target, b"second\n")
    assert (target.stat().st_uid, target.stat().st_gid) == (65534, 65534)
    assert mode(target) == 0o600
    assert target.read_bytes() == b"second\n"
