"""``POST /v1/violations`` answered the short way (``api.shortcuts.ReportShortcut``) and the
usual way (FastAPI's route) alike, for generated requests, valid and not.

Two systems get the same requests in the same order: one whose tokens (one of each role) are
cached, so that its usual requests take the shortcut, and one whose tokens never are, so that
every request takes the route (as with a token not yet cached). Each request must get the same
status, body and headers from both, and leave the same events and idempotency keys behind, up
to the ids each system made itself (event, violation, notice ... ids, hashes and generated
request ids, each named by the order of its first appearance).

A few seconds in the suite (40 examples); SHORTCUT_EXAMPLES=4000 searches for some 7 minutes."""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_service_support import T0, FakeClock, open_system

from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.policy import CATEGORIES
from enforcement.roles import Role
from enforcement.tokens import create_token
from events.schema import idempotency_keys
from events.wire import event_to_json
from tests.conftest import MigratedTemplates

EXAMPLES = int(os.environ.get("SHORTCUT_EXAMPLES", "40"))

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
# A small pool of keys: the same key comes back with the same request (a replay) and with
# another (reused).
idempotency_keys_sent = st.one_of(
    st.none(),
    st.sampled_from([b"k1", b"k2", "clé".encode()]),
    st.sampled_from(
        [
            b"",
            b"k" * 200,
            b"k" * 201,
            ("é" * 200).encode(),
            ("é" * 201).encode(),
            ("\U0001d54f" * 200).encode(),
            ("\U0001d54f" * 201).encode(),
            b"\xe9t\xe9",  # Latin-1: not UTF-8
            b"a\x00b",
            b"a\x01b",
            b"batch:" + b"a" * 64,
            b"notice-delivered:x",
            b"gate:42",
            b" spaced ",
        ]
    ),
)


@dataclass(frozen=True)
class Call:
    body: bytes
    content_type: str | None
    key: bytes | None
    request_id: str | None  # sent as X-Request-Id (the same to both), or none
    caller: Role | None  # whose token (an unknown one: None)
    scheme: str | None  # how Authorization spells it (none sent: None)


calls = st.builds(
    Call,
    bodies(),
    content_types,
    idempotency_keys_sent,
    st.one_of(st.none(), st.from_regex(r"req_h[0-9]{1,6}", fullmatch=True)),
    st.sampled_from(
        [*[Role.REPORTER] * 6, Role.ADMIN, Role.OPERATOR, Role.AUDITOR, Role.GATEWAY, None]
    ),
    st.sampled_from([*["Bearer "] * 8, "bearer ", "Bearer  ", None]),
)
# Each step: a new request, or one of the example's earlier ones again (by its index).
scripts = st.lists(calls | st.integers(0, 3), min_size=1, max_size=4)

# ---------------------------------------------------------------- the two systems

# Ids each system makes itself: ``vio_<hex>`` ..., event ids, hashes, generated request ids.
_MADE_ID = re.compile(
    r"[a-z]{3}_[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
    r"|[0-9a-f]{64}"
)


@dataclass
class Side:
    """One system, its client and tokens, and the ids it made (in order of appearance)."""

    system: Container
    client: TestClient
    tokens: dict[Role, str]  # a token of each role, named after it
    names: dict[str, str] = field(default_factory=dict)

    def same(self, value: Any) -> Any:
        """``value`` with each id this system made named by the order it first appeared."""
        if isinstance(value, str):
            return _MADE_ID.sub(
                lambda m: self.names.setdefault(m[0], f"<{len(self.names)}>"), value
            )
        if isinstance(value, dict):
            return {k: self.same(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.same(v) for v in value]
        return value

    def send(self, call: Call) -> Any:
        """The answer to ``call``: its status, body and headers."""
        headers: list[tuple[str, str | bytes]] = []
        if call.scheme is not None:
            token = self.tokens[call.caller] if call.caller is not None else "enf_unknown"
            headers.append(("Authorization", call.scheme + token))
        if call.content_type is not None:
            headers.append(("Content-Type", call.content_type))
        if call.request_id is not None:
            headers.append(("X-Request-Id", call.request_id))
        if call.key is not None:
            headers.append(("Idempotency-Key", call.key))  # its octets, as sent
        response = self.client.post("/v1/violations", content=call.body, headers=headers)
        try:
            body = response.json()
        except ValueError:
            body = response.text
        return self.same((response.status_code, body, sorted(response.headers.multi_items())))

    def recorded(self) -> Any:
        """Every event and idempotency key recorded."""
        with self.system.engine.connect() as conn:
            keys = conn.execute(sa.select(idempotency_keys).order_by(idempotency_keys.c.key))
            rows = [dict(row._mapping) for row in keys]
        return self.same(([event_to_json(e) for e in self.system.store.read_all()], rows))


@contextmanager
def two_sides(directory: Path, templates: MigratedTemplates) -> Iterator[tuple[Side, Side]]:
    """Fresh systems: the shortcut's (its tokens cached) and the route's (never cached)."""
    with ExitStack() as stack:
        made = []
        for name in ("shortcut", "route"):
            url = templates.sqlite(directory / f"{name}.db")
            system = stack.enter_context(open_system(url, FakeClock()))
            client = TestClient(create_app(system), raise_server_exceptions=False)
            stack.enter_context(client)
            tokens = {role: create_token(system.engine, role, role.value) for role in Role}
            made.append(Side(system, client, tokens))
        shortcut, route = made
        for token in shortcut.tokens.values():
            shortcut.system.tokens.authenticate(token)  # cached
        route.system.tokens.cached = lambda token: None  # type: ignore[method-assign]
        yield shortcut, route


USUAL = Call(
    b'{"account_id": "acct_a", "category": "spam"}',
    "application/json",
    None,
    None,
    Role.REPORTER,
    "Bearer ",
)
# Whatever is drawn, both ways are compared: the shortcut's answer with a key of UTF-8 text,
# and the use case's refusal (a time too far ahead); the route's answer of another type.
EITHER_WAY = [
    replace(USUAL, key="clé".encode()),
    replace(
        USUAL,
        body=b'{"account_id": "acct_a", "category": "spam", "occurred_at": "2026-11-24T10:05:01Z"}',
    ),
    replace(USUAL, content_type="text/plain"),
]


def test_every_request_is_answered_and_recorded_alike_whichever_way_it_takes(
    tmp_path: Path, migrated_templates: MigratedTemplates, answered: list[bool]
) -> None:
    taken: Counter[bool] = Counter()  # whether the shortcut answered, on its own system

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(scripts)
    @example(EITHER_WAY)
    def check(script: list[Call | int]) -> None:
        sent: list[Call] = []
        with (
            tempfile.TemporaryDirectory(dir=tmp_path) as directory,
            two_sides(Path(directory), migrated_templates) as (short, route),
        ):
            for step in script:
                call = step if isinstance(step, Call) else sent[step % len(sent)] if sent else None
                if call is None:
                    continue
                sent.append(call)
                del answered[:]
                answer = short.send(call)
                took = answered != [False]  # (nothing: it raised, to ServerErrorMiddleware)
                del answered[:]
                assert route.send(call) == answer, f"{'shortcut' if took else 'route'}: {call}"
                assert answered == [False], "the route's system took the shortcut"
                assert route.recorded() == short.recorded(), call
                taken[took] += 1

    check()
    assert taken[True] and taken[False], taken  # both ways were compared
