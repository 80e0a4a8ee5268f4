"""Rows of the log's statements (``events.statements``) as recorded events, and their hash
checks for ``verify``: decoded by hand, as the driver gives them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from events import fastjson
from events.chain import GENESIS_HASH, canonical_document, canonical_event, event_hash, sha256_link
from events.timefmt import format_time, parse_sqlite_time, to_utc
from events.types import RecordedEvent, VerifyResult

loads = fastjson.loads  # exactly ``json.loads``


def _row_decoder(time_of: Callable[[Any], datetime]) -> Callable[[Sequence[Any]], RecordedEvent]:
    """The ``RecordedEvent`` of a row of the statements' event columns, times by ``time_of``."""

    def decode(r: Sequence[Any]) -> RecordedEvent:
        return RecordedEvent(
            r[0],
            str(r[1]),
            r[2],
            r[3],
            r[4],
            r[5],
            loads(r[6]),
            loads(r[7]),
            time_of(r[8]),
            time_of(r[9]),
            r[10],
            r[11],
        )

    return decode


def _sqlite_times() -> Callable[[str], datetime]:
    """``parse_sqlite_time`` for the rows of one read, a text met just before not parsed again:
    the events of one transaction share their ``recorded_at`` (and often ``occurred_at``)."""
    last_text: str | None = None  # no text read yet (an empty text is parsed, and refused)
    last = _EPOCH

    def parse(text: str) -> datetime:
        nonlocal last_text, last
        if text != last_text:
            last = parse_sqlite_time(text)
            last_text = text
        return last

    return parse


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_event_from_sqlite = _row_decoder(parse_sqlite_time)
_event_from_postgres = _row_decoder(to_utc)


def decoder(postgres: bool) -> Callable[[Sequence[Any]], RecordedEvent]:
    """The row decoder for one read (``_row_decoder``)."""
    return _event_from_postgres if postgres else _row_decoder(_sqlite_times())


def sqlite_row_matches(prev: str, r: Sequence[Any]) -> bool:
    """Whether a row of ``Statements.verify`` on SQLite has the hash of its content, recomputed
    on the row as readers decode it: for the rows ``verify_sqlite_rows`` does not accept by
    splicing their stored texts (another shape, or a splice that does not match)."""
    try:
        event = _event_from_sqlite(r)
        expected: str = r[11]
        return event_hash(prev, event) == expected
    except (ValueError, TypeError, RecursionError):
        return False  # readers cannot decode it either (appends refuse such values)


_sha256 = hashlib.sha256
_quote = json.encoder.c_encode_basestring or json.encoder.encode_basestring  # type: ignore[attr-defined]


def verify_sqlite_rows(rows: Iterable[Sequence[Any]]) -> VerifyResult:
    """``verify_links`` over one stream's ``Statements.verify`` rows on SQLite, the usual row's
    check written out in the loop (about a quarter faster than through ``verify_links``'
    callbacks).

    A row with the exact shapes this store writes (canonical JSON text, validated as whole JSON
    values by SQLite, and times in SQLAlchemy's format) is hashed with its stored texts spliced
    in, exactly as ``canonical_event`` joins them. A match means the stored texts are byte for
    byte the canonical texts once hashed, so readers, who parse them, get exactly what was
    hashed. Any other row, or one whose splice does not match, is decided by
    ``sqlite_row_matches``: the recipe on the row as readers decode it
    (``tests/integration/test_store_verify_sqlite.py`` compares the two ways).
    """
    prev = GENESIS_HASH
    count = 0
    sha, quote = _sha256, _quote
    for r in rows:
        count += 1
        (
            _,
            event_id,
            account_id,
            version,
            type_,
            schema_version,
            data,
            metadata,
            occurred,
            recorded,
            prev_hash,
            stored,
            plain,
        ) = r
        if version != count:
            return VerifyResult(
                False, count, None, count, f"version {version} found where {count} was expected"
            )
        if prev_hash != prev:
            return VerifyResult(
                False, count, None, version, "prev_hash does not match the previous event's hash"
            )
        if not (
            plain
            and type(event_id) is str
            and type(account_id) is str
            and type(version) is int
            and type(type_) is str
            and type(schema_version) is int
            and type(data) is str
            and type(metadata) is str
            and type(occurred) is str
            and type(recorded) is str
            and len(occurred) == 26
            and len(recorded) == 26
            and occurred[10] == " "
            and recorded[10] == " "
            and sha(
                (
                    f'{prev}{{"account_id":{quote(account_id)},"data":{data},'
                    f'"event_id":{quote(event_id)},"metadata":{metadata},'
                    f'"occurred_at":{quote(occurred[:10] + "T" + occurred[11:] + "Z")},'
                    f'"recorded_at":{quote(recorded[:10] + "T" + recorded[11:] + "Z")},'
                    f'"schema_version":{schema_version},"type":{quote(type_)},'
                    f'"version":{version}}}'
                ).encode()
            ).hexdigest()
            == stored
        ) and not sqlite_row_matches(prev, r):
            return VerifyResult(
                False, count, None, version, "hash does not match the event's content"
            )
        prev = stored
    return VerifyResult(True, count, prev if count else GENESIS_HASH)


def _postgres_time_text(text: Any, moment: datetime | None) -> str:
    """``format_time(moment)``, given ``text``, the time ``to_char``'d with ``_PG_TIME_FORMAT``.

    The two agree for years 1000 to 9999 AD; ``format_time`` writes other years differently.
    ``moment`` None: a time no datetime holds (infinite, BC, after 9999), which no append
    wrote; its text, or none, never matches a hash.
    """
    if type(text) is str and len(text) == 29 and text[0] != "0" and text[27:] == "AD":
        return text[:27]
    if moment is None:
        return text if type(text) is str else ""
    return format_time(moment)


def postgres_row_matches(prev: str, r: Sequence[Any]) -> bool:
    """Whether a row of ``Statements.verify`` on PostgreSQL has the hash of its content.

    Its documents come as ``jsonb``'s text: canonically written, they are what readers (who
    parse that same text) get. The times are the recipe's text (``_postgres_time_text``).
    """
    expected: str = r[11]
    try:
        data = _canonical_from_text(r[6], canonical_document)
        metadata = _canonical_from_text(r[7], canonical_document)
    except RecursionError:
        return False  # nested deeper than any append writes: readers cannot decode it either
    return (
        sha256_link(
            prev,
            canonical_event(
                r[1],
                r[2],
                r[3],
                r[4],
                r[5],
                data,
                metadata,
                _postgres_time_text(r[8], r[12]),
                _postgres_time_text(r[9], r[13]),
            ),
        )
        == expected
    )


_canonical_from_text = fastjson.canonical_from_text
