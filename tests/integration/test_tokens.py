"""API tokens: issued in the documented form, listed and revoked by id; ``TokenAuthenticator``: a
revoked token stops working once its cache time is over, a token over 200 characters is not looked
up, and the cache is bounded."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from enforcement import tokens
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tables import api_tokens
from enforcement.tokens import (
    Principal,
    TokenAuthenticator,
    create_token,
    issue_token,
    list_tokens,
    revoke_token,
)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The authenticator's monotonic clock, set by the test."""
    now = [1000.0]
    monkeypatch.setattr(tokens, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


def test_tokens_are_issued_in_the_documented_form_listed_and_revoked_by_id(
    system: Container,
) -> None:
    """Ids are ``tok_`` and 16 hex digits (docs/operations.md); tokens are ``enf_`` and 32 random
    bytes, URL-safe."""
    issued = [
        issue_token(system.engine, role, role.value) for role in (Role.REPORTER, Role.AUDITOR)
    ]
    token = create_token(system.engine, Role.GATEWAY, "edge")
    gateway = TokenAuthenticator(system.engine).authenticate(token)
    assert gateway is not None and (gateway.name, gateway.role) == ("edge", Role.GATEWAY)
    for token_id, secret in [*issued, (gateway.token_id, token)]:
        assert re.fullmatch(r"tok_[0-9a-f]{16}", token_id), token_id
        assert re.fullmatch(r"enf_[A-Za-z0-9_-]{43}", secret), secret
    assert len({token_id for token_id, _ in issued} | {gateway.token_id}) == 3

    listed = list_tokens(system.engine)
    assert {(t.token_id, t.name, t.role) for t in listed} == {
        (issued[0][0], "reporter", "reporter"),
        (issued[1][0], "auditor", "auditor"),
        (gateway.token_id, "edge", "gateway"),
    }
    assert [t.created_at for t in listed] == sorted(t.created_at for t in listed)
    assert (
        revoke_token(system.engine, issued[0][0])
        == listed[[t.token_id for t in listed].index(issued[0][0])]
    )
    assert revoke_token(system.engine, issued[0][0]) is None
    assert revoke_token(system.engine, "tok_0000000000000000") is None
    assert {t.token_id for t in list_tokens(system.engine)} == {issued[1][0], gateway.token_id}


def test_a_remembered_principal_cannot_be_changed_by_the_request_that_got_it(
    system: Container,
) -> None:
    """The cache hands the same ``Principal`` to every request with that token."""
    authenticator = TokenAuthenticator(system.engine)
    token = create_token(system.engine, Role.REPORTER, "r")
    principal = authenticator.authenticate(token)
    assert principal is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        principal.role = Role.ADMIN  # type: ignore[misc]
    assert authenticator.cached(token) == Principal(principal.token_id, "r", Role.REPORTER)


def test_a_revoked_token_works_until_its_cache_time_is_over_and_no_longer(
    system: Container, clock: list[float]
) -> None:
    token_id, token = issue_token(system.engine, Role.AUDITOR, "audit")
    authenticator = TokenAuthenticator(system.engine)
    principal = Principal(token_id, "audit", Role.AUDITOR)
    assert authenticator.cached(token) is None
    assert authenticator.authenticate(token) == principal
    assert revoke_token(system.engine, token_id) is not None
    clock[0] = 1029.9  # within the 30 seconds of the lookup: still accepted, as documented
    assert (authenticator.cached(token), authenticator.authenticate(token)) == (principal,) * 2
    clock[0] = 1030.0
    assert (authenticator.cached(token), authenticator.authenticate(token)) == (None, None)
    assert TokenAuthenticator(system.engine).authenticate(token) is None


def test_a_token_over_200_characters_is_refused_unread(system: Container) -> None:
    authenticator = TokenAuthenticator(system.engine)
    for length, accepted in ((200, True), (201, False)):
        token = "enf_" + "x" * (length - 4)
        with system.engine.begin() as conn:
            conn.execute(
                api_tokens.insert().values(
                    token_id=f"tok_{length}",
                    name="long",
                    role=Role.REPORTER.value,
                    token_hash=hashlib.sha256(token.encode()).hexdigest(),
                    created_at=datetime.now(UTC),
                )
            )
        assert (authenticator.authenticate(token) is not None) is accepted, length
        assert (authenticator.cached(token) is not None) is accepted, length
    assert authenticator.authenticate("") is None
    # Not even hashed to look in the cache: one that somehow held them would not answer.
    remembered = (float("inf"), Principal("tok_x", "x", Role.ADMIN))
    for token in ("", "enf_" + "x" * 197):
        authenticator._cache[hashlib.sha256(token.encode()).hexdigest()] = remembered
        assert authenticator.cached(token) is None, len(token)


def test_the_cache_is_emptied_when_it_holds_more_than_10000_tokens(system: Container) -> None:
    _, token = issue_token(system.engine, Role.REPORTER, "r")
    for held, after in ((10_000, 10_001), (10_001, 1)):
        authenticator = TokenAuthenticator(system.engine)
        entry = (float("inf"), Principal("tok_x", "x", Role.REPORTER))
        authenticator._cache.update({str(n): entry for n in range(held)})
        assert authenticator.authenticate(token) is not None
        assert len(authenticator._cache) == after
