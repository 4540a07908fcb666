"""Locust load test: cashiers settling a hospital's everyday mix of bills through the gateway.

Locust speaks HTTP only; for other protocols its documentation has the user wrap the client
and fire a ``request`` event per call, with gRPC patched onto gevent
(``grpc.experimental.gevent.init_gevent``). That is what ``SettlementCashier`` does.

The mix, per bill: outpatient 5-30 lines (most), pharmacy 1-8 lines, a few inpatient
discharges of 500-3,000 lines over up to 30 days, about 1 % emergencies; in every bill about
3 % of lines name staff who are suspended, terminated, cancelled or unknown
(``benchmarks.workload``). Staff codes come from an export the gateway has loaded: the demo
set ``make run`` writes (``$SGW_STATE_DIR/demo/staff.csv``) unless ``--staff-csv`` says.

Pass/fail: at the end the run fails (exit code 1) when more than ``--max-fail-ratio`` of the
calls failed, or the p99 of everyday bills (outpatient, pharmacy, emergency) exceeds
``--max-p99-ms``, or the p99 of discharges exceeds ``--max-discharge-p99-ms``.

    locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 60s --host 127.0.0.1:50051 \\
        --csv locust-report --html locust-report.html          # or: make locust
"""

from __future__ import annotations

import os
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

# The ``locust`` command puts this file's folder on sys.path, not the project's.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import grpc.experimental.gevent as grpc_gevent
from locust import User, between, events, task
from locust.env import Environment
from locust.exception import StopUser

from benchmarks.workload import EMERGENCY, INPATIENT, OUTPATIENT, PHARMACY, BillMaker, BillShape, StaffPool
from gateway.config import default_state_dir
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc

# gRPC's own I/O must yield to gevent, or one cashier would block all the others.
grpc_gevent.init_gevent()

EVERYDAY = ("outpatient", "pharmacy", "emergency")
DISCHARGE = "inpatient discharge"


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    parser.add_argument("--staff-csv", default="", help="staff export the gateway has loaded")
    parser.add_argument(
        "--institution", default="", help="institution code (default: the one with most staff)"
    )
    parser.add_argument("--max-p99-ms", type=float, default=200.0, help="p99 bound for everyday bills")
    parser.add_argument("--max-discharge-p99-ms", type=float, default=2000.0, help="p99 bound for discharges")
    parser.add_argument("--max-fail-ratio", type=float, default=0.01, help="share of failed calls allowed")


def staff_csv(options: Any) -> Path:
    if options.staff_csv:
        return Path(options.staff_csv)
    state = Path(os.environ["SGW_STATE_DIR"]) if os.environ.get("SGW_STATE_DIR") else default_state_dir()
    return state / "demo" / "staff.csv"


@cache
def staff_pool(path: Path, institution: str) -> StaffPool:
    return StaffPool.from_staff_csv(path, institution or None)


class SettlementCashier(User):
    """One cashier: settles a bill, waits for the next patient, settles again."""

    host = "127.0.0.1:50051"
    wait_time = between(0.1, 0.5)

    def __init__(self, environment: Environment) -> None:
        super().__init__(environment)
        options = environment.parsed_options
        path = staff_csv(options)
        if not path.exists():
            raise StopUser(f"no staff export at {path}: pass --staff-csv (the file the gateway loaded)")
        self.bills = BillMaker(staff_pool(path, options.institution), seed=id(self))
        self.channel = grpc.insecure_channel(self.host)
        self.stub = pb_grpc.SettlementGatewayStub(self.channel)

    def on_stop(self) -> None:
        self.channel.close()

    def settle(self, name: str, shape: BillShape) -> None:
        request = self.bills.bill_of_shape(shape)
        started = time.perf_counter()
        exception: Exception | None = None
        length = 0
        try:
            reply = self.stub.Validate(request, timeout=10)
            length = reply.ByteSize()
            if len(reply.verdicts) != len(request.lines):
                exception = AssertionError(f"{len(reply.verdicts)} verdicts for {len(request.lines)} lines")
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(
            request_type="grpc",
            name=name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=exception,
            context={"lines": len(request.lines)},
        )

    @task(82)
    def outpatient(self) -> None:
        self.settle("outpatient", OUTPATIENT)

    @task(15)
    def pharmacy(self) -> None:
        self.settle("pharmacy", PHARMACY)

    @task(2)
    def inpatient_discharge(self) -> None:
        self.settle(DISCHARGE, INPATIENT)

    @task(1)
    def emergency(self) -> None:
        self.settle("emergency", EMERGENCY)


def verdict(environment: Environment) -> list[str]:
    """What is out of bounds in this run (empty: it passed)."""
    options = environment.parsed_options
    stats = environment.stats
    faults = []
    if stats.total.num_requests == 0:
        faults.append("no call was made")
    elif stats.total.fail_ratio > options.max_fail_ratio:
        faults.append(f"failure ratio {stats.total.fail_ratio:.2%} > {options.max_fail_ratio:.2%}")
    for names, bound in ((EVERYDAY, options.max_p99_ms), ((DISCHARGE,), options.max_discharge_p99_ms)):
        for name in names:
            entry = stats.entries.get((name, "grpc"))
            if entry is not None and entry.num_requests:
                p99 = entry.get_response_time_percentile(0.99)
                if p99 > bound:
                    faults.append(f"{name} p99 {p99:.0f} ms > {bound:.0f} ms")
    return faults


@events.quitting.add_listener
def _check_thresholds(environment: Environment, **kwargs: Any) -> None:
    faults = verdict(environment)
    for fault in faults:
        print(f"FAIL: {fault}")
    if faults:
        environment.process_exit_code = 1
    else:
        print("PASS: within the p99 and failure-ratio bounds")
