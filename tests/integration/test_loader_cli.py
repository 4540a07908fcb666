"""``settlement-loader`` as an operator runs it: real processes, a real Redis, real signals,
the watcher's real /metrics endpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
import redis

from gateway.keys import Keys
from gateway.records import StaffRecord, Status
from tests.conftest import free_port
from tests.exports import HEADERS, institution_row, staff_row, write_csv

BIN = Path(sys.executable).parent
ID_NUMBER = "330902198001011234"


def loader(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "settlement-loader"), *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture
def bare_env(redis_url: str, tmp_path: Path) -> dict[str, str]:
    """The loader's environment, nothing live."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SGW_")}
    return {**base, "SGW_REDIS_URL": redis_url, "SGW_STATE_DIR": str(tmp_path / "state")}


@pytest.fixture
def env(bare_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The loader's environment, with the institutions live (published alone, with --force), so
    that the tests' staff files each make a complete version."""
    env = bare_env
    seed = write_csv(tmp_path / "seed-institutions.csv", HEADERS["institution"], [institution_row()])
    assert loader("sync", str(seed), "--force", env=env).returncode == 0
    return env


def live_staff(sync_redis: redis.Redis, code: str) -> StaffRecord | None:
    keys = Keys()
    live = sync_redis.get(keys.live)
    tables = orjson.loads(sync_redis.hget(keys.version_meta(live.decode()), "tables") or b"{}")  # type: ignore[union-attr]
    raw = sync_redis.hget(keys.table("staff", tables["staff"]), code)
    return StaffRecord.decode(raw) if raw else None


def test_sync_json_exit_codes_and_jsonl_report(env: dict[str, str], tmp_path: Path) -> None:
    good = write_csv(
        tmp_path / "s.csv", HEADERS["staff"], [staff_row(code=f"D330902{i:06d}") for i in range(20)]
    )
    result = loader("sync", str(good), "--json", env=env)
    assert result.returncode == 0, result.stderr
    doc = orjson.loads(result.stdout)
    assert (doc["outcome"], doc["exit_code"], doc["kind"], doc["records"]) == ("published", 0, "staff", 20)
    assert set(doc["phases"]) == {"read", "publish"} and len(doc["sha256"]) == 64
    again = orjson.loads(loader("sync", str(good), "--json", env=env).stdout)
    assert again["unchanged"] and again["data_version"] == doc["data_version"]

    rows = [staff_row(code=f"D330902{i:06d}") for i in range(20)] + [staff_row(code=ID_NUMBER)]
    some_bad = write_csv(tmp_path / "bad.csv", HEADERS["staff"], rows)
    jsonl = tmp_path / "rejects.jsonl"
    result = loader("sync", str(some_bad), "--report", str(jsonl), "--json", env=env)
    assert result.returncode == 3
    assert orjson.loads(result.stdout)["rejected_by_reason"] == {"人员代码: 人员代码不符合国家编码规则": 1}
    (rejected,) = [orjson.loads(line) for line in jsonl.read_bytes().splitlines()]
    assert (rejected["line"], rejected["column"]) == (22, "人员代码")
    assert ID_NUMBER not in jsonl.read_text() and ID_NUMBER not in result.stdout + result.stderr

    assert loader("sync", env=env).returncode == 2
    assert loader("sync", str(good), "--max-bad-ratio", "7", env=env).returncode == 2
    unreachable = {**env, "SGW_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    failed = loader("sync", str(good), env=unreachable)
    assert failed.returncode == 1 and "settlement-loader:" in failed.stderr


def test_summary_and_forced_publish_are_loud(env: dict[str, str], tmp_path: Path) -> None:
    full = write_csv(
        tmp_path / "full.csv", HEADERS["staff"], [staff_row(code=f"D330902{i:06d}") for i in range(10)]
    )
    assert loader("sync", str(full), env=env).returncode == 0
    truncated = write_csv(
        tmp_path / "cut.csv", HEADERS["staff"], [staff_row(code=f"D330902{i:06d}") for i in range(5)]
    )
    refused = loader("sync", str(truncated), env=env)
    assert refused.returncode == 4 and "truncated download?" in refused.stdout
    forced = loader("sync", str(truncated), "--force", env=env)
    assert forced.returncode == 0
    assert "FORCED    staff records 10 -> 5" in forced.stdout
    assert '"published with --force: guards overridden"' in forced.stderr


def test_privacy_names_only_when_configured(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row(name="张三", id_number=ID_NUMBER)])
    result = loader("sync", str(path), env=env)
    assert ID_NUMBER not in result.stdout + result.stderr
    assert live_staff(sync_redis, "D330902001234").name is None  # type: ignore[union-attr]
    named = write_csv(
        tmp_path / "n.csv", HEADERS["staff"], [staff_row(name="张三", id_number=ID_NUMBER, end="2030-01-01")]
    )
    assert loader("sync", str(named), env={**env, "SGW_KEEP_NAMES": "true"}).returncode == 0
    assert live_staff(sync_redis, "D330902001234").name == "张三"  # type: ignore[union-attr]
    dump = b"".join(
        v for key in sync_redis.keys("*") if sync_redis.type(key) == b"hash" for v in sync_redis.hvals(key)
    )
    assert ID_NUMBER.encode() not in dump


def test_province_mapping_file(env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis) -> None:
    mapping = tmp_path / "province.toml"
    mapping.write_text(
        '[headers]\n"医师编号" = "人员代码"\n"执业机构" = "定点机构代码"\n[statuses]\n"停用" = "中止"\n',
        "utf-8",
    )
    path = tmp_path / "p.csv"
    path.write_text(
        "医师编号,执业机构,人员状态,备案开始日期\nD330902001234,H33090200017,停用,2026/03/01\n", "gbk"
    )
    unmapped = loader("sync", str(path), env=env)
    assert unmapped.returncode == 4 and "cannot tell the file kind" in unmapped.stdout
    assert loader("sync", str(path), "--mapping", str(mapping), env=env).returncode == 0
    assert live_staff(sync_redis, "D330902001234").periods[0].status is Status.SUSPENDED  # type: ignore[union-attr]
    broken = tmp_path / "broken.toml"
    broken.write_text('[headers]\n"x" = "无此列"\n', "utf-8")
    assert loader("sync", str(path), "--mapping", str(broken), env=env).returncode == 2


def test_a_file_rerun_with_other_options_loads_again(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    stopped = "D330902999999"
    rows = [staff_row(code=f"D330902{i:06d}") for i in range(10)] + [staff_row(code=stopped, status="停用")]
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], rows)
    unmapped = orjson.loads(loader("sync", str(path), "--json", env=env).stdout)
    assert unmapped["exit_code"] == 3 and unmapped["rejected_by_reason"] == {
        "协议状态: 无法识别的协议状态": 1
    }
    assert live_staff(sync_redis, stopped) is None
    mapping = tmp_path / "province.toml"
    mapping.write_text('[statuses]\n"停用" = "中止"\n', "utf-8")

    mapped = orjson.loads(loader("sync", str(path), "--mapping", str(mapping), "--json", env=env).stdout)
    assert (mapped["exit_code"], mapped["unchanged"], mapped["rejected"]) == (0, False, 0)
    assert mapped["sha256"] == unmapped["sha256"] and mapped["options"] != unmapped["options"]
    assert live_staff(sync_redis, stopped).periods[0].status is Status.SUSPENDED  # type: ignore[union-attr]
    again = orjson.loads(loader("sync", str(path), "--mapping", str(mapping), "--json", env=env).stdout)
    assert again["unchanged"] and again["data_version"] == mapped["data_version"]

    named_env = {**env, "SGW_KEEP_NAMES": "true"}
    named = orjson.loads(loader("sync", str(path), "--mapping", str(mapping), "--json", env=named_env).stdout)
    assert named["exit_code"] == 0 and not named["unchanged"]
    assert live_staff(sync_redis, stopped).name == "张三"  # type: ignore[union-attr]
    status = orjson.loads(loader("status", "--json", env=env).stdout)
    staff_sources = [(s["sha256"], s["options"]) for s in status["sources"] if s["kind"] == "staff"]
    assert staff_sources == [(named["sha256"], named["options"])]
    assert f"options {named['options'][:8]}" in loader("status", env=env).stdout


