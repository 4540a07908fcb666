"""gRPC server metrics with go-grpc-prometheus' names, as a ``grpc.aio`` interceptor.

Operators' dashboards already speak ``grpc_server_started_total``,
``grpc_server_handled_total{grpc_type,grpc_service,grpc_method,grpc_code}`` and
``grpc_server_handling_seconds``, with ``grpc_code`` spelled as Go spells it (``OK``,
``InvalidArgument``, ``Unavailable``…), so this module produces exactly those.

A refusal is ``await context.abort(code, …)``, which raises out of the handler: the
interceptor reads the code the abort set on the context, so an aborted call is counted with
its real status rather than as an unknown error.

The interceptor also asks ``gateway.admission`` whether to take each call on (the
process-wide ``SGW_MAX_CONCURRENT_RPCS``, each caller's budget, idle streams), so a refused
call is counted as started and as handled with its real code (``ResourceExhausted``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import grpc.aio
from google.protobuf.descriptor import ServiceDescriptor
from prometheus_client import Counter, Histogram

from gateway.admission import Admission, CallGrant, StreamGrant
from gateway.metrics import GatewayMetrics

# grpc.StatusCode -> the label value go-grpc-prometheus uses (Go's codes.Code.String()).
GO_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}


def grpc_type(request_streaming: bool, response_streaming: bool) -> str:
    if request_streaming and response_streaming:
        return "bidi_stream"
    if request_streaming:
        return "client_stream"
    if response_streaming:
        return "server_stream"
    return "unary"


def split_method(full_method: str) -> tuple[str, str]:
    """``/settlement.v1.SettlementGateway/Validate`` -> (service, method)."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service, method


@dataclass(frozen=True, slots=True)
class MethodMetrics:
    """The label children of one method, resolved once."""

    started: Counter
    handling: Histogram
    received: Counter
    sent: Counter
    handled: dict[grpc.StatusCode, Counter]

    @classmethod
    def resolve(cls, metrics: GatewayMetrics, kind: str, service: str, method: str) -> MethodMetrics:
        labels = (kind, service, method)
        return cls(
            started=metrics.grpc_started.labels(*labels),
            handling=metrics.grpc_handling.labels(*labels),
            received=metrics.grpc_msg_received.labels(*labels),
            sent=metrics.grpc_msg_sent.labels(*labels),
            handled={
                code: metrics.grpc_handled.labels(*labels, name) for code, name in GO_CODE_NAMES.items()
            },
        )

    def start(self, request: Any, request_streaming: bool) -> tuple[Any, float]:
        """Count a call's start and its request message(s): the request to hand on (a
        stream is counted as it is read) and when the call started."""
        self.started.inc()
        if request_streaming:
            request = _counted(request, self.received)
        else:
            self.received.inc()
        return request, time.perf_counter()

    def finish(self, started_at: float, code: grpc.StatusCode) -> None:
        self.handling.observe(time.perf_counter() - started_at)
        self.handled[code].inc()


