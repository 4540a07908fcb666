"""``settlement-gateway-health``: ask a gateway's ``grpc.health.v1`` service whether it serves.

Container health checks (Docker's ``HEALTHCHECK``, a Kubernetes ``exec`` probe where the
gateway requires client certificates, which the kubelet's own gRPC probe cannot present) and
systemd need a command that exits 0 when the gateway answers SERVING and non-zero otherwise.
This one uses the same grpcio the gateway runs on, so an image needs no extra binary.

Exit codes: 0 SERVING; 1 NOT_SERVING, unknown, unreachable or too slow; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2

DEFAULT_ADDRESS = "127.0.0.1:50051"


def local_address(listen: str) -> str:
    """The address to probe for a listen address: a wildcard host means this machine."""
    host, sep, port = listen.rpartition(":")
    if not sep:
        return listen
    if host in ("", "[::]", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"{host}:{port}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="settlement-gateway-health", description="exit 0 when the gateway's health service says SERVING"
    )
    p.add_argument(
        "address",
        nargs="?",
        help="host:port (default: $SGW_LISTEN with a wildcard host read as 127.0.0.1, else 127.0.0.1:50051)",
    )
    p.add_argument("--service", default="", help="health service name ('' = the whole server)")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--tls-ca", type=Path, help="CA of the gateway's certificate (turns on TLS)")
    p.add_argument("--tls-cert", type=Path, help="client certificate (PEM), for a gateway requiring mTLS")
    p.add_argument("--tls-key", type=Path, help="client key (PEM)")
    p.add_argument("--tls-server-name", help="name to check the gateway's certificate against")
    return p


def probe(
    address: str,
    service: str = "",
    timeout: float = 3.0,
    credentials: grpc.ChannelCredentials | None = None,
    server_name: str | None = None,
) -> str:
    """The serving status name (``SERVING``, ``NOT_SERVING``…) or ``UNREACHABLE: <why>``."""
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    channel = (
        grpc.secure_channel(address, credentials, options=options)
        if credentials is not None
        else grpc.insecure_channel(address)
    )
    with channel:
        check = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
            response_deserializer=health_pb2.HealthCheckResponse.FromString,
        )
        try:
            reply = check(health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError as err:
            return f"UNREACHABLE: {err.code().name} {err.details()}"  # type: ignore[attr-defined]
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    address = args.address or local_address(os.environ.get("SGW_LISTEN", DEFAULT_ADDRESS))
    credentials = None
    if args.tls_ca or args.tls_cert:
        if bool(args.tls_cert) != bool(args.tls_key):
            print("settlement-gateway-health: --tls-cert and --tls-key go together", file=sys.stderr)
            return 2
        try:
            credentials = grpc.ssl_channel_credentials(
                root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
                private_key=args.tls_key.read_bytes() if args.tls_key else None,
                certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
            )
        except OSError as exc:
            print(f"settlement-gateway-health: {exc}", file=sys.stderr)
            return 2
    status = probe(address, args.service, args.timeout, credentials, args.tls_server_name)
    print(f"{address}: {status}")
    return 0 if status == "SERVING" else 1


if __name__ == "__main__":
    raise SystemExit(main())