def test_a_delete_only_delta_needs_no_date_columns(
    env: dict[str, str], tmp_path: Path, sync_redis: redis.Redis
) -> None:
    full = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row(), staff_row(code="N330902000008")])
    assert loader("sync", str(full), env=env).returncode == 0
    deletes = tmp_path / "d.csv"
    deletes.write_text("人员代码,定点机构代码,协议状态\nN330902000008,,删除\n", "utf-8")
    refused = loader("sync", str(deletes), env=env)
    assert refused.returncode == 4 and "lacks required column(s): 开始日期" in refused.stdout
    # One of two persons goes: past the default shrink guard (20 %).
    assert loader("sync", str(deletes), "--delta", "--max-shrink-ratio", "0.5", env=env).returncode == 0
    assert live_staff(sync_redis, "N330902000008") is None and live_staff(sync_redis, "D330902001234")


def test_status_names_version_files_and_rejections(bare_env: dict[str, str], tmp_path: Path) -> None:
    env = bare_env
    assert loader("status", env=env).returncode == 1
    inst = write_csv(tmp_path / "i.csv", HEADERS["institution"], [institution_row()])
    staff = write_csv(
        tmp_path / "s.csv",
        HEADERS["staff"],
        [*[staff_row(code=f"D330902{i:06d}") for i in range(20)], staff_row(code="x")],
    )
    synced = orjson.loads(loader("sync", str(inst), str(staff), "--json", env=env).stdout)
    status = orjson.loads(loader("status", "--json", env=env).stdout)
    assert status["data_version"] == synced["data_version"]
    assert status["counts"] == {"institution": 1, "staff": 20}
    assert [(s["kind"], s["rows"], s["rejected"]) for s in status["sources"]] == [
        ("institution", 1, 0),
        ("staff", 21, 1),
    ]
    assert status["sources"][1]["sha256"] == synced["files"][1]["sha256"] and status["rejected"] == 1
    text = loader("status", env=env).stdout
    assert synced["data_version"] in text and str(staff.resolve()) in text


