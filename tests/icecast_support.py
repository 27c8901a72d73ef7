"""A real Icecast server (Debian's icecast2) on a free port, fed by ffmpeg: the
upper-level station of the rebroadcast tests."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

from conftest import free_port, require
from live_wire_support import ffmpeg_exe

PASSWORD = "loa-test-source"


def icecast_exe() -> str | None:
    return shutil.which("icecast2") or (
        "/usr/bin/icecast2" if os.access("/usr/bin/icecast2", os.X_OK) else None
    )


class Icecast:
    """icecast2 with a generated config in workdir; as root it drops to the icecast2 user
    (Icecast refuses to run as root)."""

    def __init__(self) -> None:
        exe = icecast_exe()
        require("icecast2", exe is not None, "apt-get install icecast2")
        assert exe is not None
        self.port = free_port()
        # Not under the test's folder: as root, Icecast runs as the icecast2 user, who
        # cannot enter pytest's folders (0700).
        workdir = self.workdir = Path(tempfile.mkdtemp(prefix="loa-icecast-"))
        logs = workdir / "log"
        logs.mkdir()
        root = getpass.getuser() == "root"
        if root:
            os.chmod(workdir, 0o755)
            shutil.chown(logs, "icecast2")
        share = "/usr/share/icecast2"
        owner = (
            "<changeowner><user>icecast2</user><group>icecast</group></changeowner>"
            if root else ""
        )
        self.conf = workdir / "icecast.xml"
        self.conf.write_text(f"""<icecast>
  <limits><clients>50</clients><sources>4</sources><source-timeout>3</source-timeout>
    <burst-on-connect>1</burst-on-connect><burst-size>16000</burst-size></limits>
  <authentication><source-password>{PASSWORD}</source-password>
    <admin-user>admin</admin-user><admin-password>{PASSWORD}</admin-password></authentication>
  <hostname>127.0.0.1</hostname>
  <listen-socket><port>{self.port}</port><bind-address>127.0.0.1</bind-address></listen-socket>
  <fileserve>0</fileserve>
  <paths><basedir>{share}</basedir><logdir>{logs}</logdir><webroot>{share}/web</webroot>
    <adminroot>{share}/admin</adminroot></paths>
  <logging><accesslog>access.log</accesslog><errorlog>error.log</errorlog>
    <loglevel>3</loglevel></logging>
  <security><chroot>0</chroot>{owner}</security>
</icecast>
""", encoding="utf-8")
        os.chmod(self.conf, 0o644)
        self.logs = logs
        self.proc = subprocess.Popen(
            [exe, "-c", str(self.conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"icecast2 exited; see {logs}/error.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"icecast2 did not listen on {self.port}") from None
                time.sleep(0.05)

    def url(self, mount: str) -> str:
        return f"http://127.0.0.1:{self.port}/{mount}"

    def mounted(self, mount: str) -> bool:
        """Whether a source feeds the mount (a listener gets its audio)."""
        try:
            with urllib.request.urlopen(self.url(mount), timeout=1) as answer:
                return bool(answer.status == 200 and answer.read(1))
        except OSError:
            return False

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.workdir, ignore_errors=True)


class Feeder:
    """ffmpeg sending an input, looped at real-time pace, to a mount as MP3 (a station)."""

    def __init__(self, icecast: Icecast, mount: str, source: list[str]) -> None:
        self.mount = mount
        self.proc = subprocess.Popen(
            [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-re", *source,
             "-ac", "1", "-ar", "44100", "-c:a", "libmp3lame", "-b:a", "64k",
             "-content_type", "audio/mpeg", "-f", "mp3",
             f"icecast://source:{PASSWORD}@127.0.0.1:{icecast.port}/{mount}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def kill(self) -> None:
        """The station dies (no goodbye to the server)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
