"""The same key layout, scripts and commands on a real three-node Redis Cluster.

Every key carries the namespace hash tag, so the loader's commit scripts and the gateway's
read script are single-slot; this test proves a cluster accepts them end to end.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
import redis
from redis.cluster import RedisCluster
from redis.crc import key_slot

from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.redis_client import sync_client
from gateway.server import GatewayApp
from loader.publish import Publisher
from loader.sync import Outcome, SyncOptions, sync_file
from tests.conftest import RedisProcess, free_port
from tests.exports import HEADERS, institution_row, line, request, staff_row, write_csv

CLUSTER_SLOTS = 16384
BUS_PORT_OFFSET = 10000  # a cluster node also listens on port + 10000


def free_cluster_port() -> int:
    """A free port whose cluster-bus companion is a valid, free port too."""
    while True:
        port = free_port()
        if port + BUS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
            except OSError:
                continue
        return port


def _assign_slots(ports: list[int]) -> None:
    """Split the slots evenly and introduce the nodes (what `redis-cli --cluster create` does)."""
    per_node = CLUSTER_SLOTS // len(ports)
    clients = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
    for i, client in enumerate(clients):
        last = CLUSTER_SLOTS - 1 if i == len(ports) - 1 else (i + 1) * per_node - 1
        client.execute_command("CLUSTER ADDSLOTS", *range(i * per_node, last + 1))
    for client in clients[1:]:
        client.execute_command("CLUSTER MEET", "127.0.0.1", ports[0])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(c.cluster("INFO").get("cluster_state") == "ok" for c in clients):
            break
        time.sleep(0.1)
    else:
        raise RuntimeError("cluster did not converge")
    for client in clients:
        client.close()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = find_redis_server()
    nodes = []
    try:
        for _ in range(3):
            workdir = tmp_path_factory.mktemp("cluster")
            node = RedisProcess(binary, free_cluster_port(), workdir, ("--cluster-enabled", "yes",
                                "--cluster-config-file", str(workdir / "nodes.conf")))  # fmt: skip
            nodes.append(node)
            node.start()
        _assign_slots([n.port for n in nodes])
        yield "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    finally:
        for node in nodes:
            node.stop()


@pytest.fixture
def cluster_url(cluster: str) -> str:
    client = sync_client(cluster)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    client.close()
    return cluster


@pytest.fixture
async def cluster_gateway(cluster_url: str, tmp_path: Path) -> AsyncIterator[GatewayApp]:
    settings = Settings(listen="127.0.0.1:0", metrics_listen="127.0.0.1:0", redis_url=cluster_url,
                        state_dir=tmp_path)  # fmt: skip
    app = GatewayApp(settings, cluster_url)
    await app.start()
    yield app
    await app.stop(0.5)


def test_keys_of_one_namespace_share_a_slot() -> None:
    keys = Keys()
    names = [keys.live, keys.history, keys.retired, keys.lock, keys.version_meta("v1"),
             keys.table("staff", "t1"), keys.table("institution", "t2"), keys.table("department", "t3")]  # fmt: skip
    assert len({key_slot(n.encode()) for n in names}) == 1
    assert key_slot(Keys("region2").live.encode()) != key_slot(keys.live.encode())


async def test_publish_and_validate_on_a_cluster(
    cluster_url: str, cluster_gateway: GatewayApp, tmp_path: Path
) -> None:
    client = sync_client(cluster_url)
    publisher = Publisher(client, Keys())
    for kind, rows in (("institution", [institution_row()]),
                       ("staff", [staff_row(), staff_row(code="D330902000002", status="中止", start="2026-03-01")])):  # fmt: skip
        path = write_csv(tmp_path / f"{kind}.csv", HEADERS[kind], rows)
        assert (
            sync_file(path, publisher, SyncOptions(allow_incomplete=True, kind=kind)).outcome
            is Outcome.PUBLISHED
        )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{cluster_gateway.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        reply = await stub.Validate(
            request(line("1"), line("2", "D330902000002"), line("3", "D330902999999"))
        )
        assert [pb.Reason.Name(v.reason) for v in reply.verdicts] == [
            "OK",
            "STAFF_SUSPENDED",
            "STAFF_UNREGISTERED",
        ]
        delta = write_csv(
            tmp_path / "delta.csv", HEADERS["staff"], [staff_row(status="解除", start="2026-01-01")]
        )
        result = sync_file(delta, publisher, SyncOptions(allow_incomplete=True, kind="staff", delta=True))
        assert result.outcome is Outcome.PUBLISHED
        again = await stub.Validate(request(line("1")))
        assert again.verdicts[0].reason == pb.STAFF_TERMINATED
        assert again.data_version == result.data_version
    assert publisher.collect_garbage(grace_seconds=0) == 0
    with contextlib.suppress(Exception):
        client.close()
