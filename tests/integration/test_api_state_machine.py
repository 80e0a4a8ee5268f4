"""The whole HTTP API driven as clients drive it, one request after another, against a model of
what CONTRACT.md promises (a Hypothesis state machine on one in-process app and a fresh system
per example, on SQLite and on PostgreSQL, whose store appends in its own way, under a fake clock).

The steps: violations reported (with an Idempotency-Key or none, replays of an earlier request,
a key reused with another body, bodies that are refused), batches of good and bad items (under
an Idempotency-Key header or none; a batch sent again, whole or changed), abuse reports and
their triage, operator commands (suspend, reinstate, terminate, throttle, lift, dismiss,
complete, limits of an account or a key, the adult-content approval), contacts, appeals
against decisions read from the events feed and their decisions, time passing, and reads of
standing (now and ``as_of``), the events feed and an account's history; each with a token of
the right role, or of a wrong one, an unknown one or none.

After each step, for every account: its history is the global feed's events of it, verifies
with tests/auditor.py (versions 1..N, the hash chain) and ``verify`` says so; its standing is
the fold of that history (``projections.standing.fold`` over the events decoded from the API's
JSON; the policy's independent reference, ``tests/unit/policy_reference.py``, decides
operations, not recorded events, so it cannot read them). Each request: an error has the
contract's body and wrote nothing (the global feed and the contacts unchanged); a success wrote
what it answers and nothing else; a replay answers 200 with the first answer (its standing the
current one, README: "200 with the first answer's events") and writes nothing; a reused key is
a 409. A batch item without a key of its own under a batch's header has a key of the header, the
item and the count of identical items before it (README): sent again under that header it
replays (200), wherever it stands; a changed item is recorded (201).

A few seconds in the suite (fewer examples on PostgreSQL); API_MACHINE_EXAMPLES=150
API_MACHINE_STEPS=40 searches longer, on each backend."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from api_support import ApiSystem, api_system, bodies, content_types
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from test_service_support import FakeClock

from enforcement.policy import CATEGORIES
from enforcement.roles import Role
from enforcement.tables import contacts
from events import RecordedEvent
from events.timefmt import format_time, parse_time
from projections.standing import fold
from tests.auditor import ZERO_HASH, check_chains
from tests.conftest import MigratedTemplates, drop_pg_database
from tests.e2e.harness import assert_error

# Examples on SQLite and on PostgreSQL (a database made and dropped each).
EXAMPLES = {
    backend: int(os.environ.get("API_MACHINE_EXAMPLES", default))
    for backend, default in (("sqlite", "10"), ("postgres", "5"))
}
STEPS = int(os.environ.get("API_MACHINE_STEPS", "25"))

ACCOUNTS = ("acct_a", "acct_b")
KEYS = ("k1", "k2", "k3")  # a small pool: keys come back, with the same request or another
HEADERS = ("h1", "h2")  # a batch's Idempotency-Key (its items' keys are none of KEYS)
UNKNOWN_ID = "xyz_00000000000000000000000000000000"
# Who may do what (CONTRACT.md, "Auth and roles").
REPORTERS = (Role.REPORTER, Role.OPERATOR, Role.ADMIN)
OPERATORS = (Role.OPERATOR, Role.ADMIN)
READERS = (Role.OPERATOR, Role.AUDITOR, Role.ADMIN)
STANDING_READERS = (*READERS, Role.GATEWAY)
BAD_TOKEN = "bad token"
# The decisions an appeal may target (POLICY.md).
DECISIONS = ("AccountSuspended", "ThrottleApplied", "AccountTerminated", "RemediationRequested")
Caller = Role | str | None  # a role's token, BAD_TOKEN, or no Authorization header
Signature = tuple[str, ...]  # what makes two requests under one key the same request
Contact = tuple[str | None, str | None]  # (email, webhook_url)


def callers(allowed: tuple[Role, ...]) -> st.SearchStrategy[Caller]:
    """Mostly a role that may, now and then any other caller."""
    return st.sampled_from([*allowed * 4, *Role, BAD_TOKEN, None])


def denial(caller: Caller, allowed: tuple[Role, ...]) -> int | None:
    if caller is None or caller == BAD_TOKEN:
        return 401
    return None if caller in allowed else 403


def check_error(response: httpx.Response) -> None:
    """CONTRACT.md, "Errors": ``{"error": {"code", "message", "details"}}``, a 422's details
    naming each field."""
    assert_error(response, response.status_code)


def account_path(account: str) -> str:
    """``/v1/accounts/{account}``, the ids ``.`` and ``..`` percent-encoded: a client resolves
    them as steps (docs/auditing.md; ``report_anything`` may record them)."""
    return "/v1/accounts/" + {".": "%2E", "..": "%2E%2E"}.get(account, account)


def decoded(event: dict[str, Any]) -> RecordedEvent:
    """An event of the API's JSON as the log holds it."""
    times = {name: parse_time(event[name]) for name in ("occurred_at", "recorded_at")}
    return RecordedEvent(**{**event, **times})


def without_standing(answer: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in answer.items() if name != "standing"}


def canonical(document: Any) -> str:
    return json.dumps(document, sort_keys=True)


