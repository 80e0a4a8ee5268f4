"""Exports round-trip (``enforcement export``), on SQLite and PostgreSQL.

``jsonl``: every line parses back to the API's event shape, and an auditor holding nothing but
``hashlib`` and ``json`` recomputes every hash chain from the lines. ``sor``: one statement of
reasons per decision that carries one (not a second for its notice), with the fields shaped
after the EU DSA transparency database.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aup_population import (
    populate,
    system_fixture,
    template_fixture,
)
from typer.testing import CliRunner

from enforcement.auditing import PROGRESS_STEP, RESTRICTIVE, events_in_log, export_lines
from enforcement.bootstrap import Container
from enforcement.cli import app
from enforcement.policy import ViolationReport
from enforcement.service import Actor
from events import EventStore, NewEvent
from events.timefmt import format_time, parse_time
from events.wire import event_to_json
from tests.auditor import check_chains

API_EVENT_KEYS = {
    "position", "event_id", "account_id", "version", "type", "schema_version", "data",
    "metadata", "occurred_at", "recorded_at", "prev_hash", "hash",
}  # fmt: skip
SOR_FIELDS = {
    "uuid", "account_id", "decision_event_type", "decision_type", "decision_ground",
    "aup_sections", "category", "decision_facts", "decision_explanation",
    "automated_detection", "automated_decision", "policy_version", "redress",
    "appeal_deadline", "application_date", "end_date", "created_at",
}  # fmt: skip
# The name of each decision a statement is written for, as docs/auditing.md lists them for
# auditors' tools: a renamed one is a changed export format.
DECISION_TYPES = {
    "RemediationRequested": "remediation_request",
    "ThrottleApplied": "restriction_of_service_throttle",
    "AccountSuspended": "suspension_of_account",
    "AccountTerminated": "termination_of_account",
    "RemediationExpired": "remediation_expired",
    "ViolationDismissed": "dismissal",
    "AppealDecided": "appeal_decision",
    "AuthorityReferralOpened": "referral_to_authorities",
    "AccountReinstated": "reinstatement",
}


def test_the_auditors_guide_lists_every_decision_type_as_exported() -> None:
    guide = Path(__file__).resolve().parents[2] / "docs" / "auditing.md"
    rows = re.findall(r"^\| `(\w+)` \| `(\w+)` \|$", guide.read_text(encoding="utf-8"), re.M)
    assert dict(rows) == DECISION_TYPES


template = template_fixture(
    "export", lambda system, clock: populate(system, clock, accounts=8, steps=7, seed=23)
)
system = system_fixture()


def recompute_chains(lines: list[dict[str, Any]]) -> dict[str, int]:
    """The contract's recipe, from the exported lines alone; returns events per account."""
    return {account: version for account, (version, _) in check_chains(lines).items()}


def test_jsonl_lines_are_api_events_whose_hashes_recompute(system: Container) -> None:
    lines = [json.loads(line) for line in export_lines(system.store, "jsonl")]

    assert lines == [event_to_json(e) for e in system.store.iter_all()]
    assert all(set(line) == API_EVENT_KEYS for line in lines)
    assert events_in_log(system.store) == len(lines)  # an export's progress bar's total
    assert [line["position"] for line in lines] == sorted(line["position"] for line in lines)
    versions = recompute_chains(lines)
    assert versions == {a: system.store.head(a).version for a in system.store.account_ids()}


