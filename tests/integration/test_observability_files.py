"""The alert rules and the dashboard only ask for metrics a live gateway really exposes, the
rules pass promtool, and every alert has a unit test that makes it fire."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader, free_port
from tests.exports import institution_row, line, request, staff_row
from tests.integration.test_metrics import wait_for_state_refresh
from tests.observability import (
    DASHBOARD,
    DEPLOY,
    RULE_TESTS,
    RULES,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    promql_metric_names,
    recorded_names,
    rules,
)
from tests.scrape import Scrape, scrape

# Series Prometheus itself attaches to every target.
PROMETHEUS_NAMES = {"up"}
# Names in prose (descriptions, annotations): a metric family or a sample name.
PROSE_NAME = re.compile(r"(?<![\w:])((?:sgw|grpc_server)_\w+)(?![\w:])")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is not installed: apt-get install prometheus (.ci/run does)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=RULE_TESTS.parent, timeout=120)


def test_promtool_accepts_the_rules_and_the_example_config() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    config = promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_test_that_fires_it_and_one_that_does_not() -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    alerts = {rule["alert"] for rule in rules() if "alert" in rule}
    fired = {case["alertname"] for case in cases if case.get("exp_alerts")}
    quiet = {case["alertname"] for case in cases if not case.get("exp_alerts")}
    assert alerts - fired == set()
    assert alerts - quiet == set()


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (le) (rate(a_bucket{job="x",le=~"0.1|inf"}[5m])) > 0.05', {"a_bucket"}),
        (
            "histogram_quantile(0.99, sum without (pid) (b)) offset 5m and on (i) c:rec:rate1h",
            {"b", "c:rec:rate1h"},
        ),
        ('topk(10, max by (institution, code) (d{x="by (y)"})) / ignoring(x) group_left e', {"d", "e"}),
        ("time() - f[1h:]", {"f"}),
    ],
)
def test_metric_names_are_read_from_promql(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names


async def live_scrape(load: Loader, gateway: GatewayApp) -> Scrape:
    """A scrape of a gateway that has data and has judged a settlement."""
    assert load("institution", [institution_row()]).outcome == 0
    assert load("staff", [staff_row()]).outcome == 0
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
        await pb_grpc.SettlementGatewayStub(channel).Validate(request(line()))
    await wait_for_state_refresh(gateway)
    return scrape(gateway.metrics_port)


@pytest.fixture
def loader_scrape(redis_url: str, tmp_path: Path) -> Iterator[Scrape]:
    """A scrape of a real ``settlement-loader watch`` (its metrics exist from the start)."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    env |= {"SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "settlement-loader"), "watch", str(inbox), "--interval", "0.2",
         "--metrics-listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                found = scrape(port)
                if found.value("sgw_loader_last_scan_timestamp_seconds"):
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                "settlement-loader watch did not serve"
            )
            time.sleep(0.1)
        yield found
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _unknown(names: set[str], *live: Scrape) -> set[str]:
    exposed = set().union(*(scrape.sample_names for scrape in live))
    return names - exposed - recorded_names() - PROMETHEUS_NAMES


async def test_alert_rules_use_only_exposed_metrics(
    load: Loader, gateway: GatewayApp, loader_scrape: Scrape
) -> None:
    live = await live_scrape(load, gateway)
    for rule in rules():
        assert _unknown(promql_metric_names(rule["expr"]), live, loader_scrape) == set(), rule.get(
            "alert", rule.get("record")
        )
    prose = " ".join(str(rule.get("annotations", {})) for rule in rules())
    known = live.sample_names | set(live.families) | loader_scrape.sample_names | set(loader_scrape.families)
    assert set(PROSE_NAME.findall(prose)) - known == set()


async def test_rule_unit_tests_feed_only_real_series(
    load: Loader, gateway: GatewayApp, loader_scrape: Scrape
) -> None:
    live = await live_scrape(load, gateway)
    series = [
        s["series"] for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for s in test["input_series"]
    ]
    names = {promql_metric_names(s).pop() for s in series}
    assert _unknown(names, live, loader_scrape) == set()


async def test_dashboard_uses_only_exposed_metrics(
    load: Loader, gateway: GatewayApp, loader_scrape: Scrape
) -> None:
    live = await live_scrape(load, gateway)
    exprs = dashboard_exprs()
    assert len(exprs) >= 25
    for title, expr in exprs:
        names = promql_metric_names(expr)
        assert names, title
        assert _unknown(names, live, loader_scrape) == set(), title
    prose = json.dumps([p.get("description", "") for p in dashboard_panels()])
    known = live.sample_names | set(live.families) | loader_scrape.sample_names | set(loader_scrape.families)
    assert set(PROSE_NAME.findall(prose)) - known == set()


def test_dashboard_is_provisionable() -> None:
    doc = dashboard()
    assert doc["uid"] == "settlement-gateway" and doc["title"]
    panels = list(dashboard_panels())
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    rows = {p["title"] for p in panels if p["type"] == "row"}
    assert rows == {"Traffic and latency", "Verdicts", "Institutions", "Data and loader", "Redis"}
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
    variables = {v["name"]: v for v in doc["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    # One gateway instance (or several) can be picked: every gateway query filters on it.
    assert variables["instance"]["definition"] == 'label_values(up{job="settlement-gateway"}, instance)'
    assert variables["instance"]["includeAll"] and variables["instance"]["allValue"] == ".*"
    for title, expr in ((p["title"], t["expr"]) for p in panels for t in p.get("targets", [])):
        if 'job="settlement-gateway"' in expr:
            assert expr.count('job="settlement-gateway",instance=~"$instance"') == expr.count(
                'job="settlement-gateway"'
            ), title
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/settlement-gateway.yml").read_text())
    assert provider["providers"][0]["type"] == "file"
    source = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"
    assert DASHBOARD.parent.name == "dashboards"
