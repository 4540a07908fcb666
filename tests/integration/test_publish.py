"""Publishing versions: atomic flips, provenance, guards, idempotent re-runs."""

from __future__ import annotations

from pathlib import Path

import orjson
import redis

from gateway.codes import CodeShapes
from gateway.keys import Keys
from gateway.records import STATUS_SYNONYMS, StaffRecord, Status
from loader.columns import ColumnMapping
from loader.publish import Publisher
from loader.status import live_status, render_status
from loader.sync import Outcome, SyncOptions, sync_file
from tests.conftest import Loader
from tests.exports import DOCTOR, HEADERS, institution_row, staff_row, write_csv


def staff_population(n: int) -> list[list[str]]:
    return [staff_row(code=f"D330902{i:06d}") for i in range(n)]


def test_full_publish_flips_live_and_retires_the_old_table(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis, keys: Keys
) -> None:
    first = load("staff", staff_population(10))
    old_table = publisher.live_meta().tables["staff"]  # type: ignore[union-attr]
    second = load("staff", staff_population(11))
    meta = publisher.live_meta()
    assert meta is not None and meta.version == second.data_version != first.data_version
    assert meta.previous == first.data_version
    assert meta.counts["staff"] == 11
    assert sync_redis.ttl(keys.table("staff", meta.tables["staff"])) == -1  # staged TTL removed
    assert sync_redis.zscore(keys.retired, keys.table("staff", old_table)) is not None
    assert publisher.collect_garbage(grace_seconds=0) == 1
    assert not sync_redis.exists(keys.table("staff", old_table))


def test_kinds_are_independent_tables(load: Loader, publisher: Publisher) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row()])
    meta = publisher.live_meta()
    assert meta is not None and set(meta.tables) == {"institution", "staff"}
    assert [s.kind for s in meta.sources] == ["institution", "staff"]


def test_same_file_twice_changes_nothing(publisher: Publisher, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row()])
    first = sync_file(path, publisher, SyncOptions(allow_incomplete=True))
    again = sync_file(path, publisher, SyncOptions(allow_incomplete=True))
    assert again.outcome is Outcome.PUBLISHED and again.unchanged
    assert again.data_version == first.data_version == publisher.live_meta().version  # type: ignore[union-attr]


def test_same_file_with_other_code_shapes_loads_again(publisher: Publisher, tmp_path: Path) -> None:
    local = "D3309020012345"  # a province's 13-digit sequence: not the national shape
    rows = [*staff_population(10), staff_row(code=local)]
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], rows)
    national = sync_file(path, publisher, SyncOptions(allow_incomplete=True))
    assert national.outcome is Outcome.PUBLISHED_WITH_REJECTS
    shapes = CodeShapes.from_patterns(staff=r"D\d{12,13}")
    widened = sync_file(path, publisher, SyncOptions(allow_incomplete=True, shapes=shapes))
    assert widened.outcome is Outcome.PUBLISHED and not widened.unchanged
    assert publisher.live_meta().counts["staff"] == 11  # type: ignore[union-attr]
    assert sync_file(path, publisher, SyncOptions(allow_incomplete=True, shapes=shapes)).unchanged


def test_same_delta_with_another_mapping_loads_again(
    publisher: Publisher, sync_redis: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    sync_file(
        write_csv(tmp_path / "full.csv", HEADERS["staff"], [staff_row()]),
        publisher,
        SyncOptions(allow_incomplete=True),
    )
    rows = [staff_row(status="停用", start="2026-03-01"), staff_row(code="D330902000002")]
    delta = write_csv(tmp_path / "d.csv", HEADERS["staff"], rows)
    first = sync_file(delta, publisher, SyncOptions(allow_incomplete=True, delta=True, max_bad_ratio=0.5))
    assert first.outcome is Outcome.PUBLISHED_WITH_REJECTS and first.rejected == 1
    mapping = ColumnMapping(statuses={**STATUS_SYNONYMS, "停用": Status.SUSPENDED})
    mapped = sync_file(delta, publisher, SyncOptions(allow_incomplete=True, delta=True, mapping=mapping))
    assert mapped.outcome is Outcome.PUBLISHED and not mapped.unchanged
    assert sync_file(
        delta, publisher, SyncOptions(allow_incomplete=True, delta=True, mapping=mapping)
    ).unchanged
    table = keys.table("staff", publisher.live_meta().tables["staff"])  # type: ignore[union-attr]
    assert StaffRecord.decode(sync_redis.hget(table, DOCTOR) or b"").periods[0].status is Status.SUSPENDED


def test_versions_recorded_without_an_options_fingerprint_still_read(
    publisher: Publisher, sync_redis: redis.Redis, keys: Keys, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row()])
    first = sync_file(path, publisher, SyncOptions(allow_incomplete=True))
    meta_key = keys.version_meta(first.data_version or "")
    legacy = orjson.loads(sync_redis.hget(meta_key, "sources") or b"[]")
    for source in legacy:
        del source["options"]
    sync_redis.hset(meta_key, "sources", orjson.dumps(legacy))
    meta = publisher.live_meta()
    assert meta is not None and meta.sources[0].options == "" and meta.sources[0].sha256 == first.sha256
    assert "options -" in render_status(live_status(publisher))
    reloaded = sync_file(
        path, publisher, SyncOptions(allow_incomplete=True)
    )  # options unknown: loaded again, not skipped
    assert reloaded.outcome is Outcome.PUBLISHED and not reloaded.unchanged
    assert publisher.live_meta().sources[0].options == reloaded.options  # type: ignore[union-attr]


