"""The ``ValidateResponse`` wire bytes, written directly instead of through a protobuf message.

A bill has a handful of distinct decisions however many lines it has. Built as a message, the
reply copied one prepared ``LineVerdict`` per line into the message, set each line's
``line_id`` from Python, and gRPC then serialized the whole message again. Here each distinct
decision's ``LineVerdict`` fields (verdict, reason, detail, rule) are encoded once, and a line's
entry in ``verdicts`` is

    0x1A <entry length> [0x0A <line_id length> <line_id UTF-8>] <the decision's fields>

(field 3 of ``ValidateResponse``, holding a ``LineVerdict`` whose field 1 is ``line_id``; an
empty ``line_id`` is proto3's default and not written). The servicer hands these bytes to gRPC
as they are. Fields are written in field-number order and proto3 defaults are left out, as
protobuf's own serializer does; ``tests/property/test_reply_wire.py`` holds the bytes to
protobuf's parse of them, and to the message protobuf builds, for random bills.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import chain
from operator import attrgetter

from gateway.rules import Decision, Line

# Wire types (protobuf encoding spec): varint, and length-delimited.
VARINT = 0
LENGTH_DELIMITED = 2
UINT64_SPAN = 1 << 64

# ValidateResponse and LineVerdict field numbers (settlement/v1/gateway.proto).
RESPONSE_REQUEST_ID = 1
RESPONSE_OUTCOME = 2
RESPONSE_VERDICTS = 3
RESPONSE_ACCEPTED_FEN = 4
RESPONSE_REJECTED_FEN = 5
RESPONSE_DATA_VERSION = 6
RESPONSE_DATA_AS_OF = 7
RESPONSE_DEGRADED = 8
VERDICT_LINE_ID = 1
VERDICT_VERDICT = 2
VERDICT_REASON = 3
VERDICT_DETAIL = 4
VERDICT_RULE = 5
TIMESTAMP_SECONDS = 1
TIMESTAMP_NANOS = 2

# Caches shared by all requests are cleared when they reach this many entries, so that
# hostile bills (every line_id of another length, every detail different) cannot grow them.
CACHE_LIMIT = 4096


def varint(value: int) -> bytes:
    """Base-128 varint; a negative (int64/int32) value as its 64-bit two's complement, in ten
    bytes, as protobuf writes it."""
    if value < 0:
        value += UINT64_SPAN
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint(number << 3 | wire_type)


def varint_field(number: int, value: int) -> bytes:
    """An integer, enum or bool field; zero is proto3's default and not written."""
    return tag(number, VARINT) + varint(value) if value else b""


def length_delimited(number: int, data: bytes) -> bytes:
    """A field with a length prefix, written even when empty (a sub-message that is set)."""
    return tag(number, LENGTH_DELIMITED) + varint(len(data)) + data


def string_field(number: int, text: str) -> bytes:
    """A string field; the empty string is proto3's default and not written."""
    return length_delimited(number, text.encode()) if text else b""


def timestamp(nanoseconds: int) -> bytes:
    """A ``google.protobuf.Timestamp``'s fields, split as ``Timestamp.FromNanoseconds`` does
    (nanos always in 0..999,999,999, seconds rounded down)."""
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    return varint_field(TIMESTAMP_SECONDS, seconds) + varint_field(TIMESTAMP_NANOS, nanos)


_FIELDS: dict[Decision, bytes] = {}


def verdict_fields(decision: Decision) -> bytes:
    """``decision`` as a ``LineVerdict`` without its ``line_id``. Cached by the decision's
    value (the same few decisions recur from bill to bill), so a request encodes only the
    decisions it is the first to reach."""
    fields = _FIELDS.get(decision)
    if fields is None:
        if len(_FIELDS) >= CACHE_LIMIT:
            _FIELDS.clear()
        fields = _FIELDS[decision] = (
            varint_field(VERDICT_VERDICT, decision.verdict)
            + varint_field(VERDICT_REASON, decision.reason)
            + string_field(VERDICT_DETAIL, decision.detail)
            + string_field(VERDICT_RULE, decision.rule)
        )
    return fields


class _EntryHeads(dict[tuple[int, int], bytes]):
    """The bytes of a ``verdicts`` entry that come before the line_id's own bytes, by
    (line_id length, length of the decision's fields): a bill has a few such pairs."""

    def __missing__(self, key: tuple[int, int]) -> bytes:
        id_length, fields_length = key
        id_head = tag(VERDICT_LINE_ID, LENGTH_DELIMITED) + varint(id_length) if id_length else b""
        head = (
            tag(RESPONSE_VERDICTS, LENGTH_DELIMITED)
            + varint(len(id_head) + id_length + fields_length)
            + id_head
        )
        if len(self) >= CACHE_LIMIT:
            self.clear()
        self[key] = head
        return head


_ENTRY_HEADS = _EntryHeads()
_line_id = attrgetter("line_id")


def verdict_entries(lines: Sequence[Line], keys: Sequence[int], distinct: Mapping[int, Decision]) -> bytes:
    """Every line's ``verdicts`` entry, in line order. ``keys`` holds ``id()`` of each line's
    decision (``decide_all`` shares one object per distinct outcome) and ``distinct`` those
    decisions by that key.

    No Python statement runs per line: each step below is a ``map``/``zip``/``join`` over the
    whole bill, evaluated in C, and only the distinct decisions and the distinct (line_id
    length, fields length) pairs reach Python code. This replaces copying a prepared message
    and setting its ``line_id`` per line, and gRPC's serialization of the result (figures in
    ``benchmarks/RESULTS.md``, "Reply bytes and line counting")."""
    fields_by_key = {key: verdict_fields(decision) for key, decision in distinct.items()}
    fields = list(map(fields_by_key.__getitem__, keys))
    ids = list(map(str.encode, map(_line_id, lines)))
    heads = map(_ENTRY_HEADS.__getitem__, zip(map(len, ids), map(len, fields), strict=True))
    return b"".join(chain.from_iterable(zip(heads, ids, fields, strict=True)))
