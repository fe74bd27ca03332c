"""server/reload.py: what a SIGHUP applies from the re-read file and what it keeps."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from popbox.config import load_config
from popbox.server.reload import changed_keys, reload_config

BASE = """\
workers = 2
[[listen]]
port = 1110
{listen_tls}
[auth]
passwd_file = "users"
[mail]
location = "maildir:mail/%u"
[limits]
max_connections = 100
{tls}
"""
TLS = '[tls]\ncertificate = "cert.pem"\nprivate_key = "key.pem"\n'


def write(directory: Path, **parts: str) -> Path:
    path = directory / "popbox.toml"
    path.write_text(BASE.format(**({"listen_tls": "", "tls": ""} | parts)))
    return path


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    for name in ("users", "cert.pem", "key.pem", "other.pem"):
        (tmp_path / name).write_text("")
    return tmp_path


def test_live_keys_are_applied_and_restart_keys_kept(
    confdir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    running = load_config(write(confdir, tls=TLS))
    path = write(confdir, tls=TLS.replace("cert.pem", "other.pem"))
    path.write_text(
        path.read_text()
        .replace("workers = 2", "workers = 3\nidle_timeout = 900")
        .replace("max_connections = 100", "max_connections = 5")
        .replace("port = 1110", "port = 1111")
    )
    caplog.set_level(logging.INFO, "popbox.server")
    config = reload_config(running)
    assert (config.workers, config.listen) == (2, running.listen)
    assert (config.idle_timeout, config.limits.max_connections) == (900.0, 5)
    assert config.tls.certificate == confdir / "other.pem"
    assert [record.getMessage() for record in caplog.records] == [
        "reload: applied idle_timeout, tls.certificate, limits.max_connections",
        "reload: changed but not applied until a restart: workers, listen",
    ]


def test_switching_tls_on_needs_a_restart(confdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    running = load_config(write(confdir))
    write(confdir, tls=TLS, listen_tls='tls = "starttls"')
    caplog.set_level(logging.INFO, "popbox.server")
    config = reload_config(running)
    assert config == running
    assert caplog.records[-1].getMessage() == (
        "reload: changed but not applied until a restart: listen, tls.certificate, tls.private_key"
    )


def test_changed_keys_names_nested_fields(confdir: Path) -> None:
    old = load_config(write(confdir))
    new = load_config(write(confdir, tls=TLS))
    assert changed_keys(old, old) == []
    assert changed_keys(old, new) == ["tls.certificate", "tls.private_key"]
