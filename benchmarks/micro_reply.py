"""Per-line cost of the reply and of the line metrics, old code against new, in one process.

The full benchmark (``bench.py``) needs the machine to itself; on a shared machine its
throughput moves with other jobs. This times, in-process and interleaved (so a burst of
load hits both sides alike), for the same bills and decisions:

- **reply**: the old ``settlement.build_response`` (a protobuf message) plus the
  ``SerializeToString`` gRPC ran on it, against the new ``build_response`` (wire bytes);
- **metrics**: the old ``GatewayMetrics.observe_settlement`` against the new one;
- for scale, ``parse_request`` + ``decide_all``, which neither side changes.

The old code is read from git (``--baseline``, default: the commit before the change) and
loaded beside the current modules. Bills come from ``benchmarks.workload`` (a few staff per
bill, ~3 % of lines from suspended, terminated or unknown staff), judged against in-process
records. Both replies are checked to parse to the same message before anything is timed.

    python -m benchmarks.micro_reply [--sizes 20,200,3000] [--runs 9] [--baseline REV]
"""

from __future__ import annotations

import argparse
import datetime as dt
import shlex
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

from prometheus_client import CollectorRegistry

from benchmarks.bench import load_average, write_section
from benchmarks.workload import BillMaker, StaffPool
from gateway import settlement
from gateway.metrics import GatewayMetrics
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.records import InstitutionPeriod, InstitutionRecord, StaffPeriod, StaffRecord, Status
from gateway.rules import Decision, Evidence, Line, RulesConfig, decide_all

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION_BEGIN = "<!-- micro-reply:begin -->"
SECTION_END = "<!-- micro-reply:end -->"
# The last commit whose reply was a protobuf message serialized by gRPC.
DEFAULT_BASELINE = "fae2d69"
HOSPITAL = "H33090200001"
OPEN_END = 2**31 - 1
FLAGGED = (Status.SUSPENDED, Status.TERMINATED, Status.LOCKED, Status.CANCELLED)
LINES_PER_TIMING = 30_000  # each timing runs the bill as often as makes about this many lines


