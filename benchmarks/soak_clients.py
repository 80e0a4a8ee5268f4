"""The crash soaks' clients (``soak_embedded.py``, ``soak_production.py``): requests that each
name the one event they record, the ledger of what was sent and answered, the threads that send
them and send again what got no answer, and the soaks' other requests (tokens, contacts, the
gate, replays)."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from soak_services import Receiver, Soak

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


@dataclass
class CutOff:
    """A request that was sent and got no answer: when it was sent and when that was known
    (``time.time``), to which process, what the client raised, what it asked."""

    sent: float
    at: float
    base_url: str
    error: str
    what: str


@dataclass
class Outage:
    """A crash of PostgreSQL, or a dependency's silence, that the soak caused (``kind``): when,
    when it answered again (a silence: when it was SIGCONTed), the first 2xx answer after that,
    and what the clients got from the crash until then."""

    kind: str
    at: float
    back: float | None = None
    first_ok: float | None = None
    answered_503: int = 0
    no_answer: int = 0

    def quiet(self, now: float) -> bool:
        """Whether a 5xx at ``now`` is the crash's (until a second after the first 2xx: the
        other API process may still be reconnecting): counted, not noted."""
        return self.first_ok is None or now < self.first_ok + 1.0

    def see(self, outcome: str, now: float) -> None:
        """Count an answer's status (or "refused", "cut off") got at ``now``."""
        if self.first_ok is not None:
            return
        if outcome == "503":
            self.answered_503 += 1
        elif outcome in ("refused", "cut off"):
            self.no_answer += 1
        elif outcome.startswith("2") and self.back is not None and now >= self.back:
            self.first_ok = now


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
        self.redis_back: list[float] = []  # when a restarted Redis answered again
        self.stalls: list[tuple[float, float]] = []  # a process frozen: SIGSTOP's, SIGCONT's
        # Of those, a worker frozen longer than its heartbeat: its messages were handed on.
        self.handed_on: list[tuple[float, float]] = []
        # A dependency made silent (``--dep-stalls``): SIGSTOP's, SIGCONT's, of each.
        self.silent_database: list[tuple[float, float]] = []
        self.silent_redis: list[tuple[float, float]] = []
        self.starting_phase = ""  # where the last kill while starting landed
        self.outages: list[Outage] = []  # PostgreSQL's crashes, silences: the last one open
        self.cut_offs: list[CutOff] = []  # every request sent that got no answer

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
    body = response.json() if status < 500 else None
    with ledger.lock:
        ledger.answers[f"{call.kind} {status}"] += 1
        # The 503s while a PostgreSQL crash lasts are counted there, not noted one by one.
        now = time.time()
        outage = ledger.outages[-1] if ledger.outages else None
        if outage is not None:
            outage.see(_outcome(call, status, body), now)
        quiet = outage is not None and outage.quiet(now)
    if body is None:
        if not quiet:
            ledger.note(f"{call.kind} {call.key}: {status} {response.text[:200]}")
        return False
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
                if item["status"] >= 500 and quiet:
                    continue
                ledger.note(f"batch item {expect.marker}: {item['status']} {item['error']}")
    else:
        call.expects[0].status = status
    call.status, call.answer = status, body
    ledger.learn(call, body)
    return call.done


def _outcome(call: Call, status: int, body: Any) -> str:
    """What an answer was, for an ``Outage``: a batch answered 2xx is a 2xx when one of its
    items is, a 503 when one is (and none is a 2xx)."""
    if call.kind != "batch" or not 200 <= status < 300:
        return str(status)
    items = [item["status"] for item in body["results"]]
    if any(200 <= item < 300 for item in items):
        return str(status)
    return "503" if 503 in items else str(status)


class ClientThread(threading.Thread):
    """One client: the requests waiting to be sent again first, then new ones (none without
    ``actions``), until ``stop``. A request that got no answer (the server died under it) waits
    to be sent again, by any client of this round or the next. It sends to the first of
    ``base_urls``, and to the next one (round and round) once one refused a connection."""

    def __init__(
        self,
        ledger: Ledger,
        actions: Actions | None,
        base_urls: Sequence[str],
        tokens: dict[str, str],
        stop: threading.Event,
    ) -> None:
        super().__init__(daemon=True)
        self.ledger = ledger
        self.actions = actions
        self.tokens = tokens
        self.stop_event = stop
        self.pace = random.Random()
        self.clients = [httpx.Client(base_url=url, timeout=30) for url in base_urls]
        self.client = self.clients[0]

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                call = self._next()
                if call is None or not self._send(call):
                    self.stop_event.wait(0.05)
                else:  # a little time between requests: the machine is shared
                    self.stop_event.wait(self.pace.uniform(0, 0.05))
        finally:
            for client in self.clients:
                client.close()

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
        sent = time.time()
        try:
            response = send(self.client, call, self.tokens)
        except httpx.ConnectError:
            outcome = "refused"  # it never reached the server
            self.client = self.clients[(self.clients.index(self.client) + 1) % len(self.clients)]
        except httpx.TransportError as error:
            outcome = "cut off"  # sent, and the answer never came
            cut = CutOff(
                sent, time.time(), str(self.client.base_url), repr(error), f"{call.kind} {call.key}"
            )
            with ledger.lock:
                ledger.cut_offs.append(cut)
        else:
            outcome = "answered" if settle_answer(ledger, call, response) else "5xx"
        call.history.append(outcome if outcome != "answered" else str(response.status_code))
        with ledger.lock:
            ledger.in_flight -= 1
            if outcome != "answered":
                ledger.retry.append(call)
                ledger.figures[f"no answer ({outcome})"] += 1
            if ledger.outages and outcome in ("refused", "cut off"):
                ledger.outages[-1].see(outcome, time.time())
        return outcome in ("answered", "5xx")


