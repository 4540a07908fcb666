"""Load the demo export set into an empty store, for ``settlement-gateway serve --demo``.

It goes through the same ``sync_files`` path as an operator's load (all files, one version), so
the quick start exercises the real loader. A store whose live data an operator loaded is left
alone; live data that is the demo set of an earlier day is replaced by today's, so the demo
scenarios ("中止 from 30 days ago"…) stay relative to the day of each start, not of the first.
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

# The day (CST) the demo files in the state directory were generated for.
GENERATED_ON = "generated-on"


def ensure_demo_data(url: str, settings: Settings, staff: int = 2000) -> str | None:
    """Publish the demo set if nothing is live; returns the new version (None if untouched)."""
    client = sync_client(url)
    try:
        publisher = Publisher(client, Keys(settings.namespace))
        today = dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()
        out_dir: Path = settings.state_dir / "demo"
        marker = out_dir / GENERATED_ON
        live = publisher.live_meta()
        if live is not None:
            demo_live = bool(live.sources) and all(
                Path(source.path).parent == out_dir.resolve() for source in live.sources
            )
            if not demo_live:
                log.info("store already has data; demo data not loaded")
                return None
            if marker.exists() and marker.read_text().strip() == today.isoformat():
                log.info("today's demo data is live")
                return None
            log.info("demo data of an earlier day is live: loading today's")
        paths = DemoSet(today, staff).write(out_dir)
        marker.write_text(today.isoformat() + "\n")
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
