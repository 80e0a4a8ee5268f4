"""Cross-view consistency: every read path tells one account's story alike, on random histories.

Histories come from the policy oracle's steps (``tests/unit/test_policy_oracle.py``: violations
of any category and severity, occurred up to 100 days back or 5 minutes ahead, time passing,
operators' dismissals, completions, approvals, suspensions, reinstatements, terminations,
throttles, lifts and limits, appeals (decided at once, or left pending), abuse reports and
their triage, bursts of gate denials), each sent to one of three accounts through the real use
cases on SQLite, in process, under a fake clock; reports now and then in one ``report_batch``
of several accounts. Time passing runs the deadline sweep (``sweep_once``) at each deadline it
passes, or not at all (the scheduler down: a later sweep catches up). Reporters' sources and
detections vary, notices are delivered now and then, and gate denials go through the real
embedded gate and its ``AbuseDetector``.

Then ``GET /v1/events``, paged, is the whole ``jsonl`` export, and for each account:
- the events feed (``GET /v1/accounts/{id}/events``, paged) equals ``export --format jsonl
  --account`` and that account's lines of the whole export, in order, hash for hash; the chain
  recomputes from them (CONTRACT.md's recipe) and ``GET …/verify`` names the same head;
- ``history --format json`` is the feed with a ``change`` each, and its CSV the same rows;
- the history's changes, applied in order from the empty standing, give at each event's
  recorded instant the standing ``as_of`` that instant (the API's) and, at the end, the standing
  now (the API's and the stored one). Between two instants only time acts, as CONTRACT.md says
  time-bound states end: a suspension whose ``until`` has passed, a throttle past its
  ``expires_at`` and a violation ``strike_lookback`` after it occurred drop out, the strikes and
  the status follow (the status by CONTRACT.md's order); the standing ``as_of`` each such end,
  and the microsecond before it, is that aged one. An event changes what it changes; what
  time changed before it is not in its ``change`` (``projections/history.py``: "seen at the
  moment it was recorded"), so the property ages the standing between instants itself;
- ``history --as-of`` an event's instant is the history up to the last event recorded then;
- ``export --format sor`` has one statement per decision that carries one (POLICY.md's
  restrictive decisions, and, as docs/auditing.md documents, the dismissals, reinstatements,
  expiries, referrals and appeal outcomes; a notice's copy is not repeated, and every notice's
  decision has its line), with POLICY.md's fields; each decision's violations are named in its
  facts with their reported category and description, their categories and AUP sections in
  its ground; ``--since``/``--until`` select by ``created_at``; ``automated_decision`` is the
  policy's (``actor`` ``policy``) and ``automated_detection`` whether a violation it was
  taken on came from an automated detector;
- the gate answers as the standing now: terminated and suspended accounts denied for that
  reason, else the token limit is the configured one (the deployment's default where none is)
  scaled by the most restrictive throttle in force, a key's also by the account-wide ones, and
  the smaller of the key's and the account ceiling's (CONTRACT.md);
- ``replay`` rebuilds stored standings equal to those the write path stored, each the fold of
  its log.
And over all accounts, ``report`` over the whole period and over a window of it counts what the
events recorded then hold: violations by category, source and detection, decisions by kind
(split by who took them), appeals filed, decided by outcome and pending, times to decision
(from a violation's occurrence to the first decision naming it) and accounts.

Disagreements found: none in the product. One reading was settled by a documented decision:
an event's ``change`` leaves out what time alone changed before it (above; docs/auditing.md).

A few seconds in the suite (25 examples); CROSS_VIEW_EXAMPLES=3000 searches for some 20
minutes.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from itertools import groupby
from pathlib import Path
from typing import Any

import pytest
from aup_population import Population, Template, copied_system, deliver_notices
from fastapi.testclient import TestClient
from hypothesis import event as note
from hypothesis import given, settings
from hypothesis import note as say
from hypothesis import strategies as st
from test_export import SOR_FIELDS
from test_service_support import (
    OPERATOR,
    REPORTER,
    T0,
    FakeClock,
    all_stored_rows,
    assert_account_consistent,
)

from enforcement import operator_decisions as ops
from enforcement.api.app import create_app
from enforcement.auditing import RESTRICTIVE, export_lines
from enforcement.bootstrap import Container
from enforcement.errors import DomainError
from enforcement.gate import core
from enforcement.gatekeeping import GATE_ACTOR
from enforcement.policy import DEFAULT_POLICY, ViolationReport
from enforcement.render import history_csv_rows, history_json
from enforcement.reports import (
    DECISION_KINDS,
    TransparencyReport,
    report_csv_rows,
    transparency_report,
)
from enforcement.roles import Role
from enforcement.service import request_fingerprint
from enforcement.tokens import create_token
from enforcement.workers.sweep import sweep_once
from events import RecordedEvent
from events.timefmt import format_time, parse_time
from projections.runner import rebuild_standings
from projections.standing import DECISION_TYPES
from tests.auditor import check_chains
from tests.unit import policy_reference as ref
from tests.unit.test_policy_oracle import APPEAL, HOURS, REPORT, SPAN_STEP, STEP, spans

EXAMPLES = int(os.environ.get("CROSS_VIEW_EXAMPLES", "25"))
STEPS = int(os.environ.get("CROSS_VIEW_STEPS", "24"))
ACCOUNTS = ("acct_a", "acct_b", "acct_c")
POLICY = DEFAULT_POLICY
LOOKBACK = POLICY.strike_lookback
SOURCES = [None, "mail-classifier", "abuse-desk"]
DETECTIONS = ["automated", "human_review", "user_report"]
# Notices delivered (what the delivery worker records): an account's step of its own.
DELIVER = st.tuples(st.just("deliver"), st.just(0), st.none(), st.just(0))
ACCOUNT_STEP = st.tuples(
    st.integers(0, len(ACCOUNTS) - 1),
    # A report one step in three, so that accounts climb the ladder, and time passing by the
    # policy's spans more often, to meet its deadlines (appeals too, as the oracle's ``CLIMB``).
    st.sampled_from([REPORT, REPORT, SPAN_STEP, APPEAL, STEP, STEP, DELIVER]).flatmap(lambda s: s),
    st.sampled_from(SOURCES),
    st.sampled_from(DETECTIONS),
    st.booleans(),  # a report sent in a batch with the next ones (``report_batch``)
)
# The CONTRACT.md status order, most severe first.
STATUS_ORDER = ("terminated", "suspended", "throttled", "remediation_due", "warned")
# Events whose every instance carries a statement of reasons (POLICY.md's restrictive
# decisions, an appeal's outcome, a referral) and so has a line of the ``sor`` export.
STATED = {
    "ThrottleApplied",
    "AccountSuspended",
    "AccountTerminated",
    "RemediationRequested",
    "AppealDecided",
    "AuthorityReferralOpened",
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """A migrated, empty SQLite database that each example copies (migrating takes longer)."""
    return Template.build("sqlite", tmp_path_factory.mktemp("cross_views"), _empty)


def _empty(system: Container, clock: FakeClock) -> Population:
    return Population([])


@contextmanager
def fresh_system(template: Template) -> Iterator[tuple[Container, FakeClock, TestClient]]:
    with (
        tempfile.TemporaryDirectory() as directory,
        copied_system(template, Path(directory)) as system,
    ):
        assert isinstance(system.clock, FakeClock)
        token = create_token(system.engine, Role.AUDITOR, "cross-views")
        with TestClient(create_app(system)) as client:
            client.headers["Authorization"] = f"Bearer {token}"
            yield system, system.clock, client


# --------------------------------------------------------------------------- making histories


@dataclass
class Story:
    system: Container
    clock: FakeClock
    made: int = 0  # violations and abuse reports filed, for unique descriptions and keys
    refused: Counter[str] = field(default_factory=Counter)
    batch: list[tuple[str, ViolationReport, None, None]] = field(default_factory=list)

    def log(self, account: str) -> list[RecordedEvent]:
        return self.system.store.read_stream(account)

    def ids(self, account: str, made: str, ended: str, key: str) -> list[str]:
        """Ids (``data[key]``) of the account's records ``made`` and not yet ``ended``."""
        log = self.log(account)
        gone = {e.data[key] for e in log if e.type == ended}
        return [e.data[key] for e in log if e.type == made and e.data[key] not in gone]

    def step(
        self,
        account: str,
        step: tuple[Any, ...],
        source: str | None,
        detection: str,
        batched: bool = False,
    ) -> None:
        name = step[0]
        if name == "report" and batched:
            self.batch.append((account, self.violation(step, source, detection), None, None))
            return
        self.send_batch()
        try:
            self._step(account, step, source, detection)
        except DomainError as exc:
            self.refused[name] += 1
            note(f"{name} refused ({type(exc).__name__})")

    def _step(
        self, account: str, step: tuple[Any, ...], source: str | None, detection: str
    ) -> None:
        name, a, b, c = step
        service, now = self.system.service, self.clock()
        if name == "report":
            service.report_violation(account, self.violation(step, source, detection), REPORTER)
        elif name == "advance":
            self.advance(timedelta(hours=a), b)
        elif name == "advance_span":
            options = spans(ref.DEFAULT)
            self.advance(options[a % len(options)], b)
        elif name == "dismiss":
            live = self.ids(account, "ViolationReported", "ViolationDismissed", "violation_id")
            if live:
                self.operate(account, ops.DismissViolation(live[a % len(live)], "mistake"))
        elif name == "complete":
            open_ = [r.remediation_id for r in service.standing(account).open_remediations]
            if open_:
                self.operate(account, ops.CompleteRemediation(open_[a % len(open_)], "fixed"))
        elif name == "approve":
            self.operate(account, ops.SetAdultContentApproval(a, "verified"))
        elif name == "appeal":
            self.appeal(account, a, b)
        elif name == "suspend":
            until = None if b else now + timedelta(hours=max(a, 1))
            self.operate(account, ops.Suspend("r", until, notify=c))
        elif name == "reinstate":
            self.operate(account, ops.Reinstate("r"))
        elif name == "terminate":
            self.operate(account, ops.Terminate("r", notify=c))
        elif name == "throttle":
            expires = None if b else now + timedelta(hours=max(a, 1))
            self.operate(account, ops.ApplyThrottle(0.1, "r", c[1], expires, c[0]))
        elif name == "lift":
            throttles = [
                e.data["throttle_id"] for e in self.log(account) if e.type == "ThrottleApplied"
            ]
            if throttles:
                self.operate(account, ops.LiftThrottle(throttles[a % len(throttles)]))
        elif name == "limits":
            self.operate(account, ops.ConfigureLimits(a, c, b))
        elif name == "abuse_report":
            self.made += 1
            if b:
                key = f"cross-views:{self.made}"
                service.file_gate_abuse_report(
                    account, a, "d", key, request_fingerprint({"key": key}), GATE_ACTOR
                )
            else:
                service.file_abuse_report(account, a, f"report #{self.made}", None, None, OPERATOR)
        elif name == "triage":
            open_ = self.ids(account, "AbuseReportReceived", "AbuseReportTriaged", "report_id")
            if open_:
                report_id = open_[a % len(open_)]
                service.triage_abuse_report(account, report_id, b, c, OPERATOR)
        elif name == "denials":
            self.deny(account, a == "spread")
        elif name == "deliver":
            deliver_notices(self.system, account)

    def violation(
        self, step: tuple[Any, ...], source: str | None, detection: str
    ) -> ViolationReport:
        _, category, severity, (minutes_back, key_id) = step
        self.made += 1
        occurred = self.clock() - timedelta(minutes=minutes_back)
        description = f"{category} #{self.made}"
        return ViolationReport(
            category, occurred, severity, key_id, source, detection, description=description
        )

    def send_batch(self) -> None:
        """The reports held for a batch, in one ``report_batch`` (each account's first ones
        decided together and recorded in one transaction)."""
        if self.batch:
            for result in self.system.service.report_batch(self.batch, REPORTER):
                assert result.status == 201, result
            self.batch = []

    def operate(self, account: str, command: ops.Command) -> None:
        self.system.service.operator(account, command, OPERATOR)

    def appeal(self, account: str, index: int, outcome: str) -> None:
        """An appeal against one of the account's decisions, decided at once (one in seven
        left pending)."""
        decisions = [e.event_id for e in self.log(account) if e.type in DECISION_TYPES]
        if not decisions:
            return
        target = decisions[len(decisions) - 1 - index % len(decisions)]  # the latest most often
        service = self.system.service
        filed = service.file_appeal(account, target, "not me", OPERATOR)
        if index >= 18:
            return  # left open, pending
        appeal_id = filed.events[0].data["appeal_id"]
        service.decide_appeal(account, appeal_id, outcome, "reviewed", OPERATOR)

    def deny(self, account: str, rotate: bool) -> None:
        """A burst of the policy's count of gate denials at one instant (each over the token
        quota), through the gate and its detector: on one key, or rotating over three."""
        for n in range(POLICY.sustained_abuse_denials.count):
            key = f"k{n % 3 + 1}" if rotate else "k1"
            self.system.gate_check(account, key, 10**12)

    def advance(self, by: timedelta, deadlines: bool) -> None:
        """Time passing; with ``deadlines``, the sweep runs at each deadline on the way (the
        delayed message's worker, just on time) and at once for those already past (the sweep
        catching up)."""
        target = self.clock() + by
        while deadlines:
            sweep_once(self.system.service)
            now = self.clock()
            due = [
                d for d in (deadline for a in ACCOUNTS for deadline in self.deadlines(a))
                if now < d <= target
            ]  # fmt: skip
            if not due:
                break
            self.clock.set(min(due))
        self.clock.set(target)

    def deadlines(self, account: str) -> Iterator[datetime]:
        standing = self.system.service.standing(account)
        yield from (r.due_at for r in standing.open_remediations)
        if standing.suspension is not None and standing.suspension.until is not None:
            yield standing.suspension.until


