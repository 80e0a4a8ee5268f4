"""Appending to the log, on SQLite and on PostgreSQL: versions, idempotency, multi-stream atomicity
and payload fidelity (the chain covers exactly what readers get back)."""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import itertools
import json
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from events import (
    GENESIS_HASH,
    ConcurrencyError,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    RecordedEvent,
    StoreError,
    StreamAppend,
    StreamKeyUsed,
    create_engine,
)
from events.dialects import as_stored_json
from events.schema import checkpoints
from tests.auditor import api_json, auditor_hash

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)


def new(type_: str = "Noted", occurred_at: datetime = T0, **data: object) -> NewEvent:
    return NewEvent(type=type_, data=dict(data), occurred_at=occurred_at, metadata={"actor": "t"})


def ids(events: list) -> list[str]:
    return [e.event_id for e in events]


def recompute_hash(event: RecordedEvent) -> str:
    """CONTRACT.md's recipe, from the event as the API shows it (times as RFC 3339 text)."""
    return auditor_hash(api_json(event))


def positions_increase(events: list) -> bool:
    return all(a.position < b.position for a, b in itertools.pairwise(events))


# ---------------------------------------------------------------- versions and the chain


def test_first_append_starts_the_chain_at_version_one(store: EventStore) -> None:
    recorded = store.append("acct_1", 0, [new(n=1), new(n=2), new(n=3)])

    assert [e.version for e in recorded] == [1, 2, 3]
    assert recorded[0].prev_hash == GENESIS_HASH
    assert [e.prev_hash for e in recorded[1:]] == [e.hash for e in recorded[:-1]]
    assert positions_increase(recorded)
    assert store.read_stream("acct_1") == recorded
    assert store.head("acct_1").version == 3
    assert store.head("acct_1").hash == recorded[-1].hash


def test_a_stale_expected_version_is_a_conflict_and_writes_nothing(store: EventStore) -> None:
    store.append("acct_1", 0, [new(n=1), new(n=2)])
    before = store.max_position()

    with pytest.raises(ConcurrencyError) as caught:
        store.append("acct_1", 1, [new(n=3)])

    assert (caught.value.account_id, caught.value.expected_version) == ("acct_1", 1)
    assert caught.value.actual_version == 2
    assert store.max_position() == before
    assert store.head("acct_1").version == 2


def test_append_at_head_chains_onto_whatever_is_there(store: EventStore) -> None:
    first = store.append("acct_1", None, [new(n=1)])
    second = store.append("acct_1", None, [new(n=2)])

    assert [first[0].version, second[0].version] == [1, 2]
    assert second[0].prev_hash == first[0].hash
    assert store.verify("acct_1").ok


def test_an_append_at_head_is_tried_max_head_retries_times_in_all(engine: sa.Engine) -> None:
    store = EventStore(engine, max_head_retries=3)
    tries = []

    def always_overtaken(*args: object) -> None:
        tries.append(1)
        if len(tries) > 10:  # a mutant that never stops must still end the test
            raise RuntimeError("retried without end")
        raise ConcurrencyError("acct_1", 0, 1)

    store._append_once = always_overtaken  # type: ignore[method-assign,assignment]
    with pytest.raises(ConcurrencyError):
        store.append("acct_1", None, [new(n=1)])

    assert len(tries) == 3


def test_nothing_to_append_is_refused(store: EventStore) -> None:
    with pytest.raises(ValueError, match="nothing to append"):
        store.append("acct_1", 0, [])


def test_an_event_id_appended_twice_is_refused_and_writes_nothing(store: EventStore) -> None:
    [first] = store.append("acct_1", 0, [new(n=1)])
    again = NewEvent("Noted", {"n": 2}, T0, event_id=first.event_id)

    with pytest.raises(StoreError, match="appended twice"):
        store.append("acct_2", 0, [again])

    assert store.read_stream("acct_2") == []


# ---------------------------------------------------------------- idempotency


