"""Where a gateway process spends its CPU under load: py-spy samples, summed by component.

Same setup as ``bench.py`` (private redis-server, synthetic data through the loader, the
gateway pinned to its own core, h2load on the other); py-spy samples the gateway while h2load
drives one bill size, and the samples' innermost frames are summed by the component they
belong to. gRPC's server core is compiled (Cython): its time shows as the asyncio callback
that runs it and as its polling thread.

    python -m benchmarks.profile --lines 20 --concurrency 8      # needs py-spy (pip install py-spy)
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import bench, loadgen, processes
from benchmarks.workload import StaffPool

# Innermost frames that stand for compiled code: uvloop's loop and gRPC's Cython core run
# under the frame that entered them (``asyncio.run``, or asyncio's ``Handle._run``).
COMPILED = ("asyncio/runners.py", "asyncio/events.py", "uvloop")
CORE = "gRPC core + event loop (compiled: grpc Cython, uvloop)"
POLLER = "gRPC completion-queue poller thread"
# (component, substring of a frame), matched from the innermost frame outwards.
COMPONENTS = (
    ("Redis client (redis-py)", "redis/"),
    ("request parsing (settlement.parse_request)", "parse_request"),
    ("reply building (settlement.build_response)", "build_response"),
    ("rules (rules.py)", "rules.py"),
    ("record decoding (records.py)", "records.py"),
    ("store and record cache", "gateway/store.py"),
    ("store and record cache", "gateway/cache.py"),
    ("metrics", "gateway/metrics.py"),
    ("metrics", "grpc_metrics.py"),
    ("metrics", "prometheus_client"),
    ("audit log", "gateway/audit.py"),
    ("servicer", "gateway/servicer.py"),
)


def component(stack: list[str]) -> str:
    innermost = stack[-1]
    if "threading.py" in innermost:
        return POLLER
    if any(marker in innermost for marker in COMPILED):
        return CORE
    for frame in reversed(stack):
        for name, marker in COMPONENTS:
            if marker in frame:
                return name
    return "other (Python asyncio, stdlib)"


def summarize(raw: Path) -> list[tuple[str, float]]:
    by_component: collections.Counter[str] = collections.Counter()
    total = 0
    for row in raw.read_text().splitlines():
        stack, _, count = row.rpartition(" ")
        if not count.isdigit():
            continue
        total += int(count)
        by_component[component(stack.split(";"))] += int(count)
    return [(name, 100.0 * n / total) for name, n in by_component.most_common()] if total else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--staff", type=int, default=20_000)
    parser.add_argument("--event-loop", default="")
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy not found: pip install py-spy")
    load_cores, server_cores = processes.core_split()
    with tempfile.TemporaryDirectory(prefix="sgw-profile-") as tmp:
        workdir = Path(tmp)
        redis_service = processes.start_redis(workdir, load_cores)
        try:
            url = f"redis://127.0.0.1:{redis_service.port}/0"
            pool = StaffPool.from_staff_csv(bench.load_demo(url, workdir, args.staff))
            body = bench.write_bodies(pool, [args.lines], workdir)[args.lines]
            port, metrics_port = processes.free_port(), processes.free_port()
            command = processes.gateway_command(
                url, port, metrics_port, workdir / "state", event_loop=args.event_loop
            )
            gateway = processes.start_server(command, port, metrics_port, body.request, server_cores, workdir)
            try:
                raw = workdir / "samples.txt"
                sampler = subprocess.Popen(
                    [spy, "record", "--pid", str(gateway.proc.pid), "--duration", f"{int(args.seconds)}",
                     "--rate", "500", "--format", "raw", "--nonblocking", "--output", str(raw)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=processes.pinned(load_cores),
                )  # fmt: skip
                result = loadgen.run_h2load(
                    port, body.framed, concurrency=args.concurrency, duration=args.seconds, warmup=0.5,
                    workdir=workdir, preexec=processes.pinned(load_cores),
                )  # fmt: skip
                sampler.wait(timeout=60)
            finally:
                gateway.stop()
        finally:
            redis_service.stop()
        print(f"{args.lines} lines, concurrency {args.concurrency}: {result.throughput:,.0f} req/s")
        print("| component | share of the gateway's CPU samples |")
        print("|---|---:|")
        for name, share in summarize(raw):
            print(f"| {name} | {share:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
