"""A caller's idempotency key may not have the shape of one the service builds itself
(``enforcement.api.schemas.is_reserved_key``): each of those, built by the functions that build
them, is reserved; a key that only looks alike is the caller's."""

from __future__ import annotations

from hashlib import sha256

import pytest

from enforcement.api.routes.reporting import batch_item_key
from enforcement.api.schemas import is_reserved_key
from enforcement.gatekeeping import gate_report_key
from enforcement.notices.delivery import delivered_key, failed_key, undeliverable_key

NOTICE = "0190c0de-0000-7000-8000-000000000001"
BATCH = batch_item_key("header", "f" * 64, 0)


@pytest.mark.parametrize(
    "key",
    [
        delivered_key(NOTICE, "email"),
        delivered_key(NOTICE, "webhook"),
        failed_key(NOTICE, "webhook", 3),
        undeliverable_key(NOTICE),
        gate_report_key("sustained_abuse", "acct_1", 2_900_000),
        gate_report_key("rate_limit_circumvention", "acct_1", 2_900_000),
        BATCH,
    ],
)
def test_every_key_the_service_builds_is_reserved(key: str) -> None:
    assert is_reserved_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "batch:2026-12-05",
        BATCH + "x",  # longer than a batch item's key
        BATCH[:-1],  # shorter
        BATCH + "\n",
        BATCH.upper(),
        "gate:42",
        "gate:spam:acct_1:1",
        "notice-board",
        "my-" + delivered_key(NOTICE, "email"),
    ],
)
def test_a_key_that_only_looks_alike_is_the_callers(key: str) -> None:
    assert not is_reserved_key(key)


def test_the_notice_keys_keep_the_shape_the_log_holds() -> None:
    """They are recorded with every delivery outcome: a key of another shape would not find
    those an earlier version recorded (a notice delivered before an upgrade sent again)."""
    assert delivered_key(NOTICE, "email") == f"notice-delivered:{NOTICE}:email"
    assert failed_key(NOTICE, "webhook", 3) == f"notice-failed:{NOTICE}:webhook:3"
    assert undeliverable_key(NOTICE) == f"notice-undeliverable:{NOTICE}"


def test_a_batch_items_key_keeps_the_shape_the_log_holds() -> None:
    """A batch retried under its header after an upgrade must find the keys an earlier version
    recorded for its items: the key is the hash of the compact JSON of header, fingerprint and
    occurrence, however the header is written (non-ASCII escaped)."""
    text = '["h\\u00e9ader","' + "f" * 64 + '",2]'
    assert batch_item_key("héader", "f" * 64, 2) == "batch:" + sha256(text.encode()).hexdigest()
