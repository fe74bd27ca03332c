"""How many connections may wait to start (server/descriptors.py waiting_room): what the
descriptor limit leaves once the open sessions have theirs and an eighth is kept free."""

from __future__ import annotations

import resource

import pytest

from popbox.server.descriptors import PER_SESSION, descriptor_limit, waiting_room


@pytest.mark.parametrize(
    ("limit", "sessions", "listeners", "room"),
    [
        (20_000, 0, 1, 17_500),  # an eighth (2,500) kept free
        (20_000, 1_020, 1, 15_460),  # the hostile test's thousand slow sessions
        (65_536, 0, 2, 28_672),  # systemd's LimitNOFILE, ports 110 and 995: shared
        (65_536, 10_000, 2, 18_672),
        (1_024, 448, 1, 1),  # sessions took all there is: still one
        (1_024, 400, 1, 96),
    ],
)
def test_waiting_room(limit: int, sessions: int, listeners: int, room: int) -> None:
    assert waiting_room(limit, sessions, listeners) == room


def test_room_and_sessions_stay_within_the_limit() -> None:
    limit = 4_096
    for sessions in range(0, 2_000, 97):
        for listeners in (1, 2, 3):
            waiting = listeners * waiting_room(limit, sessions, listeners)
            if waiting > listeners:  # not the floor of one each
                assert waiting + PER_SESSION * sessions <= limit - limit // 8


def test_descriptor_limit_is_the_soft_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert descriptor_limit() == (soft if soft != resource.RLIM_INFINITY else 16 * 65_536)
