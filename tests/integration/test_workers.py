"""``serve --workers 2``: real processes on one port, both answering, one /metrics, clean drain.

Which worker answered is read from the kernel, not from the gateway: each established
connection to the gRPC port is owned by one worker process (``/proc/<pid>/fd`` and
``/proc/net/tcp*``), so the test sees the SO_REUSEPORT spread itself.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import orjson
import pytest

from benchmarks.processes import children
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from tests import exports
from tests.conftest import Loader, free_port
from tests.exports import line, request
from tests.scrape import scrape

BIN = Path(sys.executable).parent
SUSPENDED = "D330902000555"


class Supervisor:
    """A ``settlement-gateway serve --workers N`` process and its JSON log lines."""

    def __init__(
        self,
        redis_url: str,
        tmp_path: Path,
        workers: int = 2,
        port: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.port = port or free_port()
        self.metrics_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("SGW_", "PROMETHEUS_"))}
        env |= extra_env or {}
        self.proc = subprocess.Popen(
            [str(BIN / "settlement-gateway"), "serve", "--workers", str(workers),
             "--listen", f"127.0.0.1:{self.port}", "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
             "--redis-url", redis_url, "--state-dir", str(tmp_path / "state"), "--shutdown-grace", "5"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.logs: list[dict[str, object]] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for text in self.proc.stderr:
            try:
                self.logs.append(orjson.loads(text))
            except orjson.JSONDecodeError:
                self.logs.append({"msg": text.strip()})

    def wait_log(self, msg: str, count: int = 1, timeout: float = 30) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [doc for doc in self.logs if doc.get("msg") == msg]
            if len(found) >= count:
                return found[count - 1]
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.05)
        raise AssertionError(f"no {msg!r} log line (exit {self.proc.poll()}): {self.logs[-10:]}")

    def workers(self) -> list[int]:
        return children(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            workers = self.workers()
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            for pid in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def connections_by_process(pids: list[int], port: int) -> dict[int, int]:
    """Established TCP connections on local ``port``, counted per owning process."""
    inodes: dict[str, int] = {}
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = pid
    counts = dict.fromkeys(pids, 0)
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for row in Path(table).read_text().splitlines()[1:]:
            fields = row.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == "01" and fields[9] in inodes:
                counts[inodes[fields[9]]] += 1
    return counts


@pytest.fixture
def loaded(load: Loader) -> None:
    load("institution", [exports.institution_row()])
    load("staff", [exports.staff_row(), exports.staff_row(code=SUSPENDED, status="中止", start="2020-01-01")])


@pytest.fixture
def supervisor(redis_url: str, tmp_path: Path, loaded: None) -> Iterator[Supervisor]:
    sup = Supervisor(redis_url, tmp_path)
    yield sup
    sup.stop()


def bill(request_id: str) -> pb.ValidateRequest:
    now = dt.datetime.now(dt.UTC)
    return request(line("1", exports.DOCTOR, now), line("2", SUSPENDED, now), request_id=request_id)


def check_reply(reply: pb.ValidateResponse, request_id: str) -> None:
    assert reply.request_id == request_id
    assert [(v.verdict, v.reason) for v in reply.verdicts] == [
        (pb.ACCEPT, pb.OK),
        (pb.REJECT, pb.STAFF_SUSPENDED),
    ]


def test_two_workers_share_the_port_both_answer_and_metrics_sum(supervisor: Supervisor) -> None:
    ready = supervisor.wait_log("settlement gateway ready")
    workers = supervisor.workers()
    assert len(workers) == 2 and sorted(ready["workers"]) == workers  # type: ignore[arg-type]
    # A local subchannel pool: each channel its own TCP connection (gRPC shares them otherwise).
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [grpc.insecure_channel(f"127.0.0.1:{supervisor.port}", own_connection) for _ in range(24)]
    try:
        for index, channel in enumerate(channels):
            check_reply(
                pb_grpc.SettlementGatewayStub(channel).Validate(bill(f"r{index}"), timeout=5), f"r{index}"
            )
        # Each channel is its own connection; the kernel spread them over both workers.
        per_worker = connections_by_process(workers, supervisor.port)
        assert sum(per_worker.values()) == len(channels)
        assert all(count > 0 for count in per_worker.values()), per_worker
    finally:
        for channel in channels:
            channel.close()
    # One /metrics for the group, summing both workers' counters.
    metrics = scrape(supervisor.metrics_port)
    assert metrics.total("sgw_lines_total", verdict="ACCEPT", reason="OK") == len(channels)
    assert metrics.total("sgw_lines_total", verdict="REJECT", reason="STAFF_SUSPENDED") == len(channels)
    assert metrics.total("grpc_server_handled_total", grpc_method="Validate", grpc_code="OK") == len(channels)


def test_sigterm_drains_in_flight_calls_and_exits_zero(supervisor: Supervisor) -> None:
    supervisor.wait_log("settlement gateway ready")
    workers = supervisor.workers()
    sent: list[pb.ValidateRequest] = []
    more = threading.Event()

    def requests() -> Iterator[pb.ValidateRequest]:
        sent.append(bill("before"))
        yield sent[-1]
        more.wait(10)
        sent.append(bill("after-sigterm"))
        yield sent[-1]

    with grpc.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
        replies = pb_grpc.SettlementGatewayStub(channel).ValidateStream(requests(), timeout=20)
        check_reply(next(replies), "before")
        supervisor.proc.send_signal(signal.SIGTERM)
        supervisor.wait_log("shutting down: draining in-flight calls")
        # Both workers received SIGTERM and entered their drain: health says NOT_SERVING.
        supervisor.wait_log("shutting down: draining in-flight calls", count=3)
        more.set()
        check_reply(next(replies), "after-sigterm")  # the call in flight was finished, not cut
        assert list(replies) == []
    assert supervisor.proc.wait(20) == 0
    assert all(not Path(f"/proc/{pid}").exists() for pid in workers)


def test_a_dead_worker_is_replaced(supervisor: Supervisor) -> None:
    supervisor.wait_log("settlement gateway ready")
    victim, survivor = supervisor.workers()
    os.kill(victim, signal.SIGKILL)
    supervisor.wait_log("worker exited; restarting")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        workers = supervisor.workers()
        if len(workers) == 2 and victim not in workers:
            break
        time.sleep(0.1)
    assert survivor in workers and victim not in workers and len(workers) == 2
    supervisor.wait_log("worker ready", count=3)  # the replacement serves
    for index in range(6):
        with grpc.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
            check_reply(
                pb_grpc.SettlementGatewayStub(channel).Validate(bill(f"k{index}"), timeout=5), f"k{index}"
            )


def test_a_taken_port_still_fails_loudly(supervisor: Supervisor, redis_url: str, tmp_path: Path) -> None:
    supervisor.wait_log("settlement gateway ready")
    second = Supervisor(redis_url, tmp_path / "second", port=supervisor.port)
    single = subprocess.run(
        [str(BIN / "settlement-gateway"), "serve", "--listen", f"127.0.0.1:{supervisor.port}",
         "--metrics-listen", f"127.0.0.1:{free_port()}", "--redis-url", redis_url,
         "--state-dir", str(tmp_path / "single")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    try:
        assert second.proc.wait(30) == 1
        assert single.returncode == 1
        for stderr in (
            " ".join(str(d.get("msg")) + str(d.get("error", "")) for d in second.logs),
            single.stderr,
        ):
            assert f"cannot listen on 127.0.0.1:{supervisor.port}" in stderr
    finally:
        second.stop()
    # The group that held the port is untouched and still answers.
    with grpc.insecure_channel(f"127.0.0.1:{supervisor.port}") as channel:
        check_reply(pb_grpc.SettlementGatewayStub(channel).Validate(bill("still"), timeout=5), "still")


def test_workers_do_not_outlive_a_killed_supervisor(supervisor: Supervisor) -> None:
    supervisor.wait_log("settlement gateway ready")
    workers = supervisor.workers()
    supervisor.proc.kill()  # no chance to stop them itself
    supervisor.proc.wait(10)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(Path(f"/proc/{pid}").exists() for pid in workers):
        time.sleep(0.1)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
    assert not alive, f"workers {alive} outlived their supervisor"
