"""``enforcement resend``: notices sent again in bulk after a fault that failed many, on SQLite
and PostgreSQL: which notices it picks, the channels of each copy, what it refuses or passes
over, what it records (and, in a dry run, does not), and its usage errors."""

from __future__ import annotations

import getpass
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from api_support import ApiSystem, api_system
from test_service_support import OPERATOR, REPORTER, FakeClock
from typer.testing import CliRunner

from enforcement.cli import app
from enforcement.cli_output import console
from enforcement.notice_listing import listed_notices
from enforcement.notice_resending import last_of_each, planned, resend_each
from enforcement.notices.delivery import WORKER, delivered_key, failed_key, undeliverable_key
from enforcement.policy import ViolationReport
from enforcement.roles import Role
from enforcement.service import EnforcementService
from enforcement.service_types import Actor
from events import RecordedEvent
from events.timefmt import format_time
from projections import aup_events as ev

FIXED, NO_CONTACT, PARTLY, OVERTURNED, PENDING = (
    "acct_fixed",
    "acct_no_contact",
    "acct_partly",
    "acct_overturned",
    "acct_pending",
)
UNDELIVERABLE = "undeliverable: the account has no contact data"


def notice_of(events: list[RecordedEvent]) -> RecordedEvent:
    [notice] = [e for e in events if e.type == "NoticeIssued"]
    return notice


class Population:
    """Five accounts' first notices: failed for want of a contact (FIXED, whose contact is set
    since; NO_CONTACT, whose is not; OVERTURNED, whose suspension an appeal overturned since),
    delivered by e-mail and refused by the webhook (PARTLY), and still awaited (PENDING)."""

    def __init__(self, api: ApiSystem) -> None:
        self.api = api
        self.service = api.system.service
        self.clock = api.system.clock
        self.first: dict[str, RecordedEvent] = {}
        for account in (FIXED, NO_CONTACT, PENDING):
            self.report(account, "spam")
        self.report(PARTLY, "spam")
        [suspension] = self.report(OVERTURNED, "phishing", "high")
        for account in (FIXED, NO_CONTACT, OVERTURNED):
            self.outcome(account, "none", UNDELIVERABLE, final=True)
        self.outcome(PARTLY, "email", None)
        self.outcome(PARTLY, "webhook", "410 Gone", final=True)
        appeal = self.service.file_appeal(OVERTURNED, suspension.event_id, "not me", OPERATOR)
        appeal_id = appeal.events[0].data["appeal_id"]
        self.service.decide_appeal(
            OVERTURNED, appeal_id, "overturned", "a false positive", OPERATOR
        )
        self.contact(FIXED, {"email": "fixed@customer.test"})
        both = {"email": "p@customer.test", "webhook_url": "https://customer.test/hook"}
        self.contact(PARTLY, both)
        self.contact(OVERTURNED, {"email": "o@customer.test"})

    def report(
        self, account: str, category: str, severity: str | None = None
    ) -> list[RecordedEvent]:
        """The account's suspensions, if any, of a violation reported now; its notice is kept
        in ``first``."""
        self.clock.advance(timedelta(minutes=1))
        report = ViolationReport(category, self.clock(), severity, description="seen")
        events = self.service.report_violation(account, report, REPORTER).events
        self.first[account] = notice_of(events)
        return [e for e in events if e.type == "AccountSuspended"]

    def outcome(self, account: str, channel: str, error: str | None, final: bool = False) -> None:
        notice = self.first[account]
        data = notice.data["notice_id"], notice.event_id
        if error is None:
            payload: object = ev.NoticeDelivered(*data, channel, 1)
            key = delivered_key(notice.event_id, channel)
        else:
            payload = ev.NoticeDeliveryFailed(*data, channel, 1, error, final)
            none = channel == "none"
            key = (
                undeliverable_key(notice.event_id)
                if none
                else failed_key(notice.event_id, channel, 1)
            )
        self.service.record_fact(
            account, payload, WORKER, causation_id=notice.event_id, idempotency_key=key
        )

    def contact(self, account: str, body: dict[str, str]) -> None:
        headers = {"Authorization": f"Bearer {self.api.tokens[Role.OPERATOR]}"}
        answer = self.api.client.put(f"/v1/accounts/{account}/contact", json=body, headers=headers)
        assert answer.is_success, answer.text

    def notice_id(self, account: str) -> str:
        return str(self.first[account].data["notice_id"])

    def copies(self) -> list[RecordedEvent]:
        """Every copy an operator sent again, in log order."""
        return [
            e
            for e in self.api.system.store.read_all(0, 10_000)
            if e.type == "NoticeIssued" and e.data.get("resend_of")
        ]


