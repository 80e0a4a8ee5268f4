"""Reading over HTTP: standing (now and as of a time), paged events, the global feed, verify, and
an auditor's independent check of the hash chain with nothing but ``hashlib`` and ``json``."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from tests.auditor import check_chains
from tests.e2e.harness import Server, assert_error, feed, settled_events


def account(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def populate(server: Server, acct: str) -> None:
    """A few events of several kinds, with non-ASCII text and floats in them."""
    reporter, op = server.client("reporter"), server.client("operator")
    for category, text in (("spam", "Ünïcode ✓ 日本語 — “quotes”"), ("impersonation", "e\u0301")):
        response = reporter.post(
            "/v1/violations",
            json={
                "account_id": acct,
                "category": category,
                "description": text,
                "evidence_ref": "s3://evidence/ü",
            },
        )
        assert response.status_code == 201, response.text
    response = op.post(f"/v1/accounts/{acct}/throttles", json={"factor": 0.125, "reason": "½"})
    assert response.status_code == 200, response.text


def independent_chain_check(events: list[dict[str, Any]]) -> str:
    """CONTRACT.md's recipe, from the public JSON only; returns the head hash."""
    [(_, head)] = check_chains(events).values()
    return head


def test_every_hash_recomputes_from_the_public_events(server: Server) -> None:
    auditor, acct = server.client("auditor"), account("chain")
    populate(server, acct)

    events = settled_events(auditor, acct)
    head = independent_chain_check(events)
    verified = auditor.get(f"/v1/accounts/{acct}/verify")

    assert len(events) >= 8
    assert any("日本語" in json.dumps(e["data"], ensure_ascii=False) for e in events)
    assert verified.status_code == 200
    assert verified.json() == {"ok": True, "events": len(events), "head_hash": head}


def test_the_independent_check_notices_a_changed_byte(server: Server) -> None:
    auditor, acct = server.client("auditor"), account("tamper")
    populate(server, acct)
    events = auditor.get(f"/v1/accounts/{acct}/events").json()["events"]

    events[1]["data"]["description"] = "Ünïcode ✓ 日本語 — “quotes” "
    try:
        independent_chain_check(events)
    except AssertionError as exc:
        assert "version 2" in str(exc)
    else:
        raise AssertionError("a changed event still verified")


def test_standing_now_and_as_of_a_past_time(server: Server) -> None:
    gateway, acct = server.client("gateway"), account("asof")
    empty = gateway.get(f"/v1/accounts/{acct}/standing")
    reporter = server.client("reporter")
    first = reporter.post("/v1/violations", json={"account_id": acct, "category": "spam"}).json()
    between = first["events"][-1]["recorded_at"]
    time.sleep(0.01)
    reporter.post("/v1/violations", json={"account_id": acct, "category": "spam"})

    now = gateway.get(f"/v1/accounts/{acct}/standing")
    then = gateway.get(f"/v1/accounts/{acct}/standing", params={"as_of": between})
    before = gateway.get(f"/v1/accounts/{acct}/standing", params={"as_of": "2000-01-01T00:00:00Z"})
    bad = gateway.get(f"/v1/accounts/{acct}/standing", params={"as_of": "yesterday"})

    assert empty.status_code == 200
    body = empty.json()
    assert (body["account_id"], body["status"], body["version"]) == (acct, "good_standing", 0)
    assert set(body) == {
        "account_id",
        "status",
        "strikes",
        "open_violations",
        "open_remediations",
        "active_throttles",
        "suspension",
        "terminated",
        "adult_content_approved",
        "open_abuse_reports",
        "open_appeals",
        "version",
        "as_of",
    }
    assert body["as_of"].endswith("Z")
    assert (now.json()["strikes"], now.json()["status"]) == (2, "throttled")
    assert then.json()["version"] == first["standing"]["version"]
    assert (then.json()["strikes"], then.json()["status"]) == (1, "remediation_due")
    assert then.json()["as_of"] == between
    assert (before.json()["version"], before.json()["status"]) == (0, "good_standing")
    assert [d["field"] for d in assert_error(bad, 422)["details"]] == ["as_of"]


def test_account_events_page_by_version(server: Server) -> None:
    auditor, acct = server.client("auditor"), account("page")
    populate(server, acct)
    everything = settled_events(auditor, acct)

    pages, after = [], 0
    while after is not None:
        body = auditor.get(
            f"/v1/accounts/{acct}/events", params={"after_version": after, "limit": 3}
        ).json()
        assert len(body["events"]) <= 3
        pages.append(body)
        after = body["next_after_version"]

    paged = [e for page in pages for e in page["events"]]
    assert paged == everything
    assert [e["version"] for e in paged] == list(range(1, len(paged) + 1))
    assert pages[0]["next_after_version"] == 3
    assert auditor.get(f"/v1/accounts/{acct}/events", params={"after_version": 10_000}).json() == {
        "events": [],
        "next_after_version": None,
    }


