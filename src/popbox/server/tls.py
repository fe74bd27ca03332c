"""TLS for the server edge: contexts that SIGHUP can replace, and channel-binding data.

STLS (RFC 2595) connections start TLS through loop.start_tls() with the context current at
that moment. Implicit-TLS listeners (RFC 8314) are served by asyncio's own TLS support,
whose context is fixed when the listener is made; its servername callback, which OpenSSL
calls for every ClientHello (with or without SNI), moves each new connection onto the
current context. Either way a reload takes effect for new connections while running
sessions keep the context they started with.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes

log = logging.getLogger("popbox.tls")

_VERSIONS = {"TLSv1.2": ssl.TLSVersion.TLSv1_2, "TLSv1.3": ssl.TLSVersion.TLSv1_3}


class ServerContext(ssl.SSLContext):
    """A server context that remembers its certificate's tls-server-end-point hash
    (RFC 5929 section 4.1), for SCRAM-*-PLUS channel binding."""

    server_end_point: bytes = b""


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    context: ServerContext
    # RFC 5929 section 4.1 tls-server-end-point: the hash of our own certificate.
    server_end_point: bytes


def server_end_point(certificate_pem: bytes) -> bytes:
    """RFC 5929 section 4.1: hash the certificate with its signature's hash function,
    except that MD5 and SHA-1 are replaced by SHA-256."""
    cert = x509.load_pem_x509_certificate(certificate_pem)
    algorithm = cert.signature_hash_algorithm
    name = "sha256"
    if algorithm is not None and not isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        name = algorithm.name
    from cryptography.hazmat.primitives.serialization import Encoding  # noqa: PLC0415

    return hashlib.new(name, cert.public_bytes(Encoding.DER)).digest()


def load_material(certificate: Path, private_key: Path, min_version: str) -> TlsMaterial:
    """Build a server context; raises OSError/ssl.SSLError/ValueError on bad files."""
    context = ServerContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[min_version]
    context.load_cert_chain(certificate, private_key)
    # POP3 has no use for TLS compression or renegotiation (CRIME; RFC 7457).
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.server_end_point = server_end_point(certificate.read_bytes())
    return TlsMaterial(context, context.server_end_point)


class TlsManager:
    """Holds the current TLS material; reload() swaps it only if the new files load."""

    def __init__(self, certificate: Path, private_key: Path, min_version: str) -> None:
        self._files = (certificate, private_key, min_version)
        self.current = load_material(*self._files)
        # The context implicit-TLS listeners are made with; it hands every connection on.
        self.listener_context = load_material(*self._files).context
        self.listener_context.sni_callback = self._choose_context

    def _choose_context(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        connection.context = self.current.context

    def reload(
        self,
        certificate: Path | None = None,
        private_key: Path | None = None,
        min_version: str | None = None,
    ) -> bool:
        """Load the files again (or new ones, from a reloaded config) for new connections."""
        files = (
            certificate or self._files[0],
            private_key or self._files[1],
            min_version or self._files[2],
        )
        try:
            material = load_material(*files)
        except (OSError, ssl.SSLError, ValueError) as error:
            log.error("TLS reload failed, keeping the old certificate: %s", error)
            return False
        self._files = files
        self.current = material
        # The version floor is the listening context's: switching contexts in the
        # servername callback does not change what the handshake already allows.
        self.listener_context.minimum_version = _VERSIONS[files[2]]
        log.info("TLS certificate and key reloaded from %s", files[0])
        return True


def channel_binding(transport: asyncio.BaseTransport) -> tuple[str, bytes] | None:
    """RFC 5929 tls-server-end-point of the certificate a connection got; None without
    our own TLS on it (none yet, or TLS that ended at a proxy)."""
    ssl_object = transport.get_extra_info("ssl_object")
    context = getattr(ssl_object, "context", None)
    if not isinstance(context, ServerContext):
        return None
    return ("tls-server-end-point", context.server_end_point)


def tls_details(transport: asyncio.BaseTransport) -> tuple[str, str]:
    """(version, cipher) of a connection's own TLS, for the log."""
    ssl_object = transport.get_extra_info("ssl_object")
    if ssl_object is None:
        return "?", "?"
    cipher = ssl_object.cipher()
    return ssl_object.version() or "?", cipher[0] if cipher else "?"
