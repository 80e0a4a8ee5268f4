"""What-if: the decisions another policy would have taken on the violations that were recorded.

For each account, the recorded log is replayed into an in-memory ``StandingState``:

- every ``ViolationReported`` (from ``since`` on) is decided again by ``decide_violation`` of the
  other policy, at the instant the recorded policy decided it (its decisions' ``occurred_at``;
  the store records them a little later, its ``recorded_at``), on the *simulated* state; the
  simulated decisions are applied to that state instead of the recorded ones;
- every ``RemediationExpired`` (from ``since`` on) is decided again too, by
  ``decide_remediation_expired`` of the other policy at the instant it was decided: its
  ``missed_remediation_suspension``, or nothing when the simulated remediation is not due yet
  (a longer ``remediation_window``), was closed, or was never requested. A recorded completion
  after the simulated remediation's due time (a shorter ``remediation_window``) would have been
  refused as overdue: the simulated remediation expires at its due time instead (after a
  decision taken before that time, even one the store recorded after it);
- an appeal that reversed a termination and decided, after its notice, the violations that
  termination held (``policy_appeals.decide_held``): those decisions count as their
  violations' recorded ones, and the other policy decides again, at that instant, the
  violations a termination holds on the simulated state (none when the simulated account was
  not terminated: they were decided when recorded);
- everything else the log holds (operator commands, appeals, abuse-report triage, delivery
  receipts, and every event before ``since``) is applied as recorded, so the simulation meets
  the same dismissals, completions and reversals as reality did. The ids the other policy gives
  its decisions are the recorded ones wherever the two decide the same kind of thing, so a
  recorded appeal or completion still finds what it named; where the other policy took no such
  decision, the recorded event changes nothing.

Each violation's outcome is the harshest decision taken on it (with it, or later for its missed
remediation: the suspension names the remediation's violations), in the severity order
``none < warning < throttle < suspension < termination`` (a longer suspension is harsher, an
indefinite one harsher still; a lower throttle factor, then a longer throttle, is harsher). The
comparison says, per violation, whether the other policy decides *more* (something where
nothing was recorded), *fewer* (nothing where something was), *harsher* or *milder*.

Nothing is written: the log is only read.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from enforcement.decider import as_recorded
from enforcement.policy import (
    Context,
    Policy,
    ViolationReport,
    decide_held,
    decide_remediation_expired,
    decide_violation,
)
from enforcement.render import json_array_item
from events import EventStore, NewEvent, RecordedEvent
from events.timefmt import format_time, parse_time, to_utc
from projections.standing import StandingState, advance_all

E = TypeVar("E", NewEvent, RecordedEvent)  # an event decided again, or as recorded
KINDS = ("none", "warning", "throttle", "suspension", "termination")
CHANGES = ("more", "fewer", "harsher", "milder")
# What the ladder records with a violation, in the same transaction, caused by it (or by one of
# its decisions, for notices).
_LADDER_TYPES = frozenset(
    {
        "ViolationDismissed",
        "RemediationRequested",
        "ThrottleApplied",
        "AccountSuspended",
        "AccountTerminated",
        "AuthorityReferralOpened",
        "NoticeIssued",
    }
)
# Where each kind of decision keeps the id the policy gave it (``Context.new_id`` prefix).
_ID_FIELDS = {
    "ViolationReported": ("vio", "violation_id"),
    "RemediationRequested": ("rem", "remediation_id"),
    "ThrottleApplied": ("thr", "throttle_id"),
    "AccountSuspended": ("sus", "suspension_id"),
    "AuthorityReferralOpened": ("ref", "referral_id"),
    "NoticeIssued": ("ntc", "notice_id"),
}
_INDEFINITE = timedelta.max


class _Decision(Protocol):
    @property
    def type(self) -> str: ...
    @property
    def data(self) -> dict[str, Any]: ...
    @property
    def occurred_at(self) -> datetime: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """The harshest decision taken on one violation."""

    kind: str = "none"
    span: timedelta | None = None  # suspension or throttle length; None: indefinite or n/a
    factor: float | None = None  # throttle factor
    referral: bool = False

    @property
    def rank(self) -> tuple[int, float, timedelta, bool]:
        """Orders outcomes by severity: kind, then (throttles) the lower factor, then the
        longer span (an indefinite one longest), then a referral."""
        span = _INDEFINITE if self.span is None else self.span
        squeeze = 1.0 - self.factor if self.factor is not None else 0.0
        return (KINDS.index(self.kind), squeeze, span, self.referral)

    def describe(self) -> str:
        if self.kind == "suspension":
            return "suspension " + (
                "indefinitely" if self.span is None else f"for {_days(self.span)}"
            )
        if self.kind == "throttle":
            return f"throttle to {self.factor:.0%} for {_days(self.span)}"
        if self.kind == "termination":
            return "termination and referral" if self.referral else "termination"
        return self.kind

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "seconds": None if self.span is None else int(self.span.total_seconds()),
            "factor": self.factor,
            "referral": self.referral,
            "text": self.describe(),
        }


def outcome_of(decisions: Iterable[_Decision]) -> Outcome:
    """The harshest of the decisions recorded (or simulated) on one violation. A suspension
    held behind a longer one (``held_by``) restricts nothing when it is decided: logs from
    before such suspensions were recorded have none, and compare equal."""
    taken = list(decisions)
    referral = any(d.type == "AuthorityReferralOpened" for d in taken)
    found = [Outcome()]
    for d in taken:
        if d.type == "AccountTerminated":
            found.append(Outcome("termination", referral=referral))
        elif d.type == "AccountSuspended" and d.data.get("held_by") is None:
            until = d.data.get("until")
            span = None if until is None else parse_time(until) - to_utc(d.occurred_at)
            found.append(Outcome("suspension", span))
        elif d.type == "ThrottleApplied":
            expires = d.data.get("expires_at")
            span = None if expires is None else parse_time(expires) - to_utc(d.occurred_at)
            found.append(Outcome("throttle", span, float(d.data["factor"])))
        elif d.type == "RemediationRequested":
            found.append(Outcome("warning"))
    return max(found, key=lambda o: o.rank)


def change(recorded: Outcome, simulated: Outcome) -> str | None:
    """``more``, ``fewer``, ``harsher``, ``milder``, or None when they decide the same."""
    if recorded.rank == simulated.rank:
        return None
    if recorded.kind == "none":
        return "more"
    if simulated.kind == "none":
        return "fewer"
    return "harsher" if simulated.rank > recorded.rank else "milder"


@dataclass(frozen=True, slots=True)
class Difference:
    """One violation the other policy would have decided differently."""

    account_id: str
    violation_id: str
    category: str
    recorded_at: datetime
    recorded: Outcome
    simulated: Outcome
    change: str

    def to_json(self) -> dict[str, Any]:
        return {
            "account_id": self.account_id,
            "violation_id": self.violation_id,
            "category": self.category,
            "recorded_at": format_time(self.recorded_at),
            "recorded": self.recorded.to_json(),
            "simulated": self.simulated.to_json(),
            "change": self.change,
        }


@dataclass
class AccountWhatIf:
    """One account's replay: how many violations were compared and which differ."""

    account_id: str
    violations: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def totals(self) -> Counter[str]:
        return Counter(d.change for d in self.differences)

    def to_json(self) -> dict[str, Any]:
        totals = self.totals
        return {
            "account_id": self.account_id,
            "violations": self.violations,
            "totals": {name: totals[name] for name in CHANGES},
            "differences": [d.to_json() for d in self.differences],
        }


