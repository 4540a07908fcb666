"""One publisher at a time: a Redis lock that survives long loads and dies with its holder.

The lock's value names its holder (``host:pid:token``) and its TTL is short, renewed by a
background thread while the load runs. So a loader killed with ``kill -9`` holds nobody up
for long: its lock expires within ``LOCK_TTL_SECONDS``, and a loader on the same host that
sees the holder's process is gone takes it over at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator

import redis.exceptions

from gateway.redis_client import SyncRedis

log = logging.getLogger(__name__)

LOCK_TTL_SECONDS = 30
RENEW_EVERY_SECONDS = 5

# KEYS: lock. ARGV: token, ttl ms. Extend only our own lock.
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS: lock. ARGV: token. Delete only the lock we hold (or the dead holder's we inspected).
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class LockBusy(RuntimeError):
    """Another loader holds the publish lock."""


def _holder_is_dead(value: str) -> bool:
    """Whether a lock value names a process on this host that no longer exists."""
    host, _, rest = value.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class PublishLock:
    def __init__(self, client: SyncRedis, key: str) -> None:
        self.client = client
        self.key = key
        self._renew = client.register_script(RENEW)
        self._release = client.register_script(RELEASE)

    def _try_take(self, token: str) -> bool:
        if self.client.set(self.key, token, nx=True, ex=LOCK_TTL_SECONDS):
            return True
        holder = self.client.get(self.key)
        if holder is not None and _holder_is_dead(holder.decode()):  # type: ignore[union-attr]
            log.warning("taking over the publish lock of a dead loader", extra={"holder": holder.decode()})  # type: ignore[union-attr]
            self._release(keys=[self.key], args=[holder])
            return bool(self.client.set(self.key, token, nx=True, ex=LOCK_TTL_SECONDS))
        return False

    @contextlib.contextmanager
    def held(self, wait_seconds: float = 60.0) -> Iterator[None]:
        token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(6)}"
        deadline = time.monotonic() + wait_seconds
        while not self._try_take(token):
            if time.monotonic() >= deadline:
                raise LockBusy("another settlement-loader is publishing; try again later")
            time.sleep(0.2)
        stop = threading.Event()
        renewer = threading.Thread(target=self._keep, args=(token, stop), name="lock-renewal", daemon=True)
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            with contextlib.suppress(redis.exceptions.RedisError):
                self._release(keys=[self.key], args=[token])

    def _keep(self, token: str, stop: threading.Event) -> None:
        while not stop.wait(RENEW_EVERY_SECONDS):
            try:
                if not self._renew(keys=[self.key], args=[token, LOCK_TTL_SECONDS * 1000]):
                    log.error("the publish lock was lost; the commit will refuse if live moved")
                    return
            except redis.exceptions.RedisError as exc:
                log.warning("could not renew the publish lock", extra={"error": str(exc)})
