"""Brute-force throttling and RFC 2449 LOGIN-DELAY state. Pure: no clock, no I/O.

Every method takes `now`, monotonic seconds from the caller (time.monotonic() in the
server), so tests replay exact sequences. Memory is bounded: at most `max_tracked` keys,
the least recently failed evicted first, and entries that can no longer matter are pruned
as a side effect of later calls.

The failure delay follows Dovecot's auth penalty (auth-penalty.c: AUTH_PENALTY_INIT_SECS 2,
doubling up to AUTH_PENALTY_MAX_SECS 15), counted per client address. Blocking counts
failures per address and per user name; blocking a user means anyone can lock that user out
for `block_time` by failing often enough, the price of stopping distributed guessing.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

__all__ = ["LoginDelayTracker", "LoginThrottle", "ThrottleConfig"]

_ADDRESS = "address"
_USER = "user"


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    # Seconds before a failed login's reply: failure_delay * 2**(earlier failures from the
    # address inside failure_window), at most failure_delay_max (Dovecot: 2 and 15).
    failure_delay: float = 2.0
    failure_delay_max: float = 15.0
    # More than max_failures failures inside failure_window block the address (or user)
    # for block_time after the last of them.
    max_failures: int = 10
    failure_window: float = 600.0
    block_time: float = 600.0
    # Addresses plus user names remembered at once; ~200 bytes each.
    max_tracked: int = 100_000

    def __post_init__(self) -> None:
        if not 0 <= self.failure_delay <= self.failure_delay_max:
            raise ValueError("need 0 <= failure_delay <= failure_delay_max")
        if self.max_failures < 1 or self.max_tracked < 1:
            raise ValueError("max_failures and max_tracked must be at least 1")
        if self.failure_window <= 0 or self.block_time < 0:
            raise ValueError("failure_window must be positive and block_time not negative")


class _Failures:
    """Recent failure times of one address or user, oldest first."""

    __slots__ = ("blocked_until", "times")

    def __init__(self, keep: int) -> None:
        # Only the count up to max_failures + 1 matters, for blocking and for the delay.
        self.times: deque[float] = deque(maxlen=keep)
        self.blocked_until = float("-inf")

    def count(self, now: float, window: float) -> int:
        while self.times and self.times[0] <= now - window:
            self.times.popleft()
        return len(self.times)


class LoginThrottle:
    """Failed-login bookkeeping per client address and per user name.

    On a failed login the server asks failure_delay() first (it counts the failures
    before this one), then calls record_failure(); on success, record_success().
    """

    def __init__(self, config: ThrottleConfig | None = None) -> None:
        self.config = config or ThrottleConfig()
        # Least recently failed first, so pruning and eviction look at the front only.
        self._entries: OrderedDict[tuple[str, str], _Failures] = OrderedDict()

    def __len__(self) -> int:
        """Addresses plus user names currently remembered."""
        return len(self._entries)

    def failure_delay(self, address: str, now: float) -> float:
        entry = self._entries.get((_ADDRESS, address))
        earlier = entry.count(now, self.config.failure_window) if entry else 0
        # 2**60 dwarfs any maximum; the cap keeps a huge max_failures from overflowing.
        delay = self.config.failure_delay * 2 ** min(earlier, 60)
        return float(min(delay, self.config.failure_delay_max))

    def record_failure(self, address: str, user: str | None, now: float) -> None:
        self._prune(now)
        self._record((_ADDRESS, address), now)
        if user is not None:
            self._record((_USER, user), now)

    def record_success(self, address: str, user: str | None, now: float) -> None:
        self._entries.pop((_ADDRESS, address), None)
        if user is not None:
            self._entries.pop((_USER, user), None)
        self._prune(now)

    def address_blocked(self, address: str, now: float) -> bool:
        return self._blocked((_ADDRESS, address), now)

    def user_blocked(self, user: str, now: float) -> bool:
        return self._blocked((_USER, user), now)

    def _blocked(self, key: tuple[str, str], now: float) -> bool:
        entry = self._entries.get(key)
        return entry is not None and now < entry.blocked_until

    def _record(self, key: tuple[str, str], now: float) -> None:
        config = self.config
        entry = self._entries.pop(key, None) or _Failures(config.max_failures + 1)
        self._entries[key] = entry  # now the most recent
        entry.count(now, config.failure_window)
        entry.times.append(now)
        if len(entry.times) > config.max_failures:
            entry.blocked_until = now + config.block_time
        while len(self._entries) > config.max_tracked:
            self._entries.popitem(last=False)

    def _prune(self, now: float) -> None:
        """Forget keys whose last failure is out of the window and whose block is over."""
        while self._entries:
            entry = next(iter(self._entries.values()))
            last = entry.times[-1] if entry.times else float("-inf")
            if now - last < self.config.failure_window or now < entry.blocked_until:
                break
            self._entries.popitem(last=False)


class LoginDelayTracker:
    """RFC 2449 section 6.5 LOGIN-DELAY: the least seconds between a user's logins.

    Remembers each user's last successful login while it can still matter (login_delay
    seconds), at most max_tracked users (the oldest forgotten first).
    """

    def __init__(self, login_delay: float, max_tracked: int = 100_000) -> None:
        if login_delay < 0 or max_tracked < 1:
            raise ValueError("login_delay must not be negative, max_tracked at least 1")
        self.login_delay = login_delay
        self.max_tracked = max_tracked
        # Oldest login first.
        self._last: OrderedDict[str, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def check(self, user: str, now: float) -> float | None:
        """Seconds until `user` may log in again, or None if a login now is allowed."""
        self._prune(now)
        last = self._last.get(user)
        if last is None:
            return None
        remaining = last + self.login_delay - now
        return remaining if remaining > 0 else None

    def record_login(self, user: str, now: float) -> None:
        self._last.pop(user, None)
        self._last[user] = now
        self._prune(now)
        while len(self._last) > self.max_tracked:
            self._last.popitem(last=False)

    def _prune(self, now: float) -> None:
        while self._last:
            user, last = next(iter(self._last.items()))
            if now - last < self.login_delay:
                break
            del self._last[user]
