"""YAML with file:line:col kept for every node, and pydantic errors mapped back to them.

Shared by the controller (fleet, playlists, controller config) and the agent (its
config). Managers edit these files by hand, so every problem is reported as
``file:line:col: what is wrong; what to write instead``, all of them at once, and
bad YAML is never turned into an empty document.

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

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, BeforeValidator, ValidationError, WithJsonSchema
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Severity = Literal["error", "warning"]
PathPart = str | int
NodePath = tuple[PathPart, ...]

M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Problem:
    """One thing wrong in one file, at a 1-based line and column."""

    file: str
    line: int
    col: int
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.file}:{self.line}:{self.col}: {prefix}{self.message}"


def sort_problems(problems: Iterable[Problem]) -> list[Problem]:
    """Problems in reading order: by file, line, column; duplicates dropped."""
    return sorted(set(problems), key=lambda p: (p.file, p.line, p.col, p.message))


class ConfigError(Exception):
    """One or more errors in configuration files; str() lists them one per line."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems: list[Problem] = sort_problems(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


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
        raise ConfigError([Problem(file, 1, 1, "file not found; check the path")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [Problem(file, 1, 1, f"not UTF-8 text ({exc.reason}); save the file as UTF-8")]
        ) from None
    except OSError as exc:
        raise ConfigError([Problem(file, 1, 1, f"cannot read this file: {exc.strerror}")]) from None
    return load_yaml_text(text, file)


def load_yaml_text(text: str, file: str) -> tuple[Any, LocationMap]:
    """load_yaml for text already in memory; file names it in messages."""
    loader = MarkedLoader(text)
    locator = _Locator(file)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ConfigError(
                [Problem(file, 1, 1, "the file is empty; it needs at least one key: value")]
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
        raise ConfigError([Problem(file, 1, 1, "the file has no content, only comments")])
    return data, LocationMap(file, locator.values, locator.keys)


# --- pydantic errors, located -----------------------------------------------------------


def _unwrap(annotation: Any) -> list[Any]:
    """The concrete types an annotation may hold (Optional, Annotated and unions opened)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        out: list[Any] = []
        for arg in typing.get_args(annotation):
            out.extend(_unwrap(arg))
        return out
    return [annotation]


def _step(annotation: Any, part: PathPart) -> list[Any]:
    """The annotations one loc step below annotation."""
    out: list[Any] = []
    for t in _unwrap(annotation):
        origin = typing.get_origin(t)
        args = typing.get_args(t)
        if isinstance(t, type) and issubclass(t, BaseModel) and isinstance(part, str):
            for name, field in t.model_fields.items():
                if part in (name, field.alias):
                    out.append(field.annotation)
        elif origin in (list, tuple, set, frozenset, Sequence) and isinstance(part, int) and args:
            out.append(args[0])
        elif origin is dict and len(args) == 2:
            out.append(args[1])
    return out


def _keys_at(model: type[BaseModel], loc: Sequence[PathPart]) -> list[str]:
    """The field names (aliases) of the model found at loc, for "did you mean"."""
    current: list[Any] = [model]
    for part in loc:
        current = [a for t in current for a in _step(t, part)]
    names: list[str] = []
    for t in current:
        for c in _unwrap(t):
            if isinstance(c, type) and issubclass(c, BaseModel):
                names.extend(f.alias or n for n, f in c.model_fields.items())
    return sorted(set(names))


def suggest(word: str, choices: Iterable[str]) -> str | None:
    """The closest choice to word, if any is close enough to be a likely typo."""
    pool = list(choices)
    matches = difflib.get_close_matches(word, pool, n=1, cutoff=0.6)
    if not matches:
        lowered = {c.lower(): c for c in pool}
        matches = [lowered[m] for m in difflib.get_close_matches(word.lower(), lowered, 1, 0.6)]
    return matches[0] if matches else None


_KINDS: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "true/false ({v})"),
    ((int, float), "a number ({v})"),
    (str, "the text {v!r}"),
    (list, "a list"),
    (dict, "a mapping (key: value lines)"),
)


def _yaml_kind(value: Any) -> str:
    """What a manager wrote, in YAML terms, for "expected X, found Y"."""
    if value is None:
        return "nothing (an empty value)"
    for types_, text in _KINDS:
        if isinstance(value, types_):
            return text.format(v=str(value).lower() if isinstance(value, bool) else value)
    return type(value).__name__


_EXPECTED: dict[str, str] = {
    "string_type": "text",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "float_type": "a number",
    "float_parsing": "a number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": "a list (lines starting with '- ', or [a, b])",
    "tuple_type": "a list (lines starting with '- ', or [a, b])",
    "set_type": "a list (lines starting with '- ', or [a, b])",
    "dict_type": "a mapping (key: value lines)",
    "model_type": "a mapping (key: value lines)",
    "model_attributes_type": "a mapping (key: value lines)",
    "date_type": "a date written YYYY-MM-DD",
    "date_parsing": "a date written YYYY-MM-DD",
    "date_from_datetime_parsing": "a date written YYYY-MM-DD",
    "date_from_datetime_inexact": "a date written YYYY-MM-DD",
    "time_type": "a time written HH:MM",
    "time_parsing": "a time written HH:MM",
    "timedelta_type": "a duration such as 90s, 10m or 1h30m",
    "timedelta_parsing": "a duration such as 90s, 10m or 1h30m",
    "path_type": "a file path",
}


def _label(loc: Sequence[PathPart]) -> str:
    """The key an error is about: the last named key, and the list item within it."""
    items: list[int] = []
    name = "the document"
    for part in reversed(loc):
        if isinstance(part, int):
            items.append(part + 1)
        else:
            # Fields named after Python keywords carry a trailing "_" (from_ for `from`).
            name = part.rstrip("_") or part
            break
    return name + "".join(f" (item {i})" for i in reversed(items))


_Error = dict[str, Any]


def _unknown_key(model: type[BaseModel], error: _Error, label: str) -> str:
    loc = tuple(error["loc"])
    key = str(loc[-1]) if loc else "?"
    allowed = _keys_at(model, loc[:-1])
    close = suggest(key, allowed)
    if close:
        return f"unknown key {key!r}; did you mean {close!r}?"
    listing = ", ".join(allowed) if allowed else "none"
    return f"unknown key {key!r}; the keys allowed here are: {listing}"


def _missing(model: type[BaseModel], error: _Error, label: str) -> str:
    key = str(error["loc"][-1]) if error["loc"] else "?"
    return f"missing key {key!r}: add a line `{key}: ...` here"


def _choice(model: type[BaseModel], error: _Error, label: str) -> str:
    value = error.get("input")
    expected = str((error.get("ctx") or {}).get("expected", ""))
    text = f"{label}: {_yaml_kind(value)} is not allowed; write one of {expected}"
    close = suggest(value, re.findall(r"'([^']*)'", expected)) if isinstance(value, str) else None
    return text + (f" (did you mean {close!r}?)" if close else "")


def _custom(model: type[BaseModel], error: _Error, label: str) -> str:
    msg = re.sub(r"^(Value error|Assertion failed), ", "", str(error["msg"]))
    return f"{label}: {msg}"


def _wrong_type(model: type[BaseModel], error: _Error, label: str) -> str:
    ctx = error.get("ctx") or {}
    detail = f" ({ctx['error']})" if "error" in ctx else ""
    found = _yaml_kind(error.get("input"))
    return f"{label}: expected {_EXPECTED[error['type']]}, found {found}{detail}"


def _length(model: type[BaseModel], error: _Error, label: str) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "too_short":
        return f"{label}: needs at least {ctx.get('min_length', 1)} item(s)"
    return f"{label}: at most {ctx.get('max_length', '?')} item(s) are allowed"


def _range(model: type[BaseModel], error: _Error, label: str) -> str:
    rule = str(error["msg"]).removeprefix("Input should be ")
    return f"{label}: {_yaml_kind(error.get('input'))} is out of range; it must be {rule}"


def _text_rule(model: type[BaseModel], error: _Error, label: str) -> str:
    if error["type"] == "string_too_short":
        return f"{label}: must not be empty"
    if error["type"] == "string_too_long":
        limit = (error.get("ctx") or {}).get("max_length", "?")
        return f"{label}: too long; at most {limit} characters"
    return f"{label}: {_yaml_kind(error.get('input'))} is not in the expected form"


_Explain = typing.Callable[[type[BaseModel], _Error, str], str]

_EXPLAIN: dict[str, _Explain] = {
    "extra_forbidden": _unknown_key,
    "missing": _missing,
    "literal_error": _choice,
    "enum": _choice,
    "value_error": _custom,
    "assertion_error": _custom,
    "too_short": _length,
    "too_long": _length,
    "greater_than": _range,
    "greater_than_equal": _range,
    "less_than": _range,
    "less_than_equal": _range,
    "string_too_short": _text_rule,
    "string_too_long": _text_rule,
    "string_pattern_mismatch": _text_rule,
    **dict.fromkeys(_EXPECTED, _wrong_type),
}


def _message(model: type[BaseModel], error: _Error) -> str:
    """Friendly text for one pydantic error."""
    label = _label(tuple(error["loc"]))
    explain = _EXPLAIN.get(error["type"])
    if explain is None:
        return f"{label}: {error['msg']}"
    return explain(model, error, label)


def located_problems(
    model: type[BaseModel], exc: ValidationError, locations: LocationMap
) -> list[Problem]:
    """Every error of exc, at the file:line:col of the node it is about."""
    errors = exc.errors()
    # A misspelt key ('tagets') also makes the right one ('targets') missing: the
    # "did you mean" says it all, so the missing-key error is left out.
    misspelt = set()
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden" and loc:
            close = suggest(str(loc[-1]), _keys_at(model, loc[:-1]))
            misspelt.add((*loc[:-1], close))
    problems: list[Problem] = []
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "missing" and loc in misspelt:
            continue
        message = _message(model, dict(error))
        at_key = error["type"] == "extra_forbidden"
        problems.append(locations.problem(loc, message, at_key=at_key))
    return sort_problems(problems)


def validate(
    model: type[M],
    data: Any,
    locations: LocationMap,
    file: str | None = None,
    *,
    context: dict[str, Any] | None = None,
) -> M | list[Problem]:
    """Validate data as model; on failure, every error as a located Problem.

    file overrides the file name of locations in the messages (normally the same).
    context is passed to the model's validators (e.g. the directory to resolve paths in).
    """
    try:
        return model.model_validate(data, context=context)
    except ValidationError as exc:
        where = locations
        if file is not None and file != locations.file:
            where = LocationMap(file, locations._values, locations._keys)
        return located_problems(model, exc, where)


# --- value types shared by every configuration file ---------------------------------------

_DURATION = re.compile(r"(?:(\d+)\s*h)?\s*(?:(\d+)\s*m)?\s*(?:(\d+)\s*s)?")


def parse_duration(value: Any) -> Any:
    """ "90s", "10m", "2h", "1h30m" as a timedelta; other types are left to pydantic."""
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        raise ValueError(f"{value} has no unit: write e.g. {value}s or {value}m")
    if not isinstance(value, str):
        return value
    match = _DURATION.fullmatch(value.strip())
    if not value.strip() or not match:
        raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 10m, 2h or 1h30m")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return timedelta(hours=hours, minutes=minutes, seconds=seconds)


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\s*(\d+\s*h)?\s*(\d+\s*m)?\s*(\d+\s*s)?\s*$",
            "description": "a duration: 90s, 10m, 2h, 1h30m",
            "examples": ["10m", "1h30m"],
        }
    ),
]
