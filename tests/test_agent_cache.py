"""The content cache: chunks in any order, before or after their manifest, verified."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from pathlib import Path

import pytest
from agent_support import CHUNK_SIZE, Content, content

from device_agent.cache import Cache
from device_agent.config import load_agent_config
from device_agent.localdb import LocalDatabase
from protocol.chunks import Chunk
from protocol.clock import ManualClock
from protocol.config_errors import ConfigError


def test_chunks_in_any_order_complete_the_content(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    done: list[str] = []
    cache.add_listener(done.append)
    c = content(size=5 * CHUNK_SIZE + 7)
    assert not cache.expect(c.ref)
    pieces = c.decoded()
    random.Random(7).shuffle(pieces)
    outcomes = [cache.add_chunk(p) for p in pieces]
    assert outcomes == ["stored"] * 5 + ["complete"]
    assert cache.has(c.ref.sha256)
    assert cache.path(c.ref.sha256).read_bytes() == c.data
    assert cache.missing(c.ref) == []
    assert done == [c.ref.sha256]
    assert cache.add_chunk(pieces[0]) == "duplicate"
    assert list((tmp_path / "partial").iterdir()) == []


def test_chunks_before_their_command_are_kept_and_completed_by_it(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    c = content()
    for piece in c.decoded():
        assert cache.add_chunk(piece) == "stored"
    assert not cache.has(c.ref.sha256)
    assert cache.expect(c.ref)
    assert cache.path(c.ref.sha256).read_bytes() == c.data


def test_missing_lists_what_has_not_arrived(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    c = content(size=4 * CHUNK_SIZE)
    cache.expect(c.ref)
    pieces = c.decoded()
    cache.add_chunk(pieces[1])
    cache.add_chunk(pieces[3])
    assert cache.missing(c.ref) == [0, 2]


@pytest.mark.parametrize("order", ["in order", "reversed"])
def test_a_forged_chunk_makes_the_download_fail_not_play(tmp_path: Path, order: str) -> None:
    # In order, chunks are hashed as they come; out of order, read back from the file.
    cache = Cache(tmp_path)
    c = content()
    cache.expect(c.ref)
    pieces = c.decoded()
    forged = Chunk(pieces[0].sha256, 0, pieces[0].count, b"\x00" * len(pieces[0].data))
    sent = [forged, *pieces[1:]]
    if order == "reversed":
        sent.reverse()
    outcomes = [cache.add_chunk(p) for p in sent]
    assert outcomes[-1] == "corrupt"
    assert not cache.has(c.ref.sha256)
    assert cache.missing(c.ref) == list(range(c.ref.chunks))
    # Fetched again, it completes.
    assert [cache.add_chunk(p) for p in pieces][-1] == "complete"
    assert cache.path(c.ref.sha256).read_bytes() == c.data


def test_chunks_that_do_not_fit_the_manifest_are_refused(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    c = content()
    cache.expect(c.ref)
    first = c.decoded()[0]
    assert cache.add_chunk(Chunk(first.sha256, 0, first.count + 1, first.data)) == "refused"
    assert cache.add_chunk(Chunk(first.sha256, 0, first.count, first.data[:-1])) == "refused"
    assert cache.missing(c.ref) == list(range(c.ref.chunks))


def test_unannounced_chunks_stay_within_the_budget_oldest_dropped_first(tmp_path: Path) -> None:
    cache = Cache(tmp_path, max_early_bytes=9 * 4096)
    old, new = content(size=6 * CHUNK_SIZE), content(size=6 * CHUNK_SIZE)
    for piece in old.decoded()[:5]:
        cache.add_chunk(piece)
    for piece in new.decoded()[:5]:
        cache.add_chunk(piece)
    assert cache.early_bytes() <= 9 * 4096
    assert cache.missing(old.ref) == list(range(6))  # the oldest went
    assert cache.missing(new.ref) == [5]


def test_downloads_survive_a_restart(tmp_path: Path) -> None:
    c = content(size=4 * CHUNK_SIZE)
    pieces = c.decoded()
    first = Cache(tmp_path)
    first.expect(c.ref)
    for piece in pieces[1:]:
        first.add_chunk(piece)
    again = Cache(tmp_path)
    assert again.missing(c.ref) == [0]
    assert not again.expect(c.ref)
    assert again.add_chunk(pieces[0]) == "complete"
    assert again.path(c.ref.sha256).read_bytes() == c.data


def test_downloads_nothing_needs_are_pruned_and_old_content_too(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    wanted, unwanted, old, kept = (content() for _ in range(4))
    for c in (wanted, unwanted):
        cache.expect(c.ref)
        cache.add_chunk(c.decoded()[0])
    for c in (old, kept):
        cache.expect(c.ref)
        for piece in c.decoded():
            cache.add_chunk(piece)
    cache.prune(keep={wanted.ref.sha256, kept.ref.sha256}, max_content_bytes=kept.ref.size)
    assert cache.missing(wanted.ref) == list(range(1, wanted.ref.chunks))
    assert cache.missing(unwanted.ref) == list(range(unwanted.ref.chunks))
    assert not cache.has(old.ref.sha256)
    assert cache.has(kept.ref.sha256)


def test_early_chunks_survive_a_restart(tmp_path: Path) -> None:
    c = content(size=4 * CHUNK_SIZE)
    pieces = c.decoded()
    first = Cache(tmp_path)
    for piece in pieces[:3]:
        first.add_chunk(piece)
    again = Cache(tmp_path)
    assert again.missing(c.ref) == [3]
    again.expect(c.ref)
    assert again.add_chunk(pieces[3]) == "complete"
    assert again.path(c.ref.sha256).read_bytes() == c.data


def complete(cache: Cache, c: Content) -> None:
    cache.expect(c.ref)
    for piece in c.decoded():
        cache.add_chunk(piece)
    assert cache.has(c.ref.sha256)


def test_eviction_goes_by_last_use_not_by_age(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 26, 6, 0, tzinfo=UTC))
    db = LocalDatabase(tmp_path / "agent.sqlite", durable=False)
    cache = Cache(tmp_path / "content", uses=db.document("cache-uses"), clock=clock)
    first, second, third = (content() for _ in range(3))
    for c in (first, second, third):
        complete(cache, c)
        clock.advance(60)
    cache.touch([first.ref.sha256])  # the oldest download played again just now
    clock.advance(60)
    size = first.ref.size
    assert cache.evict(keep=set(), max_content_bytes=2 * size) == [second.ref.sha256]
    assert cache.evict(keep=set(), max_content_bytes=size) == [third.ref.sha256]
    assert cache.has(first.ref.sha256)
    # The order survives a restart: it is in the agent's database, not in file times
    # (saved at most every minute while running, and when the agent stops).
    cache.flush()
    db.close()
    db = LocalDatabase(tmp_path / "agent.sqlite", durable=False)
    again = Cache(tmp_path / "content", uses=db.document("cache-uses"), clock=clock)
    assert again.last_use(first.ref.sha256) == clock.now().timestamp() - 60
    fourth = content()
    clock.advance(60)
    complete(again, fourth)
    assert again.evict(keep=set(), max_content_bytes=size) == [first.ref.sha256]
    db.close()


def test_scheduled_audio_is_never_evicted_even_over_quota(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 26, 6, 0, tzinfo=UTC))
    cache = Cache(tmp_path, clock=clock)
    scheduled, old, recent = (content() for _ in range(3))
    for c in (scheduled, old, recent):
        complete(cache, c)
        clock.advance(60)
    keep = {scheduled.ref.sha256}
    # A quota smaller than the scheduled audio alone: everything else goes, it stays.
    assert cache.prune(keep, max_content_bytes=1) == [old.ref.sha256, recent.ref.sha256]
    assert cache.has(scheduled.ref.sha256)
    assert cache.held_bytes() == scheduled.ref.size


def test_a_cache_hit_counts_as_a_use(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 11, 26, 6, 0, tzinfo=UTC))
    cache = Cache(tmp_path, clock=clock)
    c = content()
    complete(cache, c)
    clock.advance(3600)
    assert cache.expect(c.ref)  # a play naming it: held, nothing to fetch
    assert cache.missing(c.ref) == []
    assert cache.last_use(c.ref.sha256) == clock.now().timestamp()
    assert cache.transfers() == []


def test_transfers_show_how_far_each_download_has_come(tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    c = content(size=4 * CHUNK_SIZE)
    cache.expect(c.ref)
    for piece in c.decoded()[:3]:
        cache.add_chunk(piece)
    assert cache.transfers() == [(c.ref.sha256, 3, 4)]
    cache.add_chunk(c.decoded()[3])
    assert cache.transfers() == []


def test_the_quota_is_a_config_key(tmp_path: Path) -> None:
    base = "cluster_id: c-01\nbroker_url: mqtt://127.0.0.1\ncontroller_public_key: k.pub\n"
    good = tmp_path / "good.yaml"
    good.write_text(base + "cache_max_mb: 64\n")
    assert load_agent_config(good).cache_max_mb == 64
    plain = tmp_path / "plain.yaml"
    plain.write_text(base)
    assert load_agent_config(plain).cache_max_mb == 1024
    bad = tmp_path / "bad.yaml"
    bad.write_text(base + "cache_max_mb: 0\n")
    with pytest.raises(ConfigError) as caught:
        load_agent_config(bad)
    assert "bad.yaml:4" in str(caught.value)
