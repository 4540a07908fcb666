"""``settlement-loader``: load national platform exports into the store, write demo data,
show what is live.

Exit codes of ``sync`` (the contract): 0 published cleanly; 3 published, some rows
rejected; 4 refused by a guard, live data untouched; 2 usage error; 1 any other failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
from pathlib import Path

import orjson
import redis.exceptions

from gateway.config import ConfigError, Settings
from gateway.embedded import EmbeddedRedisError, store_url
from gateway.keys import Keys
from gateway.logs import setup_logging
from gateway.redis_client import sync_client
from loader.columns import KINDS, ColumnMapping
from loader.demo import SCENARIOS, DemoSet, load_order
from loader.lock import LockBusy
from loader.publish import PublishConflict, Publisher, StagingError
from loader.sync import Outcome, SyncOptions, SyncResult, sync_file

log = logging.getLogger("loader")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="settlement-loader", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="store URL (default: $SGW_REDIS_URL, else embedded)")
    parser.add_argument("--state-dir", type=Path, help="embedded store directory ($SGW_STATE_DIR)")
    parser.add_argument("--namespace", help="key namespace ($SGW_NAMESPACE, default sgw)")
    sub = parser.add_subparsers(dest="command", required=True)

    sync = sub.add_parser("sync", help="load one export file")
    sync.add_argument("path", type=Path)
    sync.add_argument(
        "--delta", action="store_true", help="replace only the persons/institutions in the file"
    )
    sync.add_argument("--kind", choices=KINDS, help="file kind (default: from the header row)")
    sync.add_argument("--force", action="store_true", help="publish even when a guard objects")
    sync.add_argument("--report", type=Path, help="rejected rows report (default: <input>.rejects.csv)")
    sync.add_argument("--mapping", type=Path, help="TOML file with a province's header/status spellings")
    sync.add_argument("--max-bad-ratio", type=float, default=0.10, help="refuse above this share of bad rows")
    sync.add_argument("--max-shrink-ratio", type=float, default=0.20,
                      help="refuse a full export dropping more than this share of live records")  # fmt: skip
    sync.add_argument("--json", action="store_true", help="print the result as JSON")

    demo = sub.add_parser("demo-data", help="write a realistic synthetic export set")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--staff", type=int, default=2000, help="number of staff (default 2000)")
    demo.add_argument("--seed", type=int, default=20261124)
    demo.add_argument("--today", type=dt.date.fromisoformat, help="anchor date (default: today, CST)")

    status = sub.add_parser("status", help="show the live data version and its provenance")
    status.add_argument("--json", action="store_true")
    return parser


def _print_result(result: SyncResult, as_json: bool) -> None:
    if as_json:
        sys.stdout.write(orjson.dumps(result.to_json(), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    lines = [
        f"file      {result.path}",
        f"kind      {result.kind or '?'} ({result.mode}, {result.encoding or '?'})",
        f"rows      {result.rows}  accepted {result.accepted}  rejected {result.rejected}",
        f"records   {result.records}" + (
            f"  (live before: {result.live_records_before})" if result.live_records_before is not None else ""
        ),
    ]  # fmt: skip
    if result.report:
        lines.append(f"report    {result.report}")
    if result.data_version:
        lines.append(f"version   {result.data_version}")
    lines.append(f"result    {result.outcome.name.lower()} (exit {int(result.outcome)}): {result.message}")
    lines.append(f"time      {result.seconds:.2f}s")
    print("\n".join(lines))


def _today_cst() -> dt.date:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(
            state_dir=args.state_dir, namespace=args.namespace, redis_url=args.redis_url
        )
    except ConfigError as exc:
        print(f"settlement-loader: {exc}", file=sys.stderr)
        return int(Outcome.USAGE)
    setup_logging("WARNING" if getattr(args, "json", False) else settings.log_level)

    if args.command == "demo-data":
        if args.staff < len(SCENARIOS):
            print("settlement-loader: --staff must be at least 8", file=sys.stderr)
            return int(Outcome.USAGE)
        paths = DemoSet(args.today or _today_cst(), args.staff, args.seed).write(args.out_dir)
        for kind, path in load_order(paths):
            print(f"{kind:12s} {path}")
        return 0

    try:
        with store_url(settings.redis_url, settings.state_dir) as url:
            client = sync_client(url)
            publisher = Publisher(client, Keys(settings.namespace))
            if args.command == "status":
                return _status(publisher, args.json)
            try:
                mapping = ColumnMapping.from_toml(args.mapping) if args.mapping else ColumnMapping()
            except (OSError, ValueError) as exc:
                print(f"settlement-loader: --mapping: {exc}", file=sys.stderr)
                return int(Outcome.USAGE)
            options = SyncOptions(
                kind=args.kind,
                delta=args.delta,
                force=args.force,
                report=args.report,
                mapping=mapping,
                shapes=settings.shapes,
                keep_names=settings.keep_names,
                max_bad_ratio=args.max_bad_ratio,
                max_shrink_ratio=args.max_shrink_ratio,
            )
            result = sync_file(args.path, publisher, options)
            _print_result(result, args.json)
            return int(result.outcome)
    except (
        EmbeddedRedisError,
        redis.exceptions.RedisError,
        LockBusy,
        PublishConflict,
        StagingError,
        OSError,
    ) as exc:
        print(f"settlement-loader: {exc}", file=sys.stderr)
        return int(Outcome.FAILED)


def _status(publisher: Publisher, as_json: bool) -> int:
    meta = publisher.live_meta()
    if meta is None:
        print("no data version is live" if not as_json else "{}")
        return 1
    doc = {
        "data_version": meta.version,
        "as_of": dt.datetime.fromtimestamp(meta.as_of, dt.UTC).isoformat(),
        "counts": dict(meta.counts),
        "sources": [s.to_json() for s in meta.sources],
        "previous": meta.previous,
    }
    if as_json:
        print(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"version   {meta.version}  (as of {doc['as_of']})")
    print("counts    " + "  ".join(f"{k} {v}" for k, v in meta.counts.items()))
    for s in meta.sources:
        print(f"source    {s.kind:11s} {s.mode:5s} rows {s.rows:>8d} rejected {s.rejected:>6d}  {s.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
