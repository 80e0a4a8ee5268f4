"""An account's notices and how each one's delivery went (``projections.notices``), read over
HTTP (``GET /v1/accounts/{id}/notices``) and the CLI (``enforcement notices``), on SQLite and
PostgreSQL: what an operator looks at to find a notice that failed for good, and sends again."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from api_support import ApiSystem, api_system
from test_service_support import OPERATOR, REPORTER, FakeClock
from typer.testing import CliRunner

from enforcement.bootstrap import Container
from enforcement.cli import app
from enforcement.cli_output import console
from enforcement.notices.delivery import WORKER, delivered_key, failed_key, undeliverable_key
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from events import EventStore, RecordedEvent
from events.timefmt import format_time
from projections import aup_events as ev

ACCOUNT = "acct_notices"


def notice_of(events: list[RecordedEvent]) -> RecordedEvent:
    [notice] = [e for e in events if e.type == "NoticeIssued"]
    return notice


def populate(system: Container, clock: FakeClock) -> tuple[RecordedEvent, RecordedEvent]:
    """A warning recorded undeliverable (no contact), a copy an operator sent again, delivered
    by e-mail on its second try while its webhook still retries."""
    report = ViolationReport("spam", clock(), description="bulk mail")
    first = notice_of(system.service.report_violation(ACCOUNT, report, REPORTER).events)
    service = system.service

    def outcome(notice: RecordedEvent, payload: object, key: str) -> None:
        clock.advance(timedelta(minutes=1))
        service.record_fact(
            ACCOUNT, payload, WORKER, causation_id=notice.event_id, idempotency_key=key
        )

    data = first.data["notice_id"], first.event_id
    undeliverable = "undeliverable: the account has no contact data"
    outcome(first, ev.NoticeDeliveryFailed(*data, "none", 1, undeliverable, True),
            undeliverable_key(first.event_id))  # fmt: skip
    clock.advance(timedelta(hours=1))
    copy = notice_of(
        service.resend_notice(ACCOUNT, first.data["notice_id"], "contact set", OPERATOR).events
    )
    data = copy.data["notice_id"], copy.event_id
    for channel in ("email", "webhook"):
        failed = ev.NoticeDeliveryFailed(*data, channel, 1, "timed out", False)
        outcome(copy, failed, failed_key(copy.event_id, channel, 1))
    outcome(copy, ev.NoticeDelivered(*data, "email", 2), delivered_key(copy.event_id, "email"))
    return first, copy


def expected(first: RecordedEvent, copy: RecordedEvent) -> list[dict[str, Any]]:
    common = {
        "account_id": ACCOUNT,
        "kind": "warning",
        "decision_event_id": first.data["decision_event_id"],
    }
    return [
        {
            **common,
            "notice_id": first.data["notice_id"],
            "notice_event_id": first.event_id,
            "issued_at": "2026-11-24T10:00:00.000000Z",
            "resend_of": None,
            "chosen_channels": None,
            "sent_again_as": [copy.data["notice_id"]],
            "state": "sent_again",
            "channels": [
                {
                    "channel": "none",
                    "state": "failed_for_good",
                    "attempts": 1,
                    "last_error": "undeliverable: the account has no contact data",
                    "last_outcome_at": "2026-11-24T10:01:00.000000Z",
                }
            ],
        },
        {
            **common,
            "notice_id": copy.data["notice_id"],
            "notice_event_id": copy.event_id,
            "issued_at": "2026-11-24T11:01:00.000000Z",
            "resend_of": first.data["notice_id"],
            "chosen_channels": None,
            "sent_again_as": [],
            "state": "pending",
            "channels": [
                {
                    "channel": "email",
                    "state": "delivered",
                    "attempts": 2,
                    "last_error": "timed out",
                    "last_outcome_at": "2026-11-24T11:04:00.000000Z",
                },
                {
                    "channel": "webhook",
                    "state": "retrying",
                    "attempts": 1,
                    "last_error": "timed out",
                    "last_outcome_at": "2026-11-24T11:03:00.000000Z",
                },
            ],
        },
    ]


@pytest.fixture
def api(database_url: str) -> Any:
    with api_system(database_url, FakeClock()) as running:
        yield running


def test_an_operator_or_auditor_reads_an_accounts_notices_over_http(api: ApiSystem) -> None:
    headers = {role: {"Authorization": f"Bearer {api.tokens[role]}"} for role in Role}
    url = f"/v1/accounts/{ACCOUNT}/notices"
    empty = api.client.get(url, headers=headers[Role.AUDITOR])
    assert (empty.status_code, empty.json()) == (200, {"account_id": ACCOUNT, "notices": []})

    first, copy = populate(api.system, api.system.clock)  # type: ignore[arg-type]
    listed = expected(first, copy)
    for role in (Role.AUDITOR, Role.OPERATOR, Role.ADMIN):
        answer = api.client.get(url, headers=headers[role])
        assert answer.status_code == 200, role
        assert answer.json() == {"account_id": ACCOUNT, "notices": listed}
    kept_by_state = (("sent_again", listed[:1]), ("pending", listed[1:]), ("failed", []))
    for state, kept in kept_by_state:
        answer = api.client.get(url, params={"state": state}, headers=headers[Role.AUDITOR])
        assert answer.json()["notices"] == kept, state
    since = {"since": "2026-11-24T11:01:00Z"}
    later = api.client.get(url, params=since, headers=headers[Role.AUDITOR])
    assert later.json()["notices"] == listed[1:]
    for query in ({"state": "lost"}, {"since": "yesterday"}):
        bad = api.client.get(url, params=query, headers=headers[Role.AUDITOR])
        assert bad.status_code == 422, query
        assert bad.json()["error"]["code"] == "validation_failed"
    for role in (Role.REPORTER, Role.GATEWAY):
        assert api.client.get(url, headers=headers[role]).status_code == 403
    assert api.client.get(url).status_code == 401
    other = api.client.get("/v1/accounts/acct_other/notices", headers=headers[Role.AUDITOR])
    assert other.json() == {"account_id": "acct_other", "notices": []}


def test_every_accounts_notices_since_an_instant_are_read_over_http(api: ApiSystem) -> None:
    """``GET /v1/notices?since=T[&state=S]``: every account's notices issued then or later, as
    ``enforcement notices --all --since T --json`` lists them; ``since`` is required (a pass
    over the whole log per request is asked for by giving an early one)."""
    headers = {role: {"Authorization": f"Bearer {api.tokens[role]}"} for role in Role}
    clock: FakeClock = api.system.clock  # type: ignore[assignment]
    first, copy = populate(api.system, clock)
    report = ViolationReport("spam", clock(), description="more mail")
    other = notice_of(api.system.service.report_violation("acct_b", report, REPORTER).events)
    listed = expected(first, copy)

    def notices(**query: str) -> Any:
        answer = api.client.get("/v1/notices", params=query, headers=headers[Role.AUDITOR])
        assert answer.status_code == 200, answer.text
        return answer.json()["notices"]

    every = notices(since="2026-11-24T10:00:00Z")
    assert every[:2] == listed
    assert [(n["account_id"], n["notice_id"]) for n in every[2:]] == [
        ("acct_b", other.data["notice_id"])
    ]
    later = notices(since="2026-11-24T11:01:00Z")
    assert [n["notice_id"] for n in later] == [copy.data["notice_id"], other.data["notice_id"]]
    assert notices(since="2026-11-24T10:00:00Z", state="sent_again") == listed[:1]
    assert notices(since="2099-01-01T00:00:00Z") == []
    for role in (Role.OPERATOR, Role.ADMIN):
        answer = api.client.get("/v1/notices", params={"since": "2026-11-24T10:00:00Z"},
                                headers=headers[role])  # fmt: skip
        assert (answer.status_code, answer.json()["notices"]) == (200, every), role
    for query in ({}, {"since": "yesterday"}, {"since": "2026-11-24T10:00:00Z", "state": "x"}):
        bad = api.client.get("/v1/notices", params=query, headers=headers[Role.AUDITOR])
        assert bad.status_code == 422, query
        assert bad.json()["error"]["code"] == "validation_failed"
    for role in (Role.REPORTER, Role.GATEWAY):
        forbidden = api.client.get("/v1/notices", params={"since": "2026-11-24T10:00:00Z"},
                                   headers=headers[role])  # fmt: skip
        assert forbidden.status_code == 403
    assert (
        api.client.get("/v1/notices", params={"since": "2026-11-24T10:00:00Z"}).status_code == 401
    )


def test_every_accounts_notices_come_in_pages_that_list_what_one_pass_lists(
    api: ApiSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``GET /v1/notices?since=T&limit=N[&after_position=P]``: each page folds its notices
    from their accounts' streams, and the pages in turn, in any size and with any state, list
    what the whole answer lists; a page reads no more of the log than its notices."""
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}
    clock: FakeClock = api.system.clock  # type: ignore[assignment]
    service = api.system.service
    early = ViolationReport("spam", clock(), description="before the instant")
    service.report_violation("acct_early", early, REPORTER)
    clock.advance(timedelta(minutes=5))
    since = format_time(clock())
    populate(api.system, clock)  # a failed notice sent again; its copy delivered by e-mail
    for account in ("acct_b", "acct_c", "acct_b", "acct_d"):
        clock.advance(timedelta(minutes=1))
        report = ViolationReport("spam", clock(), description="more mail")
        notice = notice_of(service.report_violation(account, report, REPORTER).events)
        if account == "acct_c":  # delivered, after the notices that follow it were issued
            delivered = ev.NoticeDelivered(notice.data["notice_id"], notice.event_id, "email", 1)
            key = delivered_key(notice.event_id, "email")
            later_outcome = (account, delivered, notice.event_id, key)
    clock.advance(timedelta(minutes=1))
    account, delivered, cause, key = later_outcome
    service.record_fact(account, delivered, WORKER, causation_id=cause, idempotency_key=key)

    def get(**query: Any) -> Any:
        answer = api.client.get("/v1/notices", params={"since": since, **query}, headers=auditor)
        assert answer.status_code == 200, answer.text
        return answer.json()

    whole = get()
    assert whole["next_after_position"] is None
    assert len(whole["notices"]) == 6 and "acct_early" not in str(whole)
    states = {n["state"] for n in whole["notices"]}
    assert states == {"sent_again", "pending", "delivered"}
    read: list[int] = []  # how many notices each page's request read from the log
    iter_all_of_types = EventStore.iter_all_of_types

    def noted(self: EventStore, types: Any, *args: Any, **kw: Any) -> Any:
        assert tuple(types) == ("NoticeIssued",)  # a page reads its notices, no outcome
        read.append(0)
        for event in iter_all_of_types(self, types, *args, **kw):
            read[-1] += 1
            yield event

    with monkeypatch.context() as patched:
        patched.setattr(EventStore, "iter_all_of_types", noted)
        for state in (None, *sorted(states)):
            one_pass = [n for n in whole["notices"] if state is None or n["state"] == state]
            for limit in range(1, 8):
                pages: list[Any] = []
                after, asked = 0, 0
                read.clear()
                while True:
                    chosen = {"state": state} if state else {}
                    page = get(limit=limit, after_position=after, **chosen)
                    asked += 1
                    pages += page["notices"]
                    if page["next_after_position"] is None:
                        break
                    assert page["next_after_position"] > after
                    after = page["next_after_position"]
                assert pages == one_pass, (state, limit)
                assert asked == 6 // limit + 1, (state, limit)  # a full last page: once more
                assert max(read) <= limit and sum(read) == 6, (state, limit, read)
    # Past a position without a page: the rest at once.
    third = whole["notices"][2]["notice_event_id"]
    [position] = [e.position for e in api.system.store.read_all(0, 1000) if e.event_id == third]
    assert get(after_position=position)["notices"] == whole["notices"][3:]
    for query in ({"limit": 0}, {"limit": 1001}, {"after_position": -1}, {"limit": "x"}):
        bad = api.client.get("/v1/notices", params={"since": since, **query}, headers=auditor)
        assert bad.status_code == 422, query


