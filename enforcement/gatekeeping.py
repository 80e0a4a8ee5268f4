"""The gate inside the application: building it, feeding it from the log, and turning its
denials into AUP §3 reports.

- ``GateApplier`` applies gate-state events (limits, throttles, status) idempotently and in
  order: the gate itself refuses an update older than what it holds (by stream version), and the
  account status is always taken from the current standing, so a late message cannot undo a
  newer state (e.g. a ``SuspensionEnded`` arriving after a termination).
- ``AbuseDetector`` reports ``sustained_abuse`` once the account's denials reach the policy's
  ``sustained_abuse_denials`` within its window (POLICY.md: throttled, no strike), and files an
  abuse report of ``rate_limit_circumvention`` for an operator to triage when three or more keys
  were denied within a minute (no strike until confirmed; one open at a time), each at most
  once per window (an idempotency key per window). A ``sustained_abuse`` is raised once per
  bout, not once per window: only while no sustained-abuse throttle is in force, checked again
  on the state it is appended to (``EnforcementService.report_gate_sustained_abuse``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from enforcement.gate import EmbeddedGate, Gate, GateDecision
from enforcement.policy import (
    Policy,
    ViolationReport,
    abuse_report_open,
    sustained_abuse_due,
    sustained_abuse_throttle_end,
)
from enforcement.service import Actor, Clock, EnforcementService, request_fingerprint
from enforcement.settings import Settings
from enforcement.workers.relay import GATE_EVENTS
from events import EventStore, RecordedEvent
from events.errors import causes
from events.timefmt import parse_time, to_utc
from projections.aup_events import GATE_SOURCE
from projections.standing import StandingState, active_suspension, active_throttles
from projections.stored import StandingRepository, iter_stored_states

log = logging.getLogger("enforcement.gate")
GATE_ACTOR = Actor(name="gate", correlation_id="gate", source=GATE_SOURCE)
CIRCUMVENTION_KEYS = 3
# A denial that found a report not due by the account's state (throttled for the bout, a report
# awaiting triage) holds its window at most this long before the standing is read again: an
# operator's lift or triage is seen within it, at one read per account per interval.
STATE_RECHECK_S = 30.0


PUSH_TIMEOUT_S = 0.25  # a push to the Redis gate gives up after this (the relay follows)
# An embedded gate learns an active account again after this: several serve processes without
# Redis each tell only their own gate what they decide (docs/design.md, "Known limits").
EMBEDDED_RELEARN_S = 30.0


def _gate_options(settings: Settings, policy: Policy) -> dict[str, Any]:
    rule = policy.sustained_abuse_denials  # AbuseDetector compares the gate's count with it
    return {
        "default_rpm": settings.default_rpm,
        "default_tpd": settings.default_tpd,
        "denial_window_s": int(rule.window.total_seconds()),
        "denial_count": rule.count,
    }


def build_gate(settings: Settings, policy: Policy, clock: Callable[[], float] = time.time) -> Gate:
    """The gate of ``settings``: on Redis (whose own clock it reads), else in process, reading
    ``clock`` (seconds since the epoch: the use cases' clock, so that a throttle they record
    ends in the gate when it ends for them)."""
    options = _gate_options(settings, policy)
    if settings.redis_url:
        from enforcement.gate import RedisGate  # redis-py only when it is used

        return RedisGate.from_url(settings.redis_url, settings.redis_timeout_ms / 1000, **options)
    return EmbeddedGate(clock=clock, relearn_s=EMBEDDED_RELEARN_S, **options)


def build_push_gate(settings: Settings, policy: Policy, gate: Gate) -> Gate:
    """The gate ``GatePush`` writes to: ``gate`` itself in process; on Redis the same store
    through a client of its own whose commands give up after ``PUSH_TIMEOUT_S``."""
    if not settings.redis_url:
        return gate
    from enforcement.gate import RedisGate
    from enforcement.redis_client import bounded_client

    if not isinstance(gate, RedisGate):
        return gate
    client = bounded_client(settings.redis_url, PUSH_TIMEOUT_S, retries=0)
    return RedisGate(client, owns_client=True, **_gate_options(settings, policy))


def apply_state(
    gate: Gate, state: StandingState, now: datetime, *, reconcile: bool = False
) -> None:
    """Bring the gate to ``state`` (stale-safe: everything carries ``state.version``).
    ``reconcile``: also lift the throttles the gate holds that the state no longer has in force
    (lifted while the message that said so was lost; one more read per account)."""
    if state.version == 0:
        return
    if state.account_rate_limit is not None:
        _apply_limits(gate, state, None)
    for key_id in state.key_rate_limits:
        _apply_limits(gate, state, key_id)
    active = {t.throttle_id for t in active_throttles(state, now)}
    for throttle_id in state.throttles:
        _apply_throttle(gate, state, throttle_id, active)
    if reconcile:
        for throttle_id in gate.throttle_ids(state.account_id) - active:
            gate.lift_throttle(state.account_id, throttle_id, state.version)
    _apply_status(gate, state, now)


def _apply_limits(gate: Gate, state: StandingState, key_id: str | None) -> None:
    r = state.account_rate_limit if key_id is None else state.key_rate_limits.get(key_id)
    if r is not None:
        rpm, tpd = r.requests_per_minute, r.tokens_per_day
        gate.set_limits(state.account_id, key_id, rpm, tpd, state.version)


def _apply_throttle(gate: Gate, state: StandingState, throttle_id: str, active: set[str]) -> None:
    t = state.throttles.get(throttle_id)
    if t is not None and throttle_id in active:
        expires = parse_time(t.expires_at) if t.expires_at else None
        gate.apply_throttle(
            state.account_id, throttle_id, t.key_id, t.factor, expires, state.version
        )
    else:
        gate.lift_throttle(state.account_id, throttle_id, state.version)


def _apply_status(gate: Gate, state: StandingState, now: datetime) -> None:
    suspension = active_suspension(state, now)
    if state.terminated:
        gate.set_status(state.account_id, "terminated", None, state.version)
    elif suspension is not None:
        until = parse_time(suspension.until) if suspension.until else None
        gate.set_status(state.account_id, "suspended", until, state.version)
    else:
        gate.set_status(state.account_id, "active", None, state.version)


_STATUS_EVENTS = frozenset(
    {"AccountSuspended", "SuspensionEnded", "AccountReinstated", "AccountTerminated"}
)


def apply_changes(
    gate: Gate, state: StandingState, events: Sequence[RecordedEvent], now: datetime
) -> None:
    """What ``events`` changed of the gate's state, from ``state`` (the account after them):
    the status first (what refuses the next request), then each throttle and limit they name.
    The rest of the account's gate state is as it was, so a push costs one call per change (and
    a change of status one read more: ``holds_status``)."""
    if any(e.type in _STATUS_EVENTS for e in events):
        # A status makes the account known to the gate: its seeder will not run for it. A gate
        # that had not learned it (a fresh embedded gate, Redis after a data loss) is given the
        # rest of the standing too (status first: what refuses the next request).
        learned = gate.holds_status(state.account_id)
        _apply_status(gate, state, now)
        if not learned:
            apply_state(gate, state, now, reconcile=True)
            return
    active: set[str] | None = None
    for e in events:
        if e.type in ("ThrottleApplied", "ThrottleLifted"):
            if active is None:
                active = {t.throttle_id for t in active_throttles(state, now)}
            _apply_throttle(gate, state, e.data["throttle_id"], active)
        elif e.type == "RateLimitsConfigured":
            _apply_limits(gate, state, e.data["key_id"])


class GateApplier:
    """The ``apply_gate_state`` actor's body: one event id in, the gate brought up to date."""

    def __init__(
        self, gate: Gate, store: EventStore, standings_repo: StandingRepository, clock: object
    ):
        self.gate = gate
        self.store = store
        self.standings = standings_repo
        self.clock = clock

    def __call__(self, event_id: str) -> None:
        event: RecordedEvent | None = self.store.get_event(event_id)
        if event is None:
            return
        state = self.standings.load(event.account_id)
        # The state no longer holds a lifted throttle: after a lift, reconcile with the gate's.
        apply_state(
            self.gate,
            state,
            to_utc(self.clock()),  # type: ignore[operator]
            reconcile=event.type == "ThrottleLifted",
        )


