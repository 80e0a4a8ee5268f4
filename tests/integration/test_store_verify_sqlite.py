"""``verify`` on SQLite hashes the text the database builds from each row (``_SQLITE_HASHED``),
and falls back to recomputing from the decoded row. These tests pin both halves: the database's
text is the recipe's for whatever this store writes, so the fast path is taken; a row the fast
text does not match is still judged by the recipe alone."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store_append import json_text, json_values

from events import EventStore, NewEvent, canonical_json, hashed_fields
from events.chain import GENESIS_HASH
from events.store import _SQLITE_HASHED

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)


def database_text(store: EventStore, account_id: str, version: int) -> Any:
    with store.engine.connect() as conn:
        return conn.exec_driver_sql(
            f"SELECT {_SQLITE_HASHED} FROM events WHERE account_id = ? AND version = ?",
            (account_id, version),
        ).scalar()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    account=json_text.filter(bool),
    type_=json_text.filter(bool),
    data=st.dictionaries(json_text, json_values, max_size=4),
    metadata=st.dictionaries(json_text, json_values, max_size=2),
)
def test_the_database_builds_the_recipes_text_of_every_event_this_store_writes(
    sqlite_store: EventStore, account: str, type_: str, data: dict, metadata: dict
) -> None:
    head = sqlite_store.head(account)
    [event] = sqlite_store.append(account, None, [NewEvent(type_, data, T0, metadata=metadata)])

    expected = (event.prev_hash + canonical_json(hashed_fields(event))).encode("utf-8")
    assert database_text(sqlite_store, account, head.version + 1) == expected
    assert hashlib.sha256(expected).hexdigest() == event.hash


def test_a_normal_log_verifies_without_reading_any_row_twice(
    sqlite_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        sqlite_store.append(f"acct_{n}", 0, [NewEvent("Noted", {"n": k}, T0) for k in range(4)])
    statements: list[str] = []
    fetch = EventStore._fetch

    def counting(self: EventStore, statement: str, params: Any) -> list[Any]:
        statements.append(statement)
        return fetch(self, statement, params)

    monkeypatch.setattr(EventStore, "_fetch", counting)

    results = list(sqlite_store.verify_all())

    assert [r.ok and r.events == 4 for _, r in results] == [True] * 3
    assert sqlite_store._sql.at_version not in statements


def insert_raw(
    store: EventStore,
    account_id: str,
    data_text: str,
    hash_of: dict,
    event_id: str,
    occurred_text: str = "2026-11-24 10:00:00.123456",
) -> None:
    """Store an event whose ``data`` column is ``data_text`` and whose hash is the recipe's
    over ``hash_of`` as its data (triggers are for UPDATE and DELETE: an INSERT is allowed)."""
    fields = {
        "event_id": event_id,
        "account_id": account_id,
        "version": 1,
        "type": "Noted",
        "schema_version": 1,
        "data": hash_of,
        "metadata": {},
        "occurred_at": "2026-11-24T10:00:00.123456Z",
        "recorded_at": "2026-11-24T10:00:00.123456Z",
    }
    digest = hashlib.sha256((GENESIS_HASH + canonical_json(fields)).encode()).hexdigest()
    with store.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO events (event_id, account_id, version, type, schema_version, data, "
                "metadata, occurred_at, recorded_at, prev_hash, hash) VALUES (:e, :a, 1, 'Noted', "
                "1, :d, '{}', :o, '2026-11-24 10:00:00.123456', :p, :h)"
            ),
            {
                "e": fields["event_id"],
                "a": account_id,
                "d": data_text,
                "o": occurred_text,
                "p": GENESIS_HASH,
                "h": digest,
            },
        )


def test_a_row_in_another_shape_is_judged_by_the_recipe_on_what_readers_get(
    sqlite_store: EventStore,
) -> None:
    # Written by something else, with spaces: the database's text differs from the hashed one,
    # but readers parse {"n": 1} and the hash is the recipe's over that.
    insert_raw(sqlite_store, "spaced", '{"n": 1}', {"n": 1}, "0195b6f0-0000-7000-8000-000000000001")
    # The same text, hashed over other content: broken.
    insert_raw(sqlite_store, "forged", '{"n": 1}', {"n": 2}, "0195b6f0-0000-7000-8000-000000000002")

    assert database_text(sqlite_store, "spaced", 1) is not None
    assert sqlite_store.verify("spaced").ok
    forged = sqlite_store.verify("forged")
    assert not forged.ok and forged.broken_at_version == 1
    assert forged.reason and "content" in forged.reason
    assert dict(sqlite_store.verify_all()) == {
        "forged": forged,
        "spaced": sqlite_store.verify("spaced"),
    }


@pytest.mark.parametrize(
    ("occurred_text", "readers_get_the_hashed_time"),
    [
        # SQLite's length() and substr() stop at a NUL; so does Python's fromisoformat.
        ("2026-11-24 10:00:00.123456\x00junk", True),
        ("2026-11-24 10:00:00.1234\x006", False),  # readers get .123400
        ("2026-11-24T10:00:00.123456", True),
        ("2026-11-24 10:00:00.123457", False),
    ],
)
def test_a_time_in_another_shape_is_judged_by_what_readers_decode(
    sqlite_store: EventStore, occurred_text: str, readers_get_the_hashed_time: bool
) -> None:
    # The hash is the recipe's over 10:00:00.123456; the stored text is another.
    insert_raw(
        sqlite_store,
        "edited",
        '{"n":1}',
        {"n": 1},
        "0195b6f0-0000-7000-8000-000000000003",
        occurred_text=occurred_text,
    )

    result = sqlite_store.verify("edited")

    if occurred_text.endswith(".123457"):  # the usual shape: the database's text, not matching
        assert database_text(sqlite_store, "edited", 1) is not None
    else:  # not the shape this store writes: no text from the database, the full recomputation
        assert database_text(sqlite_store, "edited", 1) is None
    assert result.ok is readers_get_the_hashed_time
    assert dict(sqlite_store.verify_all())["edited"] == result