def test_same_key_and_payload_returns_the_first_result_and_writes_nothing(
    store: EventStore,
) -> None:
    first = store.append("acct_1", 0, [new(n=1), new(n=2)], idempotency_key="req-1")
    before = store.max_position()

    # A retry carries fresh event ids and another occurred_at: only the payload is compared.
    retry = store.append(
        "acct_1", 0, [new(n=1, occurred_at=T0 + timedelta(seconds=5)), new(n=2)], "req-1"
    )

    assert retry == first
    assert store.max_position() == before
    assert ids(store.read_stream("acct_1")) == ids(first)


def test_same_key_with_another_payload_is_a_conflict_and_writes_nothing(
    store: EventStore,
) -> None:
    store.append("acct_1", 0, [new(n=1)], idempotency_key="req-1")
    before = store.max_position()

    with pytest.raises(IdempotencyConflict) as caught:
        store.append("acct_1", 1, [new(n=999)], idempotency_key="req-1")

    assert caught.value.key == "req-1"
    assert store.max_position() == before


def test_same_key_and_payload_on_another_stream_is_a_conflict_not_that_streams_result(
    store: EventStore,
) -> None:
    """A key is global: an append to another stream is another request, not a retry, even
    with the same events. Answering it with the first stream's events would tell the caller
    its stream was written when nothing was."""
    store.append("acct_1", 0, [new(n=1)], idempotency_key="req-1")
    store.append("acct_3", 0, [new(n=3)], idempotency_key="req-3", fingerprint="body-3")
    before = store.max_position()

    with pytest.raises(IdempotencyConflict):
        store.append("acct_2", 0, [new(n=1)], idempotency_key="req-1")
    with pytest.raises(IdempotencyConflict):  # the caller's own fingerprint, the same
        store.append("acct_2", 0, [new(n=3)], idempotency_key="req-3", fingerprint="body-3")

    assert store.max_position() == before
    assert store.read_stream("acct_2") == []


def test_an_idempotent_multi_stream_append_replays_per_stream(store: EventStore) -> None:
    appends = [
        StreamAppend("acct_a", 0, [new(n=1), new(n=2)]),
        StreamAppend("acct_b", 0, [new(n=3)]),
    ]
    first = store.append_streams(appends, idempotency_key="batch-1")
    before = store.max_position()

    retry = store.append_streams(appends, idempotency_key="batch-1")

    assert retry == first
    assert [[e.account_id for e in batch] for batch in retry] == [["acct_a"] * 2, ["acct_b"]]
    assert store.max_position() == before


def test_a_streams_own_key_used_before_stops_a_shared_append_and_replays_alone(
    store: EventStore,
) -> None:
    first = store.append_streams(
        [
            StreamAppend("acct_a", 0, [new(n=1)], idempotency_key="fact-a"),
            StreamAppend("acct_b", 0, [new(n=2)], idempotency_key="fact-b", fingerprint="body-b"),
        ]
    )
    before = store.max_position()

    with pytest.raises(StreamKeyUsed):  # fact-b again, shared with a new stream's fact
        store.append_streams(
            [
                StreamAppend("acct_c", 0, [new(n=3)], idempotency_key="fact-c"),
                StreamAppend("acct_b", 1, [new(n=2)], idempotency_key="fact-b"),
            ]
        )
    assert store.max_position() == before

    # Alone, each stream's key gives back what that stream recorded: by the fingerprint of its
    # events, or by the one its caller gave (whatever the events are).
    assert store.append("acct_a", 1, [new(n=1)], idempotency_key="fact-a") == first[0]
    assert (
        store.append("acct_b", 1, [new(n=99)], idempotency_key="fact-b", fingerprint="body-b")
        == first[1]
    )
    with pytest.raises(IdempotencyConflict):
        store.append("acct_a", 1, [new(n=99)], idempotency_key="fact-a")
    assert store.max_position() == before


