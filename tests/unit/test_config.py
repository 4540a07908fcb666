from __future__ import annotations

import pytest

from gateway.config import ConfigError, Settings, mask_url


def test_defaults() -> None:
    s = Settings.from_env({})
    assert (s.listen, s.metrics_listen, s.max_lines) == ("[::]:50051", "[::]:9464", 10_000)
    assert s.emergency_med_types == frozenset({"13", "24"})
    assert s.redis_url is None and s.national_cancellation


def test_environment_then_flags() -> None:
    env = {"SGW_LISTEN": "127.0.0.1:1", "SGW_MAX_LINES": "50", "SGW_EMERGENCY_MED_TYPES": "13, 9901"}
    s = Settings.from_env(env, listen="127.0.0.1:2", max_lines=None)
    assert s.listen == "127.0.0.1:2" and s.max_lines == 50
    assert s.emergency_med_types == frozenset({"13", "9901"})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SGW_MAX_LINES": "ten"}, "SGW_MAX_LINES='ten'"),
        ({"SGW_MAX_LINES": "0"}, "SGW_MAX_LINES='0': must be positive"),
        ({"SGW_CANCELLATION_SCOPE": "city"}, "expected national or institution"),
        ({"SGW_STAFF_CODE_PATTERN": "("}, "invalid code pattern"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        Settings.from_env(env)


def test_password_never_shown() -> None:
    s = Settings.from_env({"SGW_REDIS_URL": "redis://gw:s3cret@db:6379/0"})
    assert "s3cret" not in repr(s)
    assert mask_url("rediss://u:p@h:1/0") == "rediss://u:***@h:1/0"
