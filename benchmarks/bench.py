"""One command: the gateway against its two ceilings, measured side by side in one run.

    python -m benchmarks.bench            # or: make bench

Starts a private redis-server, loads a synthetic export set through the real loader, starts
the gateway and the no-op server (``noop_server.py``: same proto, same options, no work) on
one core and drives both with the same load generator (h2load) from the other core, at each
bill size and concurrency. The data ceiling (``redis_ceiling.py``) is the gateway's Redis
round trip alone, from one Python process on the gateway's core. Every figure is the median
of ``--runs`` runs, with the runs interleaved so background load hits all targets alike.
Server-side decision time comes from the gateway's own ``sgw_decision_seconds`` histogram.
``--scaling`` adds ``serve --workers 1`` against ``--workers 2`` with every process free to
use both cores, and counts the CPU the load generator and Redis took from them.

The table is printed and written to ``benchmarks/RESULTS.md`` (its own section).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path

import orjson
import redis
from prometheus_client.parser import text_string_to_metric_families

from benchmarks import loadgen, processes
from benchmarks.processes import Service
from benchmarks.workload import StaffPool, requests_of_size, today_cst
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.loops import DEFAULT_EVENT_LOOP
from gateway.metrics import decision_size_class
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from loader.demo import DemoSet, load_order
from loader.publish import Publisher
from loader.sync import FileSpec, Outcome, SyncOptions, sync_files

RESULTS = Path(__file__).with_name("RESULTS.md")
SECTION_BEGIN = "<!-- gateway-bench:begin -->"
SECTION_END = "<!-- gateway-bench:end -->"


@dataclass
class Sample:
    """One target at one size and concurrency: a list per figure, one entry per run."""

    throughput: list[float] = field(default_factory=list)
    p50: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    p999: list[float] = field(default_factory=list)
    cpu_us_per_request: list[float] = field(default_factory=list)
    decision_p50: list[float] = field(default_factory=list)
    decision_p99: list[float] = field(default_factory=list)
    failed: int = 0

    def add_latencies(self, latencies_us: Sequence[int]) -> None:
        self.p50.append(loadgen.percentile(latencies_us, 50) / 1000)
        self.p99.append(loadgen.percentile(latencies_us, 99) / 1000)
        self.p999.append(loadgen.percentile(latencies_us, 99.9) / 1000)


def median(values: Sequence[float]) -> float:
    return loadgen.median(values)


# --- metrics scraping -------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    """Samples of the gateway's /metrics as ``name{labels}`` -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "pid")
            key = f"{sample.name}{{{labels}}}"
            out[key] = out.get(key, 0.0) + sample.value
    return out


def lines_counted(samples: dict[str, float]) -> float:
    return sum(v for k, v in samples.items() if k.startswith("sgw_lines_total{"))


def decision_quantile(before: dict[str, float], after: dict[str, float], lines: int, q: float) -> float:
    """Like PromQL ``histogram_quantile`` over this run's bucket increments, in ms."""
    size = decision_size_class(lines)
    buckets: list[tuple[float, float]] = []
    for key, value in after.items():
        if key.startswith("sgw_decision_seconds_bucket{") and f"lines={size}" in key:
            bound = key.split("le=")[1].split(",")[0].rstrip("}")
            buckets.append((float(bound), value - before.get(key, 0.0)))
    buckets.sort()
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound * 1000
            share = (rank - lower_count) / (count - lower_count) if count > lower_count else 1.0
            return (lower_bound + (bound - lower_bound) * share) * 1000
        lower_bound, lower_count = bound, count
    return float("nan")


# --- setup -----------------------------------------------------------------------------


def load_demo(redis_url: str, workdir: Path, staff: int) -> Path:
    """Publish a synthetic export set through the real loader; returns the staff file."""
    paths = DemoSet(today_cst(), staff).write(workdir / "exports")
    client = redis.Redis.from_url(redis_url)
    try:
        publisher = Publisher(client, Keys())
        done = sync_files([FileSpec(path) for _, path in load_order(paths)], publisher, SyncOptions())
        if done.outcome not in (Outcome.PUBLISHED, Outcome.PUBLISHED_WITH_REJECTS):
            raise RuntimeError(f"the demo set did not load: {done.message}")
    finally:
        client.close()
    return paths["staff"]