@dataclass
class WhatIfSummary:
    """Totals over every account."""

    policy_version: str
    since: datetime | None
    accounts: int = 0
    violations: int = 0
    recorded_policies: Counter[str] = field(default_factory=Counter)
    totals: Counter[str] = field(default_factory=Counter)
    differing: list[AccountWhatIf] = field(default_factory=list)

    def add(self, result: AccountWhatIf, keep: bool = True) -> None:
        """Count ``result`` in, and keep it in ``differing`` when it differs (and ``keep``)."""
        self.accounts += 1
        self.violations += result.violations
        self.totals.update(result.totals)
        if result.differences and keep:
            self.differing.append(result)

    def to_json(self) -> dict[str, Any]:
        return {
            "policy_version": self.policy_version,
            "since": None if self.since is None else format_time(self.since),
            "accounts": self.accounts,
            "violations": self.violations,
            "recorded_policy_versions": dict(self.recorded_policies),
            "totals": {name: self.totals[name] for name in CHANGES},
            "differing_violations": sum(self.totals.values()),
            "accounts_with_differences": [r.to_json() for r in self.differing],
        }


def what_if(
    store: EventStore,
    policy: Policy,
    since: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    differing: Callable[[AccountWhatIf], None] | None = None,
) -> WhatIfSummary:
    """Replay every account's recorded violations through ``policy``; nothing is written.
    ``progress(events)`` is called after each account with the number of its events. With
    ``differing``, each account the policy decides differently is handed to it once replayed,
    instead of kept in the summary's ``differing`` (which stays empty): only the totals grow."""
    summary = WhatIfSummary(policy.version, None if since is None else to_utc(since))
    for account_id in store.account_ids():
        log = list(store.iter_stream(account_id))
        summary.recorded_policies.update(
            e.metadata["policy_version"]
            for e in log
            if e.type == "ViolationReported" and e.metadata.get("policy_version")
        )
        result = replay_account(policy, account_id, log, summary.since)
        summary.add(result, keep=differing is None)
        if differing is not None and result.differences:
            differing(result)
        if progress is not None:
            progress(len(log))
    return summary


