"""CPU the audit trail costs per 20-line bill: sealing, spooling and queueing on the answer's
path plus the writer's batched XADDs, against a redis-server of its own.

The end-to-end ``bench.py`` on a shared two-core machine varies by more than the audit costs,
so this measures the audit path alone, in process CPU time. For an A/B, run it from two
checkouts with the same interpreter (``python -m`` imports ``gateway`` from the current
directory)::

    (cd /path/to/old && python -m benchmarks.audit_cost) ; python -m benchmarks.audit_cost
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from gateway.audit import AuditLog
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.metrics import GatewayMetrics
from gateway.policy import Reason, Verdict
from gateway.redis_client import async_client
from gateway.rules import ACCEPTED, Decision
from tests.conftest import free_port
from tests.exports import HOSPITAL, line, request

SUSPENDED = "D330902000002"


def record_arguments(bill: Any) -> dict[str, Any]:
    """What the servicer passes besides the answer (parsed lines, evidence, caller), when this
    checkout's ``AuditLog.record`` takes them."""
    if "evidence" not in inspect.signature(AuditLog.record).parameters:
        return {}
    from gateway.records import InstitutionPeriod, InstitutionRecord, StaffPeriod, StaffRecord, Status
    from gateway.rules import Evidence, RulesConfig
    from gateway.settlement import parse_request

    staff = StaffRecord(
        (StaffPeriod(HOSPITAL, "A03", Status.NORMAL, 19000, 20400),
         StaffPeriod(HOSPITAL, "A03", Status.SUSPENDED, 20454, 2**31))
    )  # fmt: skip
    institution = InstitutionRecord((InstitutionPeriod(Status.NORMAL, 18000, 2**31),))
    return {
        "lines": parse_request(bill, RulesConfig(), 100).lines,
        "evidence": Evidence(HOSPITAL, institution, None, {SUSPENDED: staff}),
        "caller": lambda: "ipv4:127.0.0.1:51234",
    }


async def measure(url: str, bills: int, audited: int) -> float:
    client = async_client(url, 5.0)
    await client.delete(Keys().audit)
    options: dict[str, Any] = {}
    if "spool_dir" in inspect.signature(AuditLog.__init__).parameters:
        options["spool_dir"] = Path(tempfile.mkdtemp(prefix="sgw-audit-cost-"))
    log = AuditLog(client, Keys(), GatewayMetrics(CollectorRegistry()), queue_lines=10**7, **options)
    bill = request(*[line(str(i), SUSPENDED) for i in range(20)], request_id="rq-1")
    bill.settlement_id = "MDTRT-1"
    reject = Decision(
        Verdict.REJECT, Reason.STAFF_SUSPENDED, f"医保医师 {SUSPENDED} 于 2026-04-01 处于暂停状态", "五（二）"
    )
    decisions = [reject] * audited + [ACCEPTED] * (20 - audited)
    extra = record_arguments(bill)
    log.start()
    started = time.process_time()
    for i in range(bills):
        log.record(bill, decisions, "20261124T041327Z-d2ad6c", False, **extra)
        if i % 200 == 199:
            await asyncio.sleep(0)  # let the writer run, as between calls in the server
    while log.written < bills * audited:
        await asyncio.sleep(0.001)
    cpu = time.process_time() - started
    await log.stop()
    await client.aclose()
    return cpu / bills * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bills", type=int, default=20000)
    parser.add_argument("--audited", type=int, default=3, help="audited lines per 20-line bill")
    args = parser.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as workdir:
        server = subprocess.Popen(
            [find_redis_server(), "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )
        try:
            time.sleep(0.5)
            micros = asyncio.run(measure(f"redis://127.0.0.1:{port}/0", args.bills, args.audited))
        finally:
            server.terminate()
            server.wait()
    print(f"{Path.cwd()}: {micros:.1f} µs CPU per 20-line bill with {args.audited} audited line(s)")


if __name__ == "__main__":
    main()
