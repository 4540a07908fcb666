"""Publishing on a real Redis: deltas of every kind, big deltas copy-on-write, conflicts, the
leftovers of a killed publish, and readers that never see a mixed or missing record."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from gateway.days import day_of_date
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.records import DepartmentActions, InstitutionRecord, StaffRecord, Status
from gateway.redis_client import async_client
from gateway.store import Store
from gateway.versions import Source
from loader import publish
from loader.demo import DemoSet
from loader.lock import LockBusy, PublishLock
from loader.publish import PublishConflict, Publisher
from loader.sync import Outcome, SyncOptions, sync_file
from tests.conftest import Loader
from tests.exports import (
    HEADERS,
    HOSPITAL,
    OTHER_HOSPITAL,
    department_row,
    institution_row,
    line,
    request,
    staff_row,
    write_csv,
)

BIN = Path(sys.executable).parent
APRIL_1 = day_of_date(dt.date(2026, 4, 1))
MAY_31 = day_of_date(dt.date(2026, 5, 31))


def codes(n: int) -> list[str]:
    return [f"D330902{i:06d}" for i in range(n)]


def staff_file(path: Path, n: int, marker: str, status: str = "正常") -> Path:
    """N doctors at HOSPITAL whose department is ``marker``: the version's own mark."""
    return write_csv(
        path, HEADERS["staff"], [staff_row(code=c, department=marker, status=status) for c in codes(n)]
    )


def live_table(publisher: Publisher, kind: str) -> str:
    meta = publisher.live_meta()
    assert meta is not None
    return publisher.keys.table(kind, meta.tables[kind])


# -- deltas ---------------------------------------------------------------------------------
# These populations are tiny: removing one person is past the shrink guard (max_shrink_ratio
# 1.0 lifts it), which tests/integration/test_guards.py covers.


def test_institution_delta_upserts_and_deletes(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis
) -> None:
    load("institution", [institution_row(), institution_row(code=OTHER_HOSPITAL)])
    result = load(
        "institution",
        [
            institution_row(status="中止", start="2026-03-01"),
            institution_row(code=OTHER_HOSPITAL, status="删除", start=""),
        ],
        delta=True,
        max_shrink_ratio=1.0,
    )
    assert result.outcome is Outcome.PUBLISHED
    table = live_table(publisher, "institution")
    record = InstitutionRecord.decode(sync_redis.hget(table, HOSPITAL) or b"")
    assert [p.status for p in record.periods] == [Status.SUSPENDED]
    assert sync_redis.hget(table, OTHER_HOSPITAL) is None
    assert publisher.live_meta().counts["institution"] == 1  # type: ignore[union-attr]


def test_department_delta_replaces_one_institution_and_leaves_the_rest(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis
) -> None:
    load(
        "department",
        [department_row("A03"), department_row("A05"), department_row("A03", institution=OTHER_HOSPITAL)],
    )
    load("department", [department_row("A05", status="删除")], delta=True, max_shrink_ratio=1.0)
    table = live_table(publisher, "department")
    assert set(DepartmentActions.decode(sync_redis.hget(table, HOSPITAL) or b"").by_department) == {"A03"}
    assert set(DepartmentActions.decode(sync_redis.hget(table, OTHER_HOSPITAL) or b"").by_department) == {
        "A03"
    }


def test_delta_rows_of_every_kind_apply_in_file_order(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis
) -> None:
    """Rows of one key need not be adjacent; each key's rows count in file order."""
    nurse, other = "N330902000008", "H33090200099"
    load("institution", [institution_row(), institution_row(code=OTHER_HOSPITAL)])
    load("staff", [staff_row(), staff_row(code=nurse)])
    load("department", [department_row("A03"), department_row("A05")])

    load(
        "institution",
        [
            institution_row(status="删除", start=""),
            institution_row(code=OTHER_HOSPITAL, status="中止", start="2026-03-01"),
            institution_row(status="暂停", start="2026-04-01"),
            institution_row(code=OTHER_HOSPITAL, status="删除", start=""),
        ],
        delta=True,
        max_shrink_ratio=1.0,
    )
    table = live_table(publisher, "institution")
    record = InstitutionRecord.decode(sync_redis.hget(table, HOSPITAL) or b"")
    assert [(p.status, p.start) for p in record.periods] == [(Status.SUSPENDED, APRIL_1)]
    assert sync_redis.hget(table, OTHER_HOSPITAL) is None

    result = load(
        "staff",
        [
            staff_row(institution="", status="删除", start=""),
            staff_row(code=nurse, status="中止", start="2026-03-01"),
            staff_row(institution=other),
            staff_row(code=nurse, status="删除", start=""),
        ],
        delta=True,
        max_shrink_ratio=1.0,
    )
    assert result.outcome is Outcome.PUBLISHED
    table = live_table(publisher, "staff")
    doctor = StaffRecord.decode(sync_redis.hget(table, "D330902001234") or b"")
    assert [(p.institution, p.status) for p in doctor.periods] == [(other, Status.NORMAL)]
    assert sync_redis.hget(table, nurse) is None
    assert publisher.live_meta().counts["staff"] == 1  # type: ignore[union-attr]

    load(
        "department",
        [department_row("A03", status="删除", start=""), department_row("A03", start="2026-04-01")],
        delta=True,
        max_shrink_ratio=1.0,
    )
    table = live_table(publisher, "department")
    actions = DepartmentActions.decode(sync_redis.hget(table, HOSPITAL) or b"").by_department
    assert {d: [p.start for p in ps] for d, ps in actions.items()} == {"A03": [APRIL_1]}


