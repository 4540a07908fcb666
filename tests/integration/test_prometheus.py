"""A real Prometheus scrapes a real gateway: the values operators query are the values the
traffic produced, the alert rules load and evaluate, and every dashboard query runs."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import grpc
import pytest

from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader, free_port
from tests.exports import DOCTOR, HOSPITAL, institution_row, line, request, staff_row
from tests.observability import dashboard_exprs, rules
from tests.prometheus import PrometheusProcess

SUSPENDED = "D330902000002"
VALIDATE = 'job="settlement-gateway",grpc_service="settlement.v1.SettlementGateway",grpc_method="Validate"'
BILLS = 20


@pytest.fixture
async def prometheus(gateway: GatewayApp, tmp_path: Path) -> AsyncIterator[PrometheusProcess]:
    server = PrometheusProcess(tmp_path / "prometheus", free_port(), [f"127.0.0.1:{gateway.metrics_port}"])
    server.workdir.mkdir()
    await asyncio.to_thread(server.start)
    # Prometheus discovers its targets a few seconds after start: traffic sent before its
    # first scrape would show as one step, not as a rate.
    await eventually(lambda: server.value('up{job="settlement-gateway"}') == 1, "the first scrape")
    yield server
    server.stop()


async def eventually(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    """Poll until ``check()`` holds (Prometheus scrapes every second)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.25)


async def test_prometheus_sees_the_traffic_the_gateway_served(
    load: Loader, gateway: GatewayApp, prometheus: PrometheusProcess
) -> None:
    assert load("institution", [institution_row()]).outcome == 0
    rows = [staff_row(), staff_row(code=SUSPENDED, status="中止", start="2026-01-01", end="2026-12-31")]
    assert load("staff", rows).outcome == 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        for i in range(BILLS):
            await stub.Validate(
                request(
                    line("1", DOCTOR, amount_fen=1000),
                    line("2", SUSPENDED, amount_fen=500),
                    line("3", SUSPENDED, amount_fen=700, emergency=True),
                    request_id=f"bill-{i}",
                )
            )
            await asyncio.sleep(0.15)  # spread over several scrapes, so rates have increases
        for _ in range(2):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.Validate(request())  # no lines
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        status = await stub.GetStatus(pb.GetStatusRequest())

    # One scrape may fall between the last OK call and the refused ones: wait for both.
    await eventually(
        lambda: (
            prometheus.value(f'sum(grpc_server_handled_total{{{VALIDATE},grpc_code="OK"}})') == BILLS
            and prometheus.value(f'sum(grpc_server_handled_total{{{VALIDATE},grpc_code="InvalidArgument"}})')
            == 2
        ),
        "the OK and the refused calls to reach Prometheus",
    )
    assert prometheus.value(f"sum(grpc_server_started_total{{{VALIDATE}}})") == BILLS + 2
    # Every code's series exists (at zero) so ratios are defined from the first scrape.
    assert prometheus.value(f'sum(grpc_server_handled_total{{{VALIDATE},grpc_code="Unavailable"}})') == 0

    def lines(verdict: str, reason: str) -> float | None:
        return prometheus.value(f'sgw_lines_total{{verdict="{verdict}",reason="{reason}"}}')

    assert lines("ACCEPT", "OK") == BILLS
    assert lines("REJECT", "STAFF_SUSPENDED") == BILLS
    assert lines("ACCEPT_EMERGENCY", "STAFF_SUSPENDED") == BILLS
    assert prometheus.value('sgw_amount_fen_total{verdict="REJECT",direction="charge"}') == BILLS * 500
    assert (
        prometheus.value('sgw_amount_fen_total{verdict="ACCEPT_EMERGENCY",direction="charge"}') == BILLS * 700
    )
    by_institution = prometheus.query("sum by (institution, verdict) (sgw_institution_lines_total)")
    assert {
        (s["metric"]["institution"], s["metric"]["verdict"], float(s["value"][1])) for s in by_institution
    } == {
        (HOSPITAL, "ACCEPT", BILLS),
        (HOSPITAL, "REJECT", BILLS),
        (HOSPITAL, "ACCEPT_EMERGENCY", BILLS),
    }

    # The latency histogram: every call in the count and in +Inf, buckets from 100 µs up.
    assert prometheus.value(f"grpc_server_handling_seconds_count{{{VALIDATE}}}") == BILLS + 2
    buckets = prometheus.query(f"grpc_server_handling_seconds_bucket{{{VALIDATE}}}")
    by_le = sorted((float(s["metric"]["le"]), float(s["value"][1])) for s in buckets)
    assert by_le[0][0] == 0.0001 and by_le[-1] == (math.inf, BILLS + 2)
    assert [n for _, n in by_le] == sorted(n for _, n in by_le)
    median = prometheus.value(
        f"histogram_quantile(0.5, sum by (le) (grpc_server_handling_seconds_bucket{{{VALIDATE}}}))"
    )
    assert median is not None and 0 < median < math.inf

    # Data freshness: the as-of time is the published one, the age is measured at the scrape.
    as_of = status.data_as_of.ToNanoseconds() / 1e9
    assert prometheus.value("sgw_data_as_of_timestamp_seconds") == pytest.approx(as_of, abs=1e-6)
    [age] = prometheus.query("sgw_data_age_seconds")
    scraped_at, value = float(age["value"][0]), float(age["value"][1])
    assert value == pytest.approx(scraped_at - as_of, abs=1.5)
    assert prometheus.value(f'sgw_data_version_info{{version="{status.data_version}"}}') == 1
    assert prometheus.value('sgw_loader_rows{kind="staff"}') == 2

    # The alert rules loaded and evaluate cleanly against the real series.
    await eventually(
        lambda: (
            prometheus.value(f'institution:sgw_staff_code_match:ratio_rate1h{{institution="{HOSPITAL}"}}')
            == 1
        ),
        "the recording rules to evaluate",
        timeout=60,
    )
    groups = prometheus.api("rules")["groups"]
    evaluated = [rule for group in groups for rule in group["rules"]]
    assert len(evaluated) == len(list(rules()))  # every rule in the file loaded
    assert [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"] == []
    firing = {r["name"] for r in evaluated if r.get("state") == "firing"}
    assert firing == set()

    # Every dashboard query is valid PromQL that Prometheus runs, and the panels have data.
    empty = []
    for title, expr in dashboard_exprs():
        if not prometheus.query(expr):
            empty.append(title)
    # Only panels about things this traffic did not do may be empty.
    assert set(empty) <= {
        "Stream messages", "Redis errors", "Degraded answers", "Audit records",
        "Loader watch: files by outcome", "Loader watch: rows per hour", "Loader watch: freshness and backlog",
    }, empty  # fmt: skip