# --------------------------------------------------------------------------- the views


def standing_as_of(client: TestClient, account: str, at: datetime | None) -> dict[str, Any]:
    params = {} if at is None else {"as_of": format_time(at)}
    answer = client.get(f"/v1/accounts/{account}/standing", params=params)
    assert answer.status_code == 200, answer.text
    shown: dict[str, Any] = answer.json()
    return shown


def paged(client: TestClient, path: str, cursor: str, limit: int) -> list[dict[str, Any]]:
    """Every event of a feed, page by page: ``GET /v1/events`` (``cursor`` ``after_position``)
    or ``GET /v1/accounts/{id}/events`` (``after_version``)."""
    events: list[dict[str, Any]] = []
    after: int | None = 0
    while after is not None:
        page = client.get(path, params={cursor: after, "limit": limit})
        assert page.status_code == 200, page.text
        events += page.json()["events"]
        after = page.json()[f"next_{cursor}"]
    return events


def status_of(standing: dict[str, Any]) -> str:
    """CONTRACT.md: "the most severe that holds"."""
    holds = {
        "terminated": standing["terminated"],
        "suspended": standing["suspension"] is not None,
        "throttled": bool(standing["active_throttles"]),
        "remediation_due": bool(standing["open_remediations"]),
        "warned": standing["strikes"] > 0,
    }
    return next((s for s in STATUS_ORDER if holds[s]), "good_standing")


