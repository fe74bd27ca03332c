"""Worker processes (`workers = N`, N > 1): a master forks N workers that each run their
own event loop (server/app.py serve) on the listening sockets the master bound, and
supervises them.

The master serves no connection and runs no event loop: it waits on a selector for
signals (through signal.set_wakeup_fd) and for its workers' messages, one datagram each
on a SOCK_SEQPACKET socketpair per worker ("ready", "reloaded"; "reload" + a pickled
Config the other way). Its duties:

- a worker that dies is restarted: at once, unless it lived less than STABLE_AFTER
  seconds, then after a delay that doubles up to MAX_BACKOFF, so a crash loop does not
  spin; every exit is logged with the pid and the status;
- SIGTERM/SIGINT: STOPPING=1, close its own copies of the listening sockets and pass
  SIGTERM on; each worker drains (server/app.py drain); the master exits 0 when all have;
- SIGHUP: read the config file once (server/reload.py), send the result to every worker,
  READY=1 when all have applied it;
- READY=1 to systemd once every worker listens.

A worker that loses its master (the pipe reads EOF) drains and exits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import selectors
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from popbox.config import Config
from popbox.logsetup import stop_background_logging
from popbox.metrics import served_by_master, start_multiprocess_server, worker_exited
from popbox.server import collector, sdnotify
from popbox.server.app import (
    CLOSE_GRACE,
    HANDLED_SIGNALS,
    MAX_CONTROL_MESSAGE,
    MSG_READY,
    MSG_RELOAD,
    MSG_RELOADED,
    run,
    serve,
)
from popbox.server.listeners import Listeners
from popbox.server.reload import reload_config

log = logging.getLogger("popbox.workers")
server_log = logging.getLogger("popbox.server")

# A worker that ran this long was not crash-looping: its next restart is immediate again.
STABLE_AFTER = 10.0
# Restart delays after consecutive short lives: none, then 0.5 s doubling up to 30 s.
FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0
# Past shutdown_timeout (and the sessions' CLOSE_GRACE), a worker still running is
# stuck: SIGKILL after this many more seconds.
KILL_GRACE = 5.0
# A reload's READY=1 waits this long at most for the workers' acknowledgements.
RELOAD_ACK_TIMEOUT = 10.0

EXIT_OK, EXIT_FAILED = 0, 1


@dataclass(slots=True)
class Worker:
    slot: int  # 0..workers-1: which worker this is, kept across restarts
    pid: int
    control: socket.socket
    started: float
    ready: bool = False


def describe_status(status: int) -> str:
    """A waitpid() status as words: "exit status 0", "killed by signal 9 (SIGKILL)"."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        return f"exit status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "?"
    return f"killed by signal {-code} ({name})"


def _ignore(signum: int, frame: FrameType | None) -> None:
    """The master's signal handler: set_wakeup_fd does the work."""


