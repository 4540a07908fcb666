"""Steady load with every answer checked, for the fault tests and ``benchmarks/faults.py``.

Each call's outcome is kept (start time, latency, status, degraded flag, and whether its
verdicts match the truth), so a test can ask "did anything crash, hang or answer wrongly
during the fault?" and the benchmark can report the p99 of each phase. The gateway runs as
a real process (``GatewayProcess``); its log goes to a file, so a chatty gateway never blocks
on a full pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import orjson

from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.policy import OUTAGE_ARTICLE
from gateway.redis_client import sync_client
from loader.publish import Publisher
from loader.sync import SyncOptions, sync_file
from tests import exports
from tests.exports import HOSPITAL, OTHER_HOSPITAL, institution_row, line, request, staff_row

BIN = Path(sys.executable).parent
VALIDATE = "/settlement.v1.SettlementGateway/Validate"

# A verdict as compared: (line_id, verdict, reason, rule).
Verdicts = tuple[tuple[str, int, int, str], ...]


def verdicts_of(reply: pb.ValidateResponse) -> Verdicts:
    return tuple((v.line_id, v.verdict, v.reason, v.rule) for v in reply.verdicts)


# -- data ---------------------------------------------------------------------------------

STATUS_CYCLE = ("正常", "正常", "正常", "中止", "解除", "注销", "封锁")


def staff_codes(n: int) -> list[str]:
    return [f"D3309020{i:05d}" for i in range(n)]


def load_population(redis_url: str, workdir: Path, staff: int) -> str:
    """Two institutions and ``staff`` doctors with every status; returns the data version."""
    client = sync_client(redis_url)
    try:
        publisher = Publisher(client, Keys())
        rows = []
        for i, code in enumerate(staff_codes(staff)):
            rows.append(staff_row(code))
            status = STATUS_CYCLE[i % len(STATUS_CYCLE)]
            if status != "正常":
                rows.append(staff_row(code, status=status, start="2026-01-01"))
        version = ""
        for kind, kind_rows in (
            ("institution", [institution_row(), institution_row(OTHER_HOSPITAL)]),
            ("staff", rows),
        ):
            path = exports.write_csv(workdir / f"fault-{kind}.csv", exports.HEADERS[kind], kind_rows)
            result = sync_file(path, publisher, SyncOptions(allow_incomplete=True, kind=kind))  # type: ignore[arg-type]
            if result.outcome != 0:
                raise RuntimeError(f"loading {kind} failed: {result.message}")
            version = result.data_version
        return version
    finally:
        client.close()


def bills(codes: Sequence[str], per_bill: int, prefix: str) -> list[pb.ValidateRequest]:
    """Bills of ``per_bill`` lines cycling through ``codes`` (every 5th bill an emergency)."""
    out = []
    for i in range(0, len(codes), per_bill):
        chunk = codes[i : i + per_bill]
        req = request(
            *[line(str(j + 1), code, amount_fen=100 + j) for j, code in enumerate(chunk)],
            request_id=f"{prefix}-{i // per_bill}",
            med_type="13" if (i // per_bill) % 5 == 4 else "11",
        )
        req.settlement_id = f"MDTRT-{prefix}-{i // per_bill}"
        out.append(req)
    return out


# -- the gateway as a process ---------------------------------------------------------------


@dataclass
class GatewayProcess:
    """``settlement-gateway serve`` on free ports, logging to a file."""

    env: Mapping[str, str]
    workdir: Path
    args: Sequence[str] = ()
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"gateway-{self.port}.log"

    def start(self, port: int, metrics_port: int, timeout: float = 30) -> None:
        self.port = port
        env = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
        env.update(self.env)
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(BIN / "settlement-gateway"), "serve", "--listen", f"127.0.0.1:{port}",
                 "--metrics-listen", f"127.0.0.1:{metrics_port}", *self.args],
                env=env, stdout=subprocess.DEVNULL, stderr=log,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"gateway exited {self.proc.returncode}: {self.log_path.read_text()[-2000:]}"
                )
            if b'"settlement gateway ready"' in self.log_path.read_bytes():
                return
            time.sleep(0.05)
        raise RuntimeError("gateway did not become ready")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def tail(self, n: int = 15) -> list[str]:
        """The last log lines, for an assertion message."""
        return self.log_path.read_text(errors="replace").splitlines()[-n:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_lines(self) -> list[dict[str, object]]:
        out = []
        for raw in self.log_path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                out.append(orjson.loads(raw))
        return out


# -- load -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    started: float  # time.monotonic()
    seconds: float
    code: grpc.StatusCode
    degraded: bool = False
    data_version: str = ""
    request_index: int = -1
    verdicts: Verdicts = ()
    details: str = ""


@dataclass
class Load:
    """Closed-loop workers calling Validate until ``stop`` is set."""

    target: str
    requests: Sequence[pb.ValidateRequest]
    concurrency: int = 8
    timeout: float = 5.0
    # True: a worker refused with UNAVAILABLE stops, as a client fails over to another
    # instance (the shutdown test); False: it backs off briefly and goes on.
    failover: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> list[Outcome]:
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            await asyncio.gather(*(self._worker(stub, w) for w in range(self.concurrency)))
        return self.outcomes

    async def _worker(self, stub: pb_grpc.SettlementGatewayStub, worker: int) -> None:
        index = worker
        while not self.stop.is_set():
            i = index % len(self.requests)
            index += self.concurrency
            started = time.monotonic()
            try:
                reply = await stub.Validate(self.requests[i], timeout=self.timeout)
            except grpc.aio.AioRpcError as err:
                self.outcomes.append(
                    Outcome(
                        started,
                        time.monotonic() - started,
                        err.code(),
                        request_index=i,
                        details=err.details() or "",
                    )
                )
                if err.code() == grpc.StatusCode.UNAVAILABLE:
                    if self.failover:
                        return
                    await asyncio.sleep(0.005)  # as a client backs off; keeps a refused loop from spinning
                continue
            self.outcomes.append(
                Outcome(
                    started,
                    time.monotonic() - started,
                    grpc.StatusCode.OK,
                    reply.degraded,
                    reply.data_version,
                    i,
                    verdicts_of(reply),
                )
            )


async def raw_load(target: str, payloads: Sequence[bytes], concurrency: int, stop: asyncio.Event,
                   timeout: float = 30.0) -> list[Outcome]:  # fmt: skip
    """Workers sending raw bytes (huge or malformed requests) until ``stop`` is set."""
    outcomes: list[Outcome] = []
    async with grpc.aio.insecure_channel(
        target, options=[("grpc.max_send_message_length", 64 * 1024 * 1024)]
    ) as channel:
        call = channel.unary_unary(
            VALIDATE, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )

        async def worker(w: int) -> None:
            n = w
            while not stop.is_set():
                started = time.monotonic()
                try:
                    await call(payloads[n % len(payloads)], timeout=timeout)
                    code, details = grpc.StatusCode.OK, ""
                except grpc.aio.AioRpcError as err:
                    code, details = err.code(), err.details() or ""
                outcomes.append(Outcome(started, time.monotonic() - started, code, details=details))
                n += concurrency

        await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return outcomes


async def truth(target: str, requests: Sequence[pb.ValidateRequest]) -> list[Verdicts]:
    """Each request's verdicts from live data (the reference every answer is checked against)."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.SettlementGatewayStub(channel)
        out = []
        for req in requests:
            reply = await stub.Validate(req, timeout=10)
            if reply.degraded:
                raise RuntimeError("the reference answers must come from live data")
            out.append(verdicts_of(reply))
        return out


