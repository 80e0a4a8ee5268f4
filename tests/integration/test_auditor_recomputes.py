"""An auditor's review of the hash chain (CONTRACT.md, "hash chain"), with generated requests.

Hypothesis writes request bodies the way any client may write JSON (keys in any order, any
character escaped or not, ``\\/``, surrogate pairs, numbers as ``1.0``, ``1e2``, ``100E-2``,
``0.30000000000000004``, times in any offset) and fills every field a caller controls that
reaches an event (a report's description, source, evidence and key, an abuse report's free text
and contact, an operator's reasons, notes and statements, a throttle's factor and key, limits,
times) with text of every kind: NUL, lone surrogates, U+2028, NEL, controls, astral characters;
and sometimes breaks the body (a member named twice, NaN, ``1e999``, nesting, an unknown field).

Every request is either refused whole (400/422 with the error body, or 409 for the account's
state; nothing written) or taken, and then what was sent reads back as sent, and an auditor
with nothing but ``json`` and ``hashlib`` (``tests/auditor.py``: ``docs/verify_account.py``)
recomputes the account's chain from ``GET /v1/accounts/{id}/events``, from the feed, from
``enforcement export`` lines and ``history --format json``, to the head hash ``GET …/verify``
gives; ``replay`` rebuilds the same standings. On SQLite and on PostgreSQL, whose ``jsonb``
refuses NUL and rewrites numbers. ``ENFORCEMENT_AUDIT_EXAMPLES`` (default 40 accounts a
backend, some seconds) runs a longer hunt.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_service_support import FakeClock, all_stored_rows, assert_account_consistent
from typer.testing import CliRunner

from enforcement.api.app import create_app
from enforcement.auditing import export_lines
from enforcement.bootstrap import Container
from enforcement.cli import app as cli
from enforcement.policy import CATEGORIES
from enforcement.roles import Role
from enforcement.tokens import create_token
from events.timefmt import format_time
from events.wire import event_to_json
from projections.runner import rebuild_standings
from projections.tables import standing_records, standings
from tests.auditor import check_chains, verify_account
from tests.e2e.harness import assert_error

# ------------------------------------------------------------------ writing JSON as clients do

_SHORT = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(code: int, upper: bool) -> str:
    return f"\\u{code:04X}" if upper else f"\\u{code:04x}"


@st.composite
def written_string(draw: st.DrawFn, text: str) -> str:
    """``text`` as a JSON string, each character raw or escaped (an astral one as a pair)."""
    parts = ['"']
    # Each character's two coin flips (escaped? upper-case hex?) come from one drawn seed:
    # two draws a character cost most of this test's time (each draw is Hypothesis'
    # bookkeeping), and a drawn integer as a bit mask would escape few characters of a long
    # text (Hypothesis favours small integers).
    flips = draw(st.randoms(use_true_random=True))
    for char in text:
        code = ord(char)
        escape, upper = flips.random() < 0.5, flips.random() < 0.5
        if char in _SHORT:
            parts.append(_SHORT[char] if escape else _escape(code, upper))
        elif code < 0x20 or 0xD800 <= code <= 0xDFFF:  # must be escaped (no UTF-8 for these)
            parts.append(_escape(code, upper))
        elif char == "/":
            parts.append("\\/" if escape else "/")
        elif not escape:
            parts.append(char)
        elif code > 0xFFFF:
            high, low = 0xD800 + ((code - 0x10000) >> 10), 0xDC00 + ((code - 0x10000) & 0x3FF)
            parts.append(_escape(high, upper) + _escape(low, upper))
        else:
            parts.append(_escape(code, upper))
    parts.append('"')
    return "".join(parts)


def _float_forms(value: float) -> list[str]:
    forms = [repr(value), f"{value:.17g}", f"{value:.17e}", f"{value:E}", f"{value:.25f}"]
    if value.is_integer() and abs(value) < 1e17:
        forms.append(str(int(value)))
    return forms


def _int_forms(value: int) -> list[str]:
    forms = [str(value), f"{value}.0", f"{value}e0", f"{value}.000"]
    if value:
        forms.append(f"{value}0E-1")
    if value and value % 100 == 0:
        forms.append(f"{value // 100}e2")
    return forms


@dataclass(frozen=True)
class Number:
    """A number a client writes in one of several ways (``text`` chosen when written)."""

    value: float | int


@st.composite
def written(draw: st.DrawFn, value: Any) -> str:
    """``value`` as JSON text, as some client might write it."""
    space = draw(st.sampled_from(["", " ", "\n  "]))
    if isinstance(value, Number):
        v = value.value
        return draw(st.sampled_from(_int_forms(v) if isinstance(v, int) else _float_forms(v)))
    if isinstance(value, str):
        return draw(written_string(value))
    if isinstance(value, dict):
        items = draw(st.permutations(list(value.items())))
        members = [f"{draw(written_string(k))}{space}:{space}{draw(written(v))}" for k, v in items]
        return "{" + space + f",{space}".join(members) + space + "}"
    if isinstance(value, list):
        return "[" + ",".join(draw(written(v)) for v in value) + "]"
    return json.dumps(value)  # true, false, null, an int


# What a broken body must be answered with: 400 malformed JSON, or 422 invalid fields.
BREAKS: dict[str, tuple[int, Callable[[str], str]]] = {
    "member named twice": (400, lambda text: text[:-1] + ',"reason":"a","reason":"b"}'),
    "NaN": (400, lambda text: text[:-1] + ',"n":NaN}'),
    "-Infinity": (400, lambda text: text[:-1] + ',"n":-Infinity}'),
    "1e999": (400, lambda text: text[:-1] + ',"n":1e999}'),
    "trailing comma": (400, lambda text: text[:-1] + ",}"),
    "nested too deeply": (400, lambda text: text[:-1] + ',"n":' + "[" * 5000 + "]" * 5000 + "}"),
    "unknown field": (422, lambda text: text[:-1] + ',"extra":[[[[[[[[1.0]]]]]]]]}'),
    "NUL in a member's name": (422, lambda text: text[:-1] + ',"re\\u0000ason":"x"}'),
    "not an object": (422, lambda text: "[" + text + "]"),
}

# ------------------------------------------------------------------ the API's rules, as a model


def is_text(value: Any, limit: int) -> bool:
    """Text the API takes: no NUL, no lone surrogate (JSON can escape one, UTF-8 has none)."""
    return (
        isinstance(value, str)
        and len(value) <= limit
        and "\x00" not in value
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    )


def is_key_id(value: Any) -> bool:
    return (
        is_text(value, 200)
        and value not in ("", ".", "..")
        and not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in value)
    )


def is_count(value: Any, limit: int) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return float(value).is_integer() and 0 < value <= limit


def is_factor(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 < value <= 1


# ------------------------------------------------------------------ values of every kind

SPECIAL = [
    "\x00", "\ud800", "\udfff", "\ud83d", "\ude00", "\u2028", "\u2029", "\x85", "\x7f", "\x1f",
    "\x01", "\ufeff", "\ufffe", "\uffff", "\ufffd", "\U0001f600", "\U0010ffff", "é", "e\u0301",
    '"', "\\", "/", "\n", "\r", "\t", " ", "%", ".", "..", "\\u0000",
]  # fmt: skip
# Text the API must take (anything but NUL and lone surrogates), and text it must refuse.
clean_chars = st.one_of(
    st.characters(exclude_characters="\x00"),
    st.sampled_from([c for c in SPECIAL if is_text(c, 4000)]),
)
texts = st.one_of(
    st.lists(clean_chars, max_size=24).map("".join),
    st.lists(clean_chars, max_size=24).map("".join),
    st.lists(clean_chars, max_size=24).map("".join),
    st.lists(st.one_of(clean_chars, st.sampled_from(SPECIAL)), max_size=24).map("".join),
    st.sampled_from(["", ".", "..", " ", "\u2028", "\x85", "\x00", "\udc80"]),
)


@st.composite
def long_texts(draw: st.DrawFn, limit: int) -> str:
    """Text at or just over ``limit`` characters, some of them astral (one character each)."""
    size = draw(st.sampled_from([limit, limit + 1]))
    return draw(st.sampled_from(["x", "\U0001f600", "\u2028"])) * size


def texts_up_to(limit: int) -> st.SearchStrategy[str]:
    return st.one_of(texts, long_texts(limit)) if limit <= 4000 else texts


def optional(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(st.none(), strategy)


def with_some(
    draw: st.DrawFn, body: dict[str, Any], **fields: st.SearchStrategy[Any]
) -> dict[str, Any]:
    """``body`` with each of ``fields`` drawn, or left out (the API takes its default)."""
    for name, strategy in fields.items():
        if draw(st.booleans()):
            body[name] = draw(strategy)
    return body


factors = st.one_of(
    st.floats(min_value=5e-324, max_value=1.0),
    st.sampled_from([0.1 + 0.2, 1e-5, 5e-324, 2.5e-1, 1.0, 0.0, -0.0, 1.5, 1e308, 1e16]),
)
counts = st.one_of(
    st.integers(min_value=1, max_value=10_000_000),
    st.integers(min_value=1, max_value=10_000_000),
    st.integers(min_value=1, max_value=10**15),
    st.sampled_from([0, -1, 600, 10_000_000, 10_000_001, 10**15, 10**15 + 1, 2**53 + 1, 2**64]),
)


def count_numbers(draw: st.DrawFn) -> Number:
    value = draw(counts)
    if draw(st.booleans()) and abs(value) < 2**53:
        return Number(float(value))  # 600.0: a float-only client's count
    return Number(value)


# ------------------------------------------------------------------ requests


@dataclass
class Request:
    """One request and what the API must make of it."""

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None
    role: Role = Role.OPERATOR
    # Whether the body is one the API takes (it may still be a 409 for the account's state).
    valid: Callable[[dict[str, Any]], bool] = lambda body: True
    # The event it records, and its data as the sent body says it must read back.
    event_type: str = ""
    expected: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: {}
    conflict_allowed: bool = True


@dataclass
class Moment:
    """A time, written with an offset and separator of the client's choosing."""

    utc: datetime
    offset_minutes: int
    separator: str
    zulu: str
    fraction: str

    @property
    def text(self) -> str:
        local = self.utc + timedelta(minutes=self.offset_minutes)
        if self.offset_minutes == 0 and self.zulu:
            zone = self.zulu
        else:
            sign = "-" if self.offset_minutes < 0 else "+"
            hours, minutes = divmod(abs(self.offset_minutes), 60)
            zone = f"{sign}{hours:02d}:{minutes:02d}"
        micro = f"{local.microsecond:06d}"
        fraction = {"full": f".{micro}", "trimmed": "." + (micro.rstrip("0") or "0")}.get(
            self.fraction, ""
        )
        if not fraction and local.microsecond:
            fraction = f".{micro}"
        return f"{local:%Y-%m-%d}{self.separator}{local:%H:%M:%S}{fraction}{zone}"


