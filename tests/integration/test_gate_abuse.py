"""Gate denials raise ``sustained_abuse`` (POLICY.md, AUP §3) through ``gatekeeping.AbuseDetector``,
which the gate route calls on every rate or quota denial: past the policy's count, an abusive
client's denials must cost no database read each, and a standing that cannot be read must not
turn the denial into an error."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_service_support import FakeClock, open_system

from enforcement import gatekeeping
from enforcement import operator_decisions as ops
from enforcement.bootstrap import Container
from enforcement.gate import GateDecision
from enforcement.gatekeeping import STATE_RECHECK_S
from enforcement.service import Actor
from projections.standing import active_throttles
from tests.gate.test_gate_decision import DENIED


def denial(denials_in_window: int, denied_keys_last_minute: int = 0) -> GateDecision:
    return dataclasses.replace(
        DENIED,
        denials_in_window=denials_in_window,
        denied_keys_last_minute=denied_keys_last_minute,
    )


def count_loads(system: Container, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    loads: list[str] = []
    load = system.service.standings.load

    def counting(account_id: str, *args: Any, **kwargs: Any) -> Any:
        loads.append(account_id)
        return load(account_id, *args, **kwargs)

    monkeypatch.setattr(system.service.standings, "load", counting)
    return loads


def test_denials_past_the_count_read_the_standing_once_per_window(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = system.policy.sustained_abuse_denials.count
    assert system.abuse.observe("acct_1", "key_1", denial(count - 1)) == ()
    assert system.abuse.observe("acct_1", "key_1", denial(count)) == ("sustained_abuse",)
    state = system.standings.load("acct_1")
    assert [t.reason for t in active_throttles(state, system.clock())] == ["sustained_abuse"]
    # The violation's evidence: how many denials, within which window.
    window_s = int(system.policy.sustained_abuse_denials.window.total_seconds())
    [reported] = [e for e in system.store.read_stream("acct_1") if e.type == "ViolationReported"]
    assert reported.data["description"] == f"{count} gate denials within {window_s}s"

    loads = count_loads(system, monkeypatch)
    for more in range(1, 200):
        assert system.abuse.observe("acct_1", "key_1", denial(count + more)) == ()
    assert loads == []


def test_a_standing_that_cannot_be_read_does_not_fail_the_denial(
    system: Container, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    count = system.policy.sustained_abuse_denials.count
    load = system.service.standings.load

    def down(account_id: str, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database is down")

    monkeypatch.setattr(system.service.standings, "load", down)
    assert system.abuse.observe("acct_2", "key_1", denial(count)) == ()
    assert "could not read the standing of acct_2" in caplog.text

    monkeypatch.setattr(system.service.standings, "load", load)
    assert system.abuse.observe("acct_2", "key_1", denial(count + 1)) == ("sustained_abuse",)


def test_a_report_that_cannot_be_recorded_does_not_fail_the_denial_and_is_tried_again(
    system: Container, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A report the service fails to record is not claimed as recorded, is logged, and leaves
    its window unclaimed: the next denial of the same window records it."""
    count = system.policy.sustained_abuse_denials.count
    both = ("sustained_abuse", "rate_limit_circumvention")

    def down(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database is down")

    with monkeypatch.context() as failing:
        failing.setattr(system.abuse.service, "report_gate_sustained_abuse", down)
        failing.setattr(system.abuse.service, "file_gate_abuse_report", down)
        assert system.abuse.observe("acct_18", "key_c", denial(count, 3)) == ()
    assert "could not record sustained_abuse for acct_18" in caplog.text
    assert "could not record rate_limit_circumvention for acct_18" in caplog.text
    assert system.store.read_stream("acct_18") == []

    assert system.abuse.observe("acct_18", "key_c", denial(count + 1, 3)) == both
    assert sustained_abuse_raised(system, "acct_18") == 1


def test_keys_denied_together_are_filed_for_triage_not_made_a_strike(
    system: Container, clock: FakeClock
) -> None:
    """Three keys denied within a minute may be several keys used to exceed quotas (AUP §3), or
    one customer's services all held by the account-wide ceiling: only an operator can tell the
    purpose. So the gate files an abuse report, no strike until triaged (POLICY.md raises only
    ``sustained_abuse`` from denials), one at a time: it had made each window of such denials
    a strike, and an account suspended for 30 days within 20 minutes of a busy spell."""
    for _ in range(4):  # 40 minutes of keys denied together
        assert system.abuse.observe("acct_3", "key_c", denial(5, 3)) in (
            ("rate_limit_circumvention",),
            (),
        )
        clock.advance(timedelta(minutes=10, seconds=1))
    standing = system.service.standing("acct_3")
    assert (standing.status, standing.strikes, standing.open_abuse_reports) == (
        "good_standing",
        0,
        1,
    )
    [filed] = system.store.read_stream("acct_3", 0, limit=10)
    assert filed.type == "AbuseReportReceived"
    assert filed.data["category"] == "rate_limit_circumvention"
    assert "3 keys of the account were denied within one minute" in filed.data["description"]
    assert (filed.metadata["actor"], filed.metadata["correlation_id"]) == ("gate", "gate")

    # Once an operator has triaged it, keys denied together are filed again.
    system.service.triage_abuse_report(
        "acct_3", filed.data["report_id"], "rejected", None, Actor("op", "req_1")
    )
    assert system.abuse.observe("acct_3", "key_c", denial(5, 3)) == ("rate_limit_circumvention",)
    assert system.service.standing("acct_3").open_abuse_reports == 1


def test_a_python_gateways_check_raises_sustained_abuse_as_the_route_does(
    system: Container,
) -> None:
    """CONTRACT.md: "the same check is a Python call". ``Container.gate_check`` is the route's
    check: its denials raise ``sustained_abuse`` too (a bare ``gate.check`` raises nothing)."""
    limits = ops.ConfigureLimits(requests_per_minute=1, tokens_per_day=1000, key_id="key_1")
    system.service.operator("acct_4", limits, Actor("op", "req_1"))
    count = system.policy.sustained_abuse_denials.count
    decisions = [system.gate_check("acct_4", "key_1") for _ in range(count + 1)]
    assert decisions[0].allowed
    assert decisions[0].remaining_tokens == 1000  # a check without tokens counts none
    assert [d.reason for d in decisions[1:]] == ["rate_limited"] * count
    state = system.standings.load("acct_4")
    assert [t.reason for t in active_throttles(state, system.clock())] == ["sustained_abuse"]


def test_a_hundred_denials_over_595_seconds_raise_sustained_abuse(
    system: Container, clock: FakeClock
) -> None:
    """POLICY.md: 100 denials within 10 minutes (the default policy). The gate counted them in
    10 s buckets, each denial for 590 to 600 s: a first denial 9 s into its bucket was
    forgotten by the hundredth, 595 s later, and nothing was raised."""
    limits = ops.ConfigureLimits(requests_per_minute=600, tokens_per_day=0, key_id="key_1")
    system.service.operator("acct_10", limits, Actor("op", "req_1"))  # every check is denied
    rule = system.policy.sustained_abuse_denials
    assert (rule.count, rule.window) == (100, timedelta(minutes=10))
    start = datetime.fromtimestamp(int(clock().timestamp()) // 10 * 10 + 9, UTC)

    for i in range(100):
        clock.set(start + timedelta(seconds=595) * i / 99)
        assert system.gate_check("acct_10", "key_1").reason == "token_quota_exceeded"
        assert sustained_abuse_raised(system, "acct_10") == (i == 99)

    state = system.standings.load("acct_10")
    assert [t.reason for t in active_throttles(state, clock())] == ["sustained_abuse"]


def test_the_gate_counts_denials_by_the_policys_count_and_window(
    database_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    """The policy's window as it is (it was taken as 60 s when shorter), and its count."""
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('sustained_abuse_denials = { count = 3, window = "30s" }\n')
    with open_system(database_url, clock, policy_file) as container:
        assert (container.gate.denial_count, container.gate.denial_window_s) == (3, 30)
        limits = ops.ConfigureLimits(requests_per_minute=600, tokens_per_day=0, key_id="key_1")
        container.service.operator("acct_11", limits, Actor("op", "req_1"))
        seen = []
        for step_s in (0, 20, 20, 9):  # the first has left by the third; the last three: 29 s
            clock.advance(timedelta(seconds=step_s))
            seen.append(container.gate_check("acct_11", "key_1").denials_in_window)
            assert sustained_abuse_raised(container, "acct_11") == (len(seen) == 4)
        assert seen == [1, 2, 2, 3]


def test_a_one_second_window_is_a_window_of_its_own(
    database_url: str, clock: FakeClock, tmp_path: Path
) -> None:
    """The shortest window a policy can give (1 s): each second is a window, and keys denied
    together in the next second, once the report is triaged, are filed again."""
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text('sustained_abuse_denials = { count = 3, window = "1s" }\n')
    with open_system(database_url, clock, policy_file) as container:
        even = int(clock().timestamp()) // 2 * 2 + 2
        clock.set(datetime.fromtimestamp(even, UTC))
        circumvention = ("rate_limit_circumvention",)
        assert container.abuse.observe("acct_19", "key_c", denial(1, 3)) == circumvention
        [report] = container.standings.load("acct_19").abuse_reports.values()
        container.service.triage_abuse_report(
            "acct_19", report.report_id, "rejected", None, Actor("op", "req_1")
        )
        clock.set(datetime.fromtimestamp(even + 1, UTC))  # the next window
        assert container.abuse.observe("acct_19", "key_c", denial(1, 3)) == circumvention


def test_the_claimed_windows_are_forgotten_past_a_hundred_thousand(system: Container) -> None:
    """The detector's memory of claimed windows is bounded: an abusive crowd of accounts
    cannot grow it without end (past 100 000 claims it starts again)."""
    claims = system.abuse._claims
    claims.update({(f"acct_x{i}", "sustained_abuse", 0): 0.0 for i in range(100_000)})
    circumvention = ("rate_limit_circumvention",)
    assert system.abuse.observe("acct_20", "key_c", denial(5, 3)) == circumvention
    assert len(claims) == 100_001  # at the bound: kept
    assert system.abuse.observe("acct_21", "key_c", denial(5, 3)) == circumvention
    assert list(claims) == [("acct_21", "rate_limit_circumvention", claims_bucket(system))]


def claims_bucket(system: Container) -> int:
    window_s = int(system.policy.sustained_abuse_denials.window.total_seconds())
    return int(system.clock().timestamp()) // window_s


def test_a_confirmed_report_the_gate_filed_is_an_automated_detection(
    system: Container, clock: FakeClock
) -> None:
    """The gate's abuse report is an automated detection: confirmed in triage, its violation is
    the gate's (source ``gate``, detection ``automated``) and every statement of reasons on it
    says ``automated_detection: true``. (It became a ``user_report`` of source ``abuse_report``:
    the report kept no record of who filed it.)"""
    assert system.abuse.observe("acct_5", "key_c", denial(5, 3)) == ("rate_limit_circumvention",)
    [filed] = system.store.read_stream("acct_5", 0, limit=10)
    report_id = filed.data["report_id"]

    clock.advance(timedelta(hours=1))
    confirmed = system.service.triage_abuse_report(
        "acct_5", report_id, "confirmed", None, Actor("op", "req_1")
    )
    triaged, reported, *decisions = confirmed.events
    assert (triaged.type, reported.type) == ("AbuseReportTriaged", "ViolationReported")
    assert reported.data["abuse_report_id"] == report_id
    assert (reported.data["source"], reported.data["detection"]) == ("gate", "automated")
    reasons = [e.data["statement_of_reasons"] for e in decisions]
    assert reasons  # a first minor strike: a warning notice and a remediation request
    assert all(sor["automated_detection"] is True for sor in reasons)
    # The report says who filed it, in its event and in the stored standing.
    assert filed.data["source"] == "gate"
    assert system.standings.load("acct_5").abuse_reports[report_id].source == "gate"


def test_a_third_partys_confirmed_report_is_still_a_user_report(system: Container) -> None:
    filed = system.service.file_abuse_report(
        "acct_6", "spam", "spam mails", "a@example.org", None, Actor("reporter:r", "req_1")
    )
    report_id = filed.events[0].data["report_id"]
    assert filed.events[0].data["source"] is None
    confirmed = system.service.triage_abuse_report(
        "acct_6", report_id, "confirmed", None, Actor("op", "req_2")
    )
    reported = confirmed.events[1]
    assert (reported.data["source"], reported.data["detection"]) == ("abuse_report", "user_report")
    reasons = [e.data["statement_of_reasons"] for e in confirmed.events[2:]]
    assert reasons and all(sor["automated_detection"] is False for sor in reasons)


def sustained_abuse_raised(system: Container, account_id: str) -> int:
    return sum(
        e.type == "ViolationReported" and e.data["category"] == "sustained_abuse"
        for e in system.store.read_stream(account_id)
    )


def across_a_window_boundary(
    system: Container,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    first_denial: Callable[[], tuple[str, ...]],
    second_denial: Callable[[], tuple[str, ...]],
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What two denials observed either side of a window's boundary give: the first, on a
    thread of its own, reads the standing in its window and waits there while the second, in
    the next window, is observed to the end. Each claims its own window (and idempotency key),
    and the first's read comes before whatever the second records."""
    window_s = int(system.policy.sustained_abuse_denials.window.total_seconds())
    boundary = (int(clock().timestamp()) // window_s + 1) * window_s
    clock.set(datetime.fromtimestamp(boundary - 1, UTC))

    load = system.service.standings.load
    first_read = threading.Event()
    second_done = threading.Event()

    def read_then_wait_for_the_second(account_id: str, *args: Any, **kwargs: Any) -> Any:
        state = load(account_id, *args, **kwargs)
        if threading.current_thread() is first:
            first_read.set()
            assert second_done.wait(timeout=30)
        return state

    monkeypatch.setattr(system.service.standings, "load", read_then_wait_for_the_second)
    results: list[tuple[str, ...]] = []
    first = threading.Thread(target=lambda: results.append(first_denial()))
    first.start()
    try:
        assert first_read.wait(timeout=30)
        clock.set(datetime.fromtimestamp(boundary + 1, UTC))  # the next window
        second = second_denial()
    finally:
        second_done.set()
        first.join(timeout=30)
    return results[0], second


def test_denials_either_side_of_a_window_boundary_raise_sustained_abuse_once(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One burst, two denials either side of a window's boundary: both read "no
    sustained-abuse throttle in force". The check must be made again where the violation is
    decided, on the state it is appended to, else the burst is two violations, two throttles
    and two notices."""
    count = system.policy.sustained_abuse_denials.count
    first, second = across_a_window_boundary(
        system,
        clock,
        monkeypatch,
        lambda: system.abuse.observe("acct_7", "key_1", denial(count)),
        lambda: system.abuse.observe("acct_7", "key_1", denial(count + 1)),
    )
    assert second == ("sustained_abuse",)
    assert first == ()  # the first found the second's throttle where it decides
    assert sustained_abuse_raised(system, "acct_7") == 1
    state = system.standings.load("acct_7")
    assert [t.reason for t in active_throttles(state, clock())] == ["sustained_abuse"]


def test_keys_denied_either_side_of_a_window_boundary_are_filed_once(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above for the abuse report the gate files: "one open at a time" must be checked
    again where the report is filed, else the operator is given the same suspicion twice."""
    first, second = across_a_window_boundary(
        system,
        clock,
        monkeypatch,
        lambda: system.abuse.observe("acct_9", "key_a", denial(5, 3)),
        lambda: system.abuse.observe("acct_9", "key_b", denial(6, 3)),
    )
    assert second == ("rate_limit_circumvention",)
    assert first == ()  # the first found the second's report where it files
    reports = list(system.standings.load("acct_9").abuse_reports.values())
    assert [(r.category, r.status) for r in reports] == [("rate_limit_circumvention", "open")]


def test_a_new_burst_after_the_throttle_has_run_out_raises_sustained_abuse_again(
    system: Container, clock: FakeClock
) -> None:
    count = system.policy.sustained_abuse_denials.count
    assert system.abuse.observe("acct_8", "key_1", denial(count)) == ("sustained_abuse",)
    clock.advance(timedelta(hours=23))  # still throttled: the same bout
    assert system.abuse.observe("acct_8", "key_1", denial(count * 2)) == ()
    clock.advance(timedelta(hours=1))  # the throttle has run out
    assert system.abuse.observe("acct_8", "key_1", denial(count)) == ("sustained_abuse",)
    assert sustained_abuse_raised(system, "acct_8") == 2


def test_a_bout_that_goes_on_once_its_throttle_has_run_out_is_raised_then_not_a_window_later(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A denial that finds the account still throttled for the bout holds its window only until
    that throttle runs out: denials at the count after it raise ``sustained_abuse`` at once
    (POLICY.md sets no delay), where they waited for the next window (up to 10 minutes)."""
    window_s = int(system.policy.sustained_abuse_denials.window.total_seconds())
    count = system.policy.sustained_abuse_denials.count
    middle = (int(clock().timestamp()) // window_s + 1) * window_s + window_s // 2
    clock.set(datetime.fromtimestamp(middle, UTC))
    assert system.abuse.observe("acct_12", "key_1", denial(count)) == ("sustained_abuse",)
    [throttle] = active_throttles(system.standings.load("acct_12"), clock())
    assert throttle.expires_at is not None
    end = datetime.fromisoformat(throttle.expires_at)
    clock.set(end - timedelta(seconds=1))  # the last second of the bout's throttle
    assert system.abuse.observe("acct_12", "key_1", denial(count)) == ()
    loads = count_loads(system, monkeypatch)
    assert system.abuse.observe("acct_12", "key_1", denial(count)) == ()
    assert loads == []  # still no database read per denial while the throttle is in force
    clock.set(end + timedelta(seconds=1))
    assert int(clock().timestamp()) // window_s == (int(end.timestamp()) - 1) // window_s
    assert system.abuse.observe("acct_12", "key_1", denial(count)) == ("sustained_abuse",)
    assert sustained_abuse_raised(system, "acct_12") == 2
    assert len(loads) == 1


def test_keys_denied_together_are_filed_while_the_account_is_throttled_for_sustained_abuse(
    system: Container, clock: FakeClock
) -> None:
    """The two AUP §3 reports are judged apart. An account past the denial count is throttled
    for sustained abuse once a bout; that it then goes on rotating keys (three denied within a
    minute) is still filed for an operator to triage: the gate had looked at the count first
    and, the throttle in force, recorded nothing for the rest of the bout."""
    count = system.policy.sustained_abuse_denials.count
    assert system.abuse.observe("acct_10", "key_1", denial(count)) == ("sustained_abuse",)
    clock.advance(timedelta(minutes=30))  # throttled: the same bout

    assert system.abuse.observe("acct_10", "key_c", denial(count * 2, 3)) == (
        "rate_limit_circumvention",
    )
    reports = list(system.standings.load("acct_10").abuse_reports.values())
    assert [(r.category, r.status) for r in reports] == [("rate_limit_circumvention", "open")]
    assert sustained_abuse_raised(system, "acct_10") == 1


def test_one_denial_past_the_count_on_a_third_key_records_both(
    system: Container,
) -> None:
    count = system.policy.sustained_abuse_denials.count
    assert system.abuse.observe("acct_11", "key_c", denial(count, 3)) == (
        "sustained_abuse",
        "rate_limit_circumvention",
    )
    state = system.standings.load("acct_11")
    assert [t.reason for t in active_throttles(state, system.clock())] == ["sustained_abuse"]
    assert [r.category for r in state.abuse_reports.values()] == ["rate_limit_circumvention"]


def start_of_next_window(system: Container, clock: FakeClock) -> None:
    window_s = int(system.policy.sustained_abuse_denials.window.total_seconds())
    start = (int(clock().timestamp()) // window_s + 1) * window_s
    clock.set(datetime.fromtimestamp(start, UTC))


def test_an_operators_lift_of_the_bouts_throttle_is_seen_within_the_recheck_interval(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A denial that finds the account throttled for the bout holds its window for at most
    ``STATE_RECHECK_S``: once an operator has lifted the throttle, a bout that goes on is
    raised again then, not at the window's end (up to 10 minutes under the default policy)."""
    count = system.policy.sustained_abuse_denials.count
    start_of_next_window(system, clock)
    assert system.abuse.observe("acct_13", "key_1", denial(count)) == ("sustained_abuse",)
    start_of_next_window(system, clock)  # the throttle (24 hours) in force: the same bout
    assert system.abuse.observe("acct_13", "key_1", denial(count)) == ()
    [throttle] = active_throttles(system.standings.load("acct_13"), clock())
    system.service.operator(
        "acct_13", ops.LiftThrottle(throttle.throttle_id), Actor("op", "req_lift")
    )
    loads = count_loads(system, monkeypatch)
    clock.advance(timedelta(seconds=STATE_RECHECK_S - 1))
    assert system.abuse.observe("acct_13", "key_1", denial(count)) == ()
    assert loads == []  # held: no read per denial
    clock.advance(timedelta(seconds=1))
    assert system.abuse.observe("acct_13", "key_1", denial(count)) == ("sustained_abuse",)
    assert sustained_abuse_raised(system, "acct_13") == 2


def test_a_throttled_accounts_denials_read_its_standing_once_per_recheck_interval(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    count = system.policy.sustained_abuse_denials.count
    start_of_next_window(system, clock)
    assert system.abuse.observe("acct_14", "key_1", denial(count)) == ("sustained_abuse",)
    start_of_next_window(system, clock)
    loads = count_loads(system, monkeypatch)
    for _ in range(4):  # two minutes of denials, ten a second
        for _ in range(int(STATE_RECHECK_S) * 10):
            assert system.abuse.observe("acct_14", "key_1", denial(count)) == ()
            clock.advance(timedelta(seconds=0.1))
    assert loads == ["acct_14"] * 4
    assert sustained_abuse_raised(system, "acct_14") == 1


def test_a_triage_of_the_open_report_is_seen_within_the_recheck_interval(
    system: Container, clock: FakeClock
) -> None:
    """Keys denied together while the gate's report waits for triage hold the window for at
    most ``STATE_RECHECK_S``: once an operator has triaged it, they are filed again then, not
    at the window's end."""
    start_of_next_window(system, clock)
    assert system.abuse.observe("acct_15", "key_c", denial(5, 3)) == ("rate_limit_circumvention",)
    start_of_next_window(system, clock)
    assert system.abuse.observe("acct_15", "key_c", denial(5, 3)) == ()  # one is open
    [report] = system.standings.load("acct_15").abuse_reports.values()
    system.service.triage_abuse_report(
        "acct_15", report.report_id, "rejected", None, Actor("op", "req_t")
    )
    clock.advance(timedelta(seconds=STATE_RECHECK_S - 1))
    assert system.abuse.observe("acct_15", "key_c", denial(5, 3)) == ()
    clock.advance(timedelta(seconds=1))
    assert system.abuse.observe("acct_15", "key_c", denial(5, 3)) == ("rate_limit_circumvention",)
    assert system.service.standing("acct_15").open_abuse_reports == 1


def test_a_throttled_account_with_a_report_open_reads_its_standing_once_per_interval(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both categories held by the account's state (throttled for the bout, a report open):
    their holds end together, and the denial that finds them ended reads the standing once for
    both, not once for each (``STATE_RECHECK_S``: one read per account per interval)."""
    count = system.policy.sustained_abuse_denials.count
    start_of_next_window(system, clock)
    both = ("sustained_abuse", "rate_limit_circumvention")
    assert system.abuse.observe("acct_16", "key_c", denial(count, 3)) == both
    start_of_next_window(system, clock)
    loads = count_loads(system, monkeypatch)
    for _ in range(3):
        assert system.abuse.observe("acct_16", "key_c", denial(count, 3)) == ()
        clock.advance(timedelta(seconds=STATE_RECHECK_S))
    assert loads == ["acct_16"] * 3


def test_a_report_the_service_finds_not_due_after_a_stale_read_holds_the_window_30_s(
    system: Container, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The standing the detector reads may be older than what the service appends to (a
    denial of another window recording meanwhile): when the service finds the report not due,
    the window is held for ``STATE_RECHECK_S`` as when the detector's own read says so, not to
    its end, so that a lift or a triage after it is still seen within 30 s."""
    count = system.policy.sustained_abuse_denials.count
    start_of_next_window(system, clock)
    both = ("sustained_abuse", "rate_limit_circumvention")
    assert system.abuse.observe("acct_17", "key_c", denial(count, 3)) == both
    start_of_next_window(system, clock)
    with monkeypatch.context() as stale:  # the detector's read as if nothing were recorded
        stale.setattr(gatekeeping, "sustained_abuse_due", lambda *args: True)
        stale.setattr(gatekeeping, "abuse_report_open", lambda *args: False)
        assert system.abuse.observe("acct_17", "key_c", denial(count, 3)) == ()
    state = system.standings.load("acct_17")
    [throttle] = active_throttles(state, clock())
    [report] = state.abuse_reports.values()
    operator = Actor("op", "req_17")
    system.service.operator("acct_17", ops.LiftThrottle(throttle.throttle_id), operator)
    system.service.triage_abuse_report("acct_17", report.report_id, "rejected", None, operator)
    clock.advance(timedelta(seconds=29))
    assert system.abuse.observe("acct_17", "key_c", denial(count, 3)) == ()  # still held
    clock.advance(timedelta(seconds=1))
    assert system.abuse.observe("acct_17", "key_c", denial(count, 3)) == both
