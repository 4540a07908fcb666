"""What the metrics cost one request, against the request's own CPU work, measured in one run.

A request is judged in well under a millisecond, so its metrics must stay a small fraction
of that. This times, for the same everyday 20-line bill (5 doctors, one suspended, one
emergency line, one uncoded item):

- the baseline: what the gateway computes anyway — parse the message, decide every line,
  build the reply (no I/O);
- the metrics of that request: the gRPC interceptor's bookkeeping (started, received, sent,
  latency, handled), one timed Redis call, ``observe_decision_time`` and ``observe_settlement``
  (lines, amounts, per-institution counts, staff-code window).

Both in one process (the plain values of a single gateway) and in a child process in
prometheus-client's multiprocess mode (the memory-mapped values of ``serve --workers N``).
Runs are interleaved and the medians reported; the table is printed and written to
``benchmarks/RESULTS.md`` (this harness's own section).

    python -m benchmarks.bench_metrics [--runs 7] [--requests 3000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from prometheus_client import CollectorRegistry

from benchmarks.bench import load_average, write_section
from gateway.days import CST
from gateway.grpc_metrics import MethodMetrics
from gateway.metrics import GatewayMetrics, MetricsConfig
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.records import InstitutionPeriod, InstitutionRecord, StaffPeriod, StaffRecord, Status
from gateway.rules import Evidence, RulesConfig, decide_all
from gateway.settlement import build_response, parse_request

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION_BEGIN = "<!-- metrics-bench:begin -->"
SECTION_END = "<!-- metrics-bench:end -->"
HOSPITAL = "H33090200017"
DOCTORS = [f"D3309020000{i:02d}" for i in range(1, 6)]
SUSPENDED = DOCTORS[4]
OPEN_END = 2**31 - 1


def everyday_bill() -> pb.ValidateRequest:
    bill = pb.ValidateRequest(request_id="bench", institution_code=HOSPITAL, med_type="11")
    when = dt.datetime(2026, 4, 1, 10, tzinfo=CST)
    for i in range(20):
        line = bill.lines.add(
            line_id=str(i),
            staff_code=DOCTORS[i % len(DOCTORS)],
            department_code="A03",
            item_code="" if i == 7 else "XA01AAA001",
            amount_fen=1000 + i,
            emergency=i == 9,
        )
        line.service_time.FromDatetime(when)
    return bill


def evidence() -> Evidence:
    def record(status: Status) -> StaffRecord:
        return StaffRecord((StaffPeriod(HOSPITAL, "A03", status, 0, OPEN_END),))

    staff = {code: record(Status.SUSPENDED if code == SUSPENDED else Status.NORMAL) for code in DOCTORS}
    institution = InstitutionRecord((InstitutionPeriod(Status.NORMAL, 0, OPEN_END),))
    return Evidence(HOSPITAL, institution, None, staff)


def measure(requests: int) -> dict[str, float]:
    """Seconds per request of the baseline and of the metrics, in this process's mode."""
    config = RulesConfig()
    bill = everyday_bill()
    ev = evidence()
    metrics = GatewayMetrics(CollectorRegistry(), MetricsConfig())
    method = MethodMetrics.resolve(metrics, "unary", "settlement.v1.SettlementGateway", "Validate")

    def baseline() -> None:
        parsed = parse_request(bill, config, 10_000)
        decisions = decide_all(parsed.lines, ev, config)
        build_response(bill.request_id, parsed.lines, decisions, "v1", 1.0, False)

    parsed = parse_request(bill, config, 10_000)
    decisions = decide_all(parsed.lines, ev, config)

    def with_metrics() -> None:
        method.started.inc()
        method.received.inc()
        started = time.perf_counter()
        with metrics.redis_call("read"):
            pass
        metrics.observe_decision_time(len(decisions), 0.0005)
        metrics.observe_settlement(HOSPITAL, parsed.lines, decisions, False)
        method.sent.inc()
        method.finish(started, grpc.StatusCode.OK)

    return {"baseline": _per_call(baseline, requests), "metrics": _per_call(with_metrics, requests)}


def _per_call(fn: Callable[[], None], n: int) -> float:
    for _ in range(n // 10):  # warm-up
        fn()
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n


def child(mode: str, requests: int) -> dict[str, float]:
    """One measurement in a fresh process (multiprocess mode must be chosen before any metric)."""
    command = [sys.executable, "-m", "benchmarks.bench_metrics", "--child", mode, "--requests", str(requests)]
    out = subprocess.run(command, check=True, capture_output=True, text=True, timeout=600).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--child", choices=["single", "multiprocess"], help=argparse.SUPPRESS)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        if args.child == "multiprocess":
            from gateway.metrics_exposition import prepare_multiprocess_dir

            prepare_multiprocess_dir(Path(tempfile.mkdtemp(prefix="sgw-bench-metrics-")))
        print(json.dumps(measure(args.requests)))
        return 0

    started = time.monotonic()
    load_before = load_average()
    samples: dict[str, dict[str, list[float]]] = {
        m: {"baseline": [], "metrics": []} for m in ("single", "multiprocess")
    }
    for _ in range(args.runs):
        for mode in samples:  # interleaved, so a burst of load hits both modes alike
            for key, value in child(mode, args.requests).items():
                samples[mode][key].append(value)
    load_after = load_average()

    command = "python -m benchmarks.bench_metrics " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## Metrics cost per request (`benchmarks/bench_metrics.py`)",
        "",
        f"Command: `{command.strip()}`. Taken {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in "
        f"{time.monotonic() - started:.0f} s; load average (1/5/15 min) before {load_before}, after {load_after}.",
        f"Medians of {args.runs} interleaved runs of {args.requests:,} requests each (everyday 20-line bill).",
        "",
        "| values | request's own work (parse, decide, reply) | metrics of that request | metrics / own work |",
        "|---|---|---|---|",
    ]
    for mode, label in (("single", "one process"), ("multiprocess", "multiprocess (`--workers N`)")):
        base = statistics.median(samples[mode]["baseline"])
        cost = statistics.median(samples[mode]["metrics"])
        lines.append(f"| {label} | {base * 1e6:.1f} µs | {cost * 1e6:.1f} µs | {cost / base:.2f}× |")
    print("\n".join(lines))
    write_section(args.output, lines, SECTION_BEGIN, SECTION_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