@dataclass
class Violations:
    """What the log says of an account's violations: when each occurred, whether a strike."""

    occurred: dict[str, datetime]
    strike: dict[str, bool]

    @classmethod
    def of(cls, log: list[dict[str, Any]]) -> Violations:
        reported = [e for e in log if e["type"] == "ViolationReported"]
        return cls(
            {e["data"]["violation_id"]: parse_time(e["occurred_at"]) for e in reported},
            {e["data"]["violation_id"]: e["data"]["strike"] for e in reported},
        )

    def aged(self, standing: dict[str, Any], at: datetime) -> dict[str, Any]:
        """``standing`` as time alone leaves it at ``at`` (CONTRACT.md: time-bound states end
        by themselves; POLICY.md: a strike counts for ``strike_lookback`` from when it
        occurred)."""
        shown = dict(standing)
        suspension = shown["suspension"]
        if suspension and suspension["until"] and parse_time(suspension["until"]) <= at:
            shown["suspension"] = None
        shown["active_throttles"] = [
            t
            for t in shown["active_throttles"]
            if t["expires_at"] is None or parse_time(t["expires_at"]) > at
        ]
        shown["open_violations"] = [
            v for v in shown["open_violations"] if self.occurred[v] > at - LOOKBACK
        ]
        shown["strikes"] = sum(self.strike[v] for v in shown["open_violations"])
        shown["status"] = status_of(shown)
        return shown

    def ends(self, standing: dict[str, Any], before: datetime) -> list[datetime]:
        """The instants before ``before`` at which time alone changes ``standing`` (a
        suspension's or a throttle's end, a violation leaving the lookback; and the
        microsecond before each), and the microsecond before ``before``."""
        us = timedelta(microseconds=1)
        suspension = standing["suspension"]
        ends = [
            parse_time(t["expires_at"]) for t in standing["active_throttles"] if t["expires_at"]
        ]
        ends += [self.occurred[v] + LOOKBACK for v in standing["open_violations"]]
        if suspension and suspension["until"]:
            ends.append(parse_time(suspension["until"]))
        moments = {moment for end in ends for moment in (end - us, end)} | {before - us}
        return sorted(m for m in moments if m < before and m > T0 - timedelta(days=1))