def test_a_failed_append_does_not_record_its_idempotency_key(store: EventStore) -> None:
    store.append("acct_1", 0, [new(n=1)])

    with pytest.raises(ConcurrencyError):
        store.append("acct_1", 0, [new(n=2)], idempotency_key="req-1")
    recorded = store.append("acct_1", 1, [new(n=2)], idempotency_key="req-1")

    assert [e.version for e in recorded] == [2]


# ---------------------------------------------------------------- several streams, one transaction


def test_append_streams_records_every_stream_in_one_transaction(store: EventStore) -> None:
    store.append("acct_b", 0, [new(n=0)])

    recorded = store.append_streams(
        [StreamAppend("acct_a", 0, [new(n=1), new(n=2)]), StreamAppend("acct_b", 1, [new(n=3)])]
    )

    assert [[e.version for e in batch] for batch in recorded] == [[1, 2], [2]]
    positions = [e.position for batch in recorded for e in batch]
    assert positions == sorted(positions)
    assert store.verify("acct_a").ok
    assert store.verify("acct_b").ok


def test_a_conflict_on_the_second_stream_writes_nothing_on_the_first(store: EventStore) -> None:
    store.append("acct_b", 0, [new(n=0), new(n=1)])
    before = store.max_position()

    with pytest.raises(ConcurrencyError) as caught:
        store.append_streams(
            [StreamAppend("acct_a", 0, [new(n=1)]), StreamAppend("acct_b", 1, [new(n=2)])],
            idempotency_key="req-1",
        )

    assert caught.value.account_id == "acct_b"
    assert store.read_stream("acct_a") == []
    assert store.max_position() == before
    # The key was rolled back with the events: the corrected request goes through.
    store.append_streams(
        [StreamAppend("acct_a", 0, [new(n=1)]), StreamAppend("acct_b", 2, [new(n=2)])],
        idempotency_key="req-1",
    )
    assert store.head("acct_a").version == 1


def test_a_database_refusal_on_the_second_stream_writes_nothing_on_the_first(
    store: EventStore,
) -> None:
    [existing] = store.append("acct_b", 0, [new(n=0)])
    before = store.max_position()
    duplicate_id = NewEvent("Noted", {"n": 2}, T0, event_id=existing.event_id)

    with pytest.raises(StoreError):
        store.append_streams(
            [StreamAppend("acct_a", 0, [new(n=1)]), StreamAppend("acct_b", 1, [duplicate_id])]
        )

    assert store.read_stream("acct_a") == []
    assert store.max_position() == before


def test_an_append_to_a_database_it_cannot_open_raises_the_databases_error(
    tmp_path: Path,
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'missing' / 'log.db'}")
    try:
        with pytest.raises(sa.exc.OperationalError, match="unable to open database file"):
            EventStore(engine).append("acct_1", 0, [new(n=1)])
    finally:
        engine.dispose()


def test_any_other_refusal_in_the_appending_transaction_is_the_databases_refusal(
    store: EventStore,
) -> None:
    def checkpoint_twice(conn: sa.Connection, _recorded: object) -> None:
        for _ in range(2):
            conn.execute(checkpoints.insert().values(name="twice", position=1, updated_at=T0))

    with pytest.raises(StoreError, match="the database refused the append"):
        store.append("acct_1", 0, [new(n=1)], after_append=checkpoint_twice)

    assert store.read_stream("acct_1") == []


def test_after_append_runs_in_the_appending_transaction(store: EventStore) -> None:
    def fail(_conn: object, _recorded: list) -> None:
        raise RuntimeError("read model update failed")

    with pytest.raises(RuntimeError):
        store.append("acct_1", 0, [new(n=1)], after_append=fail)

    assert store.read_stream("acct_1") == []


