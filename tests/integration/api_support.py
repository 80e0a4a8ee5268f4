"""Shared by the API's property tests (no tests here): ``POST /v1/violations`` bodies as a
client may send them, valid and not (``bodies``, ``content_types``), and the application
in process on a fresh system with a token of each role (``api_system``)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from fastapi.testclient import TestClient
from hypothesis import strategies as st
from test_service_support import T0, FakeClock, open_system

from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.policy import CATEGORIES
from enforcement.roles import Role
from enforcement.tokens import create_token

# ---------------------------------------------------------------- the requests

odd_text = st.one_of(
    st.text(max_size=12),
    st.text(st.characters(categories=["Cs", "Cc", "Zs", "So"]), max_size=4),
    st.sampled_from(["", " ", ".", "..", "\x00", "a\x00b", "\\", '"', "\u202e", "\U0001d54f", "é"]),
    st.sampled_from([128, 129, 200, 201, 2048, 2049, 4000, 4001]).map(lambda n: "é" * n),
)
wrong_type = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
offsets = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=1))]
)
# Times that are refused, or out of the usual range (any year, with an offset).
times = st.one_of(
    st.builds(lambda t: t.isoformat().replace("+00:00", "Z"), st.datetimes(timezones=offsets)),
    st.datetimes().map(lambda t: t.isoformat()),  # no offset
    st.sampled_from(
        [
            "9999-12-31T23:59:59-01:00",
            "0001-01-01T00:00:00+01:00",
            "2016-12-31T23:59:60Z",
            "2026-11-24",
            "2026-11-24t09:00:00z",
            "2026-11-24 09:00:00Z",
            "1969-12-31T23:59:59Z",
            "1970-01-01T00:00:00Z",
            "2026-02-30T00:00:00Z",
            "2026-11-24T09:00:00.123456789Z",
            "2026-11-24T09:00:00+24:00",
            "1764000000",
        ]
    ),
    st.integers(min_value=0, max_value=2**40),  # epoch seconds
)
valid_times = st.one_of(
    # About the fake clock's now: more than 5 minutes ahead is refused by the use case.
    st.sampled_from([0, -300, 299, 300, 301, 900]).map(
        lambda s: (T0 + timedelta(seconds=s)).isoformat().replace("+00:00", "Z")
    ),
    st.integers(-900, 900).map(lambda s: (T0 + timedelta(seconds=s)).isoformat()),
    st.builds(
        lambda t: t.isoformat().replace("+00:00", "Z"),
        st.datetimes(datetime(1970, 1, 2), datetime(2026, 11, 23), timezones=offsets),
    ),
)
# Text of no control character (a key id's), and not "." or "..".
plain_text = st.text(st.characters(categories=["L", "N", "P", "S", "Zs"]), min_size=1, max_size=10)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "account_id": st.one_of(
        st.sampled_from(["acct_a", "acct_b"]),
        st.from_regex(r"[A-Za-z0-9._:-]{1,12}", fullmatch=True),
    ),
    "category": st.sampled_from(sorted(CATEGORIES)),
    "severity": st.sampled_from([None, "low", "medium", "high", "critical"]),
    "key_id": st.one_of(st.none(), plain_text.filter(lambda t: t not in (".", ".."))),
    "occurred_at": st.one_of(st.none(), valid_times),
    "source": st.one_of(st.none(), st.text(max_size=10)),
    "detection": st.sampled_from(["automated", "human_review", "user_report"]),
    "evidence_ref": st.one_of(st.none(), st.text(max_size=10)),
    "description": st.one_of(st.none(), st.text(max_size=20)),
}
REQUIRED = ("account_id", "category")
# True one time in ten or so. (Hypothesis draws the simplest value, a choice's first, more often
# than the others: the usual case comes first.)
rarely = st.sampled_from([*[False] * 9, True])
spoiled = st.one_of(odd_text, wrong_type, times, st.sampled_from(["SPAM", "spam ", "Low"]))


@st.composite
def documents(draw: st.DrawFn) -> Any:
    """A violation as JSON, most of the time valid: each field now and then spoiled, a field
    missing or one too many; now and then not an object at all."""
    optional = [name for name in FIELDS if name not in REQUIRED]
    present = [*REQUIRED, *draw(st.lists(st.sampled_from(optional), unique=True))]
    document = {name: draw(spoiled if draw(rarely) else FIELDS[name]) for name in present}
    if draw(rarely):
        del document[draw(st.sampled_from(present))]
    if draw(rarely):
        name = draw(st.sampled_from(["extra", "idempotency_key", "Category", ""]) | st.text())
        document[name] = draw(wrong_type | odd_text)
    if draw(rarely):
        return draw(st.sampled_from([[document], {"violation": document}, None, 1, "x", True]))
    return document


def _not_strict(text: str) -> st.SearchStrategy[str]:
    """``text`` (a JSON object's text) made what strict JSON refuses, or almost."""
    head, tail = text[:1], text[1:]
    return st.sampled_from(
        [
            f'{head}"category": "spam", {tail}',  # a member named twice (if it is there)
            f'{head}"severity": NaN, {tail}',
            f'{head}"severity": Infinity, {tail}',
            f'{head}"severity": 1e999, {tail}',
            f'{head}"severity": {"9" * 5000}, {tail}',
            f'{head}"severity": 1.5, {tail}',
            text[:-1] + ",}",
            text[: len(text) // 2],
            text + " x",
            f" \n{text}\t ",
            "[" * 3000 + "]" * 3000,
            "",
        ]
    )


@st.composite
def bodies(draw: st.DrawFn) -> bytes:
    document = draw(documents())
    ascii_only = draw(st.booleans())
    text = json.dumps(document, ensure_ascii=ascii_only)
    if draw(rarely):
        text = draw(_not_strict(text))
    encoding = draw(st.sampled_from([*["utf-8"] * 17, "utf-8-sig", "utf-16", "latin-1"]))
    # JSON's lone surrogates, as they are (not UTF-8); Latin-1's missing characters as "?"
    return text.encode(encoding, "replace" if encoding == "latin-1" else "surrogatepass")


content_types = st.sampled_from(
    [
        *["application/json"] * 12,
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/json;",
        "application/merge-patch+json",
        "application/json, text/plain",
        "text/plain",
        None,
    ]
)

# ---------------------------------------------------------------- the system


@dataclass
class ApiSystem:
    """The wired system, a client of its application (a server error is answered, not
    raised) and a token of each role."""

    system: Container
    client: TestClient
    tokens: dict[Role, str]


@contextmanager
def api_system(url: str, clock: FakeClock) -> Iterator[ApiSystem]:
    """The application in process on the migrated database at ``url``, with ``clock``."""
    with open_system(url, clock) as system:
        client = TestClient(create_app(system), raise_server_exceptions=False)
        with client:
            tokens = {role: create_token(system.engine, role, role.value) for role in Role}
            yield ApiSystem(system, client, tokens)
