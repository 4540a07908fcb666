"""The loader's guards on every kind of change, and publishing several files as one version —
``settlement-loader`` run as an operator runs it, against a real Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
import redis

from gateway.keys import Keys
from gateway.records import DepartmentActions
from gateway.versions import VersionMeta
from loader.publish import Publisher
from loader.sync import FileSpec, Outcome, SyncOptions, sync_files
from tests.conftest import free_port
from tests.exports import (
    HEADERS,
    HOSPITAL,
    OTHER_HOSPITAL,
    department_row,
    institution_row,
    staff_row,
    write_csv,
    write_xlsx,
)
from tests.integration.test_loader_cli import loader, scrape, wait_for

BIN = Path(sys.executable).parent
KEYS = Keys()


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    return {**base, "SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state")}


def live_meta(client: redis.Redis) -> VersionMeta | None:
    live = client.get(KEYS.live)
    return VersionMeta.from_hash(client.hgetall(KEYS.version_meta(live.decode()))) if live else None  # type: ignore[union-attr, arg-type]


def staff_codes(n: int) -> list[str]:
    return [f"D330902{i:06d}" for i in range(n)]


def a_set(tmp_path: Path, staff: int = 50) -> tuple[Path, Path, Path]:
    """Institutions (CSV), departments (XLSX) and staff (CSV): a whole export set."""
    institutions = write_csv(
        tmp_path / "institutions.csv",
        HEADERS["institution"],
        [institution_row(), institution_row(code=OTHER_HOSPITAL)],
    )
    departments = write_xlsx(
        tmp_path / "departments.xlsx", list(HEADERS["department"]), [department_row("A05", status="中止")]
    )
    rows = [staff_row(code=code) for code in staff_codes(staff)]
    return institutions, departments, write_csv(tmp_path / "staff.csv", HEADERS["staff"], rows)


# -- one version from several files ---------------------------------------------------------


def test_sync_publishes_every_file_given_as_one_version(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, departments, staff = a_set(tmp_path)
    done = loader("sync", str(institutions), str(departments), str(staff), "--json", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    doc = orjson.loads(done.stdout)
    assert [(f["kind"], f["format"], f["outcome"]) for f in doc["files"]] == [
        ("institution", "csv", "published"),
        ("department", "xlsx", "published"),
        ("staff", "csv", "published"),
    ]
    assert {f["data_version"] for f in doc["files"]} == {doc["data_version"]}
    assert sync_redis.lrange(KEYS.history, 0, -1) == [doc["data_version"].encode()]  # one version
    meta = live_meta(sync_redis)
    assert meta is not None and dict(meta.counts) == {"institution": 2, "department": 1, "staff": 50}
    assert [Path(s.path).name for s in meta.sources] == ["institutions.csv", "departments.xlsx", "staff.csv"]
    assert sync_redis.zcard(KEYS.staging) == 0

    text = loader("sync", str(institutions), str(staff), env=env)  # both already live
    assert text.returncode == 0 and "already loaded" in text.stdout
    assert sync_redis.llen(KEYS.history) == 1

    two = write_csv(tmp_path / "more-staff.csv", HEADERS["staff"], [staff_row()])
    usage = loader("sync", str(staff), str(two), env=env)
    assert usage.returncode == 2 and "one file per kind" in usage.stdout
    assert sync_redis.llen(KEYS.history) == 1


def test_a_set_may_mix_full_exports_and_deltas(
    publisher: Publisher, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, _, staff = a_set(tmp_path)
    done = sync_files([FileSpec(institutions), FileSpec(staff)], publisher, SyncOptions())
    assert done.outcome is Outcome.PUBLISHED, done.message
    more_institutions = write_csv(
        tmp_path / "i2.csv",
        HEADERS["institution"],
        [institution_row(), institution_row(code=OTHER_HOSPITAL), institution_row(code="H33090400035")],
    )
    delta = write_csv(tmp_path / "staff-delta.csv", HEADERS["staff"], [staff_row(code="N330902000008")])
    mixed = sync_files([FileSpec(more_institutions), FileSpec(delta, delta=True)], publisher, SyncOptions())
    assert mixed.outcome is Outcome.PUBLISHED, mixed.message
    meta = live_meta(sync_redis)
    assert meta is not None and meta.version == mixed.data_version
    assert dict(meta.counts) == {"institution": 3, "staff": 51}  # the delta applied to a copy
    assert [(Path(s.path).name, s.mode) for s in meta.sources] == [
        ("staff.csv", "full"),
        ("i2.csv", "full"),
        ("staff-delta.csv", "delta"),
    ]
    assert sync_redis.zcard(KEYS.staging) == 0 and sync_redis.llen(KEYS.history) == 2


def test_one_bad_file_refuses_the_whole_set(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, _, staff = a_set(tmp_path)
    garbled = write_csv(tmp_path / "bad-staff.csv", HEADERS["staff"], [staff_row(code="x")] * 5)
    refused = loader("sync", str(institutions), str(garbled), env=env)
    assert (
        refused.returncode == 4
        and "bad-staff.csv" in refused.stdout
        and "nothing was published" in refused.stdout
    )
    assert live_meta(sync_redis) is None and sync_redis.zcard(KEYS.staging) == 0
    assert loader("sync", str(institutions), str(staff), env=env).returncode == 0


# -- completeness ---------------------------------------------------------------------------


def test_a_version_without_staff_or_institutions_is_refused_unless_forced(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, departments, staff = a_set(tmp_path)
    alone = loader("sync", str(institutions), env=env)
    assert alone.returncode == 4 and "no staff records" in alone.stdout
    assert live_meta(sync_redis) is None
    no_institutions = loader("sync", str(departments), str(staff), env=env)
    assert no_institutions.returncode == 4 and "no institution records" in no_institutions.stdout
    assert live_meta(sync_redis) is None

    forced = loader("sync", str(institutions), "--force", env=env)
    assert (
        forced.returncode == 0
        and "FORCED" in forced.stdout
        and "incomplete version: no staff" in forced.stdout
    )
    assert live_meta(sync_redis).missing_kinds() == ("staff",)  # type: ignore[union-attr]
    assert "INCOMPLETE no staff records" in loader("status", env=env).stdout
    assert loader("sync", str(staff), env=env).returncode == 0  # complete now
    assert live_meta(sync_redis).missing_kinds() == ()  # type: ignore[union-attr]


# -- shrink guards on every kind of change --------------------------------------------------


def test_a_delta_deleting_most_staff_is_refused(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, _, staff = a_set(tmp_path, staff=2052)
    assert loader("sync", str(institutions), str(staff), env=env).returncode == 0
    before = live_meta(sync_redis)
    deletes = tmp_path / "staff-delta.csv"
    deletes.write_text(
        "人员代码,定点机构代码,协议状态\n" + "".join(f"{c},,删除\n" for c in staff_codes(1800)), "utf-8"
    )
    refused = loader("sync", str(deletes), "--delta", env=env)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "1,800 of 2,052 staff records" in refused.stdout and "D330902000000" in refused.stdout
    assert live_meta(sync_redis) == before  # live data untouched

    forced = loader("sync", str(deletes), "--delta", "--force", "--json", env=env)
    assert forced.returncode == 0
    assert orjson.loads(forced.stdout)["forced"] == [
        "staff: 1800 of 2052 staff records removed (more than 20%)"
    ]
    assert live_meta(sync_redis).counts["staff"] == 252  # type: ignore[union-attr]


def test_an_institution_delta_is_held_to_the_shrink_guard(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    codes = [f"H330902{i:05d}" for i in range(10)]
    institutions = write_csv(
        tmp_path / "i.csv", HEADERS["institution"], [institution_row(code=c) for c in codes]
    )
    staff = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row()])
    assert loader("sync", str(institutions), str(staff), env=env).returncode == 0
    delta = tmp_path / "i-delta.csv"
    delta.write_text("定点机构代码,协议状态\n" + "".join(f"{c},删除\n" for c in codes[:3]), "utf-8")
    refused = loader("sync", str(delta), "--delta", env=env)
    assert refused.returncode == 4 and "3 of 10 institution records" in refused.stdout
    assert live_meta(sync_redis).counts["institution"] == 10  # type: ignore[union-attr]
    small = tmp_path / "i-delta-small.csv"
    small.write_text(f"定点机构代码,协议状态\n{codes[0]},删除\n", "utf-8")
    assert loader("sync", str(small), "--delta", env=env).returncode == 0  # one of ten: within 20 %


def test_a_department_file_of_another_institution_cannot_drop_a_stop(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, departments, staff = a_set(tmp_path)
    assert loader("sync", str(institutions), str(departments), str(staff), env=env).returncode == 0
    other = write_csv(
        tmp_path / "departments-other.csv",
        HEADERS["department"],
        [department_row("B01", institution=OTHER_HOSPITAL)],
    )
    refused = loader("sync", str(other), env=env)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert f"1 of 1 department stops ({HOSPITAL}/A05)" in refused.stdout
    meta = live_meta(sync_redis)
    assert meta is not None
    raw = sync_redis.hget(KEYS.table("department", meta.tables["department"]), HOSPITAL)
    assert raw and "A05" in DepartmentActions.decode(raw).by_department  # the stop still stands

    delta = tmp_path / "departments-delta.csv"
    delta.write_text(f"定点机构代码,科室编码,协议状态\n{HOSPITAL},A05,删除\n", "utf-8")
    assert loader("sync", str(delta), "--delta", env=env).returncode == 4
    assert loader("sync", str(other), "--force", env=env).returncode == 0


def test_the_shrink_guard_survives_the_store_losing_its_data(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    institutions, departments, staff = a_set(tmp_path, staff=100)
    assert loader("sync", str(institutions), str(departments), str(staff), env=env).returncode == 0
    kept = orjson.loads((tmp_path / "state" / "loader-sgw.json").read_bytes())
    assert (kept["counts"], kept["department_stops"]) == (
        {"institution": 2, "department": 1, "staff": 100},
        1,
    )

    sync_redis.flushall()  # the store lost everything
    truncated = write_csv(
        tmp_path / "staff-cut.csv", HEADERS["staff"], [staff_row(code=c) for c in staff_codes(30)]
    )
    held = loader("sync", str(institutions), str(truncated), env=env)
    assert held.returncode == 4, held.stdout + held.stderr
    assert "70 of 100 staff records" in held.stdout and "loader-sgw.json" in held.stdout
    assert live_meta(sync_redis) is None
    no_departments = loader("sync", str(institutions), str(staff), env=env)
    assert no_departments.returncode == 4 and "no department stops" in no_departments.stdout
    assert loader("sync", str(institutions), str(departments), str(staff), env=env).returncode == 0


# -- watch: files that land together ---------------------------------------------------------


def test_watch_publishes_files_landing_together_as_one_version(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    institutions, departments, staff = a_set(tmp_path)
    manifest_set = tmp_path / "later"
    manifest_set.mkdir()
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "settlement-loader"), "watch", str(inbox), "--interval", "0.2", "--settle", "1",
         "--metrics-listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: scrape(port)["sgw_loader_last_scan_timestamp_seconds"] > 0)
        # The settle window: institutions land, then staff a moment later; neither alone.
        institutions.rename(inbox / institutions.name)
        time.sleep(0.5)
        staff.rename(inbox / staff.name)
        wait_for(lambda: scrape(port).get('sgw_loader_files_total{outcome="published"}') == 2)
        assert sync_redis.llen(KEYS.history) == 1
        meta = live_meta(sync_redis)
        assert meta is not None and meta.missing_kinds() == ()

        # A manifest: its files load together once all are there, however long that takes.
        more = write_csv(
            inbox.parent / "staff-2.csv", HEADERS["staff"], [staff_row(code=c) for c in staff_codes(55)]
        )
        (inbox / "daily.manifest").write_text("# today's set\nstaff-2.csv\ndepartments.xlsx\n", "utf-8")
        departments.rename(inbox / departments.name)
        time.sleep(2)  # past the settle window: the manifest still waits for staff-2.csv
        assert sync_redis.llen(KEYS.history) == 1 and (inbox / departments.name).exists()
        more.rename(inbox / more.name)
        wait_for(lambda: sync_redis.llen(KEYS.history) == 2)
        meta = live_meta(sync_redis)
        assert meta is not None and (meta.counts["staff"], meta.counts["department"]) == (55, 1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    loaded = sorted(p.name.split("_", 1)[1] for p in (inbox / "loaded").iterdir())
    assert loaded == ["daily.manifest", "departments.xlsx", "institutions.csv", "staff-2.csv", "staff.csv"]


def test_the_quick_start_publishes_the_demo_set_as_one_complete_version(
    redis_url: str, tmp_path: Path, sync_redis: redis.Redis
) -> None:
    from gateway.config import Settings
    from loader.quickstart import ensure_demo_data

    version = ensure_demo_data(redis_url, Settings(redis_url=redis_url, state_dir=tmp_path), staff=50)
    meta = live_meta(sync_redis)
    assert meta is not None and meta.version == version and meta.missing_kinds() == ()
    assert sync_redis.llen(KEYS.history) == 1 and set(meta.tables) == {"staff", "institution", "department"}
    assert (
        ensure_demo_data(redis_url, Settings(redis_url=redis_url, state_dir=tmp_path)) is None
    )  # left alone


def test_a_forced_set_may_empty_a_kind(publisher: Publisher, tmp_path: Path, sync_redis: redis.Redis) -> None:
    institutions, _, staff = a_set(tmp_path, staff=5)
    assert (
        sync_files([FileSpec(institutions), FileSpec(staff)], publisher, SyncOptions()).outcome
        is Outcome.PUBLISHED
    )
    more = write_csv(tmp_path / "i2.csv", HEADERS["institution"], [institution_row()])
    gone = tmp_path / "staff-gone.csv"
    gone.write_text(
        "人员代码,定点机构代码,协议状态\n" + "".join(f"{c},,删除\n" for c in staff_codes(5)), "utf-8"
    )
    specs = [FileSpec(more), FileSpec(gone, delta=True)]
    refused = sync_files(specs, publisher, SyncOptions())
    assert refused.outcome is Outcome.REFUSED and "no staff records" in refused.message
    forced = sync_files(specs, publisher, SyncOptions(force=True))
    assert forced.outcome is Outcome.PUBLISHED, forced.message
    meta = live_meta(sync_redis)
    assert meta is not None and meta.missing_kinds() == ("staff",) and meta.counts["staff"] == 0
    assert sync_redis.zcard(KEYS.staging) == 0