def test_jsonl_since_until_and_account_select_by_recorded_time(system: Container) -> None:
    everything = [json.loads(line) for line in export_lines(system.store, "jsonl")]
    times = sorted({line["recorded_at"] for line in everything})
    since, until = times[len(times) // 4], times[len(times) // 2]
    account = everything[-1]["account_id"]

    window = [
        json.loads(line)
        for line in export_lines(
            system.store, "jsonl", since=parse_time(since), until=parse_time(until)
        )
    ]
    own = [json.loads(line) for line in export_lines(system.store, "jsonl", account=account)]

    assert window == [line for line in everything if since <= line["recorded_at"] <= until]
    assert 0 < len(window) < len(everything)
    assert own == [line for line in everything if line["account_id"] == account]
    recompute_chains(own)  # one account's history verifies alone


def test_an_export_tells_its_progress_per_step_of_events_read_and_takes_naive_times_as_utc(
    sqlite_store: EventStore,
) -> None:
    """``progress`` hears of every ``PROGRESS_STEP`` events read, exported or not, and of the
    last few; a naive ``since``/``until`` is UTC, as everywhere else."""
    occurred = datetime(2026, 11, 24, tzinfo=UTC)
    for account in ("acct_1", "acct_2"):
        events = [NewEvent("Noted", {"n": n}, occurred) for n in range(PROGRESS_STEP + 50)]
        sqlite_store.append(account, 0, events)
    told: list[int] = []
    long_ago, far_ahead = datetime(2000, 1, 1), datetime(2999, 1, 1)

    none = list(export_lines(sqlite_store, "jsonl", since=far_ahead, progress=told.append))
    every = list(export_lines(sqlite_store, "jsonl", since=long_ago, until=far_ahead))

    assert none == [] and len(every) == 2 * PROGRESS_STEP + 100
    assert told == [PROGRESS_STEP, PROGRESS_STEP, 100]


def test_sor_has_one_line_per_decision_with_the_dsa_shaped_fields(system: Container) -> None:
    log = list(system.store.iter_all())
    by_id = {e.event_id: e for e in log}
    decisions = [e for e in log if e.type in RESTRICTIVE and e.data.get("statement_of_reasons")]

    statements = [json.loads(line) for line in export_lines(system.store, "sor")]

    assert [s["uuid"] for s in statements] == [e.event_id for e in decisions]
    # Every decision that carries a statement, the reinstatements too; a notice's copy is not
    # repeated.
    stated = {e.type for e in log if e.data.get("statement_of_reasons")}
    assert stated - {"NoticeIssued"} <= set(RESTRICTIVE)
    assert RESTRICTIVE == DECISION_TYPES
    assert "AccountReinstated" in stated
    assert "NoticeIssued" not in {s["decision_event_type"] for s in statements}
    notices = [e for e in log if e.type == "NoticeIssued"]
    assert notices and all(n.data["decision_event_id"] in by_id for n in notices)
    assert {"AccountSuspended", "RemediationRequested"} <= {
        s["decision_event_type"] for s in statements
    }
    for statement in statements:
        event = by_id[statement["uuid"]]
        sor = event.data["statement_of_reasons"]
        assert set(statement) == SOR_FIELDS
        assert statement["account_id"] == event.account_id
        assert statement["decision_type"] == DECISION_TYPES[event.type]
        assert statement["decision_ground"] == sor["ground"] and sor["ground"].startswith("AUP")
        assert statement["decision_facts"] == sor["facts"]
        assert statement["decision_explanation"] == sor["decision"]
        assert statement["aup_sections"] == sor["aup_sections"]
        assert statement["category"] == sor["categories"]
        assert statement["automated_decision"] is (event.metadata["actor"] == "policy")
        assert isinstance(statement["automated_detection"], bool)
        assert statement["application_date"] == format_time(event.occurred_at)
        assert statement["created_at"] == format_time(event.recorded_at)
        assert statement["end_date"] == (event.data.get("until") or event.data.get("expires_at"))
        assert statement["redress"] and statement["policy_version"] == "aup-2026-11"
        assert statement["appeal_deadline"] == sor.get("appeal_deadline")
        account_violations = {
            e.data["violation_id"]
            for e in log
            if e.type == "ViolationReported" and e.account_id == event.account_id
        }
        named = {f["violation_id"] for f in statement["decision_facts"] if "violation_id" in f}
        assert named <= account_violations


def test_the_cli_writes_the_same_lines_to_a_file(system: Container, tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    env = {"ENFORCEMENT_DATABASE_URL": system.settings.database_url}

    result = CliRunner().invoke(app, ["export", "--format", "jsonl", "-o", str(out)], env=env)

    assert result.exit_code == 0, result.output
    written = out.read_text(encoding="utf-8").splitlines()
    assert written == list(export_lines(system.store, "jsonl"))
    recompute_chains([json.loads(line) for line in written])


def test_the_auditors_script_verifies_an_account_from_a_jsonl_export(
    system: Container, tmp_path: Path
) -> None:
    """``docs/verify_account.py --file`` reads the CLI's own JSON lines (every account's, here):
    the account's events are checked, the others' left aside."""
    out = tmp_path / "events.jsonl"
    lines = list(export_lines(system.store, "jsonl"))
    out.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    events = [json.loads(line) for line in lines]
    accounts = sorted({e["account_id"] for e in events})
    assert len(accounts) > 1
    mine = [e for e in events if e["account_id"] == accounts[0]]
    script = Path(__file__).resolve().parents[2] / "docs" / "verify_account.py"
    checked = subprocess.run(
        [sys.executable, "-I", str(script), "--file", str(out), accounts[0]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.strip() == (
        f"{accounts[0]}: {len(mine)} events intact, head hash {mine[-1]['hash']}."
    )


def test_the_auditors_script_reads_lines_whose_text_holds_unicode_line_separators(
    system: Container, tmp_path: Path
) -> None:
    """JSON keeps U+2028, U+2029 and U+0085 unescaped inside a string, so an export line may
    hold them: a line ends at "\\n" alone. (The script split at them too, as ``str.splitlines``
    does, and could not read such an export: "Unterminated string", exit 2.)"""
    text = "first\u2028second\u2029third\x85fourth"
    system.service.report_violation(
        "acct_lines",
        ViolationReport(category="spam", occurred_at=system.clock(), description=text),
        Actor(name="reporter:export-test", correlation_id="export-test"),
    )
    out = tmp_path / "events.jsonl"
    env = {"ENFORCEMENT_DATABASE_URL": system.settings.database_url}
    result = CliRunner().invoke(app, ["export", "--format", "jsonl", "-o", str(out)], env=env)
    assert result.exit_code == 0, result.output
    mine = [event_to_json(e) for e in system.store.read_stream("acct_lines")]
    assert mine[0]["data"]["description"] == text
    assert text in out.read_text(encoding="utf-8")  # as is, not escaped

    script = Path(__file__).resolve().parents[2] / "docs" / "verify_account.py"
    checked = subprocess.run(
        [sys.executable, "-I", str(script), "--file", str(out), "acct_lines"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert checked.returncode == 0, (checked.stdout, checked.stderr)
    assert checked.stdout.strip() == (
        f"acct_lines: {len(mine)} events intact, head hash {mine[-1]['hash']}."
    )


def test_the_auditors_script_checks_pages_saved_one_a_line(
    system: Container, tmp_path: Path
) -> None:
    """Pages saved one a line (``curl … >> pages.json``) are pages, not export lines: their
    events are checked, and a changed one is found (they were read as no event at all, "0
    events intact")."""
    account = next(json.loads(line) for line in export_lines(system.store, "jsonl"))["account_id"]
    events = [event_to_json(e) for e in system.store.read_stream(account, 0, limit=1000)]
    assert len(events) >= 2
    changed = [dict(e) for e in events]
    changed[1]["data"] = {**changed[1]["data"], "description": "rewritten"}
    script = Path(__file__).resolve().parents[2] / "docs" / "verify_account.py"
    for saved, code in ((events, 0), (changed, 1)):
        out = tmp_path / "pages.json"
        pages = [
            {"events": saved[:1], "next_after_version": 1},
            {"events": saved[1:], "next_after_version": None},
        ]
        out.write_text("".join(json.dumps(page) + "\n" for page in pages), encoding="utf-8")
        checked = subprocess.run(
            [sys.executable, "-I", str(script), "--file", str(out), account],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert checked.returncode == code, (checked.stdout, checked.stderr)
        if code == 0:
            assert f"{len(events)} events intact" in checked.stdout
        else:
            assert "broken at version 2" in checked.stdout