@dataclass
class Bodies:
    request: pb.ValidateRequest
    framed: Path  # for h2load
    raw: Path  # for the data ceiling


def write_bodies(pool: StaffPool, sizes: Sequence[int], workdir: Path) -> dict[int, Bodies]:
    out = {}
    for size in sizes:
        request = next(requests_of_size(pool, size, 1, seed=size))
        framed, raw = workdir / f"request-{size}.grpc", workdir / f"request-{size}.bin"
        framed.write_bytes(loadgen.grpc_frame(request))
        raw.write_bytes(request.SerializeToString())
        out[size] = Bodies(request, framed, raw)
    return out


# --- one measurement -------------------------------------------------------------------


@dataclass
class Harness:
    args: argparse.Namespace
    workdir: Path
    load_cores: frozenset[int]
    server_cores: frozenset[int]
    redis_url: str = ""

    def drive(self, server: Service, body: Bodies, concurrency: int, sample: Sample, *,
              max_connections: int = 8, load_cores: frozenset[int] | None = None) -> loadgen.LoadResult:  # fmt: skip
        before = scrape(server.metrics_port) if server.metrics_port else {}
        cpu_before = server.cpu()
        result = loadgen.run_h2load(
            server.port, body.framed, concurrency=concurrency, duration=self.args.duration,
            warmup=self.args.warmup, workdir=self.workdir, max_connections=max_connections,
            preexec=processes.pinned(self.load_cores if load_cores is None else load_cores),
        )  # fmt: skip
        cpu_used = server.cpu() - cpu_before
        sample.throughput.append(result.throughput)
        sample.add_latencies(result.latencies_us)
        # CPU over warm-up + measured part, per call over the same span.
        calls = result.requests * (self.args.duration + self.args.warmup) / self.args.duration
        sample.cpu_us_per_request.append(cpu_used / calls * 1e6 if calls else float("nan"))
        sample.failed += result.failed
        if server.metrics_port:
            after = scrape(server.metrics_port)
            self.check_answers(server, body, before, after, result)
            lines = len(body.request.lines)
            sample.decision_p50.append(decision_quantile(before, after, lines, 0.50))
            sample.decision_p99.append(decision_quantile(before, after, lines, 0.99))
        return result

    def check_answers(self, server: Service, body: Bodies, before: dict[str, float],
                      after: dict[str, float], result: loadgen.LoadResult) -> None:  # fmt: skip
        """Every HTTP 200 h2load counted must be a judged settlement (gRPC errors are 200 too)."""
        judged = (lines_counted(after) - lines_counted(before)) / len(body.request.lines)
        # h2load's count covers the measured part only; the counter includes the warm-up.
        if judged < result.requests:
            raise RuntimeError(
                f"{server.name}: h2load counted {result.requests} answers but only {judged:.0f} "
                "settlements were judged: the gateway answered with errors (see its log)"
            )

    def data_ceiling(self, body: Bodies, concurrency: int, sample: Sample) -> None:
        argv = [
            sys.executable, "-m", "benchmarks.redis_ceiling", self.redis_url, str(body.raw),
            "--concurrency", str(concurrency), "--duration", f"{self.args.duration:g}",
            "--warmup", f"{self.args.warmup:g}", "--event-loop", self.args.event_loop,
        ]  # fmt: skip
        done = subprocess.run(
            argv, capture_output=True, check=False, env=processes.clean_env(),
            preexec_fn=processes.pinned(self.server_cores),
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"data ceiling failed: {done.stderr.decode()[-2000:]}")
        result = orjson.loads(done.stdout.splitlines()[-1])
        sample.throughput.append(result["requests"] / result["seconds"])
        sample.add_latencies(result["latencies_us"])


# --- the run ---------------------------------------------------------------------------

Key = tuple[str, int, int]  # (target, lines, concurrency)


def measure_all(h: Harness, gateway: Service, noop: Service, bodies: dict[int, Bodies]) -> dict[Key, Sample]:
    samples: dict[Key, Sample] = {}
    for run in range(h.args.runs):
        for size in h.args.sizes:
            for concurrency in h.args.concurrency:
                body = bodies[size]
                for name, server in (("noop", noop), ("gateway", gateway)):
                    h.drive(
                        server, body, concurrency, samples.setdefault((name, size, concurrency), Sample())
                    )
                if not h.args.no_data_ceiling:
                    h.data_ceiling(
                        body, concurrency, samples.setdefault(("data", size, concurrency), Sample())
                    )
                print(f"  run {run + 1}/{h.args.runs}: {size} lines x {concurrency} done", flush=True)
    return samples


