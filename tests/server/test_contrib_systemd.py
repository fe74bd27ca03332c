"""contrib/systemd/popbox.service: systemd accepts it, and its command lines do what the
unit promises when run against a real config (ExecStartPre, ExecStart, ExecReload, and
SIGTERM to the main process only, as KillMode=mixed sends it)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from conftest import Starter

from daemon_helpers import wait_for_count
from popbox.config.model import Config
from popbox.server.app import CLOSE_GRACE
from popbox.server.workers import KILL_GRACE
from server_helpers import RawClient, launch, write_config

UNIT = Path(__file__).parents[2] / "contrib" / "systemd" / "popbox.service"
INSTALLED = "/usr/local/bin/popbox"
CONFIG = "/etc/popbox/popbox.toml"


def service_section() -> dict[str, str]:
    """[Service] settings (each key once in this unit; comments and blanks skipped)."""
    section, found = "", {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line
        elif section == "[Service]":
            key, _, value = line.partition("=")
            assert key not in found, key
            found[key] = value
    return found


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze (Debian package systemd) is missing"
    popbox = shutil.which("popbox")
    assert popbox is not None, "popbox is not installed (pip install -e .)"
    # verify checks that ExecStart's program exists: point it at this machine's.
    unit = tmp_path / "popbox.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED, popbox))
    result = subprocess.run(
        [tool, "verify", str(unit)], check=False, capture_output=True, text=True
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


def test_the_units_command_lines(popbox: Starter, tmp_path: Path) -> None:
    service = service_section()
    assert service["Type"] == "notify"
    assert service["KillMode"] == "mixed"
    start, check = shlex.split(service["ExecStart"]), shlex.split(service["ExecStartPre"])
    assert start == [INSTALLED, "serve", "--config", CONFIG]
    assert check == [INSTALLED, "check-config", CONFIG]
    # systemd's SIGKILL must not come before popbox's own drain and kill deadline.
    drain = {field.name: field.default for field in dataclasses.fields(Config)}["shutdown_timeout"]
    assert isinstance(drain, float)
    assert int(service["TimeoutStopSec"]) > drain + CLOSE_GRACE + KILL_GRACE
    # The same command lines against a config of ours, with this checkout's popbox.
    root = tmp_path / "etc"
    root.mkdir()
    (root / "users").write_text("alice:{PLAIN}secret\n")
    config = write_config(root, {"workers": 2, "shutdown_timeout": 5})
    popbox_here = [sys.executable, "-m", "popbox"]
    checked = subprocess.run(
        [*popbox_here, *check[1:-1], str(config)], check=False, capture_output=True, text=True
    )
    assert (checked.returncode, checked.stdout) == (0, f"{config}: OK\n")
    assert start[1:-1] == ["serve", "--config"]
    server = launch(root, config)  # `popbox serve --config FILE`; popbox cleans up
    reload_command = shlex.split(service["ExecReload"].replace("$MAINPID", str(server.process.pid)))
    assert reload_command[:2] == ["/bin/kill", "-HUP"]
    subprocess.run(reload_command, check=True)
    server.log.wait_for(r"popbox\.server: reload: done in 2 workers")
    assert RawClient(server).login("alice", "secret").startswith(b"+OK maildrop has 0")
    os.kill(server.process.pid, signal.SIGTERM)  # KillMode=mixed: the main process only
    wait_for_count(server, r"popbox\.workers: worker \d exited pid=\d+ exit status 0", 2)
    assert server.process.wait(15) == 0