@st.composite
def moments(draw: st.DrawFn, now: datetime, earliest: timedelta, latest: timedelta) -> Moment:
    span = draw(st.integers(int(earliest.total_seconds() * 1e6), int(latest.total_seconds() * 1e6)))
    return Moment(
        now + timedelta(microseconds=span),
        draw(st.sampled_from([0, 0, 330, -480, 14 * 60, -(12 * 60), 59, -1439])),
        draw(st.sampled_from(["T", "t", " "])),
        draw(st.sampled_from(["Z", "z", ""])),
        draw(st.sampled_from(["full", "trimmed", "none"])),
    )


def _time(body: dict[str, Any], name: str) -> datetime | None:
    """The UTC instant of the time the body gives (as its text was written)."""
    text = body.get(name)
    if text is None:
        return None
    return datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))


@st.composite
def violation_bodies(draw: st.DrawFn, account_id: str, now: datetime) -> dict[str, Any]:
    body: dict[str, Any] = {
        "account_id": account_id,
        "category": draw(st.sampled_from(["spam"] * 6 + sorted(CATEGORIES) + ["Spam"])),
    }
    return with_some(
        draw,
        body,
        severity=optional(st.sampled_from(["low", "medium", "high", "critical", "urgent"])),
        key_id=optional(texts_up_to(200)),
        occurred_at=optional(
            moments(now, timedelta(days=-40), timedelta(minutes=10)).map(lambda m: m.text)
        ),
        source=optional(texts_up_to(200)),
        detection=st.sampled_from(["automated", "human_review", "user_report"] * 2 + ["bot"]),
        evidence_ref=optional(texts_up_to(2048)),
        description=optional(texts_up_to(4000)),
    )


