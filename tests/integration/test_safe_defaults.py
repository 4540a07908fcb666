"""Safe defaults: a plaintext listener other hosts can reach is said aloud (log line, gauge),
/metrics can require client certificates, and GetStatus shows no loader-host paths."""

from __future__ import annotations

import asyncio
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest
import trustme

from gateway.config import Settings
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp, reachable_from_other_hosts
from tests.conftest import Loader, free_port
from tests.exports import institution_row, staff_row
from tests.faultload import GatewayProcess
from tests.scrape import parse, scrape

PROMETHEUS_ID, HOSPITAL_ID = "prometheus.agency.example", "his.h33090200017.example"


@pytest.fixture
def loaded(load: Loader) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row()])


async def test_get_status_names_the_files_without_their_directories(
    loaded: None, stub: pb_grpc.SettlementGatewayStub, tmp_path: Path
) -> None:
    status = await stub.GetStatus(pb.GetStatusRequest())
    assert sorted(status.data_sources) == ["institution-0.csv", "staff-1.csv"]
    assert not any(str(tmp_path) in s or "/" in s for s in status.data_sources)


@pytest.mark.parametrize(
    ("address", "reachable"),
    [
        ("[::]:50051", True),
        ("0.0.0.0:50051", True),
        (":50051", True),
        ("10.1.2.3:50051", True),
        ("gateway.example:50051", True),
        ("127.0.0.1:50051", False),
        ("127.0.0.2:9464", False),
        ("[::1]:50051", False),
        ("localhost:50051", False),
        ("unix:/run/sgw.sock", False),
    ],
)
def test_which_listen_addresses_other_hosts_can_reach(address: str, reachable: bool) -> None:
    assert reachable_from_other_hosts(address) is reachable


def plaintext_gauges(metrics_port: int) -> dict[str, float | None]:
    s = scrape(metrics_port)
    return {name: s.value("sgw_plaintext_listeners", listener=name) for name in ("grpc", "metrics")}


def test_plaintext_on_every_interface_is_logged_and_gauged(redis_url: str, tmp_path: Path) -> None:
    env = {"SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state")}
    metrics_port = free_port()
    # GatewayProcess passes loopback addresses first; these later flags win.
    everywhere = ("--listen", f"0.0.0.0:{free_port()}", "--metrics-listen", f"0.0.0.0:{metrics_port}")
    exposed = GatewayProcess(env, tmp_path, everywhere)
    exposed.start(free_port(), free_port())
    try:
        warnings = [line for line in exposed.log_lines() if "without TLS" in str(line.get("msg"))]
        assert sorted(str(w["listener"]) for w in warnings) == ["grpc", "metrics"]
        assert all(w["level"] == "warning" for w in warnings)
        assert plaintext_gauges(metrics_port) == {"grpc": 1.0, "metrics": 1.0}
    finally:
        exposed.stop()

    local = GatewayProcess(env, tmp_path)
    local_metrics = free_port()
    local.start(free_port(), local_metrics)
    try:
        assert not [line for line in local.log_lines() if "without TLS" in str(line.get("msg"))]
        assert plaintext_gauges(local_metrics) == {"grpc": 0.0, "metrics": 0.0}
    finally:
        local.stop()


# -- /metrics over TLS with client certificates -------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_metrics(settings: Settings, ca: trustme.CA, tmp_path: Path) -> AsyncIterator[GatewayApp]:
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "metrics.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "metrics.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    app = GatewayApp(
        replace(
            settings,
            metrics_tls_cert=tmp_path / "metrics.pem",
            metrics_tls_key=tmp_path / "metrics.key",
            metrics_tls_client_ca=tmp_path / "ca.pem",
            metrics_tls_clients=frozenset({PROMETHEUS_ID}),
        ),
        settings.redis_url or "",
    )
    await app.start()
    yield app
    await app.stop(0.5)


def client_context(ca: trustme.CA, identity: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=ca.cert_pem.bytes().decode())
    if identity is not None:
        ca.issue_cert(identity).configure_cert(context)
    return context


def get_metrics(port: int, context: ssl.SSLContext) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/metrics", timeout=10, context=context
        ) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


async def test_metrics_over_tls_need_an_allowed_client_certificate(
    tls_metrics: GatewayApp, ca: trustme.CA
) -> None:
    port = tls_metrics.metrics_port
    status, body = await asyncio.to_thread(get_metrics, port, client_context(ca, PROMETHEUS_ID))
    assert status == 200
    assert parse(body).value("sgw_plaintext_listeners", listener="metrics") == 0.0

    # A certificate from the same CA but not on the list (a hospital's): refused.
    status, body = await asyncio.to_thread(get_metrics, port, client_context(ca, HOSPITAL_ID))
    assert status == 403 and "SGW_METRICS_TLS_CLIENTS" in body

    # No client certificate, or plain HTTP: no metrics.
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        await asyncio.to_thread(get_metrics, port, client_context(ca, None))
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        await asyncio.to_thread(urllib.request.urlopen, f"http://127.0.0.1:{port}/metrics", None, 10)


async def test_a_client_that_never_shakes_hands_holds_no_scrape_up(
    tls_metrics: GatewayApp, ca: trustme.CA
) -> None:
    silent = [socket.create_connection(("127.0.0.1", tls_metrics.metrics_port)) for _ in range(3)]
    try:
        status, _ = await asyncio.to_thread(
            get_metrics, tls_metrics.metrics_port, client_context(ca, PROMETHEUS_ID)
        )
        assert status == 200
    finally:
        for sock in silent:
            sock.close()


async def test_an_unreadable_metrics_certificate_stops_the_start(settings: Settings, tmp_path: Path) -> None:
    from gateway.server import StartupError

    missing = tmp_path / "nowhere.pem"
    app = GatewayApp(
        replace(settings, metrics_tls_cert=missing, metrics_tls_key=missing, metrics_tls_client_ca=missing),
        settings.redis_url or "",
    )
    with pytest.raises(StartupError, match=r"nowhere\.pem"):
        await app.start()
    await app.stop(0)