@pytest.mark.postgres
def test_an_append_whose_after_append_caught_a_database_error_is_not_reported_recorded(
    pg_store: EventStore,
) -> None:
    """PostgreSQL aborts the transaction of any statement that failed, caught or not, and
    answers its COMMIT with ROLLBACK: the append must fail, not return what it did not record.
    With another append in the same group commit, that one is still recorded."""

    def swallowing(conn: sa.Connection, _recorded: object) -> None:
        with contextlib.suppress(sa.exc.DBAPIError):
            conn.execute(sa.text("SELECT 1 / 0"))

    pg_store.append("acct_1", 0, [new(n=1)])

    with pytest.raises(StoreError, match="rolled back"):
        pg_store.append("acct_1", 1, [new(n=2)], after_append=swallowing)
    assert [e.version for e in pg_store.read_stream("acct_1")] == [1]
    assert pg_store.append("acct_1", 1, [new(n=3)])[0].version == 2  # the connection works

    with ThreadPoolExecutor(2) as pool:  # two appends that may meet in one transaction
        swallowed = pool.submit(pg_store.append, "acct_2", 0, [new(n=4)], after_append=swallowing)
        other = pool.submit(pg_store.append, "acct_3", 0, [new(n=5)], after_append=lambda *_: None)
        with pytest.raises(StoreError, match="rolled back"):
            swallowed.result()
        assert [e.version for e in other.result()] == [1]
    assert pg_store.read_stream("acct_2") == []


def test_a_retried_keyed_append_with_a_stream_without_events_returns_the_first_result(
    store: EventStore,
) -> None:
    appends = [StreamAppend("acct_a", 0, [new(n=1)]), StreamAppend("acct_b", None, [])]
    first = store.append_streams(appends, idempotency_key="k")

    assert [len(batch) for batch in first] == [1, 0]
    assert store.append_streams(appends, idempotency_key="k") == first


# ---------------------------------------------------------------- payload fidelity

AWKWARD_PAYLOADS = [
    {"name": "Zoë Ünïcødé 東京 🚫", "quote": 'say "hi"\\n', "empty": {}, "list": []},
    {"big": 10**30, "neg": -(2**63), "small": 5e-324, "tenth": 0.1, "one": 1.0},
    {"huge_float": 1e16, "neg_zero": -0.0, "sci": 1.2345678901234567e20},
    {"nested": {"b": [1, {"a": None, "c": True}], "a": False}},
]


def test_what_is_read_back_verifies_and_equals_what_append_returned(store: EventStore) -> None:
    for n, data in enumerate(AWKWARD_PAYLOADS):
        account_id = f"acct_{n}"
        recorded = store.append(account_id, 0, [NewEvent("Noted", data, T0, metadata=data)])

        read = store.read_stream(account_id)

        assert read == recorded, data
        assert store.verify(account_id).ok, data
        # An auditor recomputes the hash from the public JSON with hashlib and json alone.
        assert recompute_hash(read[0]) == read[0].hash, data


# Any JSON text a caller may send, except U+0000 (PostgreSQL's jsonb refuses it; see below).
json_text = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=8,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.dictionaries(json_text, json_values, max_size=4))
def test_any_json_payload_reads_back_as_appended_and_verifies(
    store: EventStore, data: dict
) -> None:
    account_id = f"acct_{uuid.uuid4().hex}"  # one database for all examples, one stream each
    recorded = store.append(account_id, 0, [NewEvent("Noted", data, T0, metadata={"m": data})])

    assert store.read_stream(account_id) == recorded
    assert store.verify(account_id).ok


@pytest.mark.parametrize(
    "data",
    [{"number": float("nan")}, {"set": {1, 2}}, {"raw": b"x"}, {(1, 2): "tuple key"}],
    ids=["NaN", "a set", "bytes", "a tuple key"],
)
def test_a_payload_the_database_cannot_hold_is_a_store_error(
    store: EventStore, data: dict[Any, Any]
) -> None:
    with pytest.raises(StoreError, match="cannot be stored as JSON"):
        store.append("acct_1", 0, [NewEvent("Noted", data, T0)])
    with pytest.raises(StoreError, match="cannot be stored as JSON"):
        store.append("acct_1", 0, [NewEvent("Noted", {"n": 1}, T0, metadata=data)])

    assert store.read_stream("acct_1") == []


