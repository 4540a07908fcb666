"""Whole-request faults get a clear status code, and the server keeps serving."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

from gateway.config import Settings
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader
from tests.exports import institution_row, line, request, staff_row


@pytest.fixture
def loaded(load: Loader) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row()])


def huge() -> pb.ValidateRequest:
    one = line("x")
    req = request()
    req.lines.extend([one] * 100_000)
    return req


def bad_timestamp() -> pb.ValidateRequest:
    req = request(line("a"), line("b"))
    req.lines[1].service_time.seconds = 253402300800 + 86400
    return req


def no_time() -> pb.ValidateRequest:
    req = request(line("a"), line("b"), line("c"))
    req.lines[2].ClearField("service_time")
    return req


@pytest.mark.parametrize(
    ("build", "code", "message"),
    [
        (lambda: request(), grpc.StatusCode.INVALID_ARGUMENT, "the settlement has no lines"),
        (huge, grpc.StatusCode.INVALID_ARGUMENT, "the settlement has 100000 lines; at most 10000"),
        (
            bad_timestamp,
            grpc.StatusCode.INVALID_ARGUMENT,
            "lines[1] (line_id='b') has an invalid service_time",
        ),
        (no_time, grpc.StatusCode.INVALID_ARGUMENT, "lines[2] (line_id='c') has no service_time"),
        (
            lambda: request(line(), institution_code=""),
            grpc.StatusCode.INVALID_ARGUMENT,
            "institution_code is empty",
        ),
        (
            lambda: request(line("a", amount_fen=2**63 - 1), line("b", amount_fen=2**63 - 1)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "overflow int64",
        ),
    ],
)
async def test_clear_status_and_still_serving(
    loaded: None, stub: pb_grpc.SettlementGatewayStub, build: object, code: grpc.StatusCode, message: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.Validate(build())  # type: ignore[operator]
    assert err.value.code() == code
    assert message in (err.value.details() or "")
    ok = await stub.Validate(request(line()))
    assert ok.verdicts[0].reason == pb.OK


async def test_bad_request_in_a_stream_names_it(loaded: None, stub: pb_grpc.SettlementGatewayStub) -> None:
    call = stub.ValidateStream(iter([request(line(), request_id="good"), request(request_id="empty")]))
    first = await call.read()
    assert first.request_id == "good"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "request #1 (request_id='empty')" in (err.value.details() or "")


MAX_MESSAGE_BYTES = 64 * 1024


@pytest.fixture
async def small_limit(settings: Settings) -> AsyncIterator[pb_grpc.SettlementGatewayStub]:
    """A gateway whose ``SGW_MAX_MESSAGE_BYTES`` a modest bill can exceed."""
    app = GatewayApp(replace(settings, max_message_bytes=MAX_MESSAGE_BYTES), settings.redis_url or "")
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield pb_grpc.SettlementGatewayStub(channel)
    finally:
        await app.stop(0.5)


def oversized() -> pb.ValidateRequest:
    req = request(*[line(str(i)) for i in range(2000)], request_id="too-big")  # within max_lines
    assert req.ByteSize() > MAX_MESSAGE_BYTES
    return req


async def test_a_message_over_the_size_limit_is_resource_exhausted(
    loaded: None, small_limit: pb_grpc.SettlementGatewayStub
) -> None:
    big = oversized()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await small_limit.Validate(big)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert f"larger than max ({big.ByteSize()} vs. {MAX_MESSAGE_BYTES})" in (err.value.details() or "")
    ok = await small_limit.Validate(request(line("1"), line("2")))  # same channel, same server
    assert [v.reason for v in ok.verdicts] == [pb.OK, pb.OK]


async def test_a_message_over_the_size_limit_ends_its_stream_only(
    loaded: None, small_limit: pb_grpc.SettlementGatewayStub
) -> None:
    call = small_limit.ValidateStream(iter([request(line(), request_id="good"), oversized()]))
    assert (await call.read()).request_id == "good"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call.read()
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    again = small_limit.ValidateStream(iter([request(line(), request_id="after")]))
    assert (await again.read()).request_id == "after"
