"""The hand-written ``ValidateResponse`` bytes against protobuf's own, for random bills.

``settlement.build_response`` writes the reply's wire bytes itself (``gateway.reply``). For any
bill — unicode and empty line_ids, negative and extreme amounts, empty details, decisions
shared between lines or equal but distinct — those bytes must parse to exactly the message
protobuf builds from the same inputs, and be the very bytes protobuf's serializer writes for
it (so no field protobuf leaves out, such as a zero outcome or an empty string, is written).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import reply
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.policy import Reason, Verdict
from gateway.rules import Decision, Line
from gateway.settlement import INT64_MAX, INT64_MIN, RequestError, build_response

INT64 = st.integers(min_value=INT64_MIN, max_value=INT64_MAX)
# Most bills' amounts are small; the extremes exercise ten-byte varints and the overflow check.
AMOUNTS = st.one_of(st.integers(min_value=-100_000, max_value=2_000_000), INT64)
TEXT = st.text(max_size=200)  # any unicode, including the empty string
LONG_TEXT = st.text(min_size=100, max_size=400)  # lengths past one varint byte
# Valid Timestamp range (0001-01-01 .. 9999-12-31) as a float of seconds.
AS_OF = st.floats(min_value=-62_135_596_800.0, max_value=253_402_300_799.0, allow_nan=False)

decisions = st.builds(
    Decision,
    st.sampled_from(list(Verdict)),
    st.sampled_from(list(Reason)),
    st.one_of(TEXT, LONG_TEXT),
    TEXT,
)


@st.composite
def bills(draw: st.DrawFn) -> tuple[list[Line], list[Decision]]:
    """Lines with decisions picked from a small pool, as ``decide_all`` shares them; some
    pool entries are equal copies of others, so identity and value both group lines."""
    pool = draw(st.lists(decisions, min_size=1, max_size=6))
    pool += [Decision(d.verdict, d.reason, d.detail, d.rule) for d in pool[: draw(st.integers(0, 2))]]
    count = draw(st.integers(min_value=1, max_value=60))
    lines = [
        Line("D330902000001", "A03", "XA01", 20_000, False, draw(st.one_of(TEXT, LONG_TEXT)), draw(AMOUNTS))
        for _ in range(count)
    ]
    return lines, [draw(st.sampled_from(pool)) for _ in range(count)]


def reference(
    request_id: str,
    lines: list[Line],
    line_decisions: list[Decision],
    data_version: str,
    as_of: float,
    degraded: bool,
) -> pb.ValidateResponse | None:
    """The reply built plainly with protobuf's API; None when its totals overflow int64."""
    accepted = sum(
        ln.amount_fen for ln, d in zip(lines, line_decisions, strict=True) if d.verdict != Verdict.REJECT
    )
    rejected = sum(
        ln.amount_fen for ln, d in zip(lines, line_decisions, strict=True) if d.verdict == Verdict.REJECT
    )
    if not (INT64_MIN <= accepted <= INT64_MAX and INT64_MIN <= rejected <= INT64_MAX):
        return None
    rejected_lines = sum(d.verdict == Verdict.REJECT for d in line_decisions)
    response = pb.ValidateResponse(
        request_id=request_id,
        outcome=(
            pb.ALL_ACCEPTED
            if rejected_lines == 0
            else pb.ALL_REJECTED
            if rejected_lines == len(lines)
            else pb.PARTIALLY_REJECTED
        ),
        accepted_fen=accepted,
        rejected_fen=rejected,
        data_version=data_version,
        degraded=degraded,
    )
    response.data_as_of.FromNanoseconds(int(as_of * 1e9))
    for line, d in zip(lines, line_decisions, strict=True):
        response.verdicts.add(
            line_id=line.line_id,
            verdict=d.verdict.value,  # type: ignore[arg-type]
            reason=d.reason.value,  # type: ignore[arg-type]
            detail=d.detail,
            rule=d.rule,
        )
    return response


@settings(max_examples=200)
@given(bill=bills(), request_id=TEXT, data_version=TEXT, as_of=AS_OF, degraded=st.booleans())
def test_hand_encoded_reply_is_protobufs_reply(
    bill: tuple[list[Line], list[Decision]], request_id: str, data_version: str, as_of: float, degraded: bool
) -> None:
    lines, line_decisions = bill
    expected = reference(request_id, lines, line_decisions, data_version, as_of, degraded)
    if expected is None:
        try:
            build_response(request_id, lines, line_decisions, data_version, as_of, degraded)
        except RequestError as exc:
            assert "overflow int64" in str(exc)
        else:
            raise AssertionError("totals beyond int64 were not refused")
        return
    encoded = build_response(request_id, lines, line_decisions, data_version, as_of, degraded)
    assert pb.ValidateResponse.FromString(encoded) == expected
    assert encoded == expected.SerializeToString()


@given(value=st.one_of(INT64, st.integers(min_value=0, max_value=2**64 - 1)))
def test_varints_are_protobufs(value: int) -> None:
    # Field 4 is an int64 on the wire; uint64 values share the encoding of their int64 twin.
    signed = value - 2**64 if value > INT64_MAX else value
    assert (
        reply.varint_field(reply.RESPONSE_ACCEPTED_FEN, value)
        == pb.ValidateResponse(accepted_fen=signed).SerializeToString()
    )


def test_the_shared_caches_stay_bounded() -> None:
    """Hostile bills (every line_id of another length, every detail different) cannot grow
    the caches shared by all requests past their limit."""
    for n in range(reply.CACHE_LIMIT + 10):
        decision = Decision(Verdict.REJECT, Reason.STAFF_UNREGISTERED, f"detail {n}", "rule")
        line = Line("D330902000001", "A03", "XA01", 20_000, False, "x" * n, 1)
        encoded = build_response("r", [line], [decision], "v", 0.0, False)
        assert pb.ValidateResponse.FromString(encoded).verdicts[0].line_id == "x" * n
    assert len(reply._FIELDS) <= reply.CACHE_LIMIT
    assert len(reply._ENTRY_HEADS) <= reply.CACHE_LIMIT
