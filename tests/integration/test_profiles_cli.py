"""``settlement-gateway profile show|check`` and ``SGW_POLICY_PROFILE``, as an operator runs
them: real processes, real exit codes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc

from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.profiles.loading import SHIPPED
from tests.exports import HEADERS, HOSPITAL, institution_row, load_into, staff_row, write_csv
from tests.integration.test_cli import BIN, base_env, run_loader, start_gateway, wait_ready


def profile(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "settlement-gateway"), "profile", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_show_prints_a_resolved_profile_that_check_accepts(tmp_path: Path) -> None:
    env = base_env(tmp_path)
    for name in SHIPPED:
        shown = profile("show", name, env=env)
        assert shown.returncode == 0, shown.stderr
        assert f'name = "{name}"' in shown.stdout and "[reasons.STAFF_SUSPENDED]" in shown.stdout
        path = tmp_path / f"{name}.toml"
        path.write_text(shown.stdout, encoding="utf-8")
        checked = profile("check", str(path), env=env)
        assert checked.returncode == 0, checked.stderr
        assert f"profile {name!r} is valid" in checked.stdout
    again = profile("show", str(tmp_path / "zhoushan.toml"), env=env)
    assert again.returncode == 0 and 'lifts = "restoration"' in again.stdout


def test_check_names_the_line_of_every_fault(tmp_path: Path) -> None:
    path = tmp_path / "region.toml"
    path.write_text(
        'name = "region"\n\n[sites]\nsuspension = "sometimes"\nsites = 2\n\n[bans]\nenforce = "yes"\n',
        encoding="utf-8",
    )
    result = profile("check", str(path), env=base_env(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert [line.split(": ")[0] for line in lines] == [f"{path}:4", f"{path}:5", f"{path}:8"]
    assert "sites.suspension: expected one of 'national', 'institution', got 'sometimes'" in result.stderr
    unknown = profile("show", "atlantis", env=base_env(tmp_path))
    assert unknown.returncode == 1 and "neither a shipped profile" in unknown.stderr


def test_serve_refuses_a_bad_profile(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "bad"\n[department]\ncode_required = 1\n', encoding="utf-8")
    proc, _ = start_gateway(base_env(tmp_path, SGW_POLICY_PROFILE=str(path)))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 2
    assert f"SGW_POLICY_PROFILE='{path}': {path}:3: department.code_required" in stderr


def test_get_status_reports_the_profile_in_force(tmp_path: Path, redis_url: str) -> None:
    proc, port = start_gateway(base_env(tmp_path, SGW_REDIS_URL=redis_url), "--policy-profile", "nantong")
    try:
        wait_ready(proc)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            status = pb_grpc.SettlementGatewayStub(channel).GetStatus(pb.GetStatusRequest(), timeout=10)
        assert status.policy_profile == "nantong"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_the_loader_reports_banned_rows_with_the_profiles_ban_lengths(tmp_path: Path, redis_url: str) -> None:
    """000 §14: a 正常 agreement 6 months after a 解除 is inside the one-year ban."""
    path = write_csv(
        tmp_path / "staff.csv",
        HEADERS["staff"],
        [staff_row(status="解除", start="2025-09-01", end="2025-12-31"), staff_row(start="2026-03-01")],
    )
    env = base_env(tmp_path, SGW_REDIS_URL=redis_url, SGW_POLICY_PROFILE="zhoushan")
    live = tmp_path / "live"
    live.mkdir()
    load_into(redis_url, live, "institution", [institution_row()])  # a version needs both kinds
    result = run_loader("sync", str(path), "--kind", "staff", env=env)
    assert result.returncode == 0, result.stderr
    assert f"bans      1 正常 row(s) start inside a ban, see {path}.bans.csv" in result.stdout
    report = Path(f"{path}.bans.csv").read_text(encoding="utf-8-sig").splitlines()
    assert report[1].endswith(f",3,D330902001234,{HOSPITAL},2026-03-01,解除,2025-09-01,2026-08-31")
