"""The gRPC servicer: decode, read one snapshot, apply the rules, encode.

Whole-request faults are status codes with a message naming the cause, never a stray
exception: ``INVALID_ARGUMENT`` for a request that cannot be judged, ``UNAVAILABLE`` when
there is no usable data (HIS then falls back to its emergency procedure, 004 §58).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator

import grpc
import redis.exceptions

from gateway.config import Settings
from gateway.metrics import GatewayMetrics
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.rules import Evidence, decide_all, staff_codes_to_fetch
from gateway.settlement import RequestError, build_response, parse_request
from gateway.store import NoDataError, Store

log = logging.getLogger(__name__)

STORE_ERRORS = (redis.exceptions.RedisError, OSError)


class Unavailable(Exception):
    """No usable data for this request."""


class SettlementGateway(pb_grpc.SettlementGatewayServicer):
    def __init__(self, store: Store, settings: Settings, metrics: GatewayMetrics) -> None:
        self.store = store
        self.settings = settings
        self.rules = settings.rules
        self.metrics = metrics

    async def judge(self, request: pb.ValidateRequest) -> pb.ValidateResponse:
        """One settlement's verdicts; raises RequestError or Unavailable."""
        received = time.perf_counter()
        parsed = parse_request(request, self.rules, self.settings.max_lines)
        codes = staff_codes_to_fetch(parsed.lines, self.rules)
        try:
            snapshot = await self.store.read(parsed.institution_code, codes)
        except NoDataError as exc:
            raise Unavailable(f"no settlement data is available: {exc}") from exc
        except STORE_ERRORS as exc:
            raise Unavailable(f"the settlement data store is unreachable: {exc}") from exc
        evidence = Evidence(
            institution_code=parsed.institution_code,
            institution=snapshot.institution,
            departments=snapshot.departments,
            staff=snapshot.staff,
        )
        decisions = decide_all(parsed.lines, evidence, self.rules)
        response = build_response(
            request, decisions, snapshot.meta.version, snapshot.meta.as_of, snapshot.degraded
        )
        self.metrics.observe_decision_time(len(decisions), time.perf_counter() - received)
        self.metrics.observe_settlement(
            parsed.institution_code, parsed.lines, request.lines, decisions, snapshot.degraded
        )
        return response

    async def Validate(
        self,
        request: pb.ValidateRequest,
        context: grpc.aio.ServicerContext[pb.ValidateRequest, pb.ValidateResponse],
    ) -> pb.ValidateResponse:
        try:
            return await self.judge(request)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except Unavailable as exc:
            log.warning("validate unavailable", extra={"request_id": request.request_id, "error": str(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        raise AssertionError("unreachable")  # abort() always raises

    async def ValidateStream(
        self,
        request_iterator: AsyncIterator[pb.ValidateRequest],
        context: grpc.aio.ServicerContext[pb.ValidateRequest, pb.ValidateResponse],
    ) -> AsyncIterator[pb.ValidateResponse]:
        index = 0
        async for request in request_iterator:
            try:
                yield await self.judge(request)
            except RequestError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"request #{index} (request_id={request.request_id!r}): {exc}",
                )
            except Unavailable as exc:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
            index += 1

    async def GetStatus(
        self,
        request: pb.GetStatusRequest,
        context: grpc.aio.ServicerContext[pb.ValidateRequest, pb.ValidateResponse],
    ) -> pb.GatewayStatus:
        reachable = True
        try:
            meta = await self.store.refresh()
        except (NoDataError, *STORE_ERRORS):
            reachable = False
            meta = self.store.meta
        status = pb.GatewayStatus(store_reachable=reachable, degraded=not reachable)
        if meta is not None:
            status.data_version = meta.version
            status.data_as_of.FromNanoseconds(int(meta.as_of * 1e9))
            status.data_age_seconds = max(0.0, time.time() - meta.as_of)
            status.data_sources.extend(source.path for source in meta.sources)
        return status