def violation_is_valid(now: datetime) -> Callable[[dict[str, Any]], bool]:
    def valid(body: dict[str, Any]) -> bool:
        occurred = _time(body, "occurred_at")
        return (
            body["category"] in CATEGORIES
            and body.get("severity") in (None, "low", "medium", "high", "critical")
            and body.get("detection", "automated") in ("automated", "human_review", "user_report")
            and (body.get("key_id") is None or is_key_id(body["key_id"]))
            and all(
                body.get(name) is None or is_text(body[name], limit)
                for name, limit in (("source", 200), ("evidence_ref", 2048), ("description", 4000))
            )
            and (occurred is None or occurred <= now + timedelta(minutes=5))
        )

    return valid


def violation_data(body: dict[str, Any]) -> dict[str, Any]:
    return {
        "category": body["category"],
        "reported_severity": body.get("severity"),
        "key_id": body.get("key_id"),
        "source": body.get("source"),
        "detection": body.get("detection", "automated"),
        "evidence_ref": body.get("evidence_ref"),
        "description": body.get("description"),
    }


def text_valid(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda body: is_text(body[name], 4000)


def in_future(body: dict[str, Any], name: str, now: datetime) -> bool:
    """Whether the body's time ``name`` is absent or after ``now``."""
    moment = _time(body, name)
    return moment is None or moment > now


KINDS = [
    "violation", "batch", "abuse report", "throttle", "suspend", "limits", "key limits",
    "adult content", "dismiss", "complete remediation", "triage", "appeal", "terminate",
]  # fmt: skip
APPEALABLE = ("RemediationRequested", "ThrottleApplied", "AccountSuspended")
# What a request of these kinds needs the account's events to hold.
NEEDS = {
    "dismiss": ("ViolationReported",),
    "complete remediation": ("RemediationRequested",),
    "triage": ("AbuseReportReceived",),
    "appeal": APPEALABLE,
}
REPORT_TEXTS = (("description", 4000), ("reporter_contact", 320), ("evidence_ref", 2048))


@st.composite
def requests(
    draw: st.DrawFn, kind: str, account_id: str, now: datetime, events: list[dict[str, Any]]
) -> Request:
    """A request of ``kind`` for the account, given the events it has so far."""
    base = f"/v1/accounts/{account_id}"
    last = {e["type"]: e for e in events}
    future = moments(now, timedelta(minutes=-10), timedelta(days=400)).map(lambda m: m.text)
    reason = draw(texts_up_to(4000))

    if kind == "violation":
        return Request(
            kind,
            "POST",
            "/v1/violations",
            draw(violation_bodies(account_id, now)),
            Role.REPORTER,
            valid=violation_is_valid(now),
            event_type="ViolationReported",
            expected=violation_data,
            conflict_allowed=False,
        )
    if kind == "batch":
        items = draw(st.lists(violation_bodies(account_id, now), min_size=1, max_size=3))
        return Request(kind, "POST", "/v1/violations:batch", {"violations": items}, Role.REPORTER)
    if kind == "abuse report":
        body = with_some(
            draw,
            {"reported_account_id": account_id, "category": "spam"},
            **{name: optional(texts_up_to(limit)) for name, limit in REPORT_TEXTS},
        )
        return Request(
            kind,
            "POST",
            "/v1/abuse-reports",
            body,
            Role.REPORTER,
            valid=lambda b: all(b.get(n) is None or is_text(b[n], m) for n, m in REPORT_TEXTS),
            event_type="AbuseReportReceived",
            expected=lambda b: {
                "description": b.get("description") or "",
                "reporter_contact": b.get("reporter_contact"),
                "evidence_ref": b.get("evidence_ref"),
            },
            conflict_allowed=False,
        )
    if kind == "throttle":
        body = with_some(
            draw,
            {"factor": Number(draw(factors)), "reason": reason, "notify": draw(st.booleans())},
            key_id=optional(texts_up_to(200)),
            expires_at=optional(future),
        )
        return Request(
            kind,
            "POST",
            f"{base}/throttles",
            body,
            valid=lambda b: (
                is_factor(b["factor"])
                and is_text(b["reason"], 4000)
                and (b.get("key_id") is None or is_key_id(b["key_id"]))
                and in_future(b, "expires_at", now)
            ),
            event_type="ThrottleApplied",
            expected=lambda b: {
                "factor": float(b["factor"]),
                "key_id": b.get("key_id"),
                "reason": b["reason"],
                "expires_at": shown_time(b, "expires_at"),
            },
        )
    if kind == "suspend":
        body = with_some(
            draw, {"reason": reason, "notify": draw(st.booleans())}, until=optional(future)
        )
        return Request(
            kind,
            "POST",
            f"{base}/suspend",
            body,
            valid=lambda b: is_text(b["reason"], 4000) and in_future(b, "until", now),
            event_type="AccountSuspended",
            expected=lambda b: {"reason": b["reason"], "until": shown_time(b, "until")},
        )
    if kind in ("limits", "key limits"):
        body = {"requests_per_minute": count_numbers(draw), "tokens_per_day": count_numbers(draw)}
        key_id = draw(texts_up_to(200)) if kind == "key limits" else None
        if key_id is not None and not is_key_id(key_id) and len(key_id) <= 200:
            # No path holds them (tests/integration/test_api_inputs.py): a path is UTF-8, the
            # router stops at a newline, and a client resolves "." and ".." as steps.
            key_id = "k"
        keys = "" if key_id is None else f"/keys/{quote(key_id, safe='')}"
        return Request(
            kind,
            "PUT",
            f"{base}{keys}/limits",
            body,
            valid=lambda b: (
                is_count(b["requests_per_minute"], 10_000_000)
                and is_count(b["tokens_per_day"], 10**15)
                and (key_id is None or is_key_id(key_id))
            ),
            event_type="RateLimitsConfigured",
            expected=lambda b: {
                "key_id": key_id,
                "requests_per_minute": int(b["requests_per_minute"]),
                "tokens_per_day": int(b["tokens_per_day"]),
            },
        )
    if kind == "adult content":
        return Request(
            kind,
            "PUT",
            f"{base}/adult-content-approval",
            {"approved": draw(st.booleans()), "reason": reason},
            valid=text_valid("reason"),
            event_type="AdultContentApprovalChanged",
            expected=lambda b: {"approved": b["approved"], "reason": b["reason"]},
        )
    if kind == "triage":
        report_id = last["AbuseReportReceived"]["data"]["report_id"]
        return Request(
            kind,
            "POST",
            f"{base}/abuse-reports/{report_id}/triage",
            {"outcome": draw(st.sampled_from(["confirmed", "rejected", "maybe"]))},
            valid=lambda b: b["outcome"] in ("confirmed", "rejected"),
            event_type="AbuseReportTriaged",
            expected=lambda b: {"outcome": b["outcome"]},
        )
    if kind == "appeal":
        decision = draw(st.sampled_from([e for e in events if e["type"] in APPEALABLE]))
        return Request(
            kind,
            "POST",
            f"{base}/appeals",
            {"decision_event_id": decision["event_id"], "statement": reason},
            valid=text_valid("statement"),
            event_type="AppealFiled",
            expected=dict,
        )
    # A command whose body is one text: dismiss, complete a remediation, terminate.
    if kind == "dismiss":
        violation_id = last["ViolationReported"]["data"]["violation_id"]
        path, name, event_type = (
            f"violations/{violation_id}/dismiss",
            "reason",
            "ViolationDismissed",
        )
    elif kind == "complete remediation":
        remediation_id = last["RemediationRequested"]["data"]["remediation_id"]
        path, name = f"remediations/{remediation_id}/complete", "note"
        event_type = "RemediationCompleted"
    else:
        path, name, event_type = "terminate", "reason", "AccountTerminated"
    return Request(
        kind,
        "POST",
        f"{base}/{path}",
        {name: reason, "notify": draw(st.booleans())} if kind == "terminate" else {name: reason},
        valid=text_valid(name),
        event_type=event_type,
        expected=lambda b: {name: b[name]},
    )


def shown_time(body: dict[str, Any], name: str) -> str | None:
    """The body's time ``name`` as events show times (UTC, microseconds, ``Z``), or None."""
    moment = _time(body, name)
    return None if moment is None else format_time(moment.astimezone(UTC))


# ------------------------------------------------------------------ the auditor


@dataclass
class Api:
    system: Container
    client: TestClient
    clock: FakeClock
    tmp: Path
    headers: dict[Role, dict[str, str]]
    taken: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)


