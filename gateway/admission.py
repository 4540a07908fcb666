"""Which calls the gateway takes on: the process-wide limit, each caller's own budget, and
how long a stream may sit idle.

One gateway process serves hundreds of hospitals. Without budgets per caller, one hospital's
1,100 idle ``ValidateStream`` calls filled ``SGW_MAX_CONCURRENT_RPCS`` and every other hospital
got ``RESOURCE_EXHAUSTED``. Now each caller has its own budget, and only the caller over it is
refused (``RESOURCE_EXHAUSTED``, the message naming the budget):

- ``SGW_CALLER_CALLS``: calls open at once (unary calls and streams alike);
- ``SGW_CALLER_STREAMS``: of those, streams;
- ``SGW_CALLER_LINES``: lines of the bills being judged at once. A caller with nothing being
  judged is always admitted one bill, however large (``SGW_MAX_LINES`` bounds it); a bill
  over ``SGW_MAX_LINES`` is refused unread (``INVALID_ARGUMENT``) and counts no lines.

The process-wide ``SGW_MAX_CONCURRENT_RPCS`` still holds behind them (``InFlightLimit``).

Who a caller is:

- with mTLS, its client certificate's identity (``gateway.auth.certificate_identity``);
- else the institution code of the request (what the caller says it is: without mTLS a caller
  sending another hospital's code spends that hospital's budget);
- a call that carries no institution code (``GetStatus``, health, reflection, bytes that do not
  parse, an empty code): its peer's network address, without the port.

A stream is admitted when it opens, before any request was read: without mTLS it is then
charged to its peer's address, and it moves to its institution's budget with its first
request (the institution of a stream is the one of its first request). Behind one address
(NAT), hospitals without mTLS thus share one budget for streams that have not yet sent
anything: that budget, not another hospital's, is what an idle flood exhausts.

A stream that sends no request for ``SGW_STREAM_IDLE_SECONDS`` is closed with ``CANCELLED``
(its message names the setting): an idle stream gives its place back by itself.

Every call runs on one event loop, so plain counts in dictionaries are enough: no locks, and
per call a few dictionary operations and one small object, nothing per line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc
import grpc.aio

from gateway.auth import certificate_identity

log = logging.getLogger(__name__)

Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
# An institution code or certificate identity; a peer address is a ("peer", host) tuple, so
# no institution code a caller sends can name (and spend) an address's budget.
Caller: TypeAlias = "str | tuple[str, str]"

BUDGET_CALLS, BUDGET_STREAMS, BUDGET_LINES = "calls", "streams", "lines"
BUDGETS = (BUDGET_CALLS, BUDGET_STREAMS, BUDGET_LINES)
BUDGET_SETTINGS = {
    BUDGET_CALLS: "SGW_CALLER_CALLS",
    BUDGET_STREAMS: "SGW_CALLER_STREAMS",
    BUDGET_LINES: "SGW_CALLER_LINES",
}
# At most one log line per budget this often: a flood is counted in the metrics, not logged
# call by call.
REFUSAL_LOG_INTERVAL_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class CallerBudgets:
    """One caller's budget (see the module docstring); the defaults are documented in
    docs/operations.md. ``idle_seconds``: ``SGW_STREAM_IDLE_SECONDS``."""

    calls: int = 64
    streams: int = 16
    lines: int = 20_000
    idle_seconds: float = 300.0

    def __post_init__(self) -> None:
        if min(self.calls, self.streams, self.lines) <= 0 or not self.idle_seconds > 0:
            raise ValueError("caller budgets and the stream idle time must be positive")


def describe(caller: Caller) -> str:
    if isinstance(caller, tuple):
        return f"the caller at {caller[1]} (no institution code yet)"
    return f"caller {caller!r}"


def peer_caller(context: Context) -> Caller:
    """``ipv4:10.1.2.3:50000`` -> ("peer", "ipv4:10.1.2.3"): the address without the port,
    so a caller's connections share one budget."""
    peer = context.peer() or "unknown"
    if peer.startswith(("ipv4:", "ipv6:")):
        peer = peer.rpartition(":")[0]
    return ("peer", peer)


def institution_caller(context: Context, request: Any) -> Caller:
    """Without mTLS: the request's institution code, else the peer's address."""
    code = getattr(request, "institution_code", None)
    if code:
        code = code.strip()
        if code:
            return str(code)
    return peer_caller(context)


def certificate_caller(context: Context, request: Any = None) -> Caller:
    """With mTLS: the client certificate's identity (all of its SANs, else its CN)."""
    return certificate_identity(context) or peer_caller(context)


