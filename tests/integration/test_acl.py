"""The documented Redis ACLs on a real redis-server: the loader writes, the gateway serves and
audits, and the gateway's user cannot change any data."""

from __future__ import annotations

import asyncio
import hashlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp, StartupError
from loader.publish import Publisher
from loader.sync import SyncOptions, sync_file
from tests import exports
from tests.conftest import RedisProcess, free_port
from tests.exports import DOCTOR, department_row, institution_row, line, request, staff_row
from tests.polling import until

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


# The tests' own user, beside the shipped ones: reads INFO errorstats and edits the ACL.
ADMIN_PASSWORD = secrets.token_hex(16)
ADMIN_USER = f"user sgw-test-admin on >{ADMIN_PASSWORD} ~* &* +@all\n"


class AclRedis:
    def __init__(self, process: RedisProcess, gateway_password: str, loader_password: str) -> None:
        self.process = process
        self.gateway_url = f"redis://sgw-gateway:{gateway_password}@127.0.0.1:{process.port}/0"
        self.loader_url = f"redis://sgw-loader:{loader_password}@127.0.0.1:{process.port}/0"
        self.admin_url = f"redis://sgw-test-admin:{ADMIN_PASSWORD}@127.0.0.1:{process.port}/0"

    def admin(self) -> redis.Redis:
        return redis.Redis.from_url(self.admin_url, decode_responses=True)


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
    (tmp_path / "users.acl").write_text(rendered + ADMIN_USER, encoding="utf-8")
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
    trail = [("XTRIM", keys.audit, "MAXLEN", "0"), ("DEL", keys.audit), ("XADD", keys.audit, "*", "a", "b")]
    for command in (("FLUSHALL",), ("CONFIG", "SET", "appendonly", "no"), ("SET", "elsewhere", "x"), *trail):
        with pytest.raises(redis.exceptions.NoPermissionError):
            loader.execute_command(*command)
    loader.close()
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(port=acl_redis.process.port).ping()  # the default user is off


async def app_validate(app: GatewayApp, req: pb.ValidateRequest) -> pb.ValidateResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        return await pb_grpc.SettlementGatewayStub(channel).Validate(req)


OTHER_DOCTOR = "D330902005678"
RENEWALS = 300


def permission_errors(acl: AclRedis) -> dict[str, object]:
    """Redis's own count of refusals, by error prefix (NOPERM, NOAUTH, WRONGPASS)."""
    admin = acl.admin()
    try:
        stats = admin.info("errorstats")
    finally:
        admin.close()
    return {
        name: value
        for name, value in stats.items()
        if any(p in name for p in ("NOPERM", "NOAUTH", "WRONGPASS"))
    }


def command_calls(acl: AclRedis, command: str) -> int:
    admin = acl.admin()
    try:
        stats = admin.info("commandstats")
    finally:
        admin.close()
    entry = stats.get(f"cmdstat_{command}")
    return int(entry["calls"]) if isinstance(entry, dict) else 0