@pytest.fixture
def api(system: Container, clock: FakeClock, tmp_path: Path) -> Iterator[Api]:
    with TestClient(create_app(system)) as client:
        headers = {
            role: {"Authorization": f"Bearer {create_token(system.engine, role, role.value)}"}
            for role in Role
        }
        yield Api(system, client, clock, tmp_path, headers)


def served_events(api: Api, account_id: str) -> list[dict[str, Any]]:
    """The account's events, page by page, as the auditor's ``json.loads`` reads them."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = api.client.get(
            f"/v1/accounts/{account_id}/events",
            params={"after_version": after, "limit": 4},
            headers=api.headers[Role.AUDITOR],
        )
        assert response.status_code == 200, response.text
        page = json.loads(response.content.decode("utf-8"))
        events += page["events"]
        if page["next_after_version"] is None:
            return events
        after = page["next_after_version"]


def audit(api: Api, account_id: str) -> list[dict[str, Any]]:
    """Everything an auditor checks of one account; returns its events as served."""
    auditor = api.headers[Role.AUDITOR]
    events = served_events(api, account_id)
    if not events:
        return events
    # The contract's recipe, from the served JSON alone, to the head the service reports.
    heads = check_chains(events)
    assert heads == {account_id: (len(events), events[-1]["hash"])}
    verified = api.client.get(f"/v1/accounts/{account_id}/verify", headers=auditor).json()
    assert verified == {"ok": True, "events": len(events), "head_hash": events[-1]["hash"]}
    assert api.system.store.verify(account_id).ok  # what `enforcement verify` runs

    # The feed serves the same events.
    feed = api.client.get(
        "/v1/events",
        params={"after_position": events[0]["position"] - 1, "limit": 1000},
        headers=auditor,
    )
    assert [e for e in feed.json()["events"] if e["account_id"] == account_id] == events

    # `enforcement export --format jsonl`: the same events, one line each, which the auditor's
    # script reads back and recomputes.
    lines = list(export_lines(api.system.store, "jsonl", account=account_id))
    assert [json.loads(line) for line in lines] == events
    exported = api.tmp / f"{account_id}.jsonl"
    exported.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    with contextlib.redirect_stdout(io.StringIO()) as said:
        # ("--": an account id may start with "-", which would read as an option)
        assert verify_account.main(["--file", str(exported), "--", account_id]) == 0
    assert f"{len(events)} events intact, head hash {events[-1]['hash']}." in said.getvalue()

    # `enforcement replay --account`: the same stored standing, the same answers.
    standing = api.client.get(f"/v1/accounts/{account_id}/standing", headers=auditor).json()
    stored = all_stored_rows(api.system, account_id)
    rebuild_standings(api.system.store, api.system.standings, account=account_id, jobs=1)
    assert all_stored_rows(api.system, account_id) == stored
    again = api.client.get(f"/v1/accounts/{account_id}/standing", headers=auditor).json()
    assert again == standing
    assert_account_consistent(api.system, account_id)
    return events


def check_error(response: Any, status: int | tuple[int, ...]) -> None:
    """One of ``status``, with the contract's error body (``assert_error``)."""
    statuses = (status,) if isinstance(status, int) else status
    assert response.status_code in statuses, response.text
    assert_error(response, response.status_code)


