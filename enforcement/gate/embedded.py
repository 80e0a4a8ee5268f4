"""The gate in process, for embedded mode: one lock, time from an injectable clock."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from enforcement.gate import core
from enforcement.gate.base import Gate, GateUnavailable
from enforcement.gate.decision import REASONS, DenialStats, GateDecision

Clock = Callable[[], float]  # seconds since the epoch, like time.time
log = logging.getLogger("enforcement.gate")

SWEEP_EVERY_US = 60 * core.US


@dataclass(slots=True)
class _Usage:
    tat: int = 0  # GCRA theoretical arrival time, µs
    window: int = -1  # token window index
    used: int = 0  # tokens used in that window


@dataclass(slots=True)
class _Account:
    status: tuple[str, int, int] | None = None  # (status, until_ms, version)
    limits: dict[str | None, tuple[int, int, int]] = field(default_factory=dict)  # rpm, tpd, v
    throttles: dict[str, core.Throttle] = field(default_factory=dict)
    usage: dict[str | None, _Usage] = field(default_factory=dict)  # None: the account ceiling
    denials: deque[int] = field(default_factory=deque)  # the latest denials' times, µs
    denied_keys: dict[str, int] = field(default_factory=dict)  # key id → last denial, µs
    # When the seeder last brought it to the stored standing (µs; 0: never). Not compared: an
    # account idle but for what the seeder wrote is idle whenever it was learned.
    learned_us: int = field(default=0, compare=False)


class EmbeddedGate(Gate):
    """Same behaviour as ``RedisGate``, in this process only (thread-safe).

    ``relearn_s``: with a seeder, also learn an account again once that long has passed since
    it was last learned, so that decisions committed by other processes (which tell only their
    own gates) reach this one within that time. None: only accounts it holds no status for.
    """

    def __init__(
        self, *, clock: Clock = time.time, relearn_s: float | None = None, **settings: int
    ) -> None:
        super().__init__(**settings)
        if relearn_s is not None and not relearn_s > 0:
            raise ValueError("relearn_s must be positive")
        self._relearn_us = None if relearn_s is None else int(relearn_s * core.US)
        self._clock = clock
        self._lock = threading.Lock()
        self._accounts: dict[str, _Account] = {}
        self._denial_window_us = self.denial_window_s * core.US
        self._window_us = self.token_window_s * core.US
        self._next_sweep = 0
        self._warned_us = -(2**62)  # when a relearning failure was last logged
        self._unwarned = 0  # failures since, not logged

    def _now(self) -> int:
        return int(self._clock() * core.US)

    def _relearn_failed(self, account_id: str, exc: GateUnavailable) -> None:
        """Note a failed relearning; warn at most once per ``relearn_s`` for the whole gate."""
        with self._lock:
            now = self._now()
            known = self._accounts.get(account_id)
            if known is not None:
                known.learned_us = max(known.learned_us, now)
            assert self._relearn_us is not None  # only held accounts are learned again
            if now - self._warned_us < self._relearn_us:
                self._unwarned += 1
                return
            suppressed, self._unwarned, self._warned_us = self._unwarned, 0, now
        log.warning(
            "could not learn account %s again (%s); the gate answers from what it holds"
            " (%d more such failures since the last warning)",
            account_id,
            exc,
            suppressed,
        )

    def _clear(self) -> None:
        with self._lock:
            self._accounts.clear()

    def _account(self, account_id: str) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = _Account()
        return account

    def _check(self, account_id: str, key_id: str, tokens: int) -> GateDecision:
        learn, asked = False, 0
        if self._seeder is not None:
            with self._lock:
                # Sweep first: a sweep after the seeder would drop what it wrote for an account
                # without events (idle until this check counts it).
                asked = self._now()
                self._sweep(asked)
                known = self._accounts.get(account_id)
                holds = known is not None and known.status is not None
                learn = not holds or (
                    self._relearn_us is not None
                    and known is not None
                    and asked - known.learned_us >= self._relearn_us
                )
                if learn and holds and known is not None:
                    # Claim the relearning: the checks that come while it runs answer from
                    # what the gate holds instead of each asking the database again.
                    known.learned_us = asked
            if learn:
                try:
                    self._seed(account_id)  # outside the lock: it writes through this gate
                except GateUnavailable as exc:
                    if not holds:
                        raise  # nothing to answer from
                    # Learning again failed: answer from what the gate holds, try again
                    # relearn_s after this failure (not after the ask: the failure may be slow).
                    learn = False
                    self._relearn_failed(account_id, exc)
        with self._lock:
            now = self._now()
            self._sweep(now)
            acct = self._account(account_id)
            if learn:
                acct.learned_us = max(acct.learned_us, asked)
            key_rpm, key_tpd, _ = acct.limits.get(key_id, (self.default_rpm, self.default_tpd, 0))
            acct_rpm, acct_tpd, _ = acct.limits.get(None, (self.default_rpm, self.default_tpd, 0))
            acct_ppm, key_ppm = core.throttle_ppm(acct.throttles, key_id, now // 1000)
            window = now // self._window_us
            window_end = (window + 1) * self._window_us
            key_use = acct.usage.get(key_id) or _Usage()
            acct_use = acct.usage.get(None) or _Usage()
            key_used = key_use.used if key_use.window == window else 0
            acct_used = acct_use.used if acct_use.window == window else 0
            requests = (
                core.request_scope(key_use.tat, core.effective(key_rpm, key_ppm), now),
                core.request_scope(acct_use.tat, core.effective(acct_rpm, acct_ppm), now),
            )
            quota = (
                core.token_scope(
                    key_used, core.effective(key_tpd, key_ppm), tokens, now, window_end
                ),
                core.token_scope(
                    acct_used, core.effective(acct_tpd, acct_ppm), tokens, now, window_end
                ),
            )
            status = acct.status or (None, 0, 0)
            reason, retry_us = core.verdict(
                core.refusal(status[0], status[1], now), requests, quota
            )
            allowed = reason == core.OK
            denials, denied_keys = 0, 0
            if allowed:
                for scope_key, use, used, scope in (
                    (key_id, key_use, key_used, requests[0]),
                    (None, acct_use, acct_used, requests[1]),
                ):
                    acct.usage[scope_key] = _Usage(
                        tat=core.take_request(use.tat, scope.limit, now),
                        window=window,
                        used=used + tokens,
                    )
            elif reason in (core.RATE_LIMITED, core.TOKEN_QUOTA_EXCEEDED):
                denials, denied_keys = self._record_denial(acct, key_id, now)
            req_limit, req_remaining, req_reset = core.binding(*requests, allowed)
            tok_limit, tok_remaining, tok_reset = core.binding(*quota, allowed)
        return GateDecision(
            allowed=allowed,
            reason=REASONS[reason],
            limit_requests=req_limit,
            remaining_requests=req_remaining,
            reset_requests_s=_seconds(req_reset),
            limit_tokens=tok_limit,
            remaining_tokens=tok_remaining,
            reset_tokens_s=_seconds(tok_reset),
            retry_after_s=_seconds(retry_us),
            denials_in_window=denials,
            denied_keys_last_minute=denied_keys,
        )

    def _record_denial(self, acct: _Account, key_id: str, now: int) -> tuple[int, int]:
        count = core.record_denial(acct.denials, now, self.denial_count, self._denial_window_us)
        acct.denied_keys[key_id] = now
        _, keys = self._stats(acct, now)
        if keys > core.DENIED_KEYS_CAP:
            oldest = sorted(acct.denied_keys, key=acct.denied_keys.__getitem__)
            for stale in oldest[: keys - core.DENIED_KEYS_CAP]:
                del acct.denied_keys[stale]
            keys = core.DENIED_KEYS_CAP
        return count, keys

    def _stats(self, acct: _Account, now: int) -> tuple[int, int]:
        """Prune what has left the windows; count what remains."""
        count = core.recent_denials(acct.denials, now - self._denial_window_us)
        horizon = now - core.DENIED_KEYS_WINDOW_US
        for old_key in [k for k, at in acct.denied_keys.items() if at <= horizon]:
            del acct.denied_keys[old_key]
        return count, len(acct.denied_keys)

    def _denial_stats(self, account_id: str) -> DenialStats:
        with self._lock:
            acct = self._accounts.get(account_id)
            count, keys = self._stats(acct, self._now()) if acct else (0, 0)
        return DenialStats(count, self.denial_window_s, keys)

    def _sweep(self, now: int) -> None:
        """Drop usage that has fully refilled and denials that left their windows (bounded)."""
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY_US
        window = now // self._window_us
        for acct in self._accounts.values():
            for scope_key, use in list(acct.usage.items()):
                if use.tat <= now and (use.window != window or use.used == 0):
                    del acct.usage[scope_key]
            self._stats(acct, now)
        # Idle: nothing to keep, or only what a seeder wrote for an account without events
        # (its next check learns that again).
        idle = [a for a, acct in self._accounts.items() if acct in _IDLE]
        for account_id in idle:
            del self._accounts[account_id]

    def _set_limits(
        self, account_id: str, key_id: str | None, rpm: int, tpd: int, version: int
    ) -> bool:
        with self._lock:
            acct = self._account(account_id)
            current = acct.limits.get(key_id)
            if current is not None and current[2] >= version:
                return False
            acct.limits[key_id] = (rpm, tpd, version)
            return True

    def _apply_throttle(
        self,
        account_id: str,
        throttle_id: str,
        key_id: str | None,
        ppm: int,
        expires_ms: int,
        version: int,
    ) -> bool:
        with self._lock:
            acct = self._account(account_id)
            core.prune_throttles(acct.throttles, self._now() // 1000)
            current = acct.throttles.get(throttle_id)
            if current is not None and current.version >= version:
                return False
            acct.throttles[throttle_id] = core.Throttle(key_id, ppm, expires_ms, version)
            core.prune_throttles(acct.throttles, self._now() // 1000)
            return True

    def _lift_throttle(self, account_id: str, throttle_id: str, version: int) -> bool:
        with self._lock:
            acct = self._account(account_id)
            core.prune_throttles(acct.throttles, self._now() // 1000)
            current = acct.throttles.get(throttle_id)
            if current is not None and current.version >= version:
                return False
            if current is None:
                current = core.Throttle(None, core.PPM, 0, version)
            acct.throttles[throttle_id] = core.Throttle(
                current.key_id, current.ppm, current.expires_ms, version, lifted=True
            )
            core.prune_throttles(acct.throttles, self._now() // 1000)
            return True

    def _throttle_ids(self, account_id: str) -> set[str]:
        with self._lock:
            acct = self._accounts.get(account_id)
            if acct is None:
                return set()
            return {i for i, t in acct.throttles.items() if not t.lifted}

    def _holds_status(self, account_id: str) -> bool:
        with self._lock:
            acct = self._accounts.get(account_id)
            return acct is not None and acct.status is not None

    def _set_status(self, account_id: str, status: str, until_ms: int, version: int) -> bool:
        with self._lock:
            acct = self._account(account_id)
            if acct.status is not None and acct.status[2] >= version:
                return False
            acct.status = (status, until_ms, version)
            return True


_IDLE = (_Account(), _Account(status=("active", 0, 0)))


def _seconds(us: int) -> float:
    """Microseconds to seconds, rounded up to the millisecond (never promise too early)."""
    return -(-us // 1000) / 1000
