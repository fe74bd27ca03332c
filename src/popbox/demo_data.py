"""The embedded default: a local data directory made on first start (README quick start)."""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Any

DEMO_USER = "demo"
DEMO_PASSWORD = "demo"
DEFAULT_DATA_DIR = Path("popbox-data")
DEFAULT_PORT = 1110


def ensure_demo_data(data_dir: Path) -> bool:
    """Create the users file and a Maildir with sample messages unless present.

    Returns True if it created them. Existing data is never touched.
    """
    users = data_dir / "users"
    if users.exists():
        return False
    maildir = data_dir / "mail" / DEMO_USER / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    samples = sorted(
        (p for p in resources.files("popbox.demo").iterdir() if p.name.endswith(".eml")),
        key=lambda p: p.name,
    )
    for number, sample in enumerate(samples, 1):
        # Maildir names: "<seconds>.<unique>.<host>" (cr.yp.to/proto/maildir.html).
        name = f"{1_764_158_400 + number}.M{number}P0.popbox-demo"
        (maildir / "tmp" / name).write_bytes(sample.read_bytes())
        os.replace(maildir / "tmp" / name, maildir / "new" / name)
    # {PLAIN} so that APOP can be tried too; real users get ARGON2ID (`popbox user add`).
    tmp = users.with_suffix(".tmp")
    tmp.write_text(f"{DEMO_USER}:{{PLAIN}}{DEMO_PASSWORD}\n")
    tmp.chmod(0o600)
    os.replace(tmp, users)
    return True


def demo_config(data_dir: Path, port: int = DEFAULT_PORT) -> dict[str, Any]:
    """The embedded default configuration, as the TOML file would say it."""
    return {
        "workers": 1,  # one process: the demo serves one user
        "listen": [{"address": "127.0.0.1", "port": port, "tls": "none"}],
        "auth": {"passwd_file": "users", "plaintext": "loopback"},
        "mail": {"location": f"maildir:{data_dir.resolve()}/mail/%u/Maildir"},
    }


def connect_hint(port: int) -> str:
    user, password = DEMO_USER, DEMO_PASSWORD
    return (
        f"Connect with:\n"
        f"  curl pop3://{user}:{password}@127.0.0.1:{port}/1\n"
        f"  python3 -c \"import poplib; p = poplib.POP3('127.0.0.1', {port}); "
        f"p.user('{user}'); p.pass_('{password}'); print(p.stat()); "
        f"print(b'\\n'.join(p.retr(1)[1]).decode()); p.quit()\"\n"
        f"(user {user!r}, password {password!r}; stop with Ctrl-C)"
    )
