"""The fleet: the example tree, target resolution, group cover, located load errors."""

from __future__ import annotations

import random
from pathlib import Path
from textwrap import dedent

import pytest

from controller.fleet import Fleet, UnknownTargetError, json_schema, load_fleet
from protocol.config_errors import ConfigError
from protocol.topics import check_id

ROOT = Path(__file__).resolve().parent.parent
FLEET = ROOT / "config" / "fleet.yaml"
FLEET_2025 = ROOT / "config" / "fleet-2025-07-01.yaml"

# The fifteen units of Phụng Hiệp district (national statistics code -> name), and the
# commune each belongs to from 1 July 2025 (from shared/data/phung-hiep-2025.csv).
PHUNG_HIEP = {
    "31393": ("Thị trấn Kinh Cùng", "Xã Hòa An"),
    "31396": ("Thị trấn Cây Dương", "Xã Hiệp Hưng"),
    "31433": ("Thị trấn Búng Tàu", "Xã Tân Phước Hưng"),
    "31399": ("Xã Tân Bình", "Xã Tân Bình"),
    "31402": ("Xã Bình Thành", "Xã Tân Bình"),
    "31405": ("Xã Thạnh Hòa", "Xã Thạnh Hòa"),
    "31408": ("Xã Long Thạnh", "Xã Thạnh Hòa"),
    "31417": ("Xã Phụng Hiệp", "Xã Phụng Hiệp"),
    "31420": ("Xã Hòa Mỹ", "Xã Phụng Hiệp"),
    "31423": ("Xã Hòa An", "Xã Hòa An"),
    "31426": ("Xã Phương Bình", "Xã Phương Bình"),
    "31429": ("Xã Hiệp Hưng", "Xã Hiệp Hưng"),
    "31432": ("Xã Tân Phước Hưng", "Xã Tân Phước Hưng"),
    "31435": ("Xã Phương Phú", "Xã Phương Bình"),
    "31438": ("Xã Tân Long", "Xã Thạnh Hòa"),
}


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return load_fleet(FLEET)


