"""Shared fixtures: a real redis-server per test session, the loader's publisher on it, and
the gateway running in-process on a free port behind a real gRPC channel.

No fakes: the store is a redis-server process (from PATH or the embedded fallback), every
test starts from FLUSHALL, and the gateway is called over the network like HIS calls it.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import hypothesis
import pytest
import redis

from gateway.config import Settings
from gateway.embedded import find_redis_server
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from loader.publish import Publisher
from loader.sync import SyncOptions, SyncResult, sync_file
from tests import exports

# Tests never fail on wall-clock time: the machine is shared and noisy, so hypothesis's
# per-example deadline is off for every property test.
hypothesis.settings.register_profile("sgw", deadline=None)
hypothesis.settings.load_profile("sgw")


@pytest.fixture(autouse=True)
def private_state_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own ``SGW_STATE_DIR``: the loader keeps its last published counts there (the
    shrink guard after a Redis wipe), so a CLI run that names no state directory must not meet
    another test's counts in the user's own one."""
    state = tmp_path_factory.mktemp("state")
    monkeypatch.setenv("SGW_STATE_DIR", str(state))
    return state


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RedisProcess:
    """A redis-server started for tests; ``kill``/``restart`` serve the fault tests."""

    binary: str
    port: int
    workdir: Path
    extra_args: tuple[str, ...] = ()
    proc: subprocess.Popen[bytes] | None = None
    # What the readiness check connects with (e.g. a user and password, or rediss://).
    ready_url: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [
            self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
            "--logfile", str(self.workdir / f"redis-{self.port}.log"), *self.extra_args,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        client = (
            redis.Redis.from_url(self.ready_url, socket_timeout=0.5)
            if self.ready_url
            else redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=0.5)
        )
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                if client.ping():
                    client.close()
                    return
            time.sleep(0.05)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(find_redis_server(), free_port(), tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def persistent_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of its own that keeps its data across ``kill()`` + ``start()`` (append-only
    file, fsync always), as a production Redis comes back after a crash: for fault tests."""
    server = RedisProcess(
        find_redis_server(), free_port(), tmp_path, ("--appendonly", "yes", "--appendfsync", "always")
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> str:
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    client.close()
    return redis_server.url


@pytest.fixture
def sync_redis(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def publisher(sync_redis: redis.Redis, keys: Keys) -> Publisher:
    return Publisher(sync_redis, keys)


Loader = Callable[..., SyncResult]


@pytest.fixture
def load(publisher: Publisher, tmp_path: Path) -> Loader:
    """``load(kind, rows, delta=False, **options)`` writes a CSV export and syncs it.

    Tests build versions one kind at a time, so the completeness guard (a version needs staff
    and institutions) is waived (``allow_incomplete``) unless a test says otherwise; the
    other guards hold unless a test passes ``force``."""
    counter = iter(range(1_000_000))

    def _load(kind: str, rows: list[list[str]], *, delta: bool = False, **options: object) -> SyncResult:
        options.setdefault("allow_incomplete", True)
        path = tmp_path / f"{kind}-{next(counter)}.csv"
        exports.write_csv(path, exports.HEADERS[kind], rows)
        return sync_file(path, publisher, SyncOptions(kind=kind, delta=delta, **options))  # type: ignore[arg-type]

    return _load


@pytest.fixture
def settings(redis_url: str, tmp_path: Path) -> Settings:
    return Settings(
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        redis_url=redis_url,
        state_dir=tmp_path / "state",
        shutdown_grace_seconds=2.0,
    )


@pytest.fixture
async def gateway(settings: Settings) -> AsyncIterator[GatewayApp]:
    app = GatewayApp(settings, settings.redis_url or "")
    await app.start()
    yield app
    await app.stop(0.5)


@pytest.fixture
async def stub(gateway: GatewayApp) -> AsyncIterator[pb_grpc.SettlementGatewayStub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        yield pb_grpc.SettlementGatewayStub(channel)