def test_bad_row_guard_refuses_and_leaves_live_data(load: Loader, publisher: Publisher) -> None:
    good = load("staff", staff_population(20))
    rows = staff_population(20) + [staff_row(code="bad")] * 3
    refused = load("staff", rows)
    assert refused.outcome is Outcome.REFUSED and "3 of 23 rows are bad" in refused.message
    assert publisher.live_meta().version == good.data_version  # type: ignore[union-attr]
    forced = load("staff", rows, force=True)
    assert forced.outcome is Outcome.PUBLISHED_WITH_REJECTS


def test_shrink_guard_refuses_a_truncated_full_export(load: Loader, publisher: Publisher) -> None:
    good = load("staff", staff_population(100))
    refused = load("staff", staff_population(79))
    assert refused.outcome is Outcome.REFUSED and "truncated" in refused.message
    assert publisher.live_meta().version == good.data_version  # type: ignore[union-attr]
    assert load("staff", staff_population(80)).outcome is Outcome.PUBLISHED


def test_rejected_rows_are_reported_and_good_rows_load(load: Loader, publisher: Publisher) -> None:
    rows = [*staff_population(30), staff_row(code="D330902999999", start="2026-02-30")]
    result = load("staff", rows)
    assert result.outcome is Outcome.PUBLISHED_WITH_REJECTS
    assert result.report is not None
    report = Path(result.report).read_text(encoding="utf-8-sig").splitlines()
    assert report[0] == "file,line,column,reason,value"
    assert ",32,开始日期," in report[1] and "2026-02-30" in report[1]
    assert publisher.live_meta().counts["staff"] == 30  # type: ignore[union-attr]


def test_delta_upserts_and_deletes_atomically(
    load: Loader, publisher: Publisher, sync_redis: redis.Redis, keys: Keys
) -> None:
    load("staff", [staff_row(), staff_row(code="D330902000002")])
    result = load(
        "staff",
        [
            staff_row(status="中止", start="2026-03-01"),
            staff_row(code="D330902000002", status="删除", start=""),
        ],
        delta=True,
        max_shrink_ratio=0.5,  # one of two persons goes: past the default shrink guard
    )
    assert result.outcome is Outcome.PUBLISHED
    meta = publisher.live_meta()
    assert meta is not None and meta.counts["staff"] == 1
    assert [s.mode for s in meta.sources] == ["full", "delta"]
    table = keys.table("staff", meta.tables["staff"])
    assert sync_redis.hget(table, "D330902000002") is None
    record = StaffRecord.decode(sync_redis.hget(table, DOCTOR) or b"")
    assert [p.status.label for p in record.periods] == ["中止"]


def test_personal_id_numbers_never_reach_redis(load: Loader, sync_redis: redis.Redis) -> None:
    load("staff", [staff_row(id_number="330902198001011234", name="张三")])
    for key in sync_redis.keys("*"):
        kind = sync_redis.type(key)
        if kind == b"hash":
            blob = b"".join(k + v for k, v in sync_redis.hgetall(key).items())
        elif kind == b"string":
            blob = sync_redis.get(key) or b""
        else:
            continue
        assert b"330902198001011234" not in blob
        assert "张三".encode() not in blob
