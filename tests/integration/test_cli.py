"""The commands as an operator runs them: real processes, real signals."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import grpc
import orjson

from gateway.days import CST
from gateway.embedded import PIDFILE_NAME
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from tests.conftest import free_port
from tests.exports import line, request

BIN = Path(sys.executable).parent


def run_loader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "settlement-loader"), *args], env=env, capture_output=True, text=True, timeout=120
    )


def start_gateway(env: dict[str, str], *args: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [str(BIN / "settlement-gateway"), "serve", "--listen", f"127.0.0.1:{port}",
         "--metrics-listen", f"127.0.0.1:{free_port()}", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    return proc, port


def wait_ready(proc: subprocess.Popen[str]) -> dict[str, object]:
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = proc.stderr.readline()
        if not text:
            break
        doc = orjson.loads(text)
        if doc["msg"] == "settlement gateway ready":
            return doc  # type: ignore[no-any-return]
    raise AssertionError(f"gateway never became ready (exit {proc.poll()})")


def wait_calls_started(metrics_port: int, count: int) -> None:
    """Until the gateway has begun handling ``count`` Validate calls (they are in flight)."""
    deadline = time.monotonic() + 30
    sample = 'grpc_server_started_total{grpc_method="Validate",grpc_service="settlement.v1.SettlementGateway",grpc_type="unary"}'
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            for text in reply.read().decode().splitlines():
                if text.startswith(sample) and float(text.split()[-1]) >= count:
                    return
        time.sleep(0.01)
    raise AssertionError(f"{count} Validate calls never started")


def stop_embedded_store(state_dir: Path) -> None:
    """Stop an embedded redis-server whose owner was killed (it runs in its own session)."""
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(int((state_dir / PIDFILE_NAME).read_text().strip()), signal.SIGTERM)


def base_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    env.update({"SGW_STATE_DIR": str(tmp_path / "state"), **extra})
    return env


def test_loader_and_gateway_on_the_embedded_store(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    demo = run_loader("demo-data", str(tmp_path / "demo"), "--staff", "50", env=env)
    assert demo.returncode == 0, demo.stderr
    files = [str(tmp_path / "demo" / f"{name}.csv") for name in ("institutions", "departments", "staff")]
    result = run_loader("sync", *files, "--json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert orjson.loads(result.stdout)["outcome"] == "published"
    proc, port = start_gateway(env)
    try:
        ready = wait_ready(proc)
        assert ready["port"] == port and ready["data_version"]
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.SettlementGatewayStub(channel)
            now = dt.datetime.now(CST)  # demo data is dated relative to today
            reply = stub.Validate(request(line("1", "D330902000002", now), institution_code="H33090200001"))
            assert reply.verdicts[0].reason == pb.STAFF_SUSPENDED
            # SIGTERM with a call in flight: it completes, then the process exits 0.
            future = stub.Validate.future(request(*[line(str(i), "D330902000001") for i in range(5000)],
                                                  institution_code="H33090200001"))  # fmt: skip
            wait_calls_started(int(str(ready["metrics_port"])), 2)
            proc.send_signal(signal.SIGTERM)
            assert len(future.result(timeout=20).verdicts) == 5000
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:  # the test failed with the gateway still up: leave nothing behind
            proc.kill()
            stop_embedded_store(tmp_path / "state")
    status = run_loader("status", "--json", env=env)
    assert orjson.loads(status.stdout)["counts"]["staff"] == 50
    assert not (tmp_path / "state" / PIDFILE_NAME).exists()  # whoever started the store stopped it


def test_serve_refuses_a_taken_port(tmp_path: Path, redis_url: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [str(BIN / "settlement-gateway"), "serve", "--listen", f"127.0.0.1:{port}",
             "--metrics-listen", f"127.0.0.1:{free_port()}"],
            env=base_env(tmp_path, SGW_REDIS_URL=redis_url), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_serve_refuses_an_unreachable_redis(tmp_path: Path) -> None:
    proc = subprocess.run(
        [str(BIN / "settlement-gateway"), "serve", "--listen", f"127.0.0.1:{free_port()}",
         "--metrics-listen", f"127.0.0.1:{free_port()}"],
        env=base_env(tmp_path, SGW_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "cannot start: cannot reach Redis" in proc.stderr


def test_loader_exit_codes(tmp_path: Path, redis_url: str) -> None:
    env = base_env(tmp_path, SGW_REDIS_URL=redis_url)
    assert run_loader("sync", env=env).returncode == 2
    missing = run_loader("sync", str(tmp_path / "missing.csv"), env=env)
    assert missing.returncode == 2 and "missing.csv: no such file" in missing.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "人员代码,定点机构代码,协议状态,开始日期\nbad,H33090200017,正常,2024-01-01\n", encoding="utf-8"
    )
    refused = run_loader("sync", str(bad), env=env)
    assert refused.returncode == 4 and "1 of 1 rows are bad" in refused.stdout
    assert (tmp_path / "bad.csv.rejects.csv").exists()
