"""The processes a benchmark run starts (redis-server, the gateway, the no-op server), each on
the cores it is given, and the CPU time they used.

On a 2-core machine the server under test gets one core to itself and the load generator and
Redis share the other, so the server's throughput is not eaten by its own client; CPU time
read from ``/proc`` says how much each side really used.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import redis

from gateway.embedded import find_redis_server
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def all_cores() -> frozenset[int]:
    return frozenset(os.sched_getaffinity(0))


def core_split() -> tuple[frozenset[int], frozenset[int]]:
    """(load cores, server cores): the last core for the server, the rest for the load side.

    On a one-core machine both sides share it (the report says so)."""
    cores = sorted(all_cores())
    if len(cores) < 2:
        return frozenset(cores), frozenset(cores)
    return frozenset(cores[:-1]), frozenset(cores[-1:])


def pinned(cores: frozenset[int] | None) -> Callable[[], None] | None:
    if not cores:
        return None
    chosen = set(cores)
    return lambda: os.sched_setaffinity(0, chosen)


def children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (read from /proc), in pid order."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a supervisor's workers)."""
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children(current))
    return tree


def cpu_seconds(pids: Sequence[int]) -> float:
    """User + system CPU time of these processes (and of their reaped children)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            # utime, stime are fields 14 and 15 of stat(5): index 11 and 12 after the name.
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


@dataclass
class Service:
    """A started process with a name for the report."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int = 0
    metrics_port: int = 0
    log: Path | None = None

    def tree(self) -> list[int]:
        return process_tree(self.proc.pid)

    def cpu(self) -> float:
        return cpu_seconds(self.tree())

    def stop(self, timeout: float = 15) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This environment without settings that would change what is measured (``SGW_*``, a
    prometheus multiprocess directory left by whoever started the harness)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SGW_", "PROMETHEUS_MULTIPROC"))}
    return {**env, **(extra or {})}


def start_redis(workdir: Path, cores: frozenset[int] | None) -> Service:
    port = free_port()
    args = [
        find_redis_server(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no", "--dir", str(workdir), "--logfile", str(workdir / "redis.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, preexec_fn=pinned(cores))
    service = Service("redis", proc, port)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
    try:
        wait_until(lambda: bool(client.ping()), f"redis-server on {port}", service)
    finally:
        client.close()
    return service


def wait_until(ready: Callable[[], bool], what: str, service: Service, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            log = service.log.read_text()[-2000:] if service.log and service.log.exists() else ""
            raise RuntimeError(f"{what} exited with {service.proc.returncode}\n{log}")
        with contextlib.suppress(Exception):
            if ready():
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not become ready in {timeout}s")


def answers(port: int, request: pb.ValidateRequest) -> Callable[[], bool]:
    """A readiness probe: one real Validate call succeeds."""

    def probe() -> bool:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = pb_grpc.SettlementGatewayStub(channel).Validate(request, timeout=2)
            return len(reply.verdicts) == len(request.lines)

    return probe


@dataclass
class ServerCommand:
    """How to start one server under test."""

    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)
    with_metrics: bool = False


def gateway_command(
    redis_url: str, port: int, metrics_port: int, state_dir: Path, *, workers: int = 1, event_loop: str = ""
) -> ServerCommand:
    argv = [
        sys.executable, "-m", "gateway.cli", "serve", "--listen", f"127.0.0.1:{port}",
        "--metrics-listen", f"127.0.0.1:{metrics_port}", "--redis-url", redis_url,
        "--state-dir", str(state_dir), "--log-level", "WARNING",
    ]  # fmt: skip
    if workers != 1:
        argv += ["--workers", str(workers)]
    if event_loop:
        argv += ["--event-loop", event_loop]
    return ServerCommand("gateway" if workers == 1 else f"gateway x{workers}", argv, with_metrics=True)


def noop_command(port: int, event_loop: str = "") -> ServerCommand:
    argv = [sys.executable, "-m", "benchmarks.noop_server", "--listen", f"127.0.0.1:{port}"]
    if event_loop:
        argv += ["--event-loop", event_loop]
    return ServerCommand("noop", argv)


def start_server(
    command: ServerCommand,
    port: int,
    metrics_port: int,
    probe: pb.ValidateRequest,
    cores: frozenset[int] | None,
    logdir: Path,
) -> Service:
    log = logdir / f"{command.name.replace(' ', '-')}-{port}.log"
    env = clean_env(command.env)
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command.argv, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=pinned(cores)
        )
    service = Service(command.name, proc, port, metrics_port if command.with_metrics else 0, log)
    wait_until(answers(port, probe), f"{command.name} on {port}", service)
    return service


@contextlib.contextmanager
def running(services: list[Service]) -> Iterator[list[Service]]:
    try:
        yield services
    finally:
        for service in reversed(services):
            service.stop()
