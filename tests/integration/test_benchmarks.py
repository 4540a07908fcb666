"""The benchmark harness runs end to end on tiny sizes, so it cannot rot.

Nothing here looks at a timing: it checks that every target was measured, that the table
and RESULTS.md section are written, and that the pieces the figures rest on (the gRPC
framing h2load replays, the histogram quantile, the synthetic bills) are right.
"""

from __future__ import annotations

import struct
from pathlib import Path

from benchmarks import bench, loadgen, profile
from benchmarks.workload import BillMaker, StaffPool, requests_of_size, staff_per_bill
from gateway.pb.settlement.v1 import gateway_pb2 as pb


def test_bench_runs_every_target_and_writes_its_section(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n## Publishing\n\nthe loader's own section\n")
    code = bench.main(
        ["--sizes", "1,20", "--concurrency", "2", "--runs", "1", "--duration", "0.5", "--warmup", "0.2",
         "--staff", "300", "--output", str(results), "--workdir", str(tmp_path / "work")]
    )  # fmt: skip
    assert code == 0
    text = results.read_text()
    assert "the loader's own section" in text  # other sections are kept
    rows = [line for line in text.splitlines() if line.startswith("| 1 |") or line.startswith("| 20 |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        # no-op, gateway, ratio and data ceiling were all measured (no dash placeholders)
        assert all(cell not in ("", "–") for cell in cells[2:6]), row
    assert "python -m benchmarks.bench --sizes 1,20" in text
    # Rerunning replaces the section instead of appending a second one.
    bench.write_section(results, ["replaced"])
    assert results.read_text().count(bench.SECTION_BEGIN) == 1
    assert "replaced" in results.read_text()


def test_grpc_frame_is_length_prefixed_message() -> None:
    request = pb.ValidateRequest(request_id="r", institution_code="H33090200001")
    frame = loadgen.grpc_frame(request)
    flag, length = struct.unpack(">BI", frame[:5])
    assert (flag, length) == (0, len(frame) - 5)
    assert pb.ValidateRequest.FromString(frame[5:]) == request


def test_decision_quantile_interpolates_run_increments() -> None:
    key = "sgw_decision_seconds_bucket{le={},lines=11-100}"
    before = {key.replace("{}", le): 5.0 for le in ("0.0005", "0.001", "0.002", "+Inf")}
    after = {
        key.replace("{}", "0.0005"): 5.0 + 50,
        key.replace("{}", "0.001"): 5.0 + 90,
        key.replace("{}", "0.002"): 5.0 + 100,
        key.replace("{}", "+Inf"): 5.0 + 100,
    }
    assert bench.decision_quantile(before, after, 20, 0.5) == 0.5
    assert abs(bench.decision_quantile(before, after, 20, 0.99) - 1.9) < 1e-9
    assert bench.decision_quantile(after, after, 20, 0.99) != bench.decision_quantile(after, after, 20, 0.99)


def test_bills_have_the_requested_size_and_a_few_staff() -> None:
    pool = StaffPool("H33090200001", tuple(f"D3309020{i:05d}" for i in range(100)), ("D330902000002",),
                     ("D330999000001",))  # fmt: skip
    for size in (1, 20, 200, 3000):
        request = next(requests_of_size(pool, size, 1))
        assert len(request.lines) == size
        assert len({line.staff_code for line in request.lines}) <= staff_per_bill(size) + 2
        assert all(line.HasField("service_time") for line in request.lines)
    emergency = BillMaker(pool).bill(5, encounter=pb.EMERGENCY, med_type="13")
    assert emergency.encounter == pb.EMERGENCY and len(emergency.lines) == 5


def test_profile_sums_samples_by_component(tmp_path: Path) -> None:
    raw = tmp_path / "samples.txt"
    raw.write_text(
        "run (asyncio/runners.py:190);Runner.run (asyncio/runners.py:118) 50\n"
        "Thread.run (threading.py:982) 10\n"
        "judge (gateway/servicer.py:102);parse_request (gateway/settlement.py:86) 20\n"
        "judge (gateway/servicer.py:110);read (gateway/store.py:200);execute_command (redis/asyncio/client.py:946);"
        "writelines (asyncio/streams.py:346) 20\n"
    )
    assert dict(profile.summarize(raw)) == {
        profile.CORE: 50.0,
        profile.POLLER: 10.0,
        "request parsing (settlement.parse_request)": 20.0,
        "Redis client (redis-py)": 20.0,
    }


def test_micro_reply_runs_and_writes_its_section(tmp_path: Path) -> None:
    """The in-process A/B runs end to end (HEAD as its own baseline: no timing is judged)."""
    from benchmarks import micro_reply

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    args = ["--sizes", "3,40", "--runs", "1", "--baseline", "HEAD", "--lines-per-timing", "200"]
    assert micro_reply.main([*args, "--output", str(results)]) == 0
    text = results.read_text()
    assert micro_reply.SECTION_BEGIN in text and "python -m benchmarks.micro_reply --sizes 3,40" in text
    sizes = [line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")]
    assert sizes[1:] == ["3", "40"]  # after the header row


def test_fair_share_bench_measures_both_phases_and_writes_its_section(tmp_path: Path) -> None:
    from benchmarks import fair_share

    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n")
    assert fair_share.main(["--runs", "1", "--phase", "1", "--idle", "0.5", "--output", str(results)]) == 0
    text = results.read_text()
    assert fair_share.SECTION_BEGIN in text and "python -m benchmarks.fair_share --runs 1" in text
    rows = [row for row in text.splitlines() if row.startswith(("| alone |", "| beside the flood |"))]
    assert len(rows) == 2 and all(row.split("|")[3].strip() == "0" for row in rows), rows  # calm: no failures
    assert "p99 beside the flood ÷ p99 alone:" in text
    assert "10,000-line bill RESOURCE_EXHAUSTED" in text  # the hostile hospital was held to its budget