@dataclass
class Scaling:
    workers: int
    throughput: list[float] = field(default_factory=list)
    gateway_cores: list[float] = field(default_factory=list)
    load_cores: list[float] = field(default_factory=list)
    redis_cores: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)


def measure_scaling(
    h: Harness, redis_service: Service, body: Bodies, probe: pb.ValidateRequest
) -> list[Scaling]:
    """``--workers 1`` vs ``--workers 2``, everything unpinned, same load, same cores."""
    every = processes.all_cores()
    results = [Scaling(1), Scaling(2)]
    for _ in range(h.args.runs):
        for scaling in results:
            port, metrics_port = processes.free_port(), processes.free_port()
            command = processes.gateway_command(
                h.redis_url, port, metrics_port, h.workdir / "state", workers=scaling.workers,
                event_loop=h.args.event_loop,
            )  # fmt: skip
            server = processes.start_server(command, port, metrics_port, probe, every, h.workdir)
            try:
                sample = Sample()
                loader_cpu = LoadCpu()
                redis_before, wall = redis_service.cpu(), time.monotonic()
                cpu_before = server.cpu()
                with loader_cpu.watch():
                    h.drive(
                        server, body, h.args.scaling_concurrency, sample, max_connections=16, load_cores=every
                    )
                span = time.monotonic() - wall
                scaling.throughput.append(sample.throughput[0])
                scaling.p99.append(sample.p99[0])
                scaling.gateway_cores.append((server.cpu() - cpu_before) / span)
                scaling.redis_cores.append((redis_service.cpu() - redis_before) / span)
                scaling.load_cores.append(loader_cpu.seconds / span)
            finally:
                server.stop()
    return results


class LoadCpu:
    """CPU time of the h2load children started while watching (reaped children count)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        before = os.times()
        yield
        after = os.times()
        self.seconds = (after.children_user - before.children_user) + (
            after.children_system - before.children_system
        )


# --- report ----------------------------------------------------------------------------


def machine_facts() -> list[str]:
    cpu = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor() or "unknown",
    )  # fmt: skip
    redis_version = subprocess.run(
        [find_redis_server(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[2]
    h2load_version = subprocess.run(
        [loadgen.h2load_binary(), "--version"], capture_output=True, text=True, check=False
    ).stdout.split()[-1]
    return [
        f"{os.cpu_count()} × {cpu}, {round(os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30)} GiB",
        f"{platform.platform()}; Python {platform.python_version()}; grpcio {version('grpcio')}; "
        f"protobuf {version('protobuf')}; redis-py {version('redis')}; hiredis {version('hiredis')}; "
        f"redis-server {redis_version}; h2load {h2load_version}",
    ]


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def fmt(value: float, digits: int = 2) -> str:
    return "–" if value != value else f"{value:,.{digits}f}"  # NaN → dash


def table(h: Harness, samples: dict[Key, Sample]) -> list[str]:
    rows = [
        "| lines | concurrency | no-op req/s | gateway req/s | **gateway / no-op** | data ceiling req/s "
        "| gateway p50 / p99 / p99.9 ms | no-op p50 / p99 / p99.9 ms | decision p50 / p99 ms "
        "| gateway CPU µs/req | no-op CPU µs/req | no-op / gateway CPU |",
        "|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---:|",
    ]
    for size in h.args.sizes:
        for concurrency in h.args.concurrency:
            gw, noop = samples[("gateway", size, concurrency)], samples[("noop", size, concurrency)]
            data = samples.get(("data", size, concurrency), Sample())
            ratio = median(gw.throughput) / median(noop.throughput)
            rows.append(
                f"| {size:,} | {concurrency} | {fmt(median(noop.throughput), 0)} | {fmt(median(gw.throughput), 0)} "
                f"| **{ratio:.0%}** | {fmt(median(data.throughput), 0)} "
                f"| {fmt(median(gw.p50))} / {fmt(median(gw.p99))} / {fmt(median(gw.p999))} "
                f"| {fmt(median(noop.p50))} / {fmt(median(noop.p99))} / {fmt(median(noop.p999))} "
                f"| {fmt(median(gw.decision_p50), 3)} / {fmt(median(gw.decision_p99), 3)} "
                f"| {fmt(median(gw.cpu_us_per_request), 0)} | {fmt(median(noop.cpu_us_per_request), 0)} "
                f"| {median(noop.cpu_us_per_request) / median(gw.cpu_us_per_request):.0%} |"
            )
    return rows


def scaling_table(results: list[Scaling]) -> list[str]:
    one = median(results[0].throughput)
    rows = [
        "| workers | req/s | × one worker | p99 ms | gateway cores used | req/s per gateway core "
        "| h2load cores | redis cores |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in results:
        per_core = [t / c for t, c in zip(s.throughput, s.gateway_cores, strict=True) if c]
        rows.append(
            f"| {s.workers} | {fmt(median(s.throughput), 0)} | {median(s.throughput) / one:.2f}× "
            f"| {fmt(median(s.p99))} | {fmt(median(s.gateway_cores))} | {fmt(median(per_core), 0)} "
            f"| {fmt(median(s.load_cores))} | {fmt(median(s.redis_cores))} |"
        )
    return rows


def write_section(path: Path, lines: list[str], begin: str = SECTION_BEGIN, end: str = SECTION_END) -> None:
    """Replace one harness's section of RESULTS.md (between its markers), keeping every other."""
    section = "\n".join([begin, *lines, end])
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.write_text(text)


