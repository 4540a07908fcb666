"""The documented Redis ACLs on a real redis-server: the loader writes, the gateway serves and
audits, and the gateway's user cannot change any data."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis

from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.server import GatewayApp
from loader.publish import Publisher
from loader.sync import SyncOptions, sync_file
from tests import exports
from tests.conftest import RedisProcess, free_port
from tests.exports import DOCTOR, institution_row, line, request, staff_row

TEMPLATE = Path(__file__).parents[2] / "deploy" / "redis" / "users.acl.template"
RENDER = TEMPLATE.with_name("render-acl")


def render_acl(gateway_password: str, loader_password: str) -> str:
    """The same substitution as deploy/redis/render-acl (checked against it below)."""
    text = "".join(
        row
        for row in TEMPLATE.read_text(encoding="utf-8").splitlines(keepends=True)
        if row.startswith("user ")
    )
    for placeholder, password in (
        ("GATEWAY_PASSWORD_SHA256", gateway_password),
        ("LOADER_PASSWORD_SHA256", loader_password),
    ):
        text = text.replace(placeholder, hashlib.sha256(password.encode()).hexdigest())
    return text


class AclRedis:
    def __init__(self, process: RedisProcess, gateway_password: str, loader_password: str) -> None:
        self.process = process
        self.gateway_url = f"redis://sgw-gateway:{gateway_password}@127.0.0.1:{process.port}/0"
        self.loader_url = f"redis://sgw-loader:{loader_password}@127.0.0.1:{process.port}/0"


@pytest.fixture
def acl_redis(tmp_path: Path) -> Iterator[AclRedis]:
    gateway_password, loader_password = secrets.token_hex(16), secrets.token_hex(16)
    rendered = subprocess.run(
        [str(RENDER)],
        env={"SGW_GATEWAY_REDIS_PASSWORD": gateway_password, "SGW_LOADER_REDIS_PASSWORD": loader_password,
             "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert rendered == render_acl(gateway_password, loader_password)
    (tmp_path / "users.acl").write_text(rendered, encoding="utf-8")
    port = free_port()
    process = RedisProcess(
        find_redis_server(), port, tmp_path, ("--aclfile", str(tmp_path / "users.acl")),
        ready_url=f"redis://sgw-gateway:{gateway_password}@127.0.0.1:{port}/0",
    )  # fmt: skip
    process.start()
    yield AclRedis(process, gateway_password, loader_password)
    process.stop()


def sync_as_loader(url: str, tmp_path: Path, kind: str, rows: list[list[str]], delta: bool = False) -> str:
    client = redis.Redis.from_url(url)
    try:
        path = exports.write_csv(tmp_path / f"{kind}-{delta}.csv", exports.HEADERS[kind], rows)
        result = sync_file(
            path, Publisher(client, Keys()), SyncOptions(allow_incomplete=True, kind=kind, delta=delta)
        )  # type: ignore[arg-type]
        assert result.outcome == 0, result.message
        return result.data_version
    finally:
        client.close()


async def test_the_gateway_user_reads_and_audits_but_cannot_write(
    acl_redis: AclRedis, settings: Settings, tmp_path: Path
) -> None:
    sync_as_loader(acl_redis.loader_url, tmp_path, "institution", [institution_row()])
    sync_as_loader(acl_redis.loader_url, tmp_path, "staff", [staff_row()])
    version = sync_as_loader(
        acl_redis.loader_url, tmp_path, "staff", [staff_row(status="中止", start="2026-01-01")], delta=True
    )

    app = GatewayApp(replace(settings, redis_url=acl_redis.gateway_url), acl_redis.gateway_url)
    await app.start()
    try:
        reply = await app_validate(app, request(line("1", DOCTOR)))
        assert reply.data_version == version and reply.verdicts[0].reason == pb.STAFF_SUSPENDED
        assert app.audit is not None
        for _ in range(200):
            if app.audit.written:
                break
            await asyncio.sleep(0.02)
        assert app.audit.written == 1  # XADD on the audit stream is allowed
    finally:
        await app.stop(0.5)

    gateway = redis.Redis.from_url(acl_redis.gateway_url)
    keys = Keys()
    live = gateway.get(keys.live)
    meta = gateway.hgetall(keys.version_meta(version))
    staff_table = keys.table("staff", __import__("orjson").loads(meta[b"tables"])["staff"])
    record = gateway.hget(staff_table, DOCTOR)
    attempts = [
        ("SET", keys.live, "forged"),
        ("DEL", keys.live),
        ("HSET", staff_table, DOCTOR, "{}"),
        ("HDEL", staff_table, DOCTOR),
        ("UNLINK", staff_table),
        ("EXPIRE", staff_table, "1"),
        ("RENAME", keys.live, "{sgw}:x"),
        ("XADD", keys.live + "x", "*", "a", "b"),  # XADD only on the audit stream
        ("EVAL", f"return redis.call('SET', '{keys.live}', 'forged')", "0"),
        ("EVALSHA", hashlib.sha1(b"return 1").hexdigest(), "1", keys.live),
        ("FLUSHALL",),
        ("CONFIG", "SET", "appendonly", "no"),
        ("SET", "elsewhere", "x"),
    ]
    for command in attempts:
        with pytest.raises(redis.exceptions.NoPermissionError):
            gateway.execute_command(*command)
    # A write inside a read-only script is refused even where the script is allowed.
    gateway.script_load("return redis.call('SET', KEYS[1], 'forged')")
    sha = hashlib.sha1(b"return redis.call('SET', KEYS[1], 'forged')").hexdigest()
    with pytest.raises(redis.exceptions.ResponseError):
        gateway.execute_command("EVALSHA_RO", sha, "1", keys.live)
    assert gateway.get(keys.live) == live and gateway.hget(staff_table, DOCTOR) == record
    assert gateway.xlen(keys.audit) == 1
    gateway.close()

    loader = redis.Redis.from_url(acl_redis.loader_url)
    for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("SET", "elsewhere", "x")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            loader.execute_command(*command)
    loader.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis.process.port).ping()  # the default user is off


async def app_validate(app: GatewayApp, req: pb.ValidateRequest) -> pb.ValidateResponse:
    import grpc

    from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        return await pb_grpc.SettlementGatewayStub(channel).Validate(req)
