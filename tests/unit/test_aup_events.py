"""The AUP event vocabulary: every CONTRACT.md type registered, JSON-ready, validated."""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from events import RecordedEvent
from projections import aup_events as ev
from projections.reasons import ground_text, human_duration, statement_of_reasons, violation_fact

CONTRACT_TYPES = {
    "ViolationReported",
    "ViolationDismissed",
    "AbuseReportReceived",
    "AbuseReportTriaged",
    "NoticeIssued",
    "NoticeDelivered",
    "NoticeDeliveryFailed",
    "RemediationRequested",
    "RemediationCompleted",
    "RemediationExpired",
    "ThrottleApplied",
    "ThrottleLifted",
    "AccountSuspended",
    "SuspensionEnded",
    "AccountReinstated",
    "AccountTerminated",
    "AuthorityReferralOpened",
    "AppealFiled",
    "AppealDecided",
    "AdultContentApprovalChanged",
    "RateLimitsConfigured",
}
T0 = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
SOR = {"ground": "AUP §2 (spam)", "policy_version": "aup-2026-11"}
DUE = "2026-12-01T10:00:00.000000Z"
FACTOR_REFUSED = "factor must be a number in (0, 1], not "

SAMPLES: list[Any] = [
    ev.ViolationReported(
        "vio_1", "spam", "medium", None, "key_1", "clf", "automated", "s3://e/1", "d", None
    ),
    ev.ViolationDismissed("vio_1", "mistake"),
    ev.AbuseReportReceived("rep_1", "phishing", "mails", "a@example.org", None),
    ev.AbuseReportTriaged("rep_1", "confirmed", "high", "vio_2"),
    ev.NoticeIssued("ntc_1", "warning", "evt", ["vio_1"], SOR, DUE),
    ev.NoticeDelivered("ntc_1", "evt", "email", 1),
    ev.NoticeDeliveryFailed("ntc_1", "evt", "webhook", 2, "timeout", False),
    ev.RemediationRequested("rem_1", ["vio_1"], DUE, SOR),
    ev.RemediationCompleted("rem_1", "filter added"),
    ev.RemediationExpired("rem_1", SOR),
    ev.ThrottleApplied("thr_1", None, 0.25, DUE, "minor_second_strike", SOR, ["vio_1"]),
    ev.ThrottleLifted("thr_1", "appeal"),
    ev.AccountSuspended("sus_1", None, "high_severity_repeat", SOR, ["vio_1"]),
    ev.SuspensionEnded("sus_1", "operator"),
    ev.AccountReinstated("operator", None),
    ev.AccountTerminated("critical_violation", SOR, ["vio_1"]),
    ev.AuthorityReferralOpened("ref_1", ["vio_1"], "csam", SOR),
    ev.AppealFiled("apl_1", "evt", "please"),
    ev.AppealDecided("apl_1", "evt", "upheld", "fine", SOR),
    ev.AdultContentApprovalChanged(True, "verified"),
    ev.RateLimitsConfigured(None, 600, 1_000_000),
]


def test_every_contract_type_is_registered_at_its_schema_version() -> None:
    """1, but for ``AccountSuspended`` at 2 since ``held_by``, ``AbuseReportReceived`` at 2
    since ``source`` and ``NoticeIssued`` at 2 since ``resend_of``."""
    assert set(ev.CODEC.types) == CONTRACT_TYPES
    for name in CONTRACT_TYPES:
        expected = 2 if name in ("AccountSuspended", "AbuseReportReceived", "NoticeIssued") else 1
        assert ev.CODEC.registration(name).schema_version == expected
    assert {type(s).__name__ for s in SAMPLES} == CONTRACT_TYPES


def test_a_suspension_stored_before_held_by_reads_as_not_held() -> None:
    old = {
        "suspension_id": "sus_1",
        "until": None,
        "reason": "operator",
        "statement_of_reasons": SOR,
        "violation_ids": ["vio_1"],
    }
    payload = ev.CODEC.payload("AccountSuspended", 1, old)
    assert payload == ev.AccountSuspended("sus_1", None, "operator", SOR, ["vio_1"], None)
    assert "held_by" not in old  # the stored record is left as it is
    # A few development builds recorded held_by at version 1: it is kept.
    early = ev.CODEC.payload("AccountSuspended", 1, {**old, "held_by": "sus_0"})
    assert early.held_by == "sus_0"
    held = ev.AccountSuspended("sus_2", None, "operator", SOR, [], "sus_1")
    new = ev.CODEC.encode(held, occurred_at=datetime(2026, 11, 24, tzinfo=UTC))
    assert (new.schema_version, new.data["held_by"]) == (2, "sus_1")