def send(api: Api, request: Request, text: str, key: str | None = None) -> Any:
    headers = {**api.headers[request.role], "Content-Type": "application/json"}
    if key is not None:
        headers["Idempotency-Key"] = key
    return api.client.request(
        request.method, request.path, content=text.encode("utf-8"), headers=headers
    )


def exercise(
    api: Api, account_id: str, request: Request, text: str, resend: str | None
) -> list[dict[str, Any]]:
    """Send one request and check the answer against the model; returns the events the
    answer shows as recorded."""
    before = api.system.store.head(account_id).version
    body = json.loads(text)  # what the body says, read as Python's parser reads it
    key = f"key-{uuid.uuid4().hex}" if resend is not None else None
    response = send(api, request, text, key)
    assert response.status_code != 500, response.text

    if request.kind == "batch":
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        valid = violation_is_valid(api.clock())
        recorded = []
        for item, result in zip(body["violations"], results, strict=True):
            if valid(item):
                assert result["status"] == 201, (item, result)
                reported = [e for e in result["events"] if e["type"] == "ViolationReported"]
                assert {k: reported[0]["data"][k] for k in violation_data(item)} == violation_data(
                    item
                )
                recorded += result["events"]
                api.taken[request.kind] += 1
            else:
                assert result["status"] == 422, (item, result)
                assert result["violation_id"] is None and "events" not in result
                api.refused[request.kind] += 1
        return recorded

    if not request.valid(body):
        # (A time in the past is the use case's to refuse: after a state that refuses the
        # command whatever its body, 409.)
        check_error(response, (422, 409) if request.conflict_allowed else 422)
        assert api.system.store.head(account_id).version == before
        api.refused[request.kind] += 1
        return []
    if response.status_code == 409 and request.conflict_allowed:
        check_error(response, 409)
        assert api.system.store.head(account_id).version == before
        return []
    assert response.status_code in (200, 201, 202), (body, response.text)
    api.taken[request.kind] += 1
    answer = response.json()
    if request.kind == "abuse report":  # answered with its id alone: its event is in the log
        [filed] = [event_to_json(e) for e in api.system.store.read_stream(account_id, before)]
        assert filed["data"]["report_id"] == answer["report_id"]
        recorded = [filed]
    else:
        recorded = answer["events"]
    [event] = [e for e in recorded if e["type"] == request.event_type][:1]
    expected = request.expected(body)
    assert {k: event["data"][k] for k in expected} == expected
    if request.kind == "violation" and body.get("occurred_at") is not None:
        assert event["occurred_at"] == shown_time(body, "occurred_at")
    if resend is not None:  # the same key again: nothing new, whatever the body
        again = send(api, request, resend, key)
        resent = json.loads(resend)
        if resent == body:  # the same request, written otherwise: its events
            assert again.status_code == 200, again.text
            if request.kind == "abuse report":
                assert again.json() == answer  # its report_id
            else:
                assert again.json()["events"] == recorded
        else:  # another number (``{x:E}`` keeps 7 digits): another request, or none valid
            check_error(again, 409 if request.valid(resent) else 422)
        assert api.system.store.head(account_id).version == before + len(recorded)
    return [] if request.kind == "abuse report" else list(recorded)