def what_if_json(
    store: EventStore,
    policy: Policy,
    since: datetime | None = None,
    progress: Callable[[int], None] | None = None,
) -> Iterator[str]:
    """The text ``json.dumps(what_if(…).to_json(), indent=2, ensure_ascii=False)`` writes, and
    a newline, in pieces, holding one account's replay at a time rather than every difference.

    The totals that open the object are known only once every account is replayed: each
    differing account's part is written to a temporary file as it comes (as large as its part
    of the output), and the file is copied after the totals. The replay runs when the first
    piece is asked for."""
    # Lone surrogates, should the log hold any, come back as they went in.
    with tempfile.TemporaryFile("w+", encoding="utf-8", errors="surrogatepass") as spool:
        opened = False

        def spill(result: AccountWhatIf) -> None:
            nonlocal opened
            text = json.dumps(result.to_json(), indent=2, ensure_ascii=False)
            # An item of the list at the object's second level: its lines indented by four.
            spool.write(json_array_item(text, not opened, "    "))
            opened = True

        summary = what_if(store, policy, since, progress, differing=spill)
        head = json.dumps(summary.to_json(), indent=2, ensure_ascii=False)
        empty = "[]\n}"  # the list, the last member, is empty in ``summary``
        assert head.endswith(empty)
        if not opened:
            yield head + "\n"
            return
        yield head.removesuffix(empty)
        spool.seek(0)
        while chunk := spool.read(1 << 16):
            yield chunk
        yield "\n  ]\n}\n"


