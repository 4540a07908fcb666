"""Fault figures: what callers see while Redis dies or freezes, while the gateway drains on
SIGTERM, and while a hostile client sends 100,000-line and malformed requests.

Each scenario runs a real redis-server and a real ``settlement-gateway serve`` process under
closed-loop load from ``tests/faultload.py`` (every answer checked against live truth) and
reports calls made, failed (by status), degraded, wrong, and the latency p50/p99 of each
phase; the fault phase's p99 is also given as a ratio to the steady phase of the same run.
Medians over ``--runs`` runs. The pytest fault tests assert correctness only; this script
produces the numbers, and writes them to benchmarks/RESULTS.md (its own section).

    python -m benchmarks.faults            # what `make bench-faults` runs
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import multiprocessing
import os
import shlex
import signal
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from benchmarks.bench import machine_facts, write_section
from gateway.embedded import find_redis_server
from tests.conftest import RedisProcess, free_port
from tests.exports import line, request
from tests.faultload import (
    GatewayProcess,
    Load,
    Outcome,
    PhaseFigures,
    between,
    bills,
    load_population,
    raw_load,
    staff_codes,
    truth,
    wrong_answers,
)

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION_BEGIN = "<!-- faults-bench:begin -->"
SECTION_END = "<!-- faults-bench:end -->"
PERSISTENT = ("--appendonly", "yes", "--appendfsync", "always")


@dataclass
class Row:
    """One phase of one scenario, over all runs."""

    scenario: str
    phase: str
    figures: list[PhaseFigures] = field(default_factory=list)
    wrong: list[int] = field(default_factory=list)
    baseline_p99: list[float] = field(default_factory=list)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.rows: dict[tuple[str, str], Row] = {}

    def record(
        self, scenario: str, phase: str, figures: PhaseFigures, wrong: int, baseline: PhaseFigures
    ) -> None:
        row = self.rows.setdefault((scenario, phase), Row(scenario, phase))
        row.figures.append(figures)
        row.wrong.append(wrong)
        row.baseline_p99.append(baseline.p99_ms)

    def redis(self, run: str) -> RedisProcess:
        path = self.workdir / run
        path.mkdir(parents=True, exist_ok=True)
        server = RedisProcess(find_redis_server(), free_port(), path, PERSISTENT)
        server.start()
        return server

    def gateway(self, run: str, redis_url: str, *args: str, **env: str) -> GatewayProcess:
        gw = GatewayProcess(
            {"SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(self.workdir / run / "state"), **env},
            self.workdir / run,
            args,
        )
        gw.start(free_port(), free_port())
        return gw

    # -- scenarios --------------------------------------------------------------------------

    async def redis_fault(self, run: str, fault: str, policy: str) -> None:
        """``fault``: "kill" (kill -9, then restart) or "freeze" (SIGSTOP, then SIGCONT)."""
        a = self.args
        store = self.redis(run)
        try:
            version = load_population(store.url, self.workdir / run, a.staff)
            codes = staff_codes(a.staff)
            warm, cold = codes[: a.staff * 4 // 5], codes[a.staff * 4 // 5 :]
            warm_bills, cold_bills = bills(warm, 6, "warm"), bills(cold, 6, "cold")
            gw = self.gateway(run, store.url, SGW_OUTAGE_POLICY=policy)
            target = f"127.0.0.1:{gw.port}"
            try:
                await truth(target, warm_bills)
                steady = Load(target, warm_bills, concurrency=a.concurrency - 2)
                probing = Load(target, cold_bills, concurrency=2)
                tasks = [asyncio.create_task(steady.run())]
                t0 = time.monotonic()
                await asyncio.sleep(a.phase)
                fault_at = time.monotonic()
                assert store.proc is not None
                if fault == "kill":
                    store.kill()
                else:
                    os.kill(store.proc.pid, signal.SIGSTOP)
                tasks.append(asyncio.create_task(probing.run()))
                await asyncio.sleep(a.phase)
                recover_at = time.monotonic()
                if fault == "kill":
                    store.start()
                else:
                    os.kill(store.proc.pid, signal.SIGCONT)
                await asyncio.sleep(a.phase)
                end = time.monotonic()
                steady.stop.set()
                probing.stop.set()
                await asyncio.gather(*tasks)
                requests = [*warm_bills, *cold_bills]
                reference = await truth(target, requests)
            finally:
                gw.stop()
        finally:
            if store.proc is not None and store.proc.poll() is None:
                os.kill(store.proc.pid, signal.SIGCONT)
            store.stop()
        offset = len(warm_bills)
        everything = [
            *steady.outcomes,
            *(replace(o, request_index=o.request_index + offset) for o in probing.outcomes),
        ]
        cold_set = frozenset(cold) if policy == "accept-flagged" else frozenset()
        name = f"Redis {'kill -9' if fault == 'kill' else 'SIGSTOP'}, {policy}"
        baseline = PhaseFigures.of(steady.outcomes, between(t0, fault_at))
        for phase, start, stop in (
            ("before", t0, fault_at),
            ("during fault", fault_at, recover_at),
            ("after recovery", recover_at, end),
        ):
            chosen = [o for o in everything if start <= o.started < stop]
            wrong = len(wrong_answers(chosen, requests, reference, version, cold_set))
            self.record(name, phase, PhaseFigures.of(chosen), wrong, baseline)

    async def sigterm(self, run: str) -> None:
        a = self.args
        store = self.redis(run)
        try:
            load_population(store.url, self.workdir / run, a.staff)
            work = bills(staff_codes(a.staff), 50, "term")
            gw = self.gateway(run, store.url, "--shutdown-grace", "5")
            target = f"127.0.0.1:{gw.port}"
            reference = await truth(target, work)
            load = Load(target, work, concurrency=a.concurrency, failover=True)
            task = asyncio.create_task(load.run())
            t0 = time.monotonic()
            await asyncio.sleep(a.phase)
            term_at = time.monotonic()
            gw.signal(signal.SIGTERM)
            await task
            gw.wait(30)
            end = time.monotonic()
        finally:
            store.stop()
        baseline = PhaseFigures.of(load.outcomes, between(t0, term_at))
        for phase, start, stop in (("before", t0, term_at), ("draining", term_at, end)):
            chosen = [o for o in load.outcomes if start <= o.started < stop]
            wrong = len(wrong_answers(chosen, work, reference, ""))
            self.record("Gateway SIGTERM (50-line bills)", phase, PhaseFigures.of(chosen), wrong, baseline)

    async def hostile(self, run: str) -> None:
        a = self.args
        store = self.redis(run)
        try:
            load_population(store.url, self.workdir / run, a.staff)
            work = bills(staff_codes(a.staff), 5, "calm")
            gw = self.gateway(run, store.url)
            target = f"127.0.0.1:{gw.port}"
            try:
                reference = await truth(target, work)
                huge = request(*[line(str(i), "D330902000001") for i in range(100_000)]).SerializeToString()
                malformed = [b"\xff" * 64, huge[:5000] + b"\xc3\x28", b"\x2a\xff\xff\xff\x7f"]
                calm = Load(target, work, concurrency=a.concurrency - 2)
                task = asyncio.create_task(calm.run())
                t0 = time.monotonic()
                await asyncio.sleep(a.phase)
                hostile_at = time.monotonic()
                # The hostile client is a process of its own, so its CPU is not the calm
                # clients' (on 2 cores it still competes with them and with the gateway).
                with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                    hostile_figures = await asyncio.get_running_loop().run_in_executor(
                        pool, hostile_process, target, [huge, *malformed], a.phase
                    )
                end = time.monotonic()
                calm.stop.set()
                await task
            finally:
                gw.stop()
        finally:
            store.stop()
        baseline = PhaseFigures.of(calm.outcomes, between(t0, hostile_at))
        name = "Hostile client (100,000-line + malformed)"
        for phase, start, stop_at in (
            ("calm clients, alone", t0, hostile_at),
            ("calm clients, with hostile", hostile_at, end),
        ):
            chosen = [o for o in calm.outcomes if start <= o.started < stop_at]
            self.record(
                name,
                phase,
                PhaseFigures.of(chosen),
                len(wrong_answers(chosen, work, reference, "")),
                baseline,
            )
        self.record(name, "the hostile client itself", hostile_figures, 0, baseline)


def hostile_process(target: str, payloads: list[bytes], seconds: float) -> PhaseFigures:
    """Runs in a child process: 2 callers sending ``payloads`` for ``seconds``."""

    async def run() -> list[Outcome]:
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(seconds, stop.set)
        return await raw_load(target, payloads, 2, stop)

    return PhaseFigures.of(asyncio.run(run()))


def fmt(value: float) -> str:
    return "–" if value != value else f"{value:.1f}"


def table(rows: Sequence[Row]) -> list[str]:
    out = [
        "| scenario | phase | calls | failed (status: count) | degraded | wrong | p50 ms | p99 ms | p99 ÷ steady p99 | max ms |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        figs = row.figures
        failed: dict[str, list[int]] = {}
        for f in figs:
            for code in f.failed:
                failed.setdefault(code, [])
        for code in failed:
            failed[code] = [f.failed.get(code, 0) for f in figs]
        failed_text = ", ".join(f"{code}: {median(v):.0f}" for code, v in sorted(failed.items())) or "0"
        p99 = median([f.p99_ms for f in figs])
        out.append(
            f"| {row.scenario} | {row.phase} | {median([f.calls for f in figs]):.0f} | {failed_text} "
            f"| {median([f.degraded for f in figs]):.0f} | {max(row.wrong)} | {fmt(median([f.p50_ms for f in figs]))} "
            f"| {fmt(p99)} | {p99 / median(row.baseline_p99):.2f}× | {fmt(median([f.max_ms for f in figs]))} |"
        )
    return out


def report(
    args: argparse.Namespace, rows: Sequence[Row], load_before: str, load_after: str, took: float
) -> list[str]:
    command = "python -m benchmarks.faults " + shlex.join(args.argv)
    return [
        "## Faults: Redis outages, SIGTERM, hostile clients (`benchmarks/faults.py`)",
        "",
        f"Command: `{command.strip()}` (what `make bench-faults` runs). "
        f"Taken {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in {took:.0f} s; "
        f"load average (1/5/15 min) before {load_before}, after {load_after}.",
        "",
        *(f"- {fact}" for fact in machine_facts()),
        f'- Medians of {args.runs} runs ("wrong" is the largest count of any run). Each phase '
        f"{args.phase:g} s; closed-loop Python gRPC clients, {args.concurrency} concurrent calls in total, "
        f"per-call deadline 5 s; {args.staff} staff in Redis (every status), bills of 6 lines unless stated.",
        "- Redis scenarios: the cache has seen 80 % of the staff codes (2 of the callers ask only "
        "about the other 20 %: under `refuse` those calls get UNAVAILABLE during the outage, under "
        '`accept-flagged` degraded answers with outage-paid lines). "wrong": an answer that is '
        "not the live truth, or (degraded) neither the truth nor an outage payment for a code the "
        "cache could not know. kill -9: the server is restarted on the same port (append-only file); "
        "SIGSTOP: frozen, then SIGCONT.",
        '- SIGTERM: a caller refused with UNAVAILABLE "shutting down" stops, as a client fails over.',
        "",
        *table(rows),
    ]


async def run_all(args: argparse.Namespace, bench: Bench) -> None:
    scenarios: list[tuple[str, Callable[[str], object]]] = [
        ("kill-refuse", lambda run: bench.redis_fault(run, "kill", "refuse")),
        ("kill-accept", lambda run: bench.redis_fault(run, "kill", "accept-flagged")),
        ("freeze-refuse", lambda run: bench.redis_fault(run, "freeze", "refuse")),
        ("sigterm", bench.sigterm),
        ("hostile", bench.hostile),
    ]
    for i in range(args.runs):  # interleaved: each run does every scenario once
        for name, scenario in scenarios:
            print(f"run {i + 1}/{args.runs}: {name}", flush=True)
            await scenario(f"{name}-{i}")  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--phase", type=float, default=3.0, help="seconds per phase (default 3)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--staff", type=int, default=600)
    p.add_argument("--output", type=Path, default=RESULTS, help="markdown file to update ('-': none)")
    args = p.parse_args(argv)
    args.argv = argv if argv is not None else __import__("sys").argv[1:]
    started = time.monotonic()
    load_before = " ".join(os.getloadavg().__repr__().strip("()").split(", "))
    with tempfile.TemporaryDirectory(prefix="sgw-faults-") as tmp:
        bench = Bench(args, Path(tmp))
        asyncio.run(run_all(args, bench))
    load_after = " ".join(os.getloadavg().__repr__().strip("()").split(", "))
    lines = report(args, list(bench.rows.values()), load_before, load_after, time.monotonic() - started)
    print("\n".join(lines))
    if str(args.output) != "-":
        write_section(args.output, lines, SECTION_BEGIN, SECTION_END)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Outcome"]