def test_a_document_json_rewrites_is_recorded_as_readers_get_it(store: EventStore) -> None:
    # A tuple and integer keys are no JSON, and jsonb rewrites 1e16: what is hashed and
    # returned is what is read back, whichever of data and metadata it is in.
    data = {"pair": (1, 2), 7: "seven"}
    recorded = store.append(
        "acct_1",
        0,
        [
            NewEvent("Noted", data, T0, metadata={3: (4,)}),
            NewEvent("Noted", {"plain": 1}, T0, metadata={"big": 1e16}),
        ],
    )

    assert (recorded[0].data, recorded[0].metadata) == ({"pair": [1, 2], "7": "seven"}, {"3": [4]})
    assert store.read_stream("acct_1") == recorded
    assert store.verify("acct_1").ok


class Tilt(float, enum.Enum):
    """A float whose repr is not the text json writes for it (float.__repr__)."""

    FLAT = -0.0


def test_floats_nested_anywhere_are_hashed_as_readers_get_them(store: EventStore) -> None:
    # Floats json and orjson write differently (1e-05) or jsonb rewrites (1e16, -0.0), in a dict
    # in a dict, in a tuple, and next to a tuple: the recipe over what is read back is the hash.
    # (jsonb's check once skipped tuples: the -0.0 in one broke the chain on PostgreSQL; and
    # it read a float subclass's own repr, "<Tilt.FLAT: -0.0>", where json writes "-0.0".)
    documents = [{"d": {"f": 1e-05}}, {"l": [(1e-05,)]}, {"l": [1e16, (1,)]}, {"l": [(-0.0,)]}]
    documents.append({"t": Tilt.FLAT})
    recorded = store.append("acct_1", 0, [NewEvent("Noted", d, T0) for d in documents])

    assert store.read_stream("acct_1") == recorded
    assert store.verify("acct_1").ok
    assert all(recompute_hash(e) == e.hash for e in recorded)


def test_as_stored_json_gives_a_document_as_a_json_column_gives_it_back(engine: sa.Engine) -> None:
    # as_stored_json on a SQLAlchemy connection (appends pass the driver's own): jsonb rewrites
    # 1e16 and -0.0, SQLite keeps the text; either way JSON's arrays and string keys. NaN is
    # no JSON: a ValueError on both.
    with engine.connect() as conn:
        stored = as_stored_json(conn, {"big": 1e16, "zero": -0.0, "pair": (1, 2), 7: "seven"})
        with pytest.raises(ValueError, match="JSON"):
            as_stored_json(conn, {"nan": float("nan")})

    big, zero = (
        ("10000000000000000", "0.0") if engine.dialect.name == "postgresql" else ("1e+16", "-0.0")
    )
    assert json.dumps(stored, sort_keys=True) == (
        f'{{"7": "seven", "big": {big}, "pair": [1, 2], "zero": {zero}}}'
    )


def test_an_append_whose_every_document_needs_the_database_is_recorded(store: EventStore) -> None:
    recorded = store.append("acct_1", 0, [NewEvent("Noted", {7: "seven"}, T0)])

    assert recorded[0].data == {"7": "seven"}
    assert store.read_stream("acct_1") == recorded


def test_an_event_that_occurred_before_the_year_1000_verifies(store: EventStore) -> None:
    # The chain hashes such a year unpadded ("999-…"); PostgreSQL's to_char pads it ("0999").
    long_ago = datetime(999, 12, 31, 23, 59, 59, 5, tzinfo=UTC)
    recorded = store.append("acct_1", 0, [new(occurred_at=long_ago, n=1), new(n=2)])

    assert store.read_stream("acct_1") == recorded
    assert store.verify("acct_1").ok


