"""YAML with file:line:col kept for every node.

Shared by the controller (fleet, playlists, controller config) and the agent (its
config). Managers edit these files by hand, so a problem in the YAML itself is reported
as ``file:line:col: what is wrong; what to write instead`` (protocol/config_errors.py),
and bad YAML is never turned into an empty document. The `LocationMap` a load returns
places the models' errors too (protocol/validation.py).

The loader follows the YAML 1.2 core schema rather than PyYAML's YAML 1.1 default, so
that what a manager writes is what they get:

- ``17:30`` stays the text "17:30" (YAML 1.1 reads it as the number 1050);
- ``2026-05-01`` stays text and is checked as a date by the model, so ``2026-02-30``
  becomes a located error instead of a crash inside the YAML library;
- only ``true``/``false`` are booleans (``yes``, ``no``, ``on``, ``off`` stay text);
- a number with a leading zero (a statistics code such as ``00004``) stays text;
- a key written twice in one mapping is an error, not "the last one wins".
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from protocol.config_errors import ConfigError, Problem, Severity
from protocol.l10n import _

PathPart = str | int
NodePath = tuple[PathPart, ...]


@dataclass(frozen=True)
class Location:
    """1-based line and column."""

    line: int
    col: int


class LocationMap:
    """Where every node of one loaded document sits in its file.

    A path is the sequence of mapping keys and list indexes from the document root,
    the way pydantic reports an error's ``loc``: ``("programmes", 2, "schedule")``.
    """

    def __init__(
        self,
        file: str,
        values: dict[NodePath, Location],
        keys: dict[NodePath, Location],
    ) -> None:
        self.file = file
        self._values = values
        self._keys = keys

    def __contains__(self, path: NodePath) -> bool:
        return path in self._values

    def named(self, file: str) -> LocationMap:
        """The same locations, with file as the name problems give."""
        return LocationMap(file, self._values, self._keys)

    def value(self, path: Sequence[PathPart]) -> Location:
        """Where the value at path starts, or that of its nearest existing parent."""
        p = tuple(path)
        while p and p not in self._values:
            p = p[:-1]
        return self._values.get(p, Location(1, 1))

    def key(self, path: Sequence[PathPart]) -> Location:
        """Where the key naming path is written (for a list item: the item itself)."""
        p = tuple(path)
        if p in self._keys:
            return self._keys[p]
        return self.value(p)

    def problem(
        self,
        path: Sequence[PathPart],
        message: str,
        *,
        at_key: bool = False,
        severity: Severity = "error",
    ) -> Problem:
        p = tuple(path)
        if p not in self._values:
            # Not written (a missing key): point at the key of the nearest written parent.
            while p and p not in self._values:
                p = p[:-1]
            where = self.key(p)
        else:
            where = self.key(p) if at_key else self.value(p)
        return Problem(self.file, where.line, where.col, message, severity)


# --- the loader -------------------------------------------------------------------------


class MarkedLoader(yaml.SafeLoader):
    """A safe loader (no Python objects) resolving plain scalars by the YAML 1.2 core
    schema, a little stricter (see the module docstring)."""


# Start from no implicit types at all (not SafeLoader's YAML 1.1 ones), then add the
# core schema's.
MarkedLoader.yaml_implicit_resolvers = {}

MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^[-+]?(?:0|[1-9][0-9]*)$"),
    list("-+0123456789"),
)
MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|(?:0|[1-9][0-9]*)(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)
MarkedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
MarkedLoader.add_implicit_resolver("tag:yaml.org,2002:merge", re.compile(r"^(?:<<)$"), ["<"])


def _construct_int(loader: yaml.SafeLoader, node: ScalarNode) -> int:
    return int(str(loader.construct_scalar(node)))


def _construct_float(loader: yaml.SafeLoader, node: ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    if text == ".nan":
        return float("nan")
    return float(text)


MarkedLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
MarkedLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)


_HINTS: tuple[tuple[str, str], ...] = (
    (
        "found character '\\t' that cannot start any token",
        "YAML does not allow tabs: indent with spaces",
    ),
    (
        "mapping values are not allowed here",
        "a ':' followed by a space inside a value: put the value in quotes, "
        "or check the indentation of this line",
    ),
    (
        "could not find expected ':'",
        "a key needs ':' after it (key: value); check this line and the one above",
    ),
    (
        "did not find expected key",
        "the indentation of this line does not match the lines around it",
    ),
    (
        "did not find expected '-' indicator",
        "this line should be a list item starting with '- ', indented like the others",
    ),
    (
        "found unexpected end of stream",
        "a quote or bracket opened here is never closed",
    ),
)


def _runaway_quote(text: str, before: yaml.Mark) -> yaml.Mark | None:
    """Where a quoted text that runs over several lines starts, if one does before `before`.

    A missing closing quote makes YAML read on until the next quote, lines later, and
    report the error there; the place to fix is where the quote was opened.
    """
    try:
        for token in yaml.scan(text, Loader=MarkedLoader):
            start: yaml.Mark = token.start_mark
            if start.index >= before.index:
                break
            if (
                isinstance(token, yaml.ScalarToken)
                and token.style in ('"', "'")
                and token.end_mark.line > start.line
            ):
                return start
    except yaml.YAMLError:
        pass
    return None


def _syntax_problem(file: str, exc: yaml.YAMLError, text: str) -> Problem:
    if not isinstance(exc, yaml.MarkedYAMLError):
        return Problem(file, 1, 1, f"not valid YAML: {exc}")
    what = exc.problem or "not valid YAML"
    mark = exc.problem_mark or exc.context_mark
    if "end of stream" in what and exc.context_mark is not None:
        mark = exc.context_mark  # an unclosed quote or bracket: where it was opened
    quote = _runaway_quote(text, mark) if mark is not None else None
    if quote is not None and mark is not None:
        return Problem(
            file,
            quote.line + 1,
            quote.column + 1,
            f"YAML syntax error: the quoted text opened here runs on to line {mark.line + 1};"
            " is a closing quote missing?",
        )
    opened = exc.context_mark
    if (
        exc.context is not None
        and "flow" in exc.context
        and opened is not None
        and exc.problem_mark is not None
        and exc.problem_mark.line > opened.line
    ):
        # [ or { not closed on its line: YAML reads on and complains lines later; the
        # place to fix is where it was opened.
        closer = "]" if "sequence" in exc.context else "}"
        return Problem(
            file,
            opened.line + 1,
            opened.column + 1,
            f"YAML syntax error: the '{'[' if closer == ']' else '{'}' opened here is not "
            f"closed before line {exc.problem_mark.line + 1}; is a '{closer}' (or a ',' "
            "between items) missing?",
        )
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    message = f"YAML syntax error: {what}"
    if exc.context and exc.context_mark is not None and exc.context_mark is not mark:
        message += f" ({exc.context} at line {exc.context_mark.line + 1})"
    for needle, hint in _HINTS:
        if needle in what:
            message += f"; {hint}"
            break
    return Problem(file, line, col, message)


_MERGE_TAG = "tag:yaml.org,2002:merge"

# Aliases can make a small file expand enormously ("billion laughs"); no real
# configuration comes near this many values.
MAX_NODES = 200_000


def _key_of(node: Node) -> PathPart | None:
    """A mapping key as a path part: scalars only (YAML allows others; we never use them)."""
    if not isinstance(node, ScalarNode):
        return None
    text = str(node.value)
    if node.tag == "tag:yaml.org,2002:int":
        return int(text)
    return text


class _Locator:
    """Records where every node sits and reports keys written twice in one mapping.

    Runs on the composed node tree, before construction: merge keys (<<) are skipped,
    so a key that overrides a merged one is not a duplicate, and merged values are
    located at the mapping that merges them.
    """

    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[NodePath, Location] = {}
        self.keys: dict[NodePath, Location] = {}
        self.problems: list[Problem] = []
        self._budget = MAX_NODES

    def walk(self, node: Node, path: NodePath) -> None:
        self._budget -= 1
        if self._budget < 0:
            raise ConfigError(
                [Problem(self.file, 1, 1, f"more than {MAX_NODES} values (after aliases)")]
            )
        self.values[path] = Location(node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                part = _key_of(key_node)
                if part is not None:
                    self._entry(key_node, value_node, (*path, part))
        elif isinstance(node, SequenceNode):
            for index, item in enumerate(node.value):
                self.walk(item, (*path, index))

    def _entry(self, key_node: Node, value_node: Node, child: NodePath) -> None:
        where = Location(key_node.start_mark.line + 1, key_node.start_mark.column + 1)
        if child in self.keys:
            self.problems.append(
                Problem(
                    self.file,
                    where.line,
                    where.col,
                    f"key {str(child[-1])!r} is written twice in this mapping (first at "
                    f"line {self.keys[child].line}); keep only one",
                )
            )
            return
        self.keys[child] = where
        self.walk(value_node, child)


def load_yaml(path: Path | str) -> tuple[Any, LocationMap]:
    """Load one YAML document, keeping the location of every node.

    Raises ConfigError (with file:line:col) for an unreadable file, a syntax error, a
    key written twice, or a file with no content.
    """
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([Problem(file, 1, 1, _("file not found; check the path"))]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(file, 1, 1, _("not UTF-8 text ({why}); save the file as UTF-8",
                                   why=exc.reason))]
        ) from None
    except OSError as exc:
        raise ConfigError(
            [Problem(file, 1, 1, _("cannot read this file: {why}", why=exc.strerror))]
        ) from None
    return load_yaml_text(text, file)


def load_yaml_text(text: str, file: str) -> tuple[Any, LocationMap]:
    """load_yaml for text already in memory; file names it in messages."""
    loader = MarkedLoader(text)
    locator = _Locator(file)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(
                [Problem(file, 1, 1, _("the file is empty; it needs at least one key: value"))]
            )
        locator.walk(root, ())
        if locator.problems:
            raise ConfigError(locator.problems)
        data = loader.construct_document(root)
    except yaml.YAMLError as exc:
        raise ConfigError([_syntax_problem(file, exc, text)]) from None
    except (ValueError, TypeError) as exc:  # a bad explicit tag value, e.g. !!int 08
        raise ConfigError([Problem(file, 1, 1, f"cannot read a value: {exc}")]) from None
    except RecursionError:
        raise ConfigError([Problem(file, 1, 1, "the document is nested too deeply")]) from None
    finally:
        loader.dispose()
    if data is None:
        raise ConfigError([Problem(file, 1, 1, _("the file has no content, only comments"))])
    return data, LocationMap(file, locator.values, locator.keys)
