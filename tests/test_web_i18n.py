"""Every word the web app shows exists in Vietnamese and in English, and no word is kept
that nothing shows.

The keys are read from the source, not from pages a test happened to render: the Jinja
templates are parsed (every `tr(...)` and `t(lang, ...)` call), and so is the Python of
controller/web/ (every `t(lang, ...)`, and every call of a function that hands its
argument on to `t()` as the key). A key built from a prefix and a value
(`tr("st_" + status)`, `t(lang, "act_" + action)`) stands for the prefix with every
value the domain allows, taken from the type that holds it. The static scripts use no
keys: their labels come from the page (announcement.html's `labels`), which the
templates cover.
"""

from __future__ import annotations

import ast
import re
import string
from pathlib import Path
from typing import TypeGuard, get_args

import jinja2
import pytest
from jinja2 import nodes

from controller.audio_chain import ProfileName
from controller.audit import CSV_HEADER, Action
from controller.fleet import Kind
from controller.fleet_view import STATES
from controller.urgent import ClusterStatus
from controller.web.i18n import LANGS, TEXT
from protocol.messages import EVENT_KINDS, Level

WEB = Path(__file__).resolve().parent.parent / "controller" / "web"

# What a key built as prefix + value may end with: every value its type allows.
DYNAMIC: dict[str, tuple[str, ...]] = {
    "st_": get_args(ClusterStatus),  # an announcement's per-cluster status
    "level_": get_args(Level),
    "kind_": (*get_args(Kind), "cluster"),  # the target picker's TreeEntry.kind
    "profile_": get_args(ProfileName),  # the audio profile of a listen button
    "act_": get_args(Action),  # an audit log row's action
    "csv_": tuple(CSV_HEADER),  # the audit log CSV's columns
    "state_": STATES,  # a cluster's availability on the fleet pages
    "ev_": EVENT_KINDS,  # an event on a cluster's page
    "weekday_": tuple(str(d) for d in range(7)),  # a day of the calendar, Monday first
}


class Use:
    """One use of a key: where, and the values passed to fill its {placeholders}."""

    def __init__(self, where: str, key: str, values: set[str] | None) -> None:
        self.where = where
        self.key = key
        self.values = values  # None: not known (a key built from a prefix)


def _template_uses() -> tuple[list[Use], list[str]]:
    env = jinja2.Environment(autoescape=True)
    uses: list[Use] = []
    unreadable: list[str] = []
    for path in sorted((WEB / "templates").glob("*.html")):
        tree = env.parse(path.read_text(encoding="utf-8"))
        for call in tree.find_all(nodes.Call):
            if not isinstance(call.node, nodes.Name) or call.node.name not in ("tr", "t"):
                continue
            args = call.args if call.node.name == "tr" else call.args[1:]
            where = f"{path.relative_to(WEB)}:{call.lineno}"
            values = {k.key for k in call.kwargs}
            key = args[0] if args else None
            if isinstance(key, nodes.Const) and isinstance(key.value, str):
                uses.append(Use(where, key.value, values))
            elif (
                isinstance(key, nodes.Add)
                and isinstance(key.left, nodes.Const)
                and key.left.value in DYNAMIC
            ):
                uses += [Use(where, key.left.value + v, None) for v in DYNAMIC[key.left.value]]
            else:
                unreadable.append(where)
    return uses, unreadable


def _is_t(node: ast.AST) -> TypeGuard[ast.Call]:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "t"