def replay_account(
    policy: Policy, account_id: str, log: Sequence[RecordedEvent], since: datetime | None = None
) -> AccountWhatIf:
    """One account's recorded log replayed with ``policy`` deciding its violations."""
    result = AccountWhatIf(account_id)
    state = StandingState.empty(account_id)
    pending: list[RecordedEvent] = []  # applied in one go before the next decision
    made_up = itertools.count(1)  # ids the record lacks: unique across the account's decisions
    # Per violation decided again: when it was recorded, its category, and the decisions taken
    # on it, recorded and simulated (its ladder, then any missed remediation's suspension).
    compared: dict[str, tuple[datetime, str]] = {}
    recorded_on: dict[str, list[_Decision]] = {}
    simulated_on: dict[str, list[_Decision]] = {}

    def add(event: RecordedEvent | NewEvent, recorded_at: datetime) -> None:
        version = state.version + len(pending) + 1
        pending.append(as_recorded(event, account_id, version, recorded_at))

    def attribute(on: dict[str, list[_Decision]], decisions: Iterable[_Decision]) -> None:
        for d in decisions:
            for vid in d.data.get("violation_ids") or ():
                if vid in on:
                    on[vid].append(d)

    # A recorded completion after the simulated remediation's due time would have been refused:
    # the remediation expires at that due time, before whatever the log holds after it.
    completions = {
        e.data["remediation_id"]: e
        for e in log
        if e.type == "RemediationCompleted" and (since is None or e.recorded_at >= since)
    }
    dues: dict[str, datetime] = {}  # simulated remediations that a recorded completion closes
    expired_early: set[str] = set()

    def expire_overdue(now: datetime) -> None:
        nonlocal state
        for remediation_id, due in sorted(dues.items(), key=lambda item: item[1]):
            if due > now:
                return
            del dues[remediation_id]
            state = advance_all(state, pending)
            pending.clear()
            remediation = state.remediations.get(remediation_id)
            if remediation is None or remediation.status != "open":
                continue
            completion = completions[remediation_id]
            simulated = _expire_again(policy, state, completion, [], due, made_up)
            attribute(simulated_on, simulated)
            for new in simulated:
                add(new, due)
            expired_early.add(remediation_id)

    i = 0
    while i < len(log):
        event = log[i]
        redecided = since is None or event.recorded_at >= since
        ladder: list[RecordedEvent] = []
        decided_at = event.recorded_at
        if redecided and event.type in ("ViolationReported", "RemediationExpired"):
            ladder = _recorded_ladder(log, i)
            # The policy decided it a little before the store recorded it: a simulated
            # remediation due in between expires after it, not before.
            decided_at = _decided_at(
                event, ladder if event.type == "ViolationReported" else [event]
            )
        if dues:
            expire_overdue(decided_at)
        if event.type == "ViolationReported" and redecided:
            state = advance_all(state, pending)
            pending.clear()
            simulated = _decide_again(policy, state, event, ladder, decided_at, made_up)
            result.violations += 1
            vid = event.data["violation_id"]
            compared[vid] = (event.recorded_at, event.data["category"])
            recorded_on[vid], simulated_on[vid] = list(ladder), list(simulated[1:])
            for new in simulated:
                add(new, event.recorded_at)
                if new.type == "RemediationRequested" and new.data["remediation_id"] in completions:
                    dues[new.data["remediation_id"]] = parse_time(new.data["due_at"])
            i += 1 + len(ladder)
            continue
        if event.type == "RemediationExpired" and redecided:
            state = advance_all(state, pending)
            pending.clear()
            attribute(recorded_on, ladder)
            simulated = _expire_again(policy, state, event, ladder, decided_at, made_up)
            attribute(simulated_on, simulated)
            for new in simulated:
                add(new, event.recorded_at)
            i += 1 + len(ladder)
            continue
        if event.type == "AppealDecided" and redecided:
            run = _same_transaction(log, i)
            held = _held_decisions(event, run)
            if held:
                state = advance_all(state, pending)
                pending.clear()
                reversal = [event, *run[: len(run) - len(held)]]
                attribute(recorded_on, held)
                # Nothing when the simulated account is not terminated: decided when recorded.
                # Each violation's decisions take the ids the record gave that violation's.
                recorded = _by_violation(held)
                context = _held_contexts(event, recorded, made_up)
                at = context("")  # its instant; each violation is decided in its own context
                simulated_held = decide_held(
                    policy, state, reversal, event.data["appeal_id"], at, context
                )
                again = [
                    renamed
                    for cause, decisions in _by_violation(simulated_held).items()
                    for renamed in _with_recorded_event_ids(decisions, recorded.get(cause, []))
                ]
                for past in reversal:
                    add(past, past.recorded_at)
                attribute(simulated_on, again)
                for new in again:
                    add(new, event.recorded_at)
                    if (
                        new.type == "RemediationRequested"
                        and new.data["remediation_id"] in completions
                    ):
                        dues[new.data["remediation_id"]] = parse_time(new.data["due_at"])
                i += 1 + len(run)
                continue
        if event.type == "RemediationCompleted" and redecided:
            dues.pop(event.data["remediation_id"], None)
            if event.data["remediation_id"] in expired_early:  # refused as overdue
                i += 1
                continue
        add(event, event.recorded_at)
        i += 1
    for vid, (recorded_at, category) in compared.items():
        recorded_outcome, simulated_outcome = (
            outcome_of(recorded_on[vid]),
            outcome_of(simulated_on[vid]),
        )
        what = change(recorded_outcome, simulated_outcome)
        if what is not None:
            result.differences.append(
                Difference(
                    account_id,
                    vid,
                    category,
                    recorded_at,
                    recorded_outcome,
                    simulated_outcome,
                    what,
                )
            )
    return result