class InFlightLimit:
    """At most ``limit`` calls open at once in the process; a call beyond it is refused at once
    with ``RESOURCE_EXHAUSTED`` rather than queued behind a flood (``None``: no limit).

    gRPC's own ``maximum_concurrent_rpcs`` refuses a call after the interceptors ran but
    before the handler they wrapped, so its refusals never reached the metrics; refused here,
    a call is counted as started and as handled with ``ResourceExhausted``."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit <= 0:
            raise ValueError("the concurrency limit must be positive")
        self.limit = limit
        self.in_flight = 0

    def full(self) -> bool:
        return self.limit is not None and self.in_flight >= self.limit

    def message(self) -> str:
        return (
            f"the gateway is already handling its limit of {self.limit} calls at once "
            "(SGW_MAX_CONCURRENT_RPCS); retry shortly or send the call to another instance"
        )


class Ledger:
    """What each caller holds now: calls, streams and lines in flight (absent = none)."""

    def __init__(self, budgets: CallerBudgets) -> None:
        self.budgets = budgets
        self.calls: dict[Caller, int] = {}
        self.streams: dict[Caller, int] = {}
        self.lines: dict[Caller, int] = {}

    def over_budget(self, caller: Caller, stream: bool) -> str | None:
        """The budget one more call (a stream if ``stream``) would exceed, or None."""
        if self.calls.get(caller, 0) >= self.budgets.calls:
            return BUDGET_CALLS
        if stream and self.streams.get(caller, 0) >= self.budgets.streams:
            return BUDGET_STREAMS
        return None

    def lines_over_budget(self, caller: Caller, lines: int) -> bool:
        held = self.lines.get(caller, 0)
        return held > 0 and held + lines > self.budgets.lines

    def take(self, counts: dict[Caller, int], caller: Caller, n: int = 1) -> None:
        counts[caller] = counts.get(caller, 0) + n

    def give(self, counts: dict[Caller, int], caller: Caller, n: int = 1) -> None:
        left = counts[caller] - n
        if left:
            counts[caller] = left
        else:
            del counts[caller]  # the dictionaries hold only callers with something in flight


class CallGrant:
    """One admitted unary-request call's places, given back exactly once.

    Both the handler's ``finally`` (promptly) and the call's done callback (always, even when
    a streaming handler is dropped without being closed) release it; the second does nothing."""

    __slots__ = ("_admission", "_caller", "_held", "_lines")

    def __init__(self, admission: Admission, caller: Caller, lines: int) -> None:
        self._admission = admission
        self._caller = caller
        self._lines = lines
        self._held = True

    def release(self, _context: object = None) -> None:
        if self._held:
            self._held = False
            a = self._admission
            a.limit.in_flight -= 1
            a.ledger.give(a.ledger.calls, self._caller)
            if self._lines:
                a.ledger.give(a.ledger.lines, self._caller, self._lines)


class StreamGrant:
    """An admitted stream's places: the call and the stream for its lifetime, and the lines of
    the request being judged from when it is read until its reply is produced."""

    __slots__ = ("_admission", "_held", "caller", "first", "lines")

    def __init__(self, admission: Admission, caller: Caller) -> None:
        self._admission = admission
        self.caller = caller
        self.first = True
        self.lines = 0
        self._held = True

    def answered(self) -> None:
        """The request being judged has its reply: its lines are no longer in flight."""
        if self.lines and self._held:
            self._admission.ledger.give(self._admission.ledger.lines, self.caller, self.lines)
        self.lines = 0

    def release(self, _context: object = None) -> None:
        if self._held:
            self.answered()
            self._held = False
            a = self._admission
            a.limit.in_flight -= 1
            a.ledger.give(a.ledger.calls, self.caller)
            a.ledger.give(a.ledger.streams, self.caller)


class Admission:
    """The interceptor asks this before a handler runs: for a unary-request call
    ``admit_call``, for a stream ``open_stream`` and then ``stream_requests`` around its
    request iterator. A refusal is ``await context.abort(RESOURCE_EXHAUSTED, …)`` (raises)."""

    def __init__(
        self,
        max_concurrent_rpcs: int | None = None,
        budgets: CallerBudgets | None = None,
        mtls: bool = False,
        on_refusal: Callable[[str], None] | None = None,
        on_idle_close: Callable[[], None] | None = None,
        max_lines: int | None = None,
    ) -> None:
        self.limit = InFlightLimit(max_concurrent_rpcs)
        self.max_lines = max_lines
        self.budgets = budgets or CallerBudgets()
        self.ledger = Ledger(self.budgets)
        self.mtls = mtls
        self.identify: Callable[[Context, Any], Caller] = certificate_caller if mtls else institution_caller
        self.on_refusal = on_refusal
        self.on_idle_close = on_idle_close
        self._logged_at: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    # -- refusals ---------------------------------------------------------------------------

    async def _refuse(self, context: Context, budget: str, message: str) -> None:
        if self.on_refusal is not None:
            self.on_refusal(budget)
        self._log_refusal(budget, message)
        await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, message)

    def _log_refusal(self, budget: str, message: str) -> None:
        now = time.monotonic()
        self._unlogged[budget] = self._unlogged.get(budget, 0) + 1
        if now - self._logged_at.get(budget, -REFUSAL_LOG_INTERVAL_SECONDS) >= REFUSAL_LOG_INTERVAL_SECONDS:
            log.warning(
                "caller over budget",
                extra={"budget": budget, "refused": self._unlogged.pop(budget), "example": message},
            )
            self._logged_at[budget] = now

    def _budget_message(self, caller: Caller, budget: str) -> str:
        setting = BUDGET_SETTINGS[budget]
        limit = getattr(self.budgets, budget)
        held = {BUDGET_CALLS: self.ledger.calls, BUDGET_STREAMS: self.ledger.streams}[budget].get(caller, 0)
        what = "calls open" if budget == BUDGET_CALLS else "streams open"
        return f"{describe(caller)} already has {held} {what}, its budget ({setting}={limit}); " + (
            "close idle streams or send on the open ones"
            if budget == BUDGET_STREAMS
            else "retry when some have finished"
        )

    def _lines_message(self, caller: Caller, lines: int) -> str:
        held = self.ledger.lines.get(caller, 0)
        return (
            f"{describe(caller)} already has {held} lines being judged; {lines} more would exceed "
            f"its budget (SGW_CALLER_LINES={self.budgets.lines}); retry when its other bills are answered"
        )

    def _weight(self, request: Any) -> int:
        """The lines a request will hold while it is judged."""
        lines = getattr(request, "lines", None)
        if lines is None:
            return 0
        count = len(lines)
        return 0 if self.max_lines is not None and count > self.max_lines else count

    # -- unary-request calls ----------------------------------------------------------------

    async def admit_call(self, context: Context, request: Any) -> CallGrant:
        """Take a call's places (its caller's call and lines, one of the process's calls), or
        abort it with ``RESOURCE_EXHAUSTED``."""
        caller = self.identify(context, request)
        lines = self._weight(request)
        ledger = self.ledger
        budget = ledger.over_budget(caller, stream=False)
        if budget is not None:
            await self._refuse(context, budget, self._budget_message(caller, budget))
        if lines and ledger.lines_over_budget(caller, lines):
            await self._refuse(context, BUDGET_LINES, self._lines_message(caller, lines))
        if self.limit.full():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.limit.message())
        self.limit.in_flight += 1
        ledger.take(ledger.calls, caller)
        if lines:
            ledger.take(ledger.lines, caller, lines)
        grant = CallGrant(self, caller, lines)
        # The stubs type the callback as a class that exists only in them.
        context.add_done_callback(grant.release)  # type: ignore[arg-type]
        return grant

    # -- streams ----------------------------------------------------------------------------

    async def open_stream(self, context: Context) -> StreamGrant:
        """Take a stream's places before any request is read: its certificate identity's,
        else its peer address's (see the module docstring)."""
        caller = certificate_caller(context) if self.mtls else peer_caller(context)
        ledger = self.ledger
        budget = ledger.over_budget(caller, stream=True)
        if budget is not None:
            await self._refuse(context, budget, self._budget_message(caller, budget))
        if self.limit.full():
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, self.limit.message())
        self.limit.in_flight += 1
        ledger.take(ledger.calls, caller)
        ledger.take(ledger.streams, caller)
        grant = StreamGrant(self, caller)
        context.add_done_callback(grant.release)  # type: ignore[arg-type]
        return grant

    async def _admit_request(self, grant: StreamGrant, context: Context, request: Any) -> None:
        ledger = self.ledger
        grant.answered()  # a handler that reads ahead: the previous request is done with
        if grant.first:
            grant.first = False
            caller = grant.caller if self.mtls else institution_caller(context, request)
            if caller != grant.caller:
                budget = ledger.over_budget(caller, stream=True)
                if budget is not None:
                    await self._refuse(context, budget, self._budget_message(caller, budget))
                for counts in (ledger.calls, ledger.streams):
                    ledger.give(counts, grant.caller)
                    ledger.take(counts, caller)
                grant.caller = caller
        lines = self._weight(request)
        if lines:
            if ledger.lines_over_budget(grant.caller, lines):
                await self._refuse(context, BUDGET_LINES, self._lines_message(grant.caller, lines))
            ledger.take(ledger.lines, grant.caller, lines)
            grant.lines = lines

    async def stream_requests(
        self, requests: AsyncIterator[Any], grant: StreamGrant, context: Context
    ) -> AsyncIterator[Any]:
        """The stream's requests as the handler reads them: each admitted against its caller's
        lines, and the stream closed once no request came for ``idle_seconds``."""
        idle = self.budgets.idle_seconds
        iterator = aiter(requests)
        while True:
            try:
                async with asyncio.timeout(idle):
                    request = await anext(iterator)
            except StopAsyncIteration:
                return
            except TimeoutError:
                if self.on_idle_close is not None:
                    self.on_idle_close()
                await context.abort(
                    grpc.StatusCode.CANCELLED,
                    f"the stream sent no request for {idle:g} s (SGW_STREAM_IDLE_SECONDS) and is "
                    "closed; open a new one when there is a settlement to send",
                )
            await self._admit_request(grant, context, request)
            yield request
