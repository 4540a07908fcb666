"""``serve --workers N``: N gateway processes answering on one gRPC port.

One Python process judges one bill at a time, so a second core needs a second process. As
grpc's ``examples/python/multiprocessing`` does, the supervisor forks the workers before any
gRPC server exists and every worker binds the same address with ``SO_REUSEPORT``; the
kernel spreads incoming connections over them.

``SO_REUSEPORT`` would also let an unrelated gateway silently share a taken port, so the
supervisor first binds the address *without* it (this fails loudly if anything holds the
port, as a single-process gateway does), then holds it with ``SO_REUSEPORT`` and without
listening for as long as it runs: another gateway's check fails against that socket, only
this supervisor's workers (same user, same option) can join, and ``:0`` resolves to one
port all workers share.

Metrics stay correct across workers through prometheus-client's multiprocess mode, wired
by ``gateway.metrics_exposition``: the directory is prepared before forking, each worker
writes to it, the supervisor serves the sum on ``SGW_METRICS_LISTEN`` and marks a worker
dead when it exits (its counters stay in the totals; its state gauges go).

SIGTERM or SIGINT: every worker drains as a single gateway does (health NOT_SERVING,
in-flight calls get the grace period), the supervisor waits for them and exits 0. Should the
supervisor itself be killed, the kernel tells every worker to drain and exit (no orphans
serving a port). A worker that dies while serving is restarted; one that cannot start (Redis unreachable, bad
address) stops the whole group with its message, so a bad configuration is not retried
forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import multiprocessing.connection
import os
import queue
import shutil
import signal
import socket
import time
from dataclasses import dataclass, field, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from gateway.config import Settings
from gateway.loops import install_event_loop
from gateway.metrics_exposition import (
    MULTIPROC_ENV,
    MetricsTLS,
    mark_worker_dead,
    multiprocess_registry,
    prepare_multiprocess_dir,
    serve_metrics,
)
from gateway.server import GatewayApp, StartupError, serve, split_host_port

log = logging.getLogger(__name__)

READY_TIMEOUT_SECONDS = 60.0
# Extra time past the workers' own grace period before the supervisor kills a worker.
STOP_MARGIN_SECONDS = 5.0
# More restarts than this within the window means the fault is not transient: give up.
MAX_RESTARTS = 5
RESTART_WINDOW_SECONDS = 60.0
RESTART_DELAY_SECONDS = 0.5


def _socket_for(listen: str) -> tuple[socket.socket, Any]:
    host, port = split_host_port(listen)
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise StartupError(f"cannot listen on {listen}: {exc}") from exc
    sock = socket.socket(family, kind, proto)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # [::] also takes IPv4, as gRPC does
    return sock, address


def reserve_port(listen: str) -> tuple[socket.socket, str]:
    """Check nothing holds the gRPC address, then hold it for this supervisor's workers.

    Returns the holding socket (keep it open while the workers run) and the address with
    the actual port (``:0`` becomes the port the kernel chose)."""
    probe, address = _socket_for(listen)
    with probe:
        try:
            probe.bind(address)
        except OSError as exc:
            raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
        port = probe.getsockname()[1]
    holder, address = _socket_for(listen)
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        holder.bind((address[0], port, *address[2:]))
    except OSError as exc:
        holder.close()
        raise StartupError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
    return holder, f"{listen.rpartition(':')[0]}:{port}"


PR_SET_PDEATHSIG = 1  # prctl(2)


def _stop_with_supervisor(supervisor: int) -> None:
    """Have the kernel send SIGTERM (a drain) to this worker when the supervisor dies, even by
    SIGKILL: a worker never outlives its group, serving on a port nobody watches."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot tie the worker's life to the supervisor's", extra={"errno": ctypes.get_errno()})
    if os.getppid() != supervisor:  # it died before the request took effect
        raise SystemExit(0)


