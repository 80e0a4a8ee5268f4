"""A differential test of ``whatif``: histories the policy oracle makes up, replayed.

The histories are ``tests/unit/test_policy_oracle.py``'s (the real decider and fold over
violations, time passing with or without the deadline worker, operators' actions, appeals and
abuse reports), under the default policy or any policy file, each decision its own request as in
production (the oracle gives them all one request id). Replayed by ``whatif``'s core
(``replay_account``) under the very policy that recorded them, nothing may differ: every
recorded decision is what that policy decides.

WHATIF_EXAMPLES=5000 (and the oracle's ORACLE_STEPS=40) searches for minutes.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from hypothesis import event as note
from hypothesis import example, given, settings
from hypothesis import note as say
from hypothesis import strategies as st

from enforcement.policy import DEFAULT_POLICY, Context, Policy
from enforcement.policy_file import MAX_DURATION
from enforcement.whatif import replay_account
from events import NewEvent
from tests.unit import policy_reference as ref
from tests.unit.test_policy import Account
from tests.unit.test_policy_oracle import CLIMB, POLICY_KEYS, STEP, STEPS, Twins, loaded, run

EXAMPLES = int(os.environ.get("WHATIF_EXAMPLES", "100"))


@dataclass
class Requests(Account):
    """The oracle's account, each decision asked for in a request of its own, as in production
    (the API's request id). ``whatif`` takes for the decisions recorded with a violation the
    events "that follow it in its transaction (same time, same request) and were caused by it"
    (``whatif._recorded_ladder``); an operator's dismissal is caused by the violation it
    dismisses too, so under the oracle's one request id for everything, a dismissal at the
    violation's instant was taken for its ladder (and never applied in the replay)."""

    requests: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def ctx(self, now: datetime, actor: str = "reporter") -> Context:
        request = f"req_{next(self.requests)}"
        return Context(now=now, actor=actor, correlation_id=request, new_id=self.new_id)


@dataclass
class Recorded(Twins):
    """The oracle's twins, keeping where each commit ends in the log."""

    commits: list[int] = field(default_factory=list)

    def _append(self, decided: list[NewEvent], at: datetime) -> None:
        super()._append(decided, at)
        if decided:
            self.commits.append(len(self.log))


def recorded(policy: Policy, meaning: ref.RefPolicy, steps: list[tuple[Any, ...]]) -> Recorded:
    twins = Recorded(policy, ref.Reference(meaning), Requests())
    run(twins, steps, 0, [])
    return twins


# ``--since``: none, or the instant of a commit (by index), or a microsecond after it.
SINCE = st.one_of(st.none(), st.tuples(st.integers(0, 40), st.sampled_from([0, 1])))


# How much later than the policy decided the store's clock read each commit's ``recorded_at``
# (``EventStore.append``: its own clock, after the decision was taken at the context's ``now``).
# Each commit's, in turn (none: no latency).
LATENCY = st.lists(
    st.sampled_from([0, 1, 1_000, 250_000]).map(lambda us: timedelta(microseconds=us)), max_size=4
)


def assert_replays_as_recorded(
    twins: Recorded, since: tuple[int, int] | None, latency: list[timedelta]
) -> None:
    """Replayed from ``since`` on (the events before it applied as recorded), nothing differs."""
    log = twins.log
    if latency and twins.log:  # never before the commit before it: one store's clock
        log, begin, last = [], 0, twins.log[0].recorded_at
        for i, end in enumerate(twins.commits):
            last = max(twins.log[begin].recorded_at + latency[i % len(latency)], last)
            log += [replace(e, recorded_at=last) for e in twins.log[begin:end]]
            begin = end
    say(f"latency={latency}")
    start = None
    if since is not None and twins.commits:
        end = twins.commits[since[0] % len(twins.commits)]
        start = log[end - 1].recorded_at + timedelta(microseconds=since[1])
    result = replay_account(twins.policy, twins.real.account_id, log, start)
    assert result.violations == sum(
        e.type == "ViolationReported" and (start is None or e.recorded_at >= start) for e in log
    )
    assert result.differences == []


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.lists(STEP, max_size=STEPS), SINCE, LATENCY)
def test_a_history_replayed_under_the_default_policy_that_recorded_it_differs_nowhere(
    steps: list[tuple[Any, ...]], since: tuple[int, int] | None, latency: list[timedelta]
) -> None:
    say(f"steps={steps!r}")
    assert_replays_as_recorded(recorded(DEFAULT_POLICY, ref.DEFAULT, steps), since, latency)


@settings(max_examples=EXAMPLES, deadline=None)
@given(POLICY_KEYS, st.lists(CLIMB, max_size=STEPS), SINCE, LATENCY)
def test_a_history_replayed_under_the_policy_file_that_recorded_it_differs_nowhere(
    keys: dict[str, Any],
    steps: list[tuple[Any, ...]],
    since: tuple[int, int] | None,
    latency: timedelta,
) -> None:
    policy, meaning = loaded(keys)
    say(f"steps={steps!r}")
    assert_replays_as_recorded(recorded(policy, meaning, steps), since, latency)


