"""Every shell block in docs/*.md is run, so a command the documentation shows that stops
working fails the tests.

Each page's ```sh blocks run in order, in one bash per block (``set -euo pipefail``), in a
scratch directory where ``deploy/`` is the repository's, with ``.venv/bin`` on ``PATH`` (as
the pages tell the reader to have it) and a real redis-server as ``SGW_REDIS_URL``. A block
written as a transcript (lines starting with ``$ ``) runs its ``$`` lines; what follows them
is the output shown, not checked. System directories a block installs into are read from
variables with the system default (``${PROMETHEUS_DIR:-/etc/prometheus}``): the test points
them into the scratch directory.

A block is skipped only when the line right before it is ``<!-- not run: <why> -->``. README.md
is not covered: its two commands are `make run` (serves until stopped) and `make test` (this
suite), and its example call needs grpcurl.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.embedded import find_redis_server
from tests.conftest import RedisProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<why>.+?)\s*-->$")
FENCE = re.compile(r"^```(?P<lang>\S*)\s*$")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    script: str
    skip: str | None

    @property
    def transcript(self) -> bool:
        return any(line.startswith("$ ") for line in self.script.splitlines())

    def commands(self) -> str:
        if not self.transcript:
            return self.script
        out, continuing = [], False
        for line in self.script.splitlines():
            if line.startswith("$ ") or continuing:
                out.append(line[2:] if line.startswith("$ ") else line)
                continuing = line.rstrip().endswith("\\")
        return "\n".join(out)


def shell_blocks(path: Path) -> list[Block]:
    blocks, lines = [], path.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        start, body = i, []
        i += 1
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1
        if fence["lang"] not in ("sh", "bash", "shell", "console"):
            continue
        before = next((lines[j].strip() for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = NOT_RUN.match(before)
        blocks.append(Block(path.name, start + 1, "\n".join(body), marker["why"] if marker else None))
    return blocks


PAGES = sorted(DOCS.glob("*.md"))


def test_every_page_is_found_and_opt_outs_say_why() -> None:
    assert {p.name for p in PAGES} >= {"deployment.md", "loader.md", "operations.md"}
    blocks = [b for p in PAGES for b in shell_blocks(p)]
    skipped = [b for b in blocks if b.skip is not None]
    assert all(len(b.skip or "") > 10 for b in skipped), [(b.page, b.line) for b in skipped]


@pytest.fixture(scope="module")
def docs_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(find_redis_server(), free_port(), tmp_path_factory.mktemp("docs-redis"))
    server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_the_commands_of_each_page_run(page: Path, docs_redis: RedisProcess, tmp_path: Path) -> None:
    blocks = shell_blocks(page)
    work = tmp_path / "work"
    work.mkdir()
    (work / "deploy").symlink_to(ROOT / "deploy")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    env.update(
        PATH=f"{BIN}:{os.environ['PATH']}",
        SGW_REDIS_URL=docs_redis.url,
        SGW_STATE_DIR=str(tmp_path / "state"),
        PROMETHEUS_DIR=str(tmp_path / "etc-prometheus"),
        GRAFANA_DIR=str(tmp_path / "etc-grafana"),
        GRAFANA_DASHBOARDS=str(tmp_path / "grafana-dashboards"),
        SYSTEMD_DIR=str(tmp_path / "systemd"),
        HOME=str(tmp_path / "home"),
    )
    ran = 0
    for block in blocks:
        if block.skip is not None:
            continue
        result = subprocess.run(
            ["bash", "-c", "set -euo pipefail\n" + block.commands()],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, (
            f"{block.page}:{block.line} failed ({result.returncode}):\n{block.commands()}\n"
            f"--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-3000:]}"
        )
        ran += 1
    if not any(b.skip is None for b in blocks):
        pytest.skip(f"{page.name} has no shell block to run")
    assert ran


def test_the_configuration_table_names_the_serve_flags_that_exist() -> None:
    """docs/operations.md: a flag in the table exists on `serve`; a variable without one has none."""
    help_text = subprocess.run(
        [str(BIN / "settlement-gateway"), "serve", "--help"], capture_output=True, text=True, timeout=60
    ).stdout
    flags = set(re.findall(r"(--[a-z][a-z0-9-]+)", help_text))
    rows = [
        line.split("|")
        for line in (DOCS / "operations.md").read_text().splitlines()
        if line.startswith("| `SGW_")
    ]
    assert len(rows) > 20
    for cells in rows:
        variable, flag_cell = cells[1].strip(), cells[2].strip()
        named = set(re.findall(r"`(--[a-z0-9-]+)`", flag_cell))
        assert named <= flags, (variable, named - flags)
        if not named:
            stem = "--" + variable.strip("`").split("`")[0].removeprefix("SGW_").lower().replace("_", "-")
            assert stem not in flags, f"{variable} has the flag {stem}: name it in the table"