def _expire_again(
    policy: Policy,
    state: StandingState,
    event: RecordedEvent,
    escalation: Sequence[RecordedEvent],
    now: datetime,
    made_up: Iterator[int],
) -> list[NewEvent]:
    """The other policy's decisions when the remediation ``event`` names was recorded expired
    (or completed) at ``now``: nothing if the simulated one is missing, closed or not yet due."""
    remediation_id = event.data["remediation_id"]
    if remediation_id not in state.remediations:
        return []
    ctx = _context_of(event, escalation, now, made_up, "scheduler")
    simulated = decide_remediation_expired(policy, state, remediation_id, ctx)
    return _with_recorded_event_ids(simulated, [event, *escalation])


def _recorded_ladder(log: Sequence[RecordedEvent], index: int) -> list[RecordedEvent]:
    """The decisions recorded with the violation at ``log[index]``: the events that follow it in
    its transaction (same time, same request) and were caused by it, or by one of those
    decisions (a notice may come before the decision it announces)."""
    violation = log[index]
    run = _same_transaction(log, index, lambda event: event.type in _LADDER_TYPES)
    causes = {violation.event_id}
    grew = True
    while grew:
        grew = False
        for event in run:
            if event.event_id not in causes and event.metadata.get("causation_id") in causes:
                causes.add(event.event_id)
                grew = True
    ladder = []
    for event in run:
        if event.event_id not in causes:
            break
        ladder.append(event)
    return ladder


def _same_transaction(
    log: Sequence[RecordedEvent],
    index: int,
    keep: Callable[[RecordedEvent], bool] = lambda event: True,
) -> list[RecordedEvent]:
    """The events after ``log[index]`` appended with it (the same time and request), up to the
    first that ``keep`` refuses."""
    first, run = log[index], []
    for at in range(index + 1, len(log)):  # not ``log[index + 1 :]``: a copy of the rest
        event = log[at]
        if (
            not keep(event)
            or event.recorded_at != first.recorded_at
            or event.metadata.get("correlation_id") != first.metadata.get("correlation_id")
        ):
            break
        run.append(event)
    return run


def _held_decisions(appeal: RecordedEvent, run: Sequence[RecordedEvent]) -> list[RecordedEvent]:
    """What the appeal decision ``appeal`` decided, after its own notice in ``run`` (the events
    appended with it), on the violations a reversed termination held."""
    for at, event in enumerate(run):
        if event.type == "NoticeIssued" and event.data["decision_event_id"] == appeal.event_id:
            return list(run[at + 1 :])
    return []


def _held_contexts(
    appeal: RecordedEvent, recorded: dict[str, list[RecordedEvent]], made_up: Iterator[int]
) -> Callable[[str], Context]:
    """The context to decide again, at ``appeal``, a violation held by a termination it
    reversed, by the violation's event id: handing out the ids of what the record decided on
    that violation there (``recorded``: ``_by_violation``)."""
    now = to_utc(appeal.occurred_at)
    return lambda cause: _context_of(appeal, recorded.get(cause, []), now, made_up, "api")


def _by_violation(events: Sequence[E]) -> dict[str, list[E]]:
    """``events`` by the event outside them their causation leads back to (a violation's, for
    the decisions taken on it and their notices), each group in order."""
    roots: dict[str, str] = {}
    groups: dict[str, list[E]] = {}
    for event in events:
        cause = str(event.metadata.get("causation_id"))
        root = roots[event.event_id] = roots.get(cause, cause)
        groups.setdefault(root, []).append(event)
    return groups