def test_an_abuse_report_stored_before_source_reads_as_received_through_the_api() -> None:
    old = {
        "report_id": "rep_1",
        "category": "spam",
        "description": "mails",
        "reporter_contact": None,
        "evidence_ref": None,
    }
    payload = ev.CODEC.payload("AbuseReportReceived", 1, old)
    assert payload == ev.AbuseReportReceived("rep_1", "spam", "mails", None, None, None)
    assert "source" not in old  # the stored record is left as it is
    filed = ev.AbuseReportReceived("rep_2", "spam", "keys", None, None, ev.GATE_SOURCE)
    new = ev.CODEC.encode(filed, occurred_at=datetime(2026, 11, 24, tzinfo=UTC))
    assert (new.schema_version, new.data["source"]) == (2, "gate")


def test_a_notice_stored_before_resend_of_reads_as_a_first_notice() -> None:
    old = {
        "notice_id": "ntc_1",
        "kind": "warning",
        "decision_event_id": "evt",
        "violation_ids": ["vio_1"],
        "statement_of_reasons": SOR,
        "deadline": DUE,
    }
    payload = ev.CODEC.payload("NoticeIssued", 1, old)
    assert payload == ev.NoticeIssued("ntc_1", "warning", "evt", ["vio_1"], SOR, DUE, None)
    assert "resend_of" not in old  # the stored record is left as it is
    assert ev.CODEC.upcast("NoticeIssued", 1, old) == {**old, "resend_of": None}
    first = {"notice_id": "ntc_1", "notice_event_id": "e1", "issued_at": DUE, "reason": "bounced"}
    first["channels"] = ["webhook"]
    again = ev.NoticeIssued("ntc_2", "warning", "evt", ["vio_1"], SOR, DUE, first)
    new = ev.CODEC.encode(again, occurred_at=datetime(2026, 11, 24, tzinfo=UTC))
    assert (new.schema_version, new.data["resend_of"]) == (2, first)


def test_a_resent_notice_names_exactly_what_it_copies() -> None:
    first = {"notice_id": "ntc_1", "notice_event_id": "e1", "issued_at": DUE}
    with pytest.raises(ValueError, match="resend_of must have the keys"):
        ev.NoticeIssued("ntc_2", "warning", "evt", [], SOR, None, first)
    with pytest.raises(ValueError, match="resend_of must have the keys"):
        ev.NoticeIssued("ntc_2", "warning", "evt", [], SOR, None, {**first, "reason": "", "x": 1})
    whole = {**first, "reason": ""}
    for channels in ([], ["webhook", "webhook"], ["sms"], ["email", "fax"]):
        with pytest.raises(ValueError, match=r"resend_of\.channels must be null or some of"):
            ev.NoticeIssued(
                "ntc_2", "warning", "evt", [], SOR, None, {**whole, "channels": channels}
            )
    for channels in (None, ["email"], ["webhook", "email"]):
        resent = ev.NoticeIssued(
            "ntc_2", "warning", "evt", [], SOR, None, {**whole, "channels": channels}
        )
        assert resent.resend_of is not None and resent.resend_of["channels"] == channels


def test_a_violation_recorded_without_strike_is_a_strike() -> None:
    """Only a violation that never counts (sustained abuse) says ``strike`` false."""
    data = dataclasses.asdict(SAMPLES[0])
    del data["strike"]
    assert ev.CODEC.payload("ViolationReported", 1, data).strike is True


def test_build_codec_gives_an_independent_equal_registry() -> None:
    assert ev.build_codec() is not ev.CODEC
    assert set(ev.build_codec().types) == set(ev.CODEC.types)


@pytest.mark.parametrize("payload", SAMPLES, ids=lambda p: type(p).__name__)
def test_payloads_are_frozen_and_survive_json(payload: Any) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(payload, dataclasses.fields(payload)[0].name, "x")
    new = ev.CODEC.encode(payload, occurred_at=T0)
    data = json.loads(json.dumps(new.data))
    assert data == new.data
    record = RecordedEvent(1, new.event_id, "a", 1, new.type, 1, data, {}, T0, T0, "", "")
    assert ev.CODEC.decode(record).payload == payload


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: ev.ViolationReported(
                "v", "spam", "huge", None, None, None, "automated", None, None, None
            ),
            "severity must be one of low, medium, high, critical, not 'huge'",
        ),
        (
            lambda: ev.ViolationReported(
                "v", "spam", "low", "x", None, None, "automated", None, None, None
            ),
            "reported_severity must be one of low, medium, high, critical, not 'x'",
        ),
        (
            lambda: ev.ViolationReported(
                "v", "spam", "low", None, None, None, "psychic", None, None, None
            ),
            "detection must be one of automated, human_review, user_report, not 'psychic'",
        ),
        (lambda: ev.NoticeIssued("n", "scolding", "e", [], {}, None), "kind must be one of "),
        (lambda: ev.AbuseReportTriaged("r", "maybe", None, None), "outcome must be one of "),
        (lambda: ev.AbuseReportTriaged("r", "confirmed", "huge", None), "severity must be one of "),
        (lambda: ev.AppealDecided("a", "e", "partly", "r", {}), "outcome must be one of "),
        (lambda: ev.AccountReinstated("operator", None, "everything"), "ends must be one of "),
        (lambda: ev.ThrottleApplied("t", None, 0, None, "r", {}), FACTOR_REFUSED),
        (lambda: ev.ThrottleApplied("t", None, 1.5, None, "r", {}), FACTOR_REFUSED),
        (lambda: ev.ThrottleApplied("t", None, True, None, "r", {}), FACTOR_REFUSED),
        (lambda: ev.ThrottleApplied("t", None, "0.5", None, "r", {}), FACTOR_REFUSED),
    ],
)
def test_payloads_refuse_values_outside_their_vocabulary(build: Any, message: str) -> None:
    """Refused with a message that names the field, what it allows and what it was given."""
    with pytest.raises(ValueError) as refused:
        build()
    assert str(refused.value).startswith(message)


