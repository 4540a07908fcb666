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

import functools
from collections.abc import Mapping, Sequence
from itertools import chain
from operator import attrgetter

from gateway.rules import Decision, Line

# Wire types (protobuf encoding spec): varint, and length-delimited.
VARINT = 0
LENGTH_DELIMITED = 2
UINT64_SPAN = 1 << 64

# Caches shared by all requests are cleared when they reach this many entries, so that
# hostile bills (every line_id of another length, every detail different) cannot grow them.
CACHE_LIMIT = 4096


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))


def varint(value: int) -> bytes:
    """Base-128 varint; a negative (int64/int32) value as its 64-bit two's complement, in ten
    bytes, as protobuf writes it."""
    if 0 <= value < 0x80:  # tags, enums, short lengths: most calls
        return _ONE_BYTE[value]
    if value < 0:
        value += UINT64_SPAN
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def key(number: int, wire_type: int) -> bytes:
    """A field's key: its number and wire type, as a varint."""
    return varint(number << 3 | wire_type)


# The keys of the fields written here (settlement/v1/gateway.proto, google/protobuf/timestamp.proto).
RESPONSE_REQUEST_ID = key(1, LENGTH_DELIMITED)
RESPONSE_OUTCOME = key(2, VARINT)
RESPONSE_VERDICTS = key(3, LENGTH_DELIMITED)
RESPONSE_ACCEPTED_FEN = key(4, VARINT)
RESPONSE_REJECTED_FEN = key(5, VARINT)
RESPONSE_DATA_VERSION = key(6, LENGTH_DELIMITED)
RESPONSE_DATA_AS_OF = key(7, LENGTH_DELIMITED)
RESPONSE_DEGRADED = key(8, VARINT)
VERDICT_LINE_ID = key(1, LENGTH_DELIMITED)
VERDICT_VERDICT = key(2, VARINT)
VERDICT_REASON = key(3, VARINT)
VERDICT_DETAIL = key(4, LENGTH_DELIMITED)
VERDICT_RULE = key(5, LENGTH_DELIMITED)
TIMESTAMP_SECONDS = key(1, VARINT)
TIMESTAMP_NANOS = key(2, VARINT)


def varint_field(field_key: bytes, value: int) -> bytes:
    """An integer, enum or bool field; zero is proto3's default and not written."""
    return field_key + varint(value) if value else b""


def length_delimited(field_key: bytes, data: bytes) -> bytes:
    """A field with a length prefix, written even when empty (a sub-message that is set)."""
    return field_key + varint(len(data)) + data


def string_field(field_key: bytes, text: str) -> bytes:
    """A string field; the empty string is proto3's default and not written."""
    return length_delimited(field_key, text.encode()) if text else b""


def timestamp(nanoseconds: int) -> bytes:
    """A ``google.protobuf.Timestamp``'s fields, split as ``Timestamp.FromNanoseconds`` does
    (nanos always in 0..999,999,999, seconds rounded down)."""
    seconds, nanos = divmod(nanoseconds, 1_000_000_000)
    return varint_field(TIMESTAMP_SECONDS, seconds) + varint_field(TIMESTAMP_NANOS, nanos)


@functools.lru_cache(maxsize=16)
def version_fields(data_version: str, data_as_of: float, degraded: bool) -> bytes:
    """The reply's last fields, which depend only on the data version it was judged on: the
    same for every request of that version, so encoded once per version."""
    return (
        string_field(RESPONSE_DATA_VERSION, data_version)
        + length_delimited(RESPONSE_DATA_AS_OF, timestamp(int(data_as_of * 1e9)))
        + varint_field(RESPONSE_DEGRADED, degraded)
    )


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
        id_head = VERDICT_LINE_ID + varint(id_length) if id_length else b""
        head = RESPONSE_VERDICTS + varint(len(id_head) + id_length + fields_length) + id_head
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
    and setting its ``line_id`` per line, and gRPC's serialization of the result: with the
    totals, 0.71 instead of 1.18 µs of CPU a line for a 3,000-line bill (``benchmarks/
    micro_reply.py``, ``benchmarks/RESULTS.md`` "Reply bytes and line counting")."""
    fields_by_key = {key: verdict_fields(decision) for key, decision in distinct.items()}
    fields = list(map(fields_by_key.__getitem__, keys))
    ids = list(map(str.encode, map(_line_id, lines)))
    heads = map(_ENTRY_HEADS.__getitem__, zip(map(len, ids), map(len, fields), strict=True))
    return b"".join(chain.from_iterable(zip(heads, ids, fields, strict=True)))
