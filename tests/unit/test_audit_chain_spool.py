"""The hash chain's checks and the spool's bookkeeping, on their own (no Redis, no network)."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from gateway.audit.chain import Problem, Stored, check
from gateway.audit.record import Chain, record_hash
from gateway.audit.spool import Spool, orphans


def sealed(instance: str, n: int) -> list[Stored]:
    chain = Chain(instance)
    out = []
    for i in range(n):
        raw = chain.seal({"time": f"2026-11-24T04:00:{i:02d}.000Z", "line_id": str(i)})
        out.append(Stored(instance, i + 1, f"t{i + 1}", raw, record_hash(raw), orjson.loads(raw)))
    return out


def kinds(problems: list[Problem]) -> list[tuple[str, str, int, int]]:
    return [(p.kind, p.instance, p.first, p.last) for p in problems]


def test_intact_chains_verify() -> None:
    assert list(check([*sealed("a", 5), *sealed("b", 3)])) == []


def test_a_gap_is_reported_with_its_range_and_time() -> None:
    records = sealed("a", 6)
    [problem] = check([records[0], records[1], records[5]])
    assert kinds([problem]) == [("missing", "a", 3, 5)] and problem.time == "t6"


def test_missing_first_records_are_reported() -> None:
    assert kinds(list(check(sealed("a", 4)[2:]))) == [("missing", "a", 1, 2)]


def test_an_altered_record_breaks_the_next_link() -> None:
    records = sealed("a", 3)
    forged = records[1].raw.replace(b'"line_id":"1"', b'"line_id":"X"')
    records[1] = Stored("a", 2, "t2", forged, record_hash(forged), orjson.loads(forged))
    assert kinds(list(check(records))) == [("broken-link", "a", 3, 3)]


def test_bytes_that_do_not_match_their_stored_hash_are_altered() -> None:
    records = sealed("a", 2)
    r = records[0]
    records[0] = Stored(r.instance, r.seq, r.time, r.raw + b" ", r.stored_hash, r.doc)
    assert kinds(list(check(records)))[0] == ("altered", "a", 1, 1)


def test_the_spool_forgets_what_redis_acknowledged(tmp_path: Path) -> None:
    spool = Spool(tmp_path, "gw-1", segment_bytes=100)
    chain = Chain("gw-1")
    for i in range(5):
        spool.append([chain.seal({"line_id": str(i), "pad": "x" * 40})], chain.seq)
    segments = sorted(tmp_path.glob("gw-1.*.spool"))
    assert len(segments) > 1  # rotated past segment_bytes
    spool.acknowledged(2)
    remaining = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("gw-1.*.spool")))
    assert b'"seq":5' in remaining and b'"seq":1,' not in remaining
    spool.acknowledged(5)
    assert b"".join(p.read_bytes() for p in tmp_path.glob("gw-1.*.spool")) == b""
    spool.close(remove=True)
    assert list(tmp_path.iterdir()) == []


def test_a_live_spool_is_not_taken_over_and_a_dead_one_is(tmp_path: Path) -> None:
    alive = Spool(tmp_path, "gw-alive")
    alive.append([b'{"seq":1}'], 1)
    dead = Spool(tmp_path, "gw-dead")
    dead.append([b'{"seq":1}', b'{"seq":2}'], 2)
    os.close(dead._fd)
    os.close(dead._lock_fd)  # the process is gone: its lock is free
    found = orphans(tmp_path, own="gw-new")
    assert [o.instance for o in found] == ["gw-dead"]
    assert list(found[0].records()) == [b'{"seq":1}', b'{"seq":2}']
    found[0].remove()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw-alive.0.spool", "gw-alive.lock"]
    alive.close(remove=True)


def test_a_torn_last_line_is_skipped(tmp_path: Path) -> None:
    dead = Spool(tmp_path, "gw-dead")
    dead.append([b'{"seq":1}'], 1)
    os.write(dead._fd, b'{"seq":2,"ti')  # cut short by a machine crash
    os.close(dead._fd)
    os.close(dead._lock_fd)
    [orphan] = orphans(tmp_path, own="gw-new")
    assert list(orphan.records()) == [b'{"seq":1}']
    orphan.release()