def test_demo_data_writes_exact_rows_with_bad_ones(env: dict[str, str], tmp_path: Path) -> None:
    result = loader(
        "demo-data", str(tmp_path / "d"), "--rows", "500", "--format", "xlsx", "--bad-share", "0.05", env=env
    )
    assert result.returncode == 0, result.stderr
    synced = orjson.loads(loader("sync", str(tmp_path / "d" / "staff.xlsx"), "--json", env=env).stdout)
    assert synced["rows"] == 500 and synced["exit_code"] == 3 and 5 < synced["rejected"] < 60


# -- watch ----------------------------------------------------------------------------------


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for row in text.splitlines():
        if row and not row.startswith("#"):
            name, _, value = row.rpartition(" ")
            samples[name] = float(value)
    return samples


def land(directory: Path, name: str, rows: list[list[str]], kind: str, mtime: float) -> Path:
    """As a download tool does: write a partial file, then rename it into place."""
    partial = write_csv(directory / f".{name}.part", HEADERS[kind], rows)
    os.utime(partial, (mtime, mtime))
    final = directory / name
    partial.rename(final)
    return final


def wait_for(predicate: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():  # type: ignore[operator]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError("condition not reached")


def start_watch(env: dict[str, str], directory: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "settlement-loader"), "watch", str(directory), "--interval", "0.2",
         "--metrics-listen", f"127.0.0.1:{port}"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_watch_loads_landed_files_in_order_and_stops_on_sigterm(
    bare_env: dict[str, str], tmp_path: Path
) -> None:
    env = bare_env
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    now = time.time()
    staff = [staff_row(code=f"D330902{i:06d}") for i in range(30)]
    # Landed out of name order: modification time decides.
    land(inbox, "b-institutions.csv", [institution_row()], "institution", now - 30)
    land(inbox, "a-staff.csv", [*staff, staff_row(code="bad")], "staff", now - 20)
    land(inbox, "c-staff-delta.csv", [staff_row(code="D330902000001", status="中止")], "staff", now - 10)
    (inbox / "garbage.csv").write_text("a,b\n1,2\n", "utf-8")
    write_csv(inbox / "staff-next.csv.part", HEADERS["staff"], staff)  # still downloading
    port = free_port()
    proc = start_watch(env, inbox, port)
    try:
        wait_for(lambda: scrape(port).get('sgw_loader_files_total{outcome="refused"}') == 1)
        metrics = scrape(port)
        assert metrics['sgw_loader_files_total{outcome="published"}'] == 2
        assert metrics['sgw_loader_files_total{outcome="published_with_rejects"}'] == 1
        assert metrics['sgw_loader_rows_loaded_total{kind="staff"}'] == 31
        assert metrics['sgw_loader_rows_rejected_total{kind="staff"}'] == 1
        assert metrics['sgw_loader_last_success_timestamp_seconds{kind="staff"}'] >= now
        assert metrics['sgw_loader_sync_duration_seconds_count{kind="staff"}'] == 2
        assert metrics["sgw_loader_pending_files"] == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    loaded = sorted(p.name.split("_", 1)[1] for p in (inbox / "loaded").iterdir())
    assert loaded == ["a-staff.csv", "a-staff.csv.rejects.csv", "b-institutions.csv", "c-staff-delta.csv"]
    assert [p.name.split("_", 1)[1] for p in (inbox / "refused").iterdir()] == ["garbage.csv"]
    assert sorted(p.name for p in inbox.iterdir() if p.is_file()) == [
        ".settlement-loader-watch.lock",
        "staff-next.csv.part",
    ]
    status = orjson.loads(loader("status", "--json", env=env).stdout)
    assert [(Path(s["path"]).name, s["mode"]) for s in status["sources"]] == [
        ("b-institutions.csv", "full"),
        ("a-staff.csv", "full"),
        ("c-staff-delta.csv", "delta"),
    ]
    # A restarted watcher finds nothing new to load.
    port = free_port()
    proc = start_watch(env, inbox, port)
    try:
        wait_for(lambda: scrape(port)["sgw_loader_last_scan_timestamp_seconds"] > 0)
        assert sum(v for k, v in scrape(port).items() if k.startswith("sgw_loader_files_total")) == 0
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert orjson.loads(loader("status", "--json", env=env).stdout)["data_version"] == status["data_version"]


def test_a_second_watcher_of_the_same_directory_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    port = free_port()
    first = start_watch(env, inbox, port)
    try:
        wait_for(lambda: scrape(port)["sgw_loader_last_scan_timestamp_seconds"] > 0)
        second = start_watch(env, inbox, free_port())
        assert second.wait(timeout=30) == 2
        assert second.stderr is not None and "another settlement-loader watches" in second.stderr.read()
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    finally:
        first.kill()


def test_kind_given_against_the_header_row_is_refused(env: dict[str, str], tmp_path: Path) -> None:
    staff = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row()])
    refused = loader("sync", str(staff), "--kind", "institution", env=env)
    assert refused.returncode == 4 and "header row is a staff export's" in refused.stdout