def report(h: Harness, samples: dict[Key, Sample], scaling: list[Scaling] | None,
           load_before: str, load_after: str, started: float) -> list[str]:  # fmt: skip
    command = "python -m benchmarks.bench " + shlex.join(h.args.argv)
    load, server = sorted(h.load_cores), sorted(h.server_cores)
    out = [
        "## Gateway against its ceilings (`benchmarks/bench.py`)",
        "",
        f"Command: `{command.strip()}` (what `make bench` runs). "
        f"Taken {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC in {time.monotonic() - started:.0f} s; "
        f"load average (1/5/15 min) before {load_before}, after {load_after}.",
        "",
        *(f"- {fact}" for fact in machine_facts()),
        f"- Medians of {h.args.runs} interleaved runs; each run {h.args.warmup:g} s warm-up + "
        f"{h.args.duration:g} s measured, closed loop (h2load: up to 8 connections × streams = concurrency).",
        f"- Pinning: gateway, no-op server and data ceiling on core(s) {server}; h2load and redis-server "
        f"on core(s) {load}. Event loop: {h.args.event_loop}. Data: {h.args.staff:,} staff "
        "(synthetic export, loaded by the real loader); bills mostly of normal staff with ~3 % "
        "lines of suspended, terminated or unknown staff.",
        "- The last column is the same ratio in CPU terms (server CPU per call, from /proc): "
        "unlike throughput it does not move when other work on the machine takes the server's core.",
        "- Latencies are client-side (h2load, per call); decision p50/p99 is the gateway's "
        "`sgw_decision_seconds` histogram (receive → reply ready) over the run, interpolated "
        "within buckets as PromQL's `histogram_quantile` does.",
        "",
        *table(h, samples),
    ]
    if any(s.failed for s in samples.values()):
        out += ["", f"Failed calls: { {k: s.failed for k, s in samples.items() if s.failed} }"]
    if scaling:
        out += [
            "",
            f"### `serve --workers 2` against `--workers 1` ({h.args.scaling_size} lines, "
            f"concurrency {h.args.scaling_concurrency}, 16 connections, nothing pinned)",
            "",
            "Both configurations share the machine's cores with h2load and redis-server alike; "
            "the CPU columns say how much of the two cores each side used (CPU seconds / wall "
            "seconds), so the cores left for the gateway are 2 − h2load − redis − whatever else "
            "ran on the machine; req/s per gateway core shows whether a second worker serves as "
            "much per core as the first.",
            "",
            *scaling_table(scaling),
        ]
    return [*out, "", "### Against the targets (this run)", "", *targets(h, samples, scaling)]


def _met(ok: bool) -> str:
    return "met" if ok else "**not met**"


