"""One audited line as stored: a JSON document, encoded once, sealed into its instance's chain.

A dispute needs what the decision was made on, not just its outcome: the service day, the
amount, the item and department, why the line counted as an emergency, who asked, and the
dated periods the rules consulted (old versions' tables are deleted, so the decision cannot be
re-derived later). Nothing else of the request is kept: no patient identifiers.

Each record is encoded by orjson exactly once, on the answer's path (it must reach the spool
before the reply, see ``gateway.audit.spool``); the stream entry, the spool line and the
archive row all carry those very bytes, so a record's hash is the SHA-256 of them wherever it
is read. ``prev`` in each record is the previous record's hash from the same gateway instance:
altering or removing a record breaks the next one's link, and ``seq`` numbers each instance's
records from 1 so a gap shows what is missing (``gateway.audit.chain``).
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import re
import secrets
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.codes import CodeShapes
from gateway.days import format_day
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import Verdict
from gateway.records import Period
from gateway.rules import (
    ENCOUNTER_EMERGENCY,
    Decision,
    Evidence,
    Line,
    RulesConfig,
    consulted_periods_by_source,
)

# The one field of each stream entry: the encoded record.
RECORD_FIELD = "r"
GENESIS = ""

# Department codes are the hospital's own (科室编码, e.g. ``A03`` or ``0301``): short, letters
# and digits. A long run of digits there is a personal number typed into the wrong column.
DEPARTMENT_CODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,19}")
LONG_DIGIT_RUN = re.compile(r"\d{11,}")


def mask_code(code: str) -> str:
    """A code of no valid shape, as stored: its shape kept (letters, separators, length), every
    digit hidden but the last two — an ID number sent as a staff code must not be stored."""
    digits = sum(ch.isdigit() for ch in code)
    out = []
    seen = 0
    for ch in code:
        if ch.isdigit():
            seen += 1
            out.append(ch if seen > digits - 2 else "*")
        else:
            out.append(ch)
    return "".join(out)


def is_department_code(code: str) -> bool:
    return DEPARTMENT_CODE.fullmatch(code) is not None and LONG_DIGIT_RUN.search(code) is None


def safe_staff_code(code: str, shapes: CodeShapes) -> str:
    """The staff code as it may be stored and shown: as sent if it has a valid shape (or is
    empty), else masked."""
    return code if not code or shapes.is_staff_code(code) else mask_code(code)


def safe_department_code(code: str) -> str:
    return code if not code or is_department_code(code) else mask_code(code)


def format_time(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_instance_id() -> str:
    """This process's chain name: the host and a random tag, new at every start, so a restarted
    gateway starts a new chain instead of forking its predecessor's."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:40] or "host"
    return f"{host}-{secrets.token_hex(4)}"


@functools.lru_cache(maxsize=8192)
def period_text(period: Period) -> str:
    """``SUSPENDED 2026-01-01..2026-06-30``; cached: the same few periods recur on every bill."""
    return f"{period.status.name} {format_day(period.start)}..{format_day(period.end)}"


def compact_periods(by_source: Mapping[str, Sequence[Period]]) -> dict[str, list[str]]:
    """``{"staff": ["SUSPENDED 2026-01-01..2026-06-30", …]}``: what each check could see."""
    return {source: [period_text(p) for p in periods] for source, periods in by_source.items() if periods}


def emergency_basis(line_flag: bool, encounter: int, med_type: str, config: RulesConfig) -> list[str]:
    """Why the line counted as an emergency: its own flag, the encounter, the 医疗类别."""
    basis = []
    if line_flag:
        basis.append("line")
    if encounter == ENCOUNTER_EMERGENCY:
        basis.append("encounter")
    if med_type.strip() in config.emergency_med_types:
        basis.append("med_type")
    return basis


_ACCEPT = Verdict.ACCEPT


def audited_indices(decisions: Sequence[Decision]) -> list[int]:
    """Every line but a plain live ``ACCEPT`` (which cites no rule): rejections, exemptions and
    lines paid under the outage policy."""
    return [i for i, d in enumerate(decisions) if d.verdict is not _ACCEPT or d.rule]


def documents(
    request: pb.ValidateRequest,
    lines: Sequence[Line],
    decisions: Sequence[Decision],
    indices: Sequence[int],
    evidence: Evidence | None,
    config: RulesConfig,
    *,
    caller: str,
    data_version: str,
    degraded: bool,
    outage_policy: str,
    at: float,
) -> list[dict[str, Any]]:
    """The audited lines of one answer, as documents (not yet sealed into the chain)."""
    when = format_time(at)
    institution = request.institution_code.strip()
    encounter = int(request.encounter)
    med_type = request.med_type.strip()
    shapes = config.shapes
    pb_lines = request.lines
    docs = []
    for i in indices:
        line, decision = lines[i], decisions[i]
        periods = (
            {} if evidence is None else compact_periods(consulted_periods_by_source(line, evidence, config))
        )
        staff_code = safe_staff_code(line.staff_code, shapes)
        department_code = safe_department_code(line.department_code)
        detail = decision.detail
        # The detail quotes the codes as sent: masked there too.
        if staff_code != line.staff_code:
            detail = detail.replace(line.staff_code, staff_code)
        if department_code != line.department_code:
            detail = detail.replace(line.department_code, department_code)
        docs.append(
            {
                "time": when,
                "request_id": request.request_id,
                "settlement_id": request.settlement_id,
                "institution": institution,
                "line_id": line.line_id,
                "staff_code": staff_code,
                "department_code": department_code,
                "item_code": line.item_code.strip(),
                "service_day": format_day(line.service_day),
                "amount_fen": line.amount_fen,
                "med_type": med_type,
                "encounter": encounter,
                "emergency_basis": emergency_basis(pb_lines[i].emergency, encounter, med_type, config)
                if line.emergency
                else [],
                "caller": caller,
                "verdict": decision.verdict.name,
                "reason": decision.reason.name,
                "rule": decision.rule,
                "detail": detail,
                "data_version": data_version,
                "degraded": degraded,
                "outage_policy": outage_policy if degraded else "",
                "periods": periods,
            }
        )
    return docs


class Chain:
    """Seals documents into one instance's hash chain: ``instance``, ``seq`` and ``prev`` are
    added, the document encoded once, and its hash becomes the next one's ``prev``."""

    __slots__ = ("instance", "prev", "seq")

    def __init__(self, instance: str, seq: int = 0, prev: str = GENESIS) -> None:
        self.instance = instance
        self.seq = seq
        self.prev = prev

    def seal(self, doc: dict[str, Any]) -> bytes:
        self.seq += 1
        doc["instance"] = self.instance
        doc["seq"] = self.seq
        doc["prev"] = self.prev
        raw = orjson.dumps(doc)
        self.prev = hashlib.sha256(raw).hexdigest()
        return raw


def record_hash(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


def decode(raw: bytes) -> dict[str, Any]:
    """A stored record; ``ValueError`` if it is not one (no JSON object, no instance and seq)."""
    doc = orjson.loads(raw)
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("instance"), str)
        or not isinstance(doc.get("seq"), int)
    ):
        raise ValueError("not an audit record: no instance and seq")
    return doc
