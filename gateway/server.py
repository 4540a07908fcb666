"""The gateway's lifespan: connect the store, start gRPC, health, reflection and /metrics,
serve, and on SIGTERM drain in-flight calls before closing.

``GatewayApp`` is the whole product in one object so tests run it in-process on port 0;
``serve`` adds signal handling and the one "ready" log line operators wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import grpc
import redis.exceptions
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio  # type: ignore[attr-defined]
from grpc_reflection.v1alpha import reflection  # type: ignore[attr-defined]
from prometheus_client import CollectorRegistry

from gateway.admission import Admission
from gateway.audit import AuditLog
from gateway.audit.spool import spool_dir
from gateway.auth import AccessMap, AccessMapError, Authorizer, server_credentials
from gateway.breaker import CircuitBreaker
from gateway.cache import RecordCache
from gateway.config import Settings
from gateway.grpc_metrics import MetricsInterceptor
from gateway.keys import VERSION_LEASE_RENEW_SECONDS, Keys
from gateway.loops import every
from gateway.metrics import GatewayMetrics
from gateway.metrics_exposition import MetricsTLS, serve_metrics
from gateway.metrics_state import ProcessState, StateCollector, state_file, write_state_file
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.redis_client import DEFAULT_MAX_CONNECTIONS, AsyncRedis, async_client
from gateway.redis_permissions import (
    PermissionWatch,
    SelfCheckFailed,
    fix_for,
    is_permission_error,
    self_check,
)
from gateway.servicer import SettlementGateway, add_to_server
from gateway.store import READ_SCRIPT, STORE_ERRORS, NoDataError, Store

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["SettlementGateway"].full_name
HEALTH_SERVICES = ("", SERVICE_NAME)
REFRESH_INTERVAL_SECONDS = 0.5
# How long stop() waits for the Redis client to close its connections.
CLOSE_TIMEOUT_SECONDS = 2.0
CONNECT_ATTEMPTS = 5
# After SIGTERM: health turns NOT_SERVING and calls are still served this long (calls sent
# just before the signal arrive and complete), then new calls are refused with UNAVAILABLE.
LAME_DUCK_SECONDS = 0.5
# After the last running call ends, new calls are still refused this long before the gRPC
# server stops (a call arriving after that is CANCELLED by gRPC's core).
DRAIN_SETTLE_SECONDS = 0.2


class StartupError(RuntimeError):
    """The gateway cannot start; the message says what to fix."""


def split_host_port(address: str) -> tuple[str, int]:
    """``[::]:9464`` / ``0.0.0.0:9464`` / ``:9464`` -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise StartupError(f"invalid listen address {address!r}: expected HOST:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


def reachable_from_other_hosts(address: str) -> bool:
    """Whether a listen address takes connections from other hosts: every interface
    (``[::]``, ``0.0.0.0``, an empty host) or any address but loopback; a unix socket does
    not, nor does ``localhost``. A host name other than ``localhost`` counts as reachable."""
    if address.startswith("unix:"):
        return False
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def server_options(settings: Settings, reuseport: bool = False) -> list[tuple[str, int]]:
    """gRPC server options; the benchmarks' no-op server uses the very same ones."""
    size = settings.max_message_bytes
    return [
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
        # A second gateway on a taken port must fail, not silently share it; only the
        # workers of one ``serve --workers N`` share a port (the supervisor checked it first).
        ("grpc.so_reuseport", int(reuseport)),
        # One connection cannot hold more than this many calls open at once.
        ("grpc.max_concurrent_streams", settings.max_concurrent_streams),
    ]


async def connect(url: str, timeout: float, max_connections: int = DEFAULT_MAX_CONNECTIONS) -> AsyncRedis:
    """A client that answered PING, after a few retries; else a StartupError."""
    client = async_client(url, timeout, max_connections)
    delay = 0.2
    for attempt in range(1, CONNECT_ATTEMPTS + 1):
        try:
            await client.ping()
            return client
        except STORE_ERRORS as exc:
            if is_permission_error(exc):  # a wrong password stays wrong: no retry
                await client.aclose()
                raise StartupError(
                    f"Redis refused the gateway's login: {exc}; {fix_for('auth', exc)}"
                ) from exc
            remaining = CONNECT_ATTEMPTS - attempt
            log.warning("redis not reachable", extra={"error": str(exc), "retries_left": remaining})
            if not remaining:
                await client.aclose()
                raise StartupError(f"cannot reach Redis: {exc}") from exc
            await asyncio.sleep(delay)
            delay *= 2
    raise AssertionError("unreachable")


class GatewayApp:
    """gRPC server + store + metrics endpoint, started and stopped together.

    With ``metrics_dir`` the app is one of several workers (see
    ``gateway.metrics_exposition``): its metrics go to that shared directory and the
    supervisor serves /metrics, so the app starts no HTTP server of its own.
    """

    def __init__(
        self, settings: Settings, redis_url: str, metrics_dir: Path | None = None, reuseport: bool = False
    ) -> None:
        self.settings = settings
        # True only in a worker of ``serve --workers N``: the supervisor holds the port.
        self.reuseport = reuseport
        self.redis_url = redis_url
        self.metrics_dir = metrics_dir
        self.registry = CollectorRegistry()
        self.metrics = GatewayMetrics(self.registry, settings.metrics)
        self.state = ProcessState()
        if metrics_dir is None:
            self.registry.register(StateCollector(lambda: [self.state], settings.metrics_top_codes))
        self.health = health_aio.HealthServicer()
        self.port = 0
        self.metrics_port = 0
        self.store: Store | None = None
        self.audit: AuditLog | None = None
        self.servicer: SettlementGateway | None = None
        self._server: grpc.aio.Server | None = None
        self._metrics_http: WSGIServer | None = None
        self._metrics_thread: threading.Thread | None = None
        self._background: list[asyncio.Task[None]] = []

    def grpc_options(self) -> list[tuple[str, int]]:
        return server_options(self.settings, self.reuseport)

    def _authorizer(self) -> Authorizer | None:
        if not self.settings.tls_enabled:
            return None
        assert self.settings.tls_clients is not None
        try:
            return Authorizer(AccessMap.load(self.settings.tls_clients))
        except AccessMapError as exc:
            raise StartupError(f"cannot read the mTLS client mapping: {exc}") from exc

    def _add_port(self, server: grpc.aio.Server) -> int:
        s = self.settings
        try:
            if s.tls_cert is None:
                return server.add_insecure_port(s.listen)
            assert s.tls_key is not None and s.tls_client_ca is not None
            try:
                credentials = server_credentials(s.tls_cert, s.tls_key, s.tls_client_ca)
            except OSError as exc:
                raise StartupError(f"cannot read the TLS files: {exc}") from exc
            return server.add_secure_port(s.listen, credentials)
        except RuntimeError as exc:
            raise StartupError(f"cannot listen on {s.listen}: {exc}") from exc

    async def start(self) -> None:
        s = self.settings
        authorizer = self._authorizer()
        client = await connect(self.redis_url, s.redis_timeout_seconds, s.redis_max_connections)
        try:
            await self_check(client, Keys(s.namespace), READ_SCRIPT, s.audit)
        except (SelfCheckFailed, *STORE_ERRORS) as exc:
            await client.aclose()
            raise StartupError(str(exc)) from exc
        self.store = Store(
            client,
            Keys(s.namespace),
            self.metrics.redis_call,
            cache=RecordCache(s.cache_entries),
            breaker=CircuitBreaker(s.breaker_failures, s.breaker_reset_seconds),
            outage_policy=s.outage_policy,
            degraded_max_age_seconds=s.degraded_max_age_seconds,
            on_incomplete=self.metrics.incomplete_versions.inc,
        )
        self.store.permissions = PermissionWatch(self.metrics.redis_permission_errors)
        with contextlib.suppress(NoDataError):
            await self.store.refresh()
        if s.audit:
            self.audit = AuditLog(
                client, Keys(s.namespace), self.metrics, s.audit_max_entries, s.audit_queue_lines,
                rules=s.rules, spool_dir=spool_dir(s.state_dir), archived=bool(s.audit_dsn),
                outage_policy=s.outage_policy.value,
            )  # fmt: skip
            if not s.audit_dsn:
                log.warning(
                    "audit trail not archived: the stream is capped and its oldest records are evicted;"
                    " set SGW_AUDIT_DSN and run settlement-gateway audit-archive to keep them",
                    extra={"audit_max_entries": s.audit_max_entries},
                )
            self.audit.permissions = self.store.permissions
            self.audit.start()

        admission = Admission(
            s.max_concurrent_rpcs,
            s.caller_budgets,
            mtls=s.tls_enabled,
            on_refusal=self.metrics.caller_refused,
            on_idle_close=self.metrics.idle_streams_closed.inc,
            max_lines=s.max_lines,
        )
        interceptor = MetricsInterceptor(self.metrics, admission=admission)
        interceptor.initialize(pb.DESCRIPTOR.services_by_name["SettlementGateway"])
        # The interceptor refuses calls beyond max_concurrent_rpcs or their caller's budget
        # (RESOURCE_EXHAUSTED at once rather than queued behind a flood) and counts them;
        # gRPC's own limit would not.
        server = grpc.aio.server(
            interceptors=[interceptor],
            options=self.grpc_options(),
        )
        self.servicer = SettlementGateway(self.store, s, self.metrics, authorizer, self.audit)
        add_to_server(self.servicer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            (
                SERVICE_NAME,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ),
            server,
        )
        self.port = self._add_port(server)
        if self.port == 0:
            raise StartupError(f"cannot listen on {self.settings.listen}: address in use?")
        if self.metrics_dir is None:
            self._start_metrics_http()
        self._report_plaintext()
        await server.start()
        self._server = server
        await self._update_health()
        self._start_background()

    def _report_plaintext(self) -> None:
        """Warn (and set ``sgw_plaintext_listeners``, which an alert watches) for each listener
        that serves without TLS where other hosts can reach it: the gRPC port then answers
        any institution, and /metrics shows every hospital's volumes and staff codes."""
        s = self.settings
        for listener, address, tls in (
            ("grpc", s.listen, s.tls_enabled),
            ("metrics", s.metrics_listen, s.metrics_tls_enabled),
        ):
            exposed = not tls and reachable_from_other_hosts(address)
            self.metrics.plaintext_listeners.labels(listener).set(1 if exposed else 0)
            if exposed:
                log.warning(
                    "serving without TLS on an address other hosts can reach",
                    extra={"listener": listener, "listen": address, "see": "docs/security.md"},
                )

    def _start_metrics_http(self) -> None:
        host, port = split_host_port(self.settings.metrics_listen)
        try:
            self._metrics_http, self._metrics_thread = serve_metrics(
                host, port, self.registry, MetricsTLS.of(self.settings)
            )
        except OSError as exc:
            raise StartupError(f"cannot serve /metrics on {self.settings.metrics_listen}: {exc}") from exc
        self.metrics_port = self._metrics_http.server_port

    async def _update_health(self) -> None:
        assert self.store is not None
        try:
            meta = await self.store.refresh()
        except (NoDataError, *STORE_ERRORS):
            meta = None
        # Usable data: live, or a fresh enough cache to answer degraded from; and Redis not
        # refusing the gateway's commands (a misconfigured ACL is no outage to ride out).
        serving = (
            meta is not None or self.store.fallback_ready()
        ) and self.store.permissions.failing() is None
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in HEALTH_SERVICES:
            await self.health.set(name, status)
        self._publish_state()

    def _publish_state(self) -> None:
        """Refresh what the state gauges report (``gateway.metrics_state``)."""
        assert self.store is not None
        self.state = ProcessState.of(self.store.meta, self.metrics.code_shares.summaries())
        if self.metrics_dir is not None:
            write_state_file(self.metrics_dir, os.getpid(), self.state)

    def _start_background(self) -> None:
        """Health and state every ``REFRESH_INTERVAL_SECONDS``; the version lease, which lets
        cached records answer without a round trip, every ``VERSION_LEASE_RENEW_SECONDS``."""
        assert self.store is not None

        def refresh_failed(exc: Exception) -> None:
            log.error("status refresh failed", exc_info=exc)

        def lease_failed(exc: Exception) -> None:
            # A store that cannot be reached only means reads take the round trip (or the
            # outage path) meanwhile; the health refresh reports the outage.
            if not isinstance(exc, (NoDataError, *STORE_ERRORS)):
                log.error("version lease renewal failed", exc_info=exc)

        self._background = [
            asyncio.create_task(every(REFRESH_INTERVAL_SECONDS, self._update_health, refresh_failed)),
            asyncio.create_task(every(VERSION_LEASE_RENEW_SECONDS, self.store.renew_lease, lease_failed)),
        ]

    async def stop(self, grace: float | None = None, lame_duck: float = 0.0) -> None:
        """Stop taking calls, let in-flight ones finish within ``grace``, release everything.

        ``lame_duck``: seconds to keep serving while health already says NOT_SERVING, so
        calls sent just before the signal (still on the wire) are served, not refused."""
        for task in self._background:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.health.enter_graceful_shutdown()
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        deadline = time.monotonic() + grace
        if lame_duck > 0:
            await asyncio.sleep(min(lame_duck, grace / 2))
        if self.servicer is not None:
            # Drain first, with the connections still open: new calls are refused with
            # UNAVAILABLE by the servicer, calls already running finish. Stopping the gRPC
            # server right away would cancel calls that had arrived but not yet started.
            await self.servicer.drain(
                max(0.0, deadline - time.monotonic()), settle=DRAIN_SETTLE_SECONDS if lame_duck > 0 else 0.0
            )
        if self._server is not None:
            await self._server.stop(max(0.0, deadline - time.monotonic()))
            log.info("gRPC server stopped")
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        if self.metrics_dir is not None:
            state_file(self.metrics_dir, os.getpid()).unlink(missing_ok=True)
        if self.audit is not None:
            await self.audit.stop()
        if self.store is not None:
            # Bounded like every Redis call: a client stuck on a half-dead socket must not keep
            # the process from exiting.
            with contextlib.suppress(redis.exceptions.RedisError, OSError, TimeoutError):
                await asyncio.wait_for(self.store.client.aclose(), CLOSE_TIMEOUT_SECONDS)


def freeze_startup_heap() -> None:
    """Take what startup allocated (modules, protobuf descriptors, the gRPC server: ~47,000
    objects, all living as long as the process) out of the garbage collector's scans.

    A 3,000-line bill's objects live through several young collections and get promoted, so
    full collections come often under discharge traffic; each one scanned the startup heap
    again (7 ms here). Frozen, a full collection scans only what requests left behind."""
    gc.collect()
    gc.freeze()


async def serve(
    settings: Settings,
    redis_url: str,
    *,
    metrics_dir: Path | None = None,
    reuseport: bool = False,
    on_ready: Callable[[GatewayApp], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT, then drain and stop.

    A worker of ``serve --workers N`` passes the shared ``metrics_dir``, ``reuseport`` and
    an ``on_ready`` callback that tells its supervisor it serves."""
    app = GatewayApp(settings, redis_url, metrics_dir=metrics_dir, reuseport=reuseport)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    started = time.monotonic()
    try:
        await app.start()
    except BaseException:
        await app.stop(0)
        raise
    freeze_startup_heap()
    meta = app.store.meta if app.store else None
    log.info(
        # Under a supervisor, the group's ready line is the supervisor's, once all serve.
        "settlement gateway ready" if on_ready is None else "worker ready",
        extra={
            "listen": settings.listen,
            "port": app.port,
            "metrics_port": app.metrics_port,
            "data_version": meta.version if meta else None,
            "startup_seconds": round(time.monotonic() - started, 3),
        },
    )
    if on_ready is not None:
        on_ready(app)
    await stop.wait()
    log.info(
        "shutting down: draining in-flight calls", extra={"grace_seconds": settings.shutdown_grace_seconds}
    )
    await app.stop(lame_duck=LAME_DUCK_SECONDS)
    log.info("stopped")
