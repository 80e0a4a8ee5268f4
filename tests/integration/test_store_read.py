"""Reading the log, on SQLite and on PostgreSQL: streams, the global feed, paging, time bounds,
and an upcast read through the store."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa

from events import GENESIS_HASH, Codec, EventStore, NewEvent, RecordedEvent, StreamAppend
from tests.conftest import migrated_store

T0 = datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC)


class StepClock:
    """Each call is one microsecond-precise second later than the previous one."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start - timedelta(seconds=1)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1, microseconds=1)
        return self.now


@pytest.fixture
def clock() -> StepClock:
    return StepClock()


@pytest.fixture
def timed_store(engine: sa.Engine, clock: StepClock) -> EventStore:
    return EventStore(engine, clock=clock)


def new(**data: object) -> NewEvent:
    return NewEvent(type="Noted", data=dict(data), occurred_at=T0)


def fill(store: EventStore, account_id: str, count: int) -> None:
    for n in range(1, count + 1):
        store.append(account_id, n - 1, [new(n=n)])


# ---------------------------------------------------------------- one stream


def test_the_head_of_an_empty_stream_is_version_zero_and_the_zero_hash(store: EventStore) -> None:
    head = store.head("nobody")

    assert (head.version, head.hash) == (0, "0" * 64)
    assert head.hash == GENESIS_HASH
    assert store.read_stream("nobody") == []


def test_an_empty_stream_verifies_with_no_events(store: EventStore) -> None:
    result = store.verify("nobody")

    assert (result.ok, result.events, result.head_hash) == (True, 0, GENESIS_HASH)


def test_read_stream_after_version_and_limit(store: EventStore) -> None:
    fill(store, "acct_1", 6)
    fill(store, "acct_2", 2)

    assert [e.version for e in store.read_stream("acct_1")] == [1, 2, 3, 4, 5, 6]
    assert [e.version for e in store.read_stream("acct_1", after_version=4)] == [5, 6]
    assert [e.version for e in store.read_stream("acct_1", after_version=1, limit=3)] == [2, 3, 4]
    assert store.read_stream("acct_1", after_version=6) == []
    assert {e.account_id for e in store.read_stream("acct_2")} == {"acct_2"}


def test_read_stream_of_type_reads_one_streams_events_of_one_type_in_version_order(
    store: EventStore,
) -> None:
    kinds = ["Noted", "Marked", "Noted", "Noted", "Marked"]
    store.append(
        "acct_1", 0, [NewEvent(type=k, data={"n": i}, occurred_at=T0) for i, k in enumerate(kinds)]
    )
    store.append("acct_2", 0, [new(n=9)])

    noted = store.read_stream_of_type("acct_1", "Noted")
    assert [(e.version, e.data["n"]) for e in noted] == [(1, 0), (3, 2), (4, 3)]
    assert noted == [e for e in store.read_stream("acct_1") if e.type == "Noted"]
    assert [e.version for e in store.read_stream_of_type("acct_1", "Marked")] == [2, 5]
    assert store.read_stream_of_type("acct_1", "Other") == []
    assert store.read_stream_of_type("acct_3", "Noted") == []


