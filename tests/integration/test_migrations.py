"""The Alembic migrations, on SQLite and on PostgreSQL: upgrade to head, down to base, and up again
give a working, append-only log, and every table the code defines, as it defines it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import DBAPIError

from enforcement.migrations import alembic_config, alembic_revisions, downgrade, upgrade
from enforcement.schema_revisions import REVISIONS, current_revision, release_revisions
from enforcement.tables import api_tokens, contacts, policy_activations
from events import EventStore, NewEvent, create_engine
from events.dialects import APPEND_ONLY_MESSAGE
from events.schema import metadata as events_metadata
from projections.standing import STATE_SCHEMA, RateLimitRecord, StandingState, ViolationRecord
from projections.stored import read_state
from projections.tables import standing_records, standings

LOG_TABLES = {"events", "idempotency_keys", "checkpoints"}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest) -> str:
    """An empty database, not migrated."""
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


def head_revision(url: str) -> str:
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()
    assert head is not None
    return head


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def assert_a_working_append_only_log(url: str) -> None:
    engine = create_engine(url)
    try:
        store = EventStore(engine)
        store.append("acct_1", 0, [NewEvent("Noted", {"n": 1}, datetime.now(UTC))])
        assert store.verify("acct_1").ok
        with pytest.raises(DBAPIError) as caught, engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM events")
        assert APPEND_ONLY_MESSAGE in str(caught.value.orig)
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_url: str) -> None:
    upgrade(empty_url)
    assert current_revision(empty_url) == head_revision(empty_url)
    assert table_names(empty_url) >= LOG_TABLES
    assert_a_working_append_only_log(empty_url)

    upgrade(empty_url)  # already at head: nothing to do
    assert current_revision(empty_url) == head_revision(empty_url)

    downgrade(empty_url, "base")
    assert current_revision(empty_url) is None
    assert table_names(empty_url) <= {"alembic_version"}

    upgrade(empty_url)
    assert current_revision(empty_url) == head_revision(empty_url)
    assert_a_working_append_only_log(empty_url)


def test_the_revisions_listed_without_alembic_are_alembics() -> None:
    """``schema_revisions.REVISIONS`` is every migration in ``alembic/versions/``, in order: a
    new migration not listed there fails here, not at a start that calls its database older."""
    head, walked = alembic_revisions()
    assert list(REVISIONS) == walked
    assert release_revisions() == (head, set(walked))


def test_the_revision_read_without_alembic_is_alembics_at_every_step(empty_url: str) -> None:
    def alembics() -> str | None:
        engine = create_engine(empty_url)
        try:
            with engine.connect() as conn:
                return MigrationContext.configure(conn).get_current_revision()
        finally:
            engine.dispose()

    assert current_revision(empty_url) is None and alembics() is None  # no version table
    for revision in REVISIONS:
        upgrade(empty_url, revision)
        assert current_revision(empty_url) == alembics() == revision
    downgrade(empty_url, "base")
    assert current_revision(empty_url) is None and alembics() is None  # the table, empty

    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:  # branches, which Alembic would not read as one either
            conn.execute(sa.text("INSERT INTO alembic_version VALUES ('0001_a'), ('0001_b')"))
    finally:
        engine.dispose()
    with pytest.raises(ValueError, match="alembic_version holds 2 revisions"):
        current_revision(empty_url)


@pytest.fixture(params=[pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_pg_url(pg_url: str) -> str:
    return pg_url


def test_downgrade_to_base_removes_the_postgresql_trigger_function(empty_pg_url: str) -> None:
    pg_url = empty_pg_url
    upgrade(pg_url)
    downgrade(pg_url, "base")

    engine = create_engine(pg_url)
    try:
        with engine.connect() as conn:
            functions = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_proc WHERE proname IN "
                "('events_refuse_change', 'policy_activations_refuse_change',"
                " 'policy_activations_in_order')"
            ).scalar_one()
    finally:
        engine.dispose()
    assert functions == 0


def test_the_migrated_schema_matches_every_table_definition(empty_url: str) -> None:
    """The log's tables (``events.schema``), the stored standings (``projections.tables``)
    and the application's own (``enforcement.tables``) share one ``MetaData``: the migrated
    database has each of them as defined, and no table besides them (Alembic's own aside)."""
    upgrade(empty_url)
    defined = {api_tokens, contacts, policy_activations, standing_records, standings}
    assert defined <= set(events_metadata.tables.values())

    engine = create_engine(empty_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, events_metadata)
    finally:
        engine.dispose()

    assert differences == []


def test_0003_splits_whole_state_rows_into_a_head_and_records(empty_url: str) -> None:
    """A standing stored whole (state schema 1, revision 0002) becomes a head row plus one row
    per record at schema 2, which reads back the same state but for the schema number: from
    schema 3 on (``DecisionRecord.appeal_deadline``, then ``replaced_suspensions``) such a row
    is refolded from the log."""
    state = StandingState.empty("acct_old")
    state.version = 3
    state.last_recorded_at = "2026-11-24T10:00:00.000000Z"
    state.violations["vio_1"] = ViolationRecord(
        "vio_1", "evt_1", "spam", "minor", "2026-11-24T10:00:00.000000Z", "automated", None,
        None, True, decision_event_ids=("evt_2",),
    )  # fmt: skip
    state.violations["vio_0"] = ViolationRecord(
        "vio_0", "evt_0", "malware", "severe", "2026-11-24T10:00:00.000000Z", "manual", "x",
        "key_1", True,
    )  # fmt: skip
    state.key_rate_limits["key_1"] = RateLimitRecord("key_1", 60, 1000)
    whole = {**state.to_json(), "schema": 1}
    upgrade(empty_url, "0002_read_models")
    engine = create_engine(empty_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                standings.insert().values(
                    account_id="acct_old", version=3, state=whole, updated_at=datetime.now(UTC)
                )
            )
        upgrade(empty_url)
        with engine.begin() as conn:
            records = conn.execute(sa.select(sa.func.count()).select_from(standing_records))
            assert records.scalar_one() == 3
            head = conn.execute(sa.select(standings.c.state)).scalar_one()
            assert head["schema"] == 2
            assert read_state(conn, "acct_old") is None  # an older schema: refolded, not misread
            # This state has no decisions and no suspension, so the current schema reads it as
            # is once it has the head's newer key (schema 4: ``replaced_suspensions``).
            current = {**head, "schema": STATE_SCHEMA, "replaced_suspensions": []}
            conn.execute(standings.update().values(state=current))
            converted = read_state(conn, "acct_old")
    finally:
        engine.dispose()
    assert converted == state
    assert converted is not None and list(converted.violations) == ["vio_1", "vio_0"]
