"""The log's integrity, on SQLite and on PostgreSQL: the database refuses to change recorded events,
and when someone changes them anyway (triggers dropped), ``verify`` finds where."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError

from events import (
    AppendOnlyViolation,
    EventStore,
    NewEvent,
    StoreError,
    chain_hash,
    hashed_fields,
)
from events.dialects import APPEND_ONLY_MESSAGE, append_only_ddl, drop_append_only_ddl
from events.schema import events
from events.store import translate_append_only

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)
EVENTS_PER_STREAM = 5


def new(n: int) -> NewEvent:
    return NewEvent("Noted", {"n": n, "note": "ünïcode ✓"}, T0, metadata={"actor": "op_1"})


def fill(store: EventStore, account_id: str) -> list:
    return store.append(account_id, 0, [new(n) for n in range(1, EVENTS_PER_STREAM + 1)])


def snapshot(engine: sa.Engine) -> list:
    with engine.connect() as conn:
        return conn.execute(sa.select(events).order_by(events.c.position)).all()


# ---------------------------------------------------------------- the database refuses


REFUSED = [
    "UPDATE events SET type = 'Forged' WHERE version = 2",
    "UPDATE events SET hash = prev_hash",
    "DELETE FROM events WHERE version = 3",
    "DELETE FROM events",
]


def test_no_append_only_triggers_are_made_up_for_a_database_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="unsupported database 'mysql'"):
        append_only_ddl("mysql")


@pytest.mark.parametrize("verb", ["INSERT OR REPLACE", "REPLACE"])
def test_sqlite_refuses_a_replace_of_a_recorded_event(sqlite_store: EventStore, verb: str) -> None:
    """SQLite's REPLACE deletes the row an insert conflicts with without firing DELETE
    triggers, unless ``recursive_triggers`` is on: the store's connections turn it on."""
    store, engine = sqlite_store, sqlite_store.engine
    fill(store, "acct_1")
    before = snapshot(engine)
    columns = ", ".join(c.name for c in events.columns)
    forged = (
        f"{verb} INTO events ({columns}) SELECT position, event_id, account_id, version, "
        "'Forged', schema_version, data, metadata, occurred_at, recorded_at, prev_hash, hash "
        "FROM events WHERE version = 1"
    )

    error = refusal(engine, forged)

    assert APPEND_ONLY_MESSAGE in str(error.orig)
    assert snapshot(engine) == before


def refusal(engine: sa.Engine, statement: str) -> DBAPIError:
    with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
        conn.exec_driver_sql(statement)
    return caught.value


def test_the_database_refuses_update_and_delete(store: EventStore, engine: sa.Engine) -> None:
    fill(store, "acct_1")
    before = snapshot(engine)

    for statement in REFUSED:
        error = refusal(engine, statement)

        assert APPEND_ONLY_MESSAGE in str(error.orig), statement
        assert isinstance(translate_append_only(error), AppendOnlyViolation)
    assert snapshot(engine) == before
    assert store.verify("acct_1").ok


def test_another_database_error_is_not_taken_for_the_append_only_refusal(
    engine: sa.Engine,
) -> None:
    error = refusal(engine, "INSERT INTO no_such_table VALUES (1)")

    translated = translate_append_only(error)

    assert type(translated) is StoreError and str(translated) == str(error.orig)


@pytest.mark.postgres
def test_postgresql_refuses_truncate_and_names_each_refused_operation(
    pg_store: EventStore,
) -> None:
    fill(pg_store, "acct_1")
    before = snapshot(pg_store.engine)
    statements = {
        "UPDATE": "UPDATE events SET data = '{}'::jsonb",
        "DELETE": "DELETE FROM events",
        "TRUNCATE": "TRUNCATE events",
    }

    for operation, statement in statements.items():
        error = refusal(pg_store.engine, statement)

        assert f"{APPEND_ONLY_MESSAGE} ({operation} on events)" in str(error.orig)
    assert snapshot(pg_store.engine) == before


# ---------------------------------------------------------------- tampering is found

Tamper = Callable[[sa.Connection, str, int], None]


