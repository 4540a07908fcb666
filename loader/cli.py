"""``settlement-loader``: load national platform exports into the store, watch a directory
for them, write demo data, show what is live.

Exit codes of ``sync`` (the contract): 0 published cleanly; 3 published, some rows
rejected; 4 refused by a guard, live data untouched; 2 usage error; 1 any other failure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import orjson
import redis.exceptions

from gateway.config import ConfigError, Settings
from gateway.embedded import EmbeddedRedisError, store_url
from gateway.keys import Keys
from gateway.logs import setup_logging
from gateway.redis_client import sync_client
from loader import progress
from loader.bans import BanYears
from loader.columns import KINDS, ColumnMapping
from loader.demo import FORMATS, SCENARIOS, DemoSet, load_order
from loader.lock import LockBusy
from loader.publish import PublishConflict, Publisher, StagingError
from loader.state import CountsFile
from loader.status import live_status, render_status
from loader.sync import FileSpec, Outcome, SetResult, SyncOptions, SyncResult, sync_files
from loader.watch import DEFAULT_DELTA_PATTERNS, WatchBusy, Watcher, WatchOptions

log = logging.getLogger("loader")

# A load is a batch job sharing the machine with a gateway whose answers hold up a checkout:
# under CPU contention the gateway should win (nice 10 weighs a tenth of nice 0).
LOADER_NICENESS = 10

STORE_FAILURES = (EmbeddedRedisError, redis.exceptions.RedisError, LockBusy, PublishConflict, StagingError)


def _ratio(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a share between 0 and 1")
    return value


def _add_load_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kind", choices=KINDS, help="file kind (default: from the header row)")
    parser.add_argument(
        "--force", action="store_true", help="publish even when a guard objects (logged loudly)"
    )
    parser.add_argument("--mapping", type=Path, help="TOML file with a province's header/status spellings")
    parser.add_argument(
        "--nice",
        type=int,
        default=LOADER_NICENESS,
        help=f"lower the loader's CPU priority by this much ({LOADER_NICENESS}; 0 keeps it)",
    )
    parser.add_argument(
        "--max-bad-ratio", type=_ratio, default=0.10, help="refuse above this share of bad rows (0.10)"
    )
    parser.add_argument(
        "--max-shrink-ratio",
        type=_ratio,
        default=0.20,
        help="refuse a change taking away more than this share of the live records (0.20)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="settlement-loader", description=__doc__.split("\n")[0])
    parser.add_argument("--redis-url", help="store URL (default: $SGW_REDIS_URL, else embedded)")
    parser.add_argument("--state-dir", type=Path, help="embedded store directory ($SGW_STATE_DIR)")
    parser.add_argument("--namespace", help="key namespace ($SGW_NAMESPACE, default sgw)")
    sub = parser.add_subparsers(dest="command", required=True)

    sync = sub.add_parser("sync", help="load export files, all of them as one data version")
    sync.add_argument("paths", type=Path, nargs="+", metavar="PATH", help="one file per kind")
    sync.add_argument(
        "--delta", action="store_true", help="replace only the persons/institutions in the files"
    )
    _add_load_options(sync)
    sync.add_argument(
        "--report", type=Path, help="rejected rows report: .csv, or .jsonl (default: <input>.rejects.csv)"
    )
    sync.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    sync.add_argument("--no-progress", action="store_true", help="no progress bar even on a terminal")

    watch = sub.add_parser("watch", help="load exports as they land in a directory")
    watch.add_argument("directory", type=Path)
    _add_load_options(watch)
    watch.add_argument("--interval", type=float, default=2.0, help="seconds between directory scans (2)")
    watch.add_argument(
        "--delta-pattern",
        action="append",
        help=f"file names loaded as deltas (fnmatch; default {' '.join(DEFAULT_DELTA_PATTERNS)})",
    )
    watch.add_argument(
        "--settle",
        type=float,
        default=5.0,
        help="seconds without a new file before the pending ones load, as one version (5)",
    )
    watch.add_argument(
        "--metrics-listen", default="127.0.0.1:9465", help="Prometheus /metrics address (127.0.0.1:9465)"
    )

    demo = sub.add_parser("demo-data", help="write a realistic synthetic export set")
    demo.add_argument("out_dir", type=Path)
    demo.add_argument("--staff", type=int, help="number of staff (default 2000, or about --rows)")
    demo.add_argument("--rows", type=int, help="exactly this many staff rows (e.g. 1000000)")
    demo.add_argument("--format", choices=list(FORMATS), default="csv", help="csv (UTF-8), gb18030 or xlsx")
    demo.add_argument("--bad-share", type=_ratio, default=0.0, help="share of staff rows spoiled (0)")
    demo.add_argument("--seed", type=int, default=20261124)
    demo.add_argument("--today", type=dt.date.fromisoformat, help="anchor date (default: today, CST)")

    status = sub.add_parser("status", help="show the live data version and its provenance")
    status.add_argument("--json", action="store_true")
    return parser


def _summary(result: SyncResult) -> str:
    """The one-screen summary an operator reads after a load."""
    lines = [
        f"file      {result.path}",
        f"kind      {result.kind or '?'} ({result.mode}, {result.format or '?'}, {result.encoding or '?'})",
        f"rows      {result.rows:,}  accepted {result.accepted:,}  rejected {result.rejected:,}",
    ]
    for reason, count in list(result.rejected_by_reason.items())[:6]:
        lines.append(f"          {count:>9,}  {reason}")
    if len(result.rejected_by_reason) > 6:
        lines.append(f"          … {len(result.rejected_by_reason) - 6} more reasons in the report")
    if result.records or result.live_records_before is not None:
        before = result.live_records_before
        lines.append(
            f"records   {result.records:,}" + (f"  (live before: {before:,})" if before is not None else "")
        )
    if result.report:
        lines.append(f"report    {result.report}")
    if result.banned:
        lines.append(f"bans      {result.banned:,} 正常 row(s) start inside a ban, see {result.bans_report}")
    if result.data_version:
        lines.append(f"version   {result.data_version}")
    if result.forced:
        lines.append("FORCED    " + "; ".join(result.forced))
    lines.append(f"result    {result.outcome.name.lower()} (exit {int(result.outcome)}): {result.message}")
    phases = "  ".join(f"{name} {seconds:.2f}s" for name, seconds in result.phases.items())
    lines.append(f"time      {result.seconds:.2f}s" + (f"  ({phases})" if phases else ""))
    return "\n".join(lines)


def _print_result(done: SetResult, as_json: bool) -> None:
    """One file: its document or summary, as ever. Several: each file's, then the version's."""
    if len(done.files) == 1:
        doc, text = done.files[0].to_json(), _summary(done.files[0])
    else:
        doc = done.to_json()
        text = "\n\n".join(
            [
                *(_summary(f) for f in done.files),
                f"version   {done.data_version or '-'}\n"
                f"result    {done.outcome.name.lower()} (exit {int(done.outcome)}): {done.message}",
            ]
        )
    if as_json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(text)


def _today_cst() -> dt.date:
    return dt.datetime.now(dt.timezone(dt.timedelta(hours=8))).date()


def _demo(args: argparse.Namespace) -> int:
    staff = args.staff or (args.rows * 7 // 8 if args.rows else 2000)
    if staff < len(SCENARIOS) or (args.rows is not None and args.rows < 2 * len(SCENARIOS)):
        print(f"settlement-loader: --staff must be at least {len(SCENARIOS)}", file=sys.stderr)
        return int(Outcome.USAGE)
    demo = DemoSet(args.today or _today_cst(), staff, args.seed, rows=args.rows, bad_share=args.bad_share)
    paths = demo.write(args.out_dir, args.format)
    for kind, path in load_order(paths):
        print(f"{kind:12s} {path}")
    return 0


def _sync_options(args: argparse.Namespace, settings: Settings, mapping: ColumnMapping) -> SyncOptions:
    return SyncOptions(
        kind=args.kind,
        delta=getattr(args, "delta", False),
        force=args.force,
        report=getattr(args, "report", None),
        mapping=mapping,
        shapes=settings.shapes,
        keep_names=settings.keep_names,
        max_bad_ratio=args.max_bad_ratio,
        max_shrink_ratio=args.max_shrink_ratio,
        state=CountsFile(settings.state_dir, settings.namespace),
        ban_years=BanYears(settings.profile.staff_ban_years(), settings.profile.institution_ban_years()),
    )


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
        return _demo(args)
    mapping = ColumnMapping()
    if getattr(args, "mapping", None):
        try:
            mapping = ColumnMapping.from_toml(args.mapping)
        except (OSError, ValueError) as exc:
            print(f"settlement-loader: --mapping: {exc}", file=sys.stderr)
            return int(Outcome.USAGE)
    if args.command == "sync":
        if args.report and len(args.paths) > 1:
            print("settlement-loader: --report names one file's report; with several files each "
                  "report goes beside its input", file=sys.stderr)  # fmt: skip
            return int(Outcome.USAGE)
        for path in args.paths:
            if not os.path.lexists(path):
                # A path that names no file is a mistake in the command, not a file to refuse.
                print(f"settlement-loader: {path}: no such file", file=sys.stderr)
                return int(Outcome.USAGE)
    try:
        with store_url(settings.redis_url, settings.state_dir) as url:
            if getattr(args, "nice", 0) > 0:
                os.nice(args.nice)  # after starting any embedded store: Redis keeps its priority
            client = sync_client(url)
            publisher = Publisher(client, Keys(settings.namespace))
            if args.command == "status":
                return _status(publisher, args.json)
            if args.command == "watch":
                return _watch(args, publisher, _sync_options(args, settings, mapping))
            bar = progress.for_stderr(enabled=not (args.json or args.no_progress))
            specs = [FileSpec(path, args.delta) for path in args.paths]
            done = sync_files(specs, publisher, _sync_options(args, settings, mapping), bar)
            _print_result(done, args.json)
            return int(done.outcome)
    except (*STORE_FAILURES, OSError) as exc:
        print(f"settlement-loader: {exc}", file=sys.stderr)
        return int(Outcome.FAILED)


def _status(publisher: Publisher, as_json: bool) -> int:
    status = live_status(publisher)
    if as_json:
        print(orjson.dumps(status or {}, option=orjson.OPT_INDENT_2).decode())
    else:
        print(render_status(status))
    return 0 if status else 1


def _watch(args: argparse.Namespace, publisher: Publisher, options: SyncOptions) -> int:
    # Imported here: gRPC and the HTTP server would add a tenth of a second to every `sync`.
    from prometheus_client import CollectorRegistry, start_http_server

    from gateway.server import StartupError, split_host_port
    from loader.metrics import LoaderMetrics

    if not args.directory.is_dir():
        print(f"settlement-loader: {args.directory} is not a directory", file=sys.stderr)
        return int(Outcome.USAGE)
    registry = CollectorRegistry()
    metrics = LoaderMetrics(registry)
    try:
        host, port = split_host_port(args.metrics_listen)
        server, thread = start_http_server(port, addr=host, registry=registry)
    except (StartupError, OSError) as exc:
        print(f"settlement-loader: cannot serve /metrics on {args.metrics_listen}: {exc}", file=sys.stderr)
        return int(Outcome.USAGE)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # a second signal: give up the load in progress
            raise SystemExit(int(Outcome.FAILED))
        log.info("stopping after the current file", extra={"signal": signal.Signals(signum).name})
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    watch_options = WatchOptions(
        directory=args.directory,
        sync=options,
        interval=args.interval,
        delta_patterns=tuple(args.delta_pattern or DEFAULT_DELTA_PATTERNS),
        settle=args.settle,
    )
    try:
        watcher = Watcher(publisher, watch_options, metrics)
        with watcher.sole_watcher():
            log.info("watch metrics served", extra={"metrics_port": server.server_port})
            watcher.run(stop)
    except WatchBusy as exc:
        print(f"settlement-loader: {exc}", file=sys.stderr)
        return int(Outcome.USAGE)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
