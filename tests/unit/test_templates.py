"""Notice templates (``templates.render``): every notice kind has its own subject and opening,
and every notice names the account, the decision, the AUP section, the statement of reasons, the
deadline where there is one, and how to appeal. Pure: a notice event in, text and JSON out."""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import pytest

from enforcement import operator_decisions as ops
from enforcement.notices.templates import INTROS, SUBJECTS, RenderedNotice, render
from enforcement.policy import (
    DEFAULT_POLICY,
    Context,
    ViolationReport,
    decide_appeal,
    decide_appeal_filing,
    decide_remediation_expired,
    decide_violation,
)
from events import NewEvent, RecordedEvent
from projections import aup_events as ev
from projections.reasons import statement_of_reasons, violation_fact
from projections.standing import StandingState, apply_all

T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
ACCOUNT = "acct_42"


@dataclass
class Account:
    """An in-memory stream: decisions are recorded and folded as the store would."""

    state: StandingState = field(default_factory=lambda: StandingState.empty(ACCOUNT))
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def ctx(self, now: datetime, actor: str = "reporter:svc") -> Context:
        return Context(now=now, actor=actor, correlation_id="req_1", new_id=self.new_id)

    def new_id(self, prefix: str) -> str:
        return f"{prefix}_{next(self.ids)}"

    def record(self, new_events: Sequence[NewEvent], at: datetime) -> list[RecordedEvent]:
        out = []
        for new in new_events:
            version = self.state.version + len(out) + 1
            data = json.loads(json.dumps(new.data))
            out.append(
                RecordedEvent(
                    version,
                    new.event_id,
                    ACCOUNT,
                    version,
                    new.type,
                    new.schema_version,
                    data,
                    new.metadata,
                    new.occurred_at,
                    at,
                    "",
                    "",
                )
            )
        self.state = apply_all(self.state, out)
        return out

    def violation(
        self, category: str, at: datetime, severity: str | None = None
    ) -> list[RecordedEvent]:
        report = ViolationReport(category, at, severity, description=f"{category} seen by svc")
        return self.record(decide_violation(DEFAULT_POLICY, self.state, report, self.ctx(at)), at)

    def operator(self, command: ops.Command, at: datetime) -> list[RecordedEvent]:
        decided = ops.decide(DEFAULT_POLICY, self.state, command, self.ctx(at, "operator:ann"))
        return self.record(decided, at)


def notice_in(events: Sequence[RecordedEvent]) -> RecordedEvent:
    [notice] = [e for e in events if e.type == "NoticeIssued"]
    return notice


def warning() -> RecordedEvent:
    return notice_in(Account().violation("spam", T0))


def throttle() -> RecordedEvent:
    account = Account()
    account.violation("spam", T0)
    return notice_in(account.violation("impersonation", T0 + timedelta(days=1)))


def suspension() -> RecordedEvent:
    return notice_in(Account().violation("phishing", T0, "high"))


def termination() -> RecordedEvent:
    return notice_in(Account().violation("csam", T0))


def reinstatement() -> RecordedEvent:
    account = Account()
    account.operator(ops.Suspend("payment fraud under review"), T0)
    return notice_in(account.operator(ops.Reinstate("review cleared"), T0 + timedelta(hours=2)))


def appeal_outcome() -> RecordedEvent:
    account = Account()
    decision = next(
        e for e in account.violation("phishing", T0, "high") if e.type == "AccountSuspended"
    )
    at = T0 + timedelta(days=1)
    filed = account.record(
        decide_appeal_filing(
            DEFAULT_POLICY, account.state, decision.event_id, "It was a test", account.ctx(at)
        ),
        at,
    )
    appeal_id = filed[0].data["appeal_id"]
    at += timedelta(hours=1)
    decided = decide_appeal(
        DEFAULT_POLICY, account.state, appeal_id, "upheld", "the evidence holds",
        account.ctx(at, "operator:ann"),
    )  # fmt: skip
    return notice_in(account.record(decided, at))


