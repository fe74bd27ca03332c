"""Prometheus metrics (prometheus_client), for one process or for worker processes.

The metrics (README: Metrics) live in one ServerMetrics object per process, made on first
use by `current()`. Instrumentation is a counter increment per event; bytes are counted
per transport write, never per line.

One process (`popbox serve` without workers):

    exporter = start_metrics_server(config)      # None without a [metrics] table
    ...
    exporter.close()

Worker processes use prometheus_client's multiprocess mode: every process writes its
values to memory-mapped files in one directory, and the process that serves HTTP sums the
files (MultiProcessCollector). prometheus_client picks the file-backed values when it is
first imported, so the master must prepare the directory before anything imports it
(this module imports it only when a metric is made or served):

    1. master, before forking:         directory = prepare_multiprocess()
       (sets PROMETHEUS_MULTIPROC_DIR, which the workers inherit)
    2. master:                         exporter = start_multiprocess_server(config)
    3. workers:                        nothing; `current()` writes to the directory
       (serve() does not start its own endpoint when served_by_master())
    4. master, after reaping a worker: worker_exited(pid)
       (its popbox_connections_active stops counting; its counters stay in the sums)
    5. master, at exit:                exporter.close(); cleanup_multiprocess()

Counters and the histogram are summed over all processes, living or dead; the gauge
popbox_connections_active uses multiprocess_mode="livesum" (the sum over live processes).
The exporter runs on a thread. Fork the first workers before starting it; a replacement
worker forked later is forked from a threaded process (the usual caveat: a lock that
thread held at that instant stays held in the child; Python 3.12 warns about such forks).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from popbox.protocol.states import KNOWN_COMMANDS, UNKNOWN_KEYWORD

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from prometheus_client import CollectorRegistry

    from popbox.config import Config

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Set by prepare_multiprocess() next to MULTIPROC_ENV, so that a PROMETHEUS_MULTIPROC_DIR
# left in the environment by something else does not turn the endpoint off.
MASTER_ENV = "POPBOX_METRICS_MASTER"

# RETR latency buckets in seconds: sub-millisecond for small local messages up to minutes
# for large messages to slow clients.
_SUB_SECOND = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
RETR_BUCKETS = (*_SUB_SECOND, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# Every label value comes from these fixed sets, never from client input, so a client
# cannot create unbounded series.
UNKNOWN_COMMAND = UNKNOWN_KEYWORD
REFUSED_REASONS = ("limit", "ip_limit", "blocked", "proxy", "backlog", "reset")
LOGIN_RESULTS = (
    "ok",
    "failed",
    "temp_failure",
    "blocked",
    "in_use",
    "login_delay",
    "maildrop_unavailable",
)
STORE_OPERATIONS = ("open", "read", "update", "deliver")
OTHER_MECHANISM = "other"


class ServerMetrics:
    """Every popbox metric, registered in `registry` (prometheus_client's default)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        from prometheus_client import (  # noqa: PLC0415
            REGISTRY,
            Counter,
            Gauge,
            Histogram,
            disable_created_metrics,
        )

        from popbox.sasl.registry import MECHANISMS  # noqa: PLC0415

        # No `*_created` series: multiprocess mode has none, so both modes look alike, and
        # process_start_time_seconds already tells when the counters started.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        reg = REGISTRY if registry is None else registry
        self.connections_active = Gauge(
            "popbox_connections_active",
            "POP3 connections being served now.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.connections_waiting = Gauge(
            "popbox_connections_waiting",
            "POP3 connections accepted and waiting for their session to start.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.connections = Counter(
            "popbox_connections_total",
            "POP3 connections accepted, including the refused ones.",
            registry=reg,
        )
        self.connections_refused = Counter(
            "popbox_connections_refused_total",
            "POP3 connections refused before the greeting, by reason.",
            ["reason"],
            registry=reg,
        )
        self.logins = Counter(
            "popbox_logins_total",
            "Login attempts by result and mechanism (USER, APOP or the SASL name).",
            ["result", "mechanism"],
            registry=reg,
        )
        self.commands = Counter(
            "popbox_commands_total",
            "POP3 command lines received, by keyword (unknown keywords as 'unknown').",
            ["command"],
            registry=reg,
        )
        self.sent_bytes = Counter(
            "popbox_sent_bytes_total", "Octets written to POP3 clients.", registry=reg
        )
        self.received_bytes = Counter(
            "popbox_received_bytes_total", "Octets received from POP3 clients.", registry=reg
        )
        self.messages_retrieved = Counter(
            "popbox_messages_retrieved_total", "Messages sent whole by RETR.", registry=reg
        )
        self.messages_deleted = Counter(
            "popbox_messages_deleted_total",
            "Messages removed at UPDATE (DELE and EXPIRE).",
            registry=reg,
        )
        self.retr_duration = Histogram(
            "popbox_retr_duration_seconds",
            "Seconds from a RETR command to the end of its reply written.",
            buckets=RETR_BUCKETS,
            registry=reg,
        )
        self.lock_conflicts = Counter(
            "popbox_lock_conflicts_total",
            "Logins refused because the maildrop was locked ([IN-USE]).",
            registry=reg,
        )
        self.bad_command_delays = Counter(
            "popbox_bad_command_delays_total",
            "-ERR replies held back by [limits] bad_command_delay.",
            registry=reg,
        )
        self.store_errors = Counter(
            "popbox_store_errors_total",
            "Mail store failures, by operation.",
            ["operation"],
            registry=reg,
        )
        # Children resolved once: the per-command path is a dict lookup and an increment.
        self._commands = {
            keyword: self.commands.labels(command=keyword)
            for keyword in (*sorted(KNOWN_COMMANDS), UNKNOWN_COMMAND)
        }
        self._mechanisms = frozenset({"USER", "APOP", *MECHANISMS})

    def command(self, keyword: str) -> None:
        """One command line received (the core passes a known keyword or 'unknown')."""
        child = self._commands.get(keyword)
        if child is None:
            child = self._commands[UNKNOWN_COMMAND]
        child.inc()

    def login(self, result: str, mechanism: str) -> None:
        if result not in LOGIN_RESULTS:
            raise ValueError(f"unknown login result {result!r}")
        if mechanism not in self._mechanisms:
            mechanism = OTHER_MECHANISM
        self.logins.labels(result=result, mechanism=mechanism).inc()
        if result == "in_use":
            self.lock_conflicts.inc()

    def refused(self, reason: str) -> None:
        if reason not in REFUSED_REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        self.connections_refused.labels(reason=reason).inc()

    def closed_unstarted(self, reason: str) -> None:
        """An accepted connection closed before its session started (server/accepting.py)."""
        self.connections.inc()
        self.refused(reason)

    def store_error(self, operation: str) -> None:
        if operation not in STORE_OPERATIONS:
            raise ValueError(f"unknown store operation {operation!r}")
        self.store_errors.labels(operation=operation).inc()


