"""systemd readiness notification (sd_notify(3)): one datagram per state change to the
unix socket named by $NOTIFY_SOCKET, when systemd (or anything speaking the protocol)
set it. Without it every call does nothing.

    READY=1                               listeners bound, workers started
    RELOADING=1 + MONOTONIC_USEC=...      SIGHUP received (Type=notify-reload, systemd 253
                                          and later, wants the clock reading with it)
    STOPPING=1                            SIGTERM received, sessions draining
"""

from __future__ import annotations

import logging
import os
import socket
import time

log = logging.getLogger("popbox.server")


def notify(*assignments: str) -> bool:
    """Send `assignments` ("READY=1", ...) as one notification; True if sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket (unix(7)): the name starts with a NUL instead of "@".
        address = "\0" + address[1:]
    elif not address.startswith("/"):
        log.warning("NOTIFY_SOCKET=%r: only unix socket paths and @names are supported", address)
        return False
    message = "\n".join(assignments).encode("utf-8")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message)
    except OSError as error:
        log.warning("sd_notify to %s failed: %s", os.environ["NOTIFY_SOCKET"], error)
        return False
    return True


def ready() -> bool:
    return notify("READY=1")


def reloading() -> bool:
    """RELOADING=1 with the CLOCK_MONOTONIC time in microseconds (sd_notify(3))."""
    usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    return notify("RELOADING=1", f"MONOTONIC_USEC={usec}")


def stopping() -> bool:
    return notify("STOPPING=1")
