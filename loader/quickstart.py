"""Load the demo export set into an empty store, for ``settlement-gateway serve --demo``.

It goes through the same ``sync_files`` path as an operator's load (all files, one version), so the quick start
exercises the real loader; a store that already has a live version is left alone.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

from gateway.config import Settings
from gateway.keys import Keys
from gateway.redis_client import sync_client
from loader.demo import DemoSet, load_order
from loader.publish import Publisher
from loader.sync import FileSpec, Outcome, SyncOptions, sync_files

log = logging.getLogger(__name__)


def ensure_demo_data(url: str, settings: Settings, staff: int = 2000) -> str | None:
    """Publish the demo set if nothing is live; returns the new version (None if untouched)."""
    client = sync_client(url)
    try:
        publisher = Publisher(client, Keys(settings.namespace))
        if publisher.live_meta() is not None:
            log.info("store already has data; demo data not loaded")
            return None
        today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
        out_dir: Path = settings.state_dir / "demo"
        paths = DemoSet(today, staff).write(out_dir)
        specs = [FileSpec(path) for _, path in load_order(paths)]
        done = sync_files(specs, publisher, SyncOptions(shapes=settings.shapes))
        if done.outcome not in (Outcome.PUBLISHED, Outcome.PUBLISHED_WITH_REJECTS):
            raise RuntimeError(f"demo data did not load: {done.message}")
        for result in done.files:
            log.info(
                "demo data loaded", extra={"kind": result.kind, "rows": result.rows, "path": result.path}
            )
        return done.data_version
    finally:
        client.close()
