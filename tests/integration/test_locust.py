"""The Locust file runs headless against a real gateway, writes its reports, and its exit code
follows the pass/fail bounds. Bounds are set so that only a broken run can fail: nothing
here depends on how fast this machine is."""

from __future__ import annotations

import asyncio
import csv
import datetime as dt
import sys
from pathlib import Path

from gateway.server import GatewayApp
from loader.demo import DemoSet, load_order
from loader.publish import Publisher
from loader.sync import SyncOptions, sync_file
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]


async def run_locust(host: str, staff_csv: Path, out: Path, *extra: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "locust"), "-f", str(ROOT / "benchmarks" / "locustfile.py"),
        "--headless", "--users", "4", "--spawn-rate", "4", "--run-time", "3s", "--host", host,
        "--staff-csv", str(staff_csv), "--csv", str(out), "--html", f"{out}.html", "--only-summary", *extra,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd="/",
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, output.decode()


async def test_locust_mix_passes_and_reports(
    gateway: GatewayApp, publisher: Publisher, tmp_path: Path
) -> None:
    paths = DemoSet(dt.date.today(), 300).write(tmp_path / "demo")
    for kind, path in load_order(paths):
        assert sync_file(path, publisher, SyncOptions(allow_incomplete=True, kind=kind)).outcome == 0
    out = tmp_path / "report"
    code, output = await run_locust(
        f"127.0.0.1:{gateway.port}",
        paths["staff"],
        out,
        "--max-p99-ms",
        "60000",
        "--max-discharge-p99-ms",
        "60000",
    )
    assert code == 0, output
    assert "PASS" in output
    with open(f"{out}_stats.csv", encoding="utf-8") as fh:
        rows = {row["Name"]: row for row in csv.DictReader(fh)}
    assert int(rows["outpatient"]["Request Count"]) > 0
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert Path(f"{out}.html").stat().st_size > 0


async def test_locust_fails_the_run_when_calls_fail(tmp_path: Path) -> None:
    paths = DemoSet(dt.date.today(), 50).write(tmp_path / "demo")
    nothing_listens = f"127.0.0.1:{free_port()}"
    code, output = await run_locust(nothing_listens, paths["staff"], tmp_path / "report")
    assert code == 1, output
    assert "FAIL: failure ratio 100.00% > 1.00%" in output
