"""A database found silent stops a request's other reports: each fails at once, not sent
(``NotSent``, HTTP 503), instead of waiting the whole answer timeout again (``UntilSilent``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from sqlalchemy.exc import OperationalError

from enforcement.service_types import Outcome
from events.database_errors import unanswered
from events.groupcommit import own_copy

# The service's logger, as before these lived apart from it.
log = logging.getLogger("enforcement.service")


class NotSent(OperationalError):
    """A report not sent: the database left one before it unanswered (HTTP 503, nothing was
    written). Its ``orig`` is the driver's timeout."""


def not_sent_for_silence(exc: BaseException) -> NotSent | None:
    """If ``exc`` found the database silent (``database_errors.unanswered``), the error for a report
    not sent because of it (HTTP 503, nothing was written); else None."""
    timeout = unanswered(exc)
    if timeout is None:
        return None
    return NotSent(
        "(not sent: the database did not answer a report before this one)", None, timeout
    )


class UntilSilent:
    """Runs one request's reports (a batch, a drain of concurrent ones) one after another until
    the database is found silent: a report that waited for it in vain (no answer within the
    answer timeout, or no connection within the connect timeout: ``database_errors.unanswered``), or
    a shared read that did. Each report after that fails at once, not sent, with a database
    error saying why (HTTP 503, nothing was written), instead of waiting as long again: N
    reports would otherwise take N timeouts, the last one's caller waiting for them all."""

    def __init__(self) -> None:
        self.error: NotSent | None = None

    def saw(self, exc: BaseException) -> None:
        """Note ``exc``, if it found the database silent (and log it, once)."""
        if self.error is None:
            self.error = not_sent_for_silence(exc)
            if self.error is not None:
                log.warning(
                    "the database did not answer (%s): this request's other reports are not sent",
                    self.error.orig,
                )

    def call(self, run: Callable[[], Outcome]) -> Outcome:
        if self.error is not None:
            raise own_copy(self.error)
        try:
            return run()
        except Exception as exc:
            self.saw(exc)
            raise
