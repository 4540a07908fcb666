"""One typed configuration, read from ``SGW_*`` environment variables; CLI flags override.

Errors name the variable and the bad value, so an operator fixes a unit file in one go.
``environ`` is a parameter so tests pass a plain dict.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from gateway.admission import CallerBudgets
from gateway.cache import DEFAULT_MAX_ENTRIES
from gateway.codes import DEFAULT_INSTITUTION_CODE_PATTERN, DEFAULT_STAFF_CODE_PATTERN, CodeShapes
from gateway.keys import DEFAULT_NAMESPACE
from gateway.loops import DEFAULT_EVENT_LOOP, parse_event_loop
from gateway.metrics import MetricsConfig
from gateway.outage import OutagePolicy, parse_outage_policy
from gateway.profiles.loading import DEFAULT_PROFILE, Profile, ProfileError
from gateway.profiles.loading import load as load_profile
from gateway.rules import DEFAULT_EMERGENCY_MED_TYPES, RulesConfig

T = TypeVar("T")


class ConfigError(ValueError):
    """A setting has a value the product cannot use."""


def default_state_dir() -> Path:
    """Per-user state directory for the embedded Redis (XDG, like other daemons' state)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "settlement-gateway"


def mask_url(url: str | None) -> str | None:
    """The URL with any password replaced, for logs and ``repr``."""
    if not url:
        return url
    parts = urlsplit(url)
    # A Sentinel URL may carry the Sentinels' password in its query.
    query = re.sub(r"(^|&)(sentinel_password=)[^&]*", r"\1\2***", parts.query)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def parse_csv_set(value: str) -> frozenset[str]:
    return frozenset(item.strip() for item in value.split(",") if item.strip())


def parse_bool(value: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError("expected true/false")


def parse_positive_int(value: str) -> int:
    number = int(value)
    if number <= 0:
        raise ValueError("must be positive")
    return number


def parse_non_negative_int(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError("must be 0 or more")
    return number


def parse_positive_float(value: str) -> float:
    number = float(value)
    if not number > 0:
        raise ValueError("must be positive")
    return number


def parse_cancellation_scope(value: str) -> bool:
    """``national`` (default, 000 §14: the code itself is cancelled) or ``institution``."""
    lowered = value.strip().lower()
    if lowered not in {"national", "institution"}:
        raise ValueError("expected national or institution")
    return lowered == "national"


@dataclass(frozen=True)
class Settings:
    """Everything the gateway and loader are configured with. Field ↔ variable: ``SGW_`` +
    upper-case name (see ``ENV``)."""

    listen: str = "[::]:50051"
    metrics_listen: str = "[::]:9464"
    redis_url: str | None = field(default=None, repr=False)
    state_dir: Path = field(default_factory=default_state_dir)
    namespace: str = DEFAULT_NAMESPACE
    max_lines: int = 10_000
    # A line dated after today (CST) plus this many days is refused: a bill is settled on or
    # after the day of service, and a line dated years ahead would never be audited.
    max_future_days: int = 0
    emergency_med_types: frozenset[str] = DEFAULT_EMERGENCY_MED_TYPES
    staff_code_pattern: str = DEFAULT_STAFF_CODE_PATTERN
    institution_code_pattern: str = DEFAULT_INSTITUTION_CODE_PATTERN
    national_cancellation: bool = True
    # The region's policy profile (gateway/profiles): a shipped name or a TOML file.
    policy_profile: str = DEFAULT_PROFILE
    # Every Redis call is bounded: a checkout never waits longer than this on the store.
    redis_timeout_seconds: float = 0.5
    # Connections per gateway process; calls beyond it wait (within the timeout) for one.
    redis_max_connections: int = 64
    # On SIGTERM, in-flight calls get this long to finish.
    shutdown_grace_seconds: float = 10.0
    max_message_bytes: int = 16 * 1024 * 1024
    log_level: str = "INFO"
    keep_names: bool = False
    event_loop: str = DEFAULT_EVENT_LOOP
    # Serving processes sharing the gRPC port (SO_REUSEPORT, gateway.workers); 1 = no supervisor.
    workers: int = 1
    # Bounds on per-institution metric series (see gateway/metrics.py): an allowlist, else
    # the first ``metrics_institution_limit`` institutions seen; the rest count as "other".
    metrics_institutions: frozenset[str] = frozenset()
    metrics_institution_limit: int = 500
    # Staff-code shares are computed over each institution's last ``metrics_code_window``
    # lines; the ``metrics_top_codes`` busiest codes are exposed with their share.
    metrics_code_window: int = 2000
    metrics_top_codes: int = 3
    # -- Redis outages (gateway/outage.py, gateway/cache.py, gateway/breaker.py) --
    # refuse: UNAVAILABLE, HIS runs its emergency procedure (004 §58); see the README.
    outage_policy: OutagePolicy = OutagePolicy.REFUSE
    # Cached records answer (degraded) for this long after their version was last seen live.
    degraded_max_age_seconds: float = 600.0
    cache_entries: int = DEFAULT_MAX_ENTRIES
    # After this many consecutive failed Redis calls, fail fast for breaker_reset_seconds.
    breaker_failures: int = 3
    breaker_reset_seconds: float = 1.0
    # -- limits --
    # Calls being handled at once; more get RESOURCE_EXHAUSTED at once instead of queueing.
    max_concurrent_rpcs: int = 1000
    # Concurrent calls on one HTTP/2 connection.
    max_concurrent_streams: int = 100
    # -- fair share (gateway/admission.py): each caller's own budget --
    # Calls (unary and streams) one caller may have open at once.
    caller_calls: int = 64
    # Of those, streams.
    caller_streams: int = 16
    # Lines of one caller's bills being judged at once (one bill is always admitted alone).
    caller_lines: int = 20_000
    # A stream that sends no request for this long is closed.
    stream_idle_seconds: float = 300.0
    # -- /metrics over TLS with client certificates: all three files, or none --
    metrics_tls_cert: Path | None = None
    metrics_tls_key: Path | None = None
    metrics_tls_client_ca: Path | None = None
    # Client-certificate identities (SAN, else CN) allowed to scrape; empty: any the CA signed.
    metrics_tls_clients: frozenset[str] = frozenset()
    # -- mTLS (gateway/auth.py): all three files, or none --
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    # TOML mapping client-certificate identity -> institution codes it may validate.
    tls_clients: Path | None = None
    # -- audit trail (gateway/audit.py) --
    audit: bool = True
    # Approximate cap of the audit stream without an archive (entries); each is ~1 KB in Redis.
    audit_max_entries: int = 5_000_000
    # Audit records waiting to be written; beyond it they are dropped and counted.
    audit_queue_lines: int = 200_000
    # The PostgreSQL audit archive (gateway/audit/archive.py). Set: the gateway leaves the
    # stream untrimmed for `settlement-gateway audit-archive`; unset: the stream stays capped.
    audit_dsn: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in ("redis_url", "audit_dsn")
        )
        return f"Settings(redis_url={mask_url(self.redis_url)!r}, {shown}, audit_dsn={mask_url(self.audit_dsn)!r})"

    @cached_property
    def profile(self) -> Profile:
        return load_profile(self.policy_profile)

    @cached_property
    def rules(self) -> RulesConfig:
        # SGW_EMERGENCY_MED_TYPES, when set to other than the default, replaces the profile's
        # list; SGW_CANCELLATION_SCOPE=institution narrows the profile's scope.
        explicit = self.emergency_med_types != DEFAULT_EMERGENCY_MED_TYPES
        return self.profile.rules_config(
            self.shapes,
            national_cancellation=self.national_cancellation,
            emergency_med_types=self.emergency_med_types if explicit else None,
        )

    @cached_property
    def metrics(self) -> MetricsConfig:
        return MetricsConfig(
            institutions=self.metrics_institutions,
            institution_limit=self.metrics_institution_limit,
            code_window=self.metrics_code_window,
            top_codes=self.metrics_top_codes,
            shapes=self.shapes,
        )

    @cached_property
    def shapes(self) -> CodeShapes:
        return CodeShapes.from_patterns(self.staff_code_pattern, self.institution_code_pattern)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from ``SGW_*`` variables, then ``overrides`` (CLI flags; None = unset)."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (var, cast) in ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[name] = _cast(var, raw, cast)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.validate()
        return settings

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def validate(self) -> None:
        try:
            self.shapes  # noqa: B018 - compiles the patterns
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            self.profile  # noqa: B018 - reads and validates the policy profile
        except ProfileError as exc:
            raise ConfigError(f"SGW_POLICY_PROFILE={self.policy_profile!r}: {exc}") from exc
        if self.max_lines <= 0:
            raise ConfigError(f"max_lines must be positive, got {self.max_lines}")
        if self.max_future_days < 0:
            raise ConfigError(f"max_future_days must be 0 or more, got {self.max_future_days}")
        if self.workers <= 0:
            raise ConfigError(f"workers must be positive, got {self.workers}")
        tls = {
            "SGW_TLS_CERT": self.tls_cert,
            "SGW_TLS_KEY": self.tls_key,
            "SGW_TLS_CLIENT_CA": self.tls_client_ca,
        }
        given = [name for name, value in tls.items() if value is not None]
        if given and len(given) != len(tls):
            missing = ", ".join(name for name in tls if name not in given)
            raise ConfigError(
                f"mTLS needs a server certificate, its key and the client CA: {missing} not set"
            )
        if given and self.tls_clients is None:
            raise ConfigError("mTLS needs SGW_TLS_CLIENTS, the identity -> institutions mapping file")
        if self.tls_clients is not None and not given:
            raise ConfigError(
                "SGW_TLS_CLIENTS is set but TLS is not (SGW_TLS_CERT, SGW_TLS_KEY, SGW_TLS_CLIENT_CA)"
            )
        self.validate_metrics_tls()

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    @cached_property
    def caller_budgets(self) -> CallerBudgets:
        return CallerBudgets(
            self.caller_calls, self.caller_streams, self.caller_lines, self.stream_idle_seconds
        )

    def validate_metrics_tls(self) -> None:
        files = {
            "SGW_METRICS_TLS_CERT": self.metrics_tls_cert,
            "SGW_METRICS_TLS_KEY": self.metrics_tls_key,
            "SGW_METRICS_TLS_CLIENT_CA": self.metrics_tls_client_ca,
        }
        given = [name for name, value in files.items() if value is not None]
        if given and len(given) != len(files):
            missing = ", ".join(name for name in files if name not in given)
            raise ConfigError(
                f"/metrics over TLS needs a certificate, its key and the client CA: {missing} not set"
            )
        if self.metrics_tls_clients and not given:
            raise ConfigError(
                "SGW_METRICS_TLS_CLIENTS is set but /metrics TLS is not (SGW_METRICS_TLS_CERT, …)"
            )

    @property
    def metrics_tls_enabled(self) -> bool:
        return self.metrics_tls_cert is not None


def _cast(var: str, raw: str, cast: Callable[[str], T]) -> T:
    try:
        return cast(raw)
    except ValueError as exc:
        raise ConfigError(f"{var}={raw!r}: {exc}") from exc


ENV: Mapping[str, tuple[str, Callable[[str], Any]]] = {
    "listen": ("SGW_LISTEN", str),
    "metrics_listen": ("SGW_METRICS_LISTEN", str),
    "redis_url": ("SGW_REDIS_URL", str),
    "state_dir": ("SGW_STATE_DIR", Path),
    "namespace": ("SGW_NAMESPACE", str),
    "max_lines": ("SGW_MAX_LINES", parse_positive_int),
    "max_future_days": ("SGW_MAX_FUTURE_DAYS", parse_non_negative_int),
    "emergency_med_types": ("SGW_EMERGENCY_MED_TYPES", parse_csv_set),
    "staff_code_pattern": ("SGW_STAFF_CODE_PATTERN", str),
    "institution_code_pattern": ("SGW_INSTITUTION_CODE_PATTERN", str),
    "national_cancellation": ("SGW_CANCELLATION_SCOPE", parse_cancellation_scope),
    "policy_profile": ("SGW_POLICY_PROFILE", str),
    "redis_timeout_seconds": ("SGW_REDIS_TIMEOUT", parse_positive_float),
    "redis_max_connections": ("SGW_REDIS_MAX_CONNECTIONS", parse_positive_int),
    "shutdown_grace_seconds": ("SGW_SHUTDOWN_GRACE", parse_positive_float),
    "max_message_bytes": ("SGW_MAX_MESSAGE_BYTES", parse_positive_int),
    "log_level": ("SGW_LOG_LEVEL", str),
    "keep_names": ("SGW_KEEP_NAMES", parse_bool),
    "event_loop": ("SGW_EVENT_LOOP", parse_event_loop),
    "workers": ("SGW_WORKERS", parse_positive_int),
    "metrics_institutions": ("SGW_METRICS_INSTITUTIONS", parse_csv_set),
    "metrics_institution_limit": ("SGW_METRICS_INSTITUTION_LIMIT", parse_positive_int),
    "metrics_code_window": ("SGW_METRICS_CODE_WINDOW", parse_positive_int),
    "metrics_top_codes": ("SGW_METRICS_TOP_CODES", parse_positive_int),
    "outage_policy": ("SGW_OUTAGE_POLICY", parse_outage_policy),
    "degraded_max_age_seconds": ("SGW_DEGRADED_MAX_AGE", parse_positive_float),
    "cache_entries": ("SGW_CACHE_ENTRIES", parse_positive_int),
    "breaker_failures": ("SGW_BREAKER_FAILURES", parse_positive_int),
    "breaker_reset_seconds": ("SGW_BREAKER_RESET", parse_positive_float),
    "max_concurrent_rpcs": ("SGW_MAX_CONCURRENT_RPCS", parse_positive_int),
    "max_concurrent_streams": ("SGW_MAX_CONCURRENT_STREAMS", parse_positive_int),
    "caller_calls": ("SGW_CALLER_CALLS", parse_positive_int),
    "caller_streams": ("SGW_CALLER_STREAMS", parse_positive_int),
    "caller_lines": ("SGW_CALLER_LINES", parse_positive_int),
    "stream_idle_seconds": ("SGW_STREAM_IDLE_SECONDS", parse_positive_float),
    "metrics_tls_cert": ("SGW_METRICS_TLS_CERT", Path),
    "metrics_tls_key": ("SGW_METRICS_TLS_KEY", Path),
    "metrics_tls_client_ca": ("SGW_METRICS_TLS_CLIENT_CA", Path),
    "metrics_tls_clients": ("SGW_METRICS_TLS_CLIENTS", parse_csv_set),
    "tls_cert": ("SGW_TLS_CERT", Path),
    "tls_key": ("SGW_TLS_KEY", Path),
    "tls_client_ca": ("SGW_TLS_CLIENT_CA", Path),
    "tls_clients": ("SGW_TLS_CLIENTS", Path),
    "audit": ("SGW_AUDIT", parse_bool),
    "audit_max_entries": ("SGW_AUDIT_MAX_ENTRIES", parse_positive_int),
    "audit_queue_lines": ("SGW_AUDIT_QUEUE", parse_positive_int),
    "audit_dsn": ("SGW_AUDIT_DSN", str),
}
