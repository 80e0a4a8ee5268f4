"""What-if replays (``enforcement whatif``) on SQLite and PostgreSQL: the recorded violations fed
through another policy, compared with what was recorded, and nothing written.

Given the shipped policy, a replay of any history finds no difference. Given a stricter or a
more lenient one, it finds exactly the decisions POLICY.md's ladder says would change.
"""

from __future__ import annotations

import gc
import json
import re
import tomllib
import weakref
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from aup_population import (
    Population,
    Template,
    populate,
    system_fixture,
    template_fixture,
)
from test_service_support import OPERATOR, REPORTER, FakeClock
from typer.testing import CliRunner

from enforcement import operator_decisions as ops
from enforcement import whatif
from enforcement.bootstrap import Container
from enforcement.cli import app
from enforcement.cli_output import console
from enforcement.policy import DEFAULT_POLICY, ViolationReport
from enforcement.policy_file import policy_from_mapping
from enforcement.whatif import what_if
from events.schema import events
from events.timefmt import format_time

DAY = timedelta(days=1)


def event_count(system: Container) -> int:
    with system.engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(events)).scalar_one())


def report(system: Container, account: str, category: str, severity: str | None = None) -> None:
    violation = ViolationReport(category, system.clock() - timedelta(minutes=5), severity)
    system.service.report_violation(account, violation, REPORTER)


def ladder_stories(system: Container, clock: FakeClock) -> Population:
    """Known stories, a day apart:

    - ``acct_minor``: five spam reports: warning, throttle, 30-day suspension, termination
      (3 prior strikes), then nothing (terminated);
    - ``acct_high``: one high-severity phishing report: a 7-day suspension.
    """
    report(system, "acct_high", "phishing", "high")
    for _ in range(5):
        report(system, "acct_minor", "spam")
        clock.advance(DAY)
    return Population(["acct_high", "acct_minor"])


ladder_template = template_fixture("ladder", ladder_stories)
ladder = system_fixture("ladder_template")


def changes(summary: Any) -> list[tuple[str, str, str, str]]:
    return [
        (d.account_id, d.recorded.describe(), d.simulated.describe(), d.change)
        for r in summary.differing
        for d in r.differences
    ]


def test_the_shipped_policy_decides_every_violation_as_recorded(ladder: Container) -> None:
    before = event_count(ladder)
    progress: list[int] = []

    summary = what_if(ladder.store, DEFAULT_POLICY, progress=progress.append)

    assert (summary.accounts, summary.violations) == (2, 6)
    assert summary.recorded_policies == {DEFAULT_POLICY.version: 6}
    assert summary.differing == [] and sum(summary.totals.values()) == 0
    assert len(progress) == 2 and sum(progress) == before  # each account's events
    assert event_count(ladder) == before  # nothing written


def test_terminating_after_one_strike_is_harsher_then_decides_nothing(ladder: Container) -> None:
    strict = policy_from_mapping({"version": "strict", "termination_after_strikes": 1})
    before = event_count(ladder)

    summary = what_if(ladder.store, strict)

    assert changes(summary) == [
        ("acct_minor", "throttle to 25% for 7 days", "termination", "harsher"),
        ("acct_minor", "suspension for 30 days", "none", "fewer"),
        ("acct_minor", "termination", "none", "fewer"),
    ]
    assert (summary.totals["harsher"], summary.totals["fewer"]) == (1, 2)
    assert event_count(ladder) == before


def test_a_longer_first_high_suspension_is_harsher(ladder: Container) -> None:
    summary = what_if(ladder.store, policy_from_mapping({"first_high_suspension": "30d"}))

    assert changes(summary) == [
        ("acct_high", "suspension for 7 days", "suspension for 30 days", "harsher")
    ]


def test_a_tighter_throttle_is_harsher_and_a_shorter_one_milder(ladder: Container) -> None:
    tighter = policy_from_mapping({"second_minor_throttle": {"factor": 0.1, "duration": "1d"}})
    shorter = policy_from_mapping({"second_minor_throttle": {"duration": "1d"}})

    assert changes(what_if(ladder.store, tighter)) == [
        ("acct_minor", "throttle to 25% for 7 days", "throttle to 10% for 1 day", "harsher")
    ]
    assert changes(what_if(ladder.store, shorter)) == [
        ("acct_minor", "throttle to 25% for 7 days", "throttle to 25% for 1 day", "milder")
    ]


def test_a_lenient_policy_is_milder_and_decides_where_nothing_was(ladder: Container) -> None:
    lenient = {"termination_after_strikes": 5, "third_minor_suspension": "3d"}

    summary = what_if(ladder.store, policy_from_mapping(lenient))

    assert changes(summary) == [
        ("acct_minor", "suspension for 30 days", "suspension for 3 days", "milder"),
        ("acct_minor", "termination", "suspension for 3 days", "milder"),
        ("acct_minor", "none", "suspension for 3 days", "more"),
    ]