SEVERITIES = ["low", "medium", "high", "critical"]
NOTICE_KINDS = ["warning", "remediation", "throttle", "suspension", "termination", "reinstatement"]
NOTICE_KINDS += ["appeal_outcome", "dismissal"]


@pytest.mark.parametrize(
    ("build", "vocabulary"),
    [
        (
            lambda v: ev.ViolationReported("v", "spam", v, v, None, None, "automated", *[None] * 3),
            SEVERITIES,
        ),
        (
            lambda v: ev.ViolationReported("v", "spam", "low", None, None, None, v, *[None] * 3),
            ["automated", "human_review", "user_report"],
        ),
        (lambda v: ev.AbuseReportTriaged("r", "confirmed", v, None), SEVERITIES),
        (lambda v: ev.AbuseReportTriaged("r", v, None, None), ["confirmed", "rejected"]),
        (lambda v: ev.NoticeIssued("n", v, "e", [], {}, None), NOTICE_KINDS),
        (lambda v: ev.AppealDecided("a", "e", v, "r", {}), ["upheld", "overturned"]),
        (lambda v: ev.AccountReinstated("r", None, v), ["all", "termination", "suspension"]),
    ],
)
def test_payloads_accept_every_value_of_their_vocabulary(build: Any, vocabulary: list[str]) -> None:
    """The vocabularies as CONTRACT.md gives them (spelled out: not read from the module)."""
    for value in vocabulary:
        build(value)


@given(st.floats(-2, 2) | st.integers(-2, 2))
@example(math.nextafter(0, 1))
@example(math.nextafter(1, 2))
def test_a_throttle_factor_is_a_number_in_zero_excluded_to_one(factor: float) -> None:
    def build() -> ev.ThrottleApplied:
        return ev.ThrottleApplied("t", None, factor, None, "r", {})

    if 0 < factor <= 1:
        assert build().factor == factor
    else:
        with pytest.raises(ValueError) as refused:
            build()
        assert str(refused.value) == f"{FACTOR_REFUSED}{factor!r}"


def test_statement_of_reasons_has_every_policy_field() -> None:
    fact = violation_fact("vio_1", "csam", "critical", "2026-11-24T09:00:00.000000Z", None)
    sor = statement_of_reasons(
        sections=[2, 6],
        categories=["csam"],
        decision="The account is terminated permanently.",
        facts=[fact],
        automated_detection=True,
        automated_decision=True,
        policy_version="aup-2026-11",
        decided_at=T0,
        appeal_window=timedelta(days=20),
    )
    assert {"ground", "facts", "automated_detection", "automated_decision"} <= set(sor)
    assert {"policy_version", "redress"} <= set(sor)
    assert sor["ground"] == "AUP §2, §6 (csam)"
    assert sor["aup_sections"] == ["§2", "§6"]
    assert sor["facts"] == [fact]
    assert fact["description"] == "critical csam violation"
    assert sor["appeal_deadline"] == "2026-12-14T10:00:00.000000Z"
    assert "20 days" in sor["redress"] and "2026-12-14T10:00:00.000000Z" in sor["redress"]
    assert json.loads(json.dumps(sor)) == sor


def test_a_final_statement_has_no_appeal_deadline() -> None:
    sor = statement_of_reasons(
        sections=[],
        categories=[],
        decision="The appeal is rejected.",
        facts=[],
        automated_detection=False,
        automated_decision=False,
        policy_version="p",
        decided_at=T0,
        appeal_window=None,
    )
    assert sor["appeal_deadline"] is None
    assert sor["ground"] == "AUP"
    assert "final" in sor["redress"]


@pytest.mark.parametrize(
    ("span", "text"),
    [
        (timedelta(days=20), "20 days"),
        (timedelta(days=1), "1 day"),
        (timedelta(hours=24), "1 day"),
        (timedelta(hours=36), "36 hours"),
        (timedelta(minutes=10), "10 minutes"),
        (timedelta(seconds=90), "90 seconds"),
    ],
)
def test_human_duration(span: timedelta, text: str) -> None:
    assert human_duration(span) == text


def test_ground_lists_sections_and_categories_once() -> None:
    assert ground_text([2, 2, 3], ["spam", "spam", "phishing"]) == "AUP §2, §3 (spam, phishing)"