def check_history(
    system: Container, client: TestClient, account: str, log: list[dict[str, Any]]
) -> None:
    entries = list(system.service.history(account))
    shown = json.loads("".join(history_json(entries)))
    assert [{k: v for k, v in item.items() if k != "change"} for item in shown] == log
    assert [item["change"] for item in shown] == [e.change for e in entries]
    rows = list(history_csv_rows(entries))[1:]
    assert [(r[0], r[3], r[4], json.loads(r[5]), r[8]) for r in rows] == [
        (str(e["version"]), e["type"], e["event_id"], item["change"], e["hash"])
        for e, item in zip(log, shown, strict=True)
    ]

    violations = Violations.of(log)
    empty = standing_as_of(client, account, T0 - timedelta(days=1))
    assert empty["version"] == 0 and empty["status"] == "good_standing"
    current = {k: v for k, v in empty.items() if k not in ("as_of", "version")}
    version = 0
    for recorded, group in groupby(shown, key=lambda item: item["recorded_at"]):
        at = parse_time(recorded)
        for moment in violations.ends(current, at):  # time alone acts before ``at``
            aged = {**violations.aged(current, moment), "version": version}
            aged["as_of"] = format_time(moment)
            assert standing_as_of(client, account, moment) == aged, f"as_of {moment}"
        current = violations.aged(current, at)
        items = list(group)
        version = items[-1]["version"]
        for item in items:
            for name, change in item["change"].items():
                where = f"{name} at version {item['version']} ({item['type']})"
                assert current[name] == change["from"], where
                current[name] = change["to"]
        expected = {**current, "version": items[-1]["version"], "as_of": recorded}
        assert standing_as_of(client, account, at) == expected, f"as_of {recorded}"
        assert status_of(current) == current["status"], f"status at {recorded}"
        up_to = [e.event.version for e in system.service.history(account, at)]
        assert up_to == list(range(1, items[-1]["version"] + 1))

    now = system.clock()
    final = {**violations.aged(current, now), "version": len(log), "as_of": format_time(now)}
    assert standing_as_of(client, account, None) == final
    assert system.service.standing(account).to_json() == final