def test_decisions_the_record_lacks_get_ids_of_their_own(
    ladder: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lenient policy suspends where the record terminated and where it decided nothing:
    two simulated suspensions of one account that no recorded event names. Each gets its own
    suspension id and event id (made-up ids are numbered across the account's replay)."""
    simulated: list[Any] = []
    as_recorded = whatif.as_recorded

    def keep(*args: Any) -> Any:
        event = as_recorded(*args)
        simulated.append(event)
        return event

    monkeypatch.setattr(whatif, "as_recorded", keep)
    lenient = {"termination_after_strikes": 5, "third_minor_suspension": "3d"}
    what_if(ladder.store, policy_from_mapping(lenient))

    minor = [e for e in simulated if e.account_id == "acct_minor"]
    suspensions = [e.data["suspension_id"] for e in minor if e.type == "AccountSuspended"]
    assert len(suspensions) == 3 and len(set(suspensions)) == 3
    ids = [e.event_id for e in minor]
    assert len(ids) == len(set(ids))


def test_since_re_decides_only_later_violations(ladder: Container) -> None:
    strict = policy_from_mapping({"termination_after_strikes": 1})
    since = ladder.clock() - 2 * DAY  # the last two spam reports (3 prior strikes, terminated)

    summary = what_if(ladder.store, strict, since)

    assert summary.violations == 2
    assert changes(summary) == []  # by then the recorded history had terminated the account


# --------------------------------------------------------------------------- a varied history


template = template_fixture(
    "whatif", lambda system, clock: populate(system, clock, accounts=10, steps=8, seed=11)
)
varied = system_fixture()


def test_no_difference_on_a_history_with_appeals_dismissals_and_expiries(
    template: Template, varied: Container
) -> None:
    actions = template.population.actions
    assert actions.get("report", 0) > 20 and actions.get("expire", 0) + actions.get("dismiss", 0)
    assert actions.get("appeal_overturned", 0) + actions.get("appeal_upheld", 0) > 0

    summary = what_if(varied.store, DEFAULT_POLICY)

    assert summary.violations >= actions["report"]
    assert changes(summary) == []


def test_the_cli_prints_differences_and_json_and_writes_nothing(
    varied: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", varied.settings.database_url)
    # The console is made at import, its width fixed then (by COLUMNS, or 1,000 in a pipe):
    # the summary must not wrap whatever ran the tests.
    monkeypatch.setattr(console, "width", 200)
    strict, shipped = tmp_path / "strict.toml", tmp_path / "shipped.toml"
    strict.write_text('version = "strict"\ntermination_after_strikes = 1\n')
    shipped.write_text("")
    before = event_count(varied)
    runner = CliRunner()

    same = runner.invoke(app, ["whatif", "--policy", str(shipped)])
    text = runner.invoke(app, ["whatif", "--policy", str(strict)])
    as_json = runner.invoke(app, ["whatif", "--policy", str(strict), "--json"])

    limited = runner.invoke(app, ["whatif", "--policy", str(strict), "--limit", "0"])

    assert same.exit_code == 0
    assert text.exit_code == 0 and "Policy strict would decide" in text.stdout
    assert "replaying" in text.stderr  # the progress bar, on stderr
    result = json.loads(as_json.stdout)
    differing = len(result["accounts_with_differences"])
    summary = (
        f"Policy strict would decide {result['differing_violations']} of "
        f"{result['violations']} violation(s) differently, on {differing} of "
        f"{result['accounts']} account(s): {totals_text(result['totals'])}."
    )
    assert same.stdout.strip() == (
        f"No difference: {DEFAULT_POLICY.version} decides the {result['violations']} "
        f"violation(s) on {result['accounts']} account(s) as recorded."
    )
    assert summary in text.stdout and summary in limited.stdout
    assert "Tables shown" not in text.stdout
    assert text.stdout.count("recorded at") == differing  # a table per account
    header = r"recorded at\W+violation\W+category\W+recorded\W+other policy\W+change"
    assert len(re.findall(header, text.stdout)) == differing
    for account in result["accounts_with_differences"]:
        assert f"{account['account_id']}: {totals_text(account['totals'])}" in text.stdout
        first = account["differences"][0]
        recorded_at = datetime.fromisoformat(first["recorded_at"]).strftime("%Y-%m-%d %H:%M")
        assert re.search(rf"{recorded_at}\W+{first['violation_id']}", text.stdout)
    assert "recorded at" not in limited.stdout
    assert f"Tables shown for 0 of those {differing} accounts (--limit)" in limited.stdout
    expected = what_if(varied.store, policy_from_mapping({"termination_after_strikes": 1}))
    assert result["totals"] == {name: expected.totals[name] for name in result["totals"]}
    assert result["totals"]["harsher"] > 0
    assert result["differing_violations"] == sum(
        len(a["differences"]) for a in result["accounts_with_differences"]
    )
    assert event_count(varied) == before


def totals_text(totals: dict[str, int]) -> str:
    return ", ".join(f"{totals.get(name, 0)} {name}" for name in whatif.CHANGES)


def test_the_cli_refuses_an_unusable_policy_file(tmp_path: Path, sqlite_url: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("termination_after_strikes = 0\n")

    result = CliRunner().invoke(
        app, ["whatif", "--policy", str(bad)], env={"ENFORCEMENT_DATABASE_URL": sqlite_url}
    )

    assert result.exit_code == 2
    assert "termination_after_strikes" in result.output


def test_the_cli_refuses_a_since_that_is_not_a_time(tmp_path: Path, sqlite_url: str) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("")

    result = CliRunner().invoke(
        app,
        ["whatif", "--policy", str(policy), "--since", "yesterday"],
        env={"ENFORCEMENT_DATABASE_URL": sqlite_url},
    )

    assert result.exit_code == 2
    assert result.stderr.startswith("--since must be an RFC 3339 time"), result.stderr


def test_missed_remediations_are_decided_again_by_the_other_policy(
    system: Container, clock: FakeClock
) -> None:
    """POLICY.md's ``remediation_window`` and ``missed_remediation_suspension`` are ladder
    numbers too: a replay decides each recorded expiry again (or a completion the other policy's
    shorter window would have refused as overdue), and counts the suspension it takes among the
    decisions on the remediation's violations."""
    report(system, "acct_missed", "spam")  # never remedied: expired, suspended for 7 days
    report(system, "acct_remedied", "spam")  # remedied on the third day
    remedied = system.standings.load("acct_remedied")
    clock.advance(3 * DAY)
    for remediation_id in remedied.remediations:
        system.service.operator(
            "acct_remedied", ops.CompleteRemediation(remediation_id, "fixed"), OPERATOR
        )
    clock.advance(4 * DAY + timedelta(minutes=1))
    for remediation_id in system.standings.load("acct_missed").remediations:
        system.service.expire_remediation("acct_missed", remediation_id, OPERATOR)

    def replay(**numbers: str) -> list[tuple[str, str, str, str]]:
        return changes(what_if(system.store, policy_from_mapping({"version": "p", **numbers})))

    assert replay() == []
    assert replay(missed_remediation_suspension="30d") == [
        ("acct_missed", "suspension for 7 days", "suspension for 30 days", "harsher")
    ]
    assert replay(remediation_window="1d") == [
        ("acct_remedied", "warning", "suspension for 7 days", "harsher")
    ]
    assert replay(remediation_window="14d") == [
        ("acct_missed", "suspension for 7 days", "warning", "milder")
    ]


def test_a_recorded_expiry_suspends_nothing_where_the_other_policy_requested_no_remediation(
    system: Container, clock: FakeClock
) -> None:
    """Spam that the other policy finds high is suspended for a day, with no remediation: the
    recorded expiry of the remediation the shipped policy requested suspends nothing in the
    replay, so it holds back no later suspension (which was compared as "fewer")."""
    report(system, "acct_1", "spam")
    clock.advance(7 * DAY + timedelta(minutes=1))
    for remediation_id in system.standings.load("acct_1").remediations:
        system.service.expire_remediation("acct_1", remediation_id, OPERATOR)
    clock.advance(DAY / 2)
    for violation_id in system.standings.load("acct_1").violations:
        system.service.operator("acct_1", ops.DismissViolation(violation_id, "no"), OPERATOR)
    clock.advance(DAY / 2)
    report(system, "acct_1", "spam")  # no prior strike: a warning
    other = policy_from_mapping(
        {"first_high_suspension": "1d", "categories": {"spam": {"default_severity": "high"}}}
    )

    assert changes(what_if(system.store, other)) == [
        ("acct_1", "suspension for 7 days", "suspension for 1 day", "milder"),
        ("acct_1", "warning", "suspension for 1 day", "harsher"),
    ]


def test_an_overdue_completion_expires_before_what_the_log_holds_after_the_due_time(
    system: Container, clock: FakeClock
) -> None:
    """Under a one-day ``remediation_window`` the remediation expires on day 1, and its 7-day
    suspension is in force when the phishing comes on day 2: that later suspension replaces it,
    it is not held behind it (which restricted nothing and hid the difference)."""
    start = clock()
    report(system, "acct_late", "spam")  # a warning; remedied on day 3 (due on day 7)
    [remediation_id] = system.standings.load("acct_late").remediations
    clock.advance(2 * DAY)
    report(system, "acct_late", "phishing", "high")  # a prior strike: suspended indefinitely
    clock.advance(DAY)
    system.service.operator("acct_late", ops.CompleteRemediation(remediation_id, "fixed"), OPERATOR)
    report(system, "acct_late", "phishing", "high")  # after the refused completion: held as before

    shorter = policy_from_mapping({"version": "p", "remediation_window": "1d"})

    assert what_if(system.store, shorter).violations == 3
    assert changes(what_if(system.store, shorter)) == [
        ("acct_late", "warning", "suspension for 7 days", "harsher")
    ]
    # From ``since`` on, the completion re-decided too is refused as overdue.
    assert changes(what_if(system.store, shorter, start)) == changes(what_if(system.store, shorter))


def test_the_json_is_the_text_the_whole_summary_dumped_gave(
    varied: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--json`` is written as the accounts are replayed, byte for byte the text
    ``json.dumps(summary.to_json(), indent=2, ensure_ascii=False)`` gave: differences or none,
    with ``--since`` or not, non-ASCII kept as is."""
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", varied.settings.database_url)
    strict, shipped = tmp_path / "strict.toml", tmp_path / "shipped.toml"
    strict.write_text('version = "stricte-é-✓"\ntermination_after_strikes = 1\n')
    shipped.write_text("")
    since = varied.clock() - 10 * DAY
    runs = [(strict, None), (strict, since), (shipped, None)]

    for policy_file, start in runs:
        policy = policy_from_mapping(tomllib.loads(policy_file.read_text()))
        whole = what_if(varied.store, policy, start).to_json()
        args = ["whatif", "--policy", str(policy_file), "--json"]
        if start is not None:
            args += ["--since", format_time(start)]

        result = CliRunner().invoke(app, args)

        assert result.exit_code == 0, result.output
        assert result.stdout == json.dumps(whole, indent=2, ensure_ascii=False) + "\n"
        assert ("stricte-é-✓" in result.stdout) == (policy_file == strict)
        assert (whole["accounts_with_differences"] != []) == (policy_file == strict)


def test_the_json_holds_one_accounts_differences_at_a_time(
    system: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``whatif --json`` of 1.1M events held every difference before printing them: 892 MB.
    Now, whenever an account is replayed, the differences alive are at most the previous
    account's (two), however many accounts differ."""
    accounts = [f"acct_{i:02d}" for i in range(12)]
    for account in accounts:  # warning, throttle, 30-day suspension: two differ under strict
        for _ in range(3):
            report(system, account, "spam")
    strict = tmp_path / "strict.toml"
    strict.write_text('version = "strict"\ntermination_after_strikes = 1\n')
    monkeypatch.setenv("ENFORCEMENT_DATABASE_URL", system.settings.database_url)
    alive: list[int] = []
    made: weakref.WeakSet[whatif.Difference] = weakref.WeakSet()
    replay = whatif.replay_account

    class Tracked(whatif.Difference):
        __slots__ = ("__weakref__",)

        def __init__(self, *args: Any) -> None:
            super().__init__(*args)
            made.add(self)

    def counting(*args: Any) -> Any:
        gc.collect()
        alive.append(len(made))
        return replay(*args)

    monkeypatch.setattr(whatif, "Difference", Tracked)
    monkeypatch.setattr(whatif, "replay_account", counting)

    result = CliRunner().invoke(app, ["whatif", "--policy", str(strict), "--json"])

    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)["accounts_with_differences"]
    assert [(a["account_id"], len(a["differences"])) for a in listed] == [
        (account, 2) for account in accounts
    ]
    assert len(alive) == len(accounts) and max(alive) <= 2


def test_a_recorded_appeal_overturns_the_decision_the_other_policy_took_in_its_place(
    system: Container, clock: FakeClock
) -> None:
    """The phishing's 7-day suspension was appealed and overturned on day 1, which dismissed the
    phishing: the spam on day 2 was a first strike (a warning). Under a 14-day first suspension
    the recorded appeal overturns the simulated suspension in its place, so the spam is still a
    warning there, and only the suspension's length differs."""
    report(system, "acct_1", "phishing", "high")
    [suspension] = [e for e in system.store.read_stream("acct_1") if e.type == "AccountSuspended"]
    clock.advance(DAY)
    filed = system.service.file_appeal("acct_1", suspension.event_id, "not us", OPERATOR)
    appeal_id = filed.events[0].data["appeal_id"]
    system.service.decide_appeal("acct_1", appeal_id, "overturned", "a false positive", OPERATOR)
    clock.advance(DAY)
    report(system, "acct_1", "spam")

    assert changes(what_if(system.store, DEFAULT_POLICY)) == []
    longer = policy_from_mapping({"first_high_suspension": "14d"})
    assert changes(what_if(system.store, longer)) == [
        ("acct_1", "suspension for 7 days", "suspension for 14 days", "harsher")
    ]
