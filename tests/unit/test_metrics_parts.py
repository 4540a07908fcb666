"""The pure parts behind the metrics: the staff-code window, the state merge, error kinds,
the Redis call timer, the multiprocess directory's clean-up."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis.exceptions
from prometheus_client import CollectorRegistry, values

from gateway.breaker import BreakerOpen
from gateway.code_share import CodeShareTracker, WindowSummary
from gateway.metrics import GatewayMetrics, MetricsConfig, redis_error_kind
from gateway.metrics_exposition import MULTIPROC_ENV, prepare_multiprocess_dir
from gateway.metrics_state import ProcessState, StateCollector, write_state_file
from gateway.policy import Reason, Verdict
from gateway.rules import Decision, Line
from gateway.versions import Source


def test_window_keeps_the_most_recent_lines_and_forgets_the_rest() -> None:
    tracker = CodeShareTracker(window=10, top=2)
    tracker.add("H1", {"A": 6}, 6)
    tracker.add("H1", {"B": 4}, 4)
    assert tracker.summaries()["H1"] == WindowSummary(10, 2, (("A", 6), ("B", 4)))
    tracker.add("H1", {"C": 3}, 5)  # two lines without a code
    # Dropping A's request would leave fewer than 10 lines: it stays.
    assert tracker.summaries()["H1"] == WindowSummary(15, 3, (("A", 6), ("B", 4)))
    tracker.add("H1", {"D": 5}, 5)
    assert tracker.summaries()["H1"] == WindowSummary(10, 2, (("D", 5), ("C", 3)))


def test_a_request_larger_than_the_window_is_kept_whole_until_the_next() -> None:
    tracker = CodeShareTracker(window=10, top=3)
    tracker.add("H1", {"A": 30}, 30)
    assert tracker.summaries()["H1"].lines == 30
    tracker.add("H1", {"B": 10}, 10)
    assert tracker.summaries()["H1"] == WindowSummary(10, 1, (("B", 10),))


def _source(kind: str, loaded_at: float, rows: int, rejected: int = 0) -> Source:
    return Source(kind, f"/exports/{kind}-{loaded_at}.csv", "0" * 64, "full", rows, rejected, loaded_at)


def _samples(collector: StateCollector) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in collector.collect()
        for s in family.samples
    }


def test_states_of_several_processes_merge_into_one_view() -> None:
    windows_a = {"H1": WindowSummary(100, 30, (("D1", 40), ("D2", 10)))}
    windows_b = {"H1": WindowSummary(50, 20, (("D1", 20), ("D3", 15)))}
    old = ProcessState("v1", 1000.0, (_source("staff", 990.0, 5),), {"staff": 5}, windows_a)
    new = ProcessState(
        "v2", 1500.0, (_source("staff", 990.0, 5), _source("staff", 1490.0, 7, 1)), {"staff": 6}, windows_b
    )
    collector = StateCollector(lambda: [old, new], top_codes=2, clock=lambda: 1600.0)
    got = _samples(collector)
    # Freshness is the oldest any process serves; both versions are visible while they coexist.
    assert got["sgw_data_as_of_timestamp_seconds", ()] == 1000.0
    assert got["sgw_data_age_seconds", ()] == 600.0
    assert got["sgw_data_loaded", ()] == 1.0
    assert {k for k in got if k[0] == "sgw_data_version_info"} == {
        ("sgw_data_version_info", (("version", "v1"),)),
        ("sgw_data_version_info", (("version", "v2"),)),
    }
    # Loader provenance comes from the newest version, from its newest file of each kind.
    assert got["sgw_loader_rows", (("kind", "staff"),)] == 7
    assert got["sgw_loader_rejected_rows", (("kind", "staff"),)] == 1
    assert got["sgw_loader_files", (("kind", "staff"),)] == 2
    assert got["sgw_loader_last_load_timestamp_seconds", (("kind", "staff"),)] == 1490.0
    assert got["sgw_data_records", (("kind", "staff"),)] == 6
    # Windows add up: D1 carried 60 of 150 lines.
    assert got["sgw_staff_code_window_lines", (("institution", "H1"),)] == 150
    assert got["sgw_staff_code_window_codes", (("institution", "H1"),)] == 30
    assert got["sgw_staff_code_top_share", (("institution", "H1"),)] == pytest.approx(0.4)
    shares = {dict(k[1])["staff_code"]: v for k, v in got.items() if k[0] == "sgw_staff_code_share"}
    assert shares == pytest.approx({"D1": 0.4, "D3": 0.1})


def test_a_process_without_data_makes_data_loaded_zero() -> None:
    collector = StateCollector(lambda: [ProcessState("v1", 1000.0), ProcessState()], 3, clock=lambda: 1001.0)
    got = _samples(collector)
    assert got["sgw_data_loaded", ()] == 0.0
    assert got["sgw_data_age_seconds", ()] == 1.0


def test_state_survives_its_file_form() -> None:
    state = ProcessState(
        "v1",
        12.5,
        (_source("institution", 10.0, 3),),
        {"institution": 3},
        {"H1": WindowSummary(9, 2, (("A", 5),))},
    )
    assert ProcessState.from_json(state.to_json()) == state


def test_degraded_answers_are_counted() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, MetricsConfig())
    decision = Decision(Verdict.ACCEPT, Reason.OK, "", "")
    line = Line("D330902001234", "A03", "XA01", 20000, False, "1", 100)
    metrics.observe_settlement("H33090200017", [line], [decision], degraded=True)
    metrics.observe_settlement("H33090200017", [line], [decision], degraded=False)
    assert registry.get_sample_value("sgw_degraded_answers_total") == 1
    assert registry.get_sample_value("sgw_lines_total", {"verdict": "ACCEPT", "reason": "OK"}) == 2


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (redis.exceptions.TimeoutError("t"), "timeout"),
        (TimeoutError(), "timeout"),
        (redis.exceptions.ConnectionError("c"), "connection"),
        (ConnectionRefusedError(), "connection"),
        (redis.exceptions.ResponseError("NOSCRIPT"), "response"),
        (RuntimeError("x"), "other"),
        (BreakerOpen("open"), "breaker_open"),
    ],
)
def test_store_errors_fall_into_a_few_kinds(error: Exception, kind: str) -> None:
    assert redis_error_kind(error) == kind


def test_a_call_the_breaker_refused_is_counted_apart_and_not_timed() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry, MetricsConfig())
    for error in (BreakerOpen("open"), BreakerOpen("open"), redis.exceptions.ConnectionError("refused")):
        with pytest.raises(type(error)), metrics.redis_call("read"):
            raise error
    with metrics.redis_call("read"):
        pass

    def errors(kind: str) -> float | None:
        return registry.get_sample_value("sgw_redis_errors_total", {"call": "read", "error": kind})

    assert (errors("breaker_open"), errors("connection")) == (2, 1)
    # Only the two calls that reached Redis were timed.
    assert registry.get_sample_value("sgw_redis_call_seconds_count", {"call": "read"}) == 2
    # Like every kind, it exists from the start.
    meta = {"call": "meta", "error": "breaker_open"}
    assert registry.get_sample_value("sgw_redis_errors_total", meta) == 0


def test_a_new_run_removes_only_the_files_metrics_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # prepare_multiprocess_dir switches this process to multiprocess mode: undone afterwards.
    monkeypatch.setattr(values, "ValueClass", values.ValueClass)
    directory = tmp_path / "multiproc"
    monkeypatch.setenv(MULTIPROC_ENV, str(directory))
    directory.mkdir()
    written = ["counter_4242.db", "histogram_4242.db", "gauge_livesum_4242.db", "sgw_state_4242.tmp"]
    for name in written:
        (directory / name).write_bytes(b"previous run")
    write_state_file(directory, 4242, ProcessState("20200101T000000Z-stale0", 1.0))
    operators = ["README", "sgw_state_notes.txt", "metrics.db.bak", "keep/counter_1.db"]
    for name in operators:
        (directory / name).parent.mkdir(exist_ok=True)
        (directory / name).write_text("the operator's")

    assert prepare_multiprocess_dir() == directory
    left = sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())
    assert left == sorted(operators)