def synthetic(kind: str, deadline: str | None = None) -> RecordedEvent:
    """A notice of ``kind`` with a hand-built statement (for kinds no decision issues today)."""
    sor = statement_of_reasons(
        sections=[2],
        categories=["spam"],
        decision=f"A {kind} decision.",
        facts=[violation_fact("vio_9", "spam", "medium", "2026-11-24T09:00:00.000000Z", None)],
        automated_detection=True,
        automated_decision=False,
        policy_version="aup-2026-11",
        decided_at=T0,
        appeal_window=timedelta(days=20),
    )
    payload = ev.NoticeIssued("ntc_9", kind, "decision-evt-9", ["vio_9"], sor, deadline)
    new = ev.CODEC.encode(payload, occurred_at=T0, event_id="notice-evt-9")
    return Account().record([new], T0)[0]


REAL = {
    "warning": warning,
    "throttle": throttle,
    "suspension": suspension,
    "termination": termination,
    "reinstatement": reinstatement,
    "appeal_outcome": appeal_outcome,
}


def assert_names_everything(notice: RecordedEvent, rendered: RenderedNotice) -> None:
    sor = notice.data["statement_of_reasons"]
    text = rendered.text
    assert f"Account: {ACCOUNT}" in text
    assert ACCOUNT in rendered.subject
    assert f"Decision: {sor['decision']}" in text
    assert f"Ground: {sor['ground']}" in text
    assert "Statement of reasons" in text
    assert f"Policy version: {sor['policy_version']}" in text
    for fact in sor["facts"]:
        assert fact["description"] in text
    assert "How to appeal" in text
    assert sor["redress"] in text
    assert f"Decision event id: {notice.data['decision_event_id']}" in text
    assert f"Notice id: {notice.data['notice_id']}" in text
    deadline = notice.data["deadline"]
    if deadline:
        assert f"\n\nDeadline: {deadline}\n" in text
    else:
        assert "Deadline:" not in text
    # Its parts are paragraphs, and the text one newline-terminated block.
    assert "\n\nStatement of reasons\n" in text
    assert "\n\nHow to appeal\n" in text
    assert "\n\nDecision event id: " in text
    assert text.endswith(")\n") and not text.endswith("\n\n")


def test_every_notice_kind_has_a_template() -> None:
    assert set(SUBJECTS) == set(ev.NOTICE_KINDS)
    assert set(INTROS) == set(ev.NOTICE_KINDS)
    assert len(set(SUBJECTS.values())) == len(SUBJECTS)


# What each kind's subject and opening say it is (a word of each).
SAYS = {
    "warning": ("warning", "first-time minor violation"),
    "remediation": ("remediation", "must remedy"),
    "throttle": ("throttled", "rate limits"),
    "suspension": ("suspended", "suspended"),
    "termination": ("terminated", "permanently terminated"),
    "reinstatement": ("reinstated", "reinstated"),
    "appeal_outcome": ("appeal", "appeal has been decided"),
    "dismissal": ("dismissed", "was dismissed"),
}


@pytest.mark.parametrize("kind", ev.NOTICE_KINDS)
def test_each_kind_renders_its_own_subject_and_opening(kind: str) -> None:
    deadline = "2026-12-01T10:00:00.000000Z" if kind in ("warning", "remediation") else None
    notice = synthetic(kind, deadline)
    rendered = render(notice)
    assert rendered.subject == f"[TaaS] {SUBJECTS[kind]} ({ACCOUNT})"
    subject_says, opening_says = SAYS[kind]
    assert subject_says in SUBJECTS[kind].lower()
    assert opening_says in INTROS[kind]
    assert f"\n\n{INTROS[kind]}\n\n" in rendered.text  # a paragraph of its own
    assert "AUP §2 (spam)" in rendered.text
    assert "- Fact vio_9: medium spam violation" in rendered.text
    assert_names_everything(notice, rendered)


@pytest.mark.parametrize("kind", sorted(REAL))
def test_notices_of_real_decisions_name_the_account_decision_section_reasons_and_appeal(
    kind: str,
) -> None:
    notice = REAL[kind]()
    assert notice.data["kind"] == kind
    rendered = render(notice)
    assert_names_everything(notice, rendered)
    assert INTROS[kind] in rendered.text
    if notice.data["violation_ids"]:
        assert "AUP §" in rendered.text
        for violation_id in notice.data["violation_ids"]:
            assert f"- Fact {violation_id}: " in rendered.text


def test_the_warning_names_its_remediation_deadline_and_the_section() -> None:
    notice = warning()
    text = render(notice).text
    assert "Ground: AUP §2 (spam)" in text
    assert notice.data["deadline"] == "2026-12-01T10:00:00.000000Z"  # the 7-day window
    assert "Deadline: 2026-12-01T10:00:00.000000Z" in text
    assert "Detected automatically: yes" in text
    assert "Decided automatically: yes" in text
    assert "until 2026-12-14T10:00:00.000000Z" in text  # the 20-day appeal window


