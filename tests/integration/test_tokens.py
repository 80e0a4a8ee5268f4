"""``TokenAuthenticator``: a revoked token stops working once its cache time is over, a token over
200 characters is not looked up, and the cache is bounded."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from enforcement import tokens
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tables import api_tokens
from enforcement.tokens import Principal, TokenAuthenticator, issue_token, revoke_token


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The authenticator's monotonic clock, set by the test."""
    now = [1000.0]
    monkeypatch.setattr(tokens, "time", SimpleNamespace(monotonic=lambda: now[0]))
    return now


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


def test_the_cache_is_emptied_when_it_holds_more_than_10000_tokens(system: Container) -> None:
    _, token = issue_token(system.engine, Role.REPORTER, "r")
    for held, after in ((10_000, 10_001), (10_001, 1)):
        authenticator = TokenAuthenticator(system.engine)
        entry = (float("inf"), Principal("tok_x", "x", Role.REPORTER))
        authenticator._cache.update({str(n): entry for n in range(held)})
        assert authenticator.authenticate(token) is not None
        assert len(authenticator._cache) == after
