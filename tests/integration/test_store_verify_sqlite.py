"""``verify`` on SQLite hashes a row with its stored JSON texts spliced in when the row has the
shapes this store writes, and otherwise recomputes the hash from the row as readers decode it.
These tests pin both halves: the splice is taken for what this store writes, and a row in any
other shape is judged by what readers get."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from events import EventStore, NewEvent, canonical_json
from events import store as events_store
from events.chain import GENESIS_HASH
from events.dialects import drop_append_only_ddl

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)


def test_what_this_store_writes_verifies_by_the_splice_alone(
    sqlite_store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        sqlite_store.append(
            f"acct_{n}", 0, [NewEvent("Noted", {"n": k, "é": [k, None]}, T0) for k in range(4)]
        )

    def refuse(*_args: Any) -> None:
        raise AssertionError("a row of this store's shapes was recomputed")

    monkeypatch.setattr(events_store, "event_hash", refuse)

    assert [r.ok and r.events == 4 for _, r in sqlite_store.verify_all()] == [True] * 3


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
        # Python's fromisoformat stops at a NUL, as readers do.
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

    assert result.ok is readers_get_the_hashed_time
    assert dict(sqlite_store.verify_all())["edited"] == result


def test_a_read_refuses_a_time_it_cannot_parse_in_any_row(sqlite_store: EventStore) -> None:
    """Reads parse a time met in the row before only once; the first row's is parsed too."""
    sqlite_store.append("blank_first", 0, [NewEvent("Noted", {"n": k}, T0) for k in range(2)])
    with sqlite_store.engine.begin() as conn:
        for statement in drop_append_only_ddl("sqlite"):
            conn.exec_driver_sql(statement)
        conn.exec_driver_sql(
            "UPDATE events SET occurred_at = '' WHERE account_id = 'blank_first' AND version = 1"
        )
    with pytest.raises(ValueError):
        sqlite_store.read_stream("blank_first")
    with pytest.raises(ValueError):
        sqlite_store.read_all()
