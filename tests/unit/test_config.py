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


def test_reliability_settings() -> None:
    from gateway.outage import OutagePolicy

    s = Settings.from_env({})
    assert s.outage_policy is OutagePolicy.REFUSE and not s.tls_enabled and s.audit
    s = Settings.from_env({"SGW_OUTAGE_POLICY": "Accept-Flagged", "SGW_DEGRADED_MAX_AGE": "30"})
    assert s.outage_policy is OutagePolicy.ACCEPT_FLAGGED and s.degraded_max_age_seconds == 30


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SGW_OUTAGE_POLICY": "pay-all"}, "SGW_OUTAGE_POLICY='pay-all': expected refuse or accept-flagged"),
        ({"SGW_TLS_CERT": "c.pem"}, "SGW_TLS_KEY, SGW_TLS_CLIENT_CA not set"),
        ({"SGW_TLS_CERT": "c", "SGW_TLS_KEY": "k", "SGW_TLS_CLIENT_CA": "ca"}, "needs SGW_TLS_CLIENTS"),
        ({"SGW_TLS_CLIENTS": "clients.toml"}, "SGW_TLS_CLIENTS is set but TLS is not"),
    ],
)
def test_bad_reliability_settings(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
