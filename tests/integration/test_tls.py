"""mTLS: a hospital's certificate may validate its own institutions only.

The tests make their own CA and certificates at run time (trustme); the gateway runs with
``SGW_TLS_*`` settings and is called over real TLS channels.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import trustme

from gateway.auth import AccessMap, AccessMapError, peer_identities
from gateway.config import Settings
from gateway.pb.settlement.v1 import gateway_pb2 as pb
from gateway.pb.settlement.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import GatewayApp, StartupError
from tests.conftest import Loader
from tests.exports import HOSPITAL, OTHER_HOSPITAL, institution_row, line, request, staff_row

HIS = "his.h33090200017.example"
AGENCY = "audit-console.agency.example"
STRANGER = "his.unknown.example"

CLIENTS_TOML = f'''
[clients]
"{HIS}" = ["{HOSPITAL}"]
"{AGENCY}" = ["*"]
'''


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def tls_settings(settings: Settings, ca: trustme.CA, tmp_path: Path) -> Settings:
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    server.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    (tmp_path / "clients.toml").write_text(CLIENTS_TOML, encoding="utf-8")
    return replace(
        settings,
        tls_cert=tmp_path / "server.pem",
        tls_key=tmp_path / "server.key",
        tls_client_ca=tmp_path / "ca.pem",
        tls_clients=tmp_path / "clients.toml",
    )


@pytest.fixture
async def tls_gateway(tls_settings: Settings, load: Loader) -> AsyncIterator[GatewayApp]:
    load("institution", [institution_row(), institution_row(OTHER_HOSPITAL)])
    load("staff", [staff_row()])
    app = GatewayApp(tls_settings, tls_settings.redis_url or "")
    await app.start()
    yield app
    await app.stop(0.5)


def channel(ca: trustme.CA, port: int, identity: str | None) -> grpc.aio.Channel:
    if identity is None:
        creds = grpc.ssl_channel_credentials(root_certificates=ca.cert_pem.bytes())
    else:
        cert = ca.issue_cert(identity)
        creds = grpc.ssl_channel_credentials(
            root_certificates=ca.cert_pem.bytes(),
            private_key=cert.private_key_pem.bytes(),
            certificate_chain=cert.cert_chain_pems[0].bytes(),
        )
    return grpc.aio.secure_channel(
        f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
    )


async def call_code(
    ca: trustme.CA, port: int, identity: str | None, institution: str
) -> tuple[grpc.StatusCode, str]:
    async with channel(ca, port, identity) as ch:
        try:
            await pb_grpc.SettlementGatewayStub(ch).Validate(
                request(line(), institution_code=institution), timeout=10
            )
        except grpc.aio.AioRpcError as err:
            return err.code(), err.details() or ""
        return grpc.StatusCode.OK, ""


async def test_a_hospital_validates_its_own_settlements_only(tls_gateway: GatewayApp, ca: trustme.CA) -> None:
    assert await call_code(ca, tls_gateway.port, HIS, HOSPITAL) == (grpc.StatusCode.OK, "")
    code, details = await call_code(ca, tls_gateway.port, HIS, OTHER_HOSPITAL)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert f"may not validate settlements of institution '{OTHER_HOSPITAL}'" in details


async def test_the_agency_console_may_ask_about_any_institution(
    tls_gateway: GatewayApp, ca: trustme.CA
) -> None:
    assert (await call_code(ca, tls_gateway.port, AGENCY, OTHER_HOSPITAL))[0] == grpc.StatusCode.OK


async def test_an_unregistered_certificate_is_unauthenticated(
    tls_gateway: GatewayApp, ca: trustme.CA
) -> None:
    code, details = await call_code(ca, tls_gateway.port, STRANGER, HOSPITAL)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert f"identity ({STRANGER}) is not registered" in details
    async with channel(ca, tls_gateway.port, STRANGER) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await pb_grpc.SettlementGatewayStub(ch).GetStatus(pb.GetStatusRequest())
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_no_client_certificate_no_connection(tls_gateway: GatewayApp, ca: trustme.CA) -> None:
    code, _ = await call_code(ca, tls_gateway.port, None, HOSPITAL)
    assert code == grpc.StatusCode.UNAVAILABLE  # the TLS handshake itself is refused
    other_ca = trustme.CA()
    code, _ = await call_code(other_ca, tls_gateway.port, HIS, HOSPITAL)
    assert code == grpc.StatusCode.UNAVAILABLE


async def test_each_request_of_a_stream_is_checked(tls_gateway: GatewayApp, ca: trustme.CA) -> None:
    async with channel(ca, tls_gateway.port, HIS) as ch:
        call = pb_grpc.SettlementGatewayStub(ch).ValidateStream(
            iter(
                [
                    request(line(), request_id="mine"),
                    request(line(), request_id="theirs", institution_code=OTHER_HOSPITAL),
                ]
            )
        )
        assert (await call.read()).request_id == "mine"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call.read()
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "request #1 (request_id='theirs')" in (err.value.details() or "")


async def test_a_bad_mapping_file_stops_the_start(tls_settings: Settings) -> None:
    assert tls_settings.tls_clients is not None
    tls_settings.tls_clients.write_text('[clients]\n"x" = "H1"\n', encoding="utf-8")
    app = GatewayApp(tls_settings, tls_settings.redis_url or "")
    with pytest.raises(StartupError, match=r"clients\.'x' must be a list of institution codes"):
        await app.start()
    await app.stop(0)


def test_identity_is_the_sans_else_the_common_name() -> None:
    assert peer_identities(
        {"x509_subject_alternative_name": [b"a.example", b"spiffe://x/y"], "x509_common_name": [b"cn"]}
    ) == ["a.example", "spiffe://x/y"]
    assert peer_identities({"x509_common_name": [b"cn"]}) == ["cn"]
    assert peer_identities({}) == []
    access = AccessMap.from_toml({"clients": {"a": ["H1"], "b": ["H2", " H3 "]}})
    assert access.institutions_for(["a", "b", "zzz"]) == {"H1", "H2", "H3"}
    assert access.institutions_for(["zzz"]) is None
    with pytest.raises(AccessMapError, match="non-empty"):
        AccessMap.from_toml({})
