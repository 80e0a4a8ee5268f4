"""The CLI's history table writes times as the contract does (RFC 3339 UTC, microseconds, Z),
and says what a notice delivery's outcome was; text from the log is shown as written, never
read as Rich markup."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from rich.console import Console
from rich.table import Table

from enforcement.render import (
    history_csv_rows,
    history_json,
    history_table,
    history_tables,
    notices_table,
    standing_table,
)
from events.types import RecordedEvent
from events.wire import event_to_json
from projections.history import HistoryEntry

MOMENT = datetime(2026, 12, 4, 0, 46, 54, tzinfo=UTC)  # whole seconds, too


def event(event_type: str, data: dict[str, Any], version: int = 1) -> RecordedEvent:
    return RecordedEvent(
        position=version,
        event_id=f"0190c0de-0000-7000-8000-00000000000{version}",
        account_id="acct_1",
        version=version,
        type=event_type,
        schema_version=1,
        data=data,
        metadata={},
        occurred_at=MOMENT,
        recorded_at=MOMENT,
        prev_hash="0" * 64,
        hash="f" * 64,
    )


def table_text(*events: RecordedEvent) -> str:
    console = Console(width=250, record=True)
    console.print(history_table("acct_1", [HistoryEntry(e, {}, None, None) for e in events]))
    return console.export_text()


def column_text(table: Table, column: int) -> list[str]:
    return [str(cell) for cell in table.columns[column].cells]


def test_the_history_table_writes_recorded_at_with_a_z() -> None:
    text = table_text(event("ViolationReported", {}))
    assert "2026-12-04T00:46:54.000000Z" in text
    assert "+00:00" not in text


def test_the_history_table_says_how_each_notice_delivery_went() -> None:
    outcome = {"notice_id": "ntc_1", "notice_event_id": "e", "channel": "email", "attempt": 1}
    text = table_text(
        event("NoticeDeliveryFailed", {**outcome, "error": "smtp timeout", "final": False}),
        event("NoticeDelivered", {**outcome, "attempt": 2}, version=2),
        event(
            "NoticeDeliveryFailed",
            {**outcome, "channel": "webhook", "error": "undeliverable: no contact", "final": True},
            version=3,
        ),
    )
    assert "email, attempt 1: smtp timeout (will retry)" in text
    assert "email, attempt 2: delivered" in text
    assert "webhook, attempt 1: undeliverable: no contact (final)" in text
    nowhere = {**outcome, "channel": "none", "error": "undeliverable: no contact", "final": True}
    assert "no channel: undeliverable: no contact (final)" in table_text(
        event("NoticeDeliveryFailed", nowhere)
    )


def test_the_history_names_each_notice_and_what_a_copy_copies() -> None:
    """The id an operator sends a notice again by (``…/notices/{notice_id}/resend``)."""
    notice = {"notice_id": "ntc_1", "kind": "warning", "resend_of": None}
    first = {"notice_id": "ntc_1", "notice_event_id": "e", "issued_at": "t", "reason": "r"}
    first["channels"] = None
    copy_ = {**notice, "notice_id": "ntc_2", "resend_of": first}
    old = {"notice_id": "ntc_0", "kind": "suspension"}  # recorded at schema version 1
    events = [event("NoticeIssued", d, version=v) for v, d in ((1, notice), (2, copy_), (3, old))]
    text = table_text(*events)
    assert "notice ntc_1 (warning) " in text  # no more in its cell
    assert "notice ntc_2 (warning), a copy of ntc_1" in text
    assert "notice ntc_0 (suspension)" in text
    header, *rows = history_csv_rows(HistoryEntry(e, {}, None, None) for e in events)
    assert [row[header.index("delivery")] for row in rows] == [
        "notice ntc_1 (warning)",
        "notice ntc_2 (warning), a copy of ntc_1",
        "notice ntc_0 (suspension)",
    ]


def test_the_history_csv_says_how_each_notice_delivery_went_as_the_table_does() -> None:
    outcome = {"notice_id": "ntc_1", "notice_event_id": "e", "channel": "email", "attempt": 1}
    events = [
        event("ViolationReported", {}),
        event("NoticeDeliveryFailed", {**outcome, "error": "=1+1", "final": False}, version=2),
    ]
    header, *rows = history_csv_rows(HistoryEntry(e, {}, None, None) for e in events)
    delivery = header.index("delivery")
    assert [row[delivery] for row in rows] == ["", "email, attempt 1: =1+1 (will retry)"]


def test_text_from_the_log_is_shown_as_written_not_read_as_markup() -> None:
    """A webhook receiver's answer ends up in a delivery error, and an operator's reason in the
    standing's history: read as Rich markup, ``[/bold]`` made ``enforcement history`` fail for
    good (the log never changes), and ``[link=…]`` drew a link the account chose."""
    answer = "[/bold] [link=http://evil.example]appeal here[/link]"
    failed = {"channel": "webhook", "attempt": 1, "error": f"BadStatusLine: {answer}"}
    text = table_text(event("NoticeDeliveryFailed", {**failed, "final": False}))
    assert f"webhook, attempt 1: BadStatusLine: {answer} (will retry)" in text

    console = Console(width=250, record=True)
    console.print(standing_table({"account_id": "acct_1", "status": "[/bold] x", "strikes": 0}))
    assert "[/bold] x" in console.export_text()


def test_control_characters_from_the_log_are_shown_escaped_not_sent_to_the_terminal() -> None:
    """A webhook receiver's status line ends up in a delivery error as it was sent
    (``BadStatusLine``): its escape sequences, printed raw, moved the operator's cursor up and
    erased lines of ``enforcement history`` (hiding the events above), or set the terminal's
    title; a bidirectional override reordered what followed. Every character that is not
    printable is shown as its escape, in both tables."""
    answer = "\x1b]0;PWNED\x07\x1b[1A\x1b[2Kall good\x9b31m\u202eevil\r\n"
    failed = {"channel": "webhook", "attempt": 1, "error": f"BadStatusLine: {answer}"}
    entry = HistoryEntry(event("NoticeDeliveryFailed", {**failed, "final": False}), {}, None, None)
    console = Console(width=400, record=True)
    console.print(history_table("acct_1", [entry]))
    console.print(standing_table({"account_id": "acct_1", "suspension": {"reason": answer}}))
    text = console.export_text()

    assert [c for c in text if not c.isprintable() and c != "\n"] == []
    shown = r"\x1b]0;PWNED\x07\x1b[1A\x1b[2Kall good\x9b31m\u202eevil\r\n"
    assert f"BadStatusLine: {shown} (will retry)" in text
    assert r"\u001b[2Kall good\x9b31m\u202eevil\r\n" in text  # JSON's escapes, then ours


def test_the_history_json_is_the_array_json_dumps_writes() -> None:
    entries = [
        HistoryEntry(event("ViolationReported", {"description": "é\nline"}), {}, None, None),
        HistoryEntry(
            event("AccountSuspended", {"reason": "x"}, version=2),
            {"status": {"from": "good_standing", "to": "suspended"}},
            None,
            None,
        ),
    ]
    for shown in ([], entries[:1], entries):
        whole = [{**event_to_json(e.event), "change": e.change} for e in shown]
        expected = json.dumps(whole, indent=2, ensure_ascii=False) + "\n"
        assert "".join(history_json(shown)) == expected
        assert json.loads(expected) == whole


def test_the_history_json_is_written_an_entry_at_a_time_never_held_whole() -> None:
    """``enforcement history --format json`` of a 100,000-event account held every entry and
    then their whole text: 1.6 GB."""
    read = 0

    def entries() -> Iterator[HistoryEntry]:
        nonlocal read
        for version in range(1, 1001):
            read += 1
            yield HistoryEntry(event("ViolationReported", {}, version=version), {}, None, None)

    pieces = history_json(entries())
    first = next(pieces)
    assert read == 1
    assert first.startswith("[\n  {") and '"version": 1' in first


def test_a_long_history_is_made_a_table_at_a_time_as_it_is_read() -> None:
    read = 0

    def entries() -> Iterator[HistoryEntry]:
        nonlocal read
        for version in range(1, 2501):
            read += 1
            yield HistoryEntry(event("ViolationReported", {}, version), {}, None, None)

    # Given a history of 2,500 events, when it is made into tables of at most 1,000 rows
    tables = history_tables("acct_1", entries(), rows=1000)

    # Then the first table is made once its 1,000 entries are read, no more
    first = next(tables)
    assert (read, first.row_count) == (1000, 1000)
    rest = list(tables)
    assert [t.row_count for t in rest] == [1000, 500]
    # the first titled as one table was, the others as its continuation, every version in order
    assert [str(t.title) for t in [first, *rest]] == [
        "History of acct_1",
        "History of acct_1 (continued)",
        "History of acct_1 (continued)",
    ]
    versions = [int(text) for t in [first, *rest] for text in column_text(t, 0)]
    assert versions == list(range(1, 2501))


def test_a_history_of_whole_tables_ends_with_the_last_and_an_empty_one_is_one_table() -> None:
    entries = [HistoryEntry(event("ViolationReported", {}), {}, None, None)] * 4
    assert [t.row_count for t in history_tables("acct_1", entries, rows=2)] == [2, 2]
    assert [t.row_count for t in history_tables("acct_1", [], rows=2)] == [0]


def test_the_standing_table_lists_each_field_under_the_accounts_name() -> None:
    table = standing_table(
        {"account_id": "acct_1", "status": "suspended", "strikes": 2, "restrictions": ["é"]}
    )
    console = Console(width=250, record=True)
    console.print(table)
    text = console.export_text()

    assert "Standing of acct_1" in text
    assert "field" not in text and "value" not in text  # no header row
    rows = list(zip(column_text(table, 0), column_text(table, 1), strict=True))
    assert rows == [("status", "suspended"), ("strikes", "2"), ("restrictions", '["é"]')]
    assert [column.style for column in table.columns] == ["bold", ""]


def test_the_history_table_says_what_each_event_changed_and_under_which_rule() -> None:
    change = {
        "status": {"from": "good_standing", "to": "suspended"},
        "strikes": {"from": 0, "to": 1},
        "suspension": {"from": None, "to": {"reason": "x"}},
        "restrictions": {"from": ["gate"], "to": None},
    }
    entries = [
        HistoryEntry(event("AccountSuspended", {}), change, "policy-7", {"ground": "spam"}),
        HistoryEntry(event("ViolationReported", {}, version=2), {}, "policy-7", None),
        HistoryEntry(event("ViolationReported", {}, version=3), {}, None, None),
    ]
    table = history_table("acct_1", entries)

    assert str(table.title) == "History of acct_1"
    assert [str(column.header) for column in table.columns] == [
        "v",
        "recorded at",
        "event",
        "changed",
        "rule",
    ]
    changed, rule = column_text(table, 3), column_text(table, 4)
    assert changed == [
        "status: good_standing → suspended; strikes: 0 → 1; suspension changed; "
        "restrictions changed",
        "",
        "",
    ]
    assert rule == ["policy-7 · spam", "policy-7", ""]


def test_a_long_word_in_the_history_table_is_folded_not_cut() -> None:
    """A receiver's answer or a URL longer than its column is shown whole, over lines."""
    word = "A" * 150
    failed = {"channel": "webhook", "attempt": 1, "error": word, "final": True}
    console = Console(width=80, record=True)
    console.print(
        history_table(
            "acct_1", [HistoryEntry(event("NoticeDeliveryFailed", failed), {}, None, None)]
        )
    )
    text = console.export_text()
    assert "…" not in text and text.count("A") == len(word)