def test_read_streams_of_types_reads_each_accounts_as_read_stream_of_types_does(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several accounts in one read (in reads of a bounded number of accounts: two here), each
    account's events of the types in version order, an account without any listed empty."""
    kinds = ["Noted", "Marked", "Other", "Noted"]
    for account in ("acct_1", "acct_2", "acct_1", "acct_3", "acct_4"):
        head = store.head(account).version
        store.append(account, head, [NewEvent(type=k, data={}, occurred_at=T0) for k in kinds])
    monkeypatch.setattr("events.store._STREAMS_PER_READ", 2)
    types = ("Noted", "Marked")
    asked = ["acct_3", "acct_1", "acct_none", "acct_2", "acct_4"]

    found = store.read_streams_of_types(asked, types)

    assert list(found) == asked
    for account in asked:
        assert found[account] == store.read_stream_of_types(account, types), account
    assert [e.version for e in found["acct_1"]] == [1, 2, 4, 5, 6, 8]
    assert found["acct_none"] == []
    assert store.read_streams_of_types([], types) == {}
    middle = found["acct_1"][2].position
    past = store.read_streams_of_types(["acct_1", "acct_2"], types, after_position=middle)
    assert past == {
        account: [e for e in found[account] if e.position > middle]
        for account in ("acct_1", "acct_2")
    }
    assert past["acct_1"] and len(past["acct_1"]) < len(found["acct_1"])


def test_iter_all_of_types_reads_the_logs_events_of_those_types_in_position_order(
    store: EventStore,
) -> None:
    kinds = ["Noted", "Marked", "Other", "Noted"]
    for account in ("acct_1", "acct_2", "acct_1"):
        head = store.head(account).version
        store.append(account, head, [NewEvent(type=k, data={}, occurred_at=T0) for k in kinds])
    wanted = [e for e in store.read_all(limit=100) if e.type in ("Noted", "Marked")]
    assert len(wanted) == 9

    reached: list[int] = []
    read = list(store.iter_all_of_types(["Noted", "Marked"], page_size=4, progress=reached.append))
    assert read == wanted
    assert reached == [wanted[3].position, wanted[7].position, wanted[8].position]
    after = list(store.iter_all_of_types(["Marked"], after_position=wanted[1].position))
    assert after == [e for e in wanted[2:] if e.type == "Marked"]
    assert list(store.iter_all_of_types(["Nothing"])) == []


def test_position_before_is_one_less_than_the_first_event_recorded_since_an_instant(
    engine: sa.Engine,
) -> None:
    """The smallest position of the events recorded then or later, less one (inclusive, to the
    microsecond; the last position when none was): positions follow commit order, and a
    clock stepped back records a later event at an earlier time."""
    times = iter(T0 + timedelta(seconds=s) for s in (10, 5, 20, 30))
    store = EventStore(engine, clock=lambda: next(times))
    recorded = [store.append("acct_1", n, [new(n=n)])[0] for n in range(4)]
    ten, five, twenty, thirty = (e.position for e in recorded)

    assert store.position_before(T0) == ten - 1
    assert store.position_before(T0 + timedelta(seconds=6)) == ten - 1  # not five's
    assert store.position_before(T0 + timedelta(seconds=20)) == twenty - 1
    assert store.position_before(T0 + timedelta(seconds=20, microseconds=1)) == thirty - 1
    in_another_zone = (T0 + timedelta(seconds=30)).astimezone(timezone(timedelta(hours=2)))
    assert store.position_before(in_another_zone) == thirty - 1
    assert store.position_before(T0 + timedelta(seconds=31)) == thirty
    assert five == ten + 1


def test_position_before_reads_the_recorded_at_index_not_every_position_before(
    engine: sa.Engine,
) -> None:
    """Both databases turn ``min(position)`` into a walk of the positions from the first, each
    row filtered by its time (the whole log before the instant read per call): the statement
    is planned along ``ix_events_recorded_at`` instead (on PostgreSQL with sequential scans
    off, so that the planner does not pick one on a tiny table). Found by review rv7."""
    store = EventStore(engine)
    for n in range(20):
        store.append("acct_1", n, [new(n=n)])
    statements: list[tuple[str, object]] = []

    def note(
        _conn: object, _cursor: object, statement: str, parameters: object, *_: object
    ) -> None:
        if "min(" in statement:
            statements.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", note)
    try:
        store.position_before(T0)
    finally:
        sa.event.remove(engine, "before_cursor_execute", note)
    [(statement, parameters)] = statements
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters).all()
            steps = " ".join(str(row[-1]) for row in plan)
        else:
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            plan = conn.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
            steps = " ".join(str(row[0]) for row in plan)
    assert "ix_events_recorded_at" in steps, steps
    assert "events_pkey" not in steps, steps


def test_read_stream_recorded_until_is_inclusive_and_exact_to_the_microsecond(
    timed_store: EventStore, clock: StepClock
) -> None:
    first = timed_store.append("acct_1", 0, [new(n=1), new(n=2)])
    second = timed_store.append("acct_1", 2, [new(n=3)])
    timed_store.append("acct_1", 3, [new(n=4)])

    until_second = second[0].recorded_at
    assert until_second == clock.now - timedelta(seconds=1, microseconds=1)
    assert timed_store.read_stream("acct_1", recorded_until=until_second) == first + second
    just_before = until_second - timedelta(microseconds=1)
    assert timed_store.read_stream("acct_1", recorded_until=just_before) == first
    # The same instant in another zone is the same bound.
    elsewhere = until_second.astimezone(timezone(timedelta(hours=-5)))
    assert timed_store.read_stream("acct_1", recorded_until=elsewhere) == first + second
    assert [
        e.version
        for e in timed_store.read_stream("acct_1", after_version=1, recorded_until=until_second)
    ] == [2, 3]


