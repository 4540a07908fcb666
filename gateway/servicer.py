"""The gRPC servicer: decode, read one snapshot, apply the rules, encode.

Whole-request faults are status codes with a message naming the cause, never a stray
exception: ``INVALID_ARGUMENT`` for a request that cannot be judged (including bytes that are
no ``ValidateRequest`` at all), ``UNAUTHENTICATED`` / ``PERMISSION_DENIED`` from mTLS,
``DEADLINE_EXCEEDED`` when the caller's deadline passed before the work started, and
``UNAVAILABLE`` when there is no usable data (HIS then falls back to its emergency procedure,
004 §58).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError, Message

from gateway import slices
from gateway.audit import AuditLog
from gateway.auth import AccessDenied, Authorizer, certificate_identity
from gateway.config import Settings
from gateway.days import day_of_instant
from gateway.metrics import GatewayMetrics
from gateway.outage import StoreUnavailable
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.rules import Evidence, staff_codes_to_fetch
from gateway.settlement import RequestError, build_response
from gateway.store import STORE_ERRORS, IncompleteVersion, NoDataError, Store

log = logging.getLogger(__name__)


class Unavailable(Exception):
    """No usable data for this request."""


class DeadlinePassed(Exception):
    """The caller's deadline passed before the request could be judged."""


class Undecodable:
    """Bytes that did not parse as a ``ValidateRequest`` (answered ``INVALID_ARGUMENT``)."""

    request_id = ""

    def __init__(self, error: str) -> None:
        self.error = error


M = TypeVar("M", bound=Message)


def decoder(message: type[M]) -> Callable[[bytes], M | Undecodable]:
    """gRPC's own handling of a parse failure is ``UNKNOWN``; a malformed message is the
    caller's fault and gets ``INVALID_ARGUMENT`` instead."""
    name = message.DESCRIPTOR.full_name

    def decode(data: bytes) -> M | Undecodable:
        try:
            return message.FromString(data)
        except (DecodeError, ValueError) as exc:
            return Undecodable(f"the message is not a valid {name}: {exc}")

    return decode


ServicerContext = grpc.aio.ServicerContext[Any, Any]