@pytest.fixture
def population(database_url: str) -> Iterator[Population]:
    with api_system(database_url, FakeClock()) as api:
        yield Population(api)


@pytest.fixture
def run(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setattr(console, "width", 320)  # a row on one line
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        env = {"ENFORCEMENT_DATABASE_URL": database_url}
        return runner.invoke(app, ["resend", *args], env=env, catch_exceptions=False)

    return invoke


def listed(result: Any) -> list[tuple[Any, ...]]:
    """Each notice of the command's JSON as (account, notice, channels, outcome, reason)."""
    shown = json.loads(result.stdout)["notices"]
    return [
        (n["account_id"], n["notice_id"], n["channels"], n["outcome"], n["reason"]) for n in shown
    ]


def test_every_failed_notice_is_sent_again_once_where_the_contact_has_a_target(
    population: Population, run: Any
) -> None:
    p = population
    before = p.api.system.store.max_position()
    no_contact = "The account has no contact: set it with PUT …/contact first."
    overturned = f"The decision of notice {p.notice_id(OVERTURNED)} was overturned on appeal."

    dry = run("--all", "--reason", "contacts mended", "--dry-run", "--json")
    assert dry.exit_code == 1, dry.output  # one would be refused
    assert listed(dry) == [
        (FIXED, p.notice_id(FIXED), None, "would_send", None),
        (NO_CONTACT, p.notice_id(NO_CONTACT), None, "would_refuse", no_contact),
        (OVERTURNED, p.notice_id(OVERTURNED), None, "would_skip", overturned),
    ]
    assert json.loads(dry.stdout)["correlation_id"] is None
    assert p.api.system.store.max_position() == before  # a dry run records nothing

    sent = run("--all", "--reason", "contacts mended", "--json")
    assert sent.exit_code == 1, sent.output  # one was refused
    shown = json.loads(sent.stdout)
    [copy] = p.copies()
    assert listed(sent) == [
        (FIXED, p.notice_id(FIXED), None, "sent", None),
        (NO_CONTACT, p.notice_id(NO_CONTACT), None, "refused", no_contact),
        (OVERTURNED, p.notice_id(OVERTURNED), None, "skipped", overturned),
    ]
    assert shown["notices"][0]["copy_notice_id"] == copy.data["notice_id"]
    assert copy.account_id == FIXED
    assert copy.data["resend_of"] == {
        "notice_id": p.notice_id(FIXED),
        "notice_event_id": p.first[FIXED].event_id,
        "issued_at": format_time(p.first[FIXED].recorded_at),
        "reason": "contacts mended",
        "channels": None,
    }
    assert copy.metadata["actor"] == f"cli:{getpass.getuser()}"
    assert copy.metadata["source"] == "cli"
    assert copy.metadata["correlation_id"] == shown["correlation_id"]
    assert shown["correlation_id"].startswith("cli-resend-")

    # Again: the notice sent again is no longer failed; the refusal stands until mended.
    again = run("--all", "--reason", "contacts mended", "--json")
    assert again.exit_code == 1, again.output
    assert [(n[0], n[3]) for n in listed(again)] == [
        (NO_CONTACT, "refused"),
        (OVERTURNED, "skipped"),
    ]
    assert len(p.copies()) == 1
    p.contact(NO_CONTACT, {"webhook_url": "https://no-contact.test/hook"})
    mended = run(NO_CONTACT, "--reason", "contact set", "--json")
    assert mended.exit_code == 0, mended.output
    assert [(n[0], n[3]) for n in listed(mended)] == [(NO_CONTACT, "sent")]
    assert [c.account_id for c in p.copies()] == [FIXED, NO_CONTACT]


def test_a_partly_delivered_notice_goes_out_again_on_the_channels_that_did_not_deliver_it(
    population: Population, run: Any
) -> None:
    p = population
    sent = run("--all", "--state", "partly_delivered", "--reason", "hook mended", "--json")

    assert sent.exit_code == 0, sent.output
    assert listed(sent) == [(PARTLY, p.notice_id(PARTLY), ["webhook"], "sent", None)]
    [copy] = p.copies()
    assert copy.data["resend_of"]["channels"] == ["webhook"]
    # Named, it is sent again, on the channel chosen.
    named = run(PARTLY, "--notice", p.notice_id(PARTLY), "--reason", "r", "--channel", "email")
    assert named.exit_code == 0, named.output
    assert p.copies()[-1].data["resend_of"]["channels"] == ["email"]


def test_named_notices_are_sent_again_in_any_state_on_the_channels_asked_for(
    population: Population, run: Any
) -> None:
    p = population
    pending = p.notice_id(PENDING)
    p.report(PENDING, "spam")  # a second notice, not named
    no_webhook = "The account's contact has no webhook_url: set it with PUT …/contact first."
    p.contact(PENDING, {"email": "pending@customer.test"})

    refused = run(PENDING, "--notice", pending, "--channel", "webhook", "--reason", "r", "--json")
    assert refused.exit_code == 1, refused.output
    assert listed(refused) == [(PENDING, pending, ["webhook"], "refused", no_webhook)]
    assert p.copies() == []

    table = run(PENDING, "--notice", pending, "--reason", "never arrived")
    assert table.exit_code == 0, table.output
    [copy] = p.copies()
    assert copy.data["resend_of"]["notice_id"] == pending
    [row] = [line for line in table.stdout.splitlines() if pending in line]
    assert f"sent as {copy.data['notice_id']}" in row and "the contact's" in row
    assert "Sent 1 notice(s) again (correlation id cli-resend-" in table.stderr
    assert "0 refused, 0 passed over." in table.stderr

    dry = run("--all", "--reason", "r", "--dry-run", "--since", "2030-01-01T00:00:00Z")
    assert dry.exit_code == 0 and dry.stdout.strip() == "No notice to send again."


USAGE_ERRORS: list[tuple[tuple[str, ...], str]] = [
    (("--reason", "r"), "Give an ACCOUNT, or --all for every account."),
    ((FIXED, "--all", "--reason", "r"), "Give an ACCOUNT or --all, not both."),
    (
        ("--all", "--state", "pending", "--reason", "r"),
        "--state must be one of failed, partly_delivered; name a notice in another state "
        "with --notice.",
    ),
    (
        ("--all", "--notice", "ntc_x", "--reason", "r"),
        "--notice names a notice of ACCOUNT: give the ACCOUNT, not --all.",
    ),
    (
        (FIXED, "--notice", "ntc_x", "--since", "2026-11-24T10:00:00Z", "--reason", "r"),
        "Give --notice or --since and --state, not both: --notice names the notices.",
    ),
    (
        (FIXED, "--notice", "ntc_x", "--state", "partly_delivered", "--reason", "r"),
        "Give --notice or --since and --state, not both: --notice names the notices.",
    ),
    (
        ("--all", "--channel", "sms", "--reason", "r"),
        "--channel must be email or webhook, not 'sms'.",
    ),
    (
        ("--all", "--channel", "email", "--channel", "email", "--reason", "r"),
        "--channel names each channel at most once.",
    ),
    (("--all",), "--reason must say why the notices are sent again; it is empty."),
    (("--all", "--reason", "  "), "--reason must say why the notices are sent again; it is empty."),
    ((FIXED, "--notice", "ntc_nothing", "--reason", "r"), f"{FIXED} has no notice 'ntc_nothing'."),
    (("--all", "--since", "yesterday", "--reason", "r"), "--since must be an RFC 3339 time"),
    (("bad id", "--reason", "r"), "ACCOUNT must be an account id"),
]


def test_usage_errors_exit_2_with_one_sentence_and_record_nothing(
    tmp_path: Path, migrated_templates: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On SQLite only: each is refused before the database is written."""
    url = migrated_templates.sqlite(tmp_path / "enforcement.db")
    with api_system(url, FakeClock()) as api:
        api.system.service.report_violation(
            FIXED, ViolationReport("spam", api.system.clock(), description="seen"), REPORTER
        )
        before = api.system.store.max_position()
    runner = CliRunner()
    for args, message in USAGE_ERRORS:
        result = runner.invoke(
            app, ["resend", *args], env={"ENFORCEMENT_DATABASE_URL": url}, catch_exceptions=False
        )
        assert result.exit_code == 2, (args, result.output)
        assert result.stderr.startswith(message), (args, result.stderr)
    with api_system(url, FakeClock()) as api:
        assert api.system.store.max_position() == before


def fail_last_copy(p: Population, account: str, channel: str) -> None:
    """The account's last copy's delivery on ``channel`` failed for good."""
    p.first[account] = [c for c in p.copies() if c.account_id == account][-1]
    p.outcome(account, channel, "410 Gone", final=True)


def test_a_notice_is_looked_at_through_its_last_copy_so_a_rerun_sends_nothing_twice(
    population: Population, run: Any
) -> None:
    """A partly delivered notice once copied is not sent again; its copy, failed, goes out
    on the copy's own channels (no second e-mail) (rv13: both were sent again on every run)."""
    p = population
    args = ("--all", "--state", "partly_delivered", "--reason", "hook mended", "--json")
    assert [n[3] for n in listed(run(*args))] == ["sent"]
    assert listed(run(*args)) == []
    assert len(p.copies()) == 1
    fail_last_copy(p, PARTLY, "webhook")

    again = run(PARTLY, "--reason", "hook mended again", "--json")

    assert [(n[2], n[3]) for n in listed(again)] == [(["webhook"], "sent")]
    assert p.copies()[-1].data["resend_of"]["channels"] == ["webhook"]
    assert listed(run(PARTLY, "--reason", "once more", "--json")) == []


def test_two_failed_copies_of_one_notice_make_one_copy(population: Population, run: Any) -> None:
    p = population
    for _ in range(2):  # an operator sent it twice over HTTP; both copies failed
        p.service.resend_notice(PARTLY, p.notice_id(PARTLY), "r", OPERATOR, channels=("webhook",))
        fail_last_copy(p, PARTLY, "webhook")

    sent = run(PARTLY, "--reason", "hook mended", "--json")

    assert [n[3] for n in listed(sent)] == ["sent"]
    assert len(p.copies()) == 3


def test_a_notice_sent_again_since_it_was_listed_is_passed_over(population: Population) -> None:
    """Two runs at once, or a run beside ``POST …/resend``: the copies are counted again in
    the transaction that would write one (rv13: both runs sent every notice)."""
    p = population
    container = p.api.system
    listed = listed_notices(container, FIXED)
    plan = planned(last_of_each(listed, "failed"), listed)
    p.service.resend_notice(FIXED, p.notice_id(FIXED), "r", OPERATOR)
    actor = Actor(name="cli:test", correlation_id="c", source="cli")

    [result] = resend_each(container, plan, "r", actor)

    assert (result.outcome, result.reason) == (
        "skipped",
        "It was sent again since it was listed (by another run, or POST …/resend).",
    )
    assert len(p.copies()) == 1


@pytest.mark.parametrize(
    ("error", "status", "why"),
    [
        (
            sa.exc.OperationalError("INSERT", {}, Exception("database is locked")),
            2,
            "The database cannot be used (database is locked); check ENFORCEMENT_DATABASE_URL "
            "and that the database is running",
        ),
        (KeyboardInterrupt(), 130, "interrupted"),
    ],
    ids=["database-error", "ctrl-c"],
)
def test_a_run_stopped_half_way_shows_what_it_sent_and_a_rerun_sends_the_rest(
    population: Population,
    run: Any,
    monkeypatch: pytest.MonkeyPatch,
    error: BaseException,
    status: int,
    why: str,
) -> None:
    p = population
    p.contact(NO_CONTACT, {"email": "n@customer.test"})
    resend_notice = EnforcementService.resend_notice
    calls: list[str] = []

    def second_fails(self: EnforcementService, account_id: str, *args: Any, **kw: Any) -> Any:
        calls.append(account_id)
        if len(calls) == 2:
            raise error
        return resend_notice(self, account_id, *args, **kw)

    with monkeypatch.context() as patched:
        patched.setattr(EnforcementService, "resend_notice", second_fails)
        stopped = run("--all", "--reason", "contacts mended", "--json")

    assert stopped.exit_code == status, stopped.output
    assert [(n[0], n[3]) for n in listed(stopped)] == [(FIXED, "sent")]
    assert stopped.stderr.strip() == (
        f"Stopped after 1 of 3 notices: {why}; run the command again to send the rest."
    )
    rest = run("--all", "--reason", "contacts mended", "--json")
    assert [(n[0], n[3]) for n in listed(rest)] == [(NO_CONTACT, "sent"), (OVERTURNED, "skipped")]
    assert [c.account_id for c in p.copies()] == [FIXED, NO_CONTACT]


def test_a_copy_of_its_first_notice_made_since_the_listing_passes_a_copy_over(
    population: Population,
) -> None:
    """The plan names the family's last copy; a copy of the first notice made meanwhile (over
    HTTP, from an older listing's id) is one of the family too (rv14: a second copy went)."""
    p = population
    container = p.api.system
    first = p.notice_id(PARTLY)
    p.service.resend_notice(PARTLY, first, "r", OPERATOR, channels=("webhook",))
    fail_last_copy(p, PARTLY, "webhook")
    listed = listed_notices(container, PARTLY)
    plan = planned(last_of_each(listed, "failed"), listed)
    assert [item.notice_id for item in plan] == [p.copies()[-1].data["notice_id"]]
    p.service.resend_notice(PARTLY, first, "r", OPERATOR, channels=("webhook",))
    actor = Actor(name="cli:test", correlation_id="c", source="cli")

    [result] = resend_each(container, plan, "r", actor)

    assert result.outcome == "skipped"
    assert len(p.copies()) == 2