EXAMPLES = int(os.environ.get("ENFORCEMENT_AUDIT_EXAMPLES", "40"))


def test_every_request_is_refused_whole_or_recomputes_from_what_is_served(
    api: Api, database_url: str
) -> None:
    @given(data=st.data())
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same examples on every run: CI is not a lottery
        suppress_health_check=list(HealthCheck),
    )
    def history(data: st.DataObject) -> None:
        now = api.clock.advance(timedelta(seconds=1))
        prefix = data.draw(st.from_regex(r"[A-Za-z0-9._:-]{0,12}", fullmatch=True))
        account_id = f"{prefix}_{uuid.uuid4().hex}"  # a new account each example
        answered: list[dict[str, Any]] = []
        # A report first (most decisions need one), then other kinds in an order of its own,
        # each when the account's events allow it.
        order = ["violation", *data.draw(st.permutations(KINDS), label="order")]
        budget = data.draw(st.integers(2, 6), label="requests")
        for kind in order:
            events = [event_to_json(e) for e in api.system.store.read_stream(account_id)]
            if kind in NEEDS and not any(e["type"] in NEEDS[kind] for e in events):
                continue
            budget -= 1
            if budget < 0:
                break
            request = data.draw(requests(kind, account_id, now, events))
            text = data.draw(written(request.body))
            name = data.draw(st.sampled_from([None] * 60 + sorted(BREAKS)), label="break")
            if name is not None:
                status, breaking = BREAKS[name]
                before = api.system.store.head(account_id).version
                check_error(send(api, request, breaking(text)), status)
                assert api.system.store.head(account_id).version == before
                api.refused[f"break: {name}"] += 1
                continue
            again = data.draw(st.sampled_from([False] * 4 + [True]), label="written again")
            resend = data.draw(written(request.body)) if again else None
            answered += exercise(api, account_id, request, text, resend)
        served = audit(api, account_id)
        by_version = {e["version"]: e for e in served}
        for event in answered:  # what each answer showed is what the auditor is served
            assert by_version[event["version"]] == event

    history()

    # The commands over the whole database: every chain intact, every exported line
    # recomputes, and a replay from nothing rebuilds the very same standings.
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(cli, list(args), env={"ENFORCEMENT_DATABASE_URL": database_url})

    accounts = list(api.system.store.account_ids())
    verified = run("verify")
    assert verified.exit_code == 0, verified.output
    assert f"{len(accounts)} of {len(accounts)} account(s) intact" in verified.stdout
    longest = max(accounts, key=lambda a: api.system.store.head(a).version)
    history_json = run("history", "--format", "json", "--", longest)
    assert history_json.exit_code == 0, history_json.output
    assert len(check_chains(json.loads(history_json.stdout))) == 1
    exported = api.tmp / "all.jsonl"
    assert run("export", "--format", "jsonl", "-o", str(exported)).exit_code == 0
    lines = [json.loads(line) for line in exported.read_text(encoding="utf-8").split("\n") if line]
    heads = check_chains(sorted(lines, key=lambda e: (e["account_id"], e["version"])))
    assert len(heads) == len(accounts)
    stored = all_stored_rows(api.system)
    with api.system.engine.begin() as conn:
        conn.execute(standing_records.delete())
        conn.execute(standings.delete())
    replayed = run("replay")
    assert replayed.exit_code == 0, replayed.output
    assert all_stored_rows(api.system) == stored

    # Not vacuous: requests were taken and refused. (That each main kind is taken at least
    # once is the test below's: here a code change that moves one answer reshuffles the
    # derandomized examples, and a kind tried a few times may be refused each time.)
    assert api.taken["violation"] > 0, (api.taken, api.refused)
    assert sum(api.taken.values()) > api.taken["violation"], (api.taken, api.refused)
    assert sum(api.refused.values()) > 0, api.refused