def violation_ids(event: RecordedEvent) -> list[str]:
    """The violations a decision was taken on (what an overturn dismisses)."""
    data = event.data
    if event.type == "ViolationDismissed":
        return [data["violation_id"]]
    return list(data.get("violation_ids") or [])


def check_statements(system: Container, account: str, log: list[RecordedEvent]) -> None:
    lines = [json.loads(line) for line in export_lines(system.store, "sor", account=account)]
    by_id = {e.event_id: e for e in log}
    stated = [e for e in log if e.type in RESTRICTIVE and e.data.get("statement_of_reasons")]
    assert [line["uuid"] for line in lines] == [e.event_id for e in stated]
    lined = {line["uuid"] for line in lines}
    for event in log:
        if event.type in STATED:
            assert event.event_id in lined, f"{event.type} {event.version} has no statement"
        if event.type == "NoticeIssued":
            assert event.data["decision_event_id"] in lined, f"notice {event.version}"
    reported = {e.data["violation_id"]: e for e in log if e.type == "ViolationReported"}
    for line in lines:
        event = by_id[line["uuid"]]
        where = f"{event.type} at version {event.version}"
        assert set(line) == SOR_FIELDS, where
        assert line["decision_event_type"] == event.type
        assert line["decision_ground"].startswith("AUP §"), where
        for category in line["category"]:
            assert category in line["decision_ground"], where
        assert line["policy_version"] == POLICY.version and line["redress"], where
        assert line["automated_decision"] is (event.metadata["actor"] == "policy"), where
        assert line["end_date"] == (event.data.get("until") or event.data.get("expires_at"))
        facts = {f["violation_id"]: f for f in line["decision_facts"] if "violation_id" in f}
        for violation_id, fact in facts.items():
            violation = reported[violation_id]  # the account's own
            assert fact["description"] == violation.data["description"], where
            assert fact["category"] == violation.data["category"], where
        named = violation_ids(event)
        assert set(named) <= set(facts), where
        for violation_id in named:  # POLICY.md: "the AUP section(s) ... and the category"
            category = reported[violation_id].data["category"]
            assert category in line["category"], where
            sections = [f"§{n}" for n in POLICY.categories[category].sections]
            assert set(sections) <= set(line["aup_sections"]), where
        assert all(section in line["decision_ground"] for section in line["aup_sections"])
        decided_on = [v for v, f in facts.items() if not f.get("prior_strike")]
        if named:
            automated = any(reported[v].data["detection"] == "automated" for v in decided_on)
            assert line["automated_detection"] is automated, where


