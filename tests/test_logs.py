"""Log lines operators can use: text with the time's zone, or one JSON object a line;
the level chosen on the command line; the libraries' chatter kept at warning. The
controller's CLI as a process, and the formatter on its own."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from protocol import logs

ROOT = Path(__file__).resolve().parent.parent
ZONED = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Logging as it was after the test (which calls bare() first)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    chatty = {name: logging.getLogger(name).level for name in logs.CHATTY}
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    for name, was in chatty.items():
        logging.getLogger(name).setLevel(was)


def bare() -> None:
    """The root logger as a new process has it: no handler (pytest's taken off)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)


def test_text_lines_carry_the_time_with_its_zone(restore_logging: None) -> None:
    out = io.StringIO()
    bare()
    logs.configure("info", "text", stream=out)
    logging.getLogger("controller.main").info("controller running: %d clusters", 73)
    logging.getLogger("controller.main").debug("not shown")
    [line] = out.getvalue().splitlines()
    assert re.fullmatch(ZONED + r" INFO    controller\.main: controller running: 73 clusters",
                        line), line
    stamp = datetime.fromisoformat(line.split(" ")[0])
    assert stamp.utcoffset() is not None


def test_json_lines_parse_with_level_logger_message_and_the_traceback(
    restore_logging: None,
) -> None:
    out = io.StringIO()
    bare()
    logs.configure("warning", "json", stream=out)
    log = logging.getLogger("controller.intake")
    log.info("not shown")
    log.warning("cluster %s is offline: %s", "a-01", "nothing heard for 45.0 s",
                extra={"cluster": "a-01"})
    try:
        raise RuntimeError("the store is down")
    except RuntimeError:
        log.exception("could not store")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert re.fullmatch(ZONED, first["time"])
    assert first["level"] == "warning"
    assert first["logger"] == "controller.intake"
    assert first["message"] == "cluster a-01 is offline: nothing heard for 45.0 s"
    assert first["cluster"] == "a-01"
    assert second["level"] == "error"
    assert "RuntimeError: the store is down" in second["exception"]


def test_apscheduler_is_kept_at_warning_unless_debugging(restore_logging: None) -> None:
    out = io.StringIO()
    bare()
    logs.configure("info", "text", stream=out)
    logging.getLogger("apscheduler.scheduler").info('Added job "replan" to job store')
    assert out.getvalue() == ""
    logs.configure("debug", "text", stream=out)
    logging.getLogger("apscheduler.scheduler").info('Added job "replan" to job store')
    assert "Added job" in out.getvalue()


def test_handlers_someone_else_installed_are_left_alone(restore_logging: None) -> None:
    """A test runner's or an embedding program's logging is theirs: configure changes
    nothing then (as logging.basicConfig)."""
    bare()
    theirs = logging.StreamHandler(io.StringIO())
    logging.getLogger().addHandler(theirs)
    assert logs.configure("debug", "json", stream=io.StringIO()) is None
    assert logging.getLogger().handlers == [theirs]


def test_a_bad_level_is_refused_with_the_choices() -> None:
    with pytest.raises(ValueError, match="write one of debug, info, warning, error"):
        logs.configure("loud")


def test_the_controller_logs_json_from_the_command_line(tmp_path: Path) -> None:
    """`loa-controller --log-format json --log-level debug` as a process: every stderr
    line is a JSON object (keygen logs nothing itself; the store's migration does)."""
    config = tmp_path / "controller.yaml"
    (tmp_path / "fleet.yaml").write_text(
        "province:\n  id: tinh\n  name: Tỉnh\n  communes:\n    - id: xa\n      name: Xã\n"
        "      clusters:\n        - {id: c-01, name: Cụm}\n", encoding="utf-8")
    (tmp_path / "playlists").mkdir()
    config.write_text("fleet: fleet.yaml\nplaylists: [playlists]\nstore_url: sqlite:///c.db\n"
                      "private_key: k\ncontent_dir: content\n", encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "controller.cli", "--log-format", "json", "--log-level",
         "debug", "db", "upgrade", "--config", str(config)],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert lines, "nothing logged at debug"
    for line in lines:
        entry = json.loads(line)
        assert {"time", "level", "logger", "message"} <= entry.keys()
