"""The rules of one kind of file and the command lines' own refusals, in Vietnamese, as
a manager meets them: `loa-controller` run as a program, under --lang vi or a Vietnamese
locale. A playlist's overlapping programmes and a wrong time, a fleet's duplicate id,
`cap check` on a file that is not an alert; none of the catalog's English shows through
(tests/l10n_support.py)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from textwrap import dedent

import pytest
from l10n_support import english_fragments_in
from test_cap_policy import _config as cap_config

from protocol.l10n import LOCALE_VARIABLES

ROOT = Path(__file__).resolve().parent.parent


def controller(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """loa-controller as a program, with no locale but the one given."""
    clean = {k: v for k, v in os.environ.items() if k not in LOCALE_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "controller.cli", *args], cwd=ROOT,
        env={**clean, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True, text=True, timeout=120, check=False,
    )


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of the example playlists, audio included."""
    target = tmp_path / "playlists"
    shutil.copytree(ROOT / "playlists", target)
    return target


def test_overlapping_programmes_are_explained_in_vietnamese(copy: Path) -> None:
    playlist = copy / "them.yaml"
    playlist.write_text(dedent("""\
        programmes:
          - id: tin-xa
            name: Tin xã
            bulletins: [{files: [audio/thoi-su-sang.wav]}]
            schedule: {times: ["06:00"], weekdays: [mon]}
            targets: [xa-tan-binh]
    """), encoding="utf-8")
    done = controller("check", "--lang", "vi", str(copy))
    assert done.returncode == 1, done.stdout + done.stderr
    [line] = [x for x in done.stdout.splitlines() if "trùng giờ" in x]
    assert re.search(
        r": chương trình '(tin-xa|thoi-su-sang)' trùng giờ với chương trình "
        r"'(thoi-su-sang|tin-xa)' ở \S+:\d+ \(cùng mức normal\) trên 2 cụm loa "
        r"\(tan-binh-01, tan-binh-02\): '\S+' phát lúc T2 \d\d/\d\d/\d{4} 06:00 trong ", line
    ), line
    assert re.search(r"\(5[23] lần trong 366 ngày tới\)", line), line
    assert "có thể bị lỡ" in line
    assert english_fragments_in(done.stdout + done.stderr) == []
    # The same check in English says it as before.
    english = controller("check", "--lang", "en", str(copy))
    assert "overlaps programme" in english.stdout


def test_a_wrong_time_in_a_playlist_is_explained_in_vietnamese(copy: Path) -> None:
    path = copy / "thoi-su.yaml"
    path.write_text(path.read_text(encoding="utf-8").replace('"06:00"', '"25:61"', 1),
                    encoding="utf-8")
    done = controller("check", str(copy), env={"LANG": "vi_VN.UTF-8"})
    assert done.returncode == 1
    [line] = [x for x in done.stdout.splitlines() if x.startswith(f"{path}:")]
    assert line.endswith(
        "'25:61' không phải là giờ trong ngày: giờ từ 00 đến 23, phút từ 00 đến 59 "
        '(nửa đêm viết "00:00")'
    ), line
    assert english_fragments_in(done.stdout + done.stderr) == []


def test_a_duplicate_id_in_the_fleet_is_explained_in_vietnamese(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    text = (ROOT / "config" / "fleet.yaml").read_text(encoding="utf-8")
    assert "id: tan-binh-02" in text
    fleet.write_text(text.replace("id: tan-binh-02", "id: tan-binh-01", 1), encoding="utf-8")
    first = text[:text.index("id: tan-binh-01")].count("\n") + 1
    (tmp_path / "playlists").mkdir()
    config = tmp_path / "controller.yaml"
    config.write_text(
        f"fleet: {fleet}\nplaylists: [{tmp_path / 'playlists'}]\n"
        f"store_url: sqlite:///{tmp_path / 'c.db'}\nprivate_key: controller.key\n"
        "content_dir: content\n",
        encoding="utf-8",
    )
    done = controller("check", "--config", str(config), env={"LANG": "vi_VN.UTF-8"})
    assert done.returncode == 1, done.stdout + done.stderr
    output = done.stdout + done.stderr
    assert (
        f"mã 'tan-binh-01' đã được dùng ở dòng {first}; mỗi đơn vị và mỗi cụm loa cần một "
        "mã riêng"
    ) in output, output
    assert english_fragments_in(output) == []


def test_cap_check_refuses_a_file_that_is_not_an_alert_in_vietnamese(tmp_path: Path) -> None:
    config = cap_config(tmp_path, "    repeat: 2\n")
    bad = tmp_path / "bad.xml"
    bad.write_bytes(b"<alert")
    done = controller("cap", "check", str(bad), "--config", str(config), "--lang", "vi")
    assert done.returncode == 1
    assert f"{bad}: sẽ bị từ chối: XML không đúng cú pháp: " in done.stderr, done.stderr
    late = controller("cap", "check", str(bad), "--config", str(config), "--at", "sáng mai",
                      env={"LANG": "vi_VN.UTF-8"})  # fmt: skip
    assert late.returncode == 1
    assert ("--at 'sáng mai' không phải là thời điểm: hãy viết dạng "
            "2026-10-20T06:00:00+07:00") in late.stderr, late.stderr
    assert english_fragments_in(done.stderr + late.stderr) == []
