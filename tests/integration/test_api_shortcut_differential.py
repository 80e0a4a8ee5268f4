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

import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from api_support import ApiSystem, api_system, bodies, content_types
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_service_support import FakeClock

from enforcement.roles import Role
from events.schema import idempotency_keys
from events.wire import event_to_json
from tests.conftest import MigratedTemplates

EXAMPLES = int(os.environ.get("SHORTCUT_EXAMPLES", "40"))

# ---------------------------------------------------------------- the requests

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
class Side(ApiSystem):
    """One system, its client and tokens, and the ids it made (in order of appearance)."""

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
            api = stack.enter_context(api_system(url, FakeClock()))
            made.append(Side(api.system, api.client, api.tokens))
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