# ------------------------------------------------------------------ the soaks' other requests


def make_tokens(soak: Soak) -> dict[str, str]:
    """A reporter's, an operator's and a gateway's token, by role."""
    tokens = {}
    for role in ("reporter", "operator", "gateway"):
        done = soak.cli("tokens", "create", "--role", role, "--name", f"soak-{role}")
        if done.returncode != 0:
            raise RuntimeError(f"tokens create failed: {done.stderr}")
        tokens[role] = done.stdout.strip().splitlines()[-1]
    return tokens


def add_accounts(
    soak: Soak, ledger: Ledger, base_url: str, token: str, round_no: int, receiver: Receiver
) -> None:
    """New accounts for this round, each with its contact (e-mail, webhook, or both) set before
    anything is reported on it."""
    with httpx.Client(
        base_url=base_url, headers={"Authorization": f"Bearer {token}"}, timeout=30
    ) as client:
        for i in range(soak.accounts_per_round):
            account = f"soak-r{round_no}-a{i}"
            email, webhook = ((True, False), (False, True), (True, True))[i % 3]
            body = {
                "email": f"owner-{account}@example.test" if email else None,
                "webhook_url": receiver.url if webhook else None,
            }
            answer = client.put(f"/v1/accounts/{account}/contact", json=body)
            if answer.status_code != 200:
                raise RuntimeError(f"setting a contact failed: {answer.status_code} {answer.text}")
            with ledger.lock:
                ledger.accounts.append(account)
                ledger.contacts[account] = (email, webhook)


# A standing that may change by itself within this many seconds (a deadline due) is not asked
# of the gate: the scheduler may be changing it as the gate is asked.
GATE_MARGIN_SECONDS = 5.0


def gate_agrees(
    ledger: Ledger,
    base_urls: Sequence[str],
    tokens: dict[str, str],
    rng: random.Random,
    count: int | None,
    figure: str = "gate answers that disagree with the standing",
) -> int:
    """Ask the gate (of each of ``base_urls`` in turn) about up to ``count`` accounts (every
    one with None), each after its standing: a suspended or terminated account must be refused
    (from the first check after a restart: the gate's memory, or Redis's, may have died), one
    restricted by no suspension must be allowed. Returns how many were asked; each answer that
    disagrees is a note and counts in ``figure``."""
    with ledger.lock:
        known = list(ledger.accounts)
    accounts = known if count is None else rng.sample(known, min(count, len(known)))
    soon = format_time(datetime.now(UTC) + timedelta(seconds=GATE_MARGIN_SECONDS))
    asked = 0
    clients = [httpx.Client(base_url=url, timeout=30) for url in base_urls]
    try:
        with ledger.lock:  # no client runs now: the lock only guards the figures
            for n, account in enumerate(accounts):
                client = clients[n % len(clients)]
                standing = client.get(
                    f"/v1/accounts/{account}/standing",
                    headers={"Authorization": f"Bearer {tokens['operator']}"},
                ).json()
                suspension = standing["suspension"]
                due = [r["due_at"] for r in standing["open_remediations"]]
                if standing["terminated"]:
                    expected = "terminated"
                elif suspension is not None and (suspension["until"] or "9999") > soon:
                    expected = "suspended"
                elif suspension is None and all(d > soon for d in due):
                    expected = "ok"
                else:
                    continue  # a deadline due any moment
                answer = client.post(
                    "/v1/gate/check",
                    json={"account_id": account, "key_id": "soak-key"},
                    headers={"Authorization": f"Bearer {tokens['gateway']}"},
                ).json()
                asked += 1
                reason = answer.get("reason")
                if reason != expected:
                    ledger.figures[figure] += 1
                    if len(ledger.notes) < 50:
                        ledger.notes.append(
                            f"gate ({client.base_url}): {account} answered {reason!r}, its "
                            f"standing says {expected!r}"
                        )
    finally:
        for client in clients:
            client.close()
    return asked


