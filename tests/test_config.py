"""popbox.config: TOML -> frozen dataclasses, and error messages that name the key."""

from __future__ import annotations

import dataclasses
import os
import pickle
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from popbox.config import (
    AuthConfig,
    Config,
    ConfigError,
    LimitsConfig,
    ListenConfig,
    MailConfig,
    MetricsConfig,
    TlsConfig,
    check_ports_free,
    load_config,
    parse_config,
)

# The smallest valid file: the two required keys, with paths relative to the file.
MINIMAL = """\
[auth]
passwd_file = "passwd"

[mail]
location = "maildir:mail/%u"
"""

FULL = """\
hostname = "pop.example.org"
idle_timeout = 900
shutdown_timeout = 2.5
log_level = "debug"
workers = 4
user = "nobody"
group = "nogroup"

[[listen]]
address = "0.0.0.0"
port = 110
tls = "starttls"

[[listen]]
address = "::"
port = 995
tls = "implicit"

[tls]
certificate = "tls/cert.pem"
private_key = "/ABS/key.pem"

[auth]
passwd_file = "users/passwd"
plaintext = "never"
failure_delay = 0

[mail]
location = "maildir:/var/mail/%d/%n/Maildir"

[limits]
max_connections = 500
max_connections_per_ip = 5
max_bad_commands = 3
"""


@pytest.fixture
def confdir(tmp_path: Path) -> Path:
    """A config directory holding the files the configs below refer to."""
    (tmp_path / "passwd").write_text("alice:{PLAIN}secret\n")
    (tmp_path / "users").mkdir()
    (tmp_path / "users" / "passwd").write_text("")
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "cert.pem").write_text("")
    (tmp_path / "key.pem").write_text("")
    return tmp_path


def write(confdir: Path, text: str) -> Path:
    path = confdir / "popbox.toml"
    path.write_text(text.replace("/ABS", str(confdir)))
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return str(caught.value)


def test_full_file_with_every_key(confdir: Path) -> None:
    path = write(confdir, FULL)
    config = load_config(path)
    assert config == Config(
        hostname="pop.example.org",
        idle_timeout=900.0,
        shutdown_timeout=2.5,
        log_level="debug",
        workers=4,
        user="nobody",
        group="nogroup",
        listen=(
            ListenConfig(address="0.0.0.0", port=110, tls="starttls"),
            ListenConfig(address="::", port=995, tls="implicit"),
        ),
        tls=TlsConfig(certificate=confdir / "tls" / "cert.pem", private_key=confdir / "key.pem"),
        auth=AuthConfig(
            passwd_file=confdir / "users" / "passwd", plaintext="never", failure_delay=0.0
        ),
        mail=MailConfig(location="maildir:/var/mail/%d/%n/Maildir"),
        limits=LimitsConfig(max_connections=500, max_connections_per_ip=5, max_bad_commands=3),
        source=path,
    )
    # Integers where seconds are expected become floats.
    assert isinstance(config.idle_timeout, float)
    assert isinstance(config.auth.failure_delay, float)
    assert config.mail.path_template == "/var/mail/%d/%n/Maildir"
    assert not config.idle_timeout_below_rfc_minimum


def test_defaults(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "getfqdn", lambda: "host.example.net")
    config = load_config(write(confdir, MINIMAL))
    assert config.hostname == "host.example.net"
    assert config.idle_timeout == 600.0
    assert config.shutdown_timeout == 10.0
    assert config.workers == len(os.sched_getaffinity(0))  # the CPUs popbox may use
    assert (config.user, config.group) == (None, None)
    assert config.log_level == "info"
    assert config.listen == (ListenConfig(address="127.0.0.1", port=1110, tls="none"),)
    assert not config.listen[0].proxy_protocol
    assert config.listen[0].trusted_proxies is None
    assert config.tls == TlsConfig(certificate=None, private_key=None)
    assert not config.tls.enabled
    assert config.auth.plaintext == "loopback"
    assert config.auth.failure_delay == 2.0
    assert config.auth.failure_delay_max == 15.0
    assert (config.auth.max_failures, config.auth.failure_window) == (10, 600.0)
    assert config.auth.block_time == 600.0
    assert config.auth.mechanisms is None
    assert config.auth.login_delay is None
    assert config.auth.oauth is None
    assert config.mail.expire_days is None
    assert (config.mail.uidl_format, config.mail.xuidl) == ("popbox", False)
    assert config.mail.mbox_format == "mboxo"
    assert config.lmtp is None
    assert config.client_workarounds == ()
    assert config.tls.min_version == "TLSv1.2"
    assert config.limits == LimitsConfig(
        max_connections=10000, max_connections_per_ip=100, max_bad_commands=10
    )
    assert not config.idle_timeout_below_rfc_minimum


