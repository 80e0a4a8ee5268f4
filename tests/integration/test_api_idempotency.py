"""What "the same body" is for an idempotency key (CONTRACT.md: 200 when the same key and body
come again, 409 when the key comes with another body), alike for ``POST /v1/violations`` (the
``Idempotency-Key`` header) and a batch item (its own ``idempotency_key``), and across the two:
the key space is one. The same body is the same validated report: key order, whitespace and a
field written out at its default (``null`` for a field whose default is none) never make
another body; another value of any field does."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from enforcement.api.app import create_app
from enforcement.api.schemas import BatchItemIn, ViolationIn
from enforcement.api.violations import report_of
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.service import Actor, request_fingerprint
from enforcement.tokens import create_token
from events.timefmt import to_utc

ACCOUNT = "acct_idem"
BASE = {"account_id": ACCOUNT, "category": "spam", "description": "bulk mail"}
# Every optional field of BASE's report written out at its default.
DEFAULTS = {
    "severity": None,
    "key_id": None,
    "occurred_at": None,
    "source": None,
    "detection": "automated",
    "evidence_ref": None,
}
# Each a genuinely different report: never a replay.
DIFFERENT = [
    {**BASE, "description": "other"},
    {**BASE, "severity": "low"},
    {**BASE, "detection": "human_review"},
    {**BASE, "evidence_ref": "s3://evidence/1"},
    {**BASE, "description": None},
    {**BASE, "description": ""},
    {**BASE, "category": "phishing"},
    {**BASE, "account_id": "acct_other"},
]


@pytest.fixture
def client(system: Container) -> Iterator[TestClient]:
    with TestClient(create_app(system)) as test_client:
        yield test_client


@pytest.fixture
def reporter(system: Container) -> dict[str, str]:
    token = create_token(system.engine, Role.REPORTER, "reporter")
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}


def written(document: dict[str, Any], style: str) -> bytes:
    """``document`` as JSON text: ``plain``, or ``odd`` (keys reversed, spaced and indented)."""
    if style == "plain":
        return json.dumps(document).encode()
    reordered = dict(reversed(list(document.items())))
    return json.dumps(reordered, indent="\t", separators=(" ,\n ", " :  ")).encode()


def send(
    client: TestClient,
    reporter: dict[str, str],
    path: str,
    body: dict[str, Any],
    key: str,
    style: str = "plain",
) -> tuple[int, dict[str, Any]]:
    """``body`` sent under ``key`` as a single POST (the header) or as a batch's only item (its
    own key); the status and answer of the report."""
    if path == "single":
        response = client.post(
            "/v1/violations",
            content=written(body, style),
            headers={**reporter, "Idempotency-Key": key},
        )
        return response.status_code, response.json()
    item = written({**body, "idempotency_key": key}, style).decode()
    response = client.post(
        "/v1/violations:batch",
        content=f'{{"violations": [{item}]}}'.encode(),
        headers=reporter,
    )
    assert response.status_code == 200, response.text
    [result] = response.json()["results"]
    return result["status"], result


PATHS = [
    pytest.param("single", "single", id="single-single"),
    pytest.param("batch", "batch", id="batch-batch"),
    pytest.param("single", "batch", id="single-batch"),
    pytest.param("batch", "single", id="batch-single"),
]


@pytest.mark.parametrize(("first_path", "retry_path"), PATHS)
def test_a_retry_of_the_same_report_replays_however_it_is_written(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    first_path: str,
    retry_path: str,
) -> None:
    """A key first used by one path and retried by the other (or the same) replays the same
    report (200, the first answer's violation, nothing written) and refuses another (409),
    both judged alike: the defaults written out or left out, keys in another order, other
    whitespace."""
    spelled = {**BASE, **DEFAULTS}
    partly = {**BASE, "detection": "automated", "evidence_ref": None}
    for key, first_body, retries in [
        ("k-omitted", BASE, [(BASE, "odd"), (spelled, "plain"), (spelled, "odd"), (partly, "odd")]),
        ("k-spelled", spelled, [(spelled, "odd"), (BASE, "plain"), (partly, "odd")]),
    ]:
        status, first = send(client, reporter, first_path, first_body, key)
        assert status == 201, first
        version = system.store.head(ACCOUNT).version
        check_retries(client, reporter, retry_path, key, first, retries, DIFFERENT)
        assert system.store.head(ACCOUNT).version == version  # no retry wrote anything
        assert system.store.head("acct_other").version == 0

    # The same instant in another offset is the same time; "" is no absent description.
    timed = {"account_id": ACCOUNT, "category": "spam", "occurred_at": "2026-11-24T09:00:00Z"}
    status, first = send(client, reporter, first_path, timed, "k-time")
    assert status == 201, first
    version = system.store.head(ACCOUNT).version
    offset = {**timed, "occurred_at": "2026-11-24T10:00:00+01:00", "description": None}
    later = {**timed, "occurred_at": "2026-11-24T09:00:01Z"}
    check_retries(
        client,
        reporter,
        retry_path,
        "k-time",
        first,
        [(offset, "odd")],
        [{**timed, "description": ""}, later],
    )
    assert system.store.head(ACCOUNT).version == version


def check_retries(
    client: TestClient,
    reporter: dict[str, str],
    retry_path: str,
    key: str,
    first: dict[str, Any],
    retries: list[tuple[dict[str, Any], str]],
    different: list[dict[str, Any]],
) -> None:
    """Each of ``retries`` (a body and how it is written) replays ``first`` on ``retry_path``;
    each of ``different`` is refused as another body."""
    for body, style in retries:
        status, again = send(client, reporter, retry_path, body, key, style)
        assert (status, again.get("error")) == (200, None), (key, body, style)
        assert again["violation_id"] == first["violation_id"]
        assert [e["event_id"] for e in again["events"]] == [e["event_id"] for e in first["events"]]
    for body in different:
        status, other = send(client, reporter, retry_path, body, key, "odd")
        assert status == 409, (key, body, other)
        assert other["error"]["code"] == "idempotency_key_reused"


def _legacy_fingerprint(body: dict[str, Any]) -> str:
    """The fingerprint a single POST and a batch item with its own key stored before this
    release: the hash of the fields the body wrote out, a default written out included."""
    return request_fingerprint(
        ViolationIn.model_validate(body).model_dump(mode="json", exclude_unset=True)
    )


@pytest.mark.parametrize(
    "written_out",
    [
        pytest.param({"detection": "automated"}, id="one-default"),
        pytest.param({"detection": "automated", "evidence_ref": None}, id="two-defaults"),
        pytest.param(DEFAULTS, id="every-default"),
    ],
)
@pytest.mark.parametrize("retry_path", ["single", "batch"])
def test_a_key_recorded_with_the_earlier_fingerprint_still_replays(
    system: Container,
    client: TestClient,
    reporter: dict[str, str],
    retry_path: str,
    written_out: dict[str, Any],
) -> None:
    """A key whose record holds the fingerprint of the body as written (defaults written out
    made another one) replays its body however it is written now, and refuses another: one
    default written out, some, or every one."""
    original = {**BASE, **written_out}
    legacy = _legacy_fingerprint(original)
    canonical = ViolationIn.model_validate(original).model_dump(mode="json", exclude_defaults=True)
    assert legacy != request_fingerprint(canonical)  # the record is of the earlier kind
    report = report_of(ViolationIn.model_validate(original), to_utc(system.clock()))
    recorded = system.service.report_violation(
        ACCOUNT, report, Actor("reporter", "corr-old"), "k-old", legacy
    )
    version = system.store.head(ACCOUNT).version

    for body, style in [
        (original, "plain"),
        (original, "odd"),
        (BASE, "plain"),
        ({**BASE, **DEFAULTS}, "odd"),
    ]:
        status, again = send(client, reporter, retry_path, body, "k-old", style)
        assert (status, again.get("error")) == (200, None), (body, style)
        assert [e["event_id"] for e in again["events"]] == [e.event_id for e in recorded.events]
    for body in DIFFERENT:
        status, other = send(client, reporter, retry_path, body, "k-old", "odd")
        assert status == 409, (body, other)
    assert system.store.head(ACCOUNT).version == version


def test_the_fingerprint_of_a_report_is_the_one_a_batch_header_always_gave() -> None:
    """A batch's ``Idempotency-Key`` header derives each item's key from this fingerprint:
    were it to change, a batch retried across the upgrade would record its items again."""
    from enforcement.api.violations import report_fingerprint

    plain = BatchItemIn.model_validate({"account_id": "acct_1", "category": "spam"})
    full = BatchItemIn.model_validate(
        {
            "account_id": "acct_1",
            "category": "spam",
            "severity": "high",
            "occurred_at": "2026-11-24T11:00:00+01:00",
            "detection": "automated",
            "description": "x",
            "idempotency_key": None,
        }
    )
    assert report_fingerprint(plain).value == (
        "5f32738764ca522dcf9f6e10616cbd839e9214494018c3f15350541f577c193a"
    )
    assert report_fingerprint(full).value == (
        "4dcb981fde8e930276df19e0c47cda471e86a165cffc581b8fa83544e69ea2a2"
    )


def test_the_fingerprint_of_a_command_is_the_one_its_key_was_always_recorded_with(
    system: Container, client: TestClient
) -> None:
    """An operator command's key is recorded with the hash of its method and route, its path
    parameters and its body without the fields at their default: were the recipe to change,
    a command retried across the upgrade would be refused (409) as another request."""
    from enforcement.api.idempotency import RequestKey
    from events.schema import idempotency_keys

    token = create_token(system.engine, Role.OPERATOR, "operator")
    headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": "fp-suspend"}
    body = {"reason": "fraud", "until": "2027-01-01T01:00:00+01:00", "notify": True}
    answer = client.post(f"/v1/accounts/{ACCOUNT}/suspend", json=body, headers=headers)
    assert answer.status_code == 200, answer.text

    with system.engine.connect() as connection:
        recorded = connection.execute(
            sa.select(idempotency_keys.c.fingerprint).where(idempotency_keys.c.key == "fp-suspend")
        ).scalar_one()
    assert recorded == request_fingerprint(
        {
            "route": "POST /v1/accounts/{account_id}/suspend",
            "path": {"account_id": ACCOUNT},
            "body": {"reason": "fraud", "until": "2027-01-01T00:00:00Z"},
        }
    )
    assert recorded == "55b4fbb30936b78064a250c1d3ce7c397a6d43eb01f8626f371cf839e2cb3e16"
    # The recipe alone, for a command without a body's fields and for one without a key.
    bare = RequestKey("k", "POST /v1/accounts/{account_id}/terminate", {"account_id": "a"})
    assert bare.fingerprint() == request_fingerprint(
        {
            "route": "POST /v1/accounts/{account_id}/terminate",
            "path": {"account_id": "a"},
            "body": None,
        }
    )
    assert RequestKey(None, bare.route, bare.path).fingerprint() is None
