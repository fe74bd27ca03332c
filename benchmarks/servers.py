"""Start popbox and Dovecot for benchmarks/compare.py, and measure their processes.

popbox runs from this checkout's src/ (`sys.executable -m popbox serve`) with a config
written here; Dovecot (Debian's dovecot-pop3d) runs `dovecot -F -c <config>` with its own
generated config: base_dir, state and log in the benchmark's temporary directory, loopback
listeners only, nothing of the system's /etc/dovecot used.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
STARTUP_DEADLINE = 60.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class TlsFiles:
    """The test certificate both servers present, and the CA the clients trust."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class Server:
    """A running server: its root process, its plaintext and implicit-TLS ports."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    tls_port: int
    log: Path
    details: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    # -- process accounting (the whole tree: Dovecot forks a process per session) -----

    def pids(self) -> list[int]:
        return process_tree(self.process.pid)

    def cpu_seconds(self) -> float:
        """User + system CPU of every live process in the tree plus what their reaped
        children used (cutime/cstime): a difference of two readings is the CPU the server
        spent in between, including per-session processes that came and went."""
        total = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        return total / CLK_TCK

    def pss_mib(self) -> float:
        """Proportional set size summed over every process of the server (shared pages
        counted once overall), from /proc/<pid>/smaps_rollup."""
        total_kib = 0
        for pid in self.pids():
            try:
                text = Path(f"/proc/{pid}/smaps_rollup").read_text()
            except OSError:
                continue
            if found := re.search(r"^Pss:\s+(\d+) kB", text, re.MULTILINE):
                total_kib += int(found.group(1))
        return total_kib / 1024


def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def wait_for_port(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    """Poll connect() until the server answers with a greeting, with a deadline."""
    deadline = time.monotonic() + STARTUP_DEADLINE
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as probe:
                if probe.recv(512).startswith(b"+OK"):
                    return
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            text = log.read_text(errors="replace")[-4000:] if log.exists() else "(no log)"
            raise RuntimeError(f"server did not start listening on {port}:\n{text}")
        time.sleep(0.05)  # between connect attempts only


# -- popbox ------------------------------------------------------------------------------


def popbox_env(src: Path) -> dict[str, str]:
    """Run the popbox of `src` (this checkout's by default), not an installed one."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(src), env.get("PYTHONPATH")]))
    return env


def popbox_config(
    root: Path, mail: Path, tls: TlsFiles, workers: int | None, location: str | None = None
) -> str:
    """`location`: popbox's [mail] location, instead of each user's Maildir under `mail`."""
    ports = free_port(), free_port()
    top = f"workers = {workers}\n" if workers else ""
    return f"""\
hostname = "bench.popbox.invalid"
{top}[[listen]]
address = "127.0.0.1"
port = {ports[0]}
tls = "none"
[[listen]]
address = "127.0.0.1"
port = {ports[1]}
tls = "implicit"
[tls]
certificate = "{tls.cert}"
private_key = "{tls.key}"
[auth]
passwd_file = "{root / "users"}"
[mail]
location = "{location or f"maildir:{mail}/%u/Maildir"}"
[limits]
max_connections = 30000
max_connections_per_ip = 30000
"""


def supports_workers(root: Path, src: Path) -> bool:
    """Whether this popbox knows the `workers` key: `popbox check-config` refuses
    unknown keys with exit status 2."""
    probe = root / "probe-workers.toml"
    users = root / "probe-users"
    users.write_text("x:{PLAIN}x\n")
    probe.write_text(
        f'workers = 2\n[auth]\npasswd_file = "{users}"\n[mail]\nlocation = "maildir:{root}/%u"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "popbox", "check-config", str(probe)],
        env=popbox_env(src),
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode == 0


def start_popbox(
    root: Path,
    mail: Path,
    tls: TlsFiles,
    *,
    workers: int | None,
    src: Path,
    location: str | None = None,
) -> Server:
    config = root / "popbox.toml"
    text = popbox_config(root, mail, tls, workers, location)
    config.write_text(text)
    ports = [int(port) for port in re.findall(r"^port = (\d+)$", text, re.MULTILINE)]
    log = root / "popbox.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=popbox_env(src),
        )
    server = Server("popbox", process, ports[0], ports[1], log)
    wait_for_port(process, server.port, log)
    server.details["workers"] = str(workers or 1)
    return server


# -- Dovecot -----------------------------------------------------------------------------


@dataclass(frozen=True)
class MailUser:
    """Who Dovecot's mail processes run as: never root (Dovecot refuses)."""

    name: str
    uid: int
    gid: int
    internal: str


def dovecot_mail_user() -> MailUser:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return MailUser(me.pw_name, me.pw_uid, me.pw_gid, me.pw_name)
    nobody = pwd.getpwnam("nobody")
    return MailUser(nobody.pw_name, nobody.pw_uid, nobody.pw_gid, "root")


def dovecot_config(
    root: Path,
    mail: Path,
    tls: TlsFiles,
    user: MailUser,
    sessions: int,
    *,
    mail_location: str | None = None,
) -> tuple[str, int, int]:
    """Dovecot 2.3 for POP3 only, in its documented high-performance login mode
    (doc/wiki/LoginProcess.txt: service_count = 0, process_min_avail = CPU cores), with
    room for `sessions` concurrent sessions (one pop3 process each). `mail_location`:
    Dovecot's, instead of each user's Maildir under `mail`."""
    port, tls_port = free_port(), free_port()
    cores = os.cpu_count() or 1
    limit = sessions + 1000
    config = f"""\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{tls.cert}
ssl_key = <{tls.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {user.internal}
default_login_user = {user.name}
first_valid_uid = {min(user.uid, 500)}
first_valid_gid = {min(user.gid, 1)}
default_client_limit = {limit}
default_vsz_limit = 1G
mail_location = {mail_location or f"maildir:{mail}/%u/Maildir"}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = static
  args = uid={user.uid} gid={user.gid} home={mail}/%u
}}
service pop3-login {{
  chroot =
  service_count = 0
  process_min_avail = {cores}
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {tls_port}
    ssl = yes
  }}
}}
service pop3 {{
  process_limit = {limit}
}}
"""
    return config, port, tls_port


def dovecot_version() -> str:
    result = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=False)
    return result.stdout.strip()


def start_dovecot(
    root: Path, mail: Path, tls: TlsFiles, sessions: int, mail_location: str | None = None
) -> Server:
    user = dovecot_mail_user()
    for sub in ("run", "state"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    text, port, tls_port = dovecot_config(
        root, mail, tls, user, sessions, mail_location=mail_location
    )
    config = root / "dovecot.conf"
    config.write_text(text)
    log = root / "dovecot.log"
    out = root / "dovecot.stderr"
    with out.open("wb") as stderr:
        process = subprocess.Popen(
            [DOVECOT, "-F", "-c", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=subprocess.STDOUT,
        )
    server = Server("Dovecot", process, port, tls_port, log)
    wait_for_port(process, port, out if not log.exists() else log)
    server.details["version"] = dovecot_version()
    return server


def ensure_dovecot() -> None:
    """Install Debian's dovecot-core and dovecot-pop3d when missing (apt-get)."""
    missing = [
        package
        for package in ("dovecot-core", "dovecot-pop3d")
        if "install ok installed"
        not in subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
    ]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    print(f"installing {' '.join(missing)} (apt-get)", file=sys.stderr)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing],
        check=True,
        env=env,
    )