def test_the_throttle_names_the_prior_strike_that_chose_it_as_such() -> None:
    notice = throttle()
    [new] = notice.data["violation_ids"]
    [prior] = [f for f in notice.data["statement_of_reasons"]["facts"] if f.get("prior_strike")]
    text = render(notice).text
    assert f"- Fact {new}: impersonation seen by svc\n" in text
    assert f"- Fact {prior['violation_id']} (a prior strike): spam seen by svc\n" in text


def test_the_throttle_of_a_second_minor_strike_asks_for_its_remediation() -> None:
    """POLICY.md: a minor violation on 1 prior strike gets "ThrottleApplied …; notice;
    RemediationRequested", and a remediation "not completed by its due time" suspends the
    account. The throttle's notice is the only one: it says that the violation must be remedied
    by its deadline and what follows if not (it used to give a bare "Deadline:" line)."""
    notice = throttle()
    [violation] = notice.data["violation_ids"]
    assert notice.data["deadline"] == "2026-12-02T10:00:00.000000Z"  # the remediation's due time
    text = render(notice).text
    assert (
        f"{INTROS['throttle']} You must also remedy violation {violation} and confirm it before "
        "the deadline below; otherwise your account is suspended.\n"
    ) in text
    assert "Deadline: 2026-12-02T10:00:00.000000Z" in text
    # A throttle without a remediation (sustained abuse, an operator's) asks for none.
    alone = notice_in(Account().violation("sustained_abuse", T0))
    assert alone.data["deadline"] is None
    assert "remedy" not in render(alone).text


def test_a_termination_for_csam_cites_both_sections() -> None:
    text = render(termination()).text
    assert "Ground: AUP §2, §6 (csam)" in text
    assert "Deadline:" not in text


def test_the_webhook_body_is_json_and_carries_the_same_notice() -> None:
    notice = warning()
    rendered = render(notice)
    body = json.loads(json.dumps(rendered.body))
    assert body == rendered.body
    assert body == {
        "notice_id": notice.data["notice_id"],
        "notice_event_id": notice.event_id,
        "account_id": ACCOUNT,
        "kind": "warning",
        "decision_event_id": notice.data["decision_event_id"],
        "violation_ids": notice.data["violation_ids"],
        "deadline": notice.data["deadline"],
        "subject": rendered.subject,
        "text": rendered.text,
        "statement_of_reasons": notice.data["statement_of_reasons"],
        "issued_at": "2026-11-24T10:00:00.000000Z",
        "resend_of": None,
    }


def test_a_notice_sent_again_says_what_it_copies_but_not_why() -> None:
    """A copy (``ops.ResendNotice``) has the first notice's text under its own id, opens by
    naming the notice it copies and when that was issued, and says so in its subject; the
    operator's reason stays in the log, out of the text and the webhook's body."""
    account = Account()
    first = notice_in(account.violation("spam", T0))
    at = T0 + timedelta(days=2)
    copy_ = notice_in(account.operator(ops.ResendNotice(first, "mailbox was full"), at))
    again = notice_in(account.operator(ops.ResendNotice(copy_, "still nothing"), at))
    original, rendered, rendered_again = render(first), render(copy_), render(again)
    assert rendered.subject == original.subject + " (sent again)"
    opening = (
        f"This notice is a copy of notice {first.data['notice_id']}, issued "
        "2026-11-24T10:00:00.000000Z, sent again. It says what held when that notice was "
        "issued: the account's standing may have changed since.\n\n"
    )
    assert rendered.text == opening + original.text.replace(
        f"Notice id: {first.data['notice_id']} (issued 2026-11-24T10:00:00.000000Z)",
        f"Notice id: {copy_.data['notice_id']} (issued 2026-11-26T10:00:00.000000Z)",
    )
    # A copy of the copy names the first notice too.
    assert rendered_again.text == rendered.text.replace(
        copy_.data["notice_id"], again.data["notice_id"]
    )
    told = {"notice_id": first.data["notice_id"], "notice_event_id": first.event_id}
    assert rendered.body["resend_of"] == {**told, "issued_at": "2026-11-24T10:00:00.000000Z"}
    assert rendered_again.body["resend_of"] == rendered.body["resend_of"]
    assert rendered.body["notice_id"] == copy_.data["notice_id"] != first.data["notice_id"]
    assert rendered.body["text"] == rendered.text
    for text in (rendered.text, json.dumps(rendered.body)):
        assert "mailbox" not in text
    assert {k: rendered.body[k] for k in ("decision_event_id", "deadline", "violation_ids")} == {
        k: original.body[k] for k in ("decision_event_id", "deadline", "violation_ids")
    }


