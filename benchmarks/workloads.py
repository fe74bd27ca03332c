"""The workloads of benchmarks/compare.py: the same load against each server in turn.

Each run starts benchmarks/loadgen.py processes (several when --generators says so; their
figures add up), reads the server's CPU (its whole process tree, reaped children
included) over the measured window, and keeps the generators' own CPU, so the table can
say how much of the machine's 2 cores the load itself took.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from report import Row, percentile
from seed import BIG_USER
from servers import Server

LOADGEN = Path(__file__).resolve().parent / "loadgen.py"
START_DELAY = 1.5  # seconds for the generator processes to start before the window opens
WARM_RUNS = 3  # bigdrop: warm sessions, the median reported

Result = dict[str, Any]


class Bench:
    def __init__(self, settings: Any, ca: Path, popbox: Server, dovecot: Server) -> None:
        self.settings = settings
        self.ca = ca
        self.servers = (popbox, dovecot)
        self.rows: list[Row] = []
        self.cpu_rows: list[Row] = []
        self.sweep_rates: dict[str, dict[int, float]] = {}
        self.raw: dict[str, dict[str, Any]] = {}

    def run(self) -> None:
        chosen = self.settings.workloads
        self.warm_up()
        for name in ("churn", "bulk", "tls", "hold", "bigdrop", "sweep"):
            if name in chosen:
                print(f"-- {name}", file=sys.stderr)
                began = time.perf_counter()
                getattr(self, name)()
                print(f"   ({time.perf_counter() - began:.0f} s)", file=sys.stderr)

    # -- running generators ----------------------------------------------------------------

    def spawn(
        self, server: Server, workload: str, options: list[str], generators: int, *, tls: bool
    ) -> list[subprocess.Popen[str]]:
        port = server.tls_port if tls else server.port
        command = [sys.executable, str(LOADGEN), workload, "--port", str(port), *options]
        if tls:
            command += ["--tls-ca", str(self.ca)]
        return [
            subprocess.Popen(
                [*command, "--generator", str(g), "--generators", str(generators)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for g in range(generators)
        ]

    def start_together(
        self, server: Server, workload: str, options: list[str], generators: int, *, tls: bool
    ) -> tuple[list[subprocess.Popen[str]], float, float]:
        """Generators over the bulk users that begin together START_DELAY from now; returns
        once they have: (processes, the start time, the server's CPU seconds then)."""
        start_at = time.time() + START_DELAY
        users = ["--users", f"bulk:{self.settings.bulk_users}"]
        processes = self.spawn(
            server, workload, [*users, *options, "--start-at", repr(start_at)], generators, tls=tls
        )
        time.sleep(max(0.0, start_at - time.time()))
        return processes, start_at, server.cpu_seconds()

    @staticmethod
    def collect(processes: list[subprocess.Popen[str]]) -> list[Result]:
        results = []
        for process in processes:
            out, _ = process.communicate()
            if process.returncode != 0:
                raise RuntimeError(f"load generator failed ({process.returncode}):\n{out}")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results

    def keep(self, key: str, server: Server, figures: Result) -> None:
        self.raw.setdefault(key, {})[server.name] = figures

    def cpu(self, workload: str, figures: dict[str, Result]) -> None:
        """Two rows per workload: the server's CPU and the generators' (% of one core)."""
        popbox, dovecot = (figures[server.name] for server in self.servers)
        self.cpu_rows.append(
            Row(workload, "server CPU %", popbox["server_cpu"], dovecot["server_cpu"], "lower")
        )
        self.cpu_rows.append(
            Row(workload, "load generator CPU %", popbox["gen_cpu"], dovecot["gen_cpu"], "-")
        )

    # -- session churn -------------------------------------------------------------------

    def churn_run(self, server: Server, clients: int, seconds: float, *, tls: bool) -> Result:
        generators = 1 if clients < self.settings.generators * 2 else self.settings.generators
        options = ["--clients", str(clients), "--duration", str(seconds)]
        processes, start_at, before = self.start_together(
            server, "churn", options, generators, tls=tls
        )
        time.sleep(max(0.0, start_at + seconds - time.time()))
        used = server.cpu_seconds() - before
        results = self.collect(processes)
        latencies = [value for result in results for value in result["latencies_ms"]]
        wall = max(result["finished_at"] for result in results) - start_at
        done = sum(result["done"] for result in results)
        return {
            "sessions_per_s": done / seconds,
            "sessions": done,
            "errors": sum(result["errors"] for result in results),
            "error_samples": [s for result in results for s in result["error_samples"]],
            "p50_ms": percentile(latencies, 0.50),
            "p99_ms": percentile(latencies, 0.99),
            "server_cpu": 100 * used / seconds,
            "gen_cpu": 100 * sum(result["cpu_seconds"] for result in results) / wall,
            "generators": generators,
        }

    def churn_both(self, key: str, clients: int, seconds: float, *, tls: bool) -> dict[str, Result]:
        figures = {}
        for server in self.servers:
            figures[server.name] = self.churn_run(server, clients, seconds, tls=tls)
            self.keep(key, server, figures[server.name])
            self.note(key, server, figures[server.name])
        return figures

    @staticmethod
    def note(key: str, server: Server, figures: Result) -> None:
        shown = {k: v for k, v in figures.items() if not isinstance(v, list | dict)}
        text = " ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in shown.items()
        )
        print(f"   {key} {server.name}: {text}", file=sys.stderr)
        if figures.get("error_samples"):
            print(f"   errors: {figures['error_samples'][:3]}", file=sys.stderr)

    def churn(self) -> None:
        clients = self.settings.clients
        figures = self.churn_both("churn", clients, self.settings.churn_seconds, tls=False)
        popbox, dovecot = figures["popbox"], figures["Dovecot"]
        name = f"session churn ({clients} clients)"
        rate = popbox["sessions_per_s"] / dovecot["sessions_per_s"]
        self.rows += [
            Row(name, "sessions/s", popbox["sessions_per_s"], dovecot["sessions_per_s"],
                "higher", ">= 3x", rate >= 3),
            Row(name, "p50 latency ms", popbox["p50_ms"], dovecot["p50_ms"], "lower"),
            Row(name, "p99 latency ms", popbox["p99_ms"], dovecot["p99_ms"], "lower",
                "below Dovecot", popbox["p99_ms"] < dovecot["p99_ms"]),
            Row(name, "failed sessions", popbox["errors"], dovecot["errors"], "lower"),
        ]  # fmt: skip
        self.cpu(name, figures)

    def tls(self) -> None:
        clients = self.settings.clients
        figures = self.churn_both("tls", clients, self.settings.churn_seconds, tls=True)
        popbox, dovecot = figures["popbox"], figures["Dovecot"]
        name = f"implicit-TLS churn ({clients} clients)"
        rate = popbox["sessions_per_s"] / dovecot["sessions_per_s"]
        self.rows += [
            Row(name, "sessions/s", popbox["sessions_per_s"], dovecot["sessions_per_s"],
                "higher", ">= 1.5x", rate >= 1.5),
            Row(name, "p99 latency ms", popbox["p99_ms"], dovecot["p99_ms"], "lower"),
            Row(name, "failed sessions", popbox["errors"], dovecot["errors"], "lower"),
        ]  # fmt: skip
        self.cpu(name, figures)

    def sweep(self) -> None:
        for clients in self.settings.sweep:
            figures = self.churn_both(
                f"sweep {clients}", clients, self.settings.sweep_seconds, tls=False
            )
            for server in self.servers:
                rate = figures[server.name]["sessions_per_s"]
                self.sweep_rates.setdefault(server.name, {})[clients] = rate
            popbox, dovecot = figures["popbox"], figures["Dovecot"]
            figure = f"sessions/s, {clients} client{'s' if clients > 1 else ''}"
            self.rows.append(
                Row("churn against concurrency", figure,
                    popbox["sessions_per_s"], dovecot["sessions_per_s"], "higher")
            )  # fmt: skip

    # -- bulk download -------------------------------------------------------------------

    def warm_up(self) -> None:
        """Every bulk user logs in once (LIST, UIDL) on each server, so both have built
        their per-maildrop index or cache before anything is measured."""
        for server in self.servers:
            self.bulk_run(server, messages=0)

    def bulk_run(self, server: Server, messages: int) -> Result:
        clients = self.settings.clients
        generators = self.settings.generators
        options = ["--clients", str(clients), "--messages", str(messages)]
        processes, start_at, before = self.start_together(
            server, "bulk", options, generators, tls=False
        )
        results = self.collect(processes)
        used = server.cpu_seconds() - before
        wall = max(result["finished_at"] for result in results) - start_at
        received = sum(result["received"] for result in results)
        return {
            "mb_per_s": received / wall / 1e6,
            "received": received,
            "seconds": wall,
            "sessions": sum(result["done"] for result in results),
            "errors": sum(result["errors"] for result in results),
            "error_samples": [s for result in results for s in result["error_samples"]],
            "server_cpu": 100 * used / wall,
            "gen_cpu": 100 * sum(result["cpu_seconds"] for result in results) / wall,
        }

    def bulk(self) -> None:
        figures = {}
        for server in self.servers:
            figures[server.name] = self.bulk_run(server, self.settings.messages)
            self.keep("bulk", server, figures[server.name])
            self.note("bulk", server, figures[server.name])
        popbox, dovecot = figures["popbox"], figures["Dovecot"]
        s = self.settings
        name = f"bulk download ({s.bulk_users} users x {s.messages} x 20 KB)"
        rate = popbox["mb_per_s"] / dovecot["mb_per_s"]
        self.rows += [
            Row(name, "MB/s", popbox["mb_per_s"], dovecot["mb_per_s"], "higher", ">= 1.2x",
                rate >= 1.2),
            Row(name, "failed sessions", popbox["errors"], dovecot["errors"], "lower"),
        ]  # fmt: skip
        self.cpu(name, figures)

    # -- many concurrent sessions ----------------------------------------------------------

    def hold_run(self, server: Server) -> Result:
        s = self.settings
        generators = s.generators
        idle_pss = server.pss_mib()
        options = [
            "--users", f"idle:{s.sessions}",
            "--sessions", str(s.sessions),
            "--noop-interval", str(s.noop_interval),
        ]  # fmt: skip
        processes = self.spawn(server, "hold", options, generators, tls=False)
        logged_in = 0
        for process in processes:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("load generator ended before its sessions were ready")
            logged_in += json.loads(line)["logged_in"]
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
        started = time.time()
        before = server.cpu_seconds()
        time.sleep(s.hold_seconds / 2)
        pss = server.pss_mib()
        process_count = len(server.pids())
        time.sleep(max(0.0, started + s.hold_seconds - time.time()))
        used = server.cpu_seconds() - before
        wall = time.time() - started
        for process in processes:
            assert process.stdin is not None
            process.stdin.write("stop\n")
            process.stdin.flush()
        results = self.collect(processes)
        latencies = [value for result in results for value in result["latencies_ms"]]
        answered = sum(result["answered_sessions"] for result in results)
        noop_errors = sum(result["noop_errors"] for result in results)
        return {
            "requested": s.sessions,
            "logged_in": logged_in,
            "answered": answered,
            "noop_errors": noop_errors,
            "all_served": logged_in == s.sessions == answered and noop_errors == 0,
            "pss_mib": pss,
            "idle_pss_mib": idle_pss,
            "processes": process_count,
            "noops": sum(result["noops"] for result in results),
            "noop_p99_ms": percentile(latencies, 0.99),
            "ramp_seconds": max(result["ramp_seconds"] for result in results),
            "error_samples": [e for result in results for e in result["error_samples"]],
            "server_cpu": 100 * used / wall,
            "gen_cpu": 100 * sum(result["cpu_seconds"] for result in results) / wall,
        }

    def hold(self) -> None:
        figures = {}
        for server in self.servers:
            figures[server.name] = self.hold_run(server)
            self.keep("hold", server, figures[server.name])
            self.note("hold", server, figures[server.name])
        popbox, dovecot = figures["popbox"], figures["Dovecot"]
        count = self.settings.sessions
        name = f"{count:,} concurrent sessions"

        def served(f: Result) -> str:
            return f"{f['answered']:,}/{f['requested']:,}"

        self.rows += [
            Row(name, "sessions logged in and answering NOOP", served(popbox), served(dovecot),
                "higher", "all", bool(popbox["all_served"])),
            Row(name, "memory, PSS of all processes, MiB", popbox["pss_mib"], dovecot["pss_mib"],
                "lower", "< 500 MiB", popbox["pss_mib"] < 500),
            Row(name, "processes", popbox["processes"], dovecot["processes"], "lower"),
            Row(name, "time to log all in, s", popbox["ramp_seconds"], dovecot["ramp_seconds"],
                "lower"),
            Row(name, "NOOP p99 latency ms", popbox["noop_p99_ms"], dovecot["noop_p99_ms"],
                "lower"),
        ]  # fmt: skip
        self.cpu(name, figures)

    # -- one large maildrop ----------------------------------------------------------------

    def bigdrop_run(self, server: Server) -> Result:
        options = ["--users", BIG_USER, "--timeout", "600"]

        def once() -> Result:
            (result,) = self.collect(self.spawn(server, "bigdrop", options, 1, tls=False))
            steps: Result = result["steps"]
            return steps

        first = once()
        warm = [once() for _ in range(WARM_RUNS)]
        return {
            "first_s": first["total"],
            "first_steps": first,
            "warm_s": statistics.median(run["total"] for run in warm),
            "warm_steps": warm,
        }

    def bigdrop(self) -> None:
        figures = {}
        for server in self.servers:
            figures[server.name] = self.bigdrop_run(server)
            self.keep("bigdrop", server, figures[server.name])
            self.note("bigdrop", server, figures[server.name])
        popbox, dovecot = figures["popbox"], figures["Dovecot"]
        name = f"one {self.settings.big_messages:,}-message maildrop"
        figure = "login+STAT+UIDL+LIST, s"
        warm_ok = popbox["warm_s"] < 0.5 and popbox["warm_s"] <= dovecot["warm_s"] / 2
        self.rows += [
            Row(name, f"{figure}, first time", popbox["first_s"], dovecot["first_s"], "lower",
                "< 5 s", popbox["first_s"] < 5),
            Row(name, f"{figure}, warm (median of {WARM_RUNS})", popbox["warm_s"],
                dovecot["warm_s"], "lower", "< 0.5 s and <= 0.5x", warm_ok),
        ]  # fmt: skip