def _decided_at(event: RecordedEvent, decisions: Sequence[RecordedEvent]) -> datetime:
    """The instant the policy decided ``decisions`` (the context's ``now``, their
    ``occurred_at``), which the store's clock read a little later for ``recorded_at``: the one
    to decide again at, so that an instant between the two (a strike running out, a suspension
    ending) is met as it was. Without decisions (a terminated account's violation), ``event``'s
    ``recorded_at``."""
    return to_utc(decisions[0].occurred_at) if decisions else event.recorded_at


def _decide_again(
    policy: Policy,
    state: StandingState,
    violation: RecordedEvent,
    ladder: Sequence[RecordedEvent],
    now: datetime,
    made_up: Iterator[int],
) -> list[NewEvent]:
    """The other policy's decisions on ``violation``, with the recorded ids where they match."""
    data = violation.data
    report = ViolationReport(
        category=data["category"],
        occurred_at=violation.occurred_at,
        severity=data.get("reported_severity"),
        key_id=data.get("key_id"),
        source=data.get("source"),
        detection=data.get("detection", "automated"),
        evidence_ref=data.get("evidence_ref"),
        description=data.get("description"),
        abuse_report_id=data.get("abuse_report_id"),
    )
    ctx = _context_of(violation, ladder, now, made_up, "api")
    simulated = decide_violation(policy, state, report, ctx)
    return _with_recorded_event_ids(simulated, [violation, *ladder])


def _context_of(
    event: RecordedEvent,
    recorded: Sequence[RecordedEvent],
    now: datetime,
    made_up: Iterator[int],
    source: str,
) -> Context:
    """The context ``event`` was decided in (its actor, request and cause), at ``now``, handing
    out the ids ``recorded`` (the decisions recorded with it) carry."""
    metadata = event.metadata
    return Context(
        now=now,
        actor=metadata.get("actor") or "whatif",
        correlation_id=metadata.get("correlation_id") or "whatif",
        new_id=_RecordedIds([event, *recorded], made_up),
        source=metadata.get("source") or source,
        causation_id=metadata.get("causation_id"),
    )


class _RecordedIds:
    """An id factory that hands out the ids the recorded decisions carry, kind by kind, and
    made-up ones once those run out (numbered by ``made_up``, shared by an account's replay, so
    that no two simulated decisions, nor their event ids, share one)."""

    def __init__(self, recorded: Sequence[RecordedEvent], made_up: Iterator[int]) -> None:
        self._queues: dict[str, list[str]] = {}
        for event in recorded:
            if event.type in _ID_FIELDS:
                prefix, name = _ID_FIELDS[event.type]
                self._queues.setdefault(prefix, []).append(event.data[name])
        self._made_up = made_up

    def __call__(self, prefix: str) -> str:
        queue = self._queues.get(prefix)
        if queue:
            return queue.pop(0)
        return f"{prefix}_whatif_{next(self._made_up)}"


def _with_recorded_event_ids(
    simulated: Sequence[NewEvent], recorded: Sequence[RecordedEvent]
) -> list[NewEvent]:
    """Give the n-th simulated event of a type the id of the n-th recorded one of that type, so
    that recorded appeals of a decision still name the simulated one."""
    available: dict[str, list[str]] = {}
    for past in recorded:
        available.setdefault(past.type, []).append(past.event_id)
    renamed: dict[str, str] = {}
    for event in simulated:
        ids = available.get(event.type)
        if ids:
            renamed[event.event_id] = ids.pop(0)
    out = []
    for event in simulated:
        data = event.data
        if data.get("decision_event_id") in renamed:
            data = {**data, "decision_event_id": renamed[data["decision_event_id"]]}
        out.append(
            dataclasses.replace(
                event, event_id=renamed.get(event.event_id, event.event_id), data=data
            )
        )
    return out


def _days(span: timedelta | None) -> str:
    if span is None:
        return "ever"
    seconds = span.total_seconds()
    if seconds % 86400 == 0:
        days = int(seconds // 86400)
        return f"{days} day{'s' if days != 1 else ''}"
    return f"{seconds / 3600:g} h"
