"""A gateway process's resident memory, idle and after its record cache has seen every staff
code of a population: what the Kubernetes manifests' memory request is sized from.

Real processes: a redis-server, the loader's publish of ``--staff`` doctors, one
``settlement-gateway serve``, closed-loop callers sending 20-line bills that cycle through
every code for ``--seconds``; VmRSS is read from /proc.

    python -m benchmarks.gateway_rss --staff 20000 --seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path

from gateway.embedded import find_redis_server
from tests.conftest import RedisProcess, free_port
from tests.faultload import GatewayProcess, Load, bills, load_population, staff_codes


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def measure(staff: int, seconds: float) -> tuple[float, float, int]:
    with tempfile.TemporaryDirectory(prefix="sgw-rss-") as tmp:
        workdir = Path(tmp)
        server = RedisProcess(find_redis_server(), free_port(), workdir)
        server.start()
        gateway = GatewayProcess(
            {"SGW_REDIS_URL": server.url, "SGW_STATE_DIR": str(workdir / "state")}, workdir
        )
        try:
            load_population(server.url, workdir, staff)
            gateway.start(free_port(), free_port())
            assert gateway.proc is not None
            idle = rss_mib(gateway.proc.pid)
            load = Load(f"127.0.0.1:{gateway.port}", bills(staff_codes(staff), 20, "rss"), concurrency=16)
            running = asyncio.create_task(load.run())
            await asyncio.sleep(seconds)
            load.stop.set()
            calls = len(await running)
            return idle, rss_mib(gateway.proc.pid), calls
        finally:
            gateway.stop()
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gateway_rss", description=__doc__.split("\n")[0])
    p.add_argument("--staff", type=int, default=20000)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    idle, loaded, calls = asyncio.run(measure(args.staff, args.seconds))
    print(
        f"staff {args.staff}: RSS idle {idle:.0f} MiB, after {calls} calls over every code {loaded:.0f} MiB"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