def load_baseline(rev: str, path: str, name: str) -> types.ModuleType:
    """``path`` as it was at ``rev``, imported as module ``name`` beside the current code."""
    source = subprocess.run(
        ["git", "show", f"{rev}:{path}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(source, module.__file__, "exec"), module.__dict__)
    return module


def staff_pool() -> tuple[StaffPool, Evidence]:
    """400 staff in good standing, 60 flagged (suspended … cancelled, over the bills' days),
    20 unknown; and the records they are judged on."""
    normal = tuple(f"D330902{i:06d}" for i in range(1, 401))
    flagged = tuple(f"D330902{i:06d}" for i in range(401, 461))
    unknown = tuple(f"D330999{i:06d}" for i in range(1, 21))
    today = int(time.time()) // 86_400

    def record(status: Status, start: int = 0, end: int = OPEN_END) -> StaffRecord:
        return StaffRecord((StaffPeriod(HOSPITAL, "", status, start, end),))

    staff = {code: record(Status.NORMAL) for code in normal}
    for i, code in enumerate(flagged):
        staff[code] = record(FLAGGED[i % len(FLAGGED)], today - 40 + i % 20, today + 60)
    institution = InstitutionRecord((InstitutionPeriod(Status.NORMAL, 0, OPEN_END),))
    return StaffPool(HOSPITAL, normal, flagged, unknown), Evidence(HOSPITAL, institution, None, staff)


def judged_bill(lines: int) -> tuple[pb.ValidateRequest, list[Line], list[Decision]]:
    pool, evidence = staff_pool()
    config = RulesConfig()
    encounter = pb.OUTPATIENT if lines <= 30 else pb.INPATIENT
    request = BillMaker(pool, seed=lines).bill(lines, encounter=encounter)
    parsed = settlement.parse_request(request, config, 100_000)
    return request, parsed.lines, decide_all(parsed.lines, evidence, config)


def per_line_us(fn: Callable[[], object], lines: int, lines_per_timing: int) -> float:
    """CPU time, not wall time: on a shared machine the wait for a core is not the code's cost."""
    calls = max(1, lines_per_timing // lines)
    started = time.thread_time()
    for _ in range(calls):
        fn()
    return (time.thread_time() - started) / calls / lines * 1e6


def measure(
    size: int,
    runs: int,
    lines_per_timing: int,
    old_settlement: types.ModuleType,
    old_metrics: types.ModuleType,
) -> dict[str, float]:
    """Median µs per line of each variant for bills of ``size`` lines."""
    request, lines, decisions = judged_bill(size)
    rid, version = request.request_id, "20261201T000000Z-abcdef"
    config, evidence = RulesConfig(), staff_pool()[1]

    def old_reply() -> bytes:
        # The message, serialized as gRPC did (a baseline that already returns bytes as is).
        built = old_settlement.build_response(rid, lines, decisions, version, 1.7e9, False)
        return built if isinstance(built, bytes) else built.SerializeToString()

    new_reply = settlement.build_response(rid, lines, decisions, version, 1.7e9, False)
    if pb.ValidateResponse.FromString(old_reply()) != pb.ValidateResponse.FromString(new_reply):
        raise SystemExit(f"{size} lines: the old and the new reply differ")
    old_gauges = old_metrics.GatewayMetrics(CollectorRegistry())
    new_gauges = GatewayMetrics(CollectorRegistry())
    variants: dict[str, Callable[[], object]] = {
        "reply old": old_reply,
        "reply new": lambda: settlement.build_response(rid, lines, decisions, version, 1.7e9, False),
        "metrics old": lambda: old_gauges.observe_settlement(HOSPITAL, lines, decisions, False),
        "metrics new": lambda: new_gauges.observe_settlement(HOSPITAL, lines, decisions, False),
        "parse + decide": lambda: decide_all(
            settlement.parse_request(request, config, 100_000).lines, evidence, config
        ),
    }
    for fn in variants.values():  # warm-up
        per_line_us(fn, size, lines_per_timing)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(runs):
        for name, fn in variants.items():
            samples[name].append(per_line_us(fn, size, lines_per_timing))
    return {name: statistics.median(values) for name, values in samples.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="20,200,3000", help="bill sizes in lines, comma-separated")
    parser.add_argument("--runs", type=int, default=9, help="interleaved repetitions (median reported)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE, help="git revision of the old code")
    parser.add_argument("--lines-per-timing", type=int, default=LINES_PER_TIMING)
    parser.add_argument("--output", type=Path, default=RESULTS, help="RESULTS.md to update; '-' prints only")
    args = parser.parse_args(argv)
    old_settlement = load_baseline(args.baseline, "gateway/settlement.py", "baseline_settlement")
    old_metrics = load_baseline(args.baseline, "gateway/metrics.py", "baseline_metrics")
    started, load_before = time.monotonic(), load_average()
    results = {
        int(size): measure(int(size), args.runs, args.lines_per_timing, old_settlement, old_metrics)
        for size in args.sizes.split(",")
    }
    load_after = load_average()

    command = "python -m benchmarks.micro_reply " + shlex.join(argv if argv is not None else sys.argv[1:])
    lines = [
        "## Reply bytes and line counting, old code against new (`benchmarks/micro_reply.py`)",
        "",
        f"Command: `{command.strip()}`. Taken {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in "
        f"{time.monotonic() - started:.0f} s; load average (1/5/15 min) before {load_before}, "
        f"after {load_after}. Old code: `{args.baseline}`.",
        f"In-process, one thread; CPU µs per line (thread time), medians of {args.runs} interleaved runs of "
        f"~{args.lines_per_timing:,} lines each. Reply old = message built + `SerializeToString` (what "
        "gRPC ran); reply new = the wire bytes. Parse + decide is unchanged, for scale.",
        "",
        "| lines | reply old | reply new | **new / old** | metrics old | metrics new | **new / old** "
        "| parse + decide |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size, r in results.items():
        lines.append(
            f"| {size:,} | {r['reply old']:.3f} | {r['reply new']:.3f} | **{r['reply new'] / r['reply old']:.2f}** "
            f"| {r['metrics old']:.3f} | {r['metrics new']:.3f} | **{r['metrics new'] / r['metrics old']:.2f}** "
            f"| {r['parse + decide']:.3f} |"
        )
    print("\n".join(lines))
    if str(args.output) != "-":
        write_section(args.output, lines, SECTION_BEGIN, SECTION_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
