"""``settlement-gateway``: run the settlement validation gateway, or search and archive its audit trail.

Every flag has an ``SGW_*`` variable; the flag wins. With no Redis URL the gateway starts
(and stops) an embedded local Redis under the state directory.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import logging
import sys
from pathlib import Path

from gateway.config import ConfigError, Settings, parse_cancellation_scope, parse_csv_set
from gateway.days import CST
from gateway.embedded import EmbeddedRedisError, store_url
from gateway.logs import setup_logging
from gateway.loops import DEFAULT_EVENT_LOOP, install_event_loop, parse_event_loop
from gateway.outage import parse_outage_policy
from gateway.profiles import cli as profile_cli
from gateway.server import StartupError, serve
from gateway.workers import run_workers

log = logging.getLogger("gateway")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="settlement-gateway", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="serve the gRPC API and /metrics")
    s.add_argument("--listen", help="gRPC address ($SGW_LISTEN, default [::]:50051)")
    s.add_argument("--metrics-listen", help="/metrics address ($SGW_METRICS_LISTEN, default [::]:9464)")
    s.add_argument("--redis-url", help="redis[s]://, unix://, redis+cluster|+sentinel:// ($SGW_REDIS_URL)")
    s.add_argument("--state-dir", type=Path, help="embedded Redis directory ($SGW_STATE_DIR)")
    s.add_argument("--namespace", help="key namespace ($SGW_NAMESPACE, default sgw)")
    s.add_argument("--max-lines", type=int, help="max lines per request ($SGW_MAX_LINES, default 10000)")
    s.add_argument("--max-future-days", type=int,
                   help="days after today (CST) a service_time may be ($SGW_MAX_FUTURE_DAYS, default 0)")  # fmt: skip
    s.add_argument("--emergency-med-types", type=parse_csv_set,
                   help="医疗类别 codes treated as emergencies ($SGW_EMERGENCY_MED_TYPES, default 13,24)")  # fmt: skip
    s.add_argument("--policy-profile",
                   help="the region's policy profile: a shipped name or a TOML file ($SGW_POLICY_PROFILE, default default)")  # fmt: skip
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
    s.add_argument("--outage-policy", type=parse_outage_policy,
                   help="refuse (default) or accept-flagged ($SGW_OUTAGE_POLICY)")  # fmt: skip
    s.add_argument("--degraded-max-age", type=float, dest="degraded_max_age_seconds",
                   help="seconds cached data may answer after Redis went away ($SGW_DEGRADED_MAX_AGE, default 600)")  # fmt: skip
    s.add_argument("--max-concurrent-rpcs", type=int,
                   help="calls handled at once, more are refused ($SGW_MAX_CONCURRENT_RPCS, default 1000)")  # fmt: skip
    s.add_argument("--tls-cert", type=Path, help="server certificate, PEM ($SGW_TLS_CERT)")
    s.add_argument("--tls-key", type=Path, help="its private key, PEM ($SGW_TLS_KEY)")
    s.add_argument(
        "--tls-client-ca", type=Path, help="CA that signs client certificates ($SGW_TLS_CLIENT_CA)"
    )
    s.add_argument("--tls-clients", type=Path,
                   help="TOML: client identity -> institution codes ($SGW_TLS_CLIENTS)")  # fmt: skip

    profile_cli.add_parser(sub)
    a = sub.add_parser(
        "audit",
        help="find audit records (rejections, exemptions, outage payments); verify, explain, migrate",
    )
    a.add_argument(
        "action", nargs="?", default="find", choices=("find", "verify", "explain", "migrate"),
        help="find (default) records; verify the archive's hash chains; explain one settlement "
        "(--settlement); migrate: create or update the archive schema",
    )  # fmt: skip
    a.add_argument("--settlement", help="settlement id (HIS mdtrt_id)")
    a.add_argument("--staff", help="staff code")
    a.add_argument("--institution", help="institution code")
    a.add_argument(
        "--since",
        type=parse_when,
        help="from this time: YYYY-MM-DD[THH:MM[:SS]], CST unless an offset is given",
    )
    a.add_argument(
        "--until", type=parse_when_end, help="up to this time (a bare date includes the whole day)"
    )
    a.add_argument("--limit", type=int, help="stop after this many records")
    a.add_argument("--redis-url", help="($SGW_REDIS_URL; default: the embedded store)")
    a.add_argument("--state-dir", type=Path, help="embedded Redis directory ($SGW_STATE_DIR)")
    a.add_argument("--namespace", help="key namespace ($SGW_NAMESPACE, default sgw)")
    a.add_argument("--dsn", help="PostgreSQL audit archive ($SGW_AUDIT_DSN; default: read the Redis stream)")
    a.add_argument("--json", action="store_true", help="JSON lines instead of text")

    r = sub.add_parser("audit-archive", help="move the audit stream into the PostgreSQL archive")
    r.add_argument("--dsn", help="PostgreSQL audit archive ($SGW_AUDIT_DSN)")
    r.add_argument("--redis-url", help="($SGW_REDIS_URL; default: the embedded store)")
    r.add_argument("--state-dir", type=Path, help="embedded Redis directory ($SGW_STATE_DIR)")
    r.add_argument("--namespace", help="key namespace ($SGW_NAMESPACE, default sgw)")
    r.add_argument("--once", action="store_true", help="archive what the stream holds, then exit")
    r.add_argument("--consumer", help="consumer name in the stream's group (default: the host name)")
    r.add_argument("--metrics-listen", help="serve the archiver's /metrics here, e.g. [::]:9465")
    return parser


def _parse_time(text: str, end_of_day: bool) -> float:
    try:
        if len(text) == 10:
            day = dt.datetime.combine(dt.date.fromisoformat(text), dt.time(), CST)
            return (day + dt.timedelta(days=1 if end_of_day else 0)).timestamp() - (
                0.001 if end_of_day else 0
            )
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a date or time: {text!r} (YYYY-MM-DD[THH:MM[:SS]][+08:00])"
        ) from None
    return (when if when.tzinfo else when.replace(tzinfo=CST)).timestamp()


def parse_when(text: str) -> float:
    return _parse_time(text, end_of_day=False)


def parse_when_end(text: str) -> float:
    return _parse_time(text, end_of_day=True)


SETTING_FLAGS = (
    "listen", "metrics_listen", "redis_url", "state_dir", "namespace", "max_lines", "max_future_days",
    "emergency_med_types", "national_cancellation", "redis_timeout_seconds",
    "shutdown_grace_seconds", "log_level", "event_loop", "workers", "outage_policy",
    "degraded_max_age_seconds", "max_concurrent_rpcs", "tls_cert", "tls_key", "tls_client_ca",
    "tls_clients", "policy_profile",
)  # fmt: skip


def audit_main(args: argparse.Namespace) -> int:
    """``audit``: find, verify, explain or migrate (``gateway.audit.commands``)."""
    from gateway.audit import commands

    run = {
        "find": commands.find_main,
        "verify": commands.verify_main,
        "explain": commands.explain_main,
        "migrate": commands.migrate_main,
    }[args.action]
    return run(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "audit":
        return audit_main(args)
    if args.command == "profile":
        return profile_cli.main(args)
    if args.command == "audit-archive":
        from gateway.audit.commands import archive_main

        setup_logging("INFO")
        return archive_main(args)
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