def test_read_stream_recorded_until_stops_at_the_first_event_recorded_after_it(
    engine: sa.Engine,
) -> None:
    """A stream's times need not rise with its versions (writers whose clocks are apart, or
    one clock stepped back): a version recorded "before" ``recorded_until`` still came after
    every version before it, so it never counts without them. Read alone, it would be a
    stream with a hole, folded into a standing that never was."""
    times = iter([T0 + timedelta(seconds=2), T0 + timedelta(seconds=1), T0 + timedelta(seconds=3)])
    store = EventStore(engine, clock=lambda: next(times))
    [v1] = store.append("acct_1", 0, [new(n=1)])  # at T0 + 2 s
    [v2] = store.append("acct_1", 1, [new(n=2)])  # at T0 + 1 s, by a clock behind
    [v3] = store.append("acct_1", 2, [new(n=3)])  # at T0 + 3 s

    assert store.read_stream("acct_1", recorded_until=T0 + timedelta(seconds=1)) == []
    assert store.read_stream("acct_1", recorded_until=T0 + timedelta(seconds=2)) == [v1, v2]
    assert store.read_stream("acct_1", recorded_until=T0 + timedelta(seconds=3)) == [v1, v2, v3]
    until = T0 + timedelta(seconds=1)
    with engine.connect() as conn:  # in a caller's transaction, the same
        assert store.read_stream("acct_1", recorded_until=until, conn=conn) == []
    for after_version, limit in [(1, None), (1, 1), (0, 5)]:  # paged, the same cut
        assert store.read_stream("acct_1", after_version, until, limit) == []
        with engine.connect() as conn:
            assert store.read_stream("acct_1", after_version, until, limit, conn=conn) == []


def test_read_stream_recorded_until_a_whole_second_includes_what_was_recorded_then(
    engine: sa.Engine,
) -> None:
    """SQLite compares times as text: the bound must be written in the stored shape, whose
    microseconds a whole second's default text (``10:00:00+00:00``) leaves out."""
    whole = T0.replace(microsecond=0)
    store = EventStore(engine, clock=lambda: whole)
    recorded = store.append("acct_1", 0, [new(n=1)])

    assert store.read_stream("acct_1", recorded_until=whole) == recorded
    with engine.connect() as conn:
        assert store.read_stream("acct_1", recorded_until=whole, conn=conn) == recorded


def test_read_stream_in_the_callers_transaction_sees_what_it_has_not_committed(
    store: EventStore,
) -> None:
    """``conn``: read in that transaction (as ``after_append`` and the runner do), not on a
    connection of its own, which would miss the events the transaction is appending."""
    fill(store, "acct_1", 2)
    seen: list[list[RecordedEvent]] = []

    def read_back(conn: sa.Connection, _recorded: list[RecordedEvent]) -> None:
        for after_version, limit in [(0, None), (1, 2), (3, 1)]:
            seen.append(store.read_stream("acct_1", after_version, limit=limit, conn=conn))

    why = {"by": "operator"}
    store.append(
        "acct_1", 2, [new(n=3), NewEvent("Noted", {"n": 4}, T0, why)], after_append=read_back
    )

    everything = store.read_stream("acct_1")
    assert everything[-1].metadata == why
    assert seen == [everything, everything[1:3], everything[3:]]


def test_get_event_finds_one_event_by_its_id_in_any_spelling(store: EventStore) -> None:
    [first, second] = store.append("acct_1", 0, [new(n=1), new(n=2)])

    assert store.get_event(second.event_id) == second
    assert store.get_event(first.event_id.upper().replace("-", "")) == first
    assert store.get_event("00000000-0000-7000-8000-000000000000") is None
    assert store.get_event("not an event id") is None


def test_the_head_of_a_stream_is_its_last_version_and_hash(store: EventStore) -> None:
    fill(store, "acct_1", 3)
    fill(store, "acct_2", 1)

    last = store.read_stream("acct_1")[-1]
    assert (store.head("acct_1").version, store.head("acct_1").hash) == (3, last.hash)


def test_times_come_back_as_utc_with_microseconds(timed_store: EventStore) -> None:
    occurred = datetime(2026, 11, 24, 5, 0, 0, 7, tzinfo=timezone(timedelta(hours=-5)))
    [recorded] = timed_store.append("acct_1", 0, [NewEvent("Noted", {}, occurred)])

    [read] = timed_store.read_stream("acct_1")

    assert read.occurred_at == occurred
    assert read.occurred_at.utcoffset() == timedelta(0)
    assert read.occurred_at.microsecond == 7
    assert read.recorded_at == recorded.recorded_at
    assert read.recorded_at.utcoffset() == timedelta(0)