def test_rendering_is_pure() -> None:
    notice = appeal_outcome()
    assert render(notice) == render(notice)
    with pytest.raises(dataclasses.FrozenInstanceError):
        render(notice).text = "another text"  # type: ignore[misc]


def test_a_kind_without_a_template_gets_a_plain_subject_and_no_opening() -> None:
    notice = synthetic("remediation")
    data = {**notice.data, "kind": "a_later_kind"}
    rendered = render(dataclasses.replace(notice, data=data))
    assert rendered.subject == f"[TaaS] Enforcement notice ({ACCOUNT})"
    ground = rendered.text.index("Ground: ")
    assert rendered.text[ground:].split("\n")[1:5] == ["", "", "", "Statement of reasons"]


def test_a_fact_is_named_by_its_remediation_or_appeal_when_it_is_no_violation() -> None:
    """A missed remediation's suspension and an appeal's outcome state as a fact the remediation
    and the appeal, each by its id."""
    account = Account()
    events = account.violation("spam", T0)
    [remediation_id] = [
        e.data["remediation_id"] for e in events if e.type == "RemediationRequested"
    ]
    at = T0 + timedelta(days=8)
    expired = account.record(
        decide_remediation_expired(DEFAULT_POLICY, account.state, remediation_id, account.ctx(at)),
        at,
    )
    assert f"- Fact {remediation_id}: Remediation {remediation_id} was due at " in (
        render(notice_in(expired)).text
    )

    outcome = appeal_outcome()
    [appeal] = [f for f in outcome.data["statement_of_reasons"]["facts"] if "appeal_id" in f]
    assert f"- Fact {appeal['appeal_id']}: the evidence holds\n" in render(outcome).text


def test_a_fact_without_a_description_and_a_statement_without_redress() -> None:
    """A fact with no description is its id alone; a statement that gives no redress still
    says how to appeal."""
    notice = warning()
    data = copy.deepcopy(notice.data)
    sor = data["statement_of_reasons"]
    [fact] = sor["facts"]
    fact["description"] = None
    del sor["redress"]
    lines = render(dataclasses.replace(notice, data=data)).text.splitlines()
    assert f"- Fact {fact['violation_id']}:" in lines
    assert lines[lines.index("How to appeal") + 1] == "Reply to this notice to ask for a review."


def test_a_throttle_asks_to_remedy_each_of_its_violations() -> None:
    notice = synthetic("throttle", "2026-12-01T10:00:00.000000Z")
    data = {**notice.data, "violation_ids": ["vio_8", "vio_9"]}
    text = render(dataclasses.replace(notice, data=data)).text
    assert "You must also remedy violation vio_8, vio_9 and confirm it" in text


def test_every_email_of_one_notice_has_the_same_message_id() -> None:
    from enforcement.notices.email import build_message

    first = warning()
    other = dataclasses.replace(first, event_id="0195b6f0-0000-7000-8000-000000000009")
    sent = [build_message(first, render(first), "a@customer.test") for _ in range(2)]
    resent = build_message(first, render(first), "b@customer.test")
    another = build_message(other, render(other), "a@customer.test")

    assert sent[0]["Message-ID"] == sent[1]["Message-ID"] == resent["Message-ID"]
    assert sent[0]["Message-ID"] == f"<{first.event_id}@taas.invalid>"
    assert another["Message-ID"] != sent[0]["Message-ID"]