def test_a_history_is_cut_into_tables_of_1000_rows_the_first_titled_as_the_history() -> None:
    entry = HistoryEntry(event("ViolationReported", {}), {}, None, None)
    tables = list(history_tables("acct_1", [entry] * 1001))
    assert [(t.row_count, str(t.title)) for t in tables] == [
        (1000, "History of acct_1"),
        (1, "History of acct_1 (continued)"),
    ]
    for rows, counts in ((1, [1]), (3, [2, 1])):
        tables = list(history_tables("acct_1", [entry] * rows, rows=2))
        assert [t.row_count for t in tables] == counts
        assert [str(t.title) for t in tables] == [
            "History of acct_1",
            *["History of acct_1 (continued)"] * (len(counts) - 1),
        ]


def test_the_history_csv_has_a_column_for_each_field_of_an_event_and_its_rule() -> None:
    suspended = {"status": {"from": "good_standing", "to": "suspendé"}}
    entries = [
        HistoryEntry(event("AccountSuspended", {}), suspended, "policy-7", {"ground": "spam"}),
        HistoryEntry(event("ViolationReported", {}, version=2), {}, None, None),
    ]
    header, *rows = history_csv_rows(entries)
    assert header == [
        "version",
        "position",
        "recorded_at",
        "type",
        "event_id",
        "change",
        "policy_version",
        "ground",
        "hash",
        "delivery",
    ]
    common = {"recorded_at": "2026-12-04T00:46:54.000000Z", "hash": "f" * 64, "delivery": ""}
    assert [dict(zip(header, row, strict=True)) for row in rows] == [
        {
            **common,
            "version": "1",
            "position": "1",
            "type": "AccountSuspended",
            "event_id": "0190c0de-0000-7000-8000-000000000001",
            "change": '{"status": {"from": "good_standing", "to": "suspendé"}}',
            "policy_version": "policy-7",
            "ground": "spam",
        },
        {
            **common,
            "version": "2",
            "position": "2",
            "type": "ViolationReported",
            "event_id": "0190c0de-0000-7000-8000-000000000002",
            "change": "{}",
            "policy_version": "",
            "ground": "",
        },
    ]