class Supervisor:
    def __init__(
        self, config: Config, listeners: Listeners, on_ready: Callable[[], None] | None = None
    ) -> None:
        self.config = config
        self.listeners = listeners
        self.on_ready = on_ready
        self.workers: dict[int, Worker] = {}
        self.short_lives: dict[int, int] = {}  # consecutive quick deaths, by slot
        self.restart_at: dict[int, float] = {}
        self.ready = False
        self.stopping = False
        self.exit_code = EXIT_OK
        self.kill_at = math.inf
        self.reload_waiting: set[int] = set()
        self.reload_deadline = math.inf
        self.selector = selectors.DefaultSelector()
        self.wakeup_read, self.wakeup_write = socket.socketpair()

    # -- the master's loop ---------------------------------------------------------------

    def run(self) -> int:
        self._install_signals()
        for slot in range(self.config.workers):
            self._spawn(slot)
        # After the first fork: the exporter is a thread, and fork() copies no thread.
        exporter = start_multiprocess_server(self.config) if served_by_master() else None
        if exporter is not None:
            server_log.info("metrics listening on %s:%d", *exporter.address)
        while self.workers or (self.restart_at and not self.stopping):
            self._step()
        if exporter is not None:
            exporter.close()
        signal.set_wakeup_fd(-1)
        self.listeners.close()
        self.listeners.remove_unix_socket()
        server_log.info("stopped")
        return self.exit_code

    def _install_signals(self) -> None:
        for sock in (self.wakeup_read, self.wakeup_write):
            sock.setblocking(False)
        self.selector.register(self.wakeup_read, selectors.EVENT_READ, None)
        for signum in (*HANDLED_SIGNALS, signal.SIGCHLD):
            signal.signal(signum, _ignore)
        signal.set_wakeup_fd(self.wakeup_write.fileno(), warn_on_full_buffer=False)

    def _step(self) -> None:
        deadlines = [*self.restart_at.values(), self.kill_at, self.reload_deadline]
        soonest = min(deadlines)
        timeout = None if soonest == math.inf else max(0.0, soonest - time.monotonic())
        for key, _ in self.selector.select(timeout):
            if key.data is None:
                self._signals()
            else:
                self._message(key.data)
        self._reap()
        now = time.monotonic()
        for slot, when in sorted(self.restart_at.items()):
            if when <= now:
                del self.restart_at[slot]
                self._spawn(slot)
        if now >= self.kill_at:
            self._kill_stuck()
        if now >= self.reload_deadline:
            log.warning("reload: no answer from workers %s", sorted(self.reload_waiting))
            self._reload_done()

    def _signals(self) -> None:
        with contextlib.suppress(BlockingIOError):
            for signum in self.wakeup_read.recv(4096):
                if signum in (signal.SIGTERM, signal.SIGINT):
                    self.stop(EXIT_OK)
                elif signum == signal.SIGHUP:
                    self._reload()
                # SIGCHLD: _reap() runs after every wake-up.

    # -- workers -------------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Blocked across fork(): the child sets its own handlers before it takes any.
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)
        try:
            pid = os.fork()
        except OSError as error:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
            log.error("worker %d: fork failed: %s", slot, error)
            parent_end.close()
            child_end.close()
            self._schedule_restart(slot, started=time.monotonic())
            return
        if pid == 0:
            self._become_worker(slot, parent_end, child_end)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)
        child_end.close()
        parent_end.setblocking(False)
        worker = Worker(slot, pid, parent_end, time.monotonic())
        self.workers[slot] = worker
        self.selector.register(parent_end, selectors.EVENT_READ, worker)
        log.info("worker %d started pid=%d", slot, pid)

    def _become_worker(
        self, slot: int, parent_end: socket.socket, child_end: socket.socket
    ) -> None:
        """In the forked child: drop the master's state, serve, exit (never returns)."""
        code = EXIT_FAILED
        try:
            signal.set_wakeup_fd(-1)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            signal.signal(signal.SIGHUP, signal.SIG_IGN)  # reloads come from the master
            self.selector.close()
            for sock in (self.wakeup_read, self.wakeup_write, parent_end):
                sock.close()
            for other in self.workers.values():
                other.control.close()
            collector.take_over()  # the master keeps CPython's schedule: it serves no one
            run(serve(self.config, self.listeners, control=child_end))
            code = EXIT_OK
        except BaseException:
            log.exception("worker %d pid=%d failed", slot, os.getpid())
        finally:
            stop_background_logging()
            logging.shutdown()
            os._exit(code)

    def _message(self, worker: Worker) -> None:
        try:
            message = worker.control.recv(MAX_CONTROL_MESSAGE)
        except BlockingIOError:
            return
        except OSError:
            message = b""
        if not message:  # the worker is exiting; _reap() takes it from here
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.control)
            return
        if message == MSG_READY:
            worker.ready = True
            log.info("worker %d ready pid=%d", worker.slot, worker.pid)
            everyone = len(self.workers) == self.config.workers
            if not self.ready and everyone and all(w.ready for w in self.workers.values()):
                self._all_ready()
        elif message == MSG_RELOADED and worker.slot in self.reload_waiting:
            self.reload_waiting.discard(worker.slot)
            if not self.reload_waiting:
                self._reload_done()

    def _all_ready(self) -> None:
        self.ready = True
        server_log.info("ready")
        sdnotify.ready()
        if self.on_ready is not None:
            self.on_ready()

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = next((w for w in self.workers.values() if w.pid == pid), None)
            if worker is None:
                continue
            del self.workers[worker.slot]
            worker_exited(pid)  # its live gauge values no longer count
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(worker.control)
            worker.control.close()
            how = describe_status(status)
            if worker.slot in self.reload_waiting:
                self.reload_waiting.discard(worker.slot)
                if not self.reload_waiting:
                    self._reload_done()
            if self.stopping:
                log.info("worker %d exited pid=%d %s", worker.slot, pid, how)
            elif not self.ready:
                log.error("worker %d exited before it was ready pid=%d %s", worker.slot, pid, how)
                self.stop(EXIT_FAILED)
            else:
                log.error("worker %d exited unexpectedly pid=%d %s", worker.slot, pid, how)
                self._schedule_restart(worker.slot, worker.started)

    def _schedule_restart(self, slot: int, started: float) -> None:
        now = time.monotonic()
        if now - started >= STABLE_AFTER:
            self.short_lives[slot] = 0
        count = self.short_lives.get(slot, 0)
        delay = 0.0 if count == 0 else min(MAX_BACKOFF, FIRST_BACKOFF * 2 ** (count - 1))
        self.short_lives[slot] = count + 1
        self.restart_at[slot] = now + delay
        log.warning("worker %d restarts in %g s", slot, delay)

    # -- signals -------------------------------------------------------------------------

    def stop(self, code: int) -> None:
        """Drain: every worker finishes its sessions (up to shutdown_timeout), then exits."""
        if self.stopping:
            return
        self.stopping = True
        self.exit_code = code
        self.restart_at.clear()
        sdnotify.stopping()
        timeout = self.config.shutdown_timeout
        server_log.info(
            "shutting down: %d workers drain for up to %g s", len(self.workers), timeout
        )
        self.listeners.close()  # ours; each worker closes its own copies
        for worker in self.workers.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGTERM)
        self.kill_at = time.monotonic() + timeout + CLOSE_GRACE + KILL_GRACE

    def _kill_stuck(self) -> None:
        self.kill_at = math.inf
        for worker in self.workers.values():
            log.error("worker %d pid=%d did not stop in time: SIGKILL", worker.slot, worker.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signal.SIGKILL)

    def _reload(self) -> None:
        if self.stopping:
            return
        sdnotify.reloading()
        self.config = reload_config(self.config)
        logging.getLogger().setLevel(self.config.log_level.upper())
        message = MSG_RELOAD + pickle.dumps(self.config)
        for worker in self.workers.values():
            try:
                worker.control.send(message)
            except OSError as error:  # exiting: it is restarted with the new config
                log.warning("reload: worker %d pid=%d: %s", worker.slot, worker.pid, error)
                continue
            self.reload_waiting.add(worker.slot)
        if self.reload_waiting:
            self.reload_deadline = time.monotonic() + RELOAD_ACK_TIMEOUT
        else:
            self._reload_done()

    def _reload_done(self) -> None:
        self.reload_waiting.clear()
        self.reload_deadline = math.inf
        server_log.info("reload: done in %d workers", len(self.workers))
        sdnotify.ready()
