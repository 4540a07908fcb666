"""One export set and one set of bills, loaded by the real loader into a real Redis, judged by a
real gateway under each shipped profile over a real channel: each region's verdicts are the
ones its own documents require, and each rejection cites that region's article."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from gateway.config import Settings
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.policy import Reason
from gateway.profiles.loading import SHIPPED, load
from gateway.server import GatewayApp
from loader.bans import BanYears
from loader.publish import Publisher
from loader.sync import Outcome, SyncOptions, sync_file
from tests.exports import (
    DOCTOR,
    HEADERS,
    HOSPITAL,
    OTHER_HOSPITAL,
    at_cst,
    department_row,
    institution_row,
    line,
    request,
    staff_row,
    write_csv,
)

PHARMACY = "P33090200005"
BANNED_HOSPITAL = "H33090400031"
SUSPENDED = "D330902000002"  # 中止 2026-03-01..05-31, never restored by a new 正常 record
MULTI_SITE = "D330902000006"  # 中止 at the other hospital only
REHIRED = "D330902000009"  # 解除 2025-09-01..12-31, new 正常 from 2026-03-01
DEPARTED = "D330902000012"  # employment ended 2026-02-12 (离职日期)
PHARMACIST = "HY330902000011"
AT_BANNED = "D330904000010"

DEPARTURE_HEADER = "离职日期"


def staff_rows() -> list[list[str]]:
    def row(departure: str = "", **kw: str) -> list[str]:
        return [*staff_row(**kw), departure]

    return [
        row(),
        row(code=SUSPENDED),
        row(code=SUSPENDED, status="中止", start="2026-03-01", end="2026-05-31"),
        row(code=MULTI_SITE),
        row(code=MULTI_SITE, institution=OTHER_HOSPITAL),
        row(code=MULTI_SITE, institution=OTHER_HOSPITAL, status="中止", start="2026-03-01", end="2026-05-31"),
        row(code=REHIRED, status="解除", start="2025-09-01", end="2025-12-31"),
        row(code=REHIRED, start="2026-03-01"),
        row(code=DEPARTED, departure="2026-02-12"),
        row(code=PHARMACIST, institution=PHARMACY, category="药师"),
        row(code=AT_BANNED, institution=BANNED_HOSPITAL, start="2025-06-01"),
    ]


@pytest.fixture
def exports_loaded(publisher: Publisher, tmp_path: Path) -> dict[str, int]:
    """The export set, loaded with the default profile's ban lengths; banned rows per kind."""
    default = load("default")
    options = {"ban_years": BanYears(default.staff_ban_years(), default.institution_ban_years())}
    files = [
        ("institution", HEADERS["institution"], [
            institution_row(), institution_row(OTHER_HOSPITAL), institution_row(PHARMACY),
            institution_row(BANNED_HOSPITAL, status="解除", start="2024-01-01", end="2024-12-31"),
            institution_row(BANNED_HOSPITAL, start="2025-06-01"),
        ]),
        ("department", HEADERS["department"], [department_row("A05", start="2026-03-01", end="2026-06-30")]),
        ("staff", [*HEADERS["staff"], DEPARTURE_HEADER], staff_rows()),
    ]  # fmt: skip
    banned: dict[str, int] = {}
    for kind, headers, rows in files:
        path = write_csv(tmp_path / f"{kind}.csv", headers, rows)
        # The set is built one kind at a time: the completeness guard is waived until staff come.
        result = sync_file(path, publisher, SyncOptions(kind=kind, allow_incomplete=True, **options))  # type: ignore[arg-type]
        assert result.outcome is Outcome.PUBLISHED, result.message
        banned[kind] = result.banned
        if result.banned:
            assert result.bans_report and Path(result.bans_report).is_file()
    return banned


def test_the_loader_reports_new_agreements_inside_a_ban(
    exports_loaded: dict[str, int], tmp_path: Path
) -> None:
    """000 §14 (REHIRED, a year after 解除) and 002 §12 / 004 §65 (the re-designated hospital)."""
    assert exports_loaded == {"institution": 1, "department": 0, "staff": 1}
    report = (tmp_path / "staff.csv.bans.csv").read_text(encoding="utf-8-sig").splitlines()
    assert report[0] == "file,line,code,institution,start,banned_by,banned_since,ban_ends"
    assert report[1].split(",")[1:] == [
        "9",
        REHIRED,
        HOSPITAL,
        "2026-03-01",
        "解除",
        "2025-09-01",
        "2026-08-31",
    ]


BILLS = {
    "outpatient": request(
        line("1", DOCTOR, at_cst(2026, 4, 1)),
        line("2", SUSPENDED, at_cst(2026, 4, 1)),
        line("3", SUSPENDED, at_cst(2026, 6, 15)),  # after its end date, no 正常 record since
        line("4", MULTI_SITE, at_cst(2026, 4, 1)),
        line("5", REHIRED, at_cst(2026, 4, 1)),
        line("6", DOCTOR, at_cst(2026, 7, 15), department_code=""),  # after A05's stop ended
        line("7", DEPARTED, at_cst(2026, 2, 23)),  # second working day after leaving
        line("8", DEPARTED, at_cst(2026, 2, 24)),  # third: 封锁 (000 §8)
        line("9", DOCTOR, at_cst(2026, 4, 1), department_code=""),  # while A05 is stopped
    ),
    "emergency-admission": request(
        line("1", SUSPENDED, at_cst(2026, 4, 1)),
        line("2", SUSPENDED, at_cst(2026, 4, 1), emergency=True),
        line("3", DOCTOR, at_cst(2026, 4, 1), department_code="A05", emergency=True),
        encounter=pb.INPATIENT,
        med_type="24",
    ),
    "pharmacy": request(
        line("1", SUSPENDED, at_cst(2026, 4, 1)),
        line("2", DOCTOR, at_cst(2026, 4, 1)),
        line("3", PHARMACIST, at_cst(2026, 4, 1)),
        institution_code=PHARMACY,
        encounter=pb.PHARMACY,
        med_type="41",
    ),
    "banned-hospital": request(line("1", AT_BANNED, at_cst(2026, 4, 1)), institution_code=BANNED_HOSPITAL),
}
for bill in BILLS.values():  # the prescribing doctors hold their agreement at the hospital
    for index in (0, 1):
        if bill.institution_code == PHARMACY:
            bill.lines[index].prescribing_institution_code = HOSPITAL

