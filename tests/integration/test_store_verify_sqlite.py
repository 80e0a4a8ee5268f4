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
from hypothesis import given, settings
from hypothesis import strategies as st

from events import EventStore, NewEvent, canonical_json
from events import rows as event_rows
from events import store as events_store
from events.chain import GENESIS_HASH, verify_links
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

    monkeypatch.setattr(event_rows, "event_hash", refuse)
    monkeypatch.setattr(event_rows, "sqlite_row_matches", refuse)

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


# ------------------------------------------------- the written-out loop against the reference

# What a tampered SQLite cell can hold: texts (JSON or not, times of every length), numbers,
# blobs and NULL; and the values this store writes, to move between columns.
CELLS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "2026-11-24 10:00:00.123456",
            "2026-11-24T10:00:00.123456",
            '{"n":1}',
            "{}",
            '{"n": 1}',
            '"x"',
            "[1,2]",
            "Noted",
            "acct_0",
            GENESIS_HASH,
        ]
    ),
    st.integers(-3, 5),
    st.floats(allow_nan=False),
    st.booleans(),
    st.binary(max_size=4),
    st.none(),
)


@pytest.fixture(scope="module")
def written_rows(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Any, ...]]:
    """A stream of this store's writing, as ``Statements.verify`` reads it on SQLite."""
    from enforcement.migrations import upgrade
    from events import create_engine

    url = f"sqlite:///{tmp_path_factory.mktemp('verify_rows') / 'log.db'}"
    upgrade(url)
    engine = create_engine(url)
    try:
        store = EventStore(engine)
        store.append(
            "acct_0",
            0,
            [
                NewEvent("Noted", {"n": 1, "é\n": [1.5, None, "\x00"]}, T0, {"by": "op ✓"}),
                NewEvent("Noted\t2", {}, T0),
                NewEvent("Noted", {"big": 2**70, "f": 1e-7}, T0),
            ],
        )
        return [tuple(r) for r in store._verify_rows("acct_0")]
    finally:
        engine.dispose()


@settings(max_examples=300, deadline=None)
@given(edits=st.lists(st.tuples(st.integers(0, 2), st.integers(1, 12), CELLS), max_size=3))
def test_the_written_out_loop_judges_every_row_as_the_reference_does(
    written_rows: list[tuple[Any, ...]], edits: list[tuple[int, int, Any]]
) -> None:
    rows = [list(r) for r in written_rows]
    for row, column, value in edits:
        rows[row][column] = value
    reference = verify_links(rows, events_store._link, event_rows.sqlite_row_matches)
    assert event_rows.verify_sqlite_rows(rows) == reference
