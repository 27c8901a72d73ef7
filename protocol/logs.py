"""Log lines operators can use, for the controller and the agent alike.

`--log-format text` (the default): `2026-11-27T06:00:01.234+07:00 INFO    controller.main:
...`, the time with its zone (a journal read in another zone, or lines of two machines
side by side, still agree). `--log-format json`: one JSON object a line, for a log
shipper (Loki, Elasticsearch, journald's JSON): `time` (ISO 8601 with the zone), `level`,
`logger`, `message`, `thread`, and `exception` (the traceback) when there is one; any
`extra=` fields of the call are kept too.

`--log-level` sets the level (`-v` is `--log-level debug`); libraries that narrate every
step (APScheduler's "Added job" and "Running job", Alembic's migration steps, uvicorn)
are held at WARNING unless the level is DEBUG.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime
from typing import Any, Literal, TextIO

LogFormat = Literal["text", "json"]
LOG_FORMATS: tuple[LogFormat, ...] = ("text", "json")
LOG_LEVELS = ("debug", "info", "warning", "error")
#: Libraries kept at WARNING unless debugging: they log every job and every step.
CHATTY = ("apscheduler", "alembic", "uvicorn", "uvicorn.error", "uvicorn.access")

# What a LogRecord carries anyway: not copied into a JSON line as extras.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "taskName",
}


def timestamp(record: logging.LogRecord) -> str:
    """The record's time, local, with milliseconds and the zone's offset."""
    return datetime.fromtimestamp(record.created).astimezone().isoformat(timespec="milliseconds")


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp(record)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "thread": record.threadName,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in line:
                line[key] = value if isinstance(value, str | int | float | bool) else str(value)
        return json.dumps(line, ensure_ascii=False)


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]  # its stream type is TextIO
    """The handler configure() installs (so that it can tell its own from others')."""


def configure(
    level: str, log_format: LogFormat = "text", *, stream: TextIO | None = None
) -> logging.Handler | None:
    """Send every log line to stream (stderr) in this format from this level on, the
    chatty libraries at WARNING unless level is debug; returns the handler installed.

    As logging.basicConfig: where the root logger already has handlers that are not
    ours (a test runner's, a program embedding Loa's), nothing is changed and None is
    returned; a handler of an earlier call is replaced."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"log level {level!r}: write one of {', '.join(LOG_LEVELS)}")
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format {log_format!r}: write text or json")
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _Handler)]
    if len(ours) != len(root.handlers):
        return None
    handler = _Handler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    for old in ours:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in CHATTY:
        logging.getLogger(name).setLevel(logging.NOTSET if numeric <= logging.DEBUG
                                         else max(logging.WARNING, numeric))
    return handler


def add_arguments(parser: Any) -> None:
    """--log-format and --log-level on a command line's top-level argparse parser."""
    parser.add_argument(
        "--log-format", choices=LOG_FORMATS, default="text",
        help="log lines as text (time with its zone, level, logger, message) or one JSON "
        "object a line (default text)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS,
        help="the lowest level logged (default info, warning for the commands that print "
        "their own report; -v is debug)",
    )


def setup(args: Any, default_level: str) -> None:
    """Logging as the parsed command line asks (add_arguments, and -v/--verbose)."""
    level = args.log_level or ("debug" if getattr(args, "verbose", False) else default_level)
    configure(level, args.log_format)
