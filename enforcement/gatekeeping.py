"""The gate inside the application: building it, feeding it from the log, and turning its
denials into AUP §3 violations.

- ``GateApplier`` applies gate-state events (limits, throttles, status) idempotently and in
  order: the gate itself refuses an update older than what it holds (by stream version), and the
  account status is always taken from the current standing, so a late message cannot undo a
  newer state (e.g. a ``SuspensionEnded`` arriving after a termination).
- ``AbuseDetector`` reports ``sustained_abuse`` once the account's denials reach the policy's
  ``sustained_abuse_denials`` within its window, and ``rate_limit_circumvention`` when three or
  more keys were denied within a minute, each once per window (an idempotency key per window).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from enforcement.gate import EmbeddedGate, Gate, GateDecision, RedisGate
from enforcement.policy import Policy, ViolationReport, sustained_abuse_due
from enforcement.service import Actor, EnforcementService, request_fingerprint
from enforcement.settings import Settings
from enforcement.workers.relay import GATE_EVENTS
from events import EventStore, RecordedEvent
from events.timefmt import parse_time, to_utc
from projections.standing import StandingState, active_suspension, active_throttles
from projections.stored import StandingRepository, iter_stored_states

log = logging.getLogger("enforcement.gate")
GATE_ACTOR = Actor(name="gate", correlation_id="gate", source="gate")
CIRCUMVENTION_KEYS = 3


def build_gate(settings: Settings, policy: Policy) -> Gate:
    window = int(policy.sustained_abuse_denials.window.total_seconds())
    options: dict[str, Any] = {
        "default_rpm": settings.default_rpm,
        "default_tpd": settings.default_tpd,
        "denial_window_s": max(window, 60),
    }
    if settings.redis_url:
        return RedisGate.from_url(settings.redis_url, **options)
    return EmbeddedGate(**options)


def apply_state(
    gate: Gate, state: StandingState, now: datetime, *, reconcile: bool = False
) -> None:
    """Bring the gate to ``state`` (stale-safe: everything carries ``state.version``).
    ``reconcile``: also lift the throttles the gate holds that the state no longer has in force
    (lifted while the message that said so was lost; one more read per account)."""
    version = state.version
    if version == 0:
        return
    if state.account_rate_limit is not None:
        r = state.account_rate_limit
        gate.set_limits(state.account_id, None, r.requests_per_minute, r.tokens_per_day, version)
    for key_id, r in state.key_rate_limits.items():
        gate.set_limits(state.account_id, key_id, r.requests_per_minute, r.tokens_per_day, version)
    active = {t.throttle_id for t in active_throttles(state, now)}
    for t in state.throttles.values():
        if t.throttle_id in active:
            gate.apply_throttle(
                state.account_id,
                t.throttle_id,
                t.key_id,
                t.factor,
                parse_time(t.expires_at) if t.expires_at else None,
                version,
            )
        else:
            gate.lift_throttle(state.account_id, t.throttle_id, version)
    if reconcile:
        for throttle_id in gate.throttle_ids(state.account_id) - active:
            gate.lift_throttle(state.account_id, throttle_id, version)
    suspension = active_suspension(state, now)
    if state.terminated:
        gate.set_status(state.account_id, "terminated", None, version)
    elif suspension is not None:
        until = parse_time(suspension.until) if suspension.until else None
        gate.set_status(state.account_id, "suspended", until, version)
    else:
        gate.set_status(state.account_id, "active", None, version)


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


class GatePush:
    """The service's ``after_commit``: a decision that changes the gate (a suspension, a
    throttle, limits, …) reaches the gate as soon as it is committed, not only when the relay's
    ``apply_gate_state`` message is handled, so that the next request is refused at once.

    The relay's message still follows (the log is the outbox: nothing depends on this push);
    both apply the same state, stale-safe by version. A gate that does not answer is logged
    and left to the relay: the decision is committed, and the request that made it succeeds.
    """

    def __init__(self, gate: Gate) -> None:
        self.gate = gate

    def __call__(
        self, state: StandingState, events: Sequence[RecordedEvent], now: datetime
    ) -> None:
        if not any(e.type in GATE_EVENTS for e in events):
            return
        lifted = any(e.type == "ThrottleLifted" for e in events)
        try:
            apply_state(self.gate, state, now, reconcile=lifted)
        except Exception:  # the relay's message applies it again
            log.warning("gate not updated after commit; the relay will", exc_info=True)


# What ``apply_state`` reads of a state besides its head.
GATE_TABLES = ("throttles", "key_rate_limits")


def seed_gate(gate: Gate, store: EventStore, now: datetime, page_size: int = 500) -> int:
    """Apply every stored standing to the gate (start-up of an in-process gate)."""
    count = 0
    for state in iter_stored_states(store, page_size, kinds=GATE_TABLES):
        apply_state(gate, state, now, reconcile=True)
        count += 1
    return count


class AbuseDetector:
    """Raises AUP §3 violations from gate denials, once per window per account."""

    def __init__(self, service: EnforcementService, policy: Policy):
        self.service = service
        self.policy = policy
        self._reported: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def observe(self, account_id: str, key_id: str, decision: GateDecision) -> str | None:
        if decision.reason not in ("rate_limited", "token_quota_exceeded"):
            return None
        rule = self.policy.sustained_abuse_denials
        window_s = max(1, int(rule.window.total_seconds()))
        if decision.denials_in_window >= rule.count:
            category = "sustained_abuse"
        elif decision.denied_keys_last_minute >= CIRCUMVENTION_KEYS:
            category = "rate_limit_circumvention"
        else:
            return None
        now = to_utc(self.service.clock())
        if category == "sustained_abuse" and not sustained_abuse_due(
            self.policy, self.service.standings.load(account_id), decision.denials_in_window, now
        ):
            return None  # already throttled for this bout of abuse
        bucket = int(now.timestamp()) // window_s
        marker = (account_id, category, bucket)
        with self._lock:
            if marker in self._reported:
                return None
            if len(self._reported) > 100_000:
                self._reported.clear()
            self._reported.add(marker)
        description = (
            f"{decision.denials_in_window} gate denials within {window_s}s"
            if category == "sustained_abuse"
            else f"{decision.denied_keys_last_minute} keys denied within one minute"
        )
        report = ViolationReport(
            category=category,
            occurred_at=now,
            key_id=key_id,
            source="gate",
            detection="automated",
            description=description,
        )
        key = f"gate:{category}:{account_id}:{bucket}"
        try:
            self.service.report_violation(
                account_id,
                report,
                GATE_ACTOR,
                key,
                request_fingerprint(
                    {"account": account_id, "category": category, "bucket": bucket}
                ),
            )
        except Exception:
            log.exception("could not record %s for %s", category, account_id)
            with self._lock:
                self._reported.discard(marker)
            return None
        return category
