"""Accounts as operators look for them, on SQLite and PostgreSQL: ``GET /v1/accounts`` (in
pages, by status and by what awaits an operator) and ``enforcement accounts``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from api_support import ApiSystem, api_system
from test_service_support import OPERATOR, REPORTER, FakeClock
from typer.testing import CliRunner

from enforcement import account_listing
from enforcement import operator_decisions as ops
from enforcement.cli import app
from enforcement.cli_output import console
from enforcement.policy import ViolationReport
from enforcement.roles import Role


@pytest.fixture
def api(database_url: str) -> Iterator[ApiSystem]:
    with api_system(database_url, FakeClock()) as running:
        yield running


def populate(api: ApiSystem) -> dict[str, str]:
    """One account of each kind an operator looks for; its id → its status now."""
    service, clock = api.system.service, api.system.clock

    def report(account: str, category: str, severity: str | None = None) -> Any:
        violation = ViolationReport(category, clock(), severity, description="seen")
        return service.report_violation(account, violation, REPORTER).events

    report("acct_overdue", "spam")  # its remediation runs out below, not yet swept
    clock.advance(timedelta(days=8))  # type: ignore[attr-defined]
    service.operator("acct_good", ops.ConfigureLimits(600, 1_000_000), OPERATOR)
    report("acct_warned", "spam")
    report("acct_week", "phishing", "high")
    report("acct_review", "phishing", "high")
    report("acct_review", "phishing", "high")  # prior strikes: suspended pending review
    [suspension] = [e for e in report("acct_appeal", "phishing", "high") if "Suspended" in e.type]
    service.file_appeal("acct_appeal", suspension.event_id, "not me", OPERATOR)
    report("acct_gone", "csam")
    service.file_abuse_report("acct_abused", "spam", "mail", None, None, REPORTER)
    return {
        "acct_abused": "good_standing",
        "acct_appeal": "suspended",
        "acct_gone": "terminated",
        "acct_good": "good_standing",
        "acct_overdue": "remediation_due",
        "acct_review": "suspended",
        "acct_warned": "remediation_due",
        "acct_week": "suspended",
    }


def test_accounts_are_listed_in_pages_by_status_and_by_what_awaits_an_operator(
    api: ApiSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    statuses = populate(api)
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}

    def get(**query: Any) -> Any:
        answer = api.client.get("/v1/accounts", params=query, headers=auditor)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def every(**query: Any) -> list[str]:
        """The account ids of every page, in pages of 3."""
        ids, after = [], ""
        while True:
            page = get(limit=3, after=after, **query)
            ids += [a["account_id"] for a in page["accounts"]]
            if page["next_after"] is None:
                return ids
            after = page["next_after"]

    whole = get()
    assert whole["next_after"] is None
    assert {a["account_id"]: a["status"] for a in whole["accounts"]} == statuses
    assert whole["accounts"][0] == get_standing(api, whole["accounts"][0]["account_id"])
    assert every() == [a["account_id"] for a in whole["accounts"]]
    assert sorted(every(status="suspended")) == ["acct_appeal", "acct_review", "acct_week"]
    assert every(has="indefinite_suspension") == ["acct_review"]
    assert every(has="open_appeals") == ["acct_appeal"]
    assert every(has="open_abuse_reports") == ["acct_abused"]
    assert every(has="overdue_remediations") == ["acct_overdue"]
    assert every(status="terminated", has="open_appeals") == []
    assert get(limit=2)["next_after"] == whole["accounts"][1]["account_id"]

    # A page looks at no more than SCAN_LIMIT accounts: fewer matches, and where to go on.
    monkeypatch.setattr(account_listing, "SCAN_LIMIT", 2)
    scanned = get(has="open_appeals")
    looked_at = [a["account_id"] for a in whole["accounts"][:2]]
    assert scanned["next_after"] == looked_at[-1]
    assert [a["account_id"] for a in scanned["accounts"]] == [
        a for a in looked_at if a == "acct_appeal"
    ]
    assert every(has="open_appeals") == ["acct_appeal"]

    for bad in ({"status": "banned"}, {"has": "x"}, {"limit": 0}, {"limit": 1001}):
        answer = api.client.get("/v1/accounts", params=bad, headers=auditor)
        assert answer.status_code == 422, bad
    for role in (Role.REPORTER, Role.GATEWAY):
        headers = {"Authorization": f"Bearer {api.tokens[role]}"}
        assert api.client.get("/v1/accounts", headers=headers).status_code == 403
    assert api.client.get("/v1/accounts").status_code == 401


def get_standing(api: ApiSystem, account: str) -> Any:
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}
    return api.client.get(f"/v1/accounts/{account}/standing", headers=auditor).json()


def test_the_cli_lists_the_accounts_an_operator_looks_for(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console, "width", 320)
    runner = CliRunner()

    def run(*args: str) -> Any:
        env = {"ENFORCEMENT_DATABASE_URL": database_url}
        return runner.invoke(app, ["accounts", *args], env=env, catch_exceptions=False)

    assert run().stdout.strip() == "No account matches."
    with api_system(database_url, FakeClock()) as api:
        statuses = populate(api)
    # The CLI's clock is the host's: days after the fake one, every suspension of a week over.
    listed = json.loads(run("--json").stdout)["accounts"]
    assert [a["account_id"] for a in listed] == sorted(statuses)
    review = run("--has", "indefinite_suspension")
    assert review.exit_code == 0, review.output
    [row] = [line for line in review.stdout.splitlines() if "acct_" in line]
    assert "acct_review" in row and "suspended" in row and "indefinitely" in row
    appeals = json.loads(run("--has", "open_appeals", "--json").stdout)["accounts"]
    assert [a["account_id"] for a in appeals] == ["acct_appeal"]
    terminated = json.loads(run("--status", "terminated", "--json").stdout)["accounts"]
    assert [a["account_id"] for a in terminated] == ["acct_gone"]
    for args, message in (
        (("--status", "banned"), "--status must be one of terminated, suspended"),
        (("--has", "x"), "--has must be one of open_appeals, open_abuse_reports"),
    ):
        bad = run(*args)
        assert bad.exit_code == 2 and bad.stderr.startswith(message), bad.stderr


def test_a_listing_while_a_replay_has_not_caught_up_gives_each_standing_as_the_log_does(
    api: ApiSystem, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``enforcement replay`` runs at any time: its pass rewrites the rows of each range of
    accounts up to the horizon it took as it began, deleting what appends wrote since, and
    its catch-up then applies the events after the horizon. Until that catch-up (or forever,
    should the replay stop before it), an account appended to meanwhile has a row behind its
    log, and one whose first event came meanwhile none: the listing must still give both as
    ``GET …/standing`` does."""
    import projections.catchup as catchup
    from projections.runner import rebuild_standings

    service, clock = api.system.service, api.system.clock
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}

    def report(account: str) -> None:
        violation = ViolationReport("phishing", clock(), "high", description="seen")
        service.report_violation(account, violation, REPORTER)

    report("acct_a")
    report("acct_c")
    with api.system.engine.connect() as conn:
        horizon = catchup._max_position(conn)
    report("acct_c")  # after the horizon: suspended pending review now
    report("acct_b")  # a new account, its id between the others
    # The replay took its horizon before the last two reports, and stops after its pass.
    monkeypatch.setattr(catchup, "_max_position", lambda conn: horizon)
    monkeypatch.setattr(catchup, "_page", lambda conn, after, limit: [])
    rebuild_standings(api.system.store, api.system.standings)

    answer = api.client.get("/v1/accounts", headers=auditor)
    listed = {a["account_id"]: a for a in answer.json()["accounts"]}
    for account in ("acct_a", "acct_b", "acct_c"):
        standing = get_standing(api, account)
        assert listed.get(account, {}).get("version") == standing["version"], account
        assert listed[account] == {**standing, "as_of": listed[account]["as_of"]}


def test_an_after_that_no_account_id_could_be_is_refused(api: ApiSystem) -> None:
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}
    answer = api.client.get("/v1/accounts", params={"after": "a\x00b"}, headers=auditor)
    assert answer.status_code == 422, answer.text


def test_a_terminated_account_awaits_no_review_of_its_suspension(api: ApiSystem) -> None:
    service, clock = api.system.service, api.system.clock
    auditor = {"Authorization": f"Bearer {api.tokens[Role.AUDITOR]}"}
    for _ in range(2):  # prior strikes: suspended pending review
        violation = ViolationReport("phishing", clock(), "high", description="seen")
        service.report_violation("acct_review", violation, REPORTER)
    service.operator("acct_review", ops.Terminate("reviewed: gone"), OPERATOR)
    answer = api.client.get(
        "/v1/accounts", params={"has": "indefinite_suspension"}, headers=auditor
    )
    assert answer.json()["accounts"] == []
