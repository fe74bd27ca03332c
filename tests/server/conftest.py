from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from server_helpers import (
    HOSTNAME,
    PopboxServer,
    client_corpus,
    close_everything_started,
    start_popbox,
)

Starter = Callable[..., PopboxServer]
ALL_MODES = ("none", "starttls", "implicit")


@pytest.fixture
def popbox(tmp_path: Path) -> Iterator[Starter]:
    """start(users, mail, **top_level_config) -> a running `popbox serve` (`env`: more
    environment variables for it)."""
    started: list[PopboxServer] = []

    def start(
        users: dict[str, str],
        mail: dict[str, list[bytes]] | None = None,
        *,
        extra: str = "",
        listeners: tuple[str, ...] = ("none",),
        mail_extra: str = "",
        env: dict[str, str] | None = None,
        **top: object,
    ) -> PopboxServer:
        root = tmp_path / f"server{len(started)}"
        server = start_popbox(
            root,
            users,
            mail,
            top=top,
            extra=extra,
            listeners=listeners,
            mail_extra=mail_extra,
            env=env,
        )
        started.append(server)
        return server

    yield start
    close_everything_started()


@dataclass(frozen=True)
class TlsFiles:
    ca: trustme.CA
    ca_file: Path
    certificate: Path
    private_key: Path

    @property
    def toml(self) -> str:
        """The [tls] table for a config file."""
        return f'[tls]\ncertificate = "{self.certificate}"\nprivate_key = "{self.private_key}"\n'

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        return context


def make_tls_files(directory: Path, name: str = "server") -> TlsFiles:
    """A test CA (trustme) and a server certificate for 127.0.0.1 and localhost."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost", HOSTNAME)
    ca_file = directory / f"{name}-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    certificate, private_key = directory / f"{name}-cert.pem", directory / f"{name}-key.pem"
    issued.private_key_pem.write_to_path(str(private_key))
    issued.cert_chain_pems[0].write_to_path(str(certificate))
    for blob in issued.cert_chain_pems[1:]:
        blob.write_to_path(str(certificate), append=True)
    return TlsFiles(ca, ca_file, certificate, private_key)


@pytest.fixture
def tls_files(tmp_path: Path) -> TlsFiles:
    return make_tls_files(tmp_path / "tls")


def start_tls(popbox: Starter, tls_files: TlsFiles, secret: str = "{PLAIN}secret") -> PopboxServer:
    """The real-client TLS tests' server: alice (SECRET) with client_corpus(), listening
    on every mode, `plaintext = "never"`."""
    extra = 'plaintext = "never"\n' + tls_files.toml
    return popbox({"alice": secret}, {"alice": client_corpus()}, extra=extra, listeners=ALL_MODES)