def set_column(column: str, value: Callable[[sa.Row], object]) -> Tamper:
    def tamper(conn: sa.Connection, account_id: str, version: int) -> None:
        where = (events.c.account_id == account_id) & (events.c.version == version)
        row = conn.execute(sa.select(events).where(where)).one()
        conn.execute(events.update().where(where).values({column: value(row)}))

    return tamper


def delete_event(conn: sa.Connection, account_id: str, version: int) -> None:
    conn.execute(
        events.delete().where((events.c.account_id == account_id) & (events.c.version == version))
    )


TAMPERING: dict[str, tuple[Tamper, str]] = {
    "payload": (set_column("data", lambda r: {**r.data, "n": r.data["n"] + 1}), "content"),
    "payload_unicode": (set_column("data", lambda r: {**r.data, "note": "unicode ✓"}), "content"),
    "metadata": (set_column("metadata", lambda r: {"actor": "someone else"}), "content"),
    "type": (set_column("type", lambda r: "Forged"), "content"),
    "schema_version": (set_column("schema_version", lambda r: 2), "content"),
    "event_id": (set_column("event_id", lambda r: str(uuid.uuid4())), "content"),
    "occurred_at": (
        set_column("occurred_at", lambda r: r.occurred_at + timedelta(microseconds=1)),
        "content",
    ),
    "recorded_at": (
        set_column("recorded_at", lambda r: r.recorded_at - timedelta(days=1)),
        "content",
    ),
    "hash": (set_column("hash", lambda r: "f" * 64), "content"),
    "prev_hash": (set_column("prev_hash", lambda r: "e" * 64), "prev_hash"),
}