def start_clients(
    soak: Soak,
    ledger: Ledger,
    tokens: dict[str, str],
    base_urls: Sequence[str],
    rng: random.Random,
    round_no: int,
    new_calls: bool,
) -> tuple[list[ClientThread], threading.Event]:
    """The round's clients, started, spread over ``base_urls``: the first is an operator
    (reports and commands), the others reporters; with ``new_calls`` false they only send
    again what waits."""
    stop = threading.Event()
    threads = []
    for i in range(soak.clients):
        role = "operator" if i == 0 else "reporter"
        window = 2 * soak.accounts_per_round  # this round's accounts and the last round's
        actions = Actions(ledger, random.Random(rng.random()), f"r{round_no}c{i}", window)
        if role == "reporter":
            actions.makers = [m for m in actions.makers if m[0].__name__ in REPORTS]
        urls = [*base_urls[i % len(base_urls) :], *base_urls[: i % len(base_urls)]]
        thread = ClientThread(ledger, actions if new_calls else None, urls, tokens, stop)
        thread.start()
        threads.append(thread)
    return threads, stop


def kill_under_load(
    soak: Soak,
    ledger: Ledger,
    tokens: dict[str, str],
    base_urls: Sequence[str],
    rng: random.Random,
    round_no: int,
    victim: Callable[[], tuple[str, Callable[[], float | None]]],
    linger: float = 0.0,
) -> str:
    """Load ``base_urls`` for a random time up to ``soak.seconds``, then, once a request is in
    flight, SIGKILL what ``victim`` names (its name, and the kill that says when it was sent,
    or None when it killed nothing: a freeze, which ``ledger.stalls`` records), and go on
    loading what is left for up to ``linger`` seconds. The victim's name."""
    threads, stop = start_clients(soak, ledger, tokens, base_urls, rng, round_no, True)
    time.sleep(rng.uniform(0.1, soak.seconds))
    # Named first: naming may take a while (a worker victim waits for the log to say which one
    # leads), and the kill must follow the wait for a request in flight at once.
    name, kill = victim()
    deadline = time.monotonic() + 10
    while ledger.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    in_flight = ledger.in_flight
    killed_at = kill()
    time.sleep(rng.uniform(0, linger))
    stop.set()
    for thread in threads:
        thread.join()
    with ledger.lock:
        if killed_at is None:
            ledger.figures["stalls"] += 1
            ledger.figures[f"stalls: {name}"] += 1
            return name
        ledger.kills.append(killed_at)
        ledger.figures["kills"] += 1
        ledger.figures[f"kills: {name}"] += 1
        ledger.figures["kills with a request in flight"] += in_flight > 0
    return name


def send_what_waits(
    soak: Soak,
    ledger: Ledger,
    tokens: dict[str, str],
    base_urls: Sequence[str],
    rng: random.Random,
) -> None:
    """Send again every request without a definitive answer, until none is left."""
    threads, stop = start_clients(soak, ledger, tokens, base_urls, rng, soak.rounds, False)
    deadline = time.monotonic() + soak.settle_seconds
    while time.monotonic() < deadline:
        with ledger.lock:
            if not ledger.retry and ledger.in_flight == 0:
                break
        time.sleep(0.05)
    stop.set()
    for thread in threads:
        thread.join()


def a_notice(ledger: Ledger, base_url: str, tokens: dict[str, str], soak: Soak) -> None:
    """Report a first violation on a new account with an e-mail contact: its warning is a
    notice written as an ``.eml`` file (the last start's first, if nothing else wrote one)."""
    account = f"soak-r{soak.rounds}-a0"  # e-mail only (``add_accounts``)
    call = Actions(ledger, random.Random(0), "last", 1).violation("last-1", account, "spam")
    ledger.calls.append(call)
    with httpx.Client(base_url=base_url, timeout=30) as client:
        if not settle_answer(ledger, call, send(client, call, tokens)):
            raise RuntimeError(f"the last violation was not recorded: {call.answer}")


def replay_some(
    ledger: Ledger, base_urls: Sequence[str], tokens: dict[str, str], count: int
) -> list[str]:
    """Send again (key and body, to each of ``base_urls`` in turn) up to ``count``
    acknowledged requests: each must answer 200 with what it answered first. Returns what
    differed."""
    acked = [c for c in ledger.calls if c.acknowledged and c.kind != "batch"]
    sample = random.Random(0).sample(acked, min(count, len(acked)))
    differ = []
    for n, call in enumerate(sample):
        with httpx.Client(base_url=base_urls[n % len(base_urls)], timeout=30) as client:
            answer = send(client, call, tokens)
        call.replay_checked = True
        first, again = call.answer, answer.json() if answer.status_code < 500 else None
        if answer.status_code != 200 or again is None or _ids(first) != _ids(again):
            differ.append(f"{call.kind} {call.key}: {answer.status_code} {answer.text[:200]}")
    return differ


def _ids(answer: Any) -> Any:
    """What identifies an answer: its violation, report, or events."""
    if "violation_id" in answer:
        return answer["violation_id"], [e["event_id"] for e in answer["decisions"]]
    if "report_id" in answer:
        return answer["report_id"]
    return [e["event_id"] for e in answer.get("events", [])]