def test_each_row_of_one_read_keeps_its_own_times(timed_store: EventStore) -> None:
    # Rows of one transaction share recorded_at, some share occurred_at: a read parses a time
    # met in the row before only once, and must still give every row its own.
    later = T0 + timedelta(hours=1)
    timed_store.append("acct_1", 0, [new(n=1), new(n=2), NewEvent("Noted", {"n": 3}, later)])
    timed_store.append("acct_2", 0, [NewEvent("Noted", {"n": 4}, later), new(n=5)])
    timed_store.append("acct_1", 3, [new(n=6)])
    # StepClock: each append is recorded one second and one microsecond after the one before.
    first, second, third = (T0 + timedelta(seconds=s, microseconds=s + 1) for s in range(3))
    expected = [
        (T0, first),
        (T0, first),
        (later, first),
        (later, second),
        (T0, second),
        (T0, third),
    ]

    def times(read: list[RecordedEvent]) -> list[tuple[datetime, datetime]]:
        return [(e.occurred_at, e.recorded_at) for e in read]

    assert times(timed_store.read_all()) == expected
    assert times(list(timed_store.iter_all(page_size=2))) == expected
    assert times(timed_store.read_stream("acct_1")) == [expected[i] for i in (0, 1, 2, 5)]


def test_iter_stream_pages_through_a_long_stream(store: EventStore) -> None:
    store.append("acct_1", 0, [new(n=n) for n in range(1, 12)])

    assert [e.version for e in store.iter_stream("acct_1", page_size=4)] == list(range(1, 12))
    assert [e.version for e in store.iter_stream("acct_1", page_size=11)] == list(range(1, 12))


# ---------------------------------------------------------------- the global feed


def test_read_all_pages_by_position_across_streams(store: EventStore) -> None:
    store.append_streams(
        [StreamAppend("acct_a", 0, [new(n=1)]), StreamAppend("acct_b", 0, [new(n=2)])]
    )
    store.append("acct_a", 1, [new(n=3), new(n=4)])
    store.append("acct_c", 0, [new(n=5)])

    everything = store.read_all()
    assert [e.data["n"] for e in everything] == [1, 2, 3, 4, 5]
    assert [e.position for e in everything] == sorted({e.position for e in everything})
    assert store.max_position() == everything[-1].position

    pages, checkpoint = [], 0
    while page := store.read_all(after_position=checkpoint, limit=2):
        pages.append([e.data["n"] for e in page])
        checkpoint = page[-1].position
    assert pages == [[1, 2], [3, 4], [5]]
    assert store.read_all(after_position=everything[2].position, limit=10) == everything[3:]


def test_last_event_is_the_newest_by_position(store: EventStore) -> None:
    assert store.last_event() is None
    assert store.max_position() == 0
    store.append("acct_b", 0, [new(n=1)])
    store.append("acct_a", 0, [new(n=2), new(n=3)])

    newest = store.read_all()[-1]
    assert store.last_event() == (newest.position, newest.event_id)