def drop_triggers(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        for statement in drop_append_only_ddl(engine.dialect.name):
            conn.exec_driver_sql(statement)


def test_verify_finds_the_version_whose_field_was_changed(
    store: EventStore, engine: sa.Engine
) -> None:
    cases = [(name, v) for name in TAMPERING for v in (1, 3, EVENTS_PER_STREAM)]
    for name, version in cases:
        fill(store, f"{name}@{version}")
    fill(store, "untouched")
    drop_triggers(engine)

    with engine.begin() as conn:
        for name, version in cases:
            TAMPERING[name][0](conn, f"{name}@{version}", version)

    for name, version in cases:
        result = store.verify(f"{name}@{version}")
        case = (name, version, result)
        assert not result.ok, case
        assert result.broken_at_version == version, case
        assert result.reason and TAMPERING[name][1] in result.reason, case
        assert (result.events, result.head_hash) == (version, None), case
    intact = store.verify("untouched")
    assert intact.ok and intact.events == EVENTS_PER_STREAM


DEEP = "[" * 2000 + "]" * 2000  # deeper than any reader (or append) decodes
UNREADABLE = {
    # Values no append writes and no reader decodes: SQLite stores these as numbers (the
    # columns' affinity); PostgreSQL's driver has no datetime for them.
    "sqlite": [
        "UPDATE events SET occurred_at = 5",
        "UPDATE events SET data = '0'",
        "UPDATE events SET metadata = '1.5'",
        "UPDATE events SET occurred_at = ''",
        f"UPDATE events SET data = '{DEEP}'",
        "UPDATE events SET event_id = x'00'",
        "UPDATE events SET type = x'01'",
    ],
    "postgresql": [
        "UPDATE events SET occurred_at = 'infinity'",
        "UPDATE events SET recorded_at = '0500-01-01 00:00:00+00 BC'",
        "UPDATE events SET occurred_at = '10001-01-01 00:00:00+00'",
        f"UPDATE events SET data = '{DEEP}'",
    ],
}


def test_a_value_no_reader_can_decode_is_a_break_not_a_crash(
    store: EventStore, engine: sa.Engine
) -> None:
    edits = UNREADABLE[engine.dialect.name]
    for n in range(len(edits)):
        fill(store, f"unreadable_{n}")
    fill(store, "untouched")
    drop_triggers(engine)
    with engine.begin() as conn:
        for n, edit in enumerate(edits):
            conn.exec_driver_sql(f"{edit} WHERE account_id = 'unreadable_{n}' AND version = 2")

    every = dict(store.verify_all())
    for n, edit in enumerate(edits):
        for result in (store.verify(f"unreadable_{n}"), every[f"unreadable_{n}"]):
            assert not result.ok, (edit, result)
            assert result.broken_at_version == 2, (edit, result)
            assert result.reason is not None and "content" in result.reason, (edit, result)
    assert every["untouched"].ok and store.verify("untouched").ok


@pytest.mark.parametrize("page", [3, 1000])
def test_verify_all_gives_every_streams_verify_in_one_pass(
    store: EventStore, engine: sa.Engine, monkeypatch: pytest.MonkeyPatch, page: int
) -> None:
    # Pages of 3 rows split streams of 5; the broken streams' rest must not leak into the next.
    monkeypatch.setattr("events.store._VERIFY_PAGE", page)
    accounts = ["a", "b@1", "c@3", "d", "e@5", "f"]
    for account in accounts:
        fill(store, account)
    store.append("f", EVENTS_PER_STREAM, [new(6)])
    drop_triggers(engine)
    with engine.begin() as conn:
        for account in accounts:
            if "@" in account:
                TAMPERING["payload"][0](conn, account, int(account.split("@")[1]))
        delete_event(conn, "d", 2)

    results = list(store.verify_all())

    assert [account for account, _ in results] == sorted(accounts)
    assert results == [(account, store.verify(account)) for account in sorted(accounts)]
    assert [r.ok for _, r in results] == [True, False, False, False, False, True]
    assert dict(results)["f"].events == EVENTS_PER_STREAM + 1


def test_verify_finds_an_event_deleted_from_the_middle(
    store: EventStore, engine: sa.Engine
) -> None:
    for version in (1, 3):
        fill(store, f"acct_{version}")
    drop_triggers(engine)

    with engine.begin() as conn:
        for version in (1, 3):
            delete_event(conn, f"acct_{version}", version)

    for version in (1, 3):
        result = store.verify(f"acct_{version}")
        assert (result.ok, result.broken_at_version) == (False, version)
        assert result.reason == f"version {version + 1} found where {version} was expected"


def test_an_edit_with_a_recomputed_hash_breaks_the_next_link(
    store: EventStore, engine: sa.Engine
) -> None:
    fill(store, "acct_1")
    drop_triggers(engine)

    # The forger edits version 2 and recomputes its hash by the public recipe…
    [original] = store.read_stream("acct_1", after_version=1, limit=1)
    forged = dataclasses.replace(original, data={**original.data, "n": 200})
    with engine.begin() as conn:
        conn.execute(
            events.update()
            .where((events.c.account_id == "acct_1") & (events.c.version == 2))
            .values(data=forged.data, hash=chain_hash(forged.prev_hash, hashed_fields(forged)))
        )
    result = store.verify("acct_1")

    # …so version 2 checks out alone, but version 3 no longer follows from it.
    assert (result.ok, result.broken_at_version) == (False, 3)
    assert result.reason == "prev_hash does not match the previous event's hash"


def test_deleting_the_newest_event_shows_against_a_remembered_head(
    store: EventStore, engine: sa.Engine
) -> None:
    recorded = fill(store, "acct_1")
    remembered_head = store.verify("acct_1").head_hash
    drop_triggers(engine)

    with engine.begin() as conn:
        delete_event(conn, "acct_1", EVENTS_PER_STREAM)
    result = store.verify("acct_1")

    # A chain cut at its end is still a chain; the head hash an auditor kept is what tells.
    assert result.ok and result.events == EVENTS_PER_STREAM - 1
    assert remembered_head == recorded[-1].hash
    assert result.head_hash != remembered_head


def test_an_intact_stream_verifies_with_its_head_hash(store: EventStore) -> None:
    recorded = fill(store, "acct_1")
    recorded += store.append("acct_1", EVENTS_PER_STREAM, [new(99)])

    result = store.verify("acct_1")

    assert (result.ok, result.events) == (True, EVENTS_PER_STREAM + 1)
    assert result.head_hash == recorded[-1].hash
    assert (result.broken_at_version, result.reason) == (None, None)