@st.composite
def violations(draw: st.DrawFn) -> dict[str, Any]:
    """A valid report with no field written at its default (a default written out is the
    same request as it left out: a signature of our own would tell them apart)."""
    body = {
        "account_id": draw(st.sampled_from(ACCOUNTS)),
        "category": draw(st.sampled_from(["spam", "phishing", "csam", *sorted(CATEGORIES)])),
    }
    severity = draw(st.sampled_from([None, "low", "medium", "high", "critical"]))
    if severity is not None:
        body["severity"] = severity
    if draw(st.booleans()):
        body["description"] = draw(st.sampled_from(["bulk mail", "again"]))
    return body


@st.composite
def keyed_violations(draw: st.DrawFn) -> dict[str, Any]:
    """A batch item with its own key."""
    return {**draw(violations()), "idempotency_key": draw(st.sampled_from(KEYS))}


@st.composite
def abuse_reports(draw: st.DrawFn) -> dict[str, Any]:
    """A valid abuse report (no field written at its default)."""
    body = {
        "reported_account_id": draw(st.sampled_from(ACCOUNTS)),
        "category": draw(st.sampled_from(["spam", "csam", *sorted(CATEGORIES)])),
    }
    optional = {
        "description": st.sampled_from(["they spam", "again"]),
        "reporter_contact": st.sampled_from(["victim@example.com"]),
        "evidence_ref": st.sampled_from(["s3://evidence/1", "s3://evidence/2"]),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        body[name] = draw(optional[name])
    return body


@st.composite
def command_bodies(draw: st.DrawFn) -> tuple[str, str, Any]:
    """(method, path after the account's, body) of a command that needs no id. No field
    is written at its default (``notify: true``, ``factor: 0.25``, ``until: null``)."""
    kind = draw(st.sampled_from(["suspend", "reinstate", "terminate", "throttle"]))
    body: dict[str, Any] = {"reason": draw(st.sampled_from(["review", "abuse"]))}
    days = draw(st.sampled_from([None, 1, 10]))
    if kind in ("suspend", "terminate", "throttle") and draw(st.booleans()):
        body["notify"] = False
    if kind == "suspend" and days is not None:
        body["until"] = days
    if kind == "throttle":
        body["factor"] = draw(st.sampled_from([0.5, 0.1]))
        if days is not None:
            body["expires_at"] = days
        return "POST", "throttles", body
    return "POST", kind, body


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    caller: Caller
    body: Any = None  # a JSON document, or bytes sent as they are
    key: str | None = None
    params: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Keyed:
    """An earlier write sent with a key, which may be sent again."""

    request: Request
    allowed: tuple[Role, ...]
    signature: Signature
    account: str


class ApiMachine(RuleBasedStateMachine):
    templates: MigratedTemplates  # set by the test
    directory: Path
    backend: str  # "sqlite" or "postgres"

    def __init__(self) -> None:
        super().__init__()
        self.stack = ExitStack()
        self.clock = FakeClock()
        if self.backend == "postgres":
            url = self.templates.postgres()
            self.stack.callback(drop_pg_database, url)  # after the system is closed
        else:
            directory = self.stack.enter_context(tempfile.TemporaryDirectory(dir=self.directory))
            url = self.templates.sqlite(Path(directory) / "enforcement.db")
        self.api: ApiSystem = self.stack.enter_context(api_system(url, self.clock))
        self.events: list[dict[str, Any]] = []  # the global feed, as read so far
        self.touched: set[str] = set()  # accounts to check after this step
        # Each key recorded: the request that recorded it and the first answer.
        self.keys: dict[str, tuple[Keyed, dict[str, Any]]] = {}
        self.keyed: list[Keyed] = []  # every request sent with a key
        # The first answer of each batch item recorded under a header: (header, the item's
        # signature, identical items before it in its batch).
        self.batch_keys: dict[tuple[str, Signature, int], dict[str, Any]] = {}
        self.batches: list[tuple[str, list[Any]]] = []  # each batch sent with a header
        self.contacts: dict[str, Contact] = {}  # the contacts stored, as set so far

    def teardown(self) -> None:
        self.stack.close()

    # ------------------------------------------------------------ sending and reading

    def headers(self, caller: Caller) -> dict[str, str]:
        if caller is None:
            return {}
        token = caller if caller == BAD_TOKEN else self.api.tokens[Role(caller)]
        return {"Authorization": f"Bearer {token}"}

    def feed(self) -> list[dict[str, Any]]:
        """The events the global feed shows after those read so far (each step reads the new
        ones only: a whole feed after each request would cost more than the request)."""
        events: list[dict[str, Any]] = []
        after: int | None = self.events[-1]["position"] if self.events else 0
        while after is not None:
            page = self.api.client.get(
                "/v1/events",
                params={"after_position": after, "limit": 5000},
                headers=self.headers(Role.AUDITOR),
            ).json()
            events += page["events"]
            after = page["next_after_position"]
        return events

    def send(self, request: Request) -> tuple[httpx.Response, list[dict[str, Any]]]:
        """The answer to ``request`` and the events it added to the log. An error must have
        written nothing; a success only appends."""
        headers = self.headers(request.caller)
        if request.key is not None:
            headers["Idempotency-Key"] = request.key
        if isinstance(request.body, bytes):
            headers["Content-Type"] = "application/json"
            content = request.body
        else:
            content = None if request.body is None else json.dumps(request.body).encode()
            if content is not None:
                headers["Content-Type"] = "application/json"
        response = self.api.client.request(
            request.method, request.path, content=content, headers=headers, params=request.params
        )
        assert response.status_code < 500, (request, response.text)
        return response, self.settle(response)

    def settle(self, response: httpx.Response) -> list[dict[str, Any]]:
        """The events the request that ``response`` answers wrote: none if it failed."""
        new = self.feed()
        if response.status_code >= 400:
            check_error(response)
            assert new == [], response.text  # nothing written: the log's head has not moved
        assert self.stored_contacts() == self.contacts, response.text  # (not events)
        self.events += new
        self.touched |= {e["account_id"] for e in new}
        return new

    def stored_contacts(self) -> dict[str, Contact]:
        query = sa.select(contacts.c.account_id, contacts.c.email, contacts.c.webhook_url)
        with self.api.system.engine.connect() as conn:
            return {row[0]: (row[1], row[2]) for row in conn.execute(query)}

    def history(self, account: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["account_id"] == account]

    def folded(
        self, account: str, as_of: datetime | None = None, version: int | None = None
    ) -> dict[str, Any]:
        """The standing folded from ``account``'s events recorded up to ``as_of`` (now), or
        up to ``version``."""
        when = self.clock() if as_of is None else as_of
        events = [decoded(e) for e in self.history(account)][:version]
        recorded = [e for e in events if e.recorded_at <= when]
        assert recorded == events[: len(recorded)]  # a prefix: the clock never goes back
        return fold(account, recorded, when, self.api.system.policy.strike_lookback).to_json()

    def ids(self, account: str, event_type: str, name: str) -> list[str]:
        return [e["data"][name] for e in self.history(account) if e["type"] == event_type]

    # ------------------------------------------------------------ writes under a key

    def write(
        self, request: Request, allowed: tuple[Role, ...], signature: Signature, account: str
    ) -> tuple[httpx.Response, list[dict[str, Any]]] | None:
        """Send a write and check what the caller and the key decide alone: a denial, a replay
        (200, the first answer, nothing written), a key reused (409). Otherwise the response
        and new events, for the rule to check; a success under a key records it."""
        if request.key is not None:
            self.keyed.append(Keyed(request, allowed, signature, account))
        response, new = self.send(request)
        status, body = response.status_code, response.json()
        denied = denial(request.caller, allowed)
        if denied is not None:
            assert status == denied, body
            return None
        if request.key in self.keys:
            recorder, first = self.keys[request.key]
            if recorder.signature != signature:
                assert (status, body["error"]["code"]) == (409, "idempotency_key_reused"), body
                return None
            assert (status, new) == (200, []), body
            assert without_standing(body) == without_standing(first)
            if "standing" in first:  # (an abuse report answers its report_id alone)
                assert body["standing"] == self.folded(account)
            return None
        if status < 300 and request.key is not None:
            self.keys[request.key] = (self.keyed[-1], body)
        return response, new

    def check_command(self, account: str, body: dict[str, Any], new: list[Any]) -> None:
        assert body["events"] == new
        assert body["standing"] == self.folded(account)

    def check_report(self, answer: dict[str, Any], new: list[dict[str, Any]]) -> None:
        reported, *decided = new
        assert reported["type"] == "ViolationReported", new
        assert reported["data"]["violation_id"] == answer["violation_id"]
        assert answer["decisions"] == decided
        assert answer["standing"] == self.folded(answer["account_id"])

    # ------------------------------------------------------------ reporting

    def refused(self, request: Request) -> httpx.Response:
        """A reporter's request refused for its body: 400 or 422, or the caller's denial."""
        response, _ = self.send(request)
        denied = denial(request.caller, REPORTERS)
        assert response.status_code in ({400, 422} if denied is None else {400, 422, denied})
        return response

    @rule(
        body=violations(),
        key=st.sampled_from([None, *KEYS]),
        caller=callers(REPORTERS),
    )
    def report(self, body: dict[str, Any], key: str | None, caller: Caller) -> None:
        request = Request("POST", "/v1/violations", caller, body, key)
        self.report_as(request, body)

    def report_as(self, request: Request, body: dict[str, Any]) -> None:
        account = body["account_id"]
        signature = ("violation", canonical(body))
        answered = self.write(request, REPORTERS, signature, account)
        if answered is not None:
            response, new = answered
            assert response.status_code == 201, response.text
            self.check_report(response.json(), new)

    @rule(data=st.data(), recorder=st.sampled_from([True, True, False]))
    def replay(self, data: st.DataObject, recorder: bool) -> None:
        """An earlier request with a key sent again as it was: the one that recorded its key,
        or any."""
        if recorder and self.keys:
            earlier = self.keys[data.draw(st.sampled_from(sorted(self.keys)))][0]
        elif self.keyed:
            earlier = data.draw(st.sampled_from(self.keyed))
        else:
            return
        answered = self.write(earlier.request, earlier.allowed, earlier.signature, earlier.account)
        if answered is not None:  # the first was refused: decided afresh
            response, new = answered
            if response.status_code < 300:
                body = response.json()
                if "violation_id" in body:
                    self.check_report(body, new)
                elif "report_id" in body:
                    self.check_abuse_report(response, new)
                else:
                    self.check_command(earlier.account, body, new)

    @rule(data=st.data(), body=violations())
    def reuse_key(self, data: st.DataObject, body: dict[str, Any]) -> None:
        """A key already recorded, sent with another report."""
        if not self.keys:
            return
        key = data.draw(st.sampled_from(sorted(self.keys)))
        changed = {**body, "description": "reused"}  # no other report's
        self.report_as(Request("POST", "/v1/violations", Role.REPORTER, changed, key), changed)

    @rule(
        body=st.sampled_from(
            [
                {"account_id": "acct_a", "category": "no_such_category"},
                {"account_id": "acct_a"},
                {"category": "spam"},
                {"account_id": "acct a", "category": "spam"},
                {"account_id": "acct_a", "category": "spam", "severity": "huge"},
                {"account_id": "acct_a", "category": "spam", "detection": "guess"},
                {"account_id": "acct_a", "category": "spam", "occurred_at": "2999-01-01T00:00:00Z"},
                {"account_id": "acct_a", "category": "spam", "unknown": 1},
                [{"account_id": "acct_a", "category": "spam"}],
                b'{"account_id": "acct_a", "category": "spam"',
                b'{"account_id": "acct_a", "category": "spam", "category": "spam"}',
            ]
        ),
        key=st.sampled_from([None, *KEYS, "k" * 201]),
        caller=callers(REPORTERS),
    )
    def report_refused(self, body: Any, key: str | None, caller: Caller) -> None:
        response = self.refused(Request("POST", "/v1/violations", caller, body, key))
        unknown = body == {"account_id": "acct_a", "category": "no_such_category"}
        if unknown and denial(caller, REPORTERS) is None:
            allowed = [d.get("allowed") for d in response.json()["error"]["details"]]
            assert sorted(CATEGORIES) in allowed, response.text

    @rule(body=bodies(), content_type=content_types, caller=callers(REPORTERS))
    def report_anything(self, body: bytes, content_type: str | None, caller: Caller) -> None:
        """A body as a client may send it, valid or not (no key: which bodies are the same
        request is the idempotency tests' business): answered as anything but an error, it
        wrote what it answers."""
        headers = self.headers(caller)
        if content_type is not None:
            headers["Content-Type"] = content_type
        response = self.api.client.post("/v1/violations", content=body, headers=headers)
        assert response.status_code < 500, response.text
        new = self.settle(response)
        if response.status_code < 400:
            assert response.status_code == 201, response.text
            self.check_report(response.json(), new)

    @rule(
        items=st.lists(
            st.one_of(
                violations(),
                keyed_violations(),
                st.sampled_from([{"account_id": "acct_b", "category": "nope"}, 7, {}, None]),
            ),
            min_size=1,
            max_size=4,
        ),
        header=st.sampled_from([None, *HEADERS]),
        again=st.sampled_from([None, "same", "reordered", "fewer", "more", "other header"]),
        data=st.data(),
        caller=callers(REPORTERS),
    )
    def batch(
        self,
        items: list[Any],
        header: str | None,
        again: str | None,
        data: st.DataObject,
        caller: Caller,
    ) -> None:
        """A batch of good and bad items; then, most times once one was sent under a header,
        that one or an earlier one sent again under it, as a client retries: as it was (all
        replays), its items in another order, some of them (a retry drops what was refused),
        with new ones before and after, or under the other header (all new)."""
        self.batch_as(items, header, caller)
        if again is None or not self.batches:
            return
        header, earlier = data.draw(st.sampled_from(self.batches))
        if again == "reordered":
            earlier = data.draw(st.permutations(earlier))
        elif again == "fewer":
            earlier = data.draw(st.lists(st.sampled_from(earlier), min_size=1, max_size=4))
        elif again == "more":
            earlier = [*items[:1], *earlier, *items[1:]]
        elif again == "other header":
            header = HEADERS[1 - HEADERS.index(header)]
        self.batch_as(earlier, header, caller)

    def batch_as(self, items: list[Any], header: str | None, caller: Caller) -> None:
        response, new = self.send(
            Request("POST", "/v1/violations:batch", caller, {"violations": items}, header)
        )
        denied = denial(caller, REPORTERS)
        if denied is not None:
            assert response.status_code == denied
            return
        assert response.status_code == 200, response.text
        if header is not None:
            self.batches.append((header, items))
        results = response.json()["results"]
        assert len(results) == len(items)
        written: list[str] = []
        seen: dict[Signature, int] = {}  # identical items without a key of their own so far
        for item, result in zip(items, results, strict=True):
            if not isinstance(item, dict) or "account_id" not in item or item["category"] == "nope":
                assert (result["status"], result["violation_id"]) == (422, None), result
                assert result["error"]["code"] == "validation_failed", result
                continue
            key = item.get("idempotency_key")
            report = {name: value for name, value in item.items() if name != "idempotency_key"}
            signature = ("violation", canonical(report))
            derived = None
            if key is None and header is not None:
                derived = (header, signature, seen.get(signature, 0))
                seen[signature] = derived[2] + 1
                if derived in self.batch_keys:
                    assert result["status"] == 200, result
                    first = self.batch_keys[derived]
                    assert without_standing(result) == {"status": 200, **without_standing(first)}
                    continue
            if key in self.keys:
                recorder, first = self.keys[key]
                if recorder.signature != signature:
                    assert result["status"] == 409, result
                    assert result["error"]["code"] == "idempotency_key_reused", result
                else:
                    assert result["status"] == 200, result
                    assert without_standing(result) == {"status": 200, **without_standing(first)}
                continue
            assert result["status"] == 201, result
            answer = {name: value for name, value in result.items() if name != "status"}
            if key is not None:  # (sent alone, the same report replays)
                alone = Request("POST", "/v1/violations", Role.REPORTER, report, key)
                self.keys[key] = (Keyed(alone, REPORTERS, signature, report["account_id"]), answer)
            if derived is not None:
                self.batch_keys[derived] = answer
            mine = [e for e in new if e["event_id"] not in written]
            reported = [e for e in mine if e["data"].get("violation_id") == answer["violation_id"]]
            assert [e["type"] for e in reported[:1]] == ["ViolationReported"], result
            written += [reported[0]["event_id"], *(e["event_id"] for e in answer["decisions"])]
            # Its standing: the account's after its own events (others' of the batch after).
            last = max(e["version"] for e in [reported[0], *answer["decisions"]])
            assert answer["standing"] == self.folded(answer["account_id"], version=last)
        assert sorted(written) == sorted(e["event_id"] for e in new)

    @rule(
        refused=st.one_of(
            st.tuples(
                st.sampled_from([{"violations": []}, {"violations": {}}, {}, [], b"{"]),
                st.sampled_from([None, None, "h1"]),
            ),
            st.tuples(  # a good batch under a header that is no key a client may send
                st.just({"violations": [{"account_id": "acct_a", "category": "spam"}]}),
                st.sampled_from(["k" * 201, "batch:" + "0" * 64]),
            ),
        ),
        caller=callers(REPORTERS),
    )
    def batch_refused(self, refused: tuple[Any, str | None], caller: Caller) -> None:
        body, header = refused
        self.refused(Request("POST", "/v1/violations:batch", caller, body, header))

    @rule(
        body=abuse_reports(),
        key=st.sampled_from([None, *KEYS]),
        caller=callers(REPORTERS),
    )
    def abuse_report(self, body: dict[str, Any], key: str | None, caller: Caller) -> None:
        """A third party's report (AUP §7): recorded on the reported account, no strike."""
        request = Request("POST", "/v1/abuse-reports", caller, body, key)
        signature = ("abuse report", canonical(body))
        answered = self.write(request, REPORTERS, signature, body["reported_account_id"])
        if answered is not None:
            self.check_abuse_report(*answered)

    def check_abuse_report(self, response: httpx.Response, new: list[dict[str, Any]]) -> None:
        assert response.status_code == 202, response.text
        assert [e["type"] for e in new] == ["AbuseReportReceived"], new
        assert response.json() == {"report_id": new[0]["data"]["report_id"]}

    @rule(
        body=st.sampled_from(
            [
                {"reported_account_id": "acct_a"},
                {"category": "spam"},
                {"reported_account_id": "acct a", "category": "spam"},
                {"reported_account_id": "acct_a", "category": "no_such_category"},
                {"reported_account_id": "acct_a", "category": "spam", "account_id": "acct_b"},
                {"reported_account_id": "acct_a", "category": "spam", "evidence_ref": 7},
                b'{"reported_account_id": "acct_a", "category": "spam"',
            ]
        ),
        key=st.sampled_from([None, *KEYS]),
        caller=callers(REPORTERS),
    )
    def abuse_report_refused(self, body: Any, key: str | None, caller: Caller) -> None:
        self.refused(Request("POST", "/v1/abuse-reports", caller, body, key))

    # ------------------------------------------------------------ operator commands

    def command(
        self,
        account: str,
        method: str,
        tail: str,
        body: dict[str, Any] | None,
        key: str | None,
        caller: Caller,
        statuses: set[int],
    ) -> dict[str, Any] | None:
        """An account command: answered one of ``statuses`` unless the caller or the key
        decides; a success answers what it wrote and the standing after it."""
        path = f"/v1/accounts/{account}/{tail}"
        request = Request(method, path, caller, body, key)
        signature = ("command", method, path, canonical(body))
        answered = self.write(request, OPERATORS, signature, account)
        if answered is None:
            return None
        response, new = answered
        assert response.status_code in statuses, response.text
        if response.status_code >= 300:
            return None
        answer: dict[str, Any] = response.json()
        self.check_command(account, answer, new)
        return answer

    def _times(self, body: dict[str, Any]) -> dict[str, Any]:
        """Days from now written as times (so that the same drawn body is the same request
        only at the same instant)."""
        return {
            name: format_time(self.clock() + timedelta(days=value))
            if name in ("until", "expires_at")
            else value
            for name, value in body.items()
        }

    @rule(
        account=st.sampled_from(ACCOUNTS),
        command=command_bodies(),
        key=st.sampled_from([None, None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def operate(
        self, account: str, command: tuple[str, str, Any], key: str | None, caller: Caller
    ) -> None:
        method, tail, body = command
        self.command(account, method, tail, self._times(body), key, caller, {200, 409})

    @rule(
        account=st.sampled_from(ACCOUNTS),
        which=st.sampled_from(["dismiss", "complete", "lift"]),
        pick=st.sampled_from(["own", "own", "other", "unknown"]),
        data=st.data(),
        key=st.sampled_from([None, None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def operate_on_id(
        self,
        account: str,
        which: str,
        pick: str,
        data: st.DataObject,
        key: str | None,
        caller: Caller,
    ) -> None:
        """A command on a violation, remediation or throttle: of the account, of the other
        account (404), or of none (404)."""
        event_type, name, method, tail, body = {
            "dismiss": (
                "ViolationReported",
                "violation_id",
                "POST",
                "violations/{}/dismiss",
                {"reason": "mistake"},
            ),
            "complete": (
                "RemediationRequested",
                "remediation_id",
                "POST",
                "remediations/{}/complete",
                {"note": "fixed"},
            ),
            "lift": ("ThrottleApplied", "throttle_id", "DELETE", "throttles/{}", None),
        }[which]
        other = ACCOUNTS[1 - ACCOUNTS.index(account)]
        choices = self.ids(account if pick == "own" else other, event_type, name)
        if pick == "unknown" or not choices:
            pick, the_id = "unknown", UNKNOWN_ID
        else:
            the_id = data.draw(st.sampled_from(choices))
        statuses = {200, 409} if pick == "own" else {404}
        self.command(account, method, tail.format(the_id), body, key, caller, statuses)

    @precondition(lambda self: any(self.ids(a, "NoticeIssued", "notice_id") for a in ACCOUNTS))
    @rule(
        account=st.sampled_from(ACCOUNTS),
        pick=st.sampled_from(["own", "own", "own", "other", "unknown"]),
        data=st.data(),
        key=st.sampled_from([None, None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def resend_notice(
        self, account: str, pick: str, data: st.DataObject, key: str | None, caller: Caller
    ) -> None:
        """A notice of the account is sent again, whatever its standing, as a copy caused by
        it, naming the first notice (200), unless an appeal overturned its decision (409); a
        notice of the other account, or none, is 404."""
        other = ACCOUNTS[1 - ACCOUNTS.index(account)]
        of = account if pick == "own" else other
        notices = [e for e in self.history(of) if e["type"] == "NoticeIssued"]
        notice = None if pick == "unknown" or not notices else data.draw(st.sampled_from(notices))
        notice_id = UNKNOWN_ID if notice is None else notice["data"]["notice_id"]
        statuses = {404}
        if notice is not None and pick == "own":
            overturned = any(
                e["type"] == "AppealDecided"
                and e["data"]["outcome"] == "overturned"
                and e["data"]["decision_event_id"] == notice["data"]["decision_event_id"]
                for e in self.history(account)
            )
            statuses = {409} if overturned else {200}
        body = {"reason": "bounced"}
        tail = f"notices/{notice_id}/resend"
        answer = self.command(account, "POST", tail, body, key, caller, statuses)
        if answer is None:
            return
        assert notice is not None
        [copy] = answer["events"]
        assert (copy["type"], answer["notice_id"]) == ("NoticeIssued", copy["data"]["notice_id"])
        assert copy["metadata"]["causation_id"] == notice["event_id"]
        first = notice["data"]["resend_of"] or {
            "notice_id": notice_id,
            "notice_event_id": notice["event_id"],
            "issued_at": notice["recorded_at"],
        }
        named = ("notice_id", "notice_event_id", "issued_at")
        assert copy["data"]["resend_of"] == {
            **{k: first[k] for k in named},
            **body,
            "channels": None,
        }

    @rule(
        account=st.sampled_from(ACCOUNTS),
        pick=st.sampled_from(["decision", "decision", "any event", "other account", "unknown"]),
        data=st.data(),
        key=st.sampled_from([None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def appeal(
        self, account: str, pick: str, data: st.DataObject, key: str | None, caller: Caller
    ) -> None:
        """An appeal against a decision the events feed shows (or against what is none)."""
        other = ACCOUNTS[1 - ACCOUNTS.index(account)]
        events = self.history(other if pick == "other account" else account)
        if pick in ("decision", "other account"):
            events = [e for e in events if e["type"] in DECISIONS]
        if pick == "unknown" or not events:
            pick, event_id = "unknown", "01a24aeb-0000-7000-8000-000000000000"
        else:
            event_id = data.draw(st.sampled_from(events))["event_id"]
        body = {"decision_event_id": event_id, "statement": "please"}
        statuses = {"decision": {200, 409}, "any event": {200, 404, 409}}.get(pick, {404})
        answer = self.command(account, "POST", "appeals", body, key, caller, statuses)
        if answer is not None:
            assert answer["appeal_id"] == answer["events"][0]["data"]["appeal_id"]
            assert answer["events"][0]["type"] == "AppealFiled"

    @rule(
        account=st.sampled_from(ACCOUNTS),
        outcome=st.sampled_from(["upheld", "overturned"]),
        known=st.sampled_from([True, True, False]),
        data=st.data(),
        key=st.sampled_from([None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def decide_appeal(
        self,
        account: str,
        outcome: str,
        known: bool,
        data: st.DataObject,
        key: str | None,
        caller: Caller,
    ) -> None:
        appeals = self.ids(account, "AppealFiled", "appeal_id")
        appeal_id = data.draw(st.sampled_from(appeals)) if known and appeals else UNKNOWN_ID
        body = {"outcome": outcome, "reason": "reviewed"}
        statuses = {404} if appeal_id == UNKNOWN_ID else {200, 409}
        self.command(account, "POST", f"appeals/{appeal_id}/decide", body, key, caller, statuses)

    @rule(
        account=st.sampled_from(ACCOUNTS),
        pick=st.sampled_from(["own", "own", "own", "other", "unknown"]),
        outcome=st.sampled_from(["confirmed", "rejected"]),
        severity=st.sampled_from([None, "low", "critical"]),
        data=st.data(),
        key=st.sampled_from([None, None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def triage(
        self,
        account: str,
        pick: str,
        outcome: str,
        severity: str | None,
        data: st.DataObject,
        key: str | None,
        caller: Caller,
    ) -> None:
        """An abuse report triaged: one of the account (409 once triaged), of the other
        account or of none (404)."""
        other = ACCOUNTS[1 - ACCOUNTS.index(account)]
        reports = self.ids(account if pick == "own" else other, "AbuseReportReceived", "report_id")
        if pick == "unknown" or not reports:
            pick, report_id = "unknown", UNKNOWN_ID
        else:
            report_id = data.draw(st.sampled_from(reports))
        body = {"outcome": outcome, "severity": severity}
        if severity is None:  # (not written at its default)
            del body["severity"]
        statuses = {200, 409} if pick == "own" else {404}
        tail = f"abuse-reports/{report_id}/triage"
        answer = self.command(account, "POST", tail, body, key, caller, statuses)
        if answer is not None:
            triaged = answer["events"][0]
            assert triaged["type"] == "AbuseReportTriaged", answer
            assert (triaged["data"]["report_id"], triaged["data"]["outcome"]) == (
                report_id,
                outcome,
            )

    @rule(
        account=st.sampled_from(ACCOUNTS),
        key_id=st.sampled_from([None, None, "key_1", "key_2"]),
        rpm=st.sampled_from([1, 60, 10_000_000]),
        tpd=st.sampled_from([1, 1000, 10**15]),
        key=st.sampled_from([None, None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def configure_limits(
        self,
        account: str,
        key_id: str | None,
        rpm: int,
        tpd: int,
        key: str | None,
        caller: Caller,
    ) -> None:
        """The limits of a key, or the account-wide ceiling (no key)."""
        tail = "limits" if key_id is None else f"keys/{key_id}/limits"
        body = {"requests_per_minute": rpm, "tokens_per_day": tpd}
        answer = self.command(account, "PUT", tail, body, key, caller, {200})
        if answer is not None:
            configured = answer["events"][0]
            assert configured["type"] == "RateLimitsConfigured", answer
            assert configured["data"] == {"key_id": key_id, **body}, answer

    @rule(
        account=st.sampled_from(ACCOUNTS),
        approved=st.booleans(),
        reason=st.sampled_from([None, "verified age gate"]),
        key=st.sampled_from([None, None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def approve_adult_content(
        self, account: str, approved: bool, reason: str | None, key: str | None, caller: Caller
    ) -> None:
        body: dict[str, Any] = {"approved": approved}
        if reason is not None:
            body["reason"] = reason
        answer = self.command(account, "PUT", "adult-content-approval", body, key, caller, {200})
        if answer is not None:
            changed = answer["events"][0]
            assert changed["type"] == "AdultContentApprovalChanged", answer
            assert answer["standing"]["adult_content_approved"] is approved

    @rule(
        account=st.sampled_from(ACCOUNTS),
        email=st.sampled_from([None, "ops@example.com", "x@y", "no address", "a@b, c@d"]),
        webhook_url=st.sampled_from([None, "https://hooks.example.com/a", "ftp://example.com"]),
        written=st.sampled_from(["both", "both", "email", "webhook_url"]),
        caller=callers(OPERATORS),
    )
    def set_contact(
        self,
        account: str,
        email: str | None,
        webhook_url: str | None,
        written: str,
        caller: Caller,
    ) -> None:
        """A contact (no event): stored as sent, a field left out stored as none; one of an
        address or URL that is none is a 422 that stores nothing."""
        body = {"email": email, "webhook_url": webhook_url}
        if written != "both":
            body = {written: body[written]}
        path = f"/v1/accounts/{account}/contact"
        response = self.api.client.put(path, json=body, headers=self.headers(caller))
        denied = denial(caller, OPERATORS)
        if denied is None and response.status_code == 200:
            self.contacts[account] = (body.get("email"), body.get("webhook_url"))
        new = self.settle(response)  # (the contacts stored are the model's)
        if denied is not None:
            assert response.status_code == denied
            return
        bad = {"no address", "a@b, c@d", "ftp://example.com"} & {*body.values()}
        assert (response.status_code, new) == (422 if bad else 200, []), response.text
        if bad:
            return
        stored = {"email": body.get("email"), "webhook_url": body.get("webhook_url")}
        standing = self.folded(account)
        assert response.json() == {
            "account_id": account,
            **stored,
            "events": [],
            "standing": standing,
        }

    @rule(
        request=st.sampled_from(
            [
                ("POST", "suspend", {"notify": "no"}),
                ("POST", "throttles", {"factor": 0}),
                ("POST", "throttles", {"factor": 1.5}),
                ("POST", "terminate", {"reason": "x", "extra": 1}),
                ("POST", "appeals", {"statement": "no decision"}),
                ("POST", "suspend", b'{"reason": '),
                ("POST", "nonsense", {}),
                ("PUT", "limits", {"requests_per_minute": 0, "tokens_per_day": 1}),
                ("PUT", "limits", {"requests_per_minute": 1}),
                ("PUT", "keys/key_1/limits", {"requests_per_minute": 1.5, "tokens_per_day": 1}),
                ("PUT", "keys/key_1/limits", {"requests_per_minute": 1, "tokens_per_day": 10**16}),
                ("PUT", "adult-content-approval", {"approved": "yes"}),
                ("PUT", "adult-content-approval", {"reason": "no decision"}),
                ("POST", f"abuse-reports/{UNKNOWN_ID}/triage", {"outcome": "maybe"}),
                ("POST", f"abuse-reports/{UNKNOWN_ID}/triage", {"outcome": "confirmed", "x": 1}),
                ("PUT", "contact", {"email": "a@b", "phone": "1"}),
                ("PUT", "contact", b'{"email": "a@b"'),
                ("DELETE", "suspend", None),
            ]
        ),
        account=st.sampled_from([*ACCOUNTS, "bad account"]),
        key=st.sampled_from([None, *KEYS]),
        caller=callers(OPERATORS),
    )
    def command_refused(
        self, request: tuple[str, str, Any], account: str, key: str | None, caller: Caller
    ) -> None:
        method, tail, body = request
        path = f"/v1/accounts/{account}/{tail}"
        response, _ = self.send(Request(method, path, caller, body, key))
        assert 400 <= response.status_code < 500, response.text

    @rule(
        span=st.sampled_from(
            [
                timedelta(seconds=1),
                timedelta(hours=1),
                timedelta(days=1),
                timedelta(days=8),
                timedelta(days=21),
                timedelta(days=91),
            ]
        )
    )
    def time_passes(self, span: timedelta) -> None:
        self.clock.advance(span)
        self.touched |= {*ACCOUNTS, *(e["account_id"] for e in self.events)}  # standings move

    # ------------------------------------------------------------ reading

    @rule(
        account=st.sampled_from(ACCOUNTS),
        at=st.one_of(
            st.tuples(st.integers(0, 200), st.sampled_from([0, -1, 1])),
            st.sampled_from([None, "later", "yesterday", "2026-11-24"]),
        ),
        caller=callers(STANDING_READERS),
    )
    def read_standing(self, account: str, at: Any, caller: Caller) -> None:
        """The standing now, or as of an event's instant (or a microsecond either side): the
        fold of the events recorded by then."""
        events = self.history(account)
        when: datetime | None = None
        if isinstance(at, tuple) and events:
            index, microseconds = at
            recorded = parse_time(events[index % len(events)]["recorded_at"])
            when = recorded + timedelta(microseconds=microseconds)
        elif at == "later":
            when = self.clock() + timedelta(days=100)
        params: tuple[tuple[str, str], ...] = ()
        if when is not None:
            params = (("as_of", format_time(when)),)
        elif isinstance(at, str) and at != "later":
            params = (("as_of", at),)
        path = f"/v1/accounts/{account}/standing"
        response, _ = self.send(Request("GET", path, caller, params=params))
        denied = denial(caller, STANDING_READERS)
        if denied is not None:
            assert response.status_code == denied
        elif params and when is None:
            assert response.status_code == 422, response.text
        else:
            assert response.status_code == 200, response.text
            assert response.json() == self.folded(account, when)

    @rule(
        after=st.integers(0, 60),
        limit=st.sampled_from([1, 3, 500, 0]),
        account=st.sampled_from([None, *ACCOUNTS]),
        caller=callers(READERS),
    )
    def read_events(self, after: int, limit: int, account: str | None, caller: Caller) -> None:
        """A page of the global feed (``after_position``) or of a history (``after_version``)."""
        if account is None:
            path, cursor, name, shown = "/v1/events", "after_position", "position", self.events
        else:
            path, cursor, name = f"/v1/accounts/{account}/events", "after_version", "version"
            shown = self.history(account)
        params = ((cursor, str(after)), ("limit", str(limit)))
        response, _ = self.send(Request("GET", path, caller, params=params))
        denied = denial(caller, READERS)
        if denied is not None:
            assert response.status_code == denied
        elif limit == 0:
            assert response.status_code == 422
        else:
            assert response.status_code == 200, response.text
            page = [e for e in shown if e[name] > after][:limit]
            following = page[-1][name] if len(page) == limit else None
            next_name = "next_after_" + name
            assert response.json() == {"events": page, next_name: following}

    # ------------------------------------------------------------ after each step

    @invariant()
    def every_account_agrees_with_its_events(self) -> None:
        """Each account the step wrote to (every one when time passed; the others' events
        and standings are as they were checked): its history is the feed's events of it,
        verifies, and folds to its standing."""
        heads = check_chains(self.events)  # tests/auditor.py
        reader = self.headers(Role.AUDITOR)
        touched, self.touched = self.touched, set()
        for account in sorted(touched):
            mine = self.history(account)
            path = account_path(account)
            shown = self.api.client.get(f"{path}/events", params={"limit": 1000}, headers=reader)
            assert shown.json() == {"events": mine, "next_after_version": None}
            assert [e["version"] for e in mine] == list(range(1, len(mine) + 1))
            verified = self.api.client.get(f"{path}/verify", headers=reader).json()
            head = heads.get(account, (0, ZERO_HASH))  # (an account of no events: genesis)
            assert verified == {"ok": True, "events": head[0], "head_hash": head[1]}, verified
            standing = self.api.client.get(f"{path}/standing", headers=reader).json()
            assert standing == self.folded(account)
            if mine:  # and as of its middle event's instant: the events recorded by then
                middle = parse_time(mine[len(mine) // 2]["recorded_at"])
                params = {"as_of": format_time(middle)}
                then = self.api.client.get(f"{path}/standing", params=params, headers=reader)
                assert then.json() == self.folded(account, middle)


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_the_api_keeps_its_contract_whatever_clients_do(
    backend: str, tmp_path: Path, migrated_templates: MigratedTemplates
) -> None:
    ApiMachine.templates = migrated_templates
    ApiMachine.directory = tmp_path
    ApiMachine.backend = backend
    run_state_machine_as_test(
        ApiMachine,
        settings=settings(
            max_examples=EXAMPLES[backend],
            stateful_step_count=STEPS,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
