"""Brute-force throttling and LOGIN-DELAY state, replayed with explicit clock values."""

from __future__ import annotations

import pytest

from popbox.auth.throttle import LoginDelayTracker, LoginThrottle, ThrottleConfig

IP = "192.0.2.1"
OTHER_IP = "198.51.100.7"


def fail(throttle: LoginThrottle, now: float, address: str = IP, user: str | None = "bob") -> float:
    """What the server does on a failed login: ask the delay, then record the failure."""
    delay = throttle.failure_delay(address, now)
    throttle.record_failure(address, user, now)
    return delay


# --- failure delay (Dovecot's auth penalty) -------------------------------------------


def test_delay_doubles_up_to_the_maximum() -> None:
    throttle = LoginThrottle()
    assert [fail(throttle, float(t)) for t in range(7)] == [2.0, 4.0, 8.0, 15.0, 15.0, 15.0, 15.0]


def test_delay_is_per_address() -> None:
    throttle = LoginThrottle()
    assert [fail(throttle, 0.0), fail(throttle, 1.0)] == [2.0, 4.0]
    assert fail(throttle, 2.0, OTHER_IP) == 2.0
    assert throttle.failure_delay(IP, 3.0) == 8.0


def test_delay_counts_failures_inside_the_window_only() -> None:
    throttle = LoginThrottle(ThrottleConfig(failure_window=100.0))
    assert [fail(throttle, t) for t in (0.0, 10.0, 20.0)] == [2.0, 4.0, 8.0]
    assert throttle.failure_delay(IP, 99.9) == 15.0
    assert throttle.failure_delay(IP, 100.0) == 8.0  # the failure at 0 has left the window
    assert throttle.failure_delay(IP, 110.0) == 4.0
    assert throttle.failure_delay(IP, 120.0) == 2.0


def test_custom_delays_and_a_huge_failure_budget() -> None:
    throttle = LoginThrottle(
        ThrottleConfig(failure_delay=0.5, failure_delay_max=3.0, max_failures=10_000)
    )
    assert [fail(throttle, float(t)) for t in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    for t in range(5, 2000):
        throttle.record_failure(IP, None, float(t))
    assert throttle.failure_delay(IP, 2000.0) == 3.0  # no overflow from 2**1999


def test_success_resets_the_delay() -> None:
    throttle = LoginThrottle()
    assert [fail(throttle, 0.0), fail(throttle, 1.0)] == [2.0, 4.0]
    throttle.record_success(IP, "bob", 2.0)
    assert fail(throttle, 3.0) == 2.0


# --- blocking -------------------------------------------------------------------------


def test_block_after_more_than_max_failures_and_unblock() -> None:
    config = ThrottleConfig(max_failures=3, failure_window=60.0, block_time=100.0)
    throttle = LoginThrottle(config)
    for now in (0.0, 1.0, 2.0):
        fail(throttle, now)
    assert not throttle.address_blocked(IP, 2.0)
    assert not throttle.user_blocked("bob", 2.0)
    fail(throttle, 3.0)  # the 4th failure: more than 3
    assert throttle.address_blocked(IP, 3.0)
    assert throttle.user_blocked("bob", 3.0)
    assert throttle.address_blocked(IP, 102.9)
    assert not throttle.address_blocked(IP, 103.0)  # block_time after the last failure
    assert not throttle.user_blocked("bob", 103.0)
    assert not throttle.address_blocked(OTHER_IP, 3.0)
    assert not throttle.user_blocked("alice", 3.0)


def test_each_further_failure_extends_the_block() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_failures=2, block_time=50.0))
    for now in (0.0, 1.0, 2.0, 40.0):
        fail(throttle, now)
    assert throttle.address_blocked(IP, 89.0)
    assert not throttle.address_blocked(IP, 90.0)


def test_failures_spread_beyond_the_window_never_block() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_failures=3, failure_window=10.0))
    for now in range(0, 100, 4):
        fail(throttle, float(now))
        assert not throttle.address_blocked(IP, float(now))


def test_user_blocked_by_failures_from_many_addresses() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_failures=3))
    for index in range(4):
        fail(throttle, float(index), address=f"203.0.113.{index}")
    assert throttle.user_blocked("bob", 4.0)
    assert not throttle.address_blocked("203.0.113.0", 4.0)


def test_failures_without_a_user_count_for_the_address_only() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_failures=1))
    fail(throttle, 0.0, user=None)
    fail(throttle, 1.0, user=None)
    assert throttle.address_blocked(IP, 1.0)
    assert len(throttle) == 1