_current: ServerMetrics | None = None
_current_lock = threading.Lock()


def current() -> ServerMetrics:
    """This process's metrics, made on first use (in the multiprocess directory, if one
    was prepared before)."""
    global _current  # noqa: PLW0603 - one set of metrics per process, like REGISTRY
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = ServerMetrics()
    return _current


@dataclass
class MetricsExporter:
    """The HTTP endpoint (prometheus_client's WSGI server on a daemon thread)."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def _serve(config: Config, registry: CollectorRegistry) -> MetricsExporter | None:
    from prometheus_client import start_http_server  # noqa: PLC0415

    if config.metrics is None:
        return None
    httpd, thread = start_http_server(
        config.metrics.port, addr=config.metrics.address, registry=registry
    )
    return MetricsExporter(httpd, thread)


def start_metrics_server(config: Config) -> MetricsExporter | None:
    """Single-process mode: serve this process's metrics at [metrics] address:port.
    None when the config has no [metrics] table."""
    from prometheus_client import REGISTRY  # noqa: PLC0415

    current()  # every metric exists (at zero) from the first scrape on
    return _serve(config, REGISTRY)


def preload() -> None:
    """Import prometheus-client whole now: `popbox serve` calls this before it gives root
    up, since the user it becomes may not be able to read the library's files."""
    import prometheus_client.exposition  # noqa: PLC0415
    import prometheus_client.multiprocess  # noqa: PLC0415, F401

    current()


def multiprocess_dir() -> Path | None:
    """The directory prepared by prepare_multiprocess() (in this process or a parent)."""
    value = os.environ.get(MULTIPROC_ENV)
    return Path(value) if value else None


def served_by_master() -> bool:
    """True in a master that called prepare_multiprocess() and in its workers: the master
    serves the metrics, the workers do not."""
    return os.environ.get(MASTER_ENV) == "1"


def prepare_multiprocess(directory: Path | None = None) -> Path:
    """Multiprocess mode, in the master before forking and before prometheus_client is
    imported: an empty directory for every process's metric files (a fresh temporary one
    unless given), announced to this process and its children by PROMETHEUS_MULTIPROC_DIR.

    Raises RuntimeError when prometheus_client was already imported without it: its
    metrics would then stay in-process and the workers' values would be lost."""
    values = sys.modules.get("prometheus_client.values")
    if values is not None and os.environ.get(MULTIPROC_ENV) is None:
        raise RuntimeError("prepare_multiprocess() must run before prometheus_client is imported")
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="popbox-metrics-"))
    else:
        # prometheus_client: the directory "must be wiped between process runs".
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)
    os.environ[MASTER_ENV] = "1"
    return directory


def multiprocess_registry() -> CollectorRegistry:
    """A registry that reads the sum of every process's files (the master's view)."""
    from prometheus_client import CollectorRegistry  # noqa: PLC0415
    from prometheus_client.multiprocess import MultiProcessCollector  # noqa: PLC0415

    directory = multiprocess_dir()
    if directory is None:
        raise RuntimeError("prepare_multiprocess() was not called")
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(directory))  # type: ignore[no-untyped-call]
    return registry


def start_multiprocess_server(config: Config) -> MetricsExporter | None:
    """Multiprocess mode, in the master: serve the sum over all workers at [metrics]
    address:port. None when the config has no [metrics] table."""
    return _serve(config, multiprocess_registry())


def worker_exited(pid: int) -> None:
    """Multiprocess mode, in the master once worker `pid` is gone: drop its live gauge."""
    from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415

    directory = multiprocess_dir()
    if directory is not None:
        mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def cleanup_multiprocess() -> None:
    """Multiprocess mode, in the master at exit: remove the directory."""
    directory = multiprocess_dir()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        del os.environ[MULTIPROC_ENV]
    os.environ.pop(MASTER_ENV, None)
