"""The audit trail: what was rejected, exempted or paid in an outage, kept for disputes.

``record`` (what a record holds, masking, the hash chain), ``spool`` (crash safety),
``writer`` (the gateway's side), ``archive`` (PostgreSQL), ``chain`` (verification),
``queries`` (the stream) and ``explain`` (the dispute view).
"""

from gateway.audit.writer import AuditLog

__all__ = ["AuditLog"]
