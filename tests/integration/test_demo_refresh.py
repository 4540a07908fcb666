"""``serve --demo`` keeps the demo data relative to the day of each start: a store holding the
demo set of an earlier day gets today's; today's demo set, or data an operator loaded, is left
alone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import redis

from gateway.config import Settings
from gateway.keys import Keys
from loader.demo import DemoSet, load_order
from loader.publish import Publisher
from loader.quickstart import GENERATED_ON, ensure_demo_data
from loader.sync import FileSpec, SyncOptions, sync_file, sync_files
from tests.exports import HEADERS, institution_row, write_csv

CST = dt.timezone(dt.timedelta(hours=8))
STAFF = 50


def test_an_earlier_days_demo_set_is_replaced_by_todays(settings: Settings, sync_redis: redis.Redis) -> None:
    publisher = Publisher(sync_redis, Keys())
    today = dt.datetime.now(CST).date()
    earlier = today - dt.timedelta(days=40)
    out_dir = settings.state_dir / "demo"
    paths = DemoSet(earlier, STAFF).write(out_dir)
    sync_files([FileSpec(path) for _, path in load_order(paths)], publisher, SyncOptions())
    (out_dir / GENERATED_ON).write_text(earlier.isoformat() + "\n")
    old = publisher.live_meta()
    assert old is not None

    version = ensure_demo_data(settings.redis_url or "", settings, STAFF)
    assert version is not None and version != old.version
    assert (out_dir / GENERATED_ON).read_text().strip() == today.isoformat()
    assert Publisher(sync_redis, Keys()).live_meta().version == version  # type: ignore[union-attr]
    # The second start of the day leaves it alone.
    assert ensure_demo_data(settings.redis_url or "", settings, STAFF) is None


def test_data_an_operator_loaded_is_left_alone(
    settings: Settings, sync_redis: redis.Redis, tmp_path: Path
) -> None:
    publisher = Publisher(sync_redis, Keys())
    path = write_csv(tmp_path / "institutions.csv", HEADERS["institution"], [institution_row()])
    sync_file(path, publisher, SyncOptions(kind="institution", allow_incomplete=True))
    before = publisher.live_meta()
    assert ensure_demo_data(settings.redis_url or "", settings, STAFF) is None
    assert publisher.live_meta() == before
