"""Redis permission and authentication errors: a misconfiguration, not an outage.

A Redis that answers ``NOPERM`` (the ACL lacks a command or key), ``NOAUTH`` or ``WRONGPASS``
is up and will go on refusing until an operator changes the ACL or the password: retrying,
opening the breaker and answering degraded from the cache would hide that for as long as the
cache lasts (with ``accept-flagged``, paying suspended doctors meanwhile). So:

- at start, ``self_check`` sends every command the gateway will use once, with arguments
  that change nothing, and the gateway exits naming the command and the ACL rule to add;
- while serving, ``PermissionWatch`` logs each refusal, counts it in
  ``sgw_redis_permission_errors_total{command}`` (alert ``SettlementRedisPermissionDenied``)
  and tells health (NOT_SERVING) and ``GetStatus`` (``store_reachable: false``).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence

import redis.exceptions
from prometheus_client import Counter

from gateway.keys import Keys
from gateway.redis_client import AsyncRedis, ReadOnlyScript

log = logging.getLogger(__name__)

PERMISSION_ERRORS = (redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationError)
# A refusal seen within this many seconds keeps the gateway NOT_SERVING: longer than the
# health refresh and the lease renewal, so a command that always fails is never missed.
RECENT_SECONDS = 5.0
# A command refused over and over (each lease renewal) is logged at most this often.
LOG_EVERY_SECONDS = 60.0
ACL_TEMPLATE = "deploy/redis/users.acl.template"
# What the gateway sends (``probes`` below, and ``evalsha`` on Redis 6), plus ``auth`` for a
# refused login: the metric's label values, all exposed at zero from the start.
GATEWAY_COMMANDS = (
    "auth", "ping", "get", "mget", "hgetall", "script|load", "evalsha_ro", "evalsha", "xadd", "xrange",
)  # fmt: skip
_COMMAND = re.compile(r"run the '([^']+)' command")
_PREFIXES = ("NOPERM", "NOAUTH", "WRONGPASS")


def is_permission_error(exc: BaseException) -> bool:
    if isinstance(exc, PERMISSION_ERRORS):
        return True
    # Inside a pipeline or a script, the refusal may come wrapped as a plain ResponseError.
    return isinstance(exc, redis.exceptions.ResponseError) and any(p in str(exc) for p in _PREFIXES)


def refused_command(exc: BaseException, default: str = "unknown") -> str:
    """The command Redis names in a NOPERM reply (``mget``, ``script|load``), else ``default``."""
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return "auth"
    found = _COMMAND.search(str(exc))
    return found.group(1).lower() if found else default


def fix_for(command: str, exc: BaseException) -> str:
    """What the operator changes, in the ACL file's own words."""
    if isinstance(exc, redis.exceptions.AuthenticationError) or command == "auth":
        return (
            "check the user name and password in SGW_REDIS_URL against the Redis ACL "
            f"(render it with deploy/redis/render-acl from {ACL_TEMPLATE})"
        )
    if "key" in str(exc).lower():
        return f"grant the gateway's user the key pattern it needs (%R~{{sgw}}:*) in {ACL_TEMPLATE}"
    return f"add +{command} to the gateway's user (user sgw-gateway ... +{command}) in {ACL_TEMPLATE}"


class PermissionWatch:
    """Remembers the last permission refusal and counts every one."""

    def __init__(self, counter: Counter | None = None) -> None:
        self.counter = counter
        self.last_error: str | None = None
        self._last_at = float("-inf")
        self._logged: dict[str, float] = {}

    def saw(self, exc: BaseException, command: str = "unknown") -> None:
        command = refused_command(exc, command)
        now = time.monotonic()
        self._last_at = now
        self.last_error = f"Redis refused {command}: {exc}; {fix_for(command, exc)}"
        if self.counter is not None:
            self.counter.labels(command).inc()
        if now - self._logged.get(command, float("-inf")) >= LOG_EVERY_SECONDS:
            self._logged[command] = now
            log.error(
                "redis permission error: the ACL or the password is misconfigured",
                extra={"command": command, "error": str(exc), "fix": fix_for(command, exc)},
            )

    def failing(self) -> str | None:
        """The last refusal, if it is recent; None while the store answers as configured."""
        if time.monotonic() - self._last_at <= RECENT_SECONDS:
            return self.last_error
        return None


class SelfCheckFailed(RuntimeError):
    """Redis refused a command the gateway needs; the message names it and the fix."""


Probe = tuple[str, Callable[[], Awaitable[object]]]


def probes(client: AsyncRedis, keys: Keys, read_script: str, audit: bool) -> Sequence[Probe]:
    """Every command the gateway sends while serving, each with arguments that change
    nothing: reads, a script load (idempotent), and an ``XADD`` with the id ``0-0``, which
    Redis checks against the ACL first and then refuses without writing."""
    script = ReadOnlyScript(client, read_script)
    checks: list[Probe] = [
        ("ping", lambda: client.ping()),
        ("get", lambda: client.get(keys.live)),
        ("mget", lambda: client.mget(keys.live, keys.switching)),
        ("hgetall", lambda: client.hgetall(keys.version_meta("self-check"))),
        ("script|load", lambda: client.script_load(read_script)),
        (
            script.command.lower(),
            lambda: script(
                keys=[
                    keys.live,
                    *(keys.table(kind, "self-check") for kind in ("staff", "institution", "department")),
                ],
                args=["self-check", "self-check", "self-check"],
            ),
        ),
    ]
    if audit:
        checks += [
            ("xadd", lambda: client.execute_command("XADD", keys.audit, "0-0", "self-check", "1")),
            ("xrange", lambda: client.xrange(keys.audit, count=1)),
        ]
    return checks


async def self_check(client: AsyncRedis, keys: Keys, read_script: str, audit: bool) -> None:
    """Raise ``SelfCheckFailed`` naming the first command Redis refuses to the gateway."""
    for command, probe in probes(client, keys, read_script, audit):
        try:
            await probe()
        except redis.exceptions.RedisError as exc:
            if is_permission_error(exc):
                named = refused_command(exc, command)
                raise SelfCheckFailed(
                    f"Redis refuses {named} to the gateway ({exc}): {fix_for(named, exc)}"
                ) from exc
            if command != "xadd":  # XADD 0-0 is meant to be refused, for its id
                raise
