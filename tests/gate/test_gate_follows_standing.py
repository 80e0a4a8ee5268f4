"""A differential test: the gate answers what the account's standing says at that instant.

Histories come from the policy oracle's generators (``tests/unit/test_policy_oracle.py``: the
real decider and fold over violations, time passing, operators' actions, appeals and abuse
reports, under the default policy or any policy file), started off a whole millisecond now and
then, with the deadline worker's ``SuspensionEnded`` "expired" added. Each commit is fed to an
``EmbeddedGate`` on a frozen clock the ways production feeds it (``enforcement/gatekeeping.py``):

- (a) ``apply_changes`` after every commit, in order (``GatePush``);
- (b) the same with some pushes lost, some late (after later commits), some twice or long after
  (stale), the relay's ``apply_gate_state`` (``GateApplier``: the current stored standing)
  after them, the gate's data lost now and then (``Gate.clear``), on a gate with the
  application's seeder (``GateSeeder``; learning again after 30 s as the embedded gate does, or
  only what it holds no status for, as the Redis gate);
- (c) a fresh gate seeded from the standing stored at some commit (the final one most often),
  by ``apply_state(..., reconcile=True)`` as ``seed_gate`` does or by the seeder at the first
  check, then ``apply_changes`` for the commits after it;
- and (a) on a ``RedisGate`` on a real Redis, its ends moved so that each instant is Redis' now.

At every commit's instant, every suspension's ``until`` and throttle's ``expires_at`` (exactly,
a microsecond before and after, and rounded up to its millisecond), between them and long
after, ``gate.check`` on the account's keys must say what the standing view
(``projections.standing.view``) of the state stored then says: ``terminated``, or ``suspended``
with the wait to its end, or allowed with CONTRACT.md's effective limits: the limits configured
(the oracle's operators set them for keys and for the account's ceiling; the defaults where
none is) scaled by the most restrictive throttle in force on the account and on that key, the
ceiling's by the account-wide one. The token limit answered is the smaller of the key's and the
ceiling's (no check spends tokens); so is the request limit whenever the two are further apart
than the checks made before could have spent (each check takes a request of each); closer
than that, either.

Tolerated, by design (docs/design.md, "The gate"): the gate holds the end of a suspension or a
throttle in milliseconds, rounded up, "so the gate may restrict up to a millisecond longer,
never shorter": within that millisecond either answer is taken. A limit times a factor is an
integer in the gate: the factor kept to six decimals, the product rounded down, never to zero
(``Gate.apply_throttle``, ``gate.core.effective``). Nothing else.

GATE_EXAMPLES=10000 (and the oracle's ORACLE_STEPS=40) searches for minutes.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import combinations, pairwise
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import note as say
from hypothesis import strategies as st

from enforcement.gate import EmbeddedGate, Gate, GateDecision, RedisGate
from enforcement.gatekeeping import (
    EMBEDDED_RELEARN_S,
    GateApplier,
    GateSeeder,
    apply_changes,
    apply_state,
)
from enforcement.operator_decisions import decide_suspension_ended
from events import NewEvent, RecordedEvent
from events.timefmt import parse_time
from projections.standing import ActiveThrottle, StandingState, ThrottleRecord, view
from tests.redis_server import RedisServer
from tests.unit import policy_reference as ref
from tests.unit.test_policy import T0
from tests.unit.test_policy_oracle import (
    CLIMB,
    HOURS,
    POLICY_KEYS,
    STEP,
    STEPS,
    Twins,
    loaded,
    run,
)

EXAMPLES = int(os.environ.get("GATE_EXAMPLES", "100"))
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
MS = timedelta(milliseconds=1)
SECOND = timedelta(seconds=1)
# The gate's defaults: a token limit that keeps a factor's six decimals (10**6 x ppm).
RPM, TPD = 10**7, 10**12
KEYS = ("k1", "k2", "k3")  # the generator throttles k1 and k2; k3 only ever account-wide
PPM = 1_000_000


@dataclass(frozen=True)
class Commit:
    """One decision committed: its events, the instant, the state stored after it."""

    at: datetime
    events: tuple[RecordedEvent, ...]
    state: StandingState


@dataclass
class History(Twins):
    """The oracle's twins, keeping each commit (each ``_append``) as the store would."""

    commits: list[Commit] = field(default_factory=list)

    def _append(self, decided: list[NewEvent], at: datetime) -> None:
        before = len(self.log)
        super()._append(decided, at)
        if len(self.log) > before:
            self.commits.append(Commit(at, tuple(self.log[before:]), self.real.state))

    def advance(self, by: timedelta, deadlines: bool) -> None:
        """Time passing; with the deadline worker running, its sweep also records the end of a
        suspension that has run out (``SuspensionEnded`` "expired", a status event), which the
        oracle's generator leaves out: the standing is the same without it."""
        super().advance(by, deadlines)
        current = self.real.state.suspension
        if deadlines and current is not None:
            ctx = self.real.ctx(self.now)
            self._append(
                decide_suspension_ended(self.policy, self.real.state, current.suspension_id, ctx),
                self.now,
            )