class GateSeeder:
    """The gate's seeder (``Gate.set_seeder``): an account the gate holds no status for (never
    told since it started, expired, or lost when Redis lost its data) is brought to its stored
    standing before its first check, so that a restart of the gate's store, or of an embedded
    gate's process, never lets a suspended or terminated account through until a re-seed.

    An account with no events is recorded as active at version 0; any event of it is newer.
    Stale-safe like every update: a decision committed meanwhile carries a higher version.
    """

    def __init__(self, gate: Gate, standings: StandingRepository, clock: Clock) -> None:
        self.gate = gate
        self.standings = standings
        self.clock = clock

    def __call__(self, account_id: str) -> None:
        state = self.standings.load(account_id)
        if state.version == 0:
            self.gate.set_status(account_id, "active", None, 0)
        else:
            apply_state(self.gate, state, to_utc(self.clock()), reconcile=True)


class GatePush:
    """The service's ``after_commit``: what a committed decision changed of the gate (a
    suspension, a throttle, limits, …) reaches it before the request answers, not only when the
    relay's ``apply_gate_state`` message is handled, so that the next request is refused at once.

    The relay's message still follows (the log is the outbox: nothing depends on this push);
    both are stale-safe by version. The push is a shortcut, so it never fails a decision and
    delays one by at most ``PUSH_TIMEOUT_S``: on Redis it has a client of its own with that
    timeout and no retry (``build_push_gate``);
    a push that fails is logged, and when it failed only after waiting (``slow_s`` or more: a
    Redis that hangs), for ``quiet_s`` after it none is tried (each would wait for the same
    timeout), the relay alone then telling the gate. One refused at once (a Redis down or
    restarting refuses the connection) is no reason to wait: the next decision pushes again;
    a connection refused counts so however long it was measured (a thread of a busy process
    may wait for the GIL long after the refusal came).
    Before, any failure stopped the pushes for 10 s, and a Redis restarted within that time
    (a fraction of a second) got none: a suspension decided then reached the gate only with
    the relay, seconds later with the leading worker dead (the production crash soak).
    """

    def __init__(
        self,
        gate: Gate,
        quiet_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        slow_s: float = PUSH_TIMEOUT_S / 2,
    ) -> None:
        self.gate = gate
        self.quiet_s = quiet_s
        self.slow_s = slow_s
        self._clock = clock
        self._quiet_until = 0.0
        self._said_until = 0.0  # a push refused at once is logged once in ``quiet_s``

    def __call__(
        self, state: StandingState, events: Sequence[RecordedEvent], now: datetime
    ) -> None:
        if not any(e.type in GATE_EVENTS for e in events):
            return
        started = self._clock()
        if started < self._quiet_until:
            return
        try:
            apply_changes(self.gate, state, events, now)
        except Exception as exc:  # the relay's message applies it again
            failed_at = self._clock()
            if failed_at - started < self.slow_s or _refused_connection(exc):
                if failed_at >= self._said_until:
                    self._said_until = failed_at + self.quiet_s
                    log.warning("gate not updated after commit; the relay will", exc_info=True)
                return
            self._quiet_until = failed_at + self.quiet_s
            log.warning(
                "gate not updated after commit; the relay will (no push for %.0fs)",
                self.quiet_s,
                exc_info=True,
            )


