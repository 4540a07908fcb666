"""Random and mutated protobuf bytes against the live server: no crash, every failure a clear
status code, and the server still answers a good request afterwards.

CI runs a bounded number of inputs with a fixed seed; ``make fuzz`` runs many more
(``SGW_FUZZ_INPUTS``, ``SGW_FUZZ_SEED``).
"""

from __future__ import annotations

import asyncio
import os
import random

import grpc
import pytest

from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader
from tests.exports import DOCTOR, institution_row, line, request, staff_row

INPUTS = int(os.environ.get("SGW_FUZZ_INPUTS", "3000"))
SEED = int(os.environ.get("SGW_FUZZ_SEED", "20261124"))
VALIDATE = "/settlement.v1.SettlementGateway/Validate"
STREAM = "/settlement.v1.SettlementGateway/ValidateStream"
# What a caller may get back for bytes it made up: an answer, or "your request is wrong".
CLEAR = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}


def seeds() -> list[bytes]:
    good = request(
        line("1", DOCTOR), line("2", "D330902000002", emergency=True), line("3", "", item_code=""),
        request_id="fuzz", med_type="13",
    )  # fmt: skip
    return [good.SerializeToString(), request(line()).SerializeToString(), b""]


def mutate(rng: random.Random, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(7)
        pos = rng.randrange(len(out) + 1)
        if op == 0 and out:  # flip a bit
            i = rng.randrange(len(out))
            out[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # insert random bytes
            out[pos:pos] = rng.randbytes(rng.randint(1, 8))
        elif op == 2 and out:  # delete a run
            del out[pos : pos + rng.randint(1, 8)]
        elif op == 3:  # truncate
            out = out[:pos]
        elif op == 4 and out:  # duplicate a run (repeated fields, length confusion)
            end = min(len(out), pos + rng.randint(1, 32))
            out[pos:pos] = out[pos:end] * rng.randint(1, 4)
        elif op == 5:  # an interesting varint: huge lengths, negative numbers, max tags
            out[pos:pos] = rng.choice([b"\xff\xff\xff\xff\x0f", b"\x80\x80\x80\x80\x80\x80\x80\x80\x80\x01",
                                       b"\x2a\xff\xff\xff\x7f", b"\xf8\xff\xff\xff\x0f\x00", b"\x0a\x00"])  # fmt: skip
        else:  # a byte that is not UTF-8 inside a string
            out[pos:pos] = b"\x0a\x02\xc3\x28"
    return bytes(out)


def inputs(rng: random.Random, n: int) -> list[bytes]:
    base = seeds()
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(rng.randbytes(rng.randint(0, 300)))
        else:
            out.append(mutate(rng, rng.choice(base)))
    return out


@pytest.fixture
def loaded(load: Loader) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row()])


async def test_random_and_mutated_bytes_get_clear_answers(loaded: None, gateway: GatewayApp) -> None:
    rng = random.Random(SEED)
    seen: dict[grpc.StatusCode, int] = {}
    unclear: list[tuple[bytes, grpc.StatusCode, str]] = []
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        call = channel.unary_unary(
            VALIDATE, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

        async def one(data: bytes) -> None:
            try:
                reply = await call(data, timeout=30)
                pb.ValidateResponse.FromString(reply)  # a well-formed answer
                code, details = grpc.StatusCode.OK, ""
            except grpc.aio.AioRpcError as err:
                code, details = err.code(), err.details() or ""
            seen[code] = seen.get(code, 0) + 1
            if code not in CLEAR or (code != grpc.StatusCode.OK and not details):
                unclear.append((data, code, details))

        batch = inputs(rng, INPUTS)
        for start in range(0, len(batch), 64):
            await asyncio.gather(*(one(data) for data in batch[start : start + 64]))

        stub = pb_grpc.SettlementGatewayStub(channel)
        after = await stub.Validate(request(line("1", DOCTOR)))
        assert after.verdicts[0].reason == pb.OK
    assert not unclear, unclear[:5]
    assert sum(seen.values()) == INPUTS
    # Both kinds of outcome occurred: the corpus reached the rules, not only the decoder.
    assert seen.get(grpc.StatusCode.OK, 0) > 0 and seen.get(grpc.StatusCode.INVALID_ARGUMENT, 0) > 0


async def test_a_stream_of_mutated_messages_ends_with_a_clear_status(
    loaded: None, gateway: GatewayApp
) -> None:
    rng = random.Random(SEED + 1)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        stream = channel.stream_stream(
            STREAM, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        for _ in range(max(10, INPUTS // 100)):
            messages = [seeds()[0], *inputs(rng, rng.randint(1, 6))]
            call = stream(timeout=30)
            replies = 0
            code = grpc.StatusCode.OK
            try:
                # One message, one answer: the client sees the server's status for the very
                # message that ended the stream.
                for message in messages:
                    await call.write(message)
                    pb.ValidateResponse.FromString(await call.read())
                    replies += 1
                await call.done_writing()
            except grpc.aio.AioRpcError as err:
                code = err.code()
                assert "request #" in (err.details() or ""), err.details()
            assert code in CLEAR and replies >= 1