# -- checking and summarising ----------------------------------------------------------------


def wrong_answers(
    outcomes: Sequence[Outcome],
    requests: Sequence[pb.ValidateRequest],
    reference: Sequence[Verdicts],
    version: str,
    cold: frozenset[str] = frozenset(),
) -> list[Outcome]:
    """OK answers that are not right: a live answer must be the truth; a degraded one must
    carry the data version and, line by line, be the truth, or (accept-flagged) a payment
    under the emergency plan for a staff code the cache could not know (``cold``)."""
    bad = []
    for o in outcomes:
        if o.code != grpc.StatusCode.OK:
            continue
        want = reference[o.request_index]
        if not o.degraded:
            ok = o.verdicts == want
        else:
            codes = [ln.staff_code for ln in requests[o.request_index].lines]
            ok = o.data_version == version and all(
                got == exp or (code in cold and got[1] == pb.ACCEPT and got[3] == OUTAGE_ARTICLE)
                for got, exp, code in zip(o.verdicts, want, codes, strict=True)
            )
        if not ok:
            bad.append(o)
    return bad


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class PhaseFigures:
    calls: int
    ok: int
    degraded: int
    failed: dict[str, int]
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(
        cls, outcomes: Sequence[Outcome], keep: Callable[[Outcome], bool] = lambda o: True
    ) -> PhaseFigures:
        chosen = [o for o in outcomes if keep(o)]
        failed: dict[str, int] = {}
        for o in chosen:
            if o.code != grpc.StatusCode.OK:
                failed[o.code.name] = failed.get(o.code.name, 0) + 1
        latencies = [o.seconds * 1000 for o in chosen]
        return cls(
            calls=len(chosen),
            ok=sum(o.code == grpc.StatusCode.OK for o in chosen),
            degraded=sum(o.degraded for o in chosen),
            failed=failed,
            p50_ms=statistics.median(latencies) if latencies else float("nan"),
            p99_ms=percentile(latencies, 0.99),
            max_ms=max(latencies, default=float("nan")),
        )


def between(start: float, end: float) -> Callable[[Outcome], bool]:
    return lambda o: start <= o.started < end


__all__ = ["HOSPITAL", "OTHER_HOSPITAL"]