def test_the_global_feed_pages_by_position_in_order(server: Server) -> None:
    auditor = server.client("auditor")
    populate(server, account("feed"))

    pages, after = [], 0
    while after is not None:
        body = auditor.get("/v1/events", params={"after_position": after, "limit": 7}).json()
        pages.append(body)
        after = body["next_after_position"]
    paged = [e for page in pages for e in page["events"]]
    whole = feed(auditor)

    positions = [e["position"] for e in paged]
    assert positions == sorted(set(positions))
    assert len(pages) >= 2
    assert all(len(p["events"]) == 7 for p in pages[:-1])
    assert pages[0]["next_after_position"] == pages[0]["events"][-1]["position"]
    assert paged == whole[: len(paged)]
    assert_error(auditor.get("/v1/events", params={"limit": 0}), 422)


def test_verify_of_an_account_without_events(server: Server) -> None:
    response = server.client("auditor").get(f"/v1/accounts/{account('none')}/verify")

    assert response.status_code == 200
    assert response.json() == {"ok": True, "events": 0, "head_hash": "0" * 64}


# The auditor's script that docs/auditing.md hands out: standard library only, run as is.
VERIFY_SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "verify_account.py"


def run_verify_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-I", str(VERIFY_SCRIPT), *args],  # -I: nothing of the project's
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_auditors_script_verifies_an_account_over_http_and_names_a_changed_byte(
    server: Server, tmp_path: Path
) -> None:
    auditor, acct = server.client("auditor"), account("script")
    populate(server, acct)
    events = settled_events(auditor, acct)
    head = auditor.get(f"/v1/accounts/{acct}/verify").json()["head_hash"]

    online = run_verify_script("--url", server.base_url, "--token", server.tokens["auditor"], acct)
    assert online.returncode == 0, online.stderr
    assert online.stdout.strip() == f"{acct}: {len(events)} events intact, head hash {head}."

    saved = tmp_path / "events.json"
    saved.write_text(json.dumps({"events": events}, ensure_ascii=False), encoding="utf-8")
    assert run_verify_script("--file", str(saved), acct).returncode == 0
    events[2]["data"] = {**events[2]["data"], "reason": "edited"}
    saved.write_text(json.dumps([{"events": events}], ensure_ascii=False), encoding="utf-8")
    offline = run_verify_script("--file", str(saved), acct)
    assert offline.returncode == 1
    assert offline.stdout.strip() == (
        f"{acct}: broken at version 3: the hash does not recompute from the event's content."
    )
    first_page = auditor.get(f"/v1/accounts/{acct}/events", params={"limit": 2}).json()
    saved.write_text(json.dumps(first_page, ensure_ascii=False), encoding="utf-8")
    partial = run_verify_script("--file", str(saved), acct)
    assert partial.returncode == 0
    assert partial.stdout.strip() == (
        f"{acct}: 2 events intact up to version 2, whose hash is {events[1]['hash']}; the last "
        "saved page says more may follow (next_after_version 2): save every page to check the "
        "account's head."
    )
    refused = run_verify_script("--url", server.base_url, "--token", "enf_wrong", acct)
    assert refused.returncode == 2 and "401" in refused.stderr


def test_an_account_suspended_pending_review_is_found_among_the_accounts(server: Server) -> None:
    """``GET /v1/accounts?has=indefinite_suspension``: the operator's review queue, paged."""
    acct, reporter = account("review"), server.client("reporter")
    for _ in range(2):  # high with a prior strike: suspended indefinitely, pending review
        body = {"account_id": acct, "category": "phishing", "severity": "high"}
        assert reporter.post("/v1/violations", json=body).status_code == 201
    op = server.client("operator")
    settled_events(op, acct)  # the notices' outcomes recorded: the account's last events
    found: list[dict[str, Any]] = []
    after = ""
    while True:
        page = op.get("/v1/accounts", params={"has": "indefinite_suspension", "after": after})
        assert page.status_code == 200, page.text
        found += page.json()["accounts"]
        if page.json()["next_after"] is None:
            break
        after = page.json()["next_after"]
    [mine] = [a for a in found if a["account_id"] == acct]
    assert mine == op.get(f"/v1/accounts/{acct}/standing").json() | {"as_of": mine["as_of"]}
    assert (mine["status"], mine["suspension"]["until"]) == ("suspended", None)
    assert all(a["suspension"]["until"] is None for a in found)
    assert_error(reporter.get("/v1/accounts"), 403)
