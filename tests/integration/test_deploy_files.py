"""Every file under deploy/ checked offline by the tool that knows its format: the Compose
file against the Compose specification's schema (vendored), the Kubernetes manifests with
kubernetes-validate, all YAML with yamllint, the systemd units with ``systemd-analyze verify``,
the Alertmanager routing with amtool. Where a file names a command, the command is run: the
Compose Redis with its rendered ACL, the Compose Prometheus configuration with promtool."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from gateway.embedded import find_redis_server
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent
K8S_VERSION = "1.30.0"


def tool(name: str) -> str:
    found = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert found, f"{name} is missing (the dev extra or `make system-deps` installs it)"
    return found


def run(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, env=env)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return doc


def k8s_documents() -> list[dict[str, Any]]:
    return [
        d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d
    ]


# -- YAML everywhere ---------------------------------------------------------------------------


def test_yamllint_finds_nothing_under_deploy() -> None:
    result = run(tool("yamllint"), "--strict", "-c", str(DEPLOY / ".yamllint.yaml"), str(DEPLOY))
    assert result.returncode == 0, result.stdout + result.stderr


# -- Compose ------------------------------------------------------------------------------------


def test_compose_file_is_valid_against_the_compose_schema() -> None:
    schema = DEPLOY / "schemas" / "compose-spec.json"
    result = run(tool("check-jsonschema"), "--schemafile", str(schema), str(DEPLOY / "compose.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_services_are_the_stack() -> None:
    services = compose()["services"]
    assert set(services) == {
        "redis-acl",
        "redis",
        "gateway",
        "loader",
        "prometheus",
        "alertmanager",
        "grafana",
    }
    assert services["gateway"]["deploy"]["replicas"] == 2
    assert services["gateway"]["build"]["target"] == "gateway"
    assert services["loader"]["build"]["target"] == "loader"
    assert any(v.endswith(":/srv/exports") for v in services["loader"]["volumes"])
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert "--aclfile" in command
    # Every file or directory mounted from the repository exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), (name, source)
    build = services["gateway"]["build"]
    assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_redis_starts_with_its_command_and_the_rendered_acl(tmp_path: Path) -> None:
    """The redis-acl service's command renders the ACL; the redis service's command serves it
    (append-only), and the gateway and loader users of the Compose URLs authenticate."""
    services = compose()["services"]
    env = {**os.environ, "SGW_GATEWAY_REDIS_PASSWORD": "gw-pass", "SGW_LOADER_REDIS_PASSWORD": "ld-pass"}
    acl_dir = tmp_path / "acl"
    acl_dir.mkdir()
    render = services["redis-acl"]["entrypoint"]
    script = render[-1].replace("/acl-template", str(DEPLOY / "redis")).replace("/acl/", f"{acl_dir}/")
    result = run(*render[:-1], script, env=env)
    assert result.returncode == 0, result.stderr
    acl = (acl_dir / "users.acl").read_text()
    assert "gw-pass" not in acl and "user sgw-gateway on #" in acl
    data = tmp_path / "data"
    data.mkdir()
    port = free_port()
    command = [
        a.replace("/acl/", f"{acl_dir}/").replace("/data", str(data)) for a in services["redis"]["command"]
    ]
    proc = subprocess.Popen(
        [find_redis_server(), *command[1:], "--port", str(port), "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        gateway = redis.Redis(host="127.0.0.1", port=port, username="sgw-gateway", password="gw-pass")
        deadline = time.monotonic() + 10
        while True:
            try:
                assert gateway.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, "redis did not start"
                time.sleep(0.1)
        with pytest.raises(redis.exceptions.NoPermissionError):
            gateway.set("{sgw}:live", "x")
        loader = redis.Redis(host="127.0.0.1", port=port, username="sgw-loader", password="ld-pass")
        assert loader.set("{sgw}:live", "v1")
        # Append-only persistence: Redis 7 keeps its AOF files in appendonlydir/, older ones in
        # appendonly.aof (the ACL leaves the loader no INFO or CONFIG to ask).
        assert (data / "appendonlydir").is_dir() or (data / "appendonly.aof").is_file()
        for url_user in ("sgw-gateway", "sgw-loader"):
            assert url_user in str(services["gateway"]["environment"]) + str(
                services["loader"]["environment"]
            )
        gateway.close()
        loader.close()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_compose_prometheus_configuration_and_rules_load(tmp_path: Path) -> None:
    """The Compose Prometheus' /etc/prometheus, laid out from its volume mounts, passes promtool."""
    etc = tmp_path / "etc-prometheus"
    etc.mkdir()
    for volume in compose()["services"]["prometheus"]["volumes"]:
        source, _, rest = volume.partition(":")
        target = rest.split(":")[0]
        if not target.startswith("/etc/prometheus"):
            continue
        place = etc / Path(target).relative_to("/etc/prometheus")
        if (DEPLOY / source).is_dir():
            shutil.copytree(DEPLOY / source, place)
        else:
            shutil.copy(DEPLOY / source, place)
    result = run(tool("promtool"), "check", "config", str(etc / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    config = yaml.safe_load((etc / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert jobs == {"settlement-gateway", "settlement-loader"}
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == ["alertmanager:9093"]
    source = yaml.safe_load((DEPLOY / "compose/grafana-datasource.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"


# -- Alertmanager ---------------------------------------------------------------------------------

AMTOOL = shutil.which("amtool")
needs_amtool = pytest.mark.skipif(
    AMTOOL is None, reason="amtool (Debian prometheus-alertmanager) is not installed"
)


@needs_amtool
def test_alertmanager_configuration_is_valid() -> None:
    result = run(str(AMTOOL), "check-config", str(DEPLOY / "alertmanager/alertmanager.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_amtool
@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["severity=page", "team=operations", "alertname=SettlementGatewayDown"], "operations-page"),
        (
            ["severity=ticket", "team=operations", "alertname=SettlementLoaderRefusingFiles"],
            "operations-ticket",
        ),
        (["severity=ticket", "team=audit", "alertname=SettlementStaffCodeMatchLow"], "audit-ticket"),
    ],
)
def test_alerts_route_by_severity_and_team(labels: list[str], receiver: str) -> None:
    result = run(str(AMTOOL), "config", "routes", "test",
                 "--config.file", str(DEPLOY / "alertmanager/alertmanager.yml"), *labels)  # fmt: skip
    assert result.stdout.strip() == receiver, result.stdout + result.stderr


def test_every_alert_label_pair_has_a_route() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus/rules/settlement-gateway.rules.yml").read_text())
    pairs = {
        (r["labels"]["severity"], r["labels"]["team"])
        for g in rules["groups"]
        for r in g["rules"]
        if "alert" in r
    }
    config = yaml.safe_load((DEPLOY / "alertmanager/alertmanager.yml").read_text())
    routed = " ".join(str(route["matchers"]) for route in config["route"]["routes"])
    for severity, team in pairs:
        assert f'team="{team}"' in routed, team
        assert severity in ("page", "ticket"), severity


# -- Kubernetes -----------------------------------------------------------------------------------


def test_kubernetes_manifests_validate_offline() -> None:
    files = sorted(str(f) for f in (DEPLOY / "k8s").glob("*.yaml"))
    result = run(tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout and "failed" not in result.stdout.lower()


def test_kubernetes_gateway_probes_health_over_grpc_and_everything_is_there() -> None:
    docs = k8s_documents()
    kinds = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for wanted in [("Deployment", "settlement-gateway"), ("Service", "settlement-gateway"),
                   ("Service", "settlement-gateway-headless"), ("HorizontalPodAutoscaler", "settlement-gateway"),
                   ("PodDisruptionBudget", "settlement-gateway"), ("NetworkPolicy", "settlement-gateway"),
                   ("ConfigMap", "settlement-gateway"), ("Deployment", "settlement-loader")]:  # fmt: skip
        assert wanted in kinds, wanted
    by = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    config = by[("ConfigMap", "settlement-gateway")]["data"]
    port = int(config["SGW_LISTEN"].rsplit(":", 1)[1])
    [gateway] = by[("Deployment", "settlement-gateway")]["spec"]["template"]["spec"]["containers"]
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert gateway[probe]["grpc"]["port"] == port, probe
    assert gateway["resources"]["requests"]["cpu"] and gateway["resources"]["requests"]["memory"]
    assert any(v["name"] == "SGW_REDIS_URL" and "secretKeyRef" in v["valueFrom"] for v in gateway["env"])
    assert by[("Service", "settlement-gateway-headless")]["spec"]["clusterIP"] == "None"
    [loader] = by[("Deployment", "settlement-loader")]["spec"]["template"]["spec"]["containers"]
    assert loader["args"][0] == "watch"


# -- systemd --------------------------------------------------------------------------------------

UNITS = sorted((DEPLOY / "systemd").glob("*.service"))


def test_units_are_hardened() -> None:
    assert {u.name for u in UNITS} == {"settlement-gateway.service", "settlement-loader-watch.service"}
    for unit in UNITS:
        text = unit.read_text()
        for directive in ("DynamicUser=yes", "ProtectSystem=strict", "ProtectHome=yes", "PrivateTmp=yes",
                          "NoNewPrivileges=yes", "CapabilityBoundingSet=\n", "SystemCallFilter=@system-service"):  # fmt: skip
            assert directive in text, (unit.name, directive)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify checks that ExecStart's program exists: point the units at this virtualenv.
    for unit in UNITS:
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/settlement-gateway/bin", str(BIN)))
    result = run("systemd-analyze", "verify", *(str(tmp_path / u.name) for u in UNITS))
    assert result.returncode == 0 and result.stderr.strip() == "", result.stdout + result.stderr
