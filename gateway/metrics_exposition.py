"""How ``/metrics`` is served: by the one gateway process, or for a group of worker processes.

One process: its own registry, served on ``SGW_METRICS_LISTEN`` by a small HTTP thread.

``/metrics`` shows per-hospital volumes and staff codes, so it can be served over TLS with
client certificates (``SGW_METRICS_TLS_CERT``, ``SGW_METRICS_TLS_KEY``,
``SGW_METRICS_TLS_CLIENT_CA``: the same three options as gRPC's mTLS), optionally only to
the identities in ``SGW_METRICS_TLS_CLIENTS`` (a client certificate's SANs, else its CN, as
gRPC identifies callers). The handshake runs in the connection's own thread with a timeout:
prometheus-client's TLS server shakes hands in its accept loop, where one client that
connects and says nothing would hold every scrape up.

Several workers (``serve --workers N``) use prometheus-client's multiprocess mode: each
worker writes its counters and histograms to memory-mapped files in one directory, and the
supervisor serves the sum. The supervisor's part, in order:

1. ``prepare_multiprocess_dir(path)`` before forking any worker (and before any metric is
   created): removes a previous run's metric and state files (they would be added to this
   run's counts), leaving anything else in the directory alone, and switches
   prometheus-client into multiprocess mode for this process and the workers it forks.
2. In each worker, ``GatewayApp(settings, url, metrics_dir=path)``: the worker writes its
   metrics and its ``ProcessState`` there and starts no HTTP server of its own.
3. ``serve_metrics(host, port, multiprocess_registry(path, top_codes))`` in the supervisor.
4. ``mark_worker_dead(pid, path)`` whenever a worker exits (after ``waitpid``): its
   state-like gauges disappear, its counters stay in the totals (they did happen).
"""

from __future__ import annotations

import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app, start_http_server, values
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway.auth import peer_identities
from gateway.metrics_state import StateCollector, read_state_files, state_file, written_state_files

if TYPE_CHECKING:
    from gateway.config import Settings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What prometheus-client writes (``<type>_<pid>.db``) and reads back: every ``*.db`` there.
MULTIPROCESS_FILES = "*.db"


# A TLS client gets this long to finish its handshake, and then to send each request line.
TLS_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class MetricsTLS:
    """``/metrics`` over TLS: the server's certificate and key, the CA that signs the
    scrapers' client certificates, and (optionally) the identities allowed to scrape."""

    cert: Path
    key: Path
    client_ca: Path
    clients: frozenset[str] = frozenset()

    @classmethod
    def of(cls, settings: Settings) -> MetricsTLS | None:
        if settings.metrics_tls_cert is None:
            return None
        assert settings.metrics_tls_key is not None and settings.metrics_tls_client_ca is not None
        return cls(
            settings.metrics_tls_cert,
            settings.metrics_tls_key,
            settings.metrics_tls_client_ca,
            settings.metrics_tls_clients,
        )

    def context(self) -> ssl.SSLContext:
        """Raises OSError (or ssl.SSLError, one) naming the file that cannot be used."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cafile=str(self.client_ca))
        except OSError as exc:
            raise type(exc)(f"cannot read the /metrics client CA {self.client_ca}: {exc}") from exc
        try:
            context.load_cert_chain(str(self.cert), str(self.key))
        except OSError as exc:
            raise type(exc)(
                f"cannot read the /metrics certificate {self.cert} or key {self.key}: {exc}"
            ) from exc
        return context


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr (the gateway logs JSON); a bounded wait for each request."""

    timeout = TLS_TIMEOUT_SECONDS

    def log_message(self, format: str, *args: Any) -> None:
        return

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        if isinstance(self.connection, ssl.SSLSocket):
            environ["sgw.client_identities"] = certificate_identities(self.connection.getpeercert() or {})
        return environ


def certificate_identities(cert: dict[str, Any]) -> list[str]:
    """A verified peer certificate's identities as gRPC reports them: DNS and URI SANs, else
    the subject CN (``gateway.auth.peer_identities``)."""
    sans = [value for kind, value in cert.get("subjectAltName", ()) if kind in ("DNS", "URI")]
    cns = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return peer_identities(
        {
            "x509_subject_alternative_name": [s.encode() for s in sans],
            "x509_common_name": [c.encode() for c in cns],
        }
    )


def _allowlisted(app: Any, clients: frozenset[str]) -> Any:
    """``app`` for the listed identities only; anyone else (with a valid certificate) gets 403."""

    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if not clients.intersection(environ.get("sgw.client_identities", ())):
            start_response("403 Forbidden", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"this client certificate may not read the metrics (SGW_METRICS_TLS_CLIENTS)\n"]
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return guarded


class _TLSServer(ThreadingWSGIServer):
    """Accepts plain TCP; each connection's thread does the TLS handshake (bounded)."""

    ssl_context: ssl.SSLContext

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(TLS_TIMEOUT_SECONDS)
        try:
            tls = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return  # no certificate, a wrong one, or no handshake in time: nothing to serve
        try:
            super().finish_request(tls, client_address)
        finally:
            self.shutdown_request(tls)


def _serve_tls(
    host: str, port: int, registry: CollectorRegistry, tls: MetricsTLS
) -> tuple[WSGIServer, threading.Thread]:
    context = tls.context()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class Server(_TLSServer):
        address_family = family
        ssl_context = context

    app = make_wsgi_app(registry)
    if tls.clients:
        app = _allowlisted(app, tls.clients)
    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="metrics-https", daemon=True)
    thread.start()
    return httpd, thread


def serve_metrics(
    host: str, port: int, registry: CollectorRegistry, tls: MetricsTLS | None = None
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on http://host:port/metrics (https with ``tls``) from a daemon
    thread; raises OSError when the address cannot be bound or a TLS file cannot be read.
    Stop with ``server.shutdown(); server.server_close()``."""
    if tls is not None:
        return _serve_tls(host, port, registry, tls)
    return start_http_server(port, addr=host, registry=registry)


def prepare_multiprocess_dir(path: Path | None = None) -> Path:
    """Create the directory the workers share, clear a previous run's files from it and
    enter multiprocess mode.

    ``path`` defaults to ``$PROMETHEUS_MULTIPROC_DIR`` if set, else a new temporary
    directory. Must run before the workers fork and before any metric is created, since
    prometheus-client picks how values are stored when a metric is created.
    """
    if path is None:
        configured = os.environ.get(MULTIPROC_ENV)
        path = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="sgw-metrics-"))
    path.mkdir(parents=True, exist_ok=True)
    remove_previous_run(path)
    os.environ[MULTIPROC_ENV] = str(path)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def remove_previous_run(path: Path) -> None:
    """Delete the metric files (``*.db``) and state files an earlier run left in ``path``.

    Only those: the directory is the operator's (``$PROMETHEUS_MULTIPROC_DIR`` may point at
    a directory holding other things), so anything the gateway and prometheus-client did not
    write there stays.
    """
    for entry in (*path.glob(MULTIPROCESS_FILES), *written_state_files(path)):
        if not entry.is_dir():
            entry.unlink(missing_ok=True)


def multiprocess_registry(path: Path, top_codes: int) -> CollectorRegistry:
    """What the supervisor serves: the workers' summed metrics and their merged states."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))  # type: ignore[no-untyped-call]
    registry.register(StateCollector(lambda: read_state_files(path), top_codes))
    return registry


def mark_worker_dead(pid: int, path: Path) -> None:
    """Forget a worker that exited: drop its live gauges and its state file."""
    mark_process_dead(pid, str(path))  # type: ignore[no-untyped-call]
    state_file(path, pid).unlink(missing_ok=True)