def targets(h: Harness, samples: dict[Key, Sample], scaling: list[Scaling] | None) -> list[str]:
    """The issue's targets, read off this run's medians (NaN-safe: a missing point says so)."""
    out = []
    if 20 in h.args.sizes:
        ratios = {
            c: median(samples[("gateway", 20, c)].throughput) / median(samples[("noop", 20, c)].throughput)
            for c in h.args.concurrency
        }
        cpu = {
            c: median(samples[("noop", 20, c)].cpu_us_per_request)
            / median(samples[("gateway", 20, c)].cpu_us_per_request)
            for c in h.args.concurrency
        }
        shown = ", ".join(f"{r:.0%} at concurrency {c} (CPU ratio {cpu[c]:.0%})" for c, r in ratios.items())
        out.append(
            f"- 20-line throughput ≥ 80 % of the no-op server's: {shown} — {_met(min(ratios.values()) >= 0.8)}"
        )
    for size, bound in ((20, 1.0), (3000, 20.0)):
        if size in h.args.sizes:
            p99 = {c: median(samples[("gateway", size, c)].decision_p99) for c in h.args.concurrency}
            shown = ", ".join(f"{v:.2f} ms at concurrency {c}" for c, v in p99.items())
            met = [c for c, v in p99.items() if v <= bound]
            verdict = (
                _met(bool(met))
                if len(met) in (0, len(p99))
                else f"met at concurrency {', '.join(map(str, met))} only"
            )
            out.append(f"- decision p99 ≤ {bound:g} ms for {size:,} lines: {shown} — {verdict}")
    if scaling:
        factor = median(scaling[1].throughput) / median(scaling[0].throughput)
        out.append(f"- 2 workers ≥ 1.5 × one worker: {factor:.2f}× — {_met(factor >= 1.5)}")
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    def ints(value: str) -> list[int]:
        return [int(v) for v in value.split(",") if v]

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=ints, default=[1, 20, 200, 3000], help="lines per request")
    p.add_argument("--concurrency", type=ints, default=[1, 8, 32], help="concurrent calls")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per point")
    p.add_argument("--staff", type=int, default=20_000, help="synthetic population size")
    p.add_argument("--event-loop", default=DEFAULT_EVENT_LOOP)
    p.add_argument("--scaling", action="store_true", help="also compare --workers 2 with --workers 1")
    p.add_argument("--scaling-size", type=int, default=20)
    p.add_argument("--scaling-concurrency", type=int, default=64)
    p.add_argument("--no-data-ceiling", action="store_true")
    p.add_argument("--output", type=Path, default=RESULTS, help="markdown file to update")
    p.add_argument("--workdir", type=Path, default=None, help="keep logs and data here")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    loadgen.h2load_binary()
    started, load_before = time.monotonic(), load_average()
    with contextlib.ExitStack() as stack:
        workdir = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sgw-bench-")))
        workdir.mkdir(parents=True, exist_ok=True)
        load_cores, server_cores = processes.core_split()
        h = Harness(args, workdir, load_cores, server_cores)
        redis_service = processes.start_redis(workdir, load_cores)
        stack.callback(redis_service.stop)
        h.redis_url = f"redis://127.0.0.1:{redis_service.port}/0"
        print(f"loading {args.staff:,} synthetic staff through the loader…", flush=True)
        pool = StaffPool.from_staff_csv(load_demo(h.redis_url, workdir, args.staff))
        bodies = write_bodies(pool, sorted({*args.sizes, args.scaling_size}), workdir)
        probe = bodies[min(bodies)].request
        servers: list[Service] = []
        stack.callback(lambda: [s.stop() for s in servers])
        gw_port, gw_metrics, noop_port = (processes.free_port() for _ in range(3))

        def start(command: processes.ServerCommand, port: int, metrics_port: int) -> Service:
            return processes.start_server(command, port, metrics_port, probe, server_cores, workdir)

        gateway = start(
            processes.gateway_command(h.redis_url, gw_port, gw_metrics, workdir / "state", event_loop=args.event_loop),
            gw_port, gw_metrics,
        )  # fmt: skip
        servers.append(gateway)
        servers.append(start(processes.noop_command(noop_port, args.event_loop), noop_port, 0))
        print(f"measuring on cores: servers {sorted(server_cores)}, load {sorted(load_cores)}", flush=True)
        samples = measure_all(h, gateway, servers[1], bodies)
        for s in servers:
            s.stop()
        scaling = (
            measure_scaling(h, redis_service, bodies[args.scaling_size], probe) if args.scaling else None
        )
        lines = report(h, samples, scaling, load_before, load_average(), started)
    print("\n".join(lines))
    write_section(args.output, lines)
    print(f"\nwritten to {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