def test_sqlite_stores_both_times_as_sqlalchemy_datetime_text(sqlite_store: EventStore) -> None:
    # Naive UTC with microseconds, as SQLAlchemy writes a DATETIME: what SQL over the table and
    # the verifier's fast path read (the driver's own datetime text is another).
    occurred = datetime(2026, 11, 24, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    [recorded] = sqlite_store.append("acct_1", 0, [new(occurred_at=occurred, n=1)])

    with sqlite_store.engine.connect() as conn:
        stored = conn.exec_driver_sql("SELECT occurred_at, recorded_at FROM events").one()
    assert tuple(stored) == (
        "2026-11-24 10:00:00.000000",
        recorded.recorded_at.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds"),
    )


# Each refusal says what was wrong.
ACCOUNT_ID, TYPE, KEY = "an account_id must be", "an event type must be", "an idempotency key"
SCHEMA_VERSION, JSON = "schema_version must be", "data or metadata cannot be stored as JSON"

UNSTORABLE: dict[str, tuple[str, NewEvent, str | None, str]] = {
    # What the schema cannot hold (PostgreSQL enforces the lengths, SQLite would not) or no
    # reader can decode: refused the same way on both databases, before anything is written.
    "long account_id": ("a" * 129, new(n=1), None, ACCOUNT_ID),
    "empty account_id": ("", new(n=1), None, ACCOUNT_ID),
    "empty type": ("acct_1", new("", n=1), None, TYPE),
    "long type": ("acct_1", new("T" * 101, n=1), None, TYPE),
    "long idempotency key": ("acct_1", new(n=1), "k" * 201, KEY),
    "schema_version 0": (
        "acct_1",
        dataclasses.replace(new(n=1), schema_version=0),
        None,
        SCHEMA_VERSION,
    ),
    "schema_version True": (
        "acct_1",
        dataclasses.replace(new(n=1), schema_version=True),
        None,
        SCHEMA_VERSION,
    ),
    "lone surrogate in data": ("acct_1", new(text="\ud800"), None, JSON),
    "lone surrogate in a key": ("acct_1", NewEvent("Noted", {"\udc00": 1}, T0), None, JSON),
    "lone surrogate in metadata": (
        "acct_1",
        NewEvent("Noted", {}, T0, {"a": "\udfff"}),
        None,
        JSON,
    ),
    "lone surrogate in type": ("acct_1", new("Noted\ud800", n=1), None, TYPE),
    "lone surrogate in account_id": ("acct_\ud800", new(n=1), None, ACCOUNT_ID),
}


@pytest.mark.parametrize("case", list(UNSTORABLE))
def test_what_the_log_cannot_hold_is_refused_alike_on_both_databases(
    store: EventStore, case: str
) -> None:
    account_id, event, key, reason = UNSTORABLE[case]
    store.append("other", 0, [new(n=0)])
    before = store.max_position()

    with pytest.raises(StoreError, match=reason):
        store.append(account_id, 0, [event], idempotency_key=key)
    with pytest.raises(StoreError, match=reason):  # in a transaction shared with another stream
        store.append_streams(
            [StreamAppend("other", 1, [new(n=1)]), StreamAppend(account_id, 0, [event])],
            idempotency_key=key,
        )

    assert store.max_position() == before
    assert store.verify("other").ok


def test_the_longest_values_the_schema_holds_are_kept(store: EventStore) -> None:
    # Lengths in characters, not bytes: non-ASCII text of the same lengths is kept too.
    account_id = "é" * 128
    recorded = store.append(account_id, 0, [new("Ü" * 100, n=1)], idempotency_key="ķ" * 200)

    assert store.read_stream(account_id) == recorded
    assert store.verify(account_id).ok


def test_a_nul_character_is_kept_where_the_database_can_hold_it_and_refused_cleanly_otherwise(
    store: EventStore,
) -> None:
    event = new(text="before\x00after")

    if store.engine.dialect.name == "postgresql":  # jsonb cannot hold U+0000
        with pytest.raises(StoreError):
            store.append("acct_1", 0, [event])
        assert store.read_stream("acct_1") == []
    else:
        store.append("acct_1", 0, [event])
        assert store.read_stream("acct_1")[0].data == {"text": "before\x00after"}
        assert store.verify("acct_1").ok


@pytest.mark.parametrize(
    "data",
    # (every key on the way to the nested one holds a NUL too: a clean key would send the
    # document through the server whatever the nested key held)
    [{"a\x00": {"k\x00": 1}}, {"a": {"k": "x\x00"}}, {"a": ["x\x00"]}],
    ids=["in a nested key", "in a nested value", "in a list"],
)
def test_a_nul_character_nested_anywhere_is_kept_or_refused_cleanly(
    store: EventStore, data: dict
) -> None:
    if store.engine.dialect.name == "postgresql":
        with pytest.raises(StoreError, match="cannot be stored as JSON"):
            store.append("acct_1", 0, [NewEvent("Noted", data, T0)])
        assert store.read_stream("acct_1") == []
    else:
        [recorded] = store.append("acct_1", 0, [NewEvent("Noted", data, T0)])
        assert store.read_stream("acct_1") == [recorded]
        assert recorded.data == data


def test_a_large_multi_stream_batch_gets_positions_in_event_order(store: EventStore) -> None:
    # Times shared and distinct, flat and nested payloads with and without floats.
    def batch(stream: int) -> list[NewEvent]:
        return [
            NewEvent(
                "Noted",
                {"n": k, "s": stream, "f": k / 3, "nested": {"k": [k, "é"]}}
                if k % 2
                else {"n": k, "s": "x"},
                T0 if k % 3 else T0 + timedelta(microseconds=k),
                metadata={"actor": "t"},
            )
            for k in range(130)
        ]

    recorded = store.append_streams(
        [StreamAppend("acct_a", 0, batch(1)), StreamAppend("acct_b", None, batch(2))]
    )

    flat = [e for stream in recorded for e in stream]
    assert positions_increase(flat)
    assert [e.version for e in recorded[0]] == list(range(1, 131))
    assert store.read_all(0, 1000) == flat
    for account_id in ("acct_a", "acct_b"):
        assert store.verify(account_id).ok
        assert all(recompute_hash(e) == e.hash for e in store.read_stream(account_id))


def test_an_append_of_several_insert_chunks_returns_the_positions_it_stored(
    store: EventStore,
) -> None:
    # More rows than one INSERT takes, after events already in the log: the positions the
    # append returns are those stored, in order, with no gap from the log's last one.
    store.append("acct_before", 0, [NewEvent("Noted", {"n": -1}, T0)])
    before = store.max_position()
    events = [NewEvent("Noted", {"n": k}, T0) for k in range(1201)]

    recorded = store.append("acct_chunks", 0, events)

    assert [e.position for e in recorded] == list(range(before + 1, before + 1202))
    assert store.read_all(before, 2000) == recorded
    assert store.verify("acct_chunks").ok


def test_an_event_id_in_another_uuid_spelling_is_stored_canonical_and_verifies(
    store: EventStore,
) -> None:
    upper = "6F9619FF-8B86-D011-B42D-00C04FC964FF"
    recorded = store.append("acct_uuid", 0, [NewEvent("Noted", {"n": 1}, T0, event_id=upper)])

    assert recorded[0].event_id == upper.lower()
    assert store.read_stream("acct_uuid")[0].event_id == upper.lower()
    assert store.verify("acct_uuid").ok
    with pytest.raises(ValueError, match="not a UUID"):
        store.append("acct_uuid", 1, [NewEvent("Noted", {}, T0, event_id="evt_1")])
    assert len(store.read_stream("acct_uuid")) == 1