@pytest.fixture(scope="module")
def fleet_2025() -> Fleet:
    return load_fleet(FLEET_2025)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.yaml"
    path.write_text(dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def problems_of(path: Path) -> list[tuple[int, str]]:
    with pytest.raises(ConfigError) as exc:
        load_fleet(path)
    assert all(p.file == str(path) for p in exc.value.problems)
    return [(p.line, p.message) for p in exc.value.problems]


# --- the example fleet ----------------------------------------------------------------------


def test_the_example_fleet_has_73_clusters_in_40_communes(fleet: Fleet) -> None:
    assert len(fleet.clusters) == 73
    communes = fleet.communes()
    assert len(communes) == 40
    per_commune = [len(fleet.clusters_in(c.id)) for c in communes]
    assert min(per_commune) >= 1
    assert max(per_commune) <= 3
    assert fleet.province.id == "tinh-hau-giang"
    assert fleet.province.kind == "province"
    assert any(fleet.nodes[c.node].kind == "village" for c in fleet.clusters.values())


def test_phung_hiep_carries_its_fifteen_real_units_and_codes(fleet: Fleet) -> None:
    district = fleet.node("huyen-phung-hiep")
    assert district.kind == "district"
    assert district.parent == fleet.province.id
    units = {n.code: n.name for n in fleet.communes() if n.parent == district.id}
    assert units == {code: names[0] for code, names in PHUNG_HIEP.items()}


def test_every_id_is_a_topic_level(fleet: Fleet, fleet_2025: Fleet) -> None:
    for f in (fleet, fleet_2025):
        for name in [*f.nodes, *f.clusters]:
            assert check_id(name) == name


def test_the_reorganised_fleet_keeps_every_cluster_id(fleet: Fleet, fleet_2025: Fleet) -> None:
    assert set(fleet_2025.clusters) == set(fleet.clusters)
    assert fleet_2025.province.id == "tp-can-tho"
    assert not [n for n in fleet_2025.nodes.values() if n.kind == "district"]
    new_names = {n.name for n in fleet_2025.communes() if "phung-hiep" in n.tags}
    assert new_names == {names[1] for names in PHUNG_HIEP.values()}
    assert len(new_names) == 7


def test_merged_communes_clusters_answer_to_the_new_commune(
    fleet: Fleet, fleet_2025: Fleet
) -> None:
    old_by_code = {n.code: n for n in fleet.communes()}
    for code, (_old_name, new_name) in PHUNG_HIEP.items():
        for cluster_id in fleet.clusters_in(old_by_code[code].id):
            assert fleet_2025.commune_of(cluster_id).name == new_name, cluster_id
    # the other clusters stay in a commune of the same id
    for cluster_id, cluster in fleet.clusters.items():
        if "phung-hiep" not in cluster.tags:
            assert fleet_2025.clusters[cluster_id].commune == cluster.commune


def test_a_district_tag_outlives_the_district(fleet: Fleet, fleet_2025: Fleet) -> None:
    before = fleet.resolve(["tag:phung-hiep"])
    assert before == fleet.clusters_in("huyen-phung-hiep")
    assert fleet_2025.resolve(["tag:phung-hiep"]) == before


# --- the tree -------------------------------------------------------------------------------


def test_groups_of_lists_the_ancestors_nearest_first(fleet: Fleet, fleet_2025: Fleet) -> None:
    assert fleet.groups_of("kinh-cung-03") == [
        "kinh-cung-khu-vuc-4", "tt-kinh-cung", "huyen-phung-hiep", "tinh-hau-giang"
    ]
    assert fleet.groups_of("kinh-cung-01") == ["tt-kinh-cung", "huyen-phung-hiep", "tinh-hau-giang"]
    assert fleet_2025.groups_of("kinh-cung-01") == ["xa-hoa-an", "tp-can-tho"]
    assert fleet_2025.groups_of("kinh-cung-03") == [
        "kinh-cung-khu-vuc-4", "xa-hoa-an", "tp-can-tho"
    ]


def test_commune_of_is_the_commune_even_for_a_cluster_in_a_village(fleet: Fleet) -> None:
    assert fleet.clusters["kinh-cung-03"].node == "kinh-cung-khu-vuc-4"
    assert fleet.commune_of("kinh-cung-03").id == "tt-kinh-cung"
    assert fleet.commune_of("kinh-cung-03").code == "31393"


def test_clusters_in_a_node_a_cluster_and_the_province(fleet: Fleet) -> None:
    assert fleet.clusters_in("tt-kinh-cung") == ["kinh-cung-01", "kinh-cung-02", "kinh-cung-03"]
    assert fleet.clusters_in("kinh-cung-khu-vuc-4") == ["kinh-cung-03"]
    assert fleet.clusters_in("kinh-cung-02") == ["kinh-cung-02"]
    assert fleet.clusters_in(fleet.province.id) == sorted(fleet.clusters)
    with pytest.raises(KeyError, match="did you mean 'tt-kinh-cung'"):
        fleet.clusters_in("tt-kinh-cun")


def test_node_tags_are_inherited_by_clusters(fleet: Fleet) -> None:
    market = fleet.clusters["kinh-cung-02"]
    assert market.tags == ("cho", "phung-hiep")
    assert fleet.clusters["mot-ngan-01"].tags == ("chau-thanh-a",)


def test_the_audio_profile_is_set_on_a_node_and_holds_below_it(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          communes:
            - id: xa-a
              name: Xã A
              audio_profile: full-range
              clusters:
                - {id: a-hall, name: Hội trường xã}
                - {id: a-street, name: Ngã ba, audio_profile: horn}
              villages:
                - id: ap-a1
                  name: Ấp Một
                  clusters:
                    - {id: a1-01, name: Nhà văn hóa ấp}
            - id: xa-b
              name: Xã B
              clusters:
                - {id: b-01, name: Chợ B}
                - {id: b-school, name: Trường B, audio_profile: full-range}
    """)
    fleet = load_fleet(path)
    profiles = {cid: c.audio_profile for cid, c in fleet.clusters.items()}
    assert profiles == {
        "a-hall": "full-range",  # from its commune
        "a-street": "horn",  # its own
        "a1-01": "full-range",  # from its village's commune
        "b-01": "horn",  # nothing said anywhere: horns
        "b-school": "full-range",
    }
    assert fleet.node("ap-a1").audio_profile == "full-range"
    assert fleet.by_profile(["b-school", "a-street", "b-01", "a1-01"]) == {
        "full-range": ["a1-01", "b-school"],
        "horn": ["a-street", "b-01"],
    }
    assert fleet.by_profile(["b-01"]) == {"horn": ["b-01"]}


def test_the_example_fleet_is_horns_throughout(fleet: Fleet) -> None:
    assert fleet.by_profile(fleet.clusters) == {"horn": sorted(fleet.clusters)}


def test_an_unknown_audio_profile_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          communes:
            - id: xa-a
              name: Xã A
              clusters:
                - {id: a-01, name: Hội trường, audio_profile: indoor}
    """)
    [(line, message)] = problems_of(path)
    assert line == 8
    assert "audio_profile" in message
    assert "'horn' or 'full-range'" in message


# --- targets --------------------------------------------------------------------------------


def test_resolve_joins_targets_and_removes_exclusions(fleet: Fleet) -> None:
    assert fleet.resolve(["tt-kinh-cung", "xa-hoa-an"]) == [
        "hoa-an-01", "hoa-an-02", "kinh-cung-01", "kinh-cung-02", "kinh-cung-03"
    ]
    assert fleet.resolve(["tt-kinh-cung"], exclude=["kinh-cung-khu-vuc-4"]) == [
        "kinh-cung-01", "kinh-cung-02"
    ]
    assert fleet.resolve(["all"]) == sorted(fleet.clusters)
    assert fleet.resolve(["all"], exclude=["all"]) == []
    markets = fleet.resolve(["tag:cho"])
    assert markets
    assert all("cho" in fleet.clusters[c].tags for c in markets)
    assert fleet.resolve(["tag:phung-hiep"], exclude=["tag:cho"]) == sorted(
        set(fleet.clusters_in("huyen-phung-hiep")) - set(markets)
    )
    assert fleet.resolve([]) == []
    assert fleet.resolve("tt-kinh-cung", exclude="kinh-cung-01") == [  # one name, not letters
        "kinh-cung-02", "kinh-cung-03"
    ]


@pytest.mark.parametrize(
    ("target", "hint"),
    [
        ("xa-tan-bnh", "did you mean 'xa-tan-binh'?"),
        ("tag:chợ", "did you mean 'tag:cho'?"),
        ("kinh-cung-1", "did you mean 'kinh-cung-01'?"),
        ("Xã Tân Bìh", "did you mean 'xa-tan-binh'?"),
        ("zzzzzz", "write a node or cluster id"),
    ],
)
def test_an_unknown_target_suggests_a_known_one(fleet: Fleet, target: str, hint: str) -> None:
    with pytest.raises(UnknownTargetError) as exc:
        fleet.resolve(["tt-kinh-cung", target])
    assert isinstance(exc.value, KeyError)
    assert exc.value.target == target
    assert hint in str(exc.value)
    assert fleet.target_problem(target) == str(exc.value)


def test_an_unknown_exclusion_is_an_error_too(fleet: Fleet) -> None:
    with pytest.raises(UnknownTargetError):
        fleet.resolve(["all"], exclude=["nowhere"])


# --- cover ----------------------------------------------------------------------------------


def test_cover_of_a_whole_district_is_that_district(fleet: Fleet) -> None:
    assert fleet.cover(fleet.clusters_in("huyen-phung-hiep")) == (["huyen-phung-hiep"], [])
    assert fleet.cover(fleet.resolve(["all"])) == (["tinh-hau-giang"], [])
    assert fleet.cover([]) == ([], [])


def test_cover_leaves_over_what_no_whole_group_holds(fleet: Fleet) -> None:
    chosen = fleet.resolve(["tt-kinh-cung", "tt-cay-duong"], exclude=["kinh-cung-01"])
    groups, leftovers = fleet.cover(chosen)
    # Cây Dương whole; in Kinh Cùng, 02 sits in the commune itself and 03 alone in a village
    assert groups == ["tt-cay-duong"]
    assert leftovers == ["kinh-cung-02", "kinh-cung-03"]


def test_a_single_cluster_node_is_sent_as_its_cluster(fleet: Fleet) -> None:
    assert fleet.cover(["phuong-phu-01"]) == ([], ["phuong-phu-01"])


def test_cover_of_an_unknown_cluster_is_an_error(fleet: Fleet) -> None:
    with pytest.raises(UnknownTargetError):
        fleet.cover(["kinh-cung-99"])


def _ancestors(fleet: Fleet, node_id: str) -> list[str]:
    out = []
    parent = fleet.nodes[node_id].parent
    while parent is not None:
        out.append(parent)
        parent = fleet.nodes[parent].parent
    return out


@pytest.mark.parametrize("seed", range(25))
def test_cover_is_exact_disjoint_and_uses_the_largest_groups(fleet: Fleet, seed: int) -> None:
    rng = random.Random(seed)
    ids = sorted(fleet.clusters)
    chosen = set(rng.sample(ids, rng.randint(1, len(ids))))
    if seed % 3 == 0:  # also whole communes, so groups appear
        for commune in rng.sample(fleet.communes(), 10):
            chosen |= set(fleet.clusters_in(commune.id))
    groups, leftovers = fleet.cover(chosen)
    covered: list[str] = [c for g in groups for c in fleet.clusters_in(g)] + leftovers
    assert sorted(covered) == sorted(chosen)  # exactly the set, each cluster once
    for group in groups:
        assert len(fleet.clusters_in(group)) > 1
        for parent in _ancestors(fleet, group):  # no larger whole group was missed
            assert not set(fleet.clusters_in(parent)) <= chosen
    for cluster in leftovers:
        for node in fleet.groups_of(cluster):
            under = fleet.clusters_in(node)
            assert len(under) == 1 or not set(under) <= chosen


# --- load errors ----------------------------------------------------------------------------


def test_duplicate_ids_are_reported_with_both_lines(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          communes:
            - id: xa-a
              name: Xã A
              clusters:
                - {id: a-01, name: Chợ A}
                - {id: a-01, name: Trường A}
            - id: xa-a
              name: Xã A bis
    """)
    problems = problems_of(path)
    assert [line for line, _ in problems] == [9, 10]
    assert "'a-01' is already used at line 8" in problems[0][1]
    assert "'xa-a' is already used at line 5" in problems[1][1]


def test_every_fleet_error_is_reported_at_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          code: 93
          districts:
            - id: huyen y
              name: Huyện Y
              comunes: []
          communes:
            - id: all
              name: Xã Tất Cả
              code: abc
              clusters:
                - {id: a-01, name: Chợ A, lat: 9.7}
                - {id: a-02, name: "", lat: 95, lon: 105}
                - {id: a-03, name: Bến đò, tags: [Bến Đò]}
    """)
    by_line: dict[int, str] = {}
    for line, message in problems_of(path):
        by_line[line] = by_line.get(line, "") + message + "\n"
    assert sorted(by_line) == [6, 8, 10, 12, 15, 16]
    assert "cannot be used in an MQTT topic" in by_line[6]
    assert "did you mean 'communes'?" in by_line[8]
    assert "reserved" in by_line[10]
    assert "not a national statistics code" in by_line[12]
    assert "name: must not be empty" in by_line[15]
    assert "lat: a number (95) is out of range" in by_line[15]
    assert "tag 'Bến Đò'" in by_line[16]


def test_a_half_given_position_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          communes:
            - id: xa-a
              name: Xã A
              clusters:
                - {id: a-01, name: Chợ A, lat: 9.7}
    """)
    [(line, message)] = problems_of(path)
    assert line == 8
    assert "both lat and lon" in message


def test_an_unquoted_code_is_kept_as_text(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          code: 93
          communes:
            - id: xa-a
              name: Xã A
              code: 31399
              clusters: [{id: a-01, name: Chợ A}]
    """)
    fleet = load_fleet(path)
    assert fleet.province.code == "93"
    assert fleet.node("xa-a").code == "31399"


def test_a_province_without_communes_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
    """)
    [(line, message)] = problems_of(path)
    assert line == 2
    assert "no communes" in message


def test_a_fleet_yaml_syntax_error_is_located(tmp_path: Path) -> None:
    path = write(tmp_path, """
        province:
          id: tinh-x
          name: Tỉnh X
          communes:
            - id: xa-a
             name: Xã A
    """)
    [(line, message)] = problems_of(path)
    assert line == 6
    assert "YAML syntax error" in message


def test_the_fleet_schema_forbids_unknown_keys() -> None:
    schema = json_schema()
    assert schema["additionalProperties"] is False
    assert schema["$defs"]["ClusterSpec"]["additionalProperties"] is False