def _worker_main(settings: Settings, redis_url: str, metrics_dir: Path, events: Any, supervisor: int) -> None:
    """A worker: one ordinary gateway, sharing the port and the metrics directory."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # the supervisor's handlers are not ours
    _stop_with_supervisor(supervisor)
    install_event_loop(settings.event_loop)

    def ready(app: GatewayApp) -> None:
        events.put(("ready", os.getpid(), ""))

    try:
        asyncio.run(serve(settings, redis_url, metrics_dir=metrics_dir, reuseport=True, on_ready=ready))
    except StartupError as exc:
        events.put(("failed", os.getpid(), str(exc)))
        raise SystemExit(1) from exc


@dataclass
class Supervisor:
    """Starts, watches, restarts and stops the workers; serves their summed /metrics."""

    settings: Settings
    redis_url: str
    workers: int
    listen: str = ""
    metrics_dir: Path | None = None
    metrics_port: int = 0
    processes: dict[int, BaseProcess] = field(default_factory=dict)  # slot -> process
    _context: Any = field(default_factory=lambda: multiprocessing.get_context("fork"))
    _events: Any = None
    _stopping: bool = False
    _restarts: list[float] = field(default_factory=list)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _spawn(self, slot: int, settings: Settings) -> None:
        assert self.metrics_dir is not None
        process = self._context.Process(
            target=_worker_main,
            args=(settings, self.redis_url, self.metrics_dir, self._events, os.getpid()),
            name=f"sgw-worker-{slot}",
        )
        process.start()
        self.processes[slot] = process

    def _wait_ready(self) -> None:
        """Until every worker said it serves; a worker that failed stops the group."""
        waiting = {p.pid for p in self.processes.values()}
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while waiting:
            if self._stopping:
                raise StartupError("stopped before the workers were ready")
            try:
                kind, pid, message = self._events.get(timeout=0.2)
            except queue.Empty:
                dead = [p for p in self.processes.values() if p.pid in waiting and p.exitcode is not None]
                if dead:
                    raise StartupError(
                        f"worker {dead[0].pid} exited with {dead[0].exitcode} while starting"
                    ) from None
                if time.monotonic() > deadline:
                    raise StartupError(f"workers not ready after {READY_TIMEOUT_SECONDS:.0f}s") from None
                continue
            if kind == "failed":
                raise StartupError(message)
            waiting.discard(pid)

    def _reap_and_restart(self, worker_settings: Settings) -> bool:
        """Restart workers that died; False when they die too often to keep trying."""
        assert self.metrics_dir is not None
        for slot, process in list(self.processes.items()):
            if process.exitcode is None:
                continue
            pid = process.pid
            assert pid is not None
            mark_worker_dead(pid, self.metrics_dir)
            if self._stopping:
                continue
            now = time.monotonic()
            self._restarts = [t for t in self._restarts if now - t < RESTART_WINDOW_SECONDS]
            if len(self._restarts) >= MAX_RESTARTS:
                log.error("workers keep dying; giving up", extra={"restarts": len(self._restarts)})
                return False
            self._restarts.append(now)
            log.warning("worker exited; restarting", extra={"pid": pid, "exitcode": process.exitcode})
            time.sleep(RESTART_DELAY_SECONDS)
            self._spawn(slot, worker_settings)
        with contextlib.suppress(queue.Empty):
            while True:  # ready/failed notes of restarted workers: their exit code tells
                self._events.get_nowait()
        return True

    def _stop_workers(self) -> None:
        live = [p for p in self.processes.values() if p.exitcode is None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid or 0, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace_seconds + STOP_MARGIN_SECONDS
        for process in live:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.exitcode is None:
                log.error("worker did not stop in time; killing it", extra={"pid": process.pid})
                process.kill()
                process.join()
        if self.metrics_dir is not None:
            for process in self.processes.values():
                if process.pid is not None:
                    mark_worker_dead(process.pid, self.metrics_dir)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 after a clean drain, 1 when workers keep dying."""
        holder, self.listen = reserve_port(self.settings.listen)
        own_metrics_dir = MULTIPROC_ENV not in os.environ
        self.metrics_dir = prepare_multiprocess_dir()
        self._events = self._context.Queue()
        http = None
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            host, port = split_host_port(self.settings.metrics_listen)
            registry = multiprocess_registry(self.metrics_dir, self.settings.metrics_top_codes)
            try:
                http, _ = serve_metrics(host, port, registry, MetricsTLS.of(self.settings))
            except OSError as exc:
                raise StartupError(f"cannot serve /metrics on {self.settings.metrics_listen}: {exc}") from exc
            self.metrics_port = http.server_port
            worker_settings = replace(self.settings, listen=self.listen)
            for slot in range(self.workers):
                self._spawn(slot, worker_settings)
            self._wait_ready()
            log.info(
                "settlement gateway ready",
                extra={
                    "listen": self.listen,
                    "port": int(self.listen.rpartition(":")[2]),
                    "metrics_port": self.metrics_port,
                    "workers": [p.pid for p in self.processes.values()],
                },
            )
            healthy = True
            while not self._stopping and healthy:
                sentinels = [p.sentinel for p in self.processes.values()]
                multiprocessing.connection.wait(sentinels, timeout=0.5)
                healthy = self._reap_and_restart(worker_settings)
            log.info(
                "shutting down: draining in-flight calls",
                extra={"grace_seconds": self.settings.shutdown_grace_seconds, "workers": self.workers},
            )
            return 0 if healthy else 1
        finally:
            self._stop_workers()
            if http is not None:
                http.shutdown()
                http.server_close()
            holder.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if own_metrics_dir:
                os.environ.pop(MULTIPROC_ENV, None)
                shutil.rmtree(self.metrics_dir, ignore_errors=True)
            log.info("stopped")


def run_workers(settings: Settings, redis_url: str) -> int:
    return Supervisor(settings, redis_url, settings.workers).run()
