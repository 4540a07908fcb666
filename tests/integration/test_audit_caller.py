"""Who asked, in the audit trail: the client certificate's identity under mTLS (the fixtures
are test_tls.py's: a CA, a server certificate and the client mapping)."""

from __future__ import annotations

import orjson
import redis
import trustme

from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.exports import line, request
from tests.integration.test_tls import HIS, ca, channel, tls_gateway, tls_settings  # noqa: F401
from tests.polling import until


async def test_the_caller_is_the_client_certificate_identity(
    tls_gateway: GatewayApp,  # noqa: F811
    ca: trustme.CA,  # noqa: F811
    redis_url: str,
) -> None:
    async with channel(ca, tls_gateway.port, HIS) as ch:
        await pb_grpc.SettlementGatewayStub(ch).Validate(request(line("1", "D330902000099")), timeout=10)
    assert tls_gateway.audit is not None
    await until(lambda: tls_gateway.audit.written == 1)  # type: ignore[union-attr]
    client = redis.Redis.from_url(redis_url)
    [(_, fields)] = client.xrange(Keys().audit)  # type: ignore[misc]
    client.close()
    record = orjson.loads(fields[b"r"])
    assert (record["caller"], record["reason"]) == (HIS, "STAFF_UNREGISTERED")
