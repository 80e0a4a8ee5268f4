"""Every read of the log says the order it returns events in, and a batch is inserted in event
order: the databases return an index's order without it today, which no read may rely on."""

from __future__ import annotations

import pytest

from events.statements import STATEMENTS


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_every_read_of_events_is_ordered_and_a_batch_is_inserted_in_order(dialect: str) -> None:
    sql = STATEMENTS[dialect]
    for statement in (sql.stream, sql.stream_until):
        assert statement.endswith(" ORDER BY version")
    for statement in (sql.stream_limit, sql.stream_until_limit, sql.verify):
        assert statement.endswith(" ORDER BY version LIMIT " + ("%s" if sql.postgres else "?"))
    assert " ORDER BY position LIMIT " in sql.all
    assert " ORDER BY account_id, version LIMIT " in sql.verify_all
    assert " ORDER BY version DESC LIMIT 1" in sql.head
    for statement in (sql.insert_arrays, sql.insert_arrays_after):
        assert statement.endswith(" ORDER BY n RETURNING position, event_id::text")