def run_cli(program: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name(program)
    return subprocess.run(
        [str(binary), *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


async def test_gateway_and_loader_work_under_the_shipped_acl_with_no_refusal(
    acl_redis: AclRedis, settings: Settings, tmp_path: Path
) -> None:
    """A full publish, a delta, sustained load with hundreds of version-lease renewals, audit
    writes and ``settlement-gateway audit``: Redis refuses nothing to either user."""
    full = [
        exports.write_csv(tmp_path / f"full-{kind}.csv", exports.HEADERS[kind], rows)
        for kind, rows in (
            ("institution", [institution_row()]),
            ("department", [department_row("A05", start="2026-03-01")]),
            ("staff", [staff_row(), staff_row(code=OTHER_DOCTOR)]),
        )
    ]
    done = run_cli("settlement-loader", "sync", *map(str, full), env={"SGW_REDIS_URL": acl_redis.loader_url})
    assert done.returncode == 0, done.stderr
    delta = exports.write_csv(
        tmp_path / "delta.csv", exports.HEADERS["staff"], [staff_row(status="中止", start="2026-01-01")]
    )
    done = run_cli(
        "settlement-loader", "sync", str(delta), "--kind", "staff", "--delta",
        env={"SGW_REDIS_URL": acl_redis.loader_url},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    mgets_before = command_calls(acl_redis, "mget")

    app = GatewayApp(replace(settings, redis_url=acl_redis.gateway_url), acl_redis.gateway_url)
    await app.start()
    try:
        assert app.store is not None and app.audit is not None
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            health = health_pb2_grpc.HealthStub(channel)
            for index in range(100):  # the background lease renews meanwhile
                reply = await stub.Validate(
                    request(
                        line("1", DOCTOR),  # suspended by the delta: audited
                        line("2", OTHER_DOCTOR, department_code="a05"),  # stopped department: audited
                        line("3", OTHER_DOCTOR),
                        request_id=f"load-{index}",
                    )
                )
                assert [v.reason for v in reply.verdicts] == [
                    pb.STAFF_SUSPENDED,
                    pb.DEPARTMENT_SUSPENDED,
                    pb.OK,
                ]
            for _ in range(RENEWALS):
                assert await app.store.renew_lease() is not None
            status = await stub.GetStatus(pb.GetStatusRequest())
            assert status.store_reachable and not status.degraded
            checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
            assert checked.status == health_pb2.HealthCheckResponse.SERVING
        for _ in range(250):
            if app.audit.written >= 200:
                break
            await asyncio.sleep(0.02)
        assert app.audit.written == 200
    finally:
        await app.stop(0.5)

    assert command_calls(acl_redis, "mget") - mgets_before >= RENEWALS
    found = run_cli(
        "settlement-gateway", "audit", "--settlement", "mdtrt-1", "--redis-url", acl_redis.gateway_url
    )
    assert found.returncode == 0, found.stderr
    assert len(found.stdout.splitlines()) == 200
    refused = app.metrics.redis_permission_errors.collect()[0].samples
    assert all(s.value == 0 for s in refused if s.name.endswith("_total"))
    assert permission_errors(acl_redis) == {}


def write_acl_without(acl: AclRedis, command: str) -> None:
    admin = acl.admin()
    try:
        admin.execute_command("ACL", "SETUSER", "sgw-gateway", f"-{command}")
    finally:
        admin.close()


async def test_a_missing_command_stops_the_gateway_at_start_naming_the_rule(
    acl_redis: AclRedis, settings: Settings
) -> None:
    write_acl_without(acl_redis, "mget")
    app = GatewayApp(replace(settings, redis_url=acl_redis.gateway_url), acl_redis.gateway_url)
    with pytest.raises(StartupError) as err:
        await app.start()
    await app.stop(0)
    assert "mget" in str(err.value) and "+mget" in str(err.value) and "users.acl.template" in str(err.value)


def test_serve_exits_non_zero_naming_the_command(acl_redis: AclRedis, tmp_path: Path) -> None:
    write_acl_without(acl_redis, "xadd")
    done = run_cli(
        "settlement-gateway", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        env={"SGW_REDIS_URL": acl_redis.gateway_url, "SGW_STATE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "xadd" in done.stderr and "+xadd" in done.stderr, done.stderr


def test_a_wrong_password_stops_the_gateway_at_once(acl_redis: AclRedis, tmp_path: Path) -> None:
    wrong = acl_redis.gateway_url.replace("sgw-gateway:", "sgw-gateway:x")
    done = run_cli(
        "settlement-gateway", "serve", "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        env={"SGW_REDIS_URL": wrong, "SGW_STATE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert done.returncode != 0
    assert "refused the gateway's login" in done.stderr and "SGW_REDIS_URL" in done.stderr, done.stderr


async def test_a_refusal_while_serving_turns_health_and_status_down_and_is_counted(
    acl_redis: AclRedis, settings: Settings, tmp_path: Path
) -> None:
    sync_as_loader(acl_redis.loader_url, tmp_path, "institution", [institution_row()])
    sync_as_loader(acl_redis.loader_url, tmp_path, "staff", [staff_row()])
    app = GatewayApp(replace(settings, redis_url=acl_redis.gateway_url), acl_redis.gateway_url)
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            health = health_pb2_grpc.HealthStub(channel)

            async def health_is(expected: int) -> bool:
                checked = await health.Check(health_pb2.HealthCheckRequest(service=""))
                return bool(checked.status == expected)

            assert await health_is(health_pb2.HealthCheckResponse.SERVING)
            write_acl_without(acl_redis, "mget")  # an operator edits the ACL, the lease renewal is refused
            await until(lambda: health_is(health_pb2.HealthCheckResponse.NOT_SERVING))
            status = await stub.GetStatus(pb.GetStatusRequest())
            assert not status.store_reachable
            value = app.registry.get_sample_value("sgw_redis_permission_errors_total", {"command": "mget"})
            assert value is not None and value > 0
            admin = acl_redis.admin()
            admin.execute_command("ACL", "SETUSER", "sgw-gateway", "+mget")
            admin.close()
            await until(lambda: health_is(health_pb2.HealthCheckResponse.SERVING))
            assert (await stub.GetStatus(pb.GetStatusRequest())).store_reachable
    finally:
        await app.stop(0.5)