# --- a policy that only makes the ladder harsher ----------------------------------------------

# Each number the ladder restricts by, made harsher, or left as it is (None): a longer
# suspension or throttle (hours more), a lower throttle factor (times ``(0, 1)``), termination at
# fewer prior strikes.
LONGER = st.one_of(st.none(), st.integers(1, 24 * 400).map(lambda h: timedelta(hours=h)))
HARSHER = st.fixed_dictionaries(
    {
        "first_high_suspension": LONGER,
        "third_minor_suspension": LONGER,
        "missed_remediation_suspension": LONGER,
        "throttle_longer": LONGER,
        "throttle_lower": st.one_of(st.none(), st.floats(0.01, 0.99)),
        "fewer_strikes": st.one_of(st.none(), st.integers(1, 3)),
    }
)


def harsher(policy: Policy, change: dict[str, Any]) -> Policy:
    """``policy`` with the numbers ``change`` gives made harsher (spans at most a file's)."""
    numbers: dict[str, Any] = {}
    for name in (
        "first_high_suspension",
        "third_minor_suspension",
        "missed_remediation_suspension",
    ):
        if change[name] is not None:
            numbers[name] = min(getattr(policy, name) + change[name], MAX_DURATION)
    throttle = policy.second_minor_throttle
    if change["throttle_longer"] is not None:
        duration = min(throttle.duration + change["throttle_longer"], MAX_DURATION)
        throttle = replace(throttle, duration=duration)
    if change["throttle_lower"] is not None and throttle.factor * change["throttle_lower"] > 0:
        # (not below the smallest float a file may give: it would be 0, not a factor)
        throttle = replace(throttle, factor=throttle.factor * change["throttle_lower"])
    numbers["second_minor_throttle"] = throttle
    if change["fewer_strikes"] is not None:
        fewer = policy.termination_after_strikes - change["fewer_strikes"]
        numbers["termination_after_strikes"] = max(fewer, 1)
    return replace(policy, version="harsher", **numbers)


NO_CHANGE = dict.fromkeys(
    (
        "first_high_suspension",
        "third_minor_suspension",
        "missed_remediation_suspension",
        "throttle_longer",
        "throttle_lower",
        "fewer_strikes",
    )
)


@settings(max_examples=EXAMPLES, deadline=None)
@given(st.one_of(st.none(), POLICY_KEYS), HARSHER, st.lists(CLIMB, max_size=STEPS))
# Found in a full run: the overturn decides the three violations the termination held, and the
# harsher policy terminates at the second, so the third is decided nothing ("fewer").
@example(
    None,
    {**NO_CHANGE, "fewer_strikes": 2},
    [
        ("terminate", 0, None, False),
        *[("report", "disinformation", None, (0, None))] * 3,
        ("appeal", 0, "overturned", 0),
    ],
)
def test_where_a_harsher_policy_first_decides_otherwise_it_decides_harsher(
    keys: dict[str, Any] | None, change: dict[str, Any], steps: list[tuple[Any, ...]]
) -> None:
    """The first commit whose replay differs was decided on the standing that was recorded (all
    before it decided alike), where a policy that only restricts more decides ``harsher``
    (whatif's severity order), or ``more`` where the recorded decision was a suspension held
    behind a longer one: README counts it as no restriction ("``whatif`` counts it as no
    restriction, as it restricts nothing when decided"), or, after it terminates at one violation
    of a commit that decides several, ``fewer`` for the rest. Later violations may differ any
    way (a termination leaves them undecided: ``fewer``)."""
    policy, meaning = (DEFAULT_POLICY, ref.DEFAULT) if keys is None else loaded(keys)
    other = harsher(policy, change)
    say(f"steps={steps!r}\nharsher: {other}")
    twins = recorded(policy, meaning, steps)
    for end in twins.commits:
        result = replay_account(other, twins.real.account_id, twins.log[:end])
        if result.differences:
            note(f"first differs: {sorted({d.change for d in result.differences})}")
            held = {
                vid
                for e in twins.log
                if e.type == "AccountSuspended" and e.data["held_by"] is not None
                for vid in e.data["violation_ids"]
            }
            terminated = False  # by the other policy, in this commit
            for d in result.differences:
                # One commit may decide several violations (those a termination held, at its
                # overturn): after the other policy terminates at one, the rest are decided
                # nothing, as on any terminated account.
                harsher_here = d.change == "harsher" or (
                    d.change == "more" and d.violation_id in held
                )
                assert harsher_here or (terminated and d.change == "fewer"), d
                terminated = terminated or d.simulated.kind == "termination"
            return
    note("first differs: nowhere")
