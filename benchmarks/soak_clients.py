"""The crash soak's clients (``soak_embedded.py``): requests that each name the one event they
record, the ledger of what was sent and answered, and the threads that send them and send
again what got no answer."""

from __future__ import annotations

import itertools
import random
import threading
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from events.timefmt import format_time

CATEGORIES = (
    ("spam", 8),
    ("ip_infringement", 4),
    ("impersonation", 4),
    ("unapproved_adult_content", 2),
    ("sustained_abuse", 3),
    ("phishing", 3),
    ("personal_data_harvesting", 2),
    ("csam", 1),
)
SEVERITIES = (None, None, "low", "medium", "high")
APPEALABLE = ("ThrottleApplied", "AccountSuspended", "AccountTerminated", "RemediationRequested")
REPORTS = ("violation", "batch", "abuse_report")


# ------------------------------------------------------------------ requests and what they record


@dataclass
class Expect:
    """The one event a request (or a batch item) records when it succeeds: of ``type``, with
    ``marker`` in its data's ``field``. ``status`` is the item's last definitive answer."""

    type: str
    field: str
    marker: str
    status: int | None = None

    @property
    def fact(self) -> tuple[str, str, str]:
        return (self.type, self.field, self.marker)


@dataclass
class Call:
    """One client request, sent again as it is (key and body) until it has a definitive answer
    (2xx or 4xx; a batch's every item)."""

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None
    key: str | None
    expects: list[Expect]
    sends: int = 0
    history: list[str] = field(default_factory=list)  # what each send got
    status: int | None = None
    answer: Any = None
    replay_checked: bool = False

    @property
    def done(self) -> bool:
        return all(e.status is not None for e in self.expects)

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def keyed(self) -> list[tuple[str, Expect]]:
        """Each idempotency key the client chose and what it records: a batch's items' own
        keys (none for a batch under a header key: the server derives its items' keys)."""
        if self.kind != "batch":
            return [] if self.key is None else [(self.key, self.expects[0])]
        items = self.body["violations"] if self.body else []
        return [
            (item["idempotency_key"], expect)
            for item, expect in zip(items, self.expects, strict=True)
            if "idempotency_key" in item
        ]

    @property
    def role(self) -> str:
        """The role of the token it is sent with (by any client, when sent again)."""
        return "reporter" if self.kind in REPORTS else "operator"


@dataclass
class Known:
    """Ids learned from acknowledged answers, for the operator commands to aim at."""

    violations: dict[str, list[str]] = field(default_factory=dict)
    remediations: dict[str, list[str]] = field(default_factory=dict)
    reports: dict[str, list[str]] = field(default_factory=dict)
    decisions: dict[str, list[str]] = field(default_factory=dict)
    appeals: dict[str, list[str]] = field(default_factory=dict)

    def add(self, table: dict[str, list[str]], account: str, ident: str) -> None:
        table.setdefault(account, []).append(ident)


