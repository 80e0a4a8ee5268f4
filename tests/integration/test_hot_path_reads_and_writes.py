"""What the hot path reads and writes: one look-up of a fact's key, the stored standing read in
one statement, a new stream's standing written without reading its rows first, and the
violation route's answer (encoded by the route) and token cache."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from test_service_support import REPORTER, FakeClock, assert_account_consistent, stored_row

from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from enforcement.tokens import create_token
from events import StreamHead, dialects
from events.chain import GENESIS_HASH
from projections import aup_events as ev
from projections import stored
from projections.standing import StandingState
from projections.tables import standing_records, standings


def report(system: Container, account: str) -> None:
    system.service.report_violation(account, ViolationReport("spam", system.clock()), REPORTER)


def key_lookups(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The statements on idempotency keys that go through ``dialects.fetch_all`` from now on."""
    seen: list[str] = []
    fetch_all = dialects.fetch_all

    def counting(engine: sa.Engine, statement: str, params: Any = ()) -> list[Any]:
        if "idempotency_keys" in statement:
            seen.append(statement)
        return fetch_all(engine, statement, params)

    monkeypatch.setattr(dialects, "fetch_all", counting)
    return seen


def test_a_fact_looks_its_key_up_once_and_a_second_time_gets_the_first_result(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    report(system, "acct_f")
    payload = ev.NoticeDeliveryFailed("ntc_1", "evt_1", "none", 1, "undeliverable", True)
    lookups = key_lookups(monkeypatch)

    first = system.service.record_fact("acct_f", payload, REPORTER, idempotency_key="k-1")
    assert len(lookups) == 1
    again = system.service.record_fact("acct_f", payload, REPORTER, idempotency_key="k-1")

    assert not first.replayed and again.replayed
    assert [e.event_id for e in again.events] == [e.event_id for e in first.events]
    assert len(assert_account_consistent(system, "acct_f")) == first.events[0].version


def test_the_rows_read_in_one_statement_are_the_rows_read_one_table_at_a_time(
    system: Container,
) -> None:
    for _ in range(3):
        report(system, "acct_r")
    with system.engine.connect() as conn:
        expected = stored.read_state(conn, "acct_r")

    assert expected is not None and expected.version == system.store.head("acct_r").version
    assert len(expected.violations) == 3
    assert stored.read_state_and_head(system.engine, "acct_r")[0] == expected
    assert stored.read_state_and_head(system.engine, "acct_nobody")[0] is None


def test_rows_of_another_state_schema_are_not_read(system: Container) -> None:
    report(system, "acct_old")
    with system.engine.begin() as conn:
        conn.execute(
            standings.update()
            .where(standings.c.account_id == "acct_old")
            .values(state={"schema": 1, "account_id": "acct_old"})
        )

    assert stored.read_state_and_head(system.engine, "acct_old")[0] is None
    # The log is the truth: the load folds it and the next command rewrites the row.
    assert system.standings.load("acct_old").version == system.store.head("acct_old").version
    report(system, "acct_old")
    assert_account_consistent(system, "acct_old")


def test_a_new_stream_is_written_whole_without_reading_its_rows_and_leftovers_go(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rows of no state of this log (left over by hand): the first append replaces them.
    with system.engine.begin() as conn:
        conn.execute(
            standing_records.insert().values(
                account_id="acct_new", kind="violations", record_key="junk", seq=0, data={}
            )
        )
    reads: list[list[str]] = []
    stored_versions = stored._stored_versions

    def counting(conn: sa.Connection, account_ids: list[str]) -> dict[str, int]:
        reads.append(account_ids)
        return stored_versions(conn, account_ids)

    monkeypatch.setattr(stored, "_stored_versions", counting)

    report(system, "acct_new")
    assert reads == []
    report(system, "acct_new")  # a stream with a state before: its rows are read
    assert reads == [["acct_new"]]

    row = stored_row(system, "acct_new")
    assert row is not None and row[0] == system.store.head("acct_new").version
    assert all(v["violation_id"] != "junk" for v in row[1]["violations"])
    log = assert_account_consistent(system, "acct_new")
    assert StandingState.from_json(row[1]).version == len(log)


@pytest.fixture
def client(system: Container) -> Iterator[TestClient]:
    with TestClient(create_app(system)) as test_client:
        yield test_client


def test_the_violation_route_answers_201_then_200_for_the_same_key(
    system: Container, client: TestClient, clock: FakeClock
) -> None:
    token = create_token(system.engine, Role.REPORTER, "t")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "abc"}
    body = {"account_id": "acct_http", "category": "spam", "description": "ünïcödé"}

    first = client.post("/v1/violations", json=body, headers=headers)
    again = client.post("/v1/violations", json=body, headers=headers)

    assert first.status_code == 201 and again.status_code == 200
    assert first.headers["content-type"] == "application/json"
    document = first.json()
    assert set(document) == {"violation_id", "account_id", "decisions", "events", "standing"}
    assert [e["type"] for e in document["events"]] == [
        "ViolationReported",
        "NoticeIssued",
        "RemediationRequested",
    ]
    assert document["events"][0]["data"]["description"] == "ünïcödé"
    assert again.json()["events"] == document["events"]
    other = client.post("/v1/violations", json={**body, "severity": "high"}, headers=headers)
    assert other.status_code == 409


def test_a_token_is_looked_up_once_then_answered_from_the_cache(
    system: Container, client: TestClient
) -> None:
    token = create_token(system.engine, Role.REPORTER, "t")
    headers = {"Authorization": f"Bearer {token}"}
    assert system.tokens.cached(token) is None

    first = client.post(
        "/v1/violations", json={"account_id": "a1", "category": "spam"}, headers=headers
    )
    principal = system.tokens.cached(token)
    assert first.status_code == 201 and principal is not None and principal.name == "t"

    calls: list[str] = []
    system.tokens.authenticate = lambda t: calls.append(t)  # type: ignore[method-assign,assignment,func-returns-value]
    second = client.post(
        "/v1/violations", json={"account_id": "a2", "category": "spam"}, headers=headers
    )
    assert second.status_code == 201 and calls == []

    unknown = client.post(
        "/v1/violations",
        json={"account_id": "a3", "category": "spam"},
        headers={"Authorization": "Bearer enf_unknown"},
    )
    assert unknown.status_code == 401 and calls == ["enf_unknown"]


def test_a_load_reads_the_log_only_when_it_is_ahead_of_the_rows(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    report(system, "acct_t")
    tails: list[int] = []
    read_stream = system.store.read_stream

    def counting(account_id: str, after_version: int = 0, **kw: Any) -> Any:
        tails.append(after_version)
        return read_stream(account_id, after_version, **kw)

    monkeypatch.setattr(system.store, "read_stream", counting)
    stream_head = system.store.head("acct_t")
    head = stream_head.version
    assert stored.read_state_and_head(system.engine, "acct_t")[1] == stream_head
    nobody = stored.read_state_and_head(system.engine, "acct_nobody")
    assert nobody == (None, StreamHead(0, GENESIS_HASH))

    state, state_head = system.standings.load_with_head("acct_t")
    assert state.version == head and state_head == stream_head
    assert tails == []  # the rows are at the head of the log
    # Events appended without updating the rows: the log is ahead, its tail is read.
    limits = ev.CODEC.encode(ev.RateLimitsConfigured(None, 10, 100), occurred_at=system.clock())
    [appended] = system.store.append("acct_t", head, [limits])
    state, state_head = system.standings.load_with_head("acct_t")
    assert tails == [head] and state.version == head + 1
    assert state_head == StreamHead(appended.version, appended.hash)
    assert state.account_rate_limit is not None
