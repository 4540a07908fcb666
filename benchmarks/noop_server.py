"""The framework ceiling: the gateway's gRPC service with no work behind it.

Same proto, same server options (``gateway.server.server_options``), same event loop as the
gateway; ``Validate`` returns a prepared all-accepted reply with one verdict per request
line, so request decoding and reply encoding cost what they cost the gateway and everything
else (parsing, the Redis round trip, the rules, metrics) is absent. The gateway's throughput
divided by this server's, under the same load generator, is the share of gRPC's ceiling the
gateway keeps.

    python -m benchmarks.noop_server --listen 127.0.0.1:50090
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc

from gateway.config import Settings
from gateway.loops import install_event_loop
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import server_options


class NoopGateway(pb_grpc.SettlementGatewayServicer):
    def __init__(self) -> None:
        self._replies: dict[int, pb.ValidateResponse] = {}

    def _reply(self, lines: int) -> pb.ValidateResponse:
        reply = self._replies.get(lines)
        if reply is None:
            reply = pb.ValidateResponse(outcome=pb.ALL_ACCEPTED, data_version="noop")
            for index in range(lines):
                reply.verdicts.add(line_id=str(index + 1), verdict=pb.ACCEPT, reason=pb.OK)
            self._replies[lines] = reply
        return reply

    async def Validate(
        self,
        request: pb.ValidateRequest,
        context: grpc.aio.ServicerContext[pb.ValidateRequest, pb.ValidateResponse],
    ) -> pb.ValidateResponse:
        return self._reply(len(request.lines))


async def serve(listen: str) -> None:
    server = grpc.aio.server(options=server_options(Settings()))
    pb_grpc.add_SettlementGatewayServicer_to_server(NoopGateway(), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"noop server: cannot listen on {listen}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    print(f"noop server listening on port {port}", flush=True)
    await stop.wait()
    await server.stop(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--listen", default="127.0.0.1:50090")
    parser.add_argument("--event-loop", default=None, help="asyncio or uvloop (default: the gateway's)")
    args = parser.parse_args()
    install_event_loop(args.event_loop)
    asyncio.run(serve(args.listen))


if __name__ == "__main__":
    main()
