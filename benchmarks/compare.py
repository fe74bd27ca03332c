"""popbox against Debian's dovecot-pop3d, side by side on this machine, in one run.

    python benchmarks/compare.py            # the full run (15-20 minutes)
    python benchmarks/compare.py --quick    # small counts: a smoke check (1-3 minutes)
    python benchmarks/compare.py --workloads churn,bulk --json results.json

Installs dovecot-core and dovecot-pop3d when missing (apt-get), seeds identical users
({PLAIN} passwords) and Maildirs in a temporary directory, starts `popbox serve` (this
checkout's src/) and `dovecot -F` with generated configs on loopback ports, runs the same
workloads against each with benchmarks/loadgen.py, and prints one table: each figure for
both servers and the ratio popbox/Dovecot, then the CPU each used and the load generator's
own share. Workloads (issue 6): churn, bulk, tls, hold, bigdrop, sweep (see --help).

A benchmark, not a test: it asserts nothing and is not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "src"))

import report  # noqa: E402
import seed  # noqa: E402
import servers  # noqa: E402
from workloads import Bench  # noqa: E402

WORKLOADS = ("churn", "bulk", "tls", "hold", "bigdrop", "sweep")


@dataclass(frozen=True)
class Settings:
    """How big each workload is (the full run; --quick shrinks it)."""

    bulk_users: int = 500
    messages: int = 20
    clients: int = 50
    churn_seconds: float = 20.0
    sessions: int = 10_000
    hold_seconds: float = 40.0
    noop_interval: float = 10.0
    big_messages: int = 100_000
    sweep: tuple[int, ...] = (1, 10, 50, 100, 200)
    sweep_seconds: float = 8.0
    generators: int = 2
    workloads: tuple[str, ...] = WORKLOADS
    workers: int | None = None


QUICK: dict[str, Any] = {
    "bulk_users": 50,
    "churn_seconds": 3.0,
    "sessions": 300,
    "hold_seconds": 6.0,
    "noop_interval": 2.0,
    "big_messages": 2_000,
    "sweep": (1, 10, 50),
    "sweep_seconds": 2.0,
}


def parse(argv: list[str] | None) -> tuple[Settings, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="small counts: a smoke check (1-3 minutes)"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help="comma-separated, from:\n"
        "  churn   connect, greeting, USER, PASS, STAT, QUIT; 50 clients over 500 users\n"
        "  bulk    500 users x 20 messages x 20 KB: LIST, UIDL, RETR of every message\n"
        "  tls     churn over implicit TLS (the port 995 convention)\n"
        "  hold    10,000 logged-in sessions, NOOP now and then: all served? memory (PSS)\n"
        "  bigdrop one 100,000-message maildrop: login, STAT, UIDL, LIST; first and warm\n"
        "  sweep   churn at 1, 10, 50, 100, 200 clients (plotted to --plot)",
    )
    parser.add_argument("--generators", type=int, help="load generator processes (default 2)")
    parser.add_argument("--sessions", type=int, help="hold: concurrent sessions")
    parser.add_argument("--churn-seconds", type=float, help="churn and tls: seconds each")
    parser.add_argument("--workers", type=int, help="popbox workers (default: CPUs, if known)")
    parser.add_argument(
        "--popbox-src", type=Path, default=HERE.parent / "src", help="the popbox to run"
    )
    parser.add_argument("--json", type=Path, help="write every figure here too")
    parser.add_argument(
        "--plot", type=Path, default=HERE.parent / "docs" / "churn-sweep.png", help="sweep PNG"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    settings = replace(Settings(), **QUICK) if args.quick else Settings()
    chosen = tuple(name.strip() for name in args.workloads.split(",") if name.strip())
    unknown = sorted(set(chosen) - set(WORKLOADS))
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(unknown)}")
    overrides: dict[str, Any] = {"workloads": chosen}
    for key in ("generators", "sessions", "churn_seconds", "workers"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    return replace(settings, **overrides), args


def ensure_bench_extra() -> None:
    """pip-install the `bench` extra of pyproject.toml (matplotlib, trustme) if missing."""
    import importlib.util  # noqa: PLC0415
    import tomllib  # noqa: PLC0415

    if all(importlib.util.find_spec(name) for name in ("matplotlib", "trustme")):
        return
    project = tomllib.loads((HERE.parent / "pyproject.toml").read_text())
    wanted = project["project"]["optional-dependencies"]["bench"]
    print(f"installing {' '.join(wanted)} (pip)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=True)


def raise_fd_limit() -> int:
    """As many descriptors as allowed (the hard limit; raising that needs
    CAP_SYS_RESOURCE): 10,000 sessions hold a socket each, and popbox a lock file each."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 1 << 20 if hard == resource.RLIM_INFINITY else hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def machine() -> dict[str, str]:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cpu": cpu,
        "nproc": subprocess.run(
            ["nproc"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "memory": f"{int(memory) / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "dovecot": servers.dovecot_version(),
        "load average": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }


def prepare(root: Path, settings: Settings) -> servers.TlsFiles:
    """A certificate, and per server the users file and a mail tree (<root>/<name>/)."""
    import trustme  # noqa: PLC0415

    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    tls = servers.TlsFiles(root / "cert.pem", root / "key.pem", root / "ca.pem")
    ca.cert_pem.write_to_path(str(tls.ca))
    issued.private_key_pem.write_to_path(str(tls.key))
    issued.cert_chain_pems[0].write_to_path(str(tls.cert))
    population = seed.Population(settings.bulk_users, settings.messages, settings.sessions)
    names = [*population.bulk_users(), *population.idle_users(), seed.BIG_USER]
    started = time.perf_counter()
    for name in ("popbox", "dovecot"):
        (root / name).mkdir()
        seed.write_users(root / name / "users", names)
        seed.seed_mail(root / name / "mail", population)
        if "bigdrop" in settings.workloads:
            seed_big(root / name / "mail" / seed.BIG_USER / "Maildir", settings.big_messages)
    user = servers.dovecot_mail_user()
    seed.chown_tree(root / "dovecot", user.uid, user.gid)
    os.sync()  # measure mail at rest, not the kernel writing back the seeding
    print(f"seeded both mail trees in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return tls


def seed_big(maildir: Path, count: int) -> None:
    """The large maildrop, made by benchmarks/maildir_100k.py's generator (",S=/,W="
    names, as Postfix and Dovecot deliver)."""
    from maildir_100k import fill  # noqa: PLC0415

    fill(maildir, count, size_fields=True)


def popbox_workers(root: Path, settings: Settings, src: Path) -> int | None:
    """The `workers` value to configure: --workers, else one per CPU; None when this
    popbox does not know the key (it runs one process then)."""
    if not servers.supports_workers(root, src):
        if settings.workers is not None:
            print("this popbox has no `workers` key: running one process", file=sys.stderr)
        return None
    return settings.workers or os.cpu_count() or 1


def main(argv: list[str] | None = None) -> int:
    settings, args = parse(argv)
    servers.ensure_dovecot()
    ensure_bench_extra()
    fd_limit = raise_fd_limit()
    root = Path(tempfile.mkdtemp(prefix="popbox-vs-dovecot-"))
    os.chmod(root, 0o755)  # Dovecot's mail processes (nobody) must reach their tree
    running: list[servers.Server] = []
    try:
        tls = prepare(root, settings)
        workers = popbox_workers(root, settings, args.popbox_src)
        popbox = servers.start_popbox(
            root / "popbox", root / "popbox" / "mail", tls, workers=workers, src=args.popbox_src
        )
        running.append(popbox)
        dovecot = servers.start_dovecot(
            root / "dovecot", root / "dovecot" / "mail", tls, settings.sessions
        )
        running.append(dovecot)
        bench = Bench(settings, tls.ca, popbox, dovecot)
        bench.run()
        info = machine() | {
            "popbox workers": popbox.details["workers"],
            "fd limit": str(fd_limit),
            "generators": str(settings.generators),
        }
        print()
        print("\n".join(f"{key}: {value}" for key, value in info.items()))
        print()
        print(report.table(bench.rows))
        print()
        print(report.table(bench.cpu_rows))
        if bench.sweep_rates:
            report.plot(
                bench.sweep_rates, args.plot, "session churn: popbox vs Dovecot, same machine"
            )
            print(f"\nplot: {args.plot}")
        if args.json:
            payload = {
                "machine": info,
                "settings": asdict(settings),
                "rows": [asdict(row) for row in bench.rows],
                "cpu": [asdict(row) for row in bench.cpu_rows],
                "sweep": bench.sweep_rates,
                "raw": bench.raw,
            }
            args.json.write_text(json.dumps(payload, indent=1))
    finally:
        for server in running:
            server.stop()
        if args.keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
