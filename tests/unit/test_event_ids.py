"""Event ids: RFC 9562 version 7 UUIDs in canonical text, ordered by the millisecond of making."""

from __future__ import annotations

import time
import uuid

from events.types import is_canonical_event_id, new_event_id


def test_an_event_id_is_a_canonical_version_7_uuid_of_now() -> None:
    before = time.time_ns() // 1_000_000
    text = new_event_id()
    after = time.time_ns() // 1_000_000

    parsed = uuid.UUID(text)
    assert str(parsed) == text and is_canonical_event_id(text)
    assert (parsed.version, parsed.variant) == (7, uuid.RFC_4122)
    assert before <= parsed.int >> 80 <= after  # the first 48 bits: Unix milliseconds


def test_ids_of_later_milliseconds_sort_later_and_none_repeat() -> None:
    ids = []
    for _ in range(5):
        ids += [new_event_id() for _ in range(200)]
        time.sleep(0.002)
    stamps = [uuid.UUID(i).int >> 80 for i in ids]

    assert len(set(ids)) == len(ids)
    assert stamps == sorted(stamps)
    assert sorted(ids, key=lambda i: i[:13]) == ids  # the text sorts by time as well
    assert len({uuid.UUID(i).int & ((1 << 62) - 1) for i in ids}) == len(ids)  # random tail