def _refused_connection(error: BaseException) -> bool:
    """Whether ``error`` came from a connection refused (in its causes: redis-py raises its own
    error while it handles the socket's, the Redis gate wraps that in ``GateUnavailable``). A
    refusal comes at once, however long the thread then waited to run again (the GIL, in a busy
    process): it is never a Redis that hangs."""
    return any(isinstance(cause, ConnectionRefusedError) for cause in causes(error))


# What ``apply_state`` reads of a state besides its head.
GATE_TABLES = ("throttles", "key_rate_limits")


def seed_gate(gate: Gate, store: EventStore, now: datetime, page_size: int = 500) -> int:
    """Apply every stored standing to the gate (start-up of an in-process gate)."""
    count = 0
    for state in iter_stored_states(store, page_size, kinds=GATE_TABLES):
        apply_state(gate, state, now, reconcile=True)
        count += 1
    return count


def gate_report_key(category: str, account_id: str, bucket: int) -> str:
    """The idempotency key of the gate's report of ``category`` for one window (``bucket``)."""
    return f"gate:{category}:{account_id}:{bucket}"


class AbuseDetector:
    """Raises AUP §3 reports from gate denials, at most once per window per account."""

    def __init__(self, service: EnforcementService, policy: Policy):
        self.service = service
        self.policy = policy
        # (account, category, window) claimed, and until when (epoch seconds): the window's
        # end, or sooner when the account's state made the category not due (``_hold``).
        self._claims: dict[tuple[str, str, int], float] = {}
        self._lock = threading.Lock()

    def observe(self, account_id: str, key_id: str, decision: GateDecision) -> tuple[str, ...]:
        """The AUP §3 reports this denial records: ``sustained_abuse`` once the account's
        denials reach the policy's count, and a ``rate_limit_circumvention`` report once three
        keys were denied within a minute. Each is judged on its own: an account throttled for
        sustained abuse that goes on rotating keys is still filed for triage."""
        if decision.reason not in ("rate_limited", "token_quota_exceeded"):
            return ()
        rule = self.policy.sustained_abuse_denials
        window_s = max(1, int(rule.window.total_seconds()))
        due = []
        if decision.denials_in_window >= rule.count:
            due.append("sustained_abuse")
        if decision.denied_keys_last_minute >= CIRCUMVENTION_KEYS:
            due.append("rate_limit_circumvention")
        if not due:
            return ()
        now = to_utc(self.service.clock())
        bucket = int(now.timestamp()) // window_s
        # One read for both categories, once one claims its window (their holds end together:
        # one read per interval); a read that failed is tried again by the next category.
        standing = functools.cache(functools.partial(self.service.standings.load, account_id))
        return tuple(
            category
            for category in due
            if self._record(category, account_id, key_id, decision, now, bucket, window_s, standing)
        )

    def _record(
        self,
        category: str,
        account_id: str,
        key_id: str,
        decision: GateDecision,
        now: datetime,
        bucket: int,
        window_s: int,
        standing_of: Callable[[], StandingState],
    ) -> bool:
        """Record ``category`` for this denial unless this window already claimed it, or the
        account's state says it is not due (already throttled for the bout; a report already
        open); whether it was recorded."""
        marker = (account_id, category, bucket)
        window_end = float((bucket + 1) * window_s)
        # Claim the window before reading the standing: once past the count every denial of
        # the window comes here, and an abusive client must not make each one a database read.
        with self._lock:
            if now.timestamp() < self._claims.get(marker, 0.0):
                return False
            if len(self._claims) > 100_000:
                self._claims.clear()
            self._claims[marker] = window_end
        try:
            standing = standing_of()
        except Exception:  # the denial is answered all the same; a later one tries again
            log.exception("could not read the standing of %s", account_id)
            self._unclaim(marker)
            return False
        key = gate_report_key(category, account_id, bucket)
        fingerprint = request_fingerprint(
            {"account": account_id, "category": category, "bucket": bucket}
        )
        try:
            if category == "sustained_abuse":
                # A filter (the standing read may be older than a throttle being recorded): the
                # service decides again on the state it appends to.
                if not sustained_abuse_due(self.policy, standing, decision.denials_in_window, now):
                    # Throttled for this bout already: the window is held only until that
                    # throttle runs out, and a bout that goes on after it is raised then.
                    end = sustained_abuse_throttle_end(standing, now)
                    self._hold(marker, now, window_end, end)
                    return False
                report = ViolationReport(
                    category=category,
                    occurred_at=now,
                    key_id=key_id,
                    source=GATE_SOURCE,
                    detection="automated",
                    description=f"{decision.denials_in_window} gate denials within {window_s}s",
                )
                outcome = self.service.report_gate_sustained_abuse(
                    account_id, report, decision.denials_in_window, key, fingerprint, GATE_ACTOR
                )
                if not outcome.events:  # throttled for this bout meanwhile: held as above
                    self._hold(marker, now, window_end, None)
                return bool(outcome.events)
            if abuse_report_open(standing, category):
                # A filter, as above: the service looks again where it files the report.
                self._hold(marker, now, window_end, None)
                return False  # one already waits for an operator
            filed = self.service.file_gate_abuse_report(
                account_id,
                category,
                f"{decision.denied_keys_last_minute} keys of the account were denied within "
                f"one minute (the last: {key_id!r}). Filed by the gate for an operator to "
                "triage: several keys used to exceed quotas are prohibited (AUP §3), but "
                "denials alone do not show the purpose, and the account-wide ceiling may be "
                "what denied them.",
                key,
                fingerprint,
                GATE_ACTOR,
            )
            if not filed.events:  # filed meanwhile (a denial of another window): held as above
                self._hold(marker, now, window_end, None)
            return bool(filed.events)
        except Exception:
            log.exception("could not record %s for %s", category, account_id)
            self._unclaim(marker)
            return False

    def _hold(
        self,
        marker: tuple[str, str, int],
        now: datetime,
        window_end: float,
        state_end: datetime | None,
    ) -> None:
        """Hold a window the account's state made not due until the state is read again: at
        the window's end, the end the state gave (``state_end``), or ``STATE_RECHECK_S`` from
        ``now``, whichever comes first."""
        held = min(window_end, now.timestamp() + STATE_RECHECK_S)
        if state_end is not None:
            held = min(held, state_end.timestamp())
        with self._lock:
            self._claims[marker] = held

    def _unclaim(self, marker: tuple[str, str, int]) -> None:
        with self._lock:
            self._claims.pop(marker, None)