def _called(call: ast.Call) -> str | None:
    """The name of the function a call calls (f() or module.f()), if it is written so."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    return call.func.attr if isinstance(call.func, ast.Attribute) else None


def _passes_a_parameter(call: ast.Call, params: list[str]) -> str | None:
    """The parameter call hands to t() as the key, if it is one of params."""
    key = call.args[1] if len(call.args) > 1 else None
    return key.id if isinstance(key, ast.Name) and key.id in params else None


def _python_uses() -> tuple[list[Use], list[str]]:
    trees = {
        str(path.relative_to(WEB)): ast.parse(path.read_text(encoding="utf-8"))
        for path in sorted(WEB.glob("*.py"))
        if path.name != "i18n.py"
    }
    # A function or lambda that hands a parameter of its own to t() as the key is a
    # forwarder (`_error(request, found, 404, "not_found")`; the templates' `tr`, a
    # lambda, is read in the templates): the keys are what its callers pass.
    forwarders: dict[str, tuple[int, str]] = {}
    forwarding: set[int] = set()  # the t() calls inside forwarders
    for tree in trees.values():
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef | ast.Lambda):
                continue
            params = [a.arg for a in func.args.args]
            for call in ast.walk(func):
                if _is_t(call) and (param := _passes_a_parameter(call, params)):
                    forwarding.add(id(call))
                    if isinstance(func, ast.FunctionDef):
                        forwarders[func.name] = (params.index(param), param)
    uses: list[Use] = []
    unreadable: list[str] = []
    for name, tree in trees.items():
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or id(call) in forwarding:
                continue
            values: set[str] | None
            if _is_t(call):
                key = call.args[1] if len(call.args) > 1 else None
                values = {k.arg for k in call.keywords if k.arg}
            elif (called := _called(call)) in forwarders:  # error_page(), pages.error_page()
                position, param = forwarders[called]
                named = [k.value for k in call.keywords if k.arg == param]
                key = named[0] if named else (
                    call.args[position] if len(call.args) > position else None
                )
                values = None  # what the forwarder fills in is not read here
            else:
                continue
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                uses.append(Use(f"{name}:{call.lineno}", key.value, values))
            elif (
                isinstance(key, ast.BinOp)
                and isinstance(key.op, ast.Add)
                and isinstance(key.left, ast.Constant)
                and key.left.value in DYNAMIC
            ):
                prefix = key.left.value
                uses += [Use(f"{name}:{call.lineno}", prefix + v, None) for v in DYNAMIC[prefix]]
            else:
                unreadable.append(f"{name}:{call.lineno}")
    return uses, unreadable


def _uses() -> list[Use]:
    templates, unreadable = _template_uses()
    python, more = _python_uses()
    assert not unreadable + more, (
        "keys this test cannot read (write the key as a literal, or add its prefix to "
        f"DYNAMIC): {unreadable + more}"
    )
    return templates + python


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_the_sources_use_keys_this_test_can_read() -> None:
    uses = _uses()
    assert any(u.where.startswith("templates/") for u in uses)
    assert any(".py:" in u.where for u in uses)
    assert {"st_playing", "level_emergency", "kind_village"} <= {u.key for u in uses}


def test_every_key_used_exists_in_both_languages() -> None:
    missing = sorted({f"{u.key} ({u.where})" for u in _uses() if u.key not in TEXT})
    assert missing == [], f"keys used but not in controller/web/i18n.py TEXT: {missing}"


def test_no_key_is_kept_that_nothing_uses() -> None:
    unused = sorted(set(TEXT) - {u.key for u in _uses()})
    assert unused == [], f"keys in controller/web/i18n.py that nothing shows: {unused}"


@pytest.mark.parametrize("key", sorted(TEXT))
def test_each_text_is_written_in_both_languages_with_the_same_placeholders(key: str) -> None:
    entry = TEXT[key]
    assert set(entry) == set(LANGS), f"{key}: languages {sorted(entry)}, not {list(LANGS)}"
    assert all(entry[lang].strip() for lang in LANGS), f"{key}: an empty text"
    assert _placeholders(entry["vi"]) == _placeholders(entry["en"]), key


def test_each_use_fills_the_placeholders_of_its_text() -> None:
    wrong = [
        f"{u.where}: {u.key} gets {sorted(u.values)}, its text wants "
        f"{sorted(_placeholders(TEXT[u.key]['vi']))}"
        for u in _uses()
        if u.values is not None and u.key in TEXT
        and u.values != _placeholders(TEXT[u.key]["vi"])
    ]
    assert wrong == []


def test_the_scripts_use_no_keys_of_their_own() -> None:
    for script in sorted((WEB / "static").glob("*.js")):
        calls = re.findall(r"\btr?\(\s*['\"]", script.read_text(encoding="utf-8"))
        assert calls == [], f"{script.name} looks words up itself; pass them from the page"