def check_gate(system: Container, account: str, log: list[RecordedEvent]) -> None:
    standing = system.service.standing(account)
    limits: dict[str | None, int] = {}
    for event in log:
        if event.type == "RateLimitsConfigured":
            limits[event.data["key_id"]] = event.data["tokens_per_day"]

    def ppm(key_id: str | None) -> int:
        factors = [
            max(round(t.factor * core.PPM), 1)
            for t in standing.active_throttles
            if t.key_id is None or t.key_id == key_id
        ]
        return min(factors, default=core.PPM)

    default = system.settings.default_tpd
    for key_id in ("k1", "k2", "k9"):
        decision = system.gate.check(account, key_id, 0)
        where = f"{account} {key_id}: {decision}"
        if standing.terminated:
            assert (decision.allowed, decision.reason) == (False, "terminated"), where
        elif standing.suspension is not None:
            assert (decision.allowed, decision.reason) == (False, "suspended"), where
        else:
            assert decision.reason in ("ok", "rate_limited"), where
            expected = min(
                core.effective(limits.get(key_id, default), ppm(key_id)),
                core.effective(limits.get(None, default), ppm(None)),
            )
            assert decision.limit_tokens == expected, where


# Decisions that answer a violation (POLICY.md's ladder and an operator's dismissal).
ANSWERS = {
    "RemediationRequested",
    "ThrottleApplied",
    "AccountSuspended",
    "AccountTerminated",
    "AuthorityReferralOpened",
    "ViolationDismissed",
}


def counted(events: list[RecordedEvent], since: datetime, until: datetime) -> TransparencyReport:
    """What a transparency report of ``[since, until]`` counts, taken from the events recorded
    then: each count by itself (times to decision in the order of the violations)."""
    counts = TransparencyReport(since, until)
    reported = [e for e in events if e.type == "ViolationReported"]
    for e in reported:
        counts.violations_by_category[e.data["category"]] += 1
        counts.violations_by_source[e.data["source"] or "unspecified"] += 1
        counts.violations_by_detection[e.data["detection"]] += 1
    for e in events:
        overturn = e.type == "SuspensionEnded" and e.data["reason"] == "overturned"
        if e.type in DECISION_KINDS and (e.type != "SuspensionEnded" or overturn):
            policy = e.metadata["actor"] == "policy"
            who = counts.decisions_automated if policy else counts.decisions_by_operator
            who[DECISION_KINDS[e.type]] += 1
    filed = {e.data["appeal_id"] for e in events if e.type == "AppealFiled"}
    decided = [e for e in events if e.type == "AppealDecided"]
    counts.appeals_filed = len(filed)
    counts.appeal_outcomes = Counter(e.data["outcome"] for e in decided)
    counts.appeals_pending = len(filed - {e.data["appeal_id"] for e in decided})
    answers = [e for e in events if e.type in ANSWERS]
    for e in reported:
        first = next(
            (
                d
                for d in answers
                if d.account_id == e.account_id and e.data["violation_id"] in violation_ids(d)
            ),
            None,
        )
        if first is None:
            counts.undecided += 1
        else:
            seconds = (first.recorded_at - e.occurred_at).total_seconds()
            counts.times_to_decision.append(max(0.0, seconds))
    counts.accounts = len({e.account_id for e in reported})
    return counts


