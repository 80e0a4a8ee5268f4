"""The gate's arithmetic as pure functions over integers (time in microseconds).

The embedded gate calls these; the Redis gate's Lua script (``lua.py``) is a line-by-line twin,
and the shared test suite holds the two to one behaviour. Integers keep both exact: Lua numbers
are doubles, exact below 2**53, and a microsecond timestamp is about 2**51.

- Requests per minute: GCRA with burst = the limit. The emission interval is rounded *up* to a
  whole microsecond, so the sustained rate never exceeds the limit. The stored state is the
  theoretical arrival time (TAT); ``TAT - now`` is the part of the minute in use, so a lowered
  limit (a throttle) keeps the same fraction used.
- Tokens: a fixed window aligned to the epoch (``window_s = 86400``: the UTC day). A request
  needs room for ``max(tokens, 1)``, so an exhausted quota refuses even ``tokens=0`` checks.
- Throttle factors are kept as parts per million, so ``limit * factor`` is exact in both.
- Denials (``sustained_abuse``): the times of the account's ``count`` most recent ones, no more;
  those ``window`` or more before now are forgotten, so what is left is the number of denials
  less than ``window`` old, exact up to ``count`` (which it reaches exactly when the
  ``count``-th most recent denial is less than ``window`` before this one).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

US = 1_000_000
MINUTE_US = 60 * US
PPM = 1_000_000
DENIED_KEYS_WINDOW_US = 60 * US
DENIED_KEYS_CAP = 32  # more than the 3 that rate_limit_circumvention needs; bounds the set
LIFTED_THROTTLES_CAP = 32  # tombstones kept so a late, stale apply cannot revive a lifted throttle

OK, RATE_LIMITED, TOKEN_QUOTA_EXCEEDED, SUSPENDED, TERMINATED = range(5)


@dataclass(frozen=True, slots=True)
class Scope:
    """One limit (key or account, requests or tokens) as it stands before this request."""

    fits: bool
    limit: int
    remaining: int
    reset_us: int
    retry_us: int
    cost: int  # what allowing the request takes from ``remaining``; also added to ``reset_us``
    reset_cost_us: int


@dataclass(frozen=True, slots=True)
class Throttle:
    key_id: str | None  # None: account-wide
    ppm: int
    expires_ms: int  # 0: until lifted
    version: int
    lifted: bool = False

    def active(self, now_ms: int) -> bool:
        return not self.lifted and (self.expires_ms == 0 or now_ms < self.expires_ms)


def effective(limit: int, ppm: int) -> int:
    """``limit * factor`` rounded down, but a throttle never takes a positive limit to zero."""
    if ppm >= PPM:
        return limit
    return max(limit * ppm // PPM, 1) if limit > 0 else 0


def interval_us(limit: int) -> int:
    return -(-MINUTE_US // limit)


def request_scope(tat: int, limit: int, now: int) -> Scope:
    interval = interval_us(limit)
    period = interval * limit
    used = max(tat - now, 0)
    fits = used + interval <= period
    return Scope(
        fits=fits,
        limit=limit,
        remaining=max((period - used) // interval, 0),
        reset_us=used,
        retry_us=0 if fits else used + interval - period,
        cost=1,
        reset_cost_us=interval,
    )


def take_request(tat: int, limit: int, now: int) -> int:
    """The new TAT once a request is allowed."""
    return max(tat, now) + interval_us(limit)


def token_scope(used: int, limit: int, tokens: int, now: int, window_end: int) -> Scope:
    fits = used + max(tokens, 1) <= limit
    return Scope(
        fits=fits,
        limit=limit,
        remaining=max(limit - used, 0),
        reset_us=window_end - now,
        retry_us=0 if fits else window_end - now,
        cost=tokens,
        reset_cost_us=0,
    )


def binding(key: Scope, account: Scope, allowed: bool) -> tuple[int, int, int]:
    """(limit, remaining, reset_us) of the scope with less left; after the request if allowed."""
    k_rem = key.remaining - key.cost if allowed else key.remaining
    a_rem = account.remaining - account.cost if allowed else account.remaining
    k_reset = key.reset_us + key.reset_cost_us if allowed else key.reset_us
    a_reset = account.reset_us + account.reset_cost_us if allowed else account.reset_us
    if a_rem < k_rem or (a_rem == k_rem and account.limit < key.limit):
        return account.limit, max(a_rem, 0), a_reset
    return key.limit, max(k_rem, 0), k_reset


def refusal(status: str | None, until_ms: int, now: int) -> tuple[int, int] | None:
    """(reason, retry_us) when the account's status refuses every request, else None."""
    if status is None or status == "active":
        return None
    if status == "terminated":
        return TERMINATED, 0
    if until_ms == 0:
        return SUSPENDED, 0
    until_us = until_ms * 1000
    return (SUSPENDED, until_us - now) if now < until_us else None


def verdict(
    status: tuple[int, int] | None, requests: tuple[Scope, Scope], tokens: tuple[Scope, Scope]
) -> tuple[int, int]:
    """(reason, retry_us): status first, then the token quota (the longer wait), then rate."""
    if status is not None:
        return status
    token_misses = [s.retry_us for s in tokens if not s.fits]
    request_misses = [s.retry_us for s in requests if not s.fits]
    if token_misses:
        return TOKEN_QUOTA_EXCEEDED, max(token_misses + request_misses)
    if request_misses:
        return RATE_LIMITED, max(request_misses)
    return OK, 0


def throttle_ppm(throttles: dict[str, Throttle], key_id: str, now_ms: int) -> tuple[int, int]:
    """(account ppm, key ppm): the most restrictive active factor for each; key ≤ account."""
    account = PPM
    key = PPM
    for throttle in throttles.values():
        if not throttle.active(now_ms):
            continue
        if throttle.key_id is None:
            account = min(account, throttle.ppm)
        elif throttle.key_id == key_id:
            key = min(key, throttle.ppm)
    return account, min(key, account)


def prune_throttles(throttles: dict[str, Throttle], now_ms: int) -> None:
    """Forget expired throttles (a stale apply of one is expired too) and old tombstones."""
    for throttle_id, throttle in list(throttles.items()):
        if throttle.expires_ms and throttle.expires_ms <= now_ms:
            del throttles[throttle_id]
    lifted = sorted((t.version, i) for i, t in throttles.items() if t.lifted)
    for _, throttle_id in lifted[: max(len(lifted) - LIFTED_THROTTLES_CAP, 0)]:
        del throttles[throttle_id]


def record_denial(times: deque[int], now: int, count: int, window_us: int) -> int:
    """Add a denial at ``now`` to ``times`` (oldest first, at most ``count`` kept); the
    account's denials within the window, this one included, up to ``count``."""
    times.append(now)
    if len(times) > count:
        times.popleft()
    return recent_denials(times, now - window_us)


def recent_denials(times: deque[int], horizon: int) -> int:
    """Forget the denials at ``horizon`` or before (oldest first); how many are left."""
    while times and times[0] <= horizon:
        times.popleft()
    return len(times)