A, R, E = "ACCEPT", "REJECT", "ACCEPT_EMERGENCY"
OK = (A, "OK")
BASE = {
    # Line 9: no department code while one of the hospital's departments is stopped (002 §20):
    # every region, as the contract has it, since leaving the code out would slip past the stop.
    "outpatient": [
        OK,
        (R, "STAFF_SUSPENDED"),
        OK,
        OK,
        OK,
        OK,
        OK,
        (R, "STAFF_LOCKED"),
        (R, "DEPARTMENT_CODE_MISSING"),
    ],
    "emergency-admission": [(E, "STAFF_SUSPENDED"), (E, "STAFF_SUSPENDED"), (E, "DEPARTMENT_SUSPENDED")],
    "pharmacy": [(R, "STAFF_NOT_AT_INSTITUTION"), (R, "STAFF_NOT_AT_INSTITUTION"), OK],
    "banned-hospital": [OK],
}
# Each region's differences from the default, with the article that makes them.
DIFFERENCES: dict[str, dict[tuple[str, int], tuple[str, str]]] = {
    "default": {},
    "zhoushan": {
        ("outpatient", 3): (R, "STAFF_SUSPENDED"),  # §14 restored only on application
        ("outpatient", 5): (R, "STAFF_TERMINATED"),  # §14 一年内不再签订
        ("pharmacy", 1): (R, "STAFF_SUSPENDED"),  # §9(5), §11 外配处方 of a suspended doctor
        ("pharmacy", 2): OK,  # ... of a doctor in good standing
    },
    "jining": {
        ("outpatient", 4): (R, "STAFF_SUSPENDED"),  # 四: points add up across sites
        ("outpatient", 5): (R, "STAFF_TERMINATED"),  # 五(二): 1–2 年内不再签订
        ("pharmacy", 1): (R, "STAFF_SUSPENDED"),  # suspended everywhere, the pharmacy too
    },
    "foshan": {
        ("emergency-admission", 3): (R, "DEPARTMENT_SUSPENDED"),  # §20: no emergency clause
        ("banned-hospital", 1): (R, "INSTITUTION_TERMINATED"),  # §12(五): 3 years
    },
    "nantong": {
        ("outpatient", 5): (R, "STAFF_TERMINATED"),  # §68
        ("outpatient", 6): (R, "DEPARTMENT_CODE_MISSING"),  # §60
        ("emergency-admission", 1): (R, "STAFF_SUSPENDED"),  # 第二十二条: only the 留观 part
        ("banned-hospital", 1): (R, "INSTITUTION_TERMINATED"),  # §65: 3 年内不得申请
    },
    "national-2024": {
        ("outpatient", 4): (R, "STAFF_SUSPENDED"),  # one registration per person
        ("outpatient", 5): (R, "STAFF_TERMINATED"),  # 终止: a year before a new registration
        ("pharmacy", 1): (R, "STAFF_SUSPENDED"),
    },
}


def expected(profile: str, bill: str) -> list[tuple[str, str]]:
    rows = list(BASE[bill])
    for (name, line_id), verdict in DIFFERENCES[profile].items():
        if name == bill:
            rows[line_id - 1] = verdict
    return rows


@pytest.fixture(params=SHIPPED)
async def regional_stub(
    request: pytest.FixtureRequest, settings: Settings, exports_loaded: dict[str, int]
) -> AsyncIterator[tuple[str, pb_grpc.SettlementGatewayStub]]:
    profile = request.param
    regional = dataclasses.replace(settings, policy_profile=profile)
    app = GatewayApp(regional, regional.redis_url or "")
    await app.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            yield profile, pb_grpc.SettlementGatewayStub(channel)
    finally:
        await app.stop(0.5)


async def test_each_region_gets_the_verdicts_its_documents_require(
    regional_stub: tuple[str, pb_grpc.SettlementGatewayStub],
) -> None:
    profile, stub = regional_stub
    status = await stub.GetStatus(pb.GetStatusRequest())
    assert status.policy_profile == profile
    specs = load(profile).specs
    for name, bill in BILLS.items():
        response = await stub.Validate(bill)
        got = [(pb.Verdict.Name(v.verdict), pb.Reason.Name(v.reason)) for v in response.verdicts]
        assert got == expected(profile, name), name
        for verdict in response.verdicts:
            if verdict.verdict == pb.REJECT:
                spec = specs[Reason(verdict.reason)]
                assert verdict.rule == spec.article, (name, verdict.line_id)
            elif verdict.verdict == pb.ACCEPT_EMERGENCY:
                spec = specs[Reason(verdict.reason)]
                assert verdict.rule == spec.emergency_article, (name, verdict.line_id)
