"""curl as a real POP3 client: shared by test_clients_curl.py and test_clients_tls_curl.py."""

from __future__ import annotations

import subprocess

from server_helpers import which_or_skip

CURL, NEEDS_CURL = which_or_skip("curl")


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert CURL is not None
    return subprocess.run(
        [CURL, "--silent", "--show-error", "--max-time", "20", *args],
        capture_output=True,
        timeout=30,
        check=False,
    )
