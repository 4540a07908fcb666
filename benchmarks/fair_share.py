"""Fair share figure: a calm hospital's p99 while another hospital floods the same gateway,
against the calm hospital's p99 alone (goal: at most 3×).

The flood is the issue's: 10,000-line bills in closed loops (``--loops``, default 6) and idle
``ValidateStream`` calls opened as fast as the gateway takes them (each sends one request and
then says nothing; refused or closed by ``SGW_STREAM_IDLE_SECONDS``, the hostile opens
another). The hostile runs in a process of its own, so its client work does not slow the calm
client's. The calm hospital sends one-line bills from ``--calm`` closed loops.

Each run starts a real redis-server and ``settlement-gateway serve`` with the default budgets
(``SGW_STREAM_IDLE_SECONDS`` shortened to ``--idle`` so idle streams come and go within a
phase), measures the calm hospital alone, then with the flood; the ratio is per run, the
table gives medians. Written to benchmarks/RESULTS.md (its own section).

    python -m benchmarks.fair_share --runs 3
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import grpc
import redis

from benchmarks.bench import machine_facts, write_section
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from loader.publish import Publisher
from loader.sync import FileSpec, SyncOptions, sync_files
from tests import exports
from tests.conftest import RedisProcess, free_port
from tests.exports import HOSPITAL, OTHER_HOSPITAL, institution_row, line, request, staff_row
from tests.faultload import (
    STATUS_CYCLE,
    GatewayProcess,
    Load,
    PhaseFigures,
    raw_load,
    staff_codes,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION_BEGIN = "<!-- fair-share-bench:begin -->"
SECTION_END = "<!-- fair-share-bench:end -->"
GOAL = 3.0
STAFF = 210


@dataclass
class RunFigures:
    alone: PhaseFigures
    flooded: PhaseFigures
    hostile: Counter[str]

    @property
    def ratio(self) -> float:
        return self.flooded.p99_ms / self.alone.p99_ms


# -- the hostile hospital, in its own process ---------------------------------------------


async def _idle_streams(
    target: str, first: pb.ValidateRequest, stop: asyncio.Event, counts: Counter[str]
) -> None:
    """Open streams as fast as they are taken; each sends one request, then idles."""
    async with grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)]) as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        held: list[grpc.aio.StreamStreamCall[pb.ValidateRequest, pb.ValidateResponse]] = []
        while not stop.is_set():
            call = stub.ValidateStream()
            try:
                await call.write(first)
                await call.read()
                held.append(call)
                counts["stream OK"] += 1
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
                counts[f"stream {(await call.code()).name}"] += 1
                await asyncio.sleep(0.001)
            counts["stream closed by the gateway"] += sum(c.done() for c in held)
            held = [c for c in held if not c.done()]
        for call in held:
            call.cancel()


def load_two_hospitals(redis_url: str, workdir: Path) -> None:
    """Both hospitals registered, and every staff member at both (``STATUS_CYCLE``'s statuses),
    so each hospital's bills are judged on its own staff rather than rejected wholesale."""
    client = redis.Redis.from_url(redis_url)
    try:
        publisher = Publisher(client, Keys())
        rows = []
        for i, code in enumerate(staff_codes(STAFF)):
            for institution in (HOSPITAL, OTHER_HOSPITAL):
                rows.append(staff_row(code, institution))
                status = STATUS_CYCLE[i % len(STATUS_CYCLE)]
                if status != "正常":
                    rows.append(staff_row(code, institution, status=status, start="2026-01-01"))
        specs = [
            FileSpec(exports.write_csv(workdir / f"{kind}.csv", exports.HEADERS[kind], kind_rows))
            for kind, kind_rows in (
                ("institution", [institution_row(), institution_row(OTHER_HOSPITAL)]),
                ("staff", rows),
            )
        ]
        done = sync_files(specs, publisher, SyncOptions())  # one version: both kinds
        if done.outcome != 0:
            raise RuntimeError(f"loading the export set failed: {done.message}")
    finally:
        client.close()


def hostile_codes(audited: bool) -> list[str]:
    """Staff codes for the hostile's bills: only those in force (few audited lines), or every
    status (4 lines in 7 rejected or exempted, each one an audit record)."""
    codes = staff_codes(STAFF)
    return (
        codes
        if audited
        else [c for i, c in enumerate(codes) if STATUS_CYCLE[i % len(STATUS_CYCLE)] == "正常"]
    )


async def _hostile(target: str, seconds: float, loops: int, audited: bool) -> Counter[str]:
    codes = hostile_codes(audited)
    huge = request(
        *[line(str(i), codes[i % len(codes)]) for i in range(10_000)], institution_code=OTHER_HOSPITAL
    ).SerializeToString()
    first = request(line("1", codes[0]), institution_code=OTHER_HOSPITAL, request_id="idle")
    stop = asyncio.Event()
    counts: Counter[str] = Counter()
    bills_task = asyncio.create_task(raw_load(target, [huge], loops, stop, timeout=60))
    streams_task = asyncio.create_task(_idle_streams(target, first, stop, counts))
    await asyncio.sleep(seconds)
    stop.set()
    for outcome in await bills_task:
        counts[f"10,000-line bill {outcome.code.name}"] += 1
    await streams_task
    return counts


def _hostile_process(
    target: str, seconds: float, loops: int, audited: bool, out: multiprocessing.Queue[Counter[str]]
) -> None:
    out.put(asyncio.run(_hostile(target, seconds, loops, audited)))


# -- one run -----------------------------------------------------------------------------------


async def calm_phase(
    target: str, work: list[pb.ValidateRequest], seconds: float, concurrency: int
) -> PhaseFigures:
    calm = Load(target, work, concurrency=concurrency, timeout=30)
    task = asyncio.create_task(calm.run())
    await asyncio.sleep(seconds)
    calm.stop.set()
    await task
    return PhaseFigures.of(calm.outcomes)


async def one_run(args: argparse.Namespace, workdir: Path) -> RunFigures:
    store = RedisProcess(find_redis_server(), free_port(), workdir)
    store.start()
    try:
        load_two_hospitals(store.url, workdir)
        gw = GatewayProcess(
            {
                "SGW_REDIS_URL": store.url,
                "SGW_STATE_DIR": str(workdir / "state"),
                "SGW_STREAM_IDLE_SECONDS": str(args.idle),
            },
            workdir,
        )
        gw.start(free_port(), free_port())
        target = f"127.0.0.1:{gw.port}"
        try:
            work = [
                request(line("1", code), request_id=f"calm-{i}") for i, code in enumerate(staff_codes(200))
            ]
            await calm_phase(target, work, 1.0, args.calm)  # warm-up: caches, connections
            alone = await calm_phase(target, work, args.phase, args.calm)
            # spawn, not fork: a forked copy of a process running gRPC hangs.
            spawn = multiprocessing.get_context("spawn")
            results: multiprocessing.Queue[Counter[str]] = spawn.Queue()
            hostile = spawn.Process(
                target=_hostile_process, args=(target, args.phase + 2.0, args.loops, args.audited, results)
            )
            hostile.start()
            await asyncio.sleep(1.0)  # the flood is under way before the calm phase starts
            flooded = await calm_phase(target, work, args.phase, args.calm)
            counts = await asyncio.to_thread(results.get, True, 120)
            await asyncio.to_thread(hostile.join, 30)
            return RunFigures(alone, flooded, counts)
        finally:
            gw.stop()
    finally:
        store.stop()


# -- report ------------------------------------------------------------------------------------


def fmt(value: float) -> str:
    return f"{value:,.1f}"


def report(
    args: argparse.Namespace, runs: list[RunFigures], load_before: str, load_after: str, took: float
) -> list[str]:
    command = "python -m benchmarks.fair_share " + shlex.join(args.argv)
    ratios = [r.ratio for r in runs]
    ratio = statistics.median(ratios)
    hostile: Counter[str] = Counter()
    for r in runs:
        hostile.update(r.hostile)

    def row(name: str, figs: list[PhaseFigures]) -> str:
        failed: Counter[str] = Counter()
        for f in figs:
            failed.update(f.failed)
        failed_text = ", ".join(f"{code}: {n}" for code, n in sorted(failed.items())) or "0"
        return (
            f"| {name} | {statistics.median(f.calls for f in figs):,.0f} | {failed_text} "
            f"| {fmt(statistics.median(f.p50_ms for f in figs))} | {fmt(statistics.median(f.p99_ms for f in figs))} "
            f"| {fmt(statistics.median(f.max_ms for f in figs))} |"
        )

    return [
        "## Fair share: a calm hospital beside a flooding one (`benchmarks/fair_share.py`"
        + (", hostile lines mostly audited" if args.audited else "")
        + (f", {args.loops} hostile loops" if args.loops != 6 else "")
        + ")",
        "",
        f"Command: `{command.strip()}`. Taken {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in {took:.0f} s; "
        f"load average (1/5/15 min) before {load_before}, after {load_after}.",
        "",
        *(f"- {fact}" for fact in machine_facts()),
        f"- One gateway process, default budgets (`SGW_CALLER_CALLS` 64, `SGW_CALLER_STREAMS` 16, "
        f"`SGW_CALLER_LINES` 20,000), `SGW_STREAM_IDLE_SECONDS={args.idle:g}`. Calm hospital: one-line "
        f"bills from {args.calm} closed loops (Python gRPC client), {args.phase:g} s per phase. Hostile "
        f"hospital (own process): 10,000-line bills from {args.loops} closed loops, and idle streams "
        "opened as fast as they are taken"
        + (
            " (its bills name staff of every status: 4 lines in 7 become audit records)"
            if args.audited
            else " (its bills name staff in force: few audit records)"
        )
        + ". Medians of "
        f"{args.runs} runs; the ratio is computed per run.",
        "",
        "| calm hospital | calls | failed | p50 ms | p99 ms | max ms |",
        "|---|---:|---|---:|---:|---:|",
        row("alone", [r.alone for r in runs]),
        row("beside the flood", [r.flooded for r in runs]),
        "",
        f"**p99 beside the flood ÷ p99 alone: {ratio:.2f}×** (per run: "
        f"{', '.join(f'{x:.2f}×' for x in ratios)}; goal ≤ {GOAL:g}×).",
        "",
        "What the hostile hospital got, all runs: "
        + ", ".join(f"{what}: {n:,}" for what, n in sorted(hostile.items()) if n)
        + ".",
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fair_share", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--phase", type=float, default=5.0, help="seconds per phase (default 5)")
    p.add_argument("--calm", type=int, default=2, help="the calm hospital's closed loops (default 2)")
    p.add_argument(
        "--loops", type=int, default=6, help="the hostile's loops of 10,000-line bills (default 6)"
    )
    p.add_argument("--audited", action="store_true",
                   help="hostile bills name staff of every status: most lines become audit records")  # fmt: skip
    p.add_argument("--idle", type=float, default=2.0, help="SGW_STREAM_IDLE_SECONDS (default 2)")
    p.add_argument("--output", type=Path, default=RESULTS, help="markdown file to update ('-': none)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else sys.argv[1:]
    started = time.monotonic()
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs = []
    with tempfile.TemporaryDirectory(prefix="sgw-fair-share-") as tmp:
        for i in range(args.runs):
            print(f"run {i + 1}/{args.runs}", flush=True)
            workdir = Path(tmp) / f"run-{i}"
            workdir.mkdir()
            runs.append(asyncio.run(one_run(args, workdir)))
            print(f"  p99 alone {runs[-1].alone.p99_ms:.1f} ms, beside the flood {runs[-1].flooded.p99_ms:.1f} ms: "
                  f"{runs[-1].ratio:.2f}×", flush=True)  # fmt: skip
    load_after = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = report(args, runs, load_before, load_after, time.monotonic() - started)
    print("\n".join(lines))
    if str(args.output) != "-":
        # One section per kind of flood, so the variants sit side by side.
        suffix = ("-audited" if args.audited else "") + (f"-loops{args.loops}" if args.loops != 6 else "")
        write_section(
            args.output,
            lines,
            SECTION_BEGIN.replace("bench", f"bench{suffix}"),
            SECTION_END.replace("bench", f"bench{suffix}"),
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
