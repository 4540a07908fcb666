"""The load generator: h2load (nghttp2, C) sending gRPC unary calls, closed loop.

A Python gRPC client spends about as much CPU per call as a Python gRPC server, so on a
2-core machine it would measure itself; h2load spends a few microseconds per call, leaving
the server under test as the bottleneck. A gRPC unary call is an HTTP/2 POST of one
length-prefixed message with ``content-type: application/grpc``; h2load replays one such
body on ``connections × streams`` concurrent streams and logs every call's latency.

h2load sees HTTP status, not ``grpc-status``: a gRPC error is still HTTP 200. The harness
therefore checks the gateway's own line counter after every run (see ``bench.py``).
"""

from __future__ import annotations

import re
import shutil
import statistics
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import Message

VALIDATE_PATH = "/settlement.v1.SettlementGateway/Validate"
H2LOAD_INSTALL_HINT = "h2load not found: install it with `apt-get install nghttp2-client`"


class LoadGeneratorError(RuntimeError):
    pass


def h2load_binary() -> str:
    found = shutil.which("h2load")
    if found is None:
        raise LoadGeneratorError(H2LOAD_INSTALL_HINT)
    return found


def grpc_frame(message: Message) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, bytes."""
    payload = message.SerializeToString()
    return struct.pack(">BI", 0, len(payload)) + payload


def split_concurrency(concurrency: int, max_connections: int) -> tuple[int, int]:
    """(connections, streams per connection) giving exactly ``concurrency`` streams or close."""
    connections = max(1, min(concurrency, max_connections))
    return connections, max(1, concurrency // connections)


@dataclass(frozen=True)
class LoadResult:
    requests: int
    failed: int
    seconds: float
    latencies_us: Sequence[int]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile_ms(self, q: float) -> float:
        return percentile(self.latencies_us, q) / 1000.0


def percentile(values: Sequence[int], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of unsorted values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return float(ordered[rank])


FINISHED = re.compile(r"finished in ([\d.]+)(m?s), ([\d.]+) req/s")
REQUESTS = re.compile(
    r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored"
)


def run_h2load(
    port: int,
    body: Path,
    *,
    concurrency: int,
    duration: float,
    warmup: float,
    workdir: Path,
    max_connections: int = 8,
    preexec: object = None,
) -> LoadResult:
    """Drive ``Validate`` on 127.0.0.1:``port`` for ``duration`` seconds after ``warmup``."""
    connections, streams = split_concurrency(concurrency, max_connections)
    log = workdir / f"h2load-{port}-{concurrency}.log"
    log.unlink(missing_ok=True)
    argv = [
        h2load_binary(), "-D", f"{round(duration * 1000)}ms", "--warm-up-time", f"{round(warmup * 1000)}ms",
        "-c", str(connections), "-m", str(streams), "-t", "1", f"--log-file={log}",
        "-d", str(body), "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"http://127.0.0.1:{port}{VALIDATE_PATH}",
    ]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, preexec_fn=preexec, check=False)  # type: ignore[arg-type]
    out = done.stdout
    finished, counts = FINISHED.search(out), REQUESTS.search(out)
    if done.returncode != 0 or finished is None or counts is None:
        raise LoadGeneratorError(f"h2load failed ({done.returncode}):\n{out[-2000:]}\n{done.stderr[-2000:]}")
    # "finished in" includes the warm-up; req/s and the counts cover the measured part only.
    succeeded, failed = int(counts.group(4)), int(counts.group(5)) + int(counts.group(6))
    rate = float(finished.group(3))
    seconds = succeeded / rate if rate else duration
    latencies = []
    for row in log.read_text().splitlines():
        parts = row.split("\t")
        if len(parts) >= 3 and parts[1] == "200":
            latencies.append(int(parts[2]))
    return LoadResult(succeeded, failed, seconds, latencies)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")
