"""YAML loading with locations, and pydantic errors mapped back to file:line:col."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from textwrap import dedent
from typing import Literal

import pytest
from pydantic import BaseModel, ConfigDict

from controller.config import ControllerConfig, load_controller_config
from protocol.config_errors import ConfigError, Problem
from protocol.durations import Duration
from protocol.validation import validate
from protocol.yamlload import LocationMap, load_yaml, load_yaml_text

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "file.yaml") -> Path:
    path = tmp_path / name
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def only_problem(exc: pytest.ExceptionInfo[ConfigError]) -> Problem:
    assert len(exc.value.problems) == 1, str(exc.value)
    return exc.value.problems[0]


# --- problems -----------------------------------------------------------------------------


def test_a_problem_reads_file_line_col_message() -> None:
    assert str(Problem("a.yaml", 3, 5, "bad")) == "a.yaml:3:5: bad"
    assert str(Problem("a.yaml", 3, 5, "odd", "warning")) == "a.yaml:3:5: warning: odd"


def test_a_config_error_lists_its_problems_in_reading_order() -> None:
    error = ConfigError([Problem("b.yaml", 1, 1, "x"), Problem("a.yaml", 9, 1, "y"),
                         Problem("a.yaml", 2, 4, "z")])
    assert str(error).splitlines() == ["a.yaml:2:4: z", "a.yaml:9:1: y", "b.yaml:1:1: x"]


# --- loading ------------------------------------------------------------------------------


def test_every_node_and_key_has_its_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, """
        # a comment
        programmes:
          - id: tin-sang
            times: ["06:00", "17:30"]
    """)
    data, where = load_yaml(path)
    assert data == {"programmes": [{"id": "tin-sang", "times": ["06:00", "17:30"]}]}
    assert where.file == str(path)
    assert where.key(("programmes",)).line == 2
    assert where.value(("programmes", 0)).line == 3
    assert (where.value(("programmes", 0, "times", 1)).line,
            where.value(("programmes", 0, "times", 1)).col) == (4, 22)
    assert where.key(("programmes", 0, "times")).col == 5
    # a path that was not written falls back to its nearest written parent
    assert where.value(("programmes", 0, "nothing", 3)).line == 3


def test_a_syntax_error_is_an_error_at_its_line_never_an_empty_document(tmp_path: Path) -> None:
    path = write(tmp_path, """
        programmes:
          - id: tin-sang
            name: "Tin sáng
          - id: tin-toi
    """)
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    problem = only_problem(exc)
    assert problem.file == str(path)
    assert problem.line == 3  # where the quote was opened, not the end of the file
    assert "YAML syntax error" in problem.message
    assert "never closed" in problem.message


def test_a_tab_in_the_indentation_is_explained(tmp_path: Path) -> None:
    path = tmp_path / "tabs.yaml"
    path.write_text("programmes:\n\t- id: x\n", encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    problem = only_problem(exc)
    assert problem.line == 2
    assert "indent with spaces" in problem.message


def test_a_colon_inside_a_value_says_to_quote_it(tmp_path: Path) -> None:
    path = write(tmp_path, """
        name: Bản tin
        title: Lưu ý: mưa lớn
    """)
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    problem = only_problem(exc)
    assert problem.line == 2
    assert "quotes" in problem.message


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_an_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    assert only_problem(exc).line == 1


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        load_yaml(tmp_path / "nowhere.yaml")
    problem = only_problem(exc)
    assert problem.file.endswith("nowhere.yaml")
    assert "not found" in problem.message


def test_a_file_that_is_not_utf8_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: T\xe2n B\xecnh\n")  # Latin-1, as an old editor might save it
    with pytest.raises(ConfigError, match="UTF-8"):
        load_yaml(path)


def test_a_key_written_twice_is_an_error_at_the_second(tmp_path: Path) -> None:
    path = write(tmp_path, """
        id: a
        schedule:
          times: ["06:00"]
          times: ["07:00"]
    """)
    with pytest.raises(ConfigError) as exc:
        load_yaml(path)
    problem = only_problem(exc)
    assert (problem.line, problem.col) == (4, 3)
    assert "first at line 3" in problem.message


def test_a_merge_key_may_be_overridden_without_a_duplicate_error() -> None:
    data, _ = load_yaml_text("base: &b {x: 1, y: 2}\nm:\n  <<: *b\n  x: 3\n", "f.yaml")
    assert data["m"] == {"x": 3, "y": 2}


def test_plain_scalars_follow_the_yaml_1_2_core_schema() -> None:
    data, _ = load_yaml_text(
        "t: 17:30\nd: 2026-02-30\nb: [yes, no, on, true, false]\n"
        "n: [12, -3, 1.5, 0123, 08, 1e3]\nz: ~\ne:\n",
        "f.yaml",
    )
    assert data["t"] == "17:30"  # YAML 1.1 would read 1050
    assert data["d"] == "2026-02-30"  # YAML 1.1 would crash on the impossible date
    assert data["b"] == ["yes", "no", "on", True, False]
    assert data["n"] == [12, -3, 1.5, "0123", "08", 1000.0]  # leading zeros stay text
    assert data["z"] is None
    assert data["e"] is None


def test_an_alias_bomb_is_refused() -> None:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i, name in enumerate("bcdefg"):
        previous = "abcdefg"[i]
        lines.append(f"{name}: &{name} [{', '.join(['*' + previous] * 10)}]")
    with pytest.raises(ConfigError, match="values"):
        load_yaml_text("\n".join(lines) + "\n", "bomb.yaml")


def test_python_tags_are_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        load_yaml_text("x: !!python/object/apply:os.system ['true']\n", "evil.yaml")
    assert only_problem(exc).line == 1


# --- validation -----------------------------------------------------------------------------


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    times: list[str]
    level: Literal["normal", "priority", "emergency"] = "normal"
    lateness: Duration = timedelta(minutes=10)


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    targets: list[str] = []
    items: list[Inner] = []


def check(text: str) -> list[Problem]:
    data, where = load_yaml_text(dedent(text).lstrip("\n"), "p.yaml")
    result = validate(Outer, data, where)
    assert isinstance(result, list), "expected validation problems"
    return result


def test_an_unknown_key_suggests_the_closest_field_at_its_own_line() -> None:
    problems = check("""
        name: x
        tagets: [all]
    """)
    assert [str(p) for p in problems] == [
        "p.yaml:2:1: unknown key 'tagets'; did you mean 'targets'?"
    ]


def test_an_unknown_nested_key_suggests_from_the_nested_model() -> None:
    problems = check("""
        name: x
        items:
          - times: ["06:00"]
            lvel: normal
    """)
    assert len(problems) == 1
    assert (problems[0].line, problems[0].col) == (4, 5)
    assert "did you mean 'level'?" in problems[0].message


def test_an_unknown_key_with_no_close_field_lists_the_allowed_ones() -> None:
    [problem] = check("name: x\nzzz: 1\n")
    assert "name, targets, items" in problem.message or "items, name, targets" in problem.message


def test_a_bad_choice_lists_the_allowed_values_and_suggests_one() -> None:
    [problem] = check("""
        name: x
        items:
          - times: []
            level: priorty
    """)
    assert problem.line == 4
    assert "'normal', 'priority' or 'emergency'" in problem.message
    assert "did you mean 'priority'?" in problem.message


def test_a_missing_key_points_at_the_entry_that_lacks_it() -> None:
    [problem] = check("""
        name: x
        items:
          - level: normal
    """)
    assert problem.line == 3
    assert "missing key 'times'" in problem.message


def test_a_wrong_type_says_what_was_expected_and_found() -> None:
    [problem] = check("""
        name: [a, b]
    """)
    assert problem.line == 1
    assert "expected text, found a list" in problem.message


def test_a_bad_duration_says_how_to_write_one() -> None:
    [problem] = check("""
        name: x
        items:
          - times: []
            lateness: 10 minutes
    """)
    assert problem.line == 4
    assert "write e.g. 90s, 10m" in problem.message


def test_every_error_of_a_document_is_reported() -> None:
    problems = check("""
        nam: x
        targets: all
        items:
          - times: "06:00"
            level: loud
    """)
    assert [p.line for p in problems] == [1, 2, 4, 5]
    # 'nam' is reported as a misspelt 'name', not also as 'name' missing
    assert "did you mean 'name'?" in problems[0].message


@pytest.mark.parametrize(
    ("text", "expected"),
    [("90s", timedelta(seconds=90)), ("10m", timedelta(minutes=10)),
     ("1h30m", timedelta(hours=1, minutes=30)), ("2h", timedelta(hours=2))],
)
def test_durations_are_written_with_units(text: str, expected: timedelta) -> None:
    data, where = load_yaml_text(f"times: []\nlateness: {text}\n", "d.yaml")
    result = validate(Inner, data, where)
    assert isinstance(result, Inner)
    assert result.lateness == expected


def test_a_location_map_points_at_the_nearest_written_parent() -> None:
    _, where = load_yaml_text("a:\n  b: 1\n", "x.yaml")
    assert isinstance(where, LocationMap)
    assert where.problem(("a", "c"), "missing").line == 1  # the key `a:`
    assert where.problem(("a", "b"), "bad").col == 6


# --- the controller configuration uses the same loader ---------------------------------


def test_the_example_controller_config_loads_with_paths_beside_it() -> None:
    config = load_controller_config(ROOT / "config" / "controller.example.yaml")
    assert config.fleet == ROOT / "config" / "fleet.yaml"
    assert config.playlists == [ROOT / "playlists"]
    assert config.private_key == ROOT / "var" / "controller.key"
    assert config.store_url == f"sqlite:///{ROOT / 'var' / 'controller.db'}"
    assert config.tz.key == "Asia/Ho_Chi_Minh"
    assert config.lead_time == timedelta(minutes=30)


def test_a_minimal_controller_config_takes_the_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
        fleet: fleet.yaml
        playlists: [playlists, /srv/loa/extra.yaml]
        private_key: keys/controller.key
        content_dir: content
    """)
    config = load_controller_config(path)
    assert isinstance(config, ControllerConfig)
    assert config.playlists == [tmp_path / "playlists", Path("/srv/loa/extra.yaml")]
    assert config.broker_url == "mqtt://127.0.0.1:1883"
    assert config.store_url == "sqlite:////var/loa/controller.db"
    assert config.command_ttl > timedelta(0)


def test_controller_config_errors_are_all_located(tmp_path: Path) -> None:
    path = write(tmp_path, """
        broker_url: http://broker:1883
        fleet: fleet.yaml
        playlists: [playlists]
        private_key: k
        content_dir: c
        timezone: Asia/Ho_Chi_Minhh
        lead_tme: 30m
        audio:
          bitrate_kbps: 1000
    """)
    with pytest.raises(ConfigError) as exc:
        load_controller_config(path)
    lines = {p.line: p.message for p in exc.value.problems}
    assert sorted(lines) == [1, 6, 7, 9]
    assert "mqtt://" in lines[1]
    assert "did you mean 'Asia/Ho_Chi_Minh'?" in lines[6]
    assert "did you mean 'lead_time'?" in lines[7]
    assert "out of range" in lines[9]