class Ledger:
    """Every request the clients made, those waiting to be sent again, and what was learned."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[Call] = []
        self.retry: deque[Call] = deque()
        self.known = Known()
        self.acked_events: set[str] = set()
        self.acked_violations: dict[str, str] = {}  # marker -> violation id answered
        self.figures: Counter[str] = Counter()
        self.answers: Counter[str] = Counter()  # "kind status"
        self.in_flight = 0
        self.accounts: list[str] = []
        self.contacts: dict[str, tuple[bool, bool]] = {}  # account -> (email, webhook)
        self.notes: list[str] = []  # odd answers worth a look
        self.kills: list[float] = []  # when each SIGKILL was sent (time.time)

    def note(self, text: str) -> None:
        with self.lock:
            if len(self.notes) < 50:
                self.notes.append(text)

    def learn(self, call: Call, body: Any) -> None:
        """Remember the ids of an acknowledged answer and the events it named."""
        k = self.known
        with self.lock:
            if call.kind == "batch":
                results = body["results"]
                for expect, item in zip(call.expects, results, strict=True):
                    if 200 <= item["status"] < 300:
                        self._learn_violation(item, expect.marker)
                return
            if call.kind == "violation":
                self._learn_violation(body, call.expects[0].marker)
            elif call.kind == "abuse_report":
                account = str(call.body["reported_account_id"]) if call.body else ""
                k.add(k.reports, account, body["report_id"])
            else:
                for event in body["events"]:
                    self.acked_events.add(event["event_id"])
                    if event["type"] == "AppealFiled":
                        k.add(k.appeals, event["account_id"], event["data"]["appeal_id"])
                    elif event["type"] in APPEALABLE:
                        k.add(k.decisions, event["account_id"], event["event_id"])

    def _learn_violation(self, body: dict[str, Any], marker: str) -> None:
        k = self.known
        account = body["account_id"]
        self.acked_violations[marker] = body["violation_id"]
        k.add(k.violations, account, body["violation_id"])
        for event in body["decisions"]:
            self.acked_events.add(event["event_id"])
            if event["type"] == "RemediationRequested":
                k.add(k.remediations, account, event["data"]["remediation_id"])
            if event["type"] in APPEALABLE:
                k.add(k.decisions, account, event["event_id"])


def _moment(seconds: float) -> str:
    return format_time(datetime.now(UTC) + timedelta(seconds=seconds))


class Actions:
    """Makes one client's requests: a weighted mix of reports and operator commands on the
    accounts of the last rounds."""

    def __init__(self, ledger: Ledger, rng: random.Random, prefix: str, window: int) -> None:
        self.ledger = ledger
        self.window = window  # the last accounts added, that requests go to
        self.rng = rng
        self.prefix = prefix
        self.numbers = itertools.count(1)
        self.makers: list[tuple[Callable[[str], Call | None], int]] = [
            (self.violation, 50),
            (self.batch, 8),
            (self.abuse_report, 6),
            (self.suspend, 5),
            (self.reinstate, 5),
            (self.throttle, 4),
            (self.terminate, 1),
            (self.dismiss, 5),
            (self.complete, 5),
            (self.triage, 4),
            (self.appeal, 4),
            (self.decide_appeal, 3),
        ]

    def next(self) -> Call:
        makers, weights = zip(*self.makers, strict=True)
        while True:
            maker: Callable[[str], Call | None] = self.rng.choices(makers, weights)[0]
            call = maker(f"{self.prefix}-{next(self.numbers)}")
            if call is not None:
                return call

    def _account(self) -> str:
        with self.ledger.lock:
            recent = self.ledger.accounts[-self.window :]
        return self.rng.choice(recent)

    def _known(self, table: dict[str, list[str]]) -> tuple[str, str] | None:
        with self.ledger.lock:
            accounts = [a for a in self.ledger.accounts[-self.window :] if table.get(a)]
            if not accounts:
                return None
            account = self.rng.choice(accounts)
            return account, self.rng.choice(table[account])

    def _report(
        self, marker: str, account: str | None = None, category: str | None = None
    ) -> dict[str, Any]:
        categories, weights = zip(*CATEGORIES, strict=True)
        body: dict[str, Any] = {
            "account_id": account or self._account(),
            "category": category or self.rng.choices(categories, weights)[0],
            "evidence_ref": f"soak://{marker}",
            "description": f"soak report {marker}",
        }
        severity = self.rng.choice(SEVERITIES)
        if severity is not None:
            body["severity"] = severity
        return body

    def violation(self, key: str, account: str | None = None, category: str | None = None) -> Call:
        body = self._report(key, account, category)
        expect = Expect("ViolationReported", "evidence_ref", f"soak://{key}")
        return Call("violation", "POST", "/v1/violations", body, key, [expect])

    def batch(self, key: str) -> Call:
        own_keys = self.rng.random() < 0.5  # else the header's key derives the items' keys
        items, expects = [], []
        for i in range(self.rng.randint(2, 6)):
            marker = f"{key}.{i}"
            item = self._report(marker)
            if own_keys:
                item["idempotency_key"] = marker
            items.append(item)
            expects.append(Expect("ViolationReported", "evidence_ref", f"soak://{marker}"))
        body = {"violations": items}
        return Call(
            "batch", "POST", "/v1/violations:batch", body, None if own_keys else key, expects
        )

    def abuse_report(self, key: str) -> Call:
        body = {
            "reported_account_id": self._account(),
            "category": self.rng.choice(("spam", "phishing", "impersonation")),
            "description": f"soak abuse report {key}",
            "reporter_contact": "reporter@example.test",
            "evidence_ref": f"soak://{key}",
        }
        expect = Expect("AbuseReportReceived", "evidence_ref", f"soak://{key}")
        return Call("abuse_report", "POST", "/v1/abuse-reports", body, key, [expect])

    def _command(
        self, kind: str, account: str, path: str, body: dict[str, Any], key: str, expect: Expect
    ) -> Call:
        return Call(kind, "POST", f"/v1/accounts/{account}{path}", body, key, [expect])

    def suspend(self, key: str) -> Call:
        until = None if self.rng.random() < 0.3 else _moment(self.rng.uniform(2, 8))
        body = {"reason": key, "until": until, "notify": self.rng.random() < 0.8}
        expect = Expect("AccountSuspended", "reason", key)
        return self._command("suspend", self._account(), "/suspend", body, key, expect)

    def reinstate(self, key: str) -> Call:
        expect = Expect("AccountReinstated", "reason", key)
        return self._command(
            "reinstate", self._account(), "/reinstate", {"reason": key}, key, expect
        )

    def throttle(self, key: str) -> Call:
        body = {"factor": 0.5, "expires_at": _moment(3600), "reason": key}
        expect = Expect("ThrottleApplied", "reason", key)
        return self._command("throttle", self._account(), "/throttles", body, key, expect)

    def terminate(self, key: str) -> Call:
        expect = Expect("AccountTerminated", "reason", key)
        return self._command(
            "terminate", self._account(), "/terminate", {"reason": key}, key, expect
        )

    def dismiss(self, key: str) -> Call | None:
        found = self._known(self.ledger.known.violations)
        if found is None:
            return None
        account, violation = found
        expect = Expect("ViolationDismissed", "reason", key)
        path = f"/violations/{violation}/dismiss"
        return self._command("dismiss", account, path, {"reason": key}, key, expect)

    def complete(self, key: str) -> Call | None:
        found = self._known(self.ledger.known.remediations)
        if found is None:
            return None
        account, remediation = found
        expect = Expect("RemediationCompleted", "note", key)
        path = f"/remediations/{remediation}/complete"
        return self._command("complete", account, path, {"note": key}, key, expect)

    def triage(self, key: str) -> Call | None:
        found = self._known(self.ledger.known.reports)
        if found is None:
            return None
        account, report = found
        outcome = self.rng.choice(("confirmed", "rejected"))
        body = {"outcome": outcome, "severity": "low" if outcome == "confirmed" else None}
        # The triage's event has no text of ours: it is known by the report it triages (one
        # triage per report is recorded however many are asked).
        expect = Expect("AbuseReportTriaged", "report_id", report)
        path = f"/abuse-reports/{report}/triage"
        return self._command("triage", account, path, body, key, expect)

    def appeal(self, key: str) -> Call | None:
        found = self._known(self.ledger.known.decisions)
        if found is None:
            return None
        account, decision = found
        expect = Expect("AppealFiled", "statement", key)
        body = {"decision_event_id": decision, "statement": key}
        return self._command("appeal", account, "/appeals", body, key, expect)

    def decide_appeal(self, key: str) -> Call | None:
        found = self._known(self.ledger.known.appeals)
        if found is None:
            return None
        account, appeal = found
        body = {"outcome": self.rng.choice(("upheld", "overturned")), "reason": key}
        expect = Expect("AppealDecided", "reason", key)
        path = f"/appeals/{appeal}/decide"
        return self._command("decide_appeal", account, path, body, key, expect)


# ------------------------------------------------------------------ the client side


def send(client: httpx.Client, call: Call, tokens: dict[str, str]) -> httpx.Response:
    headers = {"Authorization": f"Bearer {tokens[call.role]}"}
    if call.key is not None:
        headers["Idempotency-Key"] = call.key
    return client.request(call.method, call.path, json=call.body, headers=headers)


def settle_answer(ledger: Ledger, call: Call, response: httpx.Response) -> bool:
    """Take ``response`` as ``call``'s answer; whether it is definitive (else: send again)."""
    status = response.status_code
    with ledger.lock:
        ledger.answers[f"{call.kind} {status}"] += 1
    if status >= 500:
        ledger.note(f"{call.kind} {call.key}: {status} {response.text[:200]}")
        return False
    body = response.json()
    if status >= 400:
        code = body.get("error", {}).get("code")
        if code in ("idempotency_key_reused", "validation_failed", "malformed_json"):
            ledger.note(f"{call.kind} {call.key}: {status} {code}: {response.text[:300]}")
        for expect in call.expects:
            expect.status = status
        call.status, call.answer = status, body
        return True
    if call.kind == "batch":
        for expect, item in zip(call.expects, body["results"], strict=True):
            if item["status"] < 500:  # a 5xx item is sent again with its batch
                expect.status = item["status"]
            if item["status"] >= 400 and item["error"]["code"] != "concurrent_update":
                ledger.note(f"batch item {expect.marker}: {item['status']} {item['error']}")
    else:
        call.expects[0].status = status
    call.status, call.answer = status, body
    ledger.learn(call, body)
    return call.done


