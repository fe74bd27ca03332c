"""What a configuration makes: the users, the store, the session policy and the context
that every session shares, built once at start and again on reload."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from popbox.auth.base import Authenticator
from popbox.auth.oauth import BearerVerifier, OAuthConfig
from popbox.auth.passwdfile import PasswdFileAuthenticator
from popbox.auth.throttle import LoginDelayTracker, LoginThrottle, ThrottleConfig
from popbox.config import Config
from popbox.delivery.lmtp import LmtpServer
from popbox.sasl.registry import CHANNEL_BINDING_MECHANISMS, MECHANISMS
from popbox.server.context import OAUTH_MECHANISMS, ServerContext, SessionPolicy
from popbox.server.tls import TlsManager
from popbox.storage.base import MaildropStore
from popbox.storage.maildir import MaildirStore

log = logging.getLogger("popbox.server")

# RFC 1939 section 3: "the autologout timer MUST be of at least 10 minutes' duration".
RFC1939_MIN_IDLE_TIMEOUT = 600.0


def offered_mechanisms(config: Config) -> tuple[str, ...]:
    """The SASL mechanisms this server offers (before per-connection filtering)."""
    if config.auth.mechanisms is not None:
        return config.auth.mechanisms
    return tuple(
        name
        for name in MECHANISMS
        if (config.auth.oauth is not None or name not in OAUTH_MECHANISMS)
        and (config.tls.enabled or name not in CHANNEL_BINDING_MECHANISMS)
    )


def make_authenticator(config: Config) -> Authenticator:
    oauth = config.auth.oauth
    verifier = None
    if oauth is not None:
        verifier = BearerVerifier(
            OAuthConfig(
                issuer=oauth.issuer,
                audience=oauth.audience,
                username_claim=oauth.username_claim,
                jwks_file=oauth.jwks_file,
                public_key=oauth.public_key,
            )
        )
    if config.auth.database is not None:
        from popbox.auth.pgusers import PgUsersAuthenticator  # noqa: PLC0415

        return PgUsersAuthenticator(config.auth.database, oauth=verifier)
    assert config.auth.passwd_file is not None  # AuthConfig requires one of the two
    return PasswdFileAuthenticator(config.auth.passwd_file, oauth=verifier)


def make_store(config: Config) -> MaildropStore:
    """The mail store named by [mail] location (Dovecot's mail_location syntax)."""
    mail = config.mail
    if mail.scheme == "postgresql":
        from popbox.storage.postgresql import PostgresStore  # noqa: PLC0415

        return PostgresStore(mail.location)
    if mail.scheme == "mbox":
        from popbox.storage.mbox import MboxStore  # noqa: PLC0415

        return MboxStore(
            mail.path_template,
            mbox_format=mail.mbox_format,
            dotlock_stale=mail.dotlock_stale,
            lock_timeout=mail.lock_timeout,
        )
    return MaildirStore(mail.path_template, uidl_format=mail.uidl_format, xuidl=mail.xuidl)


def make_policy(config: Config) -> SessionPolicy:
    auth = config.auth
    return SessionPolicy(
        hostname=config.hostname,
        idle_timeout=config.idle_timeout,
        plaintext=auth.plaintext,
        max_bad_commands=config.limits.max_bad_commands,
        bad_command_delay=config.limits.bad_command_delay,
        max_connections=config.limits.max_connections,
        max_connections_per_ip=config.limits.max_connections_per_ip,
        mechanisms=offered_mechanisms(config),
        login_delay=auth.login_delay,
        expire=None if config.mail.expire_days is None else str(config.mail.expire_days).upper(),
        expire_days=config.mail.expire_days if isinstance(config.mail.expire_days, int) else None,
        workarounds=frozenset(config.client_workarounds),
    )


def make_throttle_config(config: Config) -> ThrottleConfig:
    auth = config.auth
    return ThrottleConfig(
        failure_delay=auth.failure_delay,
        failure_delay_max=auth.failure_delay_max,
        max_failures=auth.max_failures,
        failure_window=auth.failure_window,
        block_time=auth.block_time,
    )


def make_context(config: Config) -> ServerContext:
    login_delay = config.auth.login_delay
    tls = None
    if config.tls.certificate is not None and config.tls.private_key is not None:
        tls = TlsManager(config.tls.certificate, config.tls.private_key, config.tls.min_version)
    return ServerContext(
        policy=make_policy(config),
        authenticator=make_authenticator(config),
        store=make_store(config),
        throttle=LoginThrottle(make_throttle_config(config)),
        login_delays=None if login_delay is None else LoginDelayTracker(login_delay),
        tls=tls,
    )


def apply_config(ctx: ServerContext, config: Config, lmtp: Sequence[LmtpServer] = ()) -> None:
    """A reloaded configuration (server/reload.py) for new sessions and logins; running
    sessions keep their settings. Throttling state is kept, the users file re-read."""
    ctx.policy = make_policy(config)
    ctx.authenticator = make_authenticator(config)
    for server in lmtp:
        server.handler.authenticator = ctx.authenticator
    ctx.throttle.config = make_throttle_config(config)
    login_delay = config.auth.login_delay
    if login_delay is None:
        ctx.login_delays = None
    elif ctx.login_delays is None or ctx.login_delays.login_delay != login_delay:
        ctx.login_delays = LoginDelayTracker(login_delay)
    tls = config.tls
    if ctx.tls is not None and tls.certificate is not None and tls.private_key is not None:
        ctx.tls.reload(tls.certificate, tls.private_key, tls.min_version)
    logging.getLogger().setLevel(config.log_level.upper())


def startup_warnings(config: Config) -> None:
    if config.idle_timeout < RFC1939_MIN_IDLE_TIMEOUT:
        log.warning(
            "idle_timeout = %g s is below RFC 1939 section 3's minimum autologout timer "
            "of 10 minutes (600 s)",
            config.idle_timeout,
        )
    if config.auth.plaintext == "always":
        log.warning('auth.plaintext = "always": passwords may cross the network unencrypted')
