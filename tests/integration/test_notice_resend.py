"""``POST /v1/accounts/{id}/notices/{notice_id}/resend`` over HTTP, on SQLite and PostgreSQL:
what it records, the channels a copy may be sent on, and what it refuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from api_support import ApiSystem, api_system
from test_service_support import REPORTER, FakeClock

from enforcement.policy import ViolationReport
from enforcement.roles import Role

ACCOUNT = "acct_resend"


@pytest.fixture
def api(database_url: str) -> Iterator[ApiSystem]:
    with api_system(database_url, FakeClock()) as running:
        yield running


def headers(api: ApiSystem, key: str | None = None) -> dict[str, str]:
    sent = {"Authorization": f"Bearer {api.tokens[Role.OPERATOR]}"}
    return sent if key is None else {**sent, "Idempotency-Key": key}


def first_notice(api: ApiSystem) -> dict[str, Any]:
    report = ViolationReport("spam", api.system.clock(), description="bulk mail")
    events = api.system.service.report_violation(ACCOUNT, report, REPORTER).events
    [notice] = [e for e in events if e.type == "NoticeIssued"]
    return {"notice_id": notice.data["notice_id"], "event_id": notice.event_id}


def test_a_copy_goes_out_on_the_channels_asked_for_if_the_contact_has_them(
    api: ApiSystem,
) -> None:
    notice = first_notice(api)
    url = f"/v1/accounts/{ACCOUNT}/notices/{notice['notice_id']}/resend"
    contact = f"/v1/accounts/{ACCOUNT}/contact"
    # No contact at all: the first channel missing is named.
    nowhere = api.client.post(url, json={"channels": ["email", "webhook"]}, headers=headers(api))
    assert nowhere.status_code == 409, nowhere.text
    assert nowhere.json()["error"]["message"] == (
        "the account's contact has no e-mail address: set it with PUT …/contact first"
    )
    assert api.client.put(
        contact, json={"email": "a@customer.test"}, headers=headers(api)
    ).is_success

    refused = api.client.post(url, json={"channels": ["webhook"]}, headers=headers(api))
    assert refused.status_code == 409, refused.text
    error = refused.json()["error"]
    assert (error["code"], error["message"]) == (
        "no_target",
        "the account's contact has no webhook_url: set it with PUT …/contact first",
    )
    no_contact = f"/v1/accounts/acct_other/notices/{notice['notice_id']}/resend"
    assert api.client.post(no_contact, json={}, headers=headers(api)).status_code == 404
    version = api.system.store.head(ACCOUNT).version

    both = {"email": "a@customer.test", "webhook_url": "https://customer.test/h"}
    assert api.client.put(contact, json=both, headers=headers(api)).is_success
    sent = api.client.post(
        url, json={"reason": "hook fixed", "channels": ["webhook"]}, headers=headers(api, "r-1")
    )
    assert sent.status_code == 200, sent.text
    [copy] = sent.json()["events"]
    assert copy["data"]["resend_of"]["channels"] == ["webhook"]
    assert copy["version"] == version + 1
    everywhere = api.client.post(url, json={}, headers=headers(api))
    [whole] = everywhere.json()["events"]
    assert whole["data"]["resend_of"]["channels"] is None
    assert whole["data"]["resend_of"]["reason"] == ""
    repeated = api.client.post(url, json={"channels": ["email", "email"]}, headers=headers(api))
    assert repeated.json()["error"]["details"] == [
        {"field": "channels", "message": "each channel at most once"}
    ]

    # A key used before answers first, even once the contact lost the channel.
    assert api.client.put(
        contact, json={"email": "a@customer.test"}, headers=headers(api)
    ).is_success
    again = api.client.post(
        url, json={"reason": "hook fixed", "channels": ["webhook"]}, headers=headers(api, "r-1")
    )
    assert again.status_code == 200, again.text
    assert again.json()["events"] == sent.json()["events"]
    lost = api.client.post(url, json={"channels": ["webhook"]}, headers=headers(api, "r-2"))
    assert lost.status_code == 409
    assert api.system.store.head(ACCOUNT).version == version + 2


@pytest.mark.parametrize(
    "channels", [[], ["sms"], ["webhook", "webhook"], "webhook", [None], {"email": True}]
)
def test_channels_are_some_of_email_and_webhook_each_once(api: ApiSystem, channels: Any) -> None:
    notice = first_notice(api)
    url = f"/v1/accounts/{ACCOUNT}/notices/{notice['notice_id']}/resend"
    version = api.system.store.head(ACCOUNT).version

    answer = api.client.post(url, json={"channels": channels}, headers=headers(api))

    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_failed"
    assert {d["field"].split(".")[0] for d in error["details"]} == {"channels"}
    assert api.system.store.head(ACCOUNT).version == version


def test_a_notice_of_an_overturned_decision_is_refused_as_such_before_its_channels(
    api: ApiSystem,
) -> None:
    """The decision's own refusal comes first: ``decision_overturned``, not ``no_target``."""
    clock = api.system.clock
    report = ViolationReport("phishing", clock(), "high", description="a kit")
    events = api.system.service.report_violation(ACCOUNT, report, REPORTER).events
    [suspension] = [e for e in events if e.type == "AccountSuspended"]
    [notice] = [e for e in events if e.type == "NoticeIssued"]
    base = f"/v1/accounts/{ACCOUNT}"
    body = {"decision_event_id": suspension.event_id, "statement": "not me"}
    appeal = api.client.post(f"{base}/appeals", json=body, headers=headers(api)).json()
    decided = api.client.post(
        f"{base}/appeals/{appeal['appeal_id']}/decide",
        json={"outcome": "overturned", "reason": "a false positive"},
        headers=headers(api),
    )
    assert decided.status_code == 200, decided.text

    url = f"{base}/notices/{notice.data['notice_id']}/resend"
    refused = api.client.post(url, json={"channels": ["webhook"]}, headers=headers(api))

    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "decision_overturned"