def test_success_clears_address_and_user() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_failures=2))
    for now in (0.0, 1.0, 2.0):
        fail(throttle, now)
    assert throttle.address_blocked(IP, 2.0)
    throttle.record_success(IP, "bob", 3.0)
    assert not throttle.address_blocked(IP, 3.0)
    assert not throttle.user_blocked("bob", 3.0)
    assert len(throttle) == 0


# --- bounded memory -------------------------------------------------------------------


def test_memory_bounded_by_max_tracked_evicting_the_oldest() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_tracked=3))
    for index in range(5):
        fail(throttle, float(index), address=f"10.0.0.{index}", user=None)
    assert len(throttle) == 3
    assert throttle.failure_delay("10.0.0.0", 5.0) == 2.0  # evicted: forgotten
    assert throttle.failure_delay("10.0.0.1", 5.0) == 2.0
    assert throttle.failure_delay("10.0.0.4", 5.0) == 4.0


def test_refailing_makes_an_entry_recent_again() -> None:
    throttle = LoginThrottle(ThrottleConfig(max_tracked=2))
    fail(throttle, 0.0, address="a", user=None)
    fail(throttle, 1.0, address="b", user=None)
    fail(throttle, 2.0, address="a", user=None)
    fail(throttle, 3.0, address="c", user=None)  # evicts b, the least recently failed
    assert throttle.failure_delay("a", 4.0) == 8.0
    assert throttle.failure_delay("b", 4.0) == 2.0


def test_old_entries_are_pruned_lazily() -> None:
    throttle = LoginThrottle(ThrottleConfig(failure_window=10.0, block_time=0.0))
    for index in range(100):
        fail(throttle, 0.0, address=f"10.0.1.{index}", user=f"user{index}")
    assert len(throttle) == 200
    fail(throttle, 10.0, address="10.0.2.1", user=None)
    assert len(throttle) == 1


def test_blocked_entries_outlive_the_window() -> None:
    config = ThrottleConfig(max_failures=1, failure_window=10.0, block_time=100.0)
    throttle = LoginThrottle(config)
    fail(throttle, 0.0, user=None)
    fail(throttle, 1.0, user=None)
    fail(throttle, 50.0, address=OTHER_IP, user=None)  # prunes, but not the blocked address
    assert throttle.address_blocked(IP, 50.0)
    fail(throttle, 101.0, address=OTHER_IP, user=None)
    assert len(throttle) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"failure_delay": 20.0}, "need 0 <= failure_delay <= failure_delay_max"),
        ({"failure_delay": -1.0}, "need 0 <= failure_delay <= failure_delay_max"),
        ({"max_failures": 0}, "max_failures and max_tracked must be at least 1"),
        ({"max_tracked": 0}, "max_failures and max_tracked must be at least 1"),
        (
            {"failure_window": 0.0},
            "failure_window must be positive and block_time not negative",
        ),
    ],
)
def test_config_validation(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        ThrottleConfig(**kwargs)  # type: ignore[arg-type]
    assert str(excinfo.value) == message


# --- LOGIN-DELAY (RFC 2449 section 6.5) ----------------------------------------------


def test_login_delay() -> None:
    tracker = LoginDelayTracker(300.0)
    assert tracker.check("bob", 1000.0) is None
    tracker.record_login("bob", 1000.0)
    assert tracker.check("bob", 1000.0) == 300.0
    assert tracker.check("bob", 1200.0) == 100.0
    assert tracker.check("bob", 1299.5) == 0.5
    assert tracker.check("bob", 1300.0) is None
    assert tracker.check("alice", 1100.0) is None


def test_login_delay_counts_from_the_latest_login() -> None:
    tracker = LoginDelayTracker(60.0)
    tracker.record_login("bob", 0.0)
    tracker.record_login("bob", 100.0)
    assert tracker.check("bob", 130.0) == 30.0


def test_login_delay_zero_never_refuses() -> None:
    tracker = LoginDelayTracker(0.0)
    tracker.record_login("bob", 5.0)
    assert tracker.check("bob", 5.0) is None
    assert len(tracker) == 0


def test_login_delay_memory_is_bounded() -> None:
    tracker = LoginDelayTracker(60.0, max_tracked=2)
    for index in range(3):
        tracker.record_login(f"user{index}", float(index))
    assert len(tracker) == 2
    assert tracker.check("user0", 3.0) is None  # evicted
    assert tracker.check("user2", 3.0) == 59.0
    tracker.record_login("user3", 100.0)  # the others are 60 s old: pruned
    assert len(tracker) == 1


def test_login_delay_validation() -> None:
    with pytest.raises(ValueError, match="login_delay must not be negative"):
        LoginDelayTracker(-1.0)