def check_report(system: Container, since: datetime, until: datetime) -> None:
    events = [e for e in system.store.iter_all() if since <= e.recorded_at <= until]
    expected = counted(events, since, until)
    got = transparency_report(system.store, since, until)
    assert got.median_time_to_decision == expected.median_time_to_decision
    expected.times_to_decision.sort()
    got.times_to_decision.sort()
    assert got == expected
    rows = {(section, name): value for section, name, value in report_csv_rows(got)}
    kinds = expected.decisions_by_kind
    assert {n: int(v) for (k, n), v in rows.items() if k == "decisions_by_kind"} == +kinds
    categories = expected.violations_by_category
    assert {n: int(v) for (k, n), v in rows.items() if k == "violations_by_category"} == categories
    appeals = ("filed", "upheld", "overturned", "not_decided")
    assert [int(rows[("appeals", n)]) for n in appeals] == [
        expected.appeals_filed,
        expected.appeal_outcomes["upheld"],
        expected.appeal_outcomes["overturned"],
        expected.appeals_pending,
    ]


def check_replay(system: Container) -> None:
    stored = all_stored_rows(system)
    rebuild_standings(system.store, system.standings, account=ACCOUNTS[0])
    assert all_stored_rows(system) == stored
    rebuild_standings(system.store, system.standings)
    assert all_stored_rows(system) == stored
    for account in ACCOUNTS:
        assert_account_consistent(system, account)


def check_views(system: Container, client: TestClient, limit: int, window: tuple[int, int]) -> None:
    everything = [json.loads(line) for line in export_lines(system.store, "jsonl")]
    for kind in sorted({(e["type"], e["metadata"]["actor"]) for e in everything}):
        note(f"recorded {kind[0]} by {kind[1].split(':')[0]}")
    check_chains(everything)
    assert paged(client, "/v1/events", "after_position", limit) == everything
    for account in ACCOUNTS:
        shown = paged(client, f"/v1/accounts/{account}/events", "after_version", limit)
        own = [json.loads(line) for line in export_lines(system.store, "jsonl", account=account)]
        assert shown == own == [e for e in everything if e["account_id"] == account]
        verified = client.get(f"/v1/accounts/{account}/verify").json()
        assert verified["ok"] and verified["events"] == len(shown)
        if shown:
            assert verified["head_hash"] == shown[-1]["hash"]
        check_history(system, client, account, shown)
        log = system.store.read_stream(account)
        check_statements(system, account, log)
        check_gate(system, account, log)
    check_report(system, T0 - timedelta(days=1), system.clock() + timedelta(days=1))
    times = sorted({parse_time(e["recorded_at"]) for e in everything})
    if times:
        first, last = sorted(times[i % len(times)] for i in window)
        check_report(system, first, last)
        statements = [json.loads(line) for line in export_lines(system.store, "sor")]
        within = export_lines(system.store, "sor", since=first, until=last)
        assert [json.loads(line) for line in within] == [
            s for s in statements if first <= parse_time(s["created_at"]) <= last
        ]
    check_replay(system)


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    st.lists(ACCOUNT_STEP, max_size=STEPS),
    HOURS,
    st.sampled_from([1, 3, 100]),
    st.tuples(st.integers(0, 200), st.integers(0, 200)),
)
def test_every_view_tells_the_same_story(
    template: Template,
    steps: list[tuple[Any, ...]],
    later: int,
    limit: int,
    window: tuple[int, int],
) -> None:
    say(f"steps={steps!r}, later={later}")
    with fresh_system(template) as (system, clock, client):
        story = Story(system, clock)
        for index, step, source, detection, batched in steps:
            story.step(ACCOUNTS[index], step, source, detection, batched)
        story.send_batch()
        story.advance(timedelta(hours=later), False)
        check_views(system, client, limit, window)