def test_a_page_reads_its_accounts_from_its_own_start_not_their_whole_past(
    api: ApiSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page of one account's last notice reads that notice and what follows it, not the
    account's notices before the page (rv14: every page read its accounts' whole streams, so
    paging a big account cost its history once per page)."""
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}
    clock: FakeClock = api.system.clock  # type: ignore[assignment]
    service = api.system.service
    for _ in range(12):  # the account's past, long before the instant asked
        clock.advance(timedelta(days=100))
        report = ViolationReport("spam", clock(), description="old")
        service.report_violation("acct_big", report, REPORTER)
    clock.advance(timedelta(days=1))
    since = format_time(clock())
    clock.advance(timedelta(minutes=1))
    report = ViolationReport("spam", clock(), description="new")
    service.report_violation("acct_big", report, REPORTER)
    read: list[int] = []
    read_streams_of_types = EventStore.read_streams_of_types

    def counted(self: EventStore, *args: Any, **kw: Any) -> Any:
        found = read_streams_of_types(self, *args, **kw)
        read.append(sum(len(events) for events in found.values()))
        return found

    monkeypatch.setattr(EventStore, "read_streams_of_types", counted)
    answer = api.client.get("/v1/notices", params={"since": since, "limit": 1}, headers=auditor)

    assert answer.status_code == 200, answer.text
    assert [n["state"] for n in answer.json()["notices"]] == ["pending"]
    assert read == [1]  # the page's notice: none of the 12 before it


def test_the_cli_lists_an_accounts_notices_as_a_table_and_as_json(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 320)  # a row on one line
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(
            app, list(args), env={"ENFORCEMENT_DATABASE_URL": database_url}, catch_exceptions=False
        )

    none = run("notices", ACCOUNT)
    assert (none.exit_code, none.stdout.strip()) == (0, f"No recorded notice for {ACCOUNT}.")
    assert json.loads(run("notices", ACCOUNT, "--json").stdout) == {
        "account_id": ACCOUNT,
        "notices": [],
    }

    clock = FakeClock()
    with api_system(database_url, clock) as api:
        first, copy = populate(api.system, clock)
    listed = expected(first, copy)
    as_json = run("notices", ACCOUNT, "--json").stdout
    assert json.loads(as_json) == {"account_id": ACCOUNT, "notices": listed}
    assert as_json == json.dumps(json.loads(as_json), indent=2) + "\n"  # for a reader
    sent_again = json.loads(run("notices", ACCOUNT, "--json", "--state", "sent_again").stdout)
    assert sent_again["notices"] == listed[:1]
    none_delivered = run("notices", ACCOUNT, "--state", "delivered")
    assert none_delivered.stdout.strip() == f"No delivered notice for {ACCOUNT}."

    table = run("notices", ACCOUNT)
    assert table.exit_code == 0, table.output
    lines = table.stdout.splitlines()
    [first_row] = [line for line in lines if first.data["notice_id"] + " " in line]
    for text in ("warning", "2026-11-24T10:00:00.000000Z", "sent_again"):
        assert text in first_row
    assert "none: failed_for_good after 1 try (undeliverable" in first_row
    [copy_row] = [line for line in lines if copy.data["notice_id"] in line]
    assert f"(a copy of {first.data['notice_id']})" in copy_row
    assert "email: delivered after 2 tries" in copy_row
    assert "webhook: retrying after 1 try (timed out)" in table.stdout

    # Since an instant: the copy alone (issued an hour after the first).
    later = run("notices", ACCOUNT, "--json", "--since", "2026-11-24T11:01:00Z").stdout
    assert json.loads(later)["notices"] == listed[1:]

    # Every account's, from one pass over the log: an account of a notice no one delivered yet.
    report = ViolationReport("spam", clock(), description="more mail")
    with api_system(database_url, clock) as api:
        third = notice_of(api.system.service.report_violation("acct_b", report, REPORTER).events)
    every = json.loads(run("notices", "--all", "--json").stdout)["notices"]
    assert [(n["account_id"], n["notice_id"], n["state"]) for n in every] == [
        (ACCOUNT, first.data["notice_id"], "sent_again"),
        (ACCOUNT, copy.data["notice_id"], "pending"),
        ("acct_b", third.data["notice_id"], "pending"),
    ]
    assert every[:2] == listed
    # acct_b has no contact: its notice awaits the e-mail that will record it undeliverable.
    assert every[2]["channels"] == [
        {
            "channel": "email",
            "state": "awaiting",
            "attempts": 0,
            "last_error": None,
            "last_outcome_at": None,
        }
    ]
    sent_anywhere = json.loads(run("notices", "--all", "--state", "sent_again", "--json").stdout)
    assert sent_anywhere == {"notices": listed[:1]}
    starts: list[int] = []
    iter_all_of_types = EventStore.iter_all_of_types

    def noted(self: EventStore, types: Any, after_position: int = 0, **kw: Any) -> Any:
        starts.append(after_position)
        return iter_all_of_types(self, types, after_position, **kw)

    monkeypatch.setattr(EventStore, "iter_all_of_types", noted)
    since = run("notices", "--all", "--json", "--since", "2026-11-24T11:01:00Z").stdout
    assert [n["notice_id"] for n in json.loads(since)["notices"]] == [
        copy.data["notice_id"],
        third.data["notice_id"],
    ]
    assert starts == [copy.position - 1]  # the log before the copy is not read
    wide = run("notices", "--all")
    assert wide.exit_code == 0, wide.output
    assert starts[1:] == [0]  # without --since, the log from its start
    assert "Notices of every account" in wide.stdout
    [b_row] = [line for line in wide.stdout.splitlines() if "acct_b" in line]
    assert third.data["notice_id"] in b_row and "email: no outcome yet" in b_row
    assert (
        "No delivered notice for any account."
        in run("notices", "--all", "--state", "delivered").stdout
    )

    for args, message in (
        (
            ("--state", "lost", ACCOUNT),
            "--state must be one of pending, delivered, partly_delivered, failed, sent_again.",
        ),
        ((), "Give an ACCOUNT, or --all for every account."),
        (("--all", ACCOUNT), "Give an ACCOUNT or --all, not both."),
        (("--since", "yesterday", ACCOUNT), "--since must be an RFC 3339 time"),
        (("not an id",), "ACCOUNT must be an account id"),
    ):
        bad = run("notices", *args)
        assert bad.exit_code == 2, args
        assert message in bad.stderr, (args, bad.stderr)


def test_a_notice_a_channel_delivered_awaits_no_channel_of_a_contact_that_replaced_it(
    api: ApiSystem,
) -> None:
    """A webhook-only contact replaced by an e-mail address (``PUT …/contact``, after the
    notices): a notice the webhook refused for good awaits the e-mail (it goes out on it), one
    the webhook delivered stays ``delivered`` (it is settled: it is not sent again by e-mail)."""
    operator = {"Authorization": f"Bearer {api.tokens[Role.OPERATOR]}"}
    clock: FakeClock = api.system.clock  # type: ignore[assignment]
    contact = f"/v1/accounts/{ACCOUNT}/contact"
    hook = {"email": None, "webhook_url": "https://customer.test/hook"}
    assert api.client.put(contact, json=hook, headers=operator).status_code == 200
    notices = []
    for _ in range(2):
        report = ViolationReport("spam", clock(), description="bulk mail")
        outcome = api.system.service.report_violation(ACCOUNT, report, REPORTER)
        notices.append(notice_of(outcome.events))
    reached, refused = notices
    for notice, payload in (
        (reached, ev.NoticeDelivered(reached.data["notice_id"], reached.event_id, "webhook", 1)),
        (refused, ev.NoticeDeliveryFailed(
            refused.data["notice_id"], refused.event_id, "webhook", 1, "HTTP 410", True
        )),
    ):  # fmt: skip
        api.system.service.record_fact(ACCOUNT, payload, WORKER, causation_id=notice.event_id)
    clock.advance(timedelta(hours=1))
    email = {"email": "owner@customer.test", "webhook_url": None}
    assert api.client.put(contact, json=email, headers=operator).status_code == 200

    answer = api.client.get(f"/v1/accounts/{ACCOUNT}/notices", headers=operator)
    listed = [
        (n["notice_event_id"], n["state"], [(c["channel"], c["state"]) for c in n["channels"]])
        for n in answer.json()["notices"]
    ]
    assert listed == [
        (reached.event_id, "delivered", [("webhook", "delivered")]),
        (refused.event_id, "pending", [("webhook", "failed_for_good"), ("email", "awaiting")]),
    ]