@pytest.mark.parametrize(
    "text",
    [
        "Plain ASCII, one short line.\n",
        "AUP §2 — a description in naïve UTF-8, 例え\n",
        "x" * 1500 + " one line longer than SMTP's 998 octets\n" + "= and =3D stay as they are\n",
        "a line with trailing spaces   \nand a final line without a newline",
        "Description:\nFrom the gateway logs (not quoted as an mbox line)\n",
    ],
)
def test_an_email_reads_back_as_its_text_and_headers(text: str) -> None:
    """What a mail reader gets from the raw message (as written to a ``.eml`` or sent over
    SMTP) is the rendered text and the headers as given, whatever the text holds; and no raw
    line is longer than SMTP allows."""
    import email
    import email.policy

    from enforcement.notices.email import SENDER_ADDRESS, build_message

    notice = warning()
    rendered = dataclasses.replace(render(notice), text=text)
    raw = bytes(build_message(notice, rendered, "abuse-desk@customer.test"))
    own = bytes(build_message(notice, rendered, "abuse-desk@customer.test", "appeals@taas.test"))

    assert max(len(line) for line in raw.split(b"\n")) <= 78
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed.get_content_type() == "text/plain"
    assert parsed.get_content() == text
    assert parsed["From"] == f"TaaS Trust & Safety <{SENDER_ADDRESS}>"
    assert f"\nFrom: TaaS Trust & Safety <{SENDER_ADDRESS}>\n".encode() in raw  # as written
    assert parsed["To"] == "abuse-desk@customer.test"
    assert parsed["Subject"] == rendered.subject
    assert parsed["Message-ID"] == f"<{notice.event_id}@taas.invalid>"
    assert parsed["X-Enforcement-Event-Id"] == notice.event_id
    assert parsed["Date"].datetime == notice.recorded_at
    # The address the account replies to ("How to appeal"), as the deployment sets it.
    replied = email.message_from_bytes(own, policy=email.policy.default)
    assert replied["From"] == "TaaS Trust & Safety <appeals@taas.test>"
    assert replied["Message-ID"] == f"<{notice.event_id}@taas.test>"


def test_a_description_of_several_lines_stays_under_its_fact() -> None:
    """A reporter's description is written into the notice: its later lines are indented
    under its fact, so none can pass for a line of the notice's own."""
    notice = warning()
    fake = "seen by svc\nHow to appeal\r\nWrite to appeals@attacker.example\u2028instead."
    data = copy.deepcopy(notice.data)
    data["statement_of_reasons"]["facts"][0]["description"] = fake
    text = render(dataclasses.replace(notice, data=data)).text

    lines = text.splitlines()
    assert lines.count("How to appeal") == 1  # the notice's own heading only
    assert "    How to appeal" in lines
    assert "    Write to appeals@attacker.example" in lines
    assert "    instead." in lines


@pytest.mark.parametrize(
    "command",
    [
        ops.Suspend("card testing"),
        ops.ApplyThrottle(0.25, "card testing"),
        ops.Terminate("card testing"),
    ],
    ids=["suspension", "throttle", "termination"],
)
def test_an_operators_restriction_on_no_violation_speaks_of_none(command: ops.Command) -> None:
    """An operator may suspend, throttle or terminate with a reason and no violation (CONTRACT.md's
    bodies): its notice, its statement's redress and the overturn of its appeal name no
    violation, where they used to open "because of the violation(s) below" over none, promise
    that "the violations behind it" would no longer count, and dismiss "its violations"."""
    account = Account()
    decided = account.operator(command, T0)
    notice = notice_in(decided)
    assert notice.data["violation_ids"] == []
    text = render(notice).text
    assert "- Fact: card testing" in text
    assert "violation" not in text.lower()
    assert text.count("for the reasons below.") == 1
    assert notice.data["statement_of_reasons"]["redress"].endswith(
        "if the decision is overturned it is reversed."
    )

    at = T0 + timedelta(days=1)
    filed = account.record(
        decide_appeal_filing(
            DEFAULT_POLICY, account.state, notice.data["decision_event_id"], "", account.ctx(at)
        ),
        at,
    )
    overturned = account.record(
        decide_appeal(
            DEFAULT_POLICY,
            account.state,
            filed[0].data["appeal_id"],
            "overturned",
            "wrong",
            account.ctx(at, "operator:ann"),
        ),
        at,
    )
    outcome = notice_in(overturned)
    [decision] = [e for e in decided if e.event_id == notice.data["decision_event_id"]]
    assert outcome.data["statement_of_reasons"]["decision"].endswith(
        f"({decision.type}) is reversed."
    )
    assert "violation" not in render(outcome).text.lower()


def test_a_restriction_on_violations_still_names_them() -> None:
    text = render(suspension()).text
    assert INTROS["suspension"] in text
    assert "because of the violation(s) below." in text
    assert "the violations behind it no longer count as strikes." in text