def test_a_delta_without_date_columns_deletes_and_rejects_only_rows_needing_a_date(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    nurse = "N330902000008"
    others = [staff_row(code=c) for c in codes(10)]
    load("staff", [staff_row(), staff_row(institution=OTHER_HOSPITAL), staff_row(code=nurse), *others])
    header = ["人员代码", "定点机构代码", "协议状态"]
    deletes = write_csv(
        tmp_path / "d.csv", header, [["D330902001234", OTHER_HOSPITAL, "删除"], [nurse, "", "删除"]]
    )
    result = sync_file(
        deletes, publisher, SyncOptions(allow_incomplete=True, delta=True, max_shrink_ratio=1.0)
    )
    assert (result.outcome, result.rejected) == (Outcome.PUBLISHED, 0)
    table = live_table(publisher, "staff")
    assert list(StaffRecord.decode(sync_redis.hget(table, "D330902001234") or b"").by_institution) == [
        HOSPITAL
    ]
    assert sync_redis.hget(table, nurse) is None

    rows = [*([c, "", "删除"] for c in codes(10)), ["D330902001234", HOSPITAL, "中止"]]
    mixed = sync_file(
        write_csv(tmp_path / "m.csv", header, rows),
        publisher,
        SyncOptions(allow_incomplete=True, delta=True, max_shrink_ratio=1.0),
    )
    assert (mixed.outcome, mixed.rejected, mixed.records) == (Outcome.PUBLISHED_WITH_REJECTS, 1, 10)
    report = Path(mixed.report or "").read_text(encoding="utf-8-sig").splitlines()
    assert report[1] == f"{tmp_path / 'm.csv'},12,开始日期,开始日期为空（表头中没有开始日期列）,"
    assert publisher.live_meta().counts["staff"] == 1  # type: ignore[union-attr]

    full = sync_file(deletes, publisher, SyncOptions(allow_incomplete=True))
    assert full.outcome is Outcome.REFUSED and "lacks required column(s): 开始日期" in full.message


def test_institution_and_department_deltas_without_date_columns(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    load("institution", [institution_row(), institution_row(code=OTHER_HOSPITAL)])
    load("department", [department_row("A03"), department_row("A05")])
    institutions = write_csv(tmp_path / "i.csv", ["定点机构代码", "协议状态"], [[OTHER_HOSPITAL, "删除"]])
    assert (
        sync_file(
            institutions, publisher, SyncOptions(allow_incomplete=True, delta=True, max_shrink_ratio=1.0)
        ).outcome
        is Outcome.PUBLISHED
    )
    assert sync_redis.hget(live_table(publisher, "institution"), OTHER_HOSPITAL) is None
    departments = write_csv(
        tmp_path / "k.csv", ["定点机构代码", "科室编码", "协议状态"], [[HOSPITAL, "A05", "删除"]]
    )
    assert (
        sync_file(
            departments, publisher, SyncOptions(allow_incomplete=True, delta=True, max_shrink_ratio=1.0)
        ).outcome
        is Outcome.PUBLISHED
    )
    raw = sync_redis.hget(live_table(publisher, "department"), HOSPITAL) or b""
    assert set(DepartmentActions.decode(raw).by_department) == {"A03"}


SYNONYMS = {"暂停": Status.SUSPENDED, "终止": Status.TERMINATED, "有效": Status.NORMAL}
THIRD_HOSPITAL = "H33090400035"


def test_institution_file_with_provincial_headers_and_status_synonyms_loads(
    publisher: Publisher, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    header = ["医疗机构编码", "机构名称", "统筹区", "人员状态", "备案开始日期", "合同截止时间"]
    hospitals = [HOSPITAL, OTHER_HOSPITAL, THIRD_HOSPITAL]
    spelled = zip(hospitals, SYNONYMS, strict=True)
    rows = [[code, "测试医院", "330902", spelling, "2026/4/1", "2026-05-31"] for code, spelling in spelled]
    result = sync_file(
        write_csv(tmp_path / "i.csv", header, rows),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    assert (result.kind, result.outcome, result.records) == ("institution", Outcome.PUBLISHED, 3)
    table = live_table(publisher, "institution")
    for code, status in zip(hospitals, SYNONYMS.values(), strict=True):
        (period,) = InstitutionRecord.decode(sync_redis.hget(table, code) or b"").periods
        assert (period.status, period.start, period.end) == (status, APRIL_1, MAY_31)


def test_department_file_with_provincial_headers_and_status_synonyms_loads(
    publisher: Publisher, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    header = ["医疗机构编码", "科室编码", "人员状态", "合同起始时间", "备案结束日期"]
    rows = [
        [HOSPITAL, f"A0{i}", spelling, "20260401", "2026年5月31日"] for i, spelling in enumerate(SYNONYMS)
    ]
    result = sync_file(
        write_csv(tmp_path / "k.csv", header, rows),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    assert (result.kind, result.outcome, result.records) == ("department", Outcome.PUBLISHED, 1)
    raw = sync_redis.hget(live_table(publisher, "department"), HOSPITAL) or b""
    actions = DepartmentActions.decode(raw).by_department
    assert {d: [(p.status, p.start, p.end) for p in ps] for d, ps in actions.items()} == {
        f"A0{i}": [(status, APRIL_1, MAY_31)] for i, status in enumerate(SYNONYMS.values())
    }


def test_delta_of_a_kind_never_loaded_creates_its_table(load: Loader, publisher: Publisher) -> None:
    load("institution", [institution_row()])
    result = load("staff", [staff_row()], delta=True)
    assert result.outcome is Outcome.PUBLISHED
    assert publisher.live_meta().counts == {"institution": 1, "staff": 1}  # type: ignore[union-attr]


def test_same_delta_twice_changes_nothing(publisher: Publisher, tmp_path: Path) -> None:
    sync_file(
        staff_file(tmp_path / "full.csv", 5, "A03"),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    delta = write_csv(tmp_path / "d.csv", HEADERS["staff"], [staff_row(code=codes(1)[0], status="中止")])
    first = sync_file(delta, publisher, SyncOptions(allow_incomplete=True, delta=True))
    again = sync_file(delta, publisher, SyncOptions(allow_incomplete=True, delta=True))
    assert again.unchanged and again.data_version == first.data_version
    assert [s.mode for s in publisher.live_meta().sources] == ["full", "delta"]  # type: ignore[union-attr]


def test_big_delta_is_published_copy_on_write(
    publisher: Publisher, sync_redis: redis.Redis, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(publish, "INPLACE_DELTA_MAX", 10)
    sync_file(
        staff_file(tmp_path / "full.csv", 300, "A03"),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    old_table = live_table(publisher, "staff")
    rows = [staff_row(code=c, department="A07") for c in codes(40)]
    rows += [staff_row(code=c, status="删除", start="") for c in codes(60)[40:]]
    rows += [staff_row(code="D330903999999")]  # a new person
    result = sync_file(
        write_csv(tmp_path / "d.csv", HEADERS["staff"], rows),
        publisher,
        SyncOptions(allow_incomplete=True, delta=True),
    )
    assert result.outcome is Outcome.PUBLISHED
    new_table = live_table(publisher, "staff")
    assert new_table != old_table  # a new table; the old one is retired, not edited
    assert sync_redis.zscore(keys.retired, old_table) is not None
    assert sync_redis.hlen(new_table) == 300 - 20 + 1 == publisher.live_meta().counts["staff"]  # type: ignore[union-attr]
    assert StaffRecord.decode(sync_redis.hget(new_table, codes(1)[0]) or b"").periods[0].department == "A07"
    assert sync_redis.hget(new_table, codes(50)[-1]) is None
    assert (
        StaffRecord.decode(sync_redis.hget(new_table, codes(300)[-1]) or b"").periods[0].department == "A03"
    )
    assert StaffRecord.decode(sync_redis.hget(old_table, codes(1)[0]) or b"").periods[0].department == "A03"
    assert sync_redis.zcard(keys.staging) == 0


# -- conflicts and leftovers ----------------------------------------------------------------


def test_commit_refuses_when_live_moved_and_discards_the_staging(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis, keys: Keys
) -> None:
    load("staff", [staff_row()])
    stale = publisher.live_meta()
    load("staff", [staff_row(status="中止")])
    source = Source("staff", "x.csv", "0" * 64, "full", 1, 0, time.time())
    with pytest.raises(PublishConflict, match="CONFLICT"):
        publisher.publish_full("staff", iter([("D330902001234", b'{"p":[]}')]), source, stale)
    assert sync_redis.zcard(keys.staging) == 0
    assert len(sync_redis.keys(f"{keys.prefix}:staff:*")) == 2  # live table and the retired one


def test_next_publish_removes_an_abandoned_staging_table(
    publisher: Publisher, sync_redis: redis.Redis, keys: Keys
) -> None:
    orphan = keys.table("staff", "20260101T000000Z-dead00")
    sync_redis.hset(orphan, "D330902000001", b"{}")
    sync_redis.zadd(keys.staging, {orphan: 1.0})
    with publisher.lock():
        pass
    assert not sync_redis.exists(orphan) and sync_redis.zcard(keys.staging) == 0


def test_lock_of_a_dead_loader_is_taken_over_at_once(sync_redis: redis.Redis, keys: Keys) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    sync_redis.set(keys.lock, f"{socket.gethostname()}:{dead.pid}:abc", ex=600)
    lock = PublishLock(sync_redis, keys.lock)
    started = time.monotonic()
    with lock.held(wait_seconds=5):
        assert sync_redis.get(keys.lock).decode().startswith(f"{socket.gethostname()}:{os.getpid()}:")  # type: ignore[union-attr]
    assert time.monotonic() - started < 5
    sync_redis.set(keys.lock, f"{socket.gethostname()}:{os.getpid()}:alive", ex=600)  # a live holder
    with pytest.raises(LockBusy), lock.held(wait_seconds=0.5):
        pass


def test_kill_minus_9_mid_publish_keeps_the_old_version_and_the_next_run_succeeds(
    redis_url: str, publisher: Publisher, sync_redis: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    institution = write_csv(tmp_path / "i.csv", HEADERS["institution"], [institution_row()])
    sync_file(institution, publisher, SyncOptions(allow_incomplete=True))
    old = sync_file(
        staff_file(tmp_path / "small.csv", 50, "A03"),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    paths = DemoSet(dt.date(2026, 11, 24), 150_000).write(tmp_path / "big")
    env = {**os.environ, "SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state")}
    args = [str(BIN / "settlement-loader"), "sync", str(paths["institution"]), str(paths["staff"]), "--json"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        staged = b""
        while time.monotonic() < deadline and proc.poll() is None:
            big = [m for m in sync_redis.zrange(keys.staging, 0, -1) if sync_redis.hlen(m) > 1000]
            if big:
                staged = big[0]
                break
            time.sleep(0.01)
        assert staged, "the publish never reached its staging writes"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        proc.kill()
    meta = publisher.live_meta()
    assert meta is not None and meta.version == old.data_version
    reader = Store(async_client(redis_url), keys)
    snapshot = asyncio.run(reader.read(HOSPITAL, codes(50)))
    assert all(r is not None and r.periods[0].department == "A03" for r in snapshot.staff.values())
    assert sync_redis.ttl(staged) > 0  # even unattended, the leftover expires
    again = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert not sync_redis.exists(staged) and sync_redis.zcard(keys.staging) == 0
    assert publisher.live_meta().counts["staff"] == 150_000  # type: ignore[union-attr]


# -- readers during publishes ---------------------------------------------------------------


def _publish_versions(publisher: Publisher, tmp_path: Path, n: int, done: threading.Event) -> list[str]:
    """Full, in-place delta, copy-on-write delta, full…: each version marks every record with
    its own number in the department column (the file name carries the number too)."""
    versions = []
    try:
        for k in range(1, 9):
            path = staff_file(tmp_path / f"staff-{k}.csv", n, f"K{k}")
            if k % 4 == 2:  # an in-place delta naming everyone
                result = sync_file(path, publisher, SyncOptions(allow_incomplete=True, delta=True))
            elif k % 4 == 3:  # a delta above the in-place limit: copy-on-write
                saved, publish.INPLACE_DELTA_MAX = publish.INPLACE_DELTA_MAX, n // 2
                try:
                    result = sync_file(path, publisher, SyncOptions(allow_incomplete=True, delta=True))
                finally:
                    publish.INPLACE_DELTA_MAX = saved
            else:
                result = sync_file(path, publisher, SyncOptions(allow_incomplete=True))
            assert result.outcome is Outcome.PUBLISHED, result.message
            versions.append(result.data_version or "")
            publisher.collect_garbage(grace_seconds=0)  # retired tables vanish at once: worst case
    finally:
        done.set()
    return versions


def _marker(snapshot_sources: tuple[Source, ...]) -> str:
    staff_path = [s.path for s in snapshot_sources if s.kind == "staff"][-1]
    return "K" + Path(staff_path).stem.split("-")[1]


async def test_store_readers_never_see_a_mixed_or_missing_record(
    redis_url: str, publisher: Publisher, keys: Keys, tmp_path: Path
) -> None:
    n = 4000
    institution = write_csv(tmp_path / "i.csv", HEADERS["institution"], [institution_row()])
    sync_file(institution, publisher, SyncOptions(allow_incomplete=True))
    sync_file(
        staff_file(tmp_path / "staff-0.csv", n, "K0"),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    store = Store(async_client(redis_url, timeout=5.0), keys)
    sample = codes(n)[:: n // 200]
    done = threading.Event()
    publishing = asyncio.create_task(asyncio.to_thread(_publish_versions, publisher, tmp_path, n, done))
    seen: dict[str, int] = {}
    reads = 0

    async def reader() -> None:
        nonlocal reads
        while not done.is_set():
            snapshot = await store.read(HOSPITAL, sample)
            expected = _marker(snapshot.meta.sources)
            departments = {p.department for r in snapshot.staff.values() if r is not None for p in r.periods}
            missing = [c for c, r in snapshot.staff.items() if r is None]
            assert not missing, f"{len(missing)} records missing in {snapshot.meta.version}"
            assert departments == {expected}, f"{snapshot.meta.version}: {departments} != {expected}"
            seen[snapshot.meta.version] = seen.get(snapshot.meta.version, 0) + 1
            reads += 1

    await asyncio.gather(*(reader() for _ in range(4)))
    versions = await publishing
    await store.client.aclose()
    assert len(versions) == 8
    assert reads > 100 and len(seen) >= 3, (reads, seen)


async def test_grpc_answers_during_publishes_come_from_one_version(
    publisher: Publisher, stub: pb_grpc.SettlementGatewayStub, tmp_path: Path
) -> None:
    n = 3000
    load_institution = write_csv(tmp_path / "i.csv", HEADERS["institution"], [institution_row()])
    sync_file(load_institution, publisher, SyncOptions(allow_incomplete=True))
    first = sync_file(
        staff_file(tmp_path / "s-0.csv", n, "A03", "正常"),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    expected = {first.data_version: pb.ACCEPT}
    sample = codes(n)[:: n // 50]
    done = threading.Event()

    def publish_alternating() -> None:
        try:
            for k in range(1, 7):
                status = "中止" if k % 2 else "正常"
                result = sync_file(
                    staff_file(tmp_path / f"s-{k}.csv", n, "A03", status),
                    publisher,
                    SyncOptions(allow_incomplete=True),
                )
                expected[result.data_version] = pb.REJECT if status == "中止" else pb.ACCEPT
                publisher.collect_garbage(grace_seconds=0)
        finally:
            done.set()

    publishing = asyncio.create_task(asyncio.to_thread(publish_alternating))
    replies: list[pb.ValidateResponse] = []
    while not done.is_set():
        replies.append(
            await stub.Validate(request(*[line(str(i), c) for i, c in enumerate(sample)]), timeout=5)
        )
    await publishing
    mixed = [
        r.data_version
        for r in replies
        if {v.verdict for v in r.verdicts} != {expected[r.data_version]}  # KeyError: an unknown version
    ]
    assert not mixed and len(replies) > 20
    assert len({r.data_version for r in replies}) >= 3


def test_a_write_error_in_the_staging_writer_reaches_the_caller(sync_redis: redis.Redis) -> None:
    sync_redis.set("{sgw}:staff:not-a-hash", "x")
    with (
        pytest.raises(redis.ResponseError, match="WRONGTYPE"),
        publish._Writer(sync_redis, "{sgw}:staff:not-a-hash") as writer,
    ):
        writer.send(["D330902000001", b"{}"])
        for _ in range(100):  # later sends see the error instead of queueing more
            time.sleep(0.01)
            writer.send(["D330902000002", b"{}"])