class ClientThread(threading.Thread):
    """One client: the requests waiting to be sent again first, then new ones (none without
    ``actions``), until ``stop``. A request that got no answer (the server died under it) waits
    to be sent again, by any client of this round or the next."""

    def __init__(
        self,
        ledger: Ledger,
        actions: Actions | None,
        base_url: str,
        tokens: dict[str, str],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.ledger = ledger
        self.actions = actions
        self.tokens = tokens
        self.stop_event = stop
        self.pace = random.Random()
        self.client = httpx.Client(base_url=base_url, timeout=30)

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                call = self._next()
                if call is None or not self._send(call):
                    self.stop_event.wait(0.05)
                else:  # a little time between requests: the machine is shared
                    self.stop_event.wait(self.pace.uniform(0, 0.05))
        finally:
            self.client.close()

    def _next(self) -> Call | None:
        ledger = self.ledger
        with ledger.lock:
            if ledger.retry:
                ledger.figures["requests sent again"] += 1
                return ledger.retry.popleft()
        if self.actions is None:
            return None
        call = self.actions.next()
        with ledger.lock:
            ledger.calls.append(call)
            ledger.figures[f"sent: {call.kind}"] += 1
        return call

    def _send(self, call: Call) -> bool:
        """Send ``call``; False when it got no answer (it waits to be sent again)."""
        ledger = self.ledger
        with ledger.lock:
            ledger.in_flight += 1
        call.sends += 1
        try:
            response = send(self.client, call, self.tokens)
        except httpx.ConnectError:
            outcome = "refused"  # it never reached the server
        except httpx.TransportError:
            outcome = "cut off"  # sent, and the answer never came
        else:
            outcome = "answered" if settle_answer(ledger, call, response) else "5xx"
        call.history.append(outcome if outcome != "answered" else str(response.status_code))
        with ledger.lock:
            ledger.in_flight -= 1
            if outcome != "answered":
                ledger.retry.append(call)
                ledger.figures[f"no answer ({outcome})"] += 1
        return outcome in ("answered", "5xx")
