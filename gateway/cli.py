"""``settlement-gateway``: run the settlement validation gateway.

Every flag has an ``SGW_*`` variable; the flag wins. With no Redis URL the gateway starts
(and stops) an embedded local Redis under the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from gateway.config import ConfigError, Settings, parse_cancellation_scope, parse_csv_set
from gateway.embedded import EmbeddedRedisError, store_url
from gateway.logs import setup_logging
from gateway.loops import DEFAULT_EVENT_LOOP, install_event_loop, parse_event_loop
from gateway.server import StartupError, serve
from gateway.workers import run_workers

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="settlement-gateway", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the gRPC API and /metrics")
    s.add_argument("--listen", help="gRPC address ($SGW_LISTEN, default [::]:50051)")
    s.add_argument("--metrics-listen", help="/metrics address ($SGW_METRICS_LISTEN, default [::]:9464)")
    s.add_argument("--redis-url", help="redis://, rediss://, unix:// or redis+cluster:// ($SGW_REDIS_URL)")
    s.add_argument("--state-dir", type=Path, help="embedded Redis directory ($SGW_STATE_DIR)")
    s.add_argument("--namespace", help="key namespace ($SGW_NAMESPACE, default sgw)")
    s.add_argument("--max-lines", type=int, help="max lines per request ($SGW_MAX_LINES, default 10000)")
    s.add_argument("--emergency-med-types", type=parse_csv_set,
                   help="医疗类别 codes treated as emergencies ($SGW_EMERGENCY_MED_TYPES, default 13,24)")  # fmt: skip
    s.add_argument("--cancellation-scope", type=parse_cancellation_scope, dest="national_cancellation",
                   help="national (default) or institution ($SGW_CANCELLATION_SCOPE)")  # fmt: skip
    s.add_argument("--redis-timeout", type=float, dest="redis_timeout_seconds",
                   help="bound on every Redis call, seconds ($SGW_REDIS_TIMEOUT, default 0.5)")  # fmt: skip
    s.add_argument("--shutdown-grace", type=float, dest="shutdown_grace_seconds",
                   help="seconds in-flight calls get on SIGTERM ($SGW_SHUTDOWN_GRACE, default 10)")  # fmt: skip
    s.add_argument("--log-level", help="($SGW_LOG_LEVEL, default INFO)")
    s.add_argument("--workers", type=int,
                   help="processes serving the gRPC port together ($SGW_WORKERS, default 1)")  # fmt: skip
    s.add_argument("--event-loop", type=parse_event_loop,
                   help=f"asyncio or uvloop ($SGW_EVENT_LOOP, default {DEFAULT_EVENT_LOOP})")  # fmt: skip
    s.add_argument("--demo", action="store_true", help="load the demo export set if the store is empty")
    s.add_argument("--demo-staff", type=int, default=2000, help="demo population size (default 2000)")
    return parser


SETTING_FLAGS = (
    "listen", "metrics_listen", "redis_url", "state_dir", "namespace", "max_lines",
    "emergency_med_types", "national_cancellation", "redis_timeout_seconds",
    "shutdown_grace_seconds", "log_level", "event_loop", "workers",
)  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env(**{name: getattr(args, name) for name in SETTING_FLAGS})
    except (ConfigError, TypeError) as exc:
        print(f"settlement-gateway: {exc}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level)
    try:
        with store_url(settings.redis_url, settings.state_dir) as url:
            if args.demo:
                from loader.quickstart import ensure_demo_data

                ensure_demo_data(url, settings, args.demo_staff)
            if settings.workers > 1:
                return run_workers(settings, url)
            install_event_loop(settings.event_loop)
            asyncio.run(serve(settings, url))
    except (StartupError, EmbeddedRedisError) as exc:
        log.error("cannot start", extra={"error": str(exc)})
        print(f"settlement-gateway: cannot start: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
