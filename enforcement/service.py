"""The use cases: load the standing, let the policy decide, append in one transaction.

Each command reads the account's stored standing (plus any newer events), asks a pure decision
function for the events to record, and appends them with ``expected_version`` while the stored
standing is updated in the same transaction. A concurrent writer makes the append fail with a
``ConcurrencyError``; the command then reloads and decides again (bounded), so every ladder step
is taken exactly once however many requests race.

What the commands are asked and answer is in ``enforcement.service_types``, a batch's items in
``enforcement.batch_items``, the silent-database breaker in ``enforcement.silent_database``;
all are offered from here too.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import random
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import cast

from enforcement import operator_decisions as ops
from enforcement import policy as rules
from enforcement.batch_items import ItemResult, ReportItem, groupable, item_error, item_result
from enforcement.errors import DomainError, NotFound
from enforcement.policy import Context, Policy, ViolationReport
from enforcement.service_types import (
    Actor,
    AfterCommit,
    Fact,
    Fingerprint,
    Outcome,
    fingerprint_value,
    request_fingerprint,
)
from enforcement.silent_database import NotSent, UntilSilent, not_sent_for_silence
from events import (
    ConcurrencyError,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    RecordedEvent,
    StreamAppend,
    StreamKeyUsed,
)
from events.timefmt import to_utc
from projections.history import HistoryEntry, history
from projections.lookback import PolicyStart
from projections.notices import NOTICE_TYPES, NoticeDeliveries, notice_deliveries
from projections.standing import Standing, StandingState, fold, recorded_until, view
from projections.stored import StandingRepository

__all__ = [
    "ACCOUNT_LOCK_STRIPES",
    "BACKOFF_BASE_S",
    "BACKOFF_CAP_S",
    "MAX_ATTEMPTS",
    "Actor",
    "AfterCommit",
    "Clock",
    "Decide",
    "EnforcementService",
    "Fact",
    "Fingerprint",
    "ItemResult",
    "NotSent",
    "Outcome",
    "ReportItem",
    "fingerprint_value",
    "not_sent_for_silence",
    "request_fingerprint",
]


log = logging.getLogger("enforcement.service")

Clock = Callable[[], datetime]
Decide = Callable[[StandingState, Context], list[NewEvent]]
MAX_ATTEMPTS = 25
# Between attempts (a writer elsewhere got there first) a request waits a random, exponentially
# growing time, so that racing processes do not reload in lock step and one of them cannot lose
# every round until it runs out of attempts.
BACKOFF_BASE_S = 0.001
BACKOFF_CAP_S = 0.05
ACCOUNT_LOCK_STRIPES = 256


def _back_off(attempt: int) -> None:
    time.sleep(random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt)))


class EnforcementService:
    """The application service. Stateless apart from its collaborators; thread-safe."""

    def __init__(
        self,
        store: EventStore,
        standings: StandingRepository,
        policy: Policy,
        clock: Clock,
        new_id: Callable[[str], str] = rules.random_id,
        after_commit: AfterCommit | None = None,
        policy_start: Callable[[datetime], PolicyStart | None] | None = None,
    ):
        self.store = store
        self.standings = standings
        self.policy = policy
        self.clock = clock
        self.new_id = new_id
        self.after_commit = after_commit
        # The last policy the deployment began with by an instant (``policy_activations``).
        self.policy_start = policy_start
        self._account_locks = tuple(threading.Lock() for _ in range(ACCOUNT_LOCK_STRIPES))

    def _context(self, actor: Actor, now: datetime, causation_id: str | None = None) -> Context:
        return Context(
            now=now,
            actor=actor.name,
            correlation_id=actor.correlation_id,
            new_id=self.new_id,
            source=actor.source,
            causation_id=causation_id,
        )

    def _stripe(self, account_id: str) -> int:
        return zlib.crc32(account_id.encode("utf-8")) % len(self._account_locks)

    def _account_lock(self, account_id: str) -> threading.Lock:
        return self._account_locks[self._stripe(account_id)]

    @contextmanager
    def _accounts_locked(self, account_ids: Sequence[str]) -> Iterator[None]:
        """The locks of several accounts, taken in stripe order (no deadlock between two
        callers that hold several)."""
        stripes = sorted({self._stripe(a) for a in account_ids})
        for stripe in stripes:
            self._account_locks[stripe].acquire()
        try:
            yield
        finally:
            for stripe in reversed(stripes):
                self._account_locks[stripe].release()

    # ------------------------------------------------------------------ machinery

    def _execute(
        self,
        account_id: str,
        decide: Decide,
        actor: Actor,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
        causation_id: str | None = None,
        key_checked_by_append: bool = False,
    ) -> Outcome:
        """Load, decide, append (retried on a concurrent writer). With an idempotency key, an
        earlier result for it is returned without deciding again; ``key_checked_by_append``:
        leave that look-up to the append itself (it makes the same one before writing), for a
        ``decide`` that never refuses, so that a first use costs one look-up rather than two."""
        if idempotency_key is not None and not key_checked_by_append:
            replay = self._replay(account_id, idempotency_key, fingerprint)
            if replay is not None:
                return replay
        outcome, after = self._execute_locked(
            account_id, decide, actor, idempotency_key, fingerprint, causation_id
        )
        if after is not None and self.after_commit is not None:
            # Outside the account's lock: what it does (e.g. a call to the gate) never holds up
            # the account's next request, nor the others of its lock stripe.
            self.after_commit(after, outcome.events, outcome.standing.as_of)
        return outcome

    def _replay(self, account_id: str, key: str, fingerprint: str | None) -> Outcome | None:
        """What the request with ``key`` recorded, with the standing now, or None if nothing
        was; ``IdempotencyConflict`` when the key was recorded with another fingerprint."""
        assert fingerprint is not None
        previous = self.store.recorded_for_key(key, fingerprint)
        if previous is None:
            return None
        return Outcome(previous, self.standing(account_id), replayed=True)

    def _execute_locked(
        self,
        account_id: str,
        decide: Decide,
        actor: Actor,
        idempotency_key: str | None,
        fingerprint: str | None,
        causation_id: str | None,
    ) -> tuple[Outcome, StandingState | None]:
        """``_execute`` under the account's lock: the outcome, and the state after the events
        when this call recorded them (None when it recorded nothing)."""
        # Requests of this process on one account take turns (they would only lose the race to
        # each other); requests of other processes still race, and lose to the version check.
        with self._account_lock(account_id):
            for attempt in range(MAX_ATTEMPTS):
                if attempt:
                    _back_off(attempt)
                state, head = self.standings.load_with_head(account_id)
                now = to_utc(self.clock())
                try:
                    new_events = decide(state, self._context(actor, now, causation_id))
                except DomainError:
                    # Refused on a state that a concurrent request with the same key may have
                    # made (a second terminate): its result is this request's answer.
                    if idempotency_key is None:
                        raise
                    replay = self._replay(account_id, idempotency_key, fingerprint)
                    if replay is None:
                        raise
                    return replay, None
                if not new_events:
                    return Outcome([], view(state, now, self.policy.strike_lookback)), None
                saver = self.standings.saver(state)
                try:
                    recorded = self.store.append(
                        account_id,
                        state.version,
                        new_events,
                        idempotency_key,
                        fingerprint=fingerprint,
                        after_append=saver,
                        head=head,
                    )
                except ConcurrencyError as exc:
                    self.standings.append_refused(state, exc.actual_version)
                    continue
                if recorded and recorded[0].event_id != new_events[0].event_id:
                    # A concurrent request with the same idempotency key won the race.
                    return Outcome(recorded, self.standing(account_id), replayed=True), None
                after = self.standings.remember_appended(saver, state, recorded)
                at = max(now, recorded[-1].recorded_at)
                return Outcome(recorded, view(after, at, self.policy.strike_lookback)), after
            raise ConcurrencyError(account_id, -1)

    # ------------------------------------------------------------------ reading

    def standing(self, account_id: str, as_of: datetime | None = None) -> Standing:
        """The standing now (stored row + newer events) or as recorded up to ``as_of``."""
        if as_of is None:
            now = to_utc(self.clock())
            return view(self.standings.load(account_id), now, self.policy.strike_lookback)
        as_of = to_utc(as_of)
        start = None if self.policy_start is None else self.policy_start(as_of)
        events = self.store.iter_stream(account_id)
        return fold(account_id, events, as_of, self.policy.strike_lookback, start)

    def history(self, account_id: str, as_of: datetime | None = None) -> Iterator[HistoryEntry]:
        """Each event recorded up to ``as_of`` with the standing change it caused."""
        events = self.store.iter_stream(account_id)
        if as_of is not None:
            events = recorded_until(events, as_of)
        return history(account_id, events, self.policy.strike_lookback)

    # ------------------------------------------------------------------ reporting

    def report_violation(
        self,
        account_id: str,
        report: ViolationReport,
        actor: Actor,
        idempotency_key: str | None = None,
        fingerprint: str | Fingerprint | None = None,
    ) -> Outcome:
        """Record a violation and the decisions the policy takes on it. A key recorded with a
        fingerprint that ``fingerprint.earlier`` owns as the same request's replays too."""

        def execute(fingerprint: str | None) -> Outcome:
            return self._execute(
                account_id,
                lambda state, ctx: rules.decide_violation(self.policy, state, report, ctx),
                actor,
                idempotency_key=idempotency_key,
                fingerprint=fingerprint,
            )

        try:
            return execute(fingerprint_value(fingerprint))
        except IdempotencyConflict as exc:
            recorded = exc.fingerprint
            if (
                not isinstance(fingerprint, Fingerprint)
                or recorded is None
                or not fingerprint.earlier(recorded)
            ):
                raise
            # The key's record is of this very request, fingerprinted the earlier way: asked
            # with the fingerprint it holds, it replays (a key's record never changes).
            return execute(recorded)

    def report_gate_sustained_abuse(
        self,
        account_id: str,
        report: ViolationReport,
        denials_in_window: int,
        idempotency_key: str,
        fingerprint: str,
        actor: Actor,
    ) -> Outcome:
        """The gate's ``sustained_abuse`` violation, recorded only if it is still due on the
        state it is appended to (``rules.decide_gate_sustained_abuse``): under the account's
        lock, and decided again when another writer appended first. No events: not due."""
        return self._execute(
            account_id,
            lambda state, ctx: rules.decide_gate_sustained_abuse(
                self.policy, state, report, denials_in_window, ctx
            ),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    def report_batch(
        self,
        items: Sequence[ReportItem],
        actor: Actor,
    ) -> list[ItemResult]:
        """Report many violations; each item stands alone (one failure stops no other).

        The first item of each account, if it has no idempotency key, is decided with the
        others like it and recorded in ONE transaction (``append_streams``), with their stored
        standings: a batch of 100 new violations is one commit, not 100. Every other item, and
        every item of a group that meets a concurrent writer, goes through ``report_violation``
        on its own, exactly as a single request would.
        """
        results: list[ItemResult | None] = [None] * len(items)
        silent = UntilSilent()
        grouped = groupable(items)
        if len(grouped) > 1:
            actors = [actor] * len(items)
            for index, result in self._report_together(items, grouped, actors, None, silent):
                results[index] = result
        for index, (account_id, report, key, fingerprint) in enumerate(items):
            if results[index] is None:
                call = functools.partial(
                    self.report_violation, account_id, report, actor, key, fingerprint
                )
                results[index] = item_result(functools.partial(silent.call, call))
        return [r for r in results if r is not None]

    def report_each(
        self,
        items: Sequence[ReportItem],
        actors: Sequence[Actor],
        *,
        contexts: Sequence[contextvars.Context] | None = None,
        on_result: Callable[[int, Outcome | Exception], None] | None = None,
    ) -> list[Outcome | Exception]:
        """``report_violation(*items[i], actors[i])`` for every item, as if each were called on
        its own (the items of one account in order): each entry is the outcome, or the
        exception that call raises. What differs is only how they are recorded: the first item
        of each account, if it has no idempotency key, is decided with the others like it and
        recorded in one transaction (``report_batch``'s grouping), so concurrent single
        requests (``enforcement/api/coalesce.py``) share one commit. Each event still carries
        its own request's actor and correlation id.

        ``contexts[i]``: the context item ``i`` runs in when it is recorded on its own (its
        request's, for its log lines). ``on_result(i, result)``: called as soon as item ``i``
        is settled, before the others are (so that its caller need not wait for them).
        """
        if len(actors) != len(items) or (contexts is not None and len(contexts) != len(items)):
            raise ValueError("report_each needs one actor (and context) per item")
        results: list[Outcome | Exception | None] = [None] * len(items)

        def settle(index: int, result: Outcome | Exception) -> None:
            results[index] = result
            if on_result is not None:
                try:
                    on_result(index, result)
                except Exception:  # the caller's; the other items are still recorded
                    log.exception("a report's result could not be handed on")

        silent = UntilSilent()
        grouped = groupable(items)
        if len(grouped) > 1:
            failures: dict[int, Exception] = {}
            for index, result in self._report_together(items, grouped, actors, failures, silent):
                outcome = result.outcome if result.outcome is not None else result.error
                assert outcome is not None
                settle(index, outcome)
            for index, exc in failures.items():
                # Its append failed (or what follows its commit did): not tried again, which
                # could record it twice.
                silent.saw(exc)
                settle(index, exc)
        for index, (account_id, report, key, fingerprint) in enumerate(items):
            if results[index] is None:
                report_one = functools.partial(
                    self.report_violation, account_id, report, actors[index], key, fingerprint
                )
                call = functools.partial(silent.call, report_one)
                try:
                    one: Outcome | Exception = (
                        contexts[index].run(call) if contexts is not None else call()
                    )
                except Exception as exc:
                    one = exc
                settle(index, one)
        assert all(r is not None for r in results)
        return cast(list[Outcome | Exception], results)

    def _report_together(
        self,
        items: Sequence[ReportItem],
        indexes: list[int],
        actors: Sequence[Actor],
        failures: dict[int, Exception] | None = None,
        silent: UntilSilent | None = None,
    ) -> list[tuple[int, ItemResult]]:
        """Decide the items at ``indexes`` (distinct accounts; ``actors[i]`` asks for item
        ``i``) and record them in one append; returns the results it settled (none if a
        concurrent writer got in the way). Before the append, an item that fails for another
        reason than the policy's refusal is left unsettled, so the caller records it alone
        (where it fails alone); so are all when the states cannot be read together.

        ``failures``: given, an error of the append, or of an item's work after the commit,
        goes there for each item it concerns (the results settled before it are kept) instead
        of being raised. ``silent``: told when the states could not be read because the
        database did not answer (the caller's reports alone then fail at once)."""
        accounts = [items[i][0] for i in indexes]
        with self._accounts_locked(accounts):
            now = to_utc(self.clock())
            settled: list[tuple[int, ItemResult]] = []
            pending: list[tuple[int, StandingState, list[NewEvent]]] = []
            try:
                states = self.standings.load_many(accounts)
            except Exception as exc:
                log.warning("the standings of a shared report could not be read together")
                if silent is not None:
                    silent.saw(exc)
                return []
            for index in indexes:
                account_id, report, _, _ = items[index]
                state = states[account_id]
                ctx = self._context(actors[index], now)
                try:
                    new_events = rules.decide_violation(self.policy, state, report, ctx)
                except DomainError as exc:
                    settled.append((index, item_error(exc)))
                    continue
                except Exception:
                    continue  # recorded alone by the caller: its error is its own
                if new_events:
                    pending.append((index, state, new_events))
                else:
                    standing = view(state, now, self.policy.strike_lookback)
                    settled.append((index, ItemResult(201, Outcome([], standing))))
            if not pending:
                return settled
            saver = self.standings.saver(*(state for _, state, _ in pending))
            try:
                recorded = self.store.append_streams(
                    [StreamAppend(s.account_id, s.version, e) for _, s, e in pending],
                    after_append=saver,
                )
            except ConcurrencyError:
                return settled  # the rest go one by one
            except Exception as exc:
                if failures is None:
                    raise
                failures.update((index, exc) for index, _, _ in pending)
                return settled
        for (index, state, _), events in zip(pending, recorded, strict=True):
            try:
                after = self.standings.remember_appended(saver, state, events)
                at = max(now, events[-1].recorded_at)
                if self.after_commit is not None:
                    try:
                        self.after_commit(after, events, at)
                    except Exception:  # committed: the others' gate must still be told
                        log.exception(
                            "after a shared commit, %s's decisions were not pushed",
                            after.account_id,
                        )
                standing = view(after, at, self.policy.strike_lookback)
            except Exception as exc:
                if failures is None:
                    raise
                failures[index] = exc  # committed, but its answer could not be made
                continue
            settled.append((index, ItemResult(201, Outcome(events, standing))))
        return settled

    def file_abuse_report(
        self,
        account_id: str,
        category: str,
        description: str,
        reporter_contact: str | None,
        evidence_ref: str | None,
        actor: Actor,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Outcome:
        """Record a third party's abuse report (AUP §7); no strike until triaged."""
        return self._execute(
            account_id,
            lambda _state, ctx: rules.decide_abuse_report(
                self.policy, category, description, reporter_contact, evidence_ref, ctx
            ),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    def file_gate_abuse_report(
        self,
        account_id: str,
        category: str,
        description: str,
        idempotency_key: str,
        fingerprint: str,
        actor: Actor,
    ) -> Outcome:
        """The gate's suspicion, filed for an operator to triage unless a report of its
        category is open already (``rules.decide_gate_abuse_report``), on the state it is
        appended to: under the account's lock, and decided again when another writer appended
        first. No events: one is open."""
        return self._execute(
            account_id,
            lambda state, ctx: rules.decide_gate_abuse_report(
                self.policy, state, category, description, ctx
            ),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    def triage_abuse_report(
        self,
        account_id: str,
        report_id: str,
        outcome: str,
        severity: str | None,
        actor: Actor,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Outcome:
        """Confirm (it becomes a violation and the ladder runs) or reject an abuse report."""
        return self._execute(
            account_id,
            lambda state, ctx: rules.decide_triage(
                self.policy, state, report_id, outcome, severity, ctx
            ),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    # ------------------------------------------------------------------ deadlines

    def expire_remediation(self, account_id: str, remediation_id: str, actor: Actor) -> Outcome:
        """Record ``RemediationExpired`` and its escalation if the remediation is overdue."""
        return self._execute(
            account_id,
            lambda state, ctx: rules.decide_remediation_expired(
                self.policy, state, remediation_id, ctx
            ),
            actor,
        )

    def end_suspension(self, account_id: str, suspension_id: str, actor: Actor) -> Outcome:
        """Record ``SuspensionEnded`` once a time-bound suspension's ``until`` has passed."""
        return self._execute(
            account_id,
            lambda state, ctx: ops.decide_suspension_ended(self.policy, state, suspension_id, ctx),
            actor,
        )

    # ------------------------------------------------------------------ appeals

    def file_appeal(
        self,
        account_id: str,
        decision_event_id: str,
        statement: str,
        actor: Actor,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Outcome:
        return self._execute(
            account_id,
            lambda state, ctx: rules.decide_appeal_filing(
                self.policy, state, decision_event_id, statement, ctx
            ),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    def decide_appeal(
        self,
        account_id: str,
        appeal_id: str,
        outcome: str,
        reason: str,
        actor: Actor,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Outcome:
        return self._execute(
            account_id,
            lambda state, ctx: rules.decide_appeal(
                self.policy, state, appeal_id, outcome, reason, ctx
            ),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    # ------------------------------------------------------------------ facts from workers

    def record_fact(
        self,
        account_id: str,
        payload: object,
        actor: Actor,
        *,
        causation_id: str | None = None,
        idempotency_key: str | None = None,
    ) -> Outcome:
        """Record a fact that decides nothing (a delivery receipt); once per idempotency key."""
        return self._execute(
            account_id,
            lambda _state, ctx: [rules.new_event(self.policy, ctx, payload, causation_id)],
            actor,
            idempotency_key=idempotency_key,
            fingerprint=idempotency_key,
            causation_id=causation_id,
            key_checked_by_append=idempotency_key is not None,
        )

    def record_facts(
        self, facts: Sequence[Fact], actor: Actor
    ) -> list[list[RecordedEvent] | Exception]:
        """Record many facts, each once per its key: those of distinct accounts in ONE
        transaction (one commit for a handful of delivery receipts). When that cannot be (a key
        used before, a concurrent writer, any error of the shared transaction), or for a second
        fact of one account, a fact goes through ``record_fact`` on its own. Returns each
        fact's own outcome, in order: its events, or the error that stopped it alone."""
        results: list[list[RecordedEvent] | Exception | None] = [None] * len(facts)
        first_of_account: dict[str, int] = {}
        for index, fact in enumerate(facts):
            first_of_account.setdefault(fact.account_id, index)
        if len(first_of_account) > 1:
            try:
                together = self._record_together(facts, list(first_of_account.values()), actor)
            except Exception:  # nothing was recorded: each goes on its own below
                log.warning("facts recorded one by one after a failed group", exc_info=True)
                together = []
            for index, events in together:
                results[index] = events
        for index, fact in enumerate(facts):
            if results[index] is None:
                try:
                    results[index] = self.record_fact(
                        fact.account_id,
                        fact.payload,
                        actor,
                        causation_id=fact.causation_id,
                        idempotency_key=fact.idempotency_key,
                    ).events
                except Exception as exc:
                    results[index] = exc
        return [r for r in results if r is not None]

    def _record_together(
        self, facts: Sequence[Fact], indexes: list[int], actor: Actor
    ) -> list[tuple[int, list[RecordedEvent]]]:
        """Record the facts at ``indexes`` (distinct accounts) in one append; returns what it
        recorded (nothing if a key was used before or a concurrent writer got in the way)."""
        # In key order: two processes recording the same facts insert their key rows in the
        # same order (on PostgreSQL the other order could deadlock on them).
        indexes = sorted(indexes, key=lambda i: facts[i].idempotency_key)
        accounts = [facts[i].account_id for i in indexes]
        with self._accounts_locked(accounts):
            now = to_utc(self.clock())
            states = [self.standings.load(a) for a in accounts]
            appends = []
            for index, state in zip(indexes, states, strict=True):
                fact = facts[index]
                ctx = self._context(actor, now, fact.causation_id)
                key = fact.idempotency_key
                event = rules.new_event(self.policy, ctx, fact.payload, fact.causation_id)
                appends.append(StreamAppend(state.account_id, state.version, [event], key, key))
            saver = self.standings.saver(*states)
            try:
                recorded = self.store.append_streams(appends, after_append=saver)
            except (ConcurrencyError, StreamKeyUsed):
                return []
        for state, events in zip(states, recorded, strict=True):
            self.standings.remember_appended(saver, state, events)
        return list(zip(indexes, recorded, strict=True))

    # ------------------------------------------------------------------ operator commands

    def operator(
        self,
        account_id: str,
        command: ops.Command,
        actor: Actor,
        *,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Outcome:
        """Run one operator command (suspend, reinstate, terminate, throttle, …); with an
        idempotency key, once (``_execute``)."""
        return self._execute(
            account_id,
            lambda state, ctx: ops.decide(self.policy, state, command, ctx),
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )

    def notices(
        self, account_id: str, issued_since: datetime | None = None
    ) -> list[NoticeDeliveries]:
        """The account's notices (recorded since ``issued_since``), oldest first, each with how
        its delivery went on each channel (``projections.notices``)."""
        events = self.store.read_stream_of_types(account_id, NOTICE_TYPES)
        return notice_deliveries(events, issued_since)

    def accounts_notices(
        self,
        account_ids: Sequence[str],
        issued_since: datetime | None = None,
        after_position: int = 0,
    ) -> list[NoticeDeliveries]:
        """``notices`` of each of ``account_ids`` in turn (those past ``after_position``: their
        outcomes and copies come after them), read together."""
        streams = self.store.read_streams_of_types(account_ids, NOTICE_TYPES, after_position)
        return [n for events in streams.values() for n in notice_deliveries(events, issued_since)]

    def all_notices(
        self,
        issued_since: datetime | None = None,
        progress: Callable[[int], None] | None = None,
        after_position: int = 0,
    ) -> list[NoticeDeliveries]:
        """Every account's notices (recorded since ``issued_since``, at a position past
        ``after_position``), in log order, each with how its delivery went: one pass over the
        log's notices and outcomes (``progress`` is told the position reached), from the first
        event recorded since ``issued_since`` (``EventStore.position_before``: a notice's
        outcomes and copies come after it)."""
        after = 0 if issued_since is None else self.store.position_before(issued_since)
        after = max(after, after_position)
        events = self.store.iter_all_of_types(NOTICE_TYPES, after, progress=progress)
        return notice_deliveries(events, issued_since)

    def resend_notice(
        self,
        account_id: str,
        notice_id: str,
        reason: str,
        actor: Actor,
        *,
        channels: tuple[str, ...] | None = None,
        check: Callable[[], None] | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Outcome:
        """Send the account's notice ``notice_id`` again, as a copy under a new id, on
        ``channels`` (None: all; ``ops.ResendNotice``); ``NotFound`` when the account has no
        such notice. A key used before answers (or conflicts) first, as every command's does;
        ``check`` (the contact has the channels' targets) comes after the decision's refusals
        (``decision_overturned``), and may refuse too."""
        if idempotency_key is not None:
            replay = self._replay(account_id, idempotency_key, fingerprint)
            if replay is not None:
                return replay
        notice = next(
            (
                e
                for e in self.store.read_stream_of_type(account_id, "NoticeIssued")
                if e.data["notice_id"] == notice_id
            ),
            None,
        )
        if notice is None:
            raise NotFound(f"no notice {notice_id!r} on this account", code="notice_not_found")
        command = ops.ResendNotice(notice, reason, channels)

        def decide(state: StandingState, ctx: Context) -> list[NewEvent]:
            events = ops.decide(self.policy, state, command, ctx)
            if check is not None:  # after the decision's own refusals
                check()
            return events

        return self._execute(
            account_id,
            decide,
            actor,
            idempotency_key=idempotency_key,
            fingerprint=fingerprint,
        )
