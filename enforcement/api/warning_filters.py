"""The one warning the API silences for the whole process, and why.

FastAPI builds a route's parameter fields when an application answers its first requests, and
pydantic warns (``UnsupportedFieldAttributeWarning``) that the ``alias`` FastAPI gives every
parameter has no effect where FastAPI uses it. FastAPI ignores that warning inside a
``warnings.catch_warnings`` block, and enters such a block around every response it encodes as
well. Those blocks are not thread-safe: each saves the process's one filter list and puts it
back when it ends, so a block ending in one thread while another thread builds a field puts back
a list without the "ignore" FastAPI had just added, and the warning escapes (into the server's
log, or a test run's summary). A filter installed before anything serves is in every list any
block saves, whichever ends first.
"""

from __future__ import annotations

import warnings

import pydantic.warnings

# Only the alias warning: pydantic's others of its kind (another Field() attribute without
# effect) still show.
FASTAPI_ALIAS_WARNING = r"The 'alias' attribute with value .* was provided to the `Field\(\)`"


def quiet_fastapi_alias_warning() -> None:
    """Ignore, in every thread, the warning FastAPI's parameter fields provoke (see the module's
    docstring). Safe to call again: the filter is then moved to the front of the list, ahead of
    any added since (a ``-W error`` of a test run)."""
    category = getattr(pydantic.warnings, "UnsupportedFieldAttributeWarning", None)
    if category is not None:  # pydantic before 2.12 has no such warning
        warnings.filterwarnings("ignore", message=FASTAPI_ALIAS_WARNING, category=category)
