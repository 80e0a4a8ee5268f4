"""Domain errors answer with one human sentence (CONTRACT.md: "<human sentence>"), whatever
fragment they were raised with; ``str()`` keeps the text as raised."""

from __future__ import annotations

import pytest

from enforcement.api.errors import domain_status
from enforcement.errors import (
    DomainError,
    InvalidTransition,
    NotFound,
    ValidationFailed,
    as_sentence,
)


@pytest.mark.parametrize(
    ("raised", "answered"),
    [
        ("the account is not suspended", "The account is not suspended."),
        ("no throttle 'thr_1' on this account", "No throttle 'thr_1' on this account."),
        ("Already a sentence.", "Already a sentence."),
        ("'x' is unknown", "'x' is unknown."),
        ("  padded  ", "Padded."),
        ("", ""),
    ],
)
def test_a_message_is_answered_as_a_sentence(raised: str, answered: str) -> None:
    assert as_sentence(raised) == answered


def test_the_error_keeps_its_raised_text_and_answers_a_sentence() -> None:
    error = InvalidTransition("the account is not suspended", code="not_suspended")
    assert (str(error), error.message) == (
        "the account is not suspended",
        "The account is not suspended.",
    )
    assert NotFound("no remediation 'rem_9' on this account").message.endswith("account.")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (NotFound("no such violation"), 404),
        (InvalidTransition("the account is not suspended"), 409),
        (ValidationFailed("the time is out of range"), 422),
        (DomainError("anything else"), 400),
    ],
    ids=["not-found", "conflict", "validation", "other"],
)
def test_each_kind_of_domain_error_has_its_status(error: DomainError, status: int) -> None:
    assert domain_status(error) == status
