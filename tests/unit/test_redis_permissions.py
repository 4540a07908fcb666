"""Telling a refused command from an outage, and naming the fix (gateway/redis_permissions.py)."""

from __future__ import annotations

import redis.exceptions
from prometheus_client import CollectorRegistry, Counter

from gateway.redis_permissions import PermissionWatch, fix_for, is_permission_error, refused_command

NOPERM = redis.exceptions.NoPermissionError("this user has no permissions to run the 'mget' command")
WRONGPASS = redis.exceptions.AuthenticationError("invalid username-password pair or user is disabled.")


def test_refusals_are_told_from_outages() -> None:
    assert is_permission_error(NOPERM) and is_permission_error(WRONGPASS)
    assert is_permission_error(
        redis.exceptions.ResponseError("Command # 1 (XADD) of pipeline caused error: NOPERM x")
    )
    assert not is_permission_error(redis.exceptions.ConnectionError("Connection refused"))
    assert not is_permission_error(redis.exceptions.TimeoutError("Timeout reading from socket"))
    assert not is_permission_error(
        redis.exceptions.ResponseError("ERR The ID specified in XADD must be greater")
    )


def test_the_fix_names_the_command_and_the_rule() -> None:
    assert refused_command(NOPERM) == "mget"
    assert "+mget" in fix_for("mget", NOPERM) and "users.acl.template" in fix_for("mget", NOPERM)
    assert refused_command(WRONGPASS) == "auth" and "SGW_REDIS_URL" in fix_for("auth", WRONGPASS)


def test_the_watch_counts_and_reports_a_recent_refusal() -> None:
    registry = CollectorRegistry()
    counter = Counter("refused_total", "refused", ["command"], registry=registry)
    watch = PermissionWatch(counter)
    assert watch.failing() is None
    watch.saw(NOPERM)
    watch.saw(NOPERM)
    assert registry.get_sample_value("refused_total", {"command": "mget"}) == 2
    failing = watch.failing()
    assert failing is not None and "mget" in failing and "+mget" in failing
