"""The external contract: names and numbers outside test suites rely on."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import Reason, Verdict

ROOT = Path(__file__).resolve().parents[2]

ENUMS = {
    "EncounterType": ["ENCOUNTER_TYPE_UNSPECIFIED", "OUTPATIENT", "EMERGENCY", "INPATIENT", "PHARMACY"],
    "Outcome": ["OUTCOME_UNSPECIFIED", "ALL_ACCEPTED", "PARTIALLY_REJECTED", "ALL_REJECTED"],
    "Verdict": ["VERDICT_UNSPECIFIED", "ACCEPT", "REJECT", "ACCEPT_EMERGENCY"],
    "Reason": [
        "REASON_UNSPECIFIED", "OK", "STAFF_CODE_MISSING", "STAFF_CODE_MALFORMED", "STAFF_UNREGISTERED",
        "STAFF_NOT_AT_INSTITUTION", "STAFF_SUSPENDED", "STAFF_TERMINATED", "STAFF_CODE_CANCELLED",
        "STAFF_LOCKED", "INSTITUTION_UNREGISTERED", "INSTITUTION_SUSPENDED", "INSTITUTION_TERMINATED",
        "DEPARTMENT_SUSPENDED", "ITEM_CODE_MISSING", "DEPARTMENT_CODE_MISSING",
    ],
}  # fmt: skip

FIELDS = {
    "ValidateRequest": {"request_id": 1, "institution_code": 2, "settlement_id": 3, "encounter": 4,
                        "lines": 5, "med_type": 6},
    "SettlementLine": {"line_id": 1, "staff_code": 2, "department_code": 3, "item_code": 4,
                       "amount_fen": 5, "service_time": 6, "emergency": 7,
                       "prescribing_institution_code": 8},
    "ValidateResponse": {"request_id": 1, "outcome": 2, "verdicts": 3, "accepted_fen": 4,
                         "rejected_fen": 5, "data_version": 6, "data_as_of": 7, "degraded": 8},
    "LineVerdict": {"line_id": 1, "verdict": 2, "reason": 3, "detail": 4, "rule": 5},
    "GatewayStatus": {"data_version": 1, "data_as_of": 2, "degraded": 3, "policy_profile": 7},
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(ENUMS))
def test_enum_values_are_numbered_in_contract_order(name: str) -> None:
    enum = pb.DESCRIPTOR.enum_types_by_name[name]
    assert [(v.name, v.number) for v in enum.values] == [(n, i) for i, n in enumerate(ENUMS[name])]


@pytest.mark.parametrize("message", sorted(FIELDS))
def test_field_numbers(message: str) -> None:
    fields = {f.name: f.number for f in pb.DESCRIPTOR.message_types_by_name[message].fields}
    for name, number in FIELDS[message].items():
        assert fields[name] == number, f"{message}.{name}"


def test_package_and_service() -> None:
    assert pb.DESCRIPTOR.package == "settlement.v1"
    service = pb.DESCRIPTOR.services_by_name["SettlementGateway"]
    methods = {m.name: (m.client_streaming, m.server_streaming) for m in service.methods}
    assert methods == {
        "Validate": (False, False),
        "ValidateStream": (True, True),
        "GetStatus": (False, False),
    }
    assert not pb.DESCRIPTOR.message_types_by_name["GetStatusRequest"].fields


def test_rule_enums_mirror_the_proto() -> None:
    assert [(r.name, int(r)) for r in Reason] == [(v.name, v.number) for v in pb.Reason.DESCRIPTOR.values]
    assert [(v.name, int(v)) for v in Verdict] == [(x.name, x.number) for x in pb.Verdict.DESCRIPTOR.values]


def test_generated_code_is_fresh() -> None:
    """gateway/pb must be what ``python proto/generate.py`` makes from proto/ today."""
    sys.path.insert(0, str(ROOT / "proto"))
    try:
        import generate  # type: ignore[import-not-found]
    finally:
        sys.path.pop(0)
    assert generate.stale_files() == [], "run: python proto/generate.py"
