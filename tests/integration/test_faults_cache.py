"""Redis dies under a running gateway: degraded answers from the cache, the outage policy for
the rest, health that says whether any usable data is left, and recovery without restart.

The store is a real redis-server killed with SIGKILL and started again on the same port
(append-only file, fsync always, so it comes back with its data as a production Redis would).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.config import Settings
from gateway.outage import OutagePolicy
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.policy import OUTAGE_ARTICLE
from gateway.server import GatewayApp
from tests.conftest import RedisProcess
from tests.exports import DOCTOR, OTHER_HOSPITAL, institution_row, line, load_into, request, staff_row
from tests.polling import until, until_lease_lapsed

BANNED = "D330902000003"
UNSEEN = "D330902000009"
NEVER_REGISTERED = "D330902999999"


@pytest.fixture
def loaded(persistent_redis: RedisProcess, tmp_path: Path) -> str:
    load_into(
        persistent_redis.url, tmp_path, "institution", [institution_row(), institution_row(OTHER_HOSPITAL)]
    )
    return load_into(
        persistent_redis.url,
        tmp_path,
        "staff",
        [
            staff_row(DOCTOR),
            staff_row(BANNED),
            staff_row(BANNED, status="解除", start="2026-01-01"),
            staff_row(UNSEEN),
        ],
    )


@pytest.fixture
async def start_app(
    settings: Settings, persistent_redis: RedisProcess
) -> AsyncIterator[Callable[..., object]]:
    apps: list[GatewayApp] = []

    async def _start(**overrides: object) -> GatewayApp:
        app = GatewayApp(replace(settings, redis_url=persistent_redis.url, **overrides), persistent_redis.url)  # type: ignore[arg-type]
        await app.start()
        apps.append(app)
        return app

    yield _start
    for app in apps:
        await app.stop(0.5)


def verdicts(reply: pb.ValidateResponse) -> list[tuple[str, str, str]]:
    return [(pb.Verdict.Name(v.verdict), pb.Reason.Name(v.reason), v.rule) for v in reply.verdicts]


async def health_is(port: int, expected: int) -> bool:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""))
        return int(reply.status) == expected


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def test_cached_records_answer_degraded_and_the_rest_is_refused(
    loaded: str, persistent_redis: RedisProcess, start_app: Callable[..., object]
) -> None:
    app: GatewayApp = await start_app()  # type: ignore[misc]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        bill = request(line("1", DOCTOR), line("2", BANNED), line("3", NEVER_REGISTERED))
        live = await stub.Validate(bill)
        assert not live.degraded and live.data_version == loaded
        assert [r for _, r, _ in verdicts(live)] == ["OK", "STAFF_TERMINATED", "STAFF_UNREGISTERED"]

        persistent_redis.kill()
        # Until the version lease runs out, answers are still live ones: no publish can move
        # ``live`` meanwhile (the loader waits out every lease). Then the cache answers degraded.
        await until_lease_lapsed(app)
        degraded = await stub.Validate(bill)
        assert degraded.degraded
        assert verdicts(degraded) == verdicts(live)  # "unregistered" was cached as an answer too
        assert (degraded.data_version, degraded.data_as_of) == (live.data_version, live.data_as_of)
        assert degraded.accepted_fen == live.accepted_fen and degraded.outcome == live.outcome

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Validate(request(line("1", DOCTOR), line("2", UNSEEN)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"staff codes not in the cache: {UNSEEN}; outage policy: refuse" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Validate(request(line("1", DOCTOR), institution_code=OTHER_HOSPITAL))
        assert "the institution is not in the cache" in (err.value.details() or "")

        await until(lambda: app.store is not None and app.store.breaker.is_open)  # fails fast now
        status = await stub.GetStatus(pb.GetStatusRequest())
        assert status.degraded and not status.store_reachable and status.data_version == loaded
        assert await health_is(app.port, SERVING)  # the cache is usable data

        persistent_redis.start()  # same port, same data: no gateway restart

        async def live_again() -> bool:
            reply = await stub.Validate(bill)
            return not reply.degraded and verdicts(reply) == verdicts(live)

        await until(live_again)
        fresh = await stub.Validate(request(line("1", UNSEEN)))
        assert not fresh.degraded and fresh.verdicts[0].reason == pb.OK


async def test_accept_flagged_pays_what_it_cannot_judge_but_never_a_known_ban(
    loaded: str, persistent_redis: RedisProcess, start_app: Callable[..., object]
) -> None:
    app: GatewayApp = await start_app(outage_policy=OutagePolicy.ACCEPT_FLAGGED, degraded_max_age_seconds=0.3)  # type: ignore[misc]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        await stub.Validate(request(line("1", DOCTOR), line("2", BANNED)))
        persistent_redis.kill()
        await until_lease_lapsed(app)
        await asyncio.sleep(0.4)  # beyond the staleness limit: only the policy answers now
        reply = await stub.Validate(
            request(
                line("1", BANNED),
                line("2", UNSEEN),
                line("3", DOCTOR),
                line("4", UNSEEN, item_code=""),
                line("5", BANNED, emergency=True),
                line("6", ""),
            )
        )
        assert reply.degraded and reply.data_version == loaded
        assert verdicts(reply) == [
            ("REJECT", "STAFF_TERMINATED", "济宁市医疗保障局医保支付资格相关人员管理通知（2024） 五（二）"),
            ("ACCEPT", "OK", OUTAGE_ARTICLE),
            ("ACCEPT", "OK", ""),
            ("REJECT", "ITEM_CODE_MISSING", "南通市基本医疗保险定点医疗机构服务协议 第六十条"),
            ("ACCEPT_EMERGENCY", "STAFF_TERMINATED", "舟医保发〔2022〕16号 第十五条（急救除外）"),
            ("REJECT", "STAFF_CODE_MISSING", "舟医保发〔2022〕16号 第十一条"),
        ]
        assert "应急预案" in reply.verdicts[1].detail
        # An institution the cache lacks: what the cached staff record says still counts.
        other = await stub.Validate(
            request(line("1", UNSEEN), line("2", DOCTOR), institution_code=OTHER_HOSPITAL)
        )
        assert other.degraded and verdicts(other) == [
            ("ACCEPT", "OK", OUTAGE_ARTICLE),
            ("REJECT", "STAFF_NOT_AT_INSTITUTION", "舟医保发〔2022〕16号 第十一条"),
        ]
        # No usable data left (the cache is too old): health says so, though answers still come.
        await until(lambda: health_is(app.port, NOT_SERVING))


async def test_stale_cache_is_refused_and_recovery_needs_no_restart(
    loaded: str, persistent_redis: RedisProcess, start_app: Callable[..., object]
) -> None:
    app: GatewayApp = await start_app(degraded_max_age_seconds=0.3)  # type: ignore[misc]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        bill = request(line("1", DOCTOR))
        await stub.Validate(bill)
        persistent_redis.kill()
        await until_lease_lapsed(app)
        await asyncio.sleep(0.4)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Validate(bill)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert f"the cached data version {loaded} was last confirmed" in (err.value.details() or "")
        await until(lambda: health_is(app.port, NOT_SERVING))
        persistent_redis.start()
        await until(lambda: health_is(app.port, SERVING))
        reply = await stub.Validate(bill)
        assert not reply.degraded and reply.verdicts[0].reason == pb.OK


async def test_without_any_data_ever_the_answer_is_unavailable(
    persistent_redis: RedisProcess, start_app: Callable[..., object]
) -> None:
    app: GatewayApp = await start_app(outage_policy=OutagePolicy.ACCEPT_FLAGGED)  # type: ignore[misc]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Validate(request(line("1", DOCTOR)))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # nothing loaded is not an outage