def test_the_notices_table_shows_a_receivers_error_as_written_a_line_per_channel() -> None:
    """A receiver's answer ends up in a channel's ``last_error``: shown as written (its control
    characters as escapes, no markup read), each channel on its own line."""
    answer = "BadStatusLine: \x1b[2J[/bold]"
    channel = {"attempts": 3, "last_error": answer, "last_outcome_at": "t"}
    notice = {
        "notice_id": "ntc_2",
        "kind": "suspension",
        "issued_at": "2026-12-04T00:46:54.000000Z",
        "resend_of": "ntc_1",
        "state": "pending",
        "channels": [
            {**channel, "channel": "webhook", "state": "retrying"},
            {**channel, "channel": "email", "state": "delivered", "attempts": 1},
        ],
    }
    silent = {**notice, "notice_id": "ntc_3", "resend_of": None, "channels": []}
    due = {"channel": "webhook", "state": "awaiting", "attempts": 0, "last_error": None}
    awaited = {**silent, "notice_id": "ntc_4", "channels": [{**due, "last_outcome_at": None}]}
    console = Console(width=250, record=True)
    console.print(notices_table("acct_1", [notice, silent, awaited]))
    text = console.export_text()
    assert "Notices of acct_1" in text
    [header] = [line for line in text.splitlines() if "┃" in line and "━" not in line]
    assert [cell.strip() for cell in header.split("┃")[1:-1]] == [
        "notice",
        "kind",
        "issued at",
        "state",
        "channels",
    ]
    assert "ntc_2 (a copy of ntc_1)" in text
    assert "webhook: retrying after 3 tries (BadStatusLine: \\x1b[2J[/bold])" in text
    assert "\x1b" not in text
    [email] = [line for line in text.splitlines() if "email:" in line]
    assert "email: delivered after 1 try " in email and "BadStatusLine" not in email
    [quiet] = [line for line in text.splitlines() if "ntc_3" in line]
    assert "no outcome yet" in quiet and quiet.split("│")[1].strip() == "ntc_3"
    [due_row] = [line for line in text.splitlines() if "ntc_4" in line]
    assert due_row.split("│")[5].strip() == "webhook: no outcome yet"  # no tries to count

    # Too narrow for a cell: it folds onto more lines, never cut short.
    narrow = Console(width=80, record=True)
    long_error = {**channel, "channel": "webhook", "state": "retrying", "last_error": "x" * 60}
    narrow.print(notices_table("acct_1", [{**notice, "channels": [long_error]}]))
    folded = narrow.export_text()
    assert "…" not in folded and folded.count("x") == 60
    assert "acct_1 " not in text.replace("Notices of acct_1", "")  # no account column

    console = Console(width=250, record=True)
    every = [{**notice, "account_id": "acct_\x1b9"}, {**silent, "account_id": "acct_2"}]
    console.print(notices_table("every account", every, accounts=True))
    text = console.export_text()
    assert "Notices of every account" in text
    [header] = [line for line in text.splitlines() if "issued at" in line]
    assert header.index("account") < header.index("notice")
    [row] = [line for line in text.splitlines() if "ntc_3" in line]
    assert row.index("acct_2") < row.index("ntc_3")
    assert "acct_\\x1b9" in text and "\x1b" not in text