def _final_code(context: grpc.aio.ServicerContext[Any, Any], error: BaseException | None) -> grpc.StatusCode:
    """The status the call ends with: what abort()/set_code() put on the context, else
    OK for a clean return, CANCELLED for a cancelled task and UNKNOWN for a stray exception
    (which is what grpc sends the client in that case)."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if isinstance(code, int):
        for candidate in grpc.StatusCode:
            if candidate.value[0] == code:
                return candidate
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


async def _counted(requests: AsyncIterator[Any], received: Counter) -> AsyncIterator[Any]:
    async for request in requests:
        received.inc()
        yield request


Behavior = Callable[..., Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"


def _behavior(function: Behavior | None) -> Behavior:
    if function is None:
        raise TypeError("the method handler has no behavior for its streaming kind")
    return function


async def _admit(
    admission: Admission, request: Any, context: Context, request_streaming: bool
) -> tuple[Any, CallGrant | StreamGrant]:
    """The call's places (or its refusal, raised) and the request to hand on: a stream's
    requests are admitted one by one as the handler reads them."""
    if not request_streaming:
        return request, await admission.admit_call(context, request)
    grant = await admission.open_stream(context)
    return admission.stream_requests(request, grant, context), grant


def _wrap_unary_response(
    behavior: Behavior, m: MethodMetrics, request_streaming: bool, admission: Admission
) -> Behavior:
    async def handler(request: Any, context: Context) -> Any:
        request, started_at = m.start(request, request_streaming)
        error: BaseException | None = None
        grant: CallGrant | StreamGrant | None = None
        try:
            request, grant = await _admit(admission, request, context, request_streaming)
            result = behavior(request, context)
            if isinstance(result, Awaitable):
                result = await result
            return result
        except BaseException as exc:
            error = exc
            raise
        finally:
            if grant is not None:
                grant.release()
            code = _final_code(context, error)
            if code is grpc.StatusCode.OK:
                m.sent.inc()
            m.finish(started_at, code)

    return handler


def _wrap_streaming_response(
    behavior: Behavior, m: MethodMetrics, request_streaming: bool, admission: Admission
) -> Behavior:
    async def handler(request: Any, context: Context) -> AsyncIterator[Any]:
        request, started_at = m.start(request, request_streaming)
        error: BaseException | None = None
        grant: CallGrant | StreamGrant | None = None
        try:
            request, grant = await _admit(admission, request, context, request_streaming)
            answered = grant.answered if isinstance(grant, StreamGrant) else None
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for response in result:
                    if answered is not None:
                        answered()
                    m.sent.inc()
                    yield response
            elif isinstance(result, Awaitable):
                await result  # a handler that writes with context.write()
        except BaseException as exc:
            error = exc
            raise
        finally:
            if grant is not None:
                grant.release()
            m.finish(started_at, _final_code(context, error))

    return handler


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Counts and times every call the server handles, and refuses (and counts) the calls
    ``admission`` does not take on (by default: beyond ``max_concurrent_rpcs`` open at once,
    or beyond their caller's default budget)."""

    def __init__(
        self,
        metrics: GatewayMetrics,
        max_concurrent_rpcs: int | None = None,
        admission: Admission | None = None,
    ) -> None:
        self.metrics = metrics
        self.admission = admission or Admission(max_concurrent_rpcs)
        # full method -> (the handler as resolved, our wrapped handler)
        self._handlers: dict[str, tuple[Handler, Handler]] = {}
        self._methods: dict[tuple[str, str, str], MethodMetrics] = {}

    def method_metrics(self, kind: str, service: str, method: str) -> MethodMetrics:
        key = (kind, service, method)
        found = self._methods.get(key)
        if found is None:
            found = self._methods[key] = MethodMetrics.resolve(self.metrics, kind, service, method)
        return found

    def initialize(self, service: ServiceDescriptor) -> None:
        """Create every series of ``service``'s methods at zero, as go-grpc-prometheus'
        ``InitializeMetrics`` does, so rates and ratios exist before the first call."""
        for method in service.methods:
            kind = grpc_type(method.client_streaming, method.server_streaming)
            self.method_metrics(kind, service.full_name, method.name)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        full_method = handler_call_details.method
        cached = self._handlers.get(full_method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, full_method)
        self._handlers[full_method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: Handler, full_method: str) -> Handler:
        service, method = split_method(full_method)
        req_stream, resp_stream = handler.request_streaming, handler.response_streaming
        m = self.method_metrics(grpc_type(req_stream, resp_stream), service, method)
        codec = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if not req_stream and not resp_stream:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary_response(_behavior(handler.unary_unary), m, False, self.admission), **codec
            )
        if req_stream and not resp_stream:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary_response(_behavior(handler.stream_unary), m, True, self.admission), **codec
            )
        if not req_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming_response(_behavior(handler.unary_stream), m, False, self.admission), **codec
            )
        return grpc.stream_stream_rpc_method_handler(
            _wrap_streaming_response(_behavior(handler.stream_stream), m, True, self.admission), **codec
        )
