"""Domain errors: one class per kind of failure, each with a stable snake_case ``code``.

The HTTP layer maps them to statuses in one place: ``ValidationFailed`` 422, ``NotFound`` 404,
``Conflict`` (and its ``InvalidTransition``) 409. A domain error means nothing was decided and
nothing may be written.
"""

from __future__ import annotations

from typing import Any


def as_sentence(text: str) -> str:
    """``text`` as a sentence: its first letter a capital, a full stop at its end."""
    text = text.strip()
    if not text:
        return text
    if text[0].islower():
        text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else f"{text}."


class DomainError(Exception):
    """A request the domain refuses; ``message`` is one human sentence (what the API answers),
    ``str()`` the text it was raised with."""

    code = "domain_error"

    def __init__(self, message: str, *, code: str | None = None, details: Any = None) -> None:
        super().__init__(message)
        self.message = as_sentence(message)
        if code is not None:
            self.code = code
        self.details = details


class ValidationFailed(DomainError):
    """The input names something the policy does not know (e.g. a category). HTTP 422."""

    code = "validation_failed"


class NotFound(DomainError):
    """The id names nothing on this account. HTTP 404."""

    code = "not_found"


class Conflict(DomainError):
    """The request contradicts the account's current state. HTTP 409."""

    code = "conflict"


class InvalidTransition(Conflict):
    """The account's state does not allow this transition now. HTTP 409."""

    code = "invalid_transition"


class PolicyError(ValueError):
    """A policy file cannot be used; the message names the file and the offending key."""
