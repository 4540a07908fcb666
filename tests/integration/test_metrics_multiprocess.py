"""Metrics of ``serve --workers 2`` in prometheus-client's multiprocess mode, with real
worker processes: a previous run's files are removed at start (an operator's stay), the
workers' counters and states add up, and a worker that dies keeps its counts but loses its
state gauges."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from prometheus_client.mmap_dict import MmapedDict, mmap_key

from gateway.metrics_state import ProcessState, state_file
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import Loader
from tests.exports import HOSPITAL, institution_row, staff_row
from tests.integration.test_workers import SUSPENDED, Supervisor, bill, check_reply, connections_by_process
from tests.scrape import Scrape, scrape

STALE_PID = 4242
OPERATORS_FILE = "README.operator"


def leave_a_previous_run(directory: Path) -> None:
    """What a crashed earlier supervisor leaves behind: counts and a state of its own."""
    stale = MmapedDict(str(directory / f"counter_{STALE_PID}.db"))
    key = mmap_key(
        "sgw_lines_total", "sgw_lines_total", ["verdict", "reason"], ["ACCEPT", "OK"],
        "Settlement lines judged, by verdict and reason.",
    )  # fmt: skip
    stale.write_value(key, 1000.0, 0.0)
    stale.close()
    (directory / f"sgw_state_{STALE_PID}.json").write_bytes(
        ProcessState("20200101T000000Z-stale0", 1.0).to_json()
    )
    # And what is not the gateway's: it must survive the clean-up.
    (directory / OPERATORS_FILE).write_text("written by the operator")


def scrape_until(port: int, ready: Callable[[Scrape], bool], what: str) -> Scrape:
    deadline = time.monotonic() + 30
    while True:
        found = scrape(port)
        if ready(found):
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {found.samples}"
        time.sleep(0.1)


def versions(found: Scrape) -> list[str]:
    return [labels["version"] for labels in found.series("sgw_data_version_info")]


def test_worker_metrics_start_clean_add_up_and_outlive_a_worker(
    redis_url: str, tmp_path: Path, load: Loader
) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row(), staff_row(code=SUSPENDED, status="中止", start="2020-01-01")])
    directory = tmp_path / "multiproc"
    directory.mkdir()
    leave_a_previous_run(directory)
    supervisor = Supervisor(redis_url, tmp_path, extra_env={"PROMETHEUS_MULTIPROC_DIR": str(directory)})
    try:
        supervisor.wait_log("settlement gateway ready")
        workers = supervisor.workers()
        assert len(workers) == 2

        # Wiped at start: nothing of the previous run is counted or reported.
        first = scrape_until(supervisor.metrics_port, lambda s: len(versions(s)) == 1, "both workers' state")
        assert first.total("sgw_lines_total") == 0
        assert "20200101T000000Z-stale0" not in versions(first)
        assert first.value("sgw_data_loaded") == 1
        assert sorted(p.name for p in directory.glob("sgw_state_*.json")) == sorted(
            state_file(directory, pid).name for pid in workers
        )
        assert not (directory / f"counter_{STALE_PID}.db").exists()
        assert (directory / OPERATORS_FILE).read_text() == "written by the operator"

        own_connection = [("grpc.use_local_subchannel_pool", 1)]
        channels = [grpc.insecure_channel(f"127.0.0.1:{supervisor.port}", own_connection) for _ in range(16)]
        try:
            for index, channel in enumerate(channels):
                reply = pb_grpc.SettlementGatewayStub(channel).Validate(bill(f"r{index}"), timeout=5)
                check_reply(reply, f"r{index}")
            per_worker = connections_by_process(workers, supervisor.port)
        finally:
            for channel in channels:
                channel.close()
        assert all(per_worker.values()), per_worker  # both workers served

        # Counters and the staff-code windows add up over both workers.
        lines = 2 * len(channels)
        both = scrape_until(
            supervisor.metrics_port,
            lambda s: s.value("sgw_staff_code_window_lines", institution=HOSPITAL) == lines,
            "both workers' windows",
        )
        assert both.total("sgw_lines_total", verdict="ACCEPT", reason="OK") == len(channels)
        assert both.total("grpc_server_handled_total", grpc_method="Validate", grpc_code="OK") == len(
            channels
        )
        assert both.value("grpc_server_handling_seconds_count", grpc_type="unary",
                          grpc_service="settlement.v1.SettlementGateway", grpc_method="Validate") == len(channels)  # fmt: skip

        # One worker dies: the supervisor marks it dead and starts another.
        victim, survivor = workers
        os.kill(victim, signal.SIGKILL)
        supervisor.wait_log("worker exited; restarting")
        after = scrape_until(
            supervisor.metrics_port,
            lambda s: (
                s.value("sgw_staff_code_window_lines", institution=HOSPITAL) == 2 * per_worker[survivor]
            ),
            "the dead worker's state to go",
        )
        # What the dead worker counted did happen: it stays in the totals.
        assert after.total("sgw_lines_total", verdict="ACCEPT", reason="OK") == len(channels)
        assert after.total("grpc_server_handled_total", grpc_method="Validate", grpc_code="OK") == len(
            channels
        )
        assert not state_file(directory, victim).exists()
        assert len(versions(after)) == 1
        supervisor.proc.send_signal(signal.SIGTERM)
        assert supervisor.proc.wait(timeout=30) == 0
    finally:
        supervisor.stop()
