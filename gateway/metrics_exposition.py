"""How ``/metrics`` is served: by the one gateway process, or for a group of worker processes.

One process: its own registry, served on ``SGW_METRICS_LISTEN`` by a small HTTP thread.

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
import tempfile
import threading
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server, values
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from gateway.metrics_state import StateCollector, read_state_files, state_file, written_state_files

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What prometheus-client writes (``<type>_<pid>.db``) and reads back: every ``*.db`` there.
MULTIPROCESS_FILES = "*.db"


def serve_metrics(host: str, port: int, registry: CollectorRegistry) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` on http://host:port/metrics from a daemon thread; raises OSError
    when the address cannot be bound. Stop with ``server.shutdown(); server.server_close()``."""
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