class SettlementGateway(pb_grpc.SettlementGatewayServicer):
    def __init__(
        self,
        store: Store,
        settings: Settings,
        metrics: GatewayMetrics,
        authorizer: Authorizer | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.rules = settings.rules
        self.metrics = metrics
        self.authorizer = authorizer
        self.audit = audit
        # Shutdown: once draining, new calls are refused; ``in_flight`` counts running ones.
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def drain(self, timeout: float, settle: float = 0.2) -> bool:
        """Refuse new calls and wait (at most ``timeout``) for running ones, then go on refusing
        for ``settle`` seconds so callers already sending learn of it with UNAVAILABLE rather
        than a CANCELLED from the stopping server. True if no call is left running."""
        self.draining = True
        deadline = time.monotonic() + timeout
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        await asyncio.sleep(max(0.0, min(settle, deadline - time.monotonic())))
        return self._idle.is_set()

    def _track(self, context: ServicerContext) -> None:
        """Count the call as running until gRPC reports it over. A done-callback, not a
        ``finally``: a cancelled stream's generator may never be closed explicitly."""
        self.in_flight += 1
        self._idle.clear()
        context.add_done_callback(self._call_done)  # type: ignore[arg-type]

    def _call_done(self, _context: object) -> None:
        self.in_flight -= 1
        if not self.in_flight:
            self._idle.set()

    async def _refuse_if_draining(self, context: ServicerContext) -> None:
        if self.draining:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE, "the gateway is shutting down; send the call to another instance"
            )

    async def judge(
        self, request: pb.ValidateRequest | Undecodable, context: ServicerContext | None = None
    ) -> bytes:
        """One settlement's verdicts; raises RequestError, AccessDenied, DeadlinePassed or
        Unavailable."""
        received = time.perf_counter()
        if isinstance(request, Undecodable):
            raise RequestError(request.error)
        if context is not None:
            if self.authorizer is not None:
                self.authorizer.check(context, request.institution_code)
            remaining = context.time_remaining()
            if remaining is not None and remaining <= 0:
                raise DeadlinePassed("the call's deadline passed before it could be judged")
        max_day = day_of_instant(int(time.time())) + self.settings.max_future_days
        # A large bill is judged in slices, the event loop serving other calls between them.
        parsed = await slices.parse(request, self.rules, self.settings.max_lines, max_day)
        codes = staff_codes_to_fetch(parsed.lines, self.rules)
        try:
            snapshot = await self.store.read(parsed.institution_code, codes)
        except NoDataError as exc:
            raise Unavailable(f"no settlement data is available: {exc}") from exc
        except StoreUnavailable as exc:
            raise Unavailable(str(exc)) from exc
        except STORE_ERRORS as exc:
            raise Unavailable(f"the settlement data store is unreachable: {exc}") from exc
        evidence = Evidence(
            institution_code=parsed.institution_code,
            institution=snapshot.institution,
            departments=snapshot.departments,
            staff=snapshot.staff,
        )
        if snapshot.has_gaps:
            decisions = await slices.decide_gaps(
                parsed.lines, evidence, self.rules, snapshot.institution_known, snapshot.missing_staff
            )
        else:
            decisions = await slices.decide(parsed.lines, evidence, self.rules)
        # The reply is built in one go, in C (gateway.reply): ~0.7 µs a line, no slicing needed.
        response = build_response(
            request.request_id,
            parsed.lines,
            decisions,
            snapshot.meta.version,
            snapshot.meta.as_of,
            snapshot.degraded,
        )
        self.metrics.observe_decision_time(len(decisions), time.perf_counter() - received)
        await slices.observe(
            self.metrics, parsed.institution_code, parsed.lines, decisions, snapshot.degraded
        )
        if self.audit is not None:
            self.audit.record(
                request, decisions, snapshot.meta.version, snapshot.degraded,
                lines=parsed.lines, evidence=evidence, caller=lambda: caller_identity(context),
            )  # fmt: skip
        return response

    async def _judge_or_abort(
        self, request: pb.ValidateRequest | Undecodable, context: ServicerContext, label: str = ""
    ) -> bytes:
        """``judge``, with each whole-request fault turned into its status code."""
        try:
            return await self.judge(request, context)
        except RequestError as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{label}{exc}")
        except AccessDenied as exc:
            await context.abort(exc.code, f"{label}{exc}")
        except DeadlinePassed as exc:
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED, f"{label}{exc}")
        except Unavailable as exc:
            log.warning("validate unavailable", extra={"request_id": request.request_id, "error": str(exc)})
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{label}{exc}")
        raise AssertionError("unreachable")  # abort() always raises

    # Validate and ValidateStream answer with the reply's wire bytes (``build_response``;
    # ``add_to_server`` registers no serializer), where the generated base class types messages.
    async def Validate(  # type: ignore[override]
        self, request: pb.ValidateRequest | Undecodable, context: ServicerContext
    ) -> bytes:
        await self._refuse_if_draining(context)
        self._track(context)
        return await self._judge_or_abort(request, context)

    async def ValidateStream(  # type: ignore[override]
        self,
        request_iterator: AsyncIterator[pb.ValidateRequest | Undecodable],
        context: ServicerContext,
    ) -> AsyncIterator[bytes]:
        # One request is judged and its reply written before the next is read: a client that
        # stops reading stalls only its own stream (HTTP/2 flow control), never the server.
        await self._refuse_if_draining(context)
        self._track(context)
        index = 0
        async for request in request_iterator:
            label = f"request #{index} (request_id={request.request_id!r}): "
            yield await self._judge_or_abort(request, context, label)
            index += 1

    async def GetStatus(
        self, request: pb.GetStatusRequest | Undecodable, context: ServicerContext
    ) -> pb.GatewayStatus:
        if isinstance(request, Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.error)
        if self.authorizer is not None:
            try:
                self.authorizer.institutions(context)
            except AccessDenied as exc:
                await context.abort(exc.code, str(exc))
        reachable, degraded = True, False
        try:
            meta = await self.store.refresh()
        except IncompleteVersion:  # the store answers, but its live version is not served
            degraded, meta = True, self.store.meta
        except (NoDataError, *STORE_ERRORS):
            reachable, degraded = False, True
            meta = self.store.meta
        if self.store.permissions.failing() is not None:
            reachable = False  # reachable, but refusing commands the gateway needs
            degraded = True
        status = pb.GatewayStatus(store_reachable=reachable, degraded=degraded)
        status.policy_profile = self.settings.profile.name
        if meta is not None:
            status.data_version = meta.version
            status.data_as_of.FromNanoseconds(int(meta.as_of * 1e9))
            status.data_age_seconds = max(0.0, time.time() - meta.as_of)
            # File names only: the loader host's directories are no business of a hospital's.
            status.data_sources.extend(source_name(source.path) for source in meta.sources)
        return status


def caller_identity(context: ServicerContext | None) -> str:
    """Who asked, for the audit trail: the client certificate's identity under mTLS, else the
    peer address gRPC reports (``ipv4:10.0.0.7:51234``)."""
    if context is None:
        return ""
    return certificate_identity(context) or str(context.peer() or "")


def source_name(path: str) -> str:
    """``/srv/exports/2026-11/staff.csv`` -> ``staff.csv`` (a Windows path too)."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def add_to_server(servicer: SettlementGateway, server: grpc.aio.Server) -> None:
    """Register the service like the generated ``add_SettlementGatewayServicer_to_server``,
    but with a request decoder that turns malformed bytes into ``INVALID_ARGUMENT``."""
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {
        "Validate": grpc.unary_unary_rpc_method_handler(
            servicer.Validate,
            request_deserializer=decoder(pb.ValidateRequest),
            response_serializer=None,  # build_response returns the encoded ValidateResponse
        ),
        "ValidateStream": grpc.stream_stream_rpc_method_handler(
            servicer.ValidateStream,
            request_deserializer=decoder(pb.ValidateRequest),
            response_serializer=None,  # likewise
        ),
        "GetStatus": grpc.unary_unary_rpc_method_handler(
            servicer.GetStatus,
            request_deserializer=decoder(pb.GetStatusRequest),
            response_serializer=pb.GatewayStatus.SerializeToString,
        ),
    }
    name = pb.DESCRIPTOR.services_by_name["SettlementGateway"].full_name
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, handlers),))
    server.add_registered_method_handlers(name, handlers)  # type: ignore[attr-defined]