def test_iter_all_reads_in_pages_of_constant_size(
    store: EventStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(10):
        store.append(f"acct_{n % 3}", None, [new(n=n)])
    calls: list[tuple[int, int, int]] = []
    fetch = store._fetch

    def spy(statement: str, params: tuple[int, int]) -> list:
        page = fetch(statement, params)
        calls.append((*params, len(page)))
        return page

    monkeypatch.setattr(store, "_fetch", spy)

    events = list(store.iter_all(page_size=4))

    assert [e.data["n"] for e in events] == list(range(10))
    assert [limit for _, limit, _ in calls] == [4, 4, 4]
    assert [size for _, _, size in calls] == [4, 4, 2]
    assert [after for after, _, _ in calls] == [0, events[3].position, events[7].position]


def test_iter_all_after_a_position_and_on_an_exact_multiple_of_the_page(store: EventStore) -> None:
    store.append("acct_1", 0, [new(n=n) for n in range(8)])
    start = store.read_all(limit=2)[-1].position

    assert [e.data["n"] for e in store.iter_all(after_position=start, page_size=3)] == [
        2,
        3,
        4,
        5,
        6,
        7,
    ]
    assert list(store.iter_all(after_position=store.max_position())) == []


def test_account_ids_lists_every_stream_once_in_order(store: EventStore) -> None:
    for account in ("acct_b", "acct_a", "acct_b", "acct_c"):
        store.append(account, None, [new()])

    assert list(store.account_ids()) == ["acct_a", "acct_b", "acct_c"]


def test_account_ids_pages_past_a_full_page_of_streams(store: EventStore) -> None:
    accounts = [f"acct_{n:04}" for n in range(1001)]  # one page of 1000, then one more
    store.append_streams([StreamAppend(account, 0, [new()]) for account in accounts])

    assert list(itertools.islice(store.account_ids(), 1002)) == accounts


# ---------------------------------------------------------------- upcasting through the store


@dataclass(frozen=True)
class ThrottleAppliedV1:
    factor: float
    reason: str


@dataclass(frozen=True)
class ThrottleAppliedV2:
    factor: float
    reasons: list[str]
    key_id: str | None


def reasons_as_list(data: dict) -> dict:
    return {"factor": data["factor"], "reasons": [data["reason"]], "key_id": None}


def test_old_events_read_back_in_the_new_shape_and_still_verify(store: EventStore) -> None:
    old_codec = Codec()
    old_codec.register(ThrottleAppliedV1, type_name="ThrottleApplied", schema_version=1)
    store.append(
        "acct_1",
        0,
        [
            old_codec.encode(ThrottleAppliedV1(0.25, "spam burst"), occurred_at=T0),
            old_codec.encode(ThrottleAppliedV1(0.5, "retry storm"), occurred_at=T0),
        ],
    )

    new_codec = Codec()
    new_codec.register(
        ThrottleAppliedV2,
        type_name="ThrottleApplied",
        schema_version=2,
        upcasters={1: reasons_as_list},
    )
    store.append(
        "acct_1", 2, [new_codec.encode(ThrottleAppliedV2(0.1, ["abuse"], "key_7"), occurred_at=T0)]
    )

    records = store.read_stream("acct_1")
    decoded = [new_codec.decode(r).payload for r in records]

    assert decoded == [
        ThrottleAppliedV2(0.25, ["spam burst"], None),
        ThrottleAppliedV2(0.5, ["retry storm"], None),
        ThrottleAppliedV2(0.1, ["abuse"], "key_7"),
    ]
    # The log itself is unchanged: the old events keep their stored shape and their hashes.
    assert [r.schema_version for r in records] == [1, 1, 2]
    assert records[0].data == {"factor": 0.25, "reason": "spam burst"}
    assert store.read_stream("acct_1") == records
    assert store.verify("acct_1").ok


def test_times_come_back_in_utc_itself(store: EventStore) -> None:
    # PostgreSQL sessions are set to UTC, so psycopg hands back datetime.UTC and nothing needs
    # converting; an Etc/UTC session would give a ZoneInfo, converted on every read. SQLite
    # stores the text that the reader parses as UTC.
    store.append("acct_1", None, [new(n=1)])
    [row] = store._fetch(store._sql.all, (0, 10))
    [event] = store.read_all()

    if store._sql.postgres:
        assert row[8].tzinfo is UTC and row[9].tzinfo is UTC
    else:
        assert isinstance(row[9], str) and row[9][10] == " "
    assert event.recorded_at.tzinfo is UTC and event.occurred_at.tzinfo is UTC


@pytest.mark.postgres
def test_a_server_set_to_another_date_style_and_time_zone_reads_the_same_instants(
    pg_url: str,
) -> None:
    """A server (or database, or role) may default to another ``DateStyle`` than ISO (initdb
    takes one from the locale; ``SQL, DMY`` is a setting a European operator may choose) and
    another ``TimeZone``. The driver reads a ``timestamptz`` it gets as text only in ISO style:
    every read of the log failed ("can't parse timestamptz with DateStyle 'SQL, DMY'"). The
    engine sets both for its sessions, so the times read are the instants recorded."""
    name = sa.make_url(pg_url).database
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET datestyle TO 'SQL, DMY'")
        conn.exec_driver_sql(f"ALTER DATABASE \"{name}\" SET timezone TO 'Asia/Kolkata'")
    admin.dispose()
    with migrated_store(pg_url, clock=StepClock()) as store:
        [recorded] = store.append("acct_1", 0, [new(n=1)])
        [read] = store.read_stream("acct_1")
        assert read.occurred_at == T0 and read.recorded_at.utcoffset() == timedelta(0)
        assert read == recorded  # the very instants, hashes and all
        assert store.verify("acct_1").ok