MAIN_KINDS = ("batch", "abuse report", "throttle", "suspend", "limits")


@pytest.mark.parametrize("kind", MAIN_KINDS)
def test_a_taken_request_of_each_main_kind_recomputes_from_what_is_served(
    api: Api, kind: str
) -> None:
    """The generated requests of the test above, of one kind after a report, kept only when
    the API takes them: every main kind is taken at least once in every run, and what it
    recorded recomputes as the auditor is served it."""

    @given(data=st.data())
    @settings(
        max_examples=2,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    def taken(data: st.DataObject) -> None:
        now = api.clock.advance(timedelta(seconds=1))
        account_id = f"main_{uuid.uuid4().hex}"
        answered: list[dict[str, Any]] = []
        for step in ("violation", kind):
            events = [event_to_json(e) for e in api.system.store.read_stream(account_id)]
            request = data.draw(requests(step, account_id, now, events))
            text = data.draw(written(request.body))
            assume(request.valid(json.loads(text)))  # the body as the API reads it
            before = api.taken[step]
            answered += exercise(api, account_id, request, text, None)
            assume(api.taken[step] > before)  # not refused for the account's state (409)
        served = audit(api, account_id)
        by_version = {e["version"]: e for e in served}
        for event in answered:
            assert by_version[event["version"]] == event

    taken()
    assert api.taken[kind] > 0, (api.taken, api.refused)
