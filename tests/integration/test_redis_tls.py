"""``rediss://``: the loader and the gateway talk to a redis-server that only speaks TLS and
requires client certificates; the CA and certificates are made at run time."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
import trustme

from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.redis_client import sync_client
from gateway.server import GatewayApp
from loader.publish import Publisher
from loader.sync import SyncOptions, sync_file
from tests import exports
from tests.conftest import RedisProcess, free_port
from tests.exports import DOCTOR, institution_row, line, request, staff_row


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[str]:
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    client = ca.issue_cert("sgw-gateway.example")
    files = {
        "ca.pem": ca.cert_pem, "server.pem": server.cert_chain_pems[0], "server.key": server.private_key_pem,
        "client.pem": client.cert_chain_pems[0], "client.key": client.private_key_pem,
    }  # fmt: skip
    for name, blob in files.items():
        blob.write_to_path(str(tmp_path / name))
    port = free_port()
    url = (
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        f"&ssl_certfile={tmp_path / 'client.pem'}&ssl_keyfile={tmp_path / 'client.key'}"
    )
    process = RedisProcess(
        find_redis_server(), port, tmp_path,
        ("--port", "0", "--tls-port", str(port), "--tls-cert-file", str(tmp_path / "server.pem"),
         "--tls-key-file", str(tmp_path / "server.key"), "--tls-ca-cert-file", str(tmp_path / "ca.pem")),
        ready_url=url,
    )  # fmt: skip
    process.start()
    yield url
    process.stop()


async def test_loader_and_gateway_over_tls(tls_redis: str, settings: Settings, tmp_path: Path) -> None:
    client = sync_client(tls_redis)
    for kind, rows in (("institution", [institution_row()]), ("staff", [staff_row()])):
        path = exports.write_csv(tmp_path / f"{kind}.csv", exports.HEADERS[kind], rows)
        assert (
            sync_file(path, Publisher(client, Keys()), SyncOptions(allow_incomplete=True, kind=kind)).outcome
            == 0
        )  # type: ignore[arg-type]
    client.close()

    plain = tls_redis.replace("rediss://", "redis://").split("?")[0]
    with pytest.raises(redis.exceptions.ConnectionError):
        redis.Redis.from_url(plain, socket_timeout=1).ping()  # no plain-text port at all

    app = GatewayApp(replace(settings, redis_url=tls_redis), tls_redis)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            reply = await pb_grpc.SettlementGatewayStub(channel).Validate(request(line("1", DOCTOR)))
        assert reply.verdicts[0].reason == pb.OK and not reply.degraded
    finally:
        await app.stop(0.5)
