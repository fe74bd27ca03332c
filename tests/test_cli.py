"""The command line: exit statuses, messages naming keys, users file editing, demo start."""

from __future__ import annotations

import io
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from popbox.auth import schemes
from popbox.cli import main

GOOD = """
hostname = "mail.example.org"
idle_timeout = 600
[[listen]]
address = "127.0.0.1"
port = 0
[auth]
passwd_file = "users"
[mail]
location = "maildir:mail/%u/Maildir"
"""


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "users").write_text("alice:{PLAIN}secret\n")
    config = tmp_path / "popbox.toml"
    config.write_text(text)
    return config


def test_check_config_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path, GOOD)
    assert main(["check-config", str(config)]) == 0
    assert capsys.readouterr().out == f"{config}: OK\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD + "bogus = 1\n", "bogus: unknown key"),
        (GOOD.replace("idle_timeout = 600", 'idle_timeout = "x"'), "idle_timeout:"),
        (GOOD.replace('"users"', '"missing"'), "auth.passwd_file:"),
        (GOOD.replace("port = 0", "port = 99999"), "listen[0].port:"),
    ],
)
def test_bad_config_is_refused_with_the_key_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    config = write(tmp_path, text)
    assert main(["check-config", str(config)]) == 2
    assert message in capsys.readouterr().err
    assert main(["serve", "--config", str(config)]) == 2


def test_serve_refuses_a_port_in_use_before_starting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = write(tmp_path, GOOD.replace("port = 0", f"port = {port}"))
        result = subprocess.run(
            [sys.executable, "-m", "popbox", "serve", "--config", str(config)],
            check=False,
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 2
    assert f"listen[0].port: 127.0.0.1:{port} is already in use" in result.stderr
    assert "listening on" not in result.stderr


def test_user_add_list_passwd_del(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write(tmp_path, GOOD)
    users = tmp_path / "users"
    users.chmod(0o640)
    monkeypatch.setattr(sys, "stdin", io.StringIO("p4ss word\n"))
    assert main(["user", "--config", str(config), "add", "bob", "--password-stdin"]) == 0
    line = users.read_text().splitlines()[1]
    assert line.startswith("bob:{ARGON2ID}$argon2id$")
    assert schemes.verify("p4ss word", line.split(":", 1)[1])
    assert users.stat().st_mode & 0o777 == 0o640  # the rename kept the file's mode
    assert main(["user", "--passwd-file", str(users), "list"]) == 0
    assert capsys.readouterr().out.endswith("alice\nbob\n")
    monkeypatch.setattr(sys, "stdin", io.StringIO("new\n"))
    args = ["user", "--passwd-file", str(users), "passwd", "bob", "--scheme", "SHA512-CRYPT"]
    assert main([*args, "--password-stdin"]) == 0
    assert users.read_text().splitlines()[1].startswith("bob:{SHA512-CRYPT}$6$")
    assert main(["user", "--passwd-file", str(users), "del", "bob"]) == 0
    assert users.read_text() == "alice:{PLAIN}secret\n"
    capsys.readouterr()
    assert main(["user", "--passwd-file", str(users), "del", "bob"]) == 1
    assert "bob" in capsys.readouterr().err
    assert main(["user", "--passwd-file", str(users), "add", "../x", "--password-stdin"]) == 1


def test_user_add_refuses_a_name_its_mbox_store_would_refuse(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With mbox:mail/%u, user alice.lock's mbox would be alice's dotlock (storage/mbox.py):
    the user is not added."""
    config = write(tmp_path, GOOD.replace("maildir:mail/%u/Maildir", "mbox:mail/%u"))
    users = tmp_path / "users"
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["user", "--config", str(config), "add", "alice.lock", "--password-stdin"]) == 1
    err = capsys.readouterr().err
    assert err == (
        "popbox: user name 'alice.lock' gives a maildrop named like another's '.lock' file\n"
    )
    assert users.read_text() == "alice:{PLAIN}secret\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO("pw\n"))
    assert main(["user", "--config", str(config), "add", "alice.locked", "--password-stdin"]) == 0
    assert users.read_text().splitlines()[1].startswith("alice.locked:{ARGON2ID}")


def test_pw_prints_a_dovecot_style_hash(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pw", "-s", "SSHA512", "-p", "hunter2"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("{SSHA512}")
    assert schemes.verify("hunter2", out)
    assert not schemes.verify("hunter3", out)
    assert main(["pw", "-s", "NOPE", "-p", "x"]) == 1


def test_demo_quick_start_serves_sample_mail(tmp_path: Path) -> None:
    """`popbox serve` without a config: makes ./popbox-data and prints how to connect."""
    process = subprocess.Popen(
        [sys.executable, "-m", "popbox", "serve", "--port", "0"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first == "popbox: created popbox-data/ with a demo user and sample mail\n"
        serving = re.fullmatch(
            r"popbox: serving POP3 on 127\.0\.0\.1:(\d+) from popbox-data/\n",
            process.stdout.readline(),
        )
        assert serving
        port = int(serving.group(1))
        assert process.stdout.readline() == "Connect with:\n"
        curl_line = process.stdout.readline().strip()
        assert curl_line == f"curl pop3://demo:demo@127.0.0.1:{port}/1"
        poplib_line = process.stdout.readline().strip()
        assert poplib_line.startswith("python3 -c ")
        # Both printed commands really work.
        fetched = subprocess.run(curl_line.split(), capture_output=True, timeout=30, check=True)
        sample = tmp_path / "popbox-data" / "mail" / "demo" / "Maildir" / "new"
        first_file = sorted(sample.iterdir())[0].read_bytes()
        assert fetched.stdout == first_file
        shown = subprocess.run(
            ["bash", "-c", poplib_line], capture_output=True, timeout=30, check=True, text=True
        )
        assert shown.stdout.startswith("(3, ")
        assert "Subject: Welcome to popbox" in shown.stdout
    finally:
        process.terminate()
        assert process.wait(15) == 0
        if process.stdout is not None:
            process.stdout.close()