def test_idle_timeout_below_rfc_minimum_is_accepted_and_flagged(confdir: Path) -> None:
    config = load_config(write(confdir, "idle_timeout = 30\n" + MINIMAL))
    assert config.idle_timeout == 30.0
    assert config.idle_timeout_below_rfc_minimum


def test_relative_paths_resolve_against_the_config_files_directory(
    confdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sub = confdir / "sub"
    sub.mkdir()
    path = sub / "popbox.toml"
    path.write_text(MINIMAL.replace('"passwd"', '"../passwd"').replace("mail/%u", "./mail/%u"))
    elsewhere = confdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_config(Path("../sub/popbox.toml"))  # the file named relative to the cwd
    assert config.source == Path("../sub/popbox.toml")
    assert config.auth.passwd_file is not None
    assert config.auth.passwd_file.is_absolute()
    assert config.auth.passwd_file.resolve() == (confdir / "passwd").resolve()
    template = config.mail.path_template
    assert os.path.isabs(template)
    assert os.path.normpath(template) == os.path.normpath(f"{sub}/mail/%u")


def test_relative_tls_files_resolve_against_the_config_directory(confdir: Path) -> None:
    text = MINIMAL + '[tls]\ncertificate = "tls/cert.pem"\nprivate_key = "key.pem"\n'
    config = load_config(write(confdir, text))
    assert config.tls.certificate == confdir / "tls" / "cert.pem"
    assert config.tls.private_key == confdir / "key.pem"
    assert config.tls.enabled


def test_two_listeners_on_port_zero_are_not_duplicates(confdir: Path) -> None:
    text = MINIMAL + "[[listen]]\nport = 0\n[[listen]]\nport = 0\n"
    assert len(load_config(write(confdir, text)).listen) == 2


def test_escaped_percent_does_not_count_as_the_user(confdir: Path) -> None:
    text = MINIMAL.replace("mail/%u", "mail/%%u")
    assert error_of(write(confdir, text)) == (
        f"{confdir}/popbox.toml: mail.location: the maildir path must contain %u or %n "
        f"(the user), got 'maildir:{confdir}/mail/%%u'"
    )


# (what is added to or changed in MINIMAL, the message after "<file>: "); {dir} is confdir.
ERRORS = [
    pytest.param("colour = 1\n", "colour: unknown key", id="unknown-top"),
    pytest.param(
        'hostnam = "x"\n',
        "hostnam: unknown key (did you mean 'hostname'?)",
        id="unknown-top-hint",
    ),
    pytest.param('"a.b" = 1\n', "'a.b': unknown key", id="unknown-quoted"),
    pytest.param(
        "[limits]\nmax_connection = 5\n",
        "limits.max_connection: unknown key (did you mean 'max_connections'?)",
        id="unknown-in-table",
    ),
    pytest.param(
        "[[listen]]\nport = 0\n[[listen]]\nprot = 1\n",
        "listen[1].prot: unknown key (did you mean 'port'?)",
        id="unknown-in-listen",
    ),
    pytest.param(
        "[[listen]]\nport = 'abc'\n",
        "listen[0].port: expected an integer 0-65535, got 'abc'",
        id="wrong-type",
    ),
    pytest.param(
        "[[listen]]\nport = 65536\n",
        "listen[0].port: expected an integer 0-65535, got 65536",
        id="port-range",
    ),
    pytest.param(
        "[[listen]]\nport = 1.5\n",
        "listen[0].port: expected an integer 0-65535, got 1.5",
        id="float-as-int",
    ),
    pytest.param(
        "[[listen]]\nport = true\n",
        "listen[0].port: expected an integer 0-65535, got true",
        id="bool-as-int",
    ),
    pytest.param(
        "[limits]\nmax_bad_commands = false\n",
        "limits.max_bad_commands: expected an integer >= 1, got false",
        id="bool-as-limit",
    ),
    pytest.param(
        "[limits]\nbad_command_delay = -1\n",
        "limits.bad_command_delay: expected a number of seconds >= 0, got -1",
    ),
    pytest.param(
        "[limits]\nmax_connections = 0\n",
        "limits.max_connections: expected an integer >= 1, got 0",
        id="limit-zero",
    ),
    pytest.param(
        "idle_timeout = true\n",
        "idle_timeout: expected a number of seconds > 0, got true",
        id="bool-as-float",
    ),
    pytest.param(
        "idle_timeout = 0\n", "idle_timeout: expected a number of seconds > 0, got 0", id="zero"
    ),
    pytest.param(
        "idle_timeout = '10m'\n",
        "idle_timeout: expected a number of seconds > 0, got '10m'",
        id="string-as-float",
    ),
    pytest.param(
        "shutdown_timeout = nan\n",
        "shutdown_timeout: expected a number of seconds >= 0, got nan",
        id="nan",
    ),
    pytest.param(
        "shutdown_timeout = -1\n",
        "shutdown_timeout: expected a number of seconds >= 0, got -1",
        id="negative",
    ),
    pytest.param("workers = 0\n", "workers: expected an integer 1-256, got 0", id="no-workers"),
    pytest.param(
        "workers = true\n", "workers: expected an integer 1-256, got true", id="bool-workers"
    ),
    pytest.param(
        "user = 'no-such-user-popbox'\n",
        "user: no such user: 'no-such-user-popbox'",
        id="unknown-user",
    ),
    pytest.param("user = ''\n", "user: expected a user name, got ''", id="empty-user"),
    pytest.param(
        "user = 'nobody'\ngroup = 'no-such-group-popbox'\n",
        "group: no such group: 'no-such-group-popbox'",
        id="unknown-group",
    ),
    pytest.param(
        "group = 'nogroup'\n", "group: needs user (the user to run as)", id="group-without-user"
    ),
    pytest.param(
        "[[listen]]\ntls = 'ssl'\n",
        "listen[0].tls: expected one of 'none', 'starttls', 'implicit', got 'ssl'",
        id="bad-enum",
    ),
    pytest.param(
        "log_level = 'verbose'\n",
        "log_level: expected one of 'debug', 'info', 'warning', 'error', got 'verbose'",
        id="bad-log-level",
    ),
    pytest.param(
        "hostname = 'pop example'\n",
        "hostname: expected a host name (letters, digits, '.', '-', '_'), got 'pop example'",
        id="bad-hostname",
    ),
    pytest.param(
        "[[listen]]\naddress = ''\n",
        "listen[0].address: expected an IP address or host name, got ''",
        id="empty-address",
    ),
    pytest.param(
        "[[listen]]\naddress = '[::1]'\n",
        "listen[0].address: expected an IP address without brackets (::1, not [::1]), got '[::1]'",
        id="bracketed-address",
    ),
    pytest.param("listen = []\n", "listen: at least one [[listen]] table is required", id="none"),
    pytest.param(
        "listen = {port = 1}\n",
        "listen: expected an array of tables ([[listen]]), got a table",
        id="listen-not-array",
    ),
    pytest.param("listen = [1]\n", "listen[0]: expected a table, got 1", id="listen-entry"),
    pytest.param("limits = 5\n", "limits: expected a table, got 5", id="table-not-table"),
    pytest.param(
        "[[listen]]\ntls = 'starttls'\n",
        "listen[0].tls: 'starttls' requires tls.certificate and tls.private_key",
        id="tls-listener-without-cert",
    ),
    pytest.param(
        "[[listen]]\nport = 1110\n[[listen]]\naddress = '127.0.0.1'\n",
        "listen[1]: duplicate of listen[0] (127.0.0.1:1110)",
        id="duplicate-listener",
    ),
    pytest.param(
        "[[listen]]\naddress = '::1'\n[[listen]]\naddress = '0::1'\n",
        "listen[1]: duplicate of listen[0] ([0::1]:1110)",
        id="duplicate-ipv6-spelling",
    ),
    pytest.param(
        "[tls]\ncertificate = 'tls/cert.pem'\n",
        "tls.private_key: required when tls.certificate is given",
        id="cert-without-key",
    ),
    pytest.param(
        "[tls]\nprivate_key = 'key.pem'\n",
        "tls.certificate: required when tls.private_key is given",
        id="key-without-cert",
    ),
    pytest.param(
        "[tls]\ncertificate = 'nope.pem'\nprivate_key = 'key.pem'\n",
        "tls.certificate: file not found: {dir}/nope.pem",
        id="missing-cert",
    ),
    pytest.param(
        "[tls]\ncertificate = 5\nprivate_key = 'key.pem'\n",
        "tls.certificate: expected a file path, got 5",
        id="path-not-string",
    ),
    pytest.param(
        "[[listen]]\nproxy_protocol = true\n",
        "listen[0].trusted_proxies: required when proxy_protocol = true "
        "(the proxies allowed to name clients)",
        id="proxy-without-trusted",
    ),
    pytest.param(
        "[[listen]]\ntrusted_proxies = ['127.0.0.1/32']\n",
        "listen[0].trusted_proxies: only used with proxy_protocol = true",
        id="trusted-without-proxy",
    ),
    pytest.param(
        "[[listen]]\nproxy_protocol = true\ntrusted_proxies = []\n",
        "listen[0].trusted_proxies: must name at least one network",
        id="trusted-empty",
    ),
    pytest.param(
        "[[listen]]\nproxy_protocol = true\ntrusted_proxies = ['127.0.0.1/8']\n",
        "listen[0].trusted_proxies[0]: not a network in CIDR notation: "
        "127.0.0.1/8 has host bits set",
        id="trusted-host-bits",
    ),
    pytest.param(
        "[[listen]]\nproxy_protocol = true\ntrusted_proxies = ['::1/128', 'haproxy']\n",
        "listen[0].trusted_proxies[1]: not a network in CIDR notation: "
        "'haproxy' does not appear to be an IPv4 or IPv6 network",
        id="trusted-not-network",
    ),
    pytest.param(
        "[[listen]]\nproxy_protocol = true\ntrusted_proxies = '127.0.0.1/32'\n",
        "listen[0].trusted_proxies: expected an array of networks such as "
        '["127.0.0.1/32", "::1/128"], got \'127.0.0.1/32\'',
        id="trusted-not-array",
    ),
    pytest.param(
        "[[listen]]\nproxy_protocol = 'yes'\ntrusted_proxies = ['127.0.0.1/32']\n",
        "listen[0].proxy_protocol: expected a bool, got 'yes'",
        id="proxy-not-bool",
    ),
]


def test_proxy_protocol_listener(confdir: Path) -> None:
    text = MINIMAL + (
        "[[listen]]\nport = 110\nproxy_protocol = true\n"
        "trusted_proxies = ['10.0.0.0/8', '0::1/128', '192.0.2.7']\n"
    )
    assert load_config(write(confdir, text)).listen == (
        ListenConfig(
            port=110,
            proxy_protocol=True,
            trusted_proxies=("10.0.0.0/8", "::1/128", "192.0.2.7/32"),
        ),
    )


@pytest.mark.parametrize(("added", "message"), ERRORS)
def test_error_names_the_key(confdir: Path, added: str, message: str) -> None:
    # Top-level keys must come before the first table, so they go first; tables go last.
    path = write(confdir, MINIMAL + added if added.startswith("[") else added + MINIMAL)
    assert error_of(path) == f"{path}: " + message.format(dir=confdir)


# (a replacement in MINIMAL, the message after "<file>: ")
REPLACED = [
    pytest.param(
        ("passwd_file", "pasword_file"),
        "auth.pasword_file: unknown key (did you mean 'passwd_file'?)",
        id="unknown-before-missing",
    ),
    pytest.param(
        ('passwd_file = "passwd"', ""),
        "auth.passwd_file: required key is missing (or give auth.database)",
        id="missing-required",
    ),
    pytest.param(("[auth]", "[authx]"), "authx: unknown key (did you mean 'auth'?)", id="table"),
    pytest.param(
        ('[mail]\nlocation = "maildir:mail/%u"\n', ""),
        "mail: required key is missing",
        id="missing-table",
    ),
    pytest.param(
        ('"passwd"', '"nope"'), "auth.passwd_file: file not found: {dir}/nope", id="no-passwd"
    ),
    pytest.param(
        ('"passwd"', '"tls"'), "auth.passwd_file: not a regular file: {dir}/tls", id="dir-passwd"
    ),
    pytest.param(
        ('"passwd"', '""'), "auth.passwd_file: expected a file path, got ''", id="empty-path"
    ),
    pytest.param(
        ("maildir:mail/%u", "mbox:/var/mail/all"),
        "mail.location: the mbox path must contain %u or %n (the user), got 'mbox:/var/mail/all'",
        id="mbox-no-user",
    ),
    pytest.param(
        ("maildir:mail/%u", "postgresql:dbname=mail password=hunter2"),
        "mail.location: expected a URL starting with 'postgresql://' or 'postgres://'",
        id="postgresql-keyword-form",
    ),
    pytest.param(
        ("maildir:mail/%u", "postgresql://popbox:hunter2@db:99999/mail"),
        "mail.location: not a valid PostgreSQL URL (a port must be a number 1-65535): "
        "postgresql://popbox:***@db:99999/mail",
        id="postgresql-bad-port",
    ),
    pytest.param(
        ("maildir:mail/%u", "postgresql://popbox:hunter2@db/mail#x"),
        "mail.location: a PostgreSQL URL has no '#' fragment: postgresql://popbox:***@db/mail",
        id="postgresql-fragment",
    ),
    pytest.param(
        ('passwd_file = "passwd"', 'passwd_file = "passwd"\ndatabase = "postgresql://db/u"'),
        "auth.database: give passwd_file or database, not both",
        id="users-twice",
    ),
    pytest.param(
        ('passwd_file = "passwd"', 'database = "mysql://u:hunter2@db/u"'),
        "auth.database: expected a URL starting with 'postgresql://' or 'postgres://'",
        id="users-not-postgresql",
    ),
    pytest.param(
        ('passwd_file = "passwd"', "database = 5"),
        "auth.database: expected a URL starting with 'postgresql://' or 'postgres://'",
        id="users-not-a-string",
    ),
    pytest.param(
        ("maildir:mail/%u", "/var/mail/%u"),
        "mail.location: expected 'maildir:<path>', 'mbox:<path>' or 'postgresql://...', "
        "got '/var/mail/%u'",
        id="no-scheme",
    ),
    pytest.param(
        ("maildir:mail/%u", "maildir:"),
        "mail.location: expected 'maildir:<path>', 'mbox:<path>' or 'postgresql://...', "
        "got 'maildir:'",
        id="no-path",
    ),
    pytest.param(
        ("maildir:mail/%u", "maildir:~/Maildir"),
        "mail.location: '~' (a home directory) is not supported; use a path with %u, "
        "got 'maildir:~/Maildir'",
        id="home",
    ),
    pytest.param(
        ("maildir:mail/%u", "maildir:/m/%u:INDEX=/i/%u"),
        "mail.location: Dovecot-style ':KEY=value' options are not supported, "
        "got 'maildir:/m/%u:INDEX=/i/%u'",
        id="dovecot-options",
    ),
    pytest.param(
        ("maildir:mail/%u", "maildir:/var/mail/all"),
        "mail.location: the maildir path must contain %u or %n (the user), "
        "got 'maildir:/var/mail/all'",
        id="no-user-variable",
    ),
    pytest.param(
        ("[auth]\n", "[auth]\nplaintext = 'yes'\n"),
        "auth.plaintext: expected one of 'never', 'loopback', 'always', got 'yes'",
        id="bad-plaintext",
    ),
    pytest.param(
        ("[auth]\n", "[auth]\nfailure_delay = true\n"),
        "auth.failure_delay: expected a number of seconds >= 0, got true",
        id="bool-as-delay",
    ),
    pytest.param(
        ("[auth]\n", "[auth]\nmechanisms = ['PLAIN', 'NTLM']\n"),
        "auth.mechanisms: expected one of SCRAM-SHA-256-PLUS, SCRAM-SHA-256, SCRAM-SHA-1, "
        "CRAM-MD5, OAUTHBEARER, XOAUTH2, PLAIN, LOGIN, got 'NTLM'",
        id="unknown-mechanism",
    ),
    pytest.param(
        ("[auth]\n", "[auth]\nmechanisms = ['XOAUTH2']\n"),
        "auth.mechanisms: XOAUTH2 needs an [auth.oauth] table",
        id="oauth-mechanism-without-oauth",
    ),
    pytest.param(
        ("[auth]\n", "[auth]\nfailure_delay = 3\nfailure_delay_max = 1\n"),
        "auth.failure_delay_max: must not be below auth.failure_delay",
        id="delay-max-below-delay",
    ),
    pytest.param(
        ("[auth]\n", "[auth]\nlogin_delay = -1\n"),
        "auth.login_delay: expected an integer >= 0, got -1",
        id="negative-login-delay",
    ),
    pytest.param(
        ("[mail]\n", "[mail]\nexpire_days = -1\n"),
        'mail.expire_days: expected "never" or a number of days >= 0, got -1',
        id="expire-negative",
    ),
    pytest.param(
        ("[mail]\n", "[mail]\nuidl_format = 'uw-imap'\n"),
        "mail.uidl_format: expected one of 'popbox', 'dovecot', 'courier', got 'uw-imap'",
        id="uidl-format",
    ),
    pytest.param(
        ("[mail]\n", "[lmtp]\naddress = '127.0.0.1'\n[mail]\n"),
        "lmtp.port: give either port (with address) or path",
        id="lmtp-without-port",
    ),
    pytest.param(
        ("[auth]\n", "[auth.oauth]\nissuer = 'i'\naudience = 'a'\n[auth]\n"),
        "auth.oauth.jwks_file: give exactly one of jwks_file and public_key",
        id="oauth-without-keys",
    ),
]


@pytest.mark.parametrize(("replace", "message"), REPLACED)
def test_error_names_the_key_when_changed(
    confdir: Path, replace: tuple[str, str], message: str
) -> None:
    old, new = replace
    assert old in MINIMAL
    path = write(confdir, MINIMAL.replace(old, new))
    assert error_of(path) == f"{path}: " + message.format(dir=confdir)


def test_toml_syntax_error_gives_the_line(confdir: Path) -> None:
    path = write(confdir, "[auth]\nbad key = 1\n")
    assert error_of(path) == (
        f"{path}: TOML syntax error: "
        "Expected '=' after a key in a key/value pair (at line 2, column 5)"
    )


def test_missing_config_file(tmp_path: Path) -> None:
    assert error_of(tmp_path / "nope.toml") == f"{tmp_path}/nope.toml: config file not found"


def test_config_file_is_a_directory(tmp_path: Path) -> None:
    assert error_of(tmp_path) == f"{tmp_path}: is a directory, not a config file"


def test_config_file_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "popbox.toml"
    path.write_bytes(b'hostname = "caf\xe9"\n')
    assert error_of(path) == f"{path}: not UTF-8 (byte 15)"


def test_unreadable_passwd_file(confdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Patched rather than chmod 0: the suite may run as root, who reads every file.
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    path = write(confdir, MINIMAL)
    assert error_of(path) == f"{path}: auth.passwd_file: file is not readable: {confdir}/passwd"


# ---- parse_config and direct construction ----


def test_parse_config_from_a_mapping(confdir: Path) -> None:
    data = {
        "auth": {"passwd_file": "passwd"},
        "mail": {"location": "maildir:mail/%u"},
        "listen": [{"port": 0}],
    }
    config = parse_config(data, base_dir=confdir, source_name="<default>")
    assert config.source is None
    assert config.auth.passwd_file == confdir / "passwd"
    assert config.mail.location == f"maildir:{confdir}/mail/%u"
    assert config.listen == (ListenConfig(port=0),)


def test_postgresql_mail_and_users(confdir: Path) -> None:
    """A postgresql:// URL is kept as written (not made relative to the file); either
    database may be used without the other."""
    url = "postgresql://popbox:hunter2@db.example.org:5433/mail?sslmode=require"
    both = MINIMAL.replace('passwd_file = "passwd"', f'database = "{url}"')
    config = load_config(write(confdir, both.replace("maildir:mail/%u", url)))
    assert config.mail.location == url
    assert config.mail.scheme == "postgresql"
    assert config.auth.database == url
    assert config.auth.passwd_file is None
    only_mail = load_config(write(confdir, MINIMAL.replace("maildir:mail/%u", "postgres://db/m")))
    assert only_mail.mail.scheme == "postgresql"
    assert only_mail.auth.passwd_file == confdir / "passwd"
    only_users = load_config(
        write(confdir, MINIMAL.replace('passwd_file = "passwd"', f'database = "{url}"'))
    )
    assert only_users.mail.scheme == "maildir"
    assert only_users.auth.database == url


def test_parse_config_names_its_source_and_refuses_source_key(confdir: Path) -> None:
    data = {"source": "x", "auth": {"passwd_file": "passwd"}, "mail": {"location": "m"}}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=confdir, source_name="<default>")
    assert str(caught.value) == "<default>: source: unknown key"
    assert caught.value.source == "<default>"
    assert caught.value.key == "source"
    assert caught.value.message == "unknown key"


def test_dataclasses_validate_on_direct_construction(confdir: Path) -> None:
    with pytest.raises(ConfigError, match=r"^port: expected an integer 0-65535, got true$"):
        ListenConfig(port=True)
    with pytest.raises(ConfigError, match=r"^location: the maildir path must be absolute"):
        MailConfig(location="maildir:relative/%u")
    with pytest.raises(ConfigError, match=r"^passwd_file: expected a file path, got 'passwd'"):
        AuthConfig(passwd_file="passwd")  # type: ignore[arg-type]
    auth = AuthConfig(passwd_file=confdir / "passwd")
    mail = MailConfig(location="maildir:/m/%u")
    with pytest.raises(ConfigError, match=r"^listen: at least one \[\[listen\]\] table"):
        Config(auth=auth, mail=mail, hostname="h", listen=())
    with pytest.raises(ConfigError, match=r"^auth: expected a AuthConfig, got 'x'$"):
        Config(auth="x", mail=mail, hostname="h")  # type: ignore[arg-type]


def test_dataclasses_are_frozen_and_slotted(confdir: Path) -> None:
    config = load_config(write(confdir, MINIMAL))
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.idle_timeout = 1.0  # type: ignore[misc]
    for value in (config, config.listen[0], config.tls, config.auth, config.mail, config.limits):
        assert not hasattr(value, "__dict__")
    assert hash(config.listen[0]) == hash(ListenConfig())


def test_config_error_pickles() -> None:
    error = ConfigError("unknown key", "auth.x", "popbox.toml")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == "popbox.toml: auth.x: unknown key"
    assert str(ConfigError("config file not found", source="a.toml")) == (
        "a.toml: config file not found"
    )


# ---- check_ports_free ----


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A port on 127.0.0.1 held by a listening socket, as a running server would."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def listening(confdir: Path, *listeners: tuple[str, int]) -> Config:
    text = MINIMAL + "".join(f"[[listen]]\naddress = '{a}'\nport = {p}\n" for a, p in listeners)
    return load_config(write(confdir, text))


def test_port_in_use_is_refused(confdir: Path, busy_port: int) -> None:
    config = listening(confdir, ("127.0.0.1", 0), ("127.0.0.1", busy_port))
    with pytest.raises(ConfigError) as caught:
        check_ports_free(config)
    assert str(caught.value) == (
        f"{confdir}/popbox.toml: listen[1].port: 127.0.0.1:{busy_port} is already in use"
    )


def test_free_ports_pass_and_are_released(confdir: Path) -> None:
    port = free_port()
    config = listening(confdir, ("127.0.0.1", port), ("127.0.0.1", 0))
    check_ports_free(config)
    check_ports_free(config)  # the first check let go of everything it bound
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_listeners_overlapping_each_other_are_refused(confdir: Path) -> None:
    port = free_port()
    config = listening(confdir, ("0.0.0.0", port), ("127.0.0.1", port))
    with pytest.raises(ConfigError) as caught:
        check_ports_free(config)
    assert str(caught.value) == (
        f"{confdir}/popbox.toml: listen[1].port: 127.0.0.1:{port} is already in use"
    )


def test_address_not_on_this_host_is_refused(confdir: Path) -> None:
    # 192.0.2.0/24 is TEST-NET-1 (RFC 5737): never a local address.
    config = listening(confdir, ("192.0.2.1", 1110))
    with pytest.raises(ConfigError) as caught:
        check_ports_free(config)
    assert str(caught.value) == (
        f"{confdir}/popbox.toml: listen[0].address: 192.0.2.1 is not an address of this host"
    )


# ---- [metrics] and log_format ----


def test_metrics_and_log_format(confdir: Path) -> None:
    text = 'log_format = "json"\n' + MINIMAL + '[metrics]\naddress = "::1"\nport = 9111\n'
    config = load_config(write(confdir, text))
    assert config.log_format == "json"
    assert config.metrics == MetricsConfig(address="::1", port=9111)


def test_metrics_and_log_format_defaults(confdir: Path) -> None:
    config = load_config(write(confdir, MINIMAL))
    assert (config.metrics, config.log_format) == (None, "text")
    # An empty [metrics] table turns the endpoint on at its defaults.
    config = load_config(write(confdir, MINIMAL + "[metrics]\n"))
    assert config.metrics == MetricsConfig(address="127.0.0.1", port=9110)


METRICS_ERRORS = [
    pytest.param(
        "log_format = 'xml'\n",
        "log_format: expected one of 'text', 'json', got 'xml'",
        id="bad-log-format",
    ),
    pytest.param(
        "[metrics]\nport = 70000\n",
        "metrics.port: expected an integer 0-65535, got 70000",
        id="bad-metrics-port",
    ),
    pytest.param(
        "[metrics]\nport = '9110'\n",
        "metrics.port: expected an integer 0-65535, got '9110'",
        id="metrics-port-string",
    ),
    pytest.param(
        "[metrics]\nadress = '127.0.0.1'\n",
        "metrics.adress: unknown key (did you mean 'address'?)",
        id="metrics-unknown-key",
    ),
    pytest.param(
        "[metrics]\naddress = ''\n",
        "metrics.address: expected an IP address or host name, got ''",
        id="metrics-empty-address",
    ),
    pytest.param("metrics = 9110\n", "metrics: expected a table, got 9110", id="metrics-not-table"),
]


@pytest.mark.parametrize(("added", "message"), METRICS_ERRORS)
def test_metrics_error_names_the_key(confdir: Path, added: str, message: str) -> None:
    path = write(confdir, MINIMAL + added if added.startswith("[") else added + MINIMAL)
    assert error_of(path) == f"{path}: " + message


def test_metrics_port_in_use_is_refused(confdir: Path, busy_port: int) -> None:
    config = load_config(write(confdir, MINIMAL + f"[metrics]\nport = {busy_port}\n"))
    with pytest.raises(ConfigError) as caught:
        check_ports_free(config)
    assert str(caught.value) == (
        f"{confdir}/popbox.toml: metrics.port: 127.0.0.1:{busy_port} is already in use"
    )
