"""Rendering for the CLI: Rich tables, JSON and CSV of standings and histories."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from rich.table import Table
from rich.text import Text

from events.timefmt import format_time
from events.wire import event_to_json
from projections.history import HistoryEntry


def _shown(text: str) -> Text:
    """``text`` as a table cell: shown as written, never read as Rich markup, and every
    character that is not printable written as its escape (``\\x1b``, ``\\u202e``, ``\\n``).
    A terminal acts on control characters rather than showing them: a webhook receiver's
    status line, kept in a delivery error, could move the cursor and erase the rows above it,
    and a bidirectional override reorders what follows it."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)
    return Text(text)


def standing_table(standing: dict[str, Any]) -> Table:
    """Every cell is ``_shown``: what the log holds (an operator's reason, a receiver's answer
    in a delivery error) is shown as written, never read as Rich markup nor by the terminal."""
    table = Table(title=Text(f"Standing of {standing['account_id']}"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    for key, value in standing.items():
        if key == "account_id":
            continue
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        table.add_row(_shown(key), _shown(text))
    return table


def _change_text(change: dict[str, Any]) -> str:
    parts = []
    for key, pair in change.items():
        before, after = pair["from"], pair["to"]
        if isinstance(after, list | dict) or isinstance(before, list | dict):
            parts.append(f"{key} changed")
        else:
            parts.append(f"{key}: {before} → {after}")
    return "; ".join(parts)


def _delivery_text(event_type: str, data: dict[str, Any]) -> str:
    """What a notice, or its delivery's outcome, says (it changes nothing in the standing): a
    notice its id and kind (the id an operator sends again), and what it copies, if it does."""
    if event_type == "NoticeIssued":
        first = data.get("resend_of")
        copy = "" if not isinstance(first, dict) else f", a copy of {first.get('notice_id')}"
        return f"notice {data.get('notice_id')} ({data.get('kind')}){copy}"
    channel = data.get("channel")
    attempt = "no channel" if channel == "none" else f"{channel}, attempt {data.get('attempt')}"
    if event_type == "NoticeDelivered":
        return f"{attempt}: delivered"
    if event_type == "NoticeDeliveryFailed":
        last = " (final)" if data.get("final") else " (will retry)"
        return f"{attempt}: {data.get('error')}{last}"
    return ""


def notices_table(whose: str, notices: Iterable[dict[str, Any]], accounts: bool = False) -> Table:
    """``enforcement notices``: each notice (``NoticeDeliveries.to_json``) with a line per
    channel, and with ``accounts`` its account first (every account's). Every cell is
    ``_shown``, each channel's line alone: a receiver's error text is shown as written."""
    table = Table(title=Text(f"Notices of {whose}"))
    columns = ("notice", "kind", "issued at", "state", "channels")
    for column in ("account", *columns) if accounts else columns:
        table.add_column(column, overflow="fold")
    for notice in notices:
        copy = notice["resend_of"]
        name = notice["notice_id"] + ("" if copy is None else f" (a copy of {copy})")
        lines = [_shown(_channel_text(c)) for c in notice["channels"]] or [Text("no outcome yet")]
        cells = [name, notice["kind"], notice["issued_at"], notice["state"]]
        if accounts:
            cells.insert(0, notice["account_id"])
        table.add_row(*map(_shown, cells), Text("\n").join(lines))
    return table


def _channel_text(channel: dict[str, Any]) -> str:
    """A channel's state and tries, and its last error unless it delivered."""
    if channel["state"] == "awaiting":
        return f"{channel['channel']}: no outcome yet"
    tries = channel["attempts"]
    text = (
        f"{channel['channel']}: {channel['state']} after {tries} tr{'y' if tries == 1 else 'ies'}"
    )
    if channel["state"] != "delivered" and channel["last_error"] is not None:
        text += f" ({channel['last_error']})"
    return text


# Rows per table of a history: Rich sizes a table's columns over all its rows, so a long history
# is printed a table at a time, as it is read (100,000 rows held in one table took 556 MB).
HISTORY_TABLE_ROWS = 1000


def history_tables(
    account_id: str, entries: Iterable[HistoryEntry], rows: int = HISTORY_TABLE_ROWS
) -> Iterator[Table]:
    """The history as tables of at most ``rows`` rows each, made as ``entries`` are read: the
    first titled "History of …", the others "… (continued)". An empty history is one empty
    table."""
    chunk: list[HistoryEntry] = []
    made = 0
    for entry in entries:
        chunk.append(entry)
        if len(chunk) == rows:
            yield history_table(account_id, chunk, continued=made > 0)
            made, chunk = made + 1, []
    if chunk or not made:
        yield history_table(account_id, chunk, continued=made > 0)


def history_table(
    account_id: str, entries: Iterable[HistoryEntry], continued: bool = False
) -> Table:
    """As ``standing_table``, every cell is ``_shown``."""
    title = f"History of {account_id}" + (" (continued)" if continued else "")
    table = Table(title=Text(title))
    for column in ("v", "recorded at", "event", "changed", "rule"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        e = entry.event
        rule = entry.policy_version or ""
        if entry.statement_of_reasons:
            rule += f" · {entry.statement_of_reasons.get('ground', '')}"
        changed = _change_text(entry.change) or _delivery_text(e.type, e.data)
        cells = (str(e.version), format_time(e.recorded_at), e.type, changed, rule)
        table.add_row(*map(_shown, cells))
    return table


def history_json(entries: Iterable[HistoryEntry]) -> Iterator[str]:
    """Events in the API's shape, each with an added ``change`` object: the text of one JSON
    array (as ``json.dumps(…, indent=2)`` writes it), in pieces, an entry at a time, so that a
    long history is never held whole."""
    opened = False
    for entry in entries:
        item = json.dumps(
            {**event_to_json(entry.event), "change": entry.change}, indent=2, ensure_ascii=False
        )
        yield json_array_item(item, not opened, "  ")
        opened = True
    yield "\n]\n" if opened else "[]\n"


def json_array_item(text: str, first: bool, indent: str) -> str:
    """An item of a JSON array as ``json.dumps(…, indent=2)`` writes it, for text written a
    piece at a time: what comes before it (the array's opening for the ``first``, else a
    comma) and ``text`` (the item's own ``json.dumps(item, indent=2)``), every line indented by
    ``indent``, the array's depth ("  " at the top level). JSON escapes a newline within a
    string, so each one in ``text`` is a line break. The caller closes the array."""
    return ("[\n" if first else ",\n") + indent + text.replace("\n", "\n" + indent)


def history_csv_rows(entries: Iterable[HistoryEntry]) -> Iterator[list[str]]:
    yield [
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
    for entry in entries:
        e = event_to_json(entry.event)
        ground = (entry.statement_of_reasons or {}).get("ground", "")
        yield [
            str(e["version"]),
            str(e["position"]),
            e["recorded_at"],
            e["type"],
            e["event_id"],
            json.dumps(entry.change, ensure_ascii=False),
            entry.policy_version or "",
            ground,
            e["hash"],
            # A notice delivery's outcome, as the table shows it (it starts with the channel's
            # name, so no receiver's error text opens the cell as a spreadsheet formula).
            _delivery_text(entry.event.type, entry.event.data),
        ]
