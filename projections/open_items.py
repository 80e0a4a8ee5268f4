"""The records of a state that can still be open, found once and carried to the states after it.

``view``, ``active_strikes`` and ``active_throttles`` (``projections.standing``) look in a
state's tables for what is open at an instant: violations not dismissed within the strike
lookback, throttles that have not run out, open remediations, abuse reports and appeals. A long
history holds thousands of closed records, and every request on the account looked at each of
them, several times. Here a state keeps, per table, the records that can be open at any instant
at or after a time text ``since`` (``OpenItems``), in table order; the caller still tests each
of them at its own instant, so the answer is the same as testing every record.

A state made from another by ``apply``/``apply_all`` holds its tables as ``Table`` copies that
note the keys they changed, and the other state's ``OpenItems`` (``StandingState.open_base``):
its own are the other's, less what closed, plus what the events changed or added, so a request
costs what its events changed and what is open, not the history. Whatever does not fit that
(no earlier ``OpenItems``, an instant before their ``since``, a record changed in place that
may be open again, an instant before the year 1000) is found by looking at every record, as
before; a state asked about an instant before its ``since`` starts its ``OpenItems`` again from
that instant.

What a table may hold is decided by a *filter* made for ``since``: a record it refuses must be
closed at every instant at or after ``since`` (a dismissed violation, one that occurred before
``since`` less the lookback, a throttle that ran out by ``since``, a decided appeal).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

Filter = Callable[[Any], bool]  # a record → whether it may be open at or after ``since``
# ``format_time``'s text of the years 1000 to 9999, whose order is the order of the times; it
# writes earlier years unpadded ("999-…"), which do not sort with them.
CANONICAL_TEXT_LENGTH = len("2026-11-24T10:00:00.000000Z")


class HasOpenItems(Protocol):
    """What this module reads and writes of a ``StandingState``."""

    open_items: OpenItems | None
    open_base: OpenItems | None


@dataclass(slots=True)
class OpenItems:
    """Per table (and variant, e.g. a strike lookback), the records that may be open at or after
    ``since``, in table order. Entries are only ever added (tuples): it may be shared."""

    since: str
    tables: dict[Hashable, tuple[Any, ...]] = field(default_factory=dict)


def open_records(
    state: HasOpenItems,
    table: Mapping[str, Any],
    key: str,
    variant: Hashable,
    at: str,
    filter_for: Callable[[str], Filter],
) -> Iterable[Any]:
    """The records of ``table`` (keyed by each record's attribute ``key``) that may be open at
    the time text ``at`` (``format_time``'s): a superset of the open ones, in table order.
    ``filter_for(since)`` makes the table's filter for ``since`` (see the module); ``variant``
    names the table and anything the filter depends on besides ``since``."""
    if len(at) != CANONICAL_TEXT_LENGTH:
        return table.values()  # a year before 1000: its text does not sort as its time
    items = state.open_items
    if items is None or at < items.since:
        # None yet, or not sure of so early an instant: start again from it (an earlier
        # ``OpenItems`` stays whole for whoever still holds it).
        items = state.open_items = OpenItems(at)
    found = items.tables.get(variant)
    if found is None:
        keep = filter_for(items.since)
        found = _carried(state.open_base, table, key, variant, items.since, keep)
        if found is None:
            found = tuple(r for r in table.values() if keep(r))
        items.tables[variant] = found
    return found


def _carried(
    base: OpenItems | None,
    table: Mapping[str, Any],
    key: str,
    variant: Hashable,
    since: str,
    keep: Filter,
) -> tuple[Any, ...] | None:
    """The table's records from the state it was made from (``base``), or None when they cannot
    be carried over: no base, no note of what changed, an earlier ``since``, or a record
    changed in place that only now may be open (its place among the others is unknown)."""
    touched: dict[str, None] | None = getattr(table, "touched", None)
    if base is None or touched is None or since < base.since:
        return None
    before = base.tables.get(variant)
    if before is None:
        return None
    appended: dict[str, None] = table.appended  # type: ignore[attr-defined]
    found = []
    carried: set[str] = set()
    for record in before:
        k = getattr(record, key)
        carried.add(k)
        if k in appended:
            continue  # set again after a pop: it is at the end now (below)
        if k in touched:
            record = table.get(k)  # changed in place, or popped
            if record is None:
                continue
        if keep(record):
            found.append(record)
    for k in touched:
        if k not in appended and k not in carried:
            record = table.get(k)
            if record is not None and keep(record):
                return None
    for k in appended:
        record = table.get(k)
        if record is not None and keep(record):
            found.append(record)
    return tuple(found)
