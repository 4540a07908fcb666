"""Privacy: an ID number (or any code of no valid shape) sent as a staff or department code is
stored masked in the audit trail and never becomes a metric label.

Reproduced first: an 18-digit ID number sent as ``staff_code`` was stored unmasked in the
stream and shown as a label of ``sgw_staff_code_share`` on ``/metrics``.
"""

from __future__ import annotations

import urllib.request

import orjson
import redis

from gateway.audit.record import mask_code, safe_department_code, safe_staff_code
from gateway.codes import DEFAULT_SHAPES
from gateway.keys import Keys
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp
from tests.conftest import Loader
from tests.exports import DOCTOR, institution_row, line, request, staff_row
from tests.polling import until
from tests.scrape import parse

ID_NUMBER = "330902198001011234"
UNREGISTERED = "D330902000099"
FULL_WIDTH_ID = "３３０９０２１９８００１０１１２３４"


def test_masking_keeps_the_shape_and_the_last_two_digits() -> None:
    assert mask_code(ID_NUMBER) == "*" * 16 + "34"
    assert mask_code("33090219800101123X") == "*" * 15 + "23X"
    assert mask_code(FULL_WIDTH_ID) == "*" * 16 + "３４"
    assert mask_code("3309 0219 8001 0112 34") == "**** **** **** **** 34"
    assert safe_staff_code(DOCTOR, DEFAULT_SHAPES) == DOCTOR  # a valid code is kept as sent
    assert safe_staff_code("D3309020000", DEFAULT_SHAPES) == "D*********00"[:1] + "*" * 8 + "00"
    assert safe_department_code("A03") == "A03" and safe_department_code("0301") == "0301"
    assert safe_department_code(ID_NUMBER) == "*" * 16 + "34"
    assert safe_department_code("") == ""


async def test_an_id_number_as_staff_code_is_masked_in_the_trail_and_absent_from_metrics(
    load: Loader, gateway: GatewayApp, stub: pb_grpc.SettlementGatewayStub, redis_url: str
) -> None:
    load("institution", [institution_row()])
    load("staff", [staff_row()])
    bill = request(
        *[line(str(i), ID_NUMBER) for i in range(8)],
        line("8", UNREGISTERED, department_code=ID_NUMBER),
        line("9", FULL_WIDTH_ID),
        line("10", DOCTOR, item_code=""),
    )
    await stub.Validate(bill)
    assert gateway.audit is not None
    await until(lambda: gateway.audit.written == 11)  # type: ignore[union-attr]

    client = redis.Redis.from_url(redis_url)
    entries = client.xrange(Keys().audit)
    client.close()
    stored = b"".join(fields[b"r"] for _, fields in entries)  # type: ignore[index]
    assert ID_NUMBER.encode() not in stored and FULL_WIDTH_ID.encode() not in stored
    docs = [orjson.loads(fields[b"r"]) for _, fields in entries]  # type: ignore[index]
    assert {d["staff_code"] for d in docs} == {"*" * 16 + "34", "*" * 16 + "３４", UNREGISTERED, DOCTOR}
    assert docs[8]["department_code"] == "*" * 16 + "34"

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics") as response:
            return str(response.read().decode())

    await until(lambda: parse(scrape()).series("sgw_staff_code_share"))  # published every 0.5 s
    text = scrape()
    assert ID_NUMBER not in text and FULL_WIDTH_ID not in text
    shares = {s["staff_code"] for s in parse(text).series("sgw_staff_code_share")}
    assert "(malformed)" in shares and shares <= {DOCTOR, UNREGISTERED, "(malformed)"}
