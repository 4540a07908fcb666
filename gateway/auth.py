"""mTLS authorization: which institutions a connected client may validate settlements for.

A hospital's HIS connects with a client certificate issued by the agency's CA; the gateway
maps the certificate's identity to the institution codes that hospital may ask about, so one
hospital can neither probe another's staff nor settle in its name.

Identity: each subject alternative name of the client certificate (DNS name or URI, as gRPC
reports them); a certificate without SANs is identified by its subject CN. A client's
institutions are the union over its identities found in the mapping file (TOML)::

    [clients]
    "his.h33090200017.example" = ["H33090200017"]
    "spiffe://agency.example/his/group-7" = ["H33090200017", "H33090300021"]
    "audit-console.agency.example" = ["*"]        # every institution

No identity in the mapping: ``UNAUTHENTICATED``; an institution not granted:
``PERMISSION_DENIED`` (the contract's codes).
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

ANY_INSTITUTION = "*"
SAN_KEY = "x509_subject_alternative_name"
CN_KEY = "x509_common_name"


class AccessDenied(Exception):
    """The caller may not make this call; ``code`` is the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class AccessMapError(ValueError):
    """The mapping file cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class AccessMap:
    """Client identity -> institution codes it may validate (``*``: all)."""

    grants: Mapping[str, frozenset[str]]

    @classmethod
    def load(cls, path: Path) -> AccessMap:
        try:
            doc = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise AccessMapError(f"{path}: {exc}") from exc
        return cls.from_toml(doc, str(path))

    @classmethod
    def from_toml(cls, doc: Mapping[str, Any], source: str = "mapping") -> AccessMap:
        clients = doc.get("clients")
        if not isinstance(clients, dict) or not clients:
            raise AccessMapError(f"{source}: needs a non-empty [clients] table")
        grants: dict[str, frozenset[str]] = {}
        for identity, codes in clients.items():
            if not isinstance(codes, list) or not all(isinstance(c, str) and c.strip() for c in codes):
                raise AccessMapError(f"{source}: clients.{identity!r} must be a list of institution codes")
            grants[identity] = frozenset(c.strip() for c in codes)
        return cls(grants)

    def institutions_for(self, identities: Iterable[str]) -> frozenset[str] | None:
        """The institutions granted to any of ``identities``; None when none is mapped."""
        found: set[str] = set()
        known = False
        for identity in identities:
            granted = self.grants.get(identity)
            if granted is not None:
                known = True
                found |= granted
        return frozenset(found) if known else None


def peer_identities(auth_context: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The client certificate's SANs, else its subject CN (see the module docstring)."""
    sans = [v.decode("utf-8", "replace") for v in auth_context.get(SAN_KEY, ())]
    if sans:
        return sans
    return [v.decode("utf-8", "replace") for v in auth_context.get(CN_KEY, ())]


def certificate_identity(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The call's client-certificate identity as one string (its identities joined by commas),
    "" without mTLS: whom the audit trail and the per-caller budgets name."""
    return ",".join(peer_identities(context.auth_context()))


class Authorizer:
    """Checks one call against the access map; the servicer asks it before any data is read."""

    def __init__(self, access: AccessMap) -> None:
        self.access = access

    def institutions(self, context: grpc.aio.ServicerContext[Any, Any]) -> frozenset[str]:
        identities = peer_identities(context.auth_context())
        granted = self.access.institutions_for(identities)
        if granted is None:
            shown = ", ".join(identities) or "none"
            raise AccessDenied(
                grpc.StatusCode.UNAUTHENTICATED,
                f"the client certificate's identity ({shown}) is not registered with this gateway",
            )
        return granted

    def check(self, context: grpc.aio.ServicerContext[Any, Any], institution_code: str) -> None:
        granted = self.institutions(context)
        if ANY_INSTITUTION in granted or institution_code.strip() in granted:
            return
        raise AccessDenied(
            grpc.StatusCode.PERMISSION_DENIED,
            f"this client may not validate settlements of institution {institution_code.strip()!r}",
        )


def server_credentials(cert: Path, key: Path, client_ca: Path) -> grpc.ServerCredentials:
    """TLS that requires a client certificate signed by ``client_ca``."""
    return grpc.ssl_server_credentials(
        [(key.read_bytes(), cert.read_bytes())],
        root_certificates=client_ca.read_bytes(),
        require_client_auth=True,
    )