def test_a_clean_reload_removes_the_stale_report(env: dict[str, str], tmp_path: Path) -> None:
    good = [staff_row(code=f"D330902{i:06d}") for i in range(20)]
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [*good, staff_row(code="x")])
    assert loader("sync", str(path), env=env).returncode == 3
    assert (tmp_path / "s.csv.rejects.csv").exists()
    write_csv(path, HEADERS["staff"], good)
    assert loader("sync", str(path), env=env).returncode == 0
    assert not (tmp_path / "s.csv.rejects.csv").exists()


def test_progress_bar_on_a_terminal_only(env: dict[str, str], tmp_path: Path) -> None:
    import pty

    rows = [staff_row(code=f"D330902{i:06d}") for i in range(60_000)]
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], rows)
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [str(BIN / "settlement-loader"), "sync", str(path)],
        env=env, stdout=subprocess.PIPE, stderr=terminal, text=True,
    )  # fmt: skip
    os.close(terminal)
    drawn = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the loader exited
            break
        if not chunk:
            break
        drawn += chunk
    os.close(controller)
    assert proc.wait(timeout=60) == 0
    assert b"reading" in drawn and b"writing" in drawn and "█".encode() in drawn
    assert proc.stdout is not None and "█" not in proc.stdout.read()  # the summary stays clean
    piped = loader("sync", str(write_csv(tmp_path / "t.csv", HEADERS["staff"], rows[:-1])), env=env)
    assert "█" not in piped.stderr and "\r" not in piped.stderr


def test_the_loader_yields_cpu_to_the_gateway(env: dict[str, str], tmp_path: Path) -> None:
    path = write_csv(tmp_path / "s.csv", HEADERS["staff"], [staff_row()])
    probe = tmp_path / "nice.py"
    probe.write_text(
        "import os, sys\nfrom loader import cli, sync\n"
        "real = sync.sync_files\n"
        "def spy(*a, **k):\n    print('niceness', os.nice(0), file=sys.stderr)\n    return real(*a, **k)\n"
        "cli.sync_files = spy\nraise SystemExit(cli.main(sys.argv[1:]))\n",
        "utf-8",
    )
    run = subprocess.run(
        [sys.executable, str(probe), "sync", str(path)], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0 and f"niceness {min(19, os.nice(0) + 10)}" in run.stderr
    path2 = write_csv(tmp_path / "s2.csv", HEADERS["staff"], [staff_row(end="2030-01-01")])
    kept = subprocess.run(
        [sys.executable, str(probe), "sync", str(path2), "--nice", "0"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert f"niceness {os.nice(0)}" in kept.stderr
