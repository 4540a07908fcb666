"""The dispute view: for each audited line of one settlement, what was decided, on what rule
and data, and whether the trail around the record is intact.

``settlement-gateway audit explain --settlement ID`` shows the verdict, the rule and its zh-CN
detail, the periods the decision rested on, the data version with the export files it was built
from (name and sha256, so the very files can be produced), and the chain check of the record
with its neighbours: its ``prev`` must be the hash of the record before it and the record after
it must name its hash.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import orjson

from gateway.audit.record import GENESIS, record_hash

# (instance, seq) -> raw bytes of a stored record, or None when it is not (or not yet) there.
Lookup = Callable[[str, int], bytes | None]


def chain_status(doc: Mapping[str, Any], raw: bytes, lookup: Lookup) -> dict[str, Any]:
    """``verified`` when both links hold, ``broken`` when one does not (with which), and
    ``verified-before`` when the following record is not stored yet (the newest record)."""
    instance, seq = str(doc["instance"]), int(doc["seq"])
    problems = []
    if seq == 1:
        if doc.get("prev") != GENESIS:
            problems.append("the first record of its chain names a predecessor")
    else:
        before = lookup(instance, seq - 1)
        if before is None:
            problems.append(f"record {seq - 1} before it is missing")
        elif record_hash(before) != doc.get("prev"):
            problems.append(f"its prev is not the hash of record {seq - 1}")
    after = lookup(instance, seq + 1)
    following = None
    if after is not None:
        following = orjson.loads(after)
        if following.get("prev") != record_hash(raw):
            problems.append(f"record {seq + 1} does not name its hash")
    status = "broken" if problems else ("verified" if after is not None else "verified-before")
    return {"status": status, "instance": instance, "seq": seq, "problems": problems}


def explain_line(
    doc: Mapping[str, Any], raw: bytes, sources: list[dict[str, Any]] | None, lookup: Lookup
) -> dict[str, Any]:
    return {
        "line_id": doc.get("line_id", ""),
        "time": doc.get("time", ""),
        "verdict": doc.get("verdict", ""),
        "reason": doc.get("reason", ""),
        "rule": doc.get("rule", ""),
        "detail": doc.get("detail", ""),
        "service_day": doc.get("service_day", ""),
        "staff_code": doc.get("staff_code", ""),
        "department_code": doc.get("department_code", ""),
        "item_code": doc.get("item_code", ""),
        "amount_fen": doc.get("amount_fen", 0),
        "emergency_basis": doc.get("emergency_basis", []),
        "caller": doc.get("caller", ""),
        "degraded": doc.get("degraded", False),
        "periods": doc.get("periods", {}),
        "data_version": doc.get("data_version", ""),
        "data_files": None if sources is None else [
            {"kind": s.get("kind"), "name": s.get("path"), "sha256": s.get("sha256"), "mode": s.get("mode")}
            for s in sources
        ],
        "chain": chain_status(doc, raw, lookup),
    }  # fmt: skip


def render(settlement_id: str, lines: list[dict[str, Any]]) -> str:
    """The explanation as an operator reads it."""
    out = [f"结算 {settlement_id}: {len(lines)} audited line(s)"]
    for e in lines:
        out.append("")
        out.append(f"line {e['line_id']}  {e['verdict']}  {e['reason']}  (answered {e['time']})")
        out.append(f"  rule:    {e['rule']}")
        out.append(f"  detail:  {e['detail']}")
        out.append(
            f"  line:    day {e['service_day']}, {e['amount_fen']} fen, staff {e['staff_code']}, "
            f"department {e['department_code'] or '-'}, item {e['item_code'] or '-'}"
        )
        if e["emergency_basis"]:
            out.append(f"  emergency because: {', '.join(e['emergency_basis'])}")
        if e["degraded"]:
            out.append("  answered degraded (Redis unreachable)")
        periods = e["periods"] or {}
        if periods:
            for source, items in periods.items():
                out.append(f"  periods ({source}): {'; '.join(items)}")
        else:
            out.append("  periods: none recorded for this line")
        out.append(f"  data version: {e['data_version']}")
        if e["data_files"] is None:
            out.append("    export files: unknown (the version's metadata is in neither archive nor Redis)")
        for f in e["data_files"] or []:
            out.append(f"    {f['kind']} {f['mode']}: {f['name']}  sha256 {f['sha256']}")
        chain = e["chain"]
        line = f"  chain:   {chain['status']} ({chain['instance']} #{chain['seq']})"
        if chain["problems"]:
            line += ": " + "; ".join(chain["problems"])
        out.append(line)
    return "\n".join(out)