def history(
    steps: list[tuple[Any, ...]], later: int, start_us: int, keys: dict[str, Any] | None = None
) -> History:
    """The oracle's history from ``T0`` moved by ``start_us`` (off a whole millisecond, every
    ``now + span`` the policy records is too), under the default policy or the policy file
    giving ``keys``."""
    if keys is None:
        made = History(now=T0 + start_us * US)
    else:
        policy, meaning = loaded(keys)
        made = History(policy, ref.Reference(meaning), now=T0 + start_us * US)
    run(made, steps, later, [])
    return made


class Clock:
    """A frozen clock for the gate (seconds, as ``bootstrap._seconds`` gives an embedded gate
    the use cases' datetime clock) and for the applier and seeder (the datetime)."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def seconds(self) -> float:
        return self.now.timestamp()

    def __call__(self) -> datetime:
        return self.now


class Store:
    """What the applier and the seeder read: the event by id, the current stored standing."""

    def __init__(self, made: History) -> None:
        self.by_id = {e.event_id: e for c in made.commits for e in c.events}
        self.current = StandingState.empty(made.real.account_id)

    def get_event(self, event_id: str) -> RecordedEvent | None:
        return self.by_id.get(event_id)

    def load(self, account_id: str) -> StandingState:
        assert account_id == self.current.account_id
        return self.current


def ceil_ms(moment: datetime) -> datetime:
    """``moment`` rounded up to the millisecond, as the gate holds it (``gate.base._epoch_ms``)."""
    return EPOCH + -((EPOCH - moment) // MS) * MS


def ends(made: History) -> set[datetime]:
    """Every end of a suspension or throttle a stored state names."""
    found: set[datetime] = set()
    for c in made.commits:
        s = c.state
        texts = [t.expires_at for t in s.throttles.values()]
        texts += [r.until for r in (s.suspension, *s.replaced_suspensions) if r is not None]
        found.update(parse_time(text) for text in texts if text)
    return found


def instants(made: History, later: int) -> list[datetime]:
    """When to ask: each commit, each end a state names (exactly, 1 µs either side, and the
    millisecond it is rounded up to), halfway between these, and long after."""
    points = {c.at for c in made.commits}
    for moment in ends(made):
        points.update((moment - US, moment, moment + US, ceil_ms(moment)))
    ordered = sorted(points)
    points.update(a + (b - a) / 2 for a, b in pairwise(ordered))
    if ordered:
        points.add(ordered[-1] + timedelta(hours=later, minutes=1))
    return sorted(points)


def expected(state: StandingState, at: datetime, key_id: str) -> list[tuple[Any, ...]]:
    """The answers the standing allows at ``at``: (reason, the wait in µs for a suspension,
    limit_tokens, the effective (key, ceiling) requests per minute). What the standing view
    says; and, for a suspension or a throttle that ended less than its rounding up to the
    millisecond ago, also what the gate says while it holds it (design.md: it may restrict up
    to a millisecond longer, never shorter). It may hold it or not: a change pushed since then
    brought it the state at that instant, without it."""
    standing = view(state, at, timedelta(days=90))
    if standing.status == "terminated":
        return [("terminated", 0, None, None)]
    if standing.suspension is not None:
        until = standing.suspension.until
        return [("suspended", 0 if until is None else ceil_ms(until) - at, None, None)]
    answers = [
        limited(state, standing.active_throttles, key_id, held)
        for held in held_throttles(state, at)
    ]
    held = state.suspension
    if held is not None and held.until is not None:
        until = parse_time(held.until)
        if until <= at < ceil_ms(until):
            answers.append(("suspended", ceil_ms(until) - at, None, None))
    return answers


def held_throttles(state: StandingState, at: datetime) -> list[list[ThrottleRecord]]:
    """Each set of the throttles ended within their rounding before ``at`` the gate may hold."""
    ended = [
        t
        for t in state.throttles.values()
        if t.expires_at and parse_time(t.expires_at) <= at < ceil_ms(parse_time(t.expires_at))
    ]
    return [list(c) for n in range(len(ended) + 1) for c in combinations(ended, n)]


def configured(state: StandingState, key_id: str | None) -> tuple[int, int]:
    """The limits the standing has configured for ``key_id`` (None: the account's ceiling), or
    the deployment's defaults (CONTRACT.md: ``ENFORCEMENT_DEFAULT_RPM``/``_TPD``)."""
    record = state.account_rate_limit if key_id is None else state.key_rate_limits.get(key_id)
    return (RPM, TPD) if record is None else (record.requests_per_minute, record.tokens_per_day)


def scaled(limit: int, factor: float) -> int:
    """``limit`` times ``factor`` as the gate applies it (the tolerance, documented where the
    gate is: ``Gate.apply_throttle`` keeps a factor to six decimals, ``gate.core.effective``
    rounds the product down but never takes a limit to zero)."""
    ppm = max(round(factor * PPM), 1)
    return limit if ppm >= PPM else max(limit * ppm // PPM, 1)


def limited(
    state: StandingState,
    active: Iterable[ActiveThrottle | ThrottleRecord],
    key_id: str,
    held: list[ThrottleRecord],
) -> tuple[Any, ...]:
    """Allowed, with CONTRACT.md's effective limits: the key's configured limits times the most
    restrictive factor on the account and on ``key_id``, and the account's ceiling times the
    most restrictive account-wide one; a request must fit both. No check here spends tokens, so
    the token limit answered is the smaller of the two; the request limit is spent by the checks
    themselves (``requests_answered`` says what may be answered)."""
    factors = [(t.key_id, t.factor) for t in (*active, *held)]
    account = min((f for k, f in factors if k is None), default=1.0)
    key = min([account] + [f for k, f in factors if k == key_id])
    (key_rpm, key_tpd), (rpm, tpd) = configured(state, key_id), configured(state, None)
    tokens = min(scaled(key_tpd, key), scaled(tpd, account))
    return ("ok", 0, tokens, (scaled(key_rpm, key), scaled(rpm, account)))


def requests_answered(requests: tuple[int, int], spent: int) -> set[int]:
    """The request limit a check may answer with effective limits (key, ceiling) after
    ``spent`` checks of the account on this gate: the limit of the scope with less left
    (CONTRACT.md's ``limit_requests``), so the smaller limit whenever the two are more than
    ``spent`` apart (each has between its limit less ``spent`` and its limit left); closer than
    that, which scope has less left depends on the checks made, and either limit is taken."""
    low, high = sorted(requests)
    return {low} if high - low > spent else {low, high}


def answered(decision: GateDecision) -> tuple[Any, ...]:
    if decision.reason in ("terminated", "suspended"):
        wait = ceil_ms(EPOCH + round(decision.retry_after_s * 1000) * MS) - EPOCH
        return (decision.reason, wait or 0, None, None)
    # Many checks in one frozen instant may spend a throttled request limit: that is the limit
    # at work, not the standing (which the token limit shows).
    assert decision.reason in ("ok", "rate_limited"), decision
    return ("ok", 0, decision.limit_tokens, decision.limit_requests)


def compare(
    gate: Gate,
    state: StandingState,
    at: datetime,
    slack: timedelta = MS * 0,
    spent: int = 0,
    moving_since: float | None = None,
) -> None:
    """``slack``: how far the gate's wait may be from the standing's (Redis' own clock moves
    while it is asked), plus the time since ``moving_since`` (a ``time.monotonic()``: when
    Redis' clock was read to make ``at`` its now) at each check; ``spent``: the checks made on
    this gate before (each takes a request of its key and of the account's ceiling)."""
    for n, key_id in enumerate(KEYS):
        allowed = expected(state, at, key_id)
        got = answered(gate.check(state.account_id, key_id))
        moved = 0.0 if moving_since is None else time.monotonic() - moving_since
        within = slack + timedelta(seconds=moved)
        throttled = allowed[0][2] is not None and allowed[0][3] != (RPM, RPM)
        note(f"asked: {allowed[0][0]}{' limited' if throttled else ''}")
        # The gate states a wait rounded up to the millisecond (``embedded._seconds``).
        allowed = [(r, w and ceil_ms(EPOCH + w) - EPOCH, t, q) for r, w, t, q in allowed]
        for reason, wait, _, _ in allowed:
            if got[0] == reason and wait and got[1] and abs(got[1] - wait) <= within:
                got = (reason, wait, None, None)
        assert any(
            got[:3] == a[:3] and (a[3] is None or got[3] in requests_answered(a[3], spent + n))
            for a in allowed
        ), f"{key_id} at {at} (state v{state.version}): {got} not in {allowed}"
        if allowed[0][3] is not None and len(set(allowed[0][3])) > 1:
            exact = len(requests_answered(allowed[0][3], spent + n)) == 1
            note(f"request limits differ, {'compared' if exact else 'too close to compare'}")


@dataclass
class Timeline:
    """The commits and the instants to ask, in order; the state stored at each point."""

    made: History
    asks: list[datetime]

    def walk(self) -> Iterator[tuple[str, Any]]:
        """("commit", Commit) and ("ask", instant) in time order, commits first at a tie."""
        commits, asks = list(self.made.commits), list(self.asks)
        while commits or asks:
            if commits and (not asks or commits[0].at <= asks[0]):
                yield "commit", commits.pop(0)
            else:
                yield "ask", asks.pop(0)


def gate_on(clock: Clock, relearn_s: float | None = None) -> EmbeddedGate:
    return EmbeddedGate(clock=clock.seconds, relearn_s=relearn_s, default_rpm=RPM, default_tpd=TPD)


def follow(
    made: History,
    later: int,
    deliver: Callable[[EmbeddedGate, Clock, Store, Commit], None],
    seeded_at: datetime | None = None,
    before_ask: Callable[[EmbeddedGate, Clock, Store], None] | None = None,
    relearn_s: float | None = None,
) -> int:
    """Walk the history: the store takes each commit, ``deliver`` tells the gate; at each
    instant (from ``seeded_at``) the gate must answer as the stored standing. Returns the
    number of instants compared."""
    if not made.commits:
        return 0
    clock, store = Clock(made.commits[0].at), Store(made)
    gate = gate_on(clock, relearn_s)
    asked = 0
    for kind, item in Timeline(made, instants(made, later)).walk():
        if kind == "commit":
            clock.now = max(clock.now, item.at)
            store.current = item.state
            deliver(gate, clock, store, item)
        elif seeded_at is None or item >= seeded_at:
            clock.now = item
            if before_ask is not None:
                before_ask(gate, clock, store)
            compare(gate, store.current, item, spent=asked * len(KEYS))
            asked += 1
    note(f"{min(asked, 50) // 10 * 10}+ instants asked")
    return asked


def pushed(gate: EmbeddedGate, clock: Clock, store: Store, commit: Commit) -> None:
    apply_changes(gate, commit.state, commit.events, commit.at)


GENERATED = (
    st.lists(STEP, max_size=STEPS),
    HOURS,
    st.one_of(st.just(0), st.integers(0, 999_999)),
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(*GENERATED)
def test_the_gate_fed_after_every_commit_answers_as_the_standing(
    steps: list[tuple[Any, ...]], later: int, start_us: int
) -> None:
    say(f"steps={steps!r}, later={later}, start_us={start_us}")
    follow(history(steps, later, start_us), later, pushed)


class Relayed:
    """Deliveries as after the push and the relay: a commit's push may be lost, come late (after
    later commits, before the next check), come twice or long after (stale); the relay's
    ``apply_gate_state`` message for each of its events (the current standing) comes before the
    next check when its push was lost, and otherwise now and then, late too. Now and then the
    gate loses everything it holds (``Gate.clear``, as Redis restarted without its data)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.waiting: list[tuple[str, Commit]] = []  # deliveries owed before the next check
        self.seen: list[Commit] = []
        self.applier: GateApplier | None = None

    def commit(self, gate: EmbeddedGate, clock: Clock, store: Store, commit: Commit) -> None:
        if self.applier is None:
            self.applier = GateApplier(gate, store, store, clock)  # type: ignore[arg-type]
            gate.set_seeder(GateSeeder(gate, store, clock))  # type: ignore[arg-type]
        if self.rng.random() < 0.2:
            # The gate's store loses its data (Redis restarted empty): what reached it before
            # is gone, and no push from before comes after (each came within its commit's
            # PUSH_TIMEOUT_S). The next status pushed, or the seeder at the next check, brings
            # the whole standing back.
            self.shuffle_some(gate, keep=False, stale=False)
            gate.clear()
            self.seen.clear()
        self.seen.append(commit)
        roll = self.rng.random()
        if roll < 0.35:
            self.push(gate, commit)  # at once
        elif roll < 0.7:
            self.waiting.append(("push", commit))
        if roll >= 0.35 or self.rng.random() < 0.3:
            self.waiting.append(("relay", commit))  # a lost or late push: the relay tells it
        self.shuffle_some(gate, keep=True)

    def push(self, gate: EmbeddedGate, commit: Commit) -> None:
        apply_changes(gate, commit.state, commit.events, commit.at)

    def deliver(self, gate: EmbeddedGate, kind: str, commit: Commit) -> None:
        if kind == "push":
            self.push(gate, commit)
        else:
            assert self.applier is not None
            for event in commit.events:
                self.applier(event.event_id)

    def shuffle_some(self, gate: EmbeddedGate, keep: bool, stale: bool = True) -> None:
        """Deliver what is owed in a random order (``keep``: only some of it), and repeat
        some past pushes (stale by now, or redelivered)."""
        self.rng.shuffle(self.waiting)
        cut = self.rng.randint(0, len(self.waiting)) if keep else len(self.waiting)
        due, self.waiting = self.waiting[:cut], self.waiting[cut:]
        for kind, commit in due:
            self.deliver(gate, kind, commit)
            if self.rng.random() < 0.2:
                self.deliver(gate, kind, commit)  # delivered twice
        if stale and self.seen and self.rng.random() < 0.3:
            self.push(gate, self.rng.choice(self.seen))  # an old push, long after

    def before_ask(self, gate: EmbeddedGate, clock: Clock, store: Store) -> None:
        self.shuffle_some(gate, keep=False)


@settings(max_examples=EXAMPLES, deadline=None)
@given(*GENERATED, st.randoms(use_true_random=False), st.booleans())
def test_pushes_lost_late_or_twice_and_the_relay_leave_the_gate_as_the_standing(
    steps: list[tuple[Any, ...]], later: int, start_us: int, rng: random.Random, relearn: bool
) -> None:
    """``relearn``: as the application's embedded gate (learning an account again 30 s after it
    last did); else as the Redis gate, learning only an account it holds no status for."""
    say(f"steps={steps!r}, later={later}, start_us={start_us}")
    relayed = Relayed(rng)
    made = history(steps, later, start_us)
    follow(
        made,
        later,
        relayed.commit,
        before_ask=relayed.before_ask,
        relearn_s=EMBEDDED_RELEARN_S if relearn else None,
    )


def seeding(made: History, index: int, lazily: bool) -> tuple[datetime, Callable[..., None]]:
    """When the gate is seeded (the instant of commit ``index``), and what it is fed: nothing
    before, the stored standing then (by ``apply_state`` as ``seed_gate`` does, or by the seeder
    at the first check), ``apply_changes`` after."""
    target = made.commits[index]

    def deliver(gate: EmbeddedGate, clock: Clock, store: Store, commit: Commit) -> None:
        position = made.commits.index(commit)
        if position < index:
            return
        if position > index:
            pushed(gate, clock, store, commit)
        elif lazily:
            gate.set_seeder(GateSeeder(gate, store, clock))  # type: ignore[arg-type]
        else:
            apply_state(gate, store.current, clock.now, reconcile=True)

    return target.at, deliver


@settings(max_examples=EXAMPLES, deadline=None)
@given(*GENERATED, st.integers(0, 40), st.booleans())
def test_a_gate_seeded_from_a_stored_standing_answers_as_the_standing(
    steps: list[tuple[Any, ...]], later: int, start_us: int, back: int, lazily: bool
) -> None:
    say(f"steps={steps!r}, later={later}, start_us={start_us}")
    made = history(steps, later, start_us)
    if not made.commits:
        return
    # Mostly the final standing; else one stored earlier, the rest pushed after it.
    index = max(len(made.commits) - 1 - (back if back < 10 else 0), 0)
    at, deliver = seeding(made, index, lazily)
    follow(made, later, deliver, seeded_at=at)


@settings(max_examples=EXAMPLES // 4, deadline=None)
@given(POLICY_KEYS, st.lists(CLIMB, max_size=STEPS), *GENERATED[1:])
def test_under_any_policy_file_the_gate_answers_as_the_standing(
    keys: dict[str, Any], steps: list[tuple[Any, ...]], later: int, start_us: int
) -> None:
    """Spans of seconds to a hundred years (ends meeting each other and the commits), any
    factor in (0, 1]: the oracle's other generator, fed after every commit."""
    say(f"steps={steps!r}, later={later}, start_us={start_us}")
    follow(history(steps, later, start_us, keys), later, pushed)


class Shifted:
    """A Redis gate seen ``offset`` later: what ``apply_changes``, ``apply_state`` and the seeder
    write, with every end moved by it. Redis reads its own clock (``TIME``): moved so, an
    instant of the history is Redis' now."""

    def __init__(self, gate: RedisGate, offset: timedelta) -> None:
        self.gate, self.offset = gate, offset

    def _moved(self, moment: datetime | None) -> datetime | None:
        return None if moment is None else moment + self.offset

    def set_status(self, account_id: str, status: Any, until: datetime | None, v: int) -> bool:
        return self.gate.set_status(account_id, status, self._moved(until), v)

    def apply_throttle(self, a: str, t: str, k: str | None, f: float, e: Any, v: int) -> bool:
        return self.gate.apply_throttle(a, t, k, f, self._moved(e), v)

    def __getattr__(self, name: str) -> Any:  # the rest as it is (no time in them)
        return getattr(self.gate, name)


def redis_now(client: redis.Redis) -> datetime:
    seconds, micros = client.time()
    return EPOCH + timedelta(seconds=seconds, microseconds=micros)


@pytest.mark.redis
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(*GENERATED)
def test_the_redis_gate_fed_after_every_commit_answers_as_the_standing(
    redis_server: RedisServer, steps: list[tuple[Any, ...]], later: int, start_us: int
) -> None:
    """As the first test, on the Redis gate with the application's seeder. Each instant is
    asked on a Redis emptied and told the history up to it, its ends moved so that the instant
    is Redis' now (``Shifted``); the few milliseconds the check then takes are allowed for by
    asking only where the standing holds for half a second on."""
    say(f"steps={steps!r}, later={later}, start_us={start_us}")
    made = history(steps, later, start_us)
    if not made.commits:
        return
    client = redis_server.client()
    gate = RedisGate(client, default_rpm=RPM, default_tpd=TPD)
    store = Store(made)
    asks, asked = instants(made, later), 0
    commits, stops = {c.at for c in made.commits}, ends(made)
    for at in asks:
        # Redis' clock cannot aim closer: skip an instant where something changes within half a
        # second on, or something ended just before (moved by an offset in microseconds, an end
        # is held to a millisecond that may be later).
        if any(at < c <= at + 0.5 * SECOND for c in commits) or any(
            at - 10 * MS < e <= at + 0.5 * SECOND for e in stops
        ):
            continue
        client.flushall()
        store.current = StandingState.empty(made.real.account_id)
        moving_since = time.monotonic()
        shifted = Shifted(gate, redis_now(client) - at)
        clock = Clock(at)
        gate.set_seeder(GateSeeder(shifted, store, clock))  # type: ignore[arg-type]
        for commit in (c for c in made.commits if c.at <= at):
            store.current = commit.state
            apply_changes(shifted, commit.state, commit.events, commit.at)  # type: ignore[arg-type]
        # Redis' clock runs on from the read that made ``at`` its now: 50 ms, plus as long
        # as a loaded machine has taken since (58 ms more than ``at`` was seen once).
        compare(gate, store.current, at, timedelta(milliseconds=50), moving_since=moving_since)
        asked += 1
    note(f"{min(asked, 20) // 5 * 5}+ instants asked on Redis")
    client.close()
