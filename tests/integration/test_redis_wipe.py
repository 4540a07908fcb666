"""Redis loses its data under a running gateway, and the operator reloads the exports.

The store is a real redis-server without persistence, killed and started again on the same
port: it comes back empty. The loader is the real ``settlement-loader`` process; the gateway
is served over a real gRPC channel. Reloaded kind by kind (institutions first, as an operator
used to), the first file alone would make a version without staff, and a gateway judging on
it would reject every line as STAFF_UNREGISTERED — with ``degraded: false``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import RedisProcess, free_port
from tests.exports import HEADERS, institution_row, line, request, staff_row, write_csv
from tests.polling import until

BIN = Path(sys.executable).parent
STAFF = [f"D330902{i:06d}" for i in range(120)]
ASKED = STAFF[:: len(STAFF) // 12]


@pytest.fixture
def volatile_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of its own with no persistence: restarted, it is empty."""
    server = RedisProcess(find_redis_server(), free_port(), tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def loader_env(volatile_redis: RedisProcess, tmp_path: Path) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    return {**base, "SGW_REDIS_URL": volatile_redis.url, "SGW_STATE_DIR": str(tmp_path / "loader-state")}


@pytest.fixture
async def app(settings: Settings, volatile_redis: RedisProcess) -> AsyncIterator[GatewayApp]:
    gateway = GatewayApp(replace(settings, redis_url=volatile_redis.url), volatile_redis.url)
    await gateway.start()
    yield gateway
    await gateway.stop(0.5)


async def loader(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``settlement-loader`` in its own process (off the event loop the gateway serves on)."""
    return await asyncio.to_thread(
        subprocess.run,
        [str(BIN / "settlement-loader"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def exports(tmp_path: Path) -> tuple[Path, Path, Path]:
    """Institutions, all staff, and a truncated staff download (a tenth of it)."""
    institutions = write_csv(tmp_path / "institutions.csv", HEADERS["institution"], [institution_row()])
    rows = [staff_row(code=code) for code in STAFF]
    staff = write_csv(tmp_path / "staff.csv", HEADERS["staff"], rows)
    truncated = write_csv(tmp_path / "staff-truncated.csv", HEADERS["staff"], rows[:12])
    return institutions, staff, truncated


Answer = tuple[str, str, bool]


async def ask(stub: pb_grpc.SettlementGatewayStub) -> list[Answer]:
    """One single-line bill per asked doctor: (verdict, reason, degraded), or the refusal."""
    answers: list[Answer] = []
    for code in ASKED:
        try:
            reply = await stub.Validate(request(line("1", code)))
        except grpc.aio.AioRpcError as exc:
            answers.append(("refused", exc.code().name, True))
            continue
        (verdict,) = reply.verdicts
        answers.append((pb.Verdict.Name(verdict.verdict), pb.Reason.Name(verdict.reason), reply.degraded))
    return answers


def wrong(answers: list[Answer]) -> list[Answer]:
    """Every asked doctor is registered and 正常: a live answer other than ACCEPT is wrong."""
    return [a for a in answers if not a[2] and a[:2] != ("ACCEPT", "OK")]


async def test_a_redis_restarted_empty_and_reloaded_kind_by_kind_never_rejects_everyone(
    app: GatewayApp, volatile_redis: RedisProcess, loader_env: dict[str, str], tmp_path: Path
) -> None:
    institutions, staff, truncated = exports(tmp_path)
    # The first load, kind by kind as the old guide had it (institutions alone needs --force).
    assert (await loader(loader_env, "sync", str(institutions), "--force")).returncode == 0
    assert (await loader(loader_env, "sync", str(staff))).returncode == 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        await until(
            lambda: app.store is not None and app.store.meta is not None and "staff" in app.store.meta.tables
        )
        before = await ask(stub)
        assert before == [("ACCEPT", "OK", False)] * len(ASKED)  # the cache holds them now

        volatile_redis.kill()
        volatile_redis.start()  # same port, nothing in it

        # The operator reloads as before: institutions first.
        first = await loader(loader_env, "sync", str(institutions))
        during = await ask(stub)
        assert wrong(during) == [], "a version without staff was served as live data"
        assert first.returncode == 4, first.stdout + first.stderr
        assert "no staff records" in first.stdout
        assert all(degraded for _, _, degraded in during)  # answered from the cache, flagged

        second = await loader(loader_env, "sync", str(staff))
        assert second.returncode == 4 and "no institution records" in second.stdout
        # Together, but with a truncated staff download: held to the counts the last publish
        # left on disk, although Redis remembers nothing.
        held = await loader(loader_env, "sync", str(institutions), str(truncated))
        assert held.returncode == 4, held.stdout + held.stderr
        assert "108 of 120 staff records" in held.stdout and "loader-state" in held.stdout
        assert wrong(await ask(stub)) == []

        # What the operator runs: every file, one version.
        reload = await loader(loader_env, "sync", str(institutions), str(staff))
        assert reload.returncode == 0, reload.stdout + reload.stderr

        async def live_again() -> bool:
            return await ask(stub) == [("ACCEPT", "OK", False)] * len(ASKED)

        await until(live_again)


async def test_the_gateway_never_adopts_an_incomplete_version(
    app: GatewayApp, loader_env: dict[str, str], tmp_path: Path
) -> None:
    institutions, staff, _ = exports(tmp_path)
    assert (await loader(loader_env, "sync", str(institutions), str(staff))).returncode == 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        await until(lambda: app.store is not None and app.store.meta is not None)
        complete = app.store.meta  # type: ignore[union-attr]
        assert await ask(stub) == [("ACCEPT", "OK", False)] * len(ASKED)

        # An empty staff table, forced past every guard: a version the gateway must not adopt.
        empty = tmp_path / "staff-deleted.csv"
        empty.write_text("人员代码,定点机构代码,协议状态\n" + "".join(f"{c},,删除\n" for c in STAFF), "utf-8")
        forced = await loader(loader_env, "sync", str(empty), "--delta", "--force")
        assert forced.returncode == 0 and "FORCED" in forced.stdout

        def refusals() -> float:
            return app.registry.get_sample_value("sgw_incomplete_version_refusals_total") or 0.0

        await until(lambda: refusals() > 0)
        answers = await ask(stub)
        assert answers == [("ACCEPT", "OK", True)] * len(ASKED)  # the cache, flagged degraded
        status = await stub.GetStatus(pb.GetStatusRequest())
        assert status.degraded and status.store_reachable
        assert status.data_version == complete.version  # type: ignore[union-attr]

        assert (await loader(loader_env, "sync", str(staff))).returncode == 0

        async def live_again() -> bool:
            return await ask(stub) == [("ACCEPT", "OK", False)] * len(ASKED)

        await until(live_again)
        assert not (await stub.GetStatus(pb.GetStatusRequest())).degraded
