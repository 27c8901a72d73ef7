"""Loaded configuration validated against its pydantic model, every error located.

pydantic reports an error at a path of keys and list indexes (its ``loc``); the
`LocationMap` of the loaded file (protocol/yamlload.py) turns that path into the
``file:line:col`` where it is written, and the error into words a manager can act on:
"unknown key 'tagets'; did you mean 'targets'?", "expected a whole number, found the text
'ten'", "missing key 'id': add a line `id: ...` here". `suggest()` is the one "did you
mean" of the project, also used for command-line words and programme ids.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar, Union

from pydantic import BaseModel, ValidationError

from protocol.config_errors import Problem, sort_problems
from protocol.l10n import N_, _
from protocol.yamlload import LocationMap, PathPart

M = TypeVar("M", bound=BaseModel)


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
    (bool, N_("true/false ({v})")),
    ((int, float), N_("a number ({v})")),
    (str, N_("the text {v!r}")),
    (list, N_("a list")),
    (dict, N_("a mapping (key: value lines)")),
)


def _yaml_kind(value: Any) -> str:
    """What a manager wrote, in YAML terms, for "expected X, found Y" (in the process's
    language, protocol.l10n, as every message here)."""
    if value is None:
        return _("nothing (an empty value)")
    for types_, text in _KINDS:
        if isinstance(value, types_):
            shown = str(value).lower() if isinstance(value, bool) else value
            return _(text, v=shown)
    return type(value).__name__


_EXPECTED: dict[str, str] = {
    "string_type": N_("text"),
    "int_type": N_("a whole number"),
    "int_parsing": N_("a whole number"),
    "int_from_float": N_("a whole number"),
    "float_type": N_("a number"),
    "float_parsing": N_("a number"),
    "bool_type": N_("true or false"),
    "bool_parsing": N_("true or false"),
    "list_type": N_("a list (lines starting with '- ', or [a, b])"),
    "tuple_type": N_("a list (lines starting with '- ', or [a, b])"),
    "set_type": N_("a list (lines starting with '- ', or [a, b])"),
    "dict_type": N_("a mapping (key: value lines)"),
    "model_type": N_("a mapping (key: value lines)"),
    "model_attributes_type": N_("a mapping (key: value lines)"),
    "date_type": N_("a date written YYYY-MM-DD"),
    "date_parsing": N_("a date written YYYY-MM-DD"),
    "date_from_datetime_parsing": N_("a date written YYYY-MM-DD"),
    "date_from_datetime_inexact": N_("a date written YYYY-MM-DD"),
    "time_type": N_("a time written HH:MM"),
    "time_parsing": N_("a time written HH:MM"),
    "timedelta_type": N_("a duration such as 90s, 10m or 1h30m"),
    "timedelta_parsing": N_("a duration such as 90s, 10m or 1h30m"),
    "path_type": N_("a file path"),
}


def _label(loc: Sequence[PathPart]) -> str:
    """The key an error is about: the last named key, and the list item within it."""
    items: list[int] = []
    name = _("the document")
    for part in reversed(loc):
        if part == "[key]":  # the key of a mapping itself is wrong: name that key
            continue
        if isinstance(part, int):
            items.append(part + 1)
        else:
            # Fields named after Python keywords carry a trailing "_" (from_ for `from`).
            name = part.rstrip("_") or part
            break
    return name + "".join(_(" (item {i})", i=i) for i in reversed(items))


_Error = dict[str, Any]


def _unknown_key(model: type[BaseModel], error: _Error, label: str) -> str:
    loc = tuple(error["loc"])
    key = str(loc[-1]) if loc else "?"
    allowed = _keys_at(model, loc[:-1])
    close = suggest(key, allowed)
    if close:
        return _("unknown key {key!r}; did you mean {close!r}?", key=key, close=close)
    listing = ", ".join(allowed) if allowed else _("none")
    return _("unknown key {key!r}; the keys allowed here are: {listing}", key=key,
             listing=listing)


def _missing(model: type[BaseModel], error: _Error, label: str) -> str:
    key = str(error["loc"][-1]) if error["loc"] else "?"
    return _("missing key {key!r}: add a line `{key}: ...` here", key=key)


def _choice(model: type[BaseModel], error: _Error, label: str) -> str:
    value = error.get("input")
    expected = str((error.get("ctx") or {}).get("expected", ""))
    text = _("{label}: {found} is not allowed; write one of {expected}", label=label,
             found=_yaml_kind(value), expected=expected.replace(" or ", _(" or ")))
    close = suggest(value, re.findall(r"'([^']*)'", expected)) if isinstance(value, str) else None
    return text + (_(" (did you mean {close!r}?)", close=close) if close else "")


def _custom(model: type[BaseModel], error: _Error, label: str) -> str:
    msg = re.sub(r"^(Value error|Assertion failed), ", "", str(error["msg"]))
    return f"{label}: {msg}"


def _wrong_type(model: type[BaseModel], error: _Error, label: str) -> str:
    ctx = error.get("ctx") or {}
    detail = f" ({ctx['error']})" if "error" in ctx else ""
    found = _yaml_kind(error.get("input"))
    return _("{label}: expected {expected}, found {found}{detail}", label=label,
             expected=_(_EXPECTED[error["type"]]), found=found, detail=detail)


def _length(model: type[BaseModel], error: _Error, label: str) -> str:
    ctx = error.get("ctx") or {}
    if error["type"] == "too_short":
        return _("{label}: needs at least {n} item(s)", label=label, n=ctx.get("min_length", 1))
    return _("{label}: at most {n} item(s) are allowed", label=label,
             n=ctx.get("max_length", "?"))


#: The bound of each range error, as the rule it sets.
_BOUNDS = {
    "greater_than": ("gt", N_("greater than {n}")),
    "greater_than_equal": ("ge", N_("greater than or equal to {n}")),
    "less_than": ("lt", N_("less than {n}")),
    "less_than_equal": ("le", N_("less than or equal to {n}")),
}


def _range(model: type[BaseModel], error: _Error, label: str) -> str:
    key, rule = _BOUNDS[error["type"]]
    ctx = error.get("ctx") or {}
    bound = _(rule, n=ctx[key]) if key in ctx else str(error["msg"]).removeprefix(
        "Input should be "
    )
    return _("{label}: {found} is out of range; it must be {rule}", label=label,
             found=_yaml_kind(error.get("input")), rule=bound)


def _text_rule(model: type[BaseModel], error: _Error, label: str) -> str:
    if error["type"] == "string_too_short":
        return _("{label}: must not be empty", label=label)
    if error["type"] == "string_too_long":
        limit = (error.get("ctx") or {}).get("max_length", "?")
        return _("{label}: too long; at most {n} characters", label=label, n=limit)
    return _("{label}: {found} is not in the expected form", label=label,
             found=_yaml_kind(error.get("input")))


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
        where = locations.named(file) if file is not None else locations
        return located_problems(model, exc, where)
