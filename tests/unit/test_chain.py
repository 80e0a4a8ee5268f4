"""The per-stream hash chain (CONTRACT.md, hash recipe), without a database.

Chains are built here by an auditor's independent implementation (``hashlib`` and ``json`` over
the event as the API shows it), so these tests check ``events.chain`` against the contract, not
against itself.
"""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    GENESIS_HASH,
    RecordedEvent,
    VerifyResult,
    canonical_json,
    chain_hash,
    fastjson,
    hashed_fields,
    timefmt,
)
from events.chain import (
    canonical_document,
    canonical_event,
    document_encoder,
    event_hash,
    verify_chain,
)
from events.timefmt import (
    canonical_time,
    format_any_time,
    format_time,
    parse_sqlite_time,
    parse_time,
    stamp_of_sqlite_time,
    to_utc,
)
from tests.auditor import CONTRACT_KEYS, api_json, auditor_hash

# ---------------------------------------------------------------- the auditor's side


def build_chain(account_id: str, drafts: list[dict[str, Any]]) -> list[RecordedEvent]:
    chain, prev = [], "0" * 64
    for version, draft in enumerate(drafts, start=1):
        event = RecordedEvent(
            position=1000 + 3 * version,
            account_id=account_id,
            version=version,
            prev_hash=prev,
            hash="",
            **draft,
        )
        event = dataclasses.replace(event, hash=auditor_hash(api_json(event)))
        chain.append(event)
        prev = event.hash
    return chain


# ---------------------------------------------------------------- strategies

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=16)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=5,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=3)
metadata_objects = st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3)
zones = st.builds(
    timezone, st.timedeltas(min_value=timedelta(hours=-14), max_value=timedelta(hours=14))
)
moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=zones
)
drafts = st.fixed_dictionaries(
    {
        "event_id": st.uuids().map(str),
        "type": st.text(min_size=1, max_size=20),
        "schema_version": st.integers(min_value=1, max_value=50),
        "data": json_objects,
        "metadata": metadata_objects,
        "occurred_at": moments,
        "recorded_at": moments,
    }
)
account_ids = st.text(min_size=1, max_size=20)
chains = st.builds(build_chain, account_ids, st.lists(drafts, min_size=1, max_size=4))
long_chains = st.builds(build_chain, account_ids, st.lists(drafts, min_size=2, max_size=4))
hex_hashes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


# ---------------------------------------------------------------- properties


@settings(deadline=None)
@given(chains, zones)
def test_any_chain_built_by_the_recipe_verifies(chain: list[RecordedEvent], zone: timezone) -> None:
    result = verify_chain(chain)

    assert (result.ok, result.events) == (True, len(chain))
    assert result.head_hash == chain[-1].hash
    assert (result.broken_at_version, result.reason) == (None, None)
    # The library and an auditor compute the same hashes.
    for event in chain:
        assert sorted(hashed_fields(event)) == sorted(CONTRACT_KEYS)
        assert chain_hash(event.prev_hash, hashed_fields(event)) == event.hash
        assert auditor_hash(api_json(event)) == event.hash
    # The hash covers instants, not how a client happened to express them.
    moved = [
        dataclasses.replace(
            e,
            occurred_at=e.occurred_at.astimezone(zone),
            recorded_at=e.recorded_at.astimezone(zone),
        )
        for e in chain
    ]
    assert verify_chain(moved).ok


def different(strategy: st.SearchStrategy[Any], original: Any, key: Any = None) -> Any:
    def changes(value: Any) -> bool:
        return (key or (lambda v: v))(value) != (key or (lambda v: v))(original)

    return strategy.filter(changes)


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


MUTATIONS: dict[str, tuple[st.SearchStrategy[Any], Any]] = {
    "event_id": (st.uuids().map(str), None),
    "account_id": (account_ids, None),
    "version": (st.integers(min_value=-5, max_value=100), None),
    "type": (st.text(max_size=40), None),
    "schema_version": (st.integers(min_value=0, max_value=100), None),
    "data": (json_objects, canonical_json),
    "metadata": (metadata_objects, canonical_json),
    "occurred_at": (moments, utc_text),
    "recorded_at": (moments, utc_text),
    "prev_hash": (hex_hashes, None),
    "hash": (hex_hashes, None),
}


@settings(deadline=None)
@given(chains, st.sampled_from(sorted(MUTATIONS)), st.data())
def test_any_single_mutation_breaks_the_chain_at_that_version(
    chain: list[RecordedEvent], name: str, data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(chain) - 1), label="index")
    strategy, key = MUTATIONS[name]
    original = getattr(chain[index], name)
    value = data.draw(different(strategy, original, key), label="new value")
    tampered = list(chain)
    tampered[index] = dataclasses.replace(chain[index], **{name: value})

    result = verify_chain(tampered)

    assert not result.ok
    assert result.broken_at_version == index + 1
    assert result.reason
    assert result.events == index + 1
    assert result.head_hash is None


@settings(deadline=None, max_examples=50)
@given(long_chains, st.data())
def test_reordering_or_dropping_events_breaks_the_chain(
    chain: list[RecordedEvent], data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(chain) - 2))
    swapped = list(chain)
    swapped[index], swapped[index + 1] = swapped[index + 1], swapped[index]
    dropped = chain[:index] + chain[index + 1 :]

    assert verify_chain(swapped).broken_at_version == index + 1
    assert verify_chain(dropped).broken_at_version == index + 1


def test_an_empty_chain_verifies_with_the_zero_hash() -> None:
    result = verify_chain([])

    assert (result.ok, result.events, result.head_hash) == (True, 0, GENESIS_HASH)
    assert GENESIS_HASH == "0" * 64


# ---------------------------------------------------------------- the recipe, by example


def test_canonical_json_sorts_keys_drops_spaces_and_keeps_non_ascii() -> None:
    text = canonical_json({"b": [1, 2.5, None], "a": {"z": "Zoë — 東京 🚫", "y": True}})

    assert text == '{"a":{"y":true,"z":"Zoë — 東京 🚫"},"b":[1,2.5,null]}'


GOLDEN = RecordedEvent(
    position=17,
    event_id="9f2c1f0e-8c53-4d3b-9a55-3a6f6c0e7b21",
    account_id="acct_42",
    version=1,
    type="ViolationReported",
    schema_version=1,
    data={"category": "phishing", "severity": "high", "description": "Zoë's 東京 page"},
    metadata={"actor": "svc:mail-classifier", "source": "mail-classifier"},
    occurred_at=datetime(2026, 11, 24, 10, 0, 0, 0, tzinfo=UTC),
    recorded_at=datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC),
    prev_hash="0" * 64,
    hash="",
)
GOLDEN_CANONICAL = (
    '{"account_id":"acct_42","data":{"category":"phishing","description":"Zoë\'s 東京 page",'
    '"severity":"high"},"event_id":"9f2c1f0e-8c53-4d3b-9a55-3a6f6c0e7b21",'
    '"metadata":{"actor":"svc:mail-classifier","source":"mail-classifier"},'
    '"occurred_at":"2026-11-24T10:00:00.000000Z","recorded_at":"2026-11-24T10:00:00.123456Z",'
    '"schema_version":1,"type":"ViolationReported","version":1}'
)


# sha256_hex("0" * 64 + GOLDEN_CANONICAL): a fixed point, so any change to the recipe shows.
GOLDEN_HASH = "10d86bf0c4a4ae305576ee9b4ab0a0a389b6a4887409f4c56250db1ebf325824"


def test_a_known_event_has_the_contract_canonical_text_and_hash() -> None:
    assert canonical_json(hashed_fields(GOLDEN)) == GOLDEN_CANONICAL
    assert chain_hash(GOLDEN.prev_hash, hashed_fields(GOLDEN)) == GOLDEN_HASH
    assert auditor_hash(api_json(dataclasses.replace(GOLDEN, hash=GOLDEN_HASH))) == GOLDEN_HASH
    assert verify_chain([dataclasses.replace(GOLDEN, hash=GOLDEN_HASH)]).head_hash == GOLDEN_HASH


_GOLDEN_DRAFT = {
    name: getattr(GOLDEN, name)
    for name in ("type", "schema_version", "data", "metadata", "occurred_at", "recorded_at")
}


def test_each_kind_of_break_is_reported_whole_with_its_reason() -> None:
    """What ``verify`` answers an auditor (CONTRACT.md): not ok, the events read up to the
    break, the broken version and why, and no head hash."""
    chain = build_chain(
        "acct_42",
        [
            {**_GOLDEN_DRAFT, "event_id": f"00000000-0000-4000-8000-00000000000{n}"}
            for n in range(3)
        ],
    )
    skipped = [chain[0], dataclasses.replace(chain[1], version=3), chain[2]]
    relinked = [chain[0], dataclasses.replace(chain[1], prev_hash="f" * 64), chain[2]]
    edited = [chain[0], dataclasses.replace(chain[1], type="ViolationDismissed"), chain[2]]

    assert verify_chain(skipped) == VerifyResult(
        False, 2, None, 2, "version 3 found where 2 was expected"
    )
    assert verify_chain(relinked) == VerifyResult(
        False, 2, None, 2, "prev_hash does not match the previous event's hash"
    )
    assert verify_chain(edited) == VerifyResult(
        False, 2, None, 2, "hash does not match the event's content"
    )


@pytest.mark.parametrize("value", [7, 1.5, True, None, ["é", 2], {"k": "\u2028", "a": [1]}])
def test_the_spliced_text_is_canonical_json_whatever_a_field_holds(value: Any) -> None:
    """``canonical_event`` writes the text ``canonical_json`` would for any JSON value in any
    field, not only the strings and integers the store writes there."""
    fields = {
        "event_id": value,
        "account_id": value,
        "version": value,
        "type": value,
        "schema_version": value,
        "data": {"v": value},
        "metadata": {},
        "occurred_at": "2026-11-24T10:00:00.000000Z",
        "recorded_at": "2026-11-24T10:00:00.123456Z",
    }

    spliced = canonical_event(
        value,
        value,
        value,
        value,
        value,
        canonical_document({"v": value}),
        canonical_document({}),
        "2026-11-24T10:00:00.000000Z",
        "2026-11-24T10:00:00.123456Z",
    )

    assert spliced == canonical_json(fields)


# ---------------------------------------------------------------- the store's shortcuts


@settings(deadline=None)
@given(drafts, account_ids, st.integers(min_value=1, max_value=10**6), hex_hashes)
def test_the_spliced_canonical_text_is_canonical_json_of_the_hashed_fields(
    draft: dict[str, Any], account_id: str, version: int, prev: str
) -> None:
    event = RecordedEvent(
        position=1, account_id=account_id, version=version, prev_hash=prev, hash="", **draft
    )
    fields = hashed_fields(event)

    spliced = canonical_event(
        event.event_id,
        account_id,
        version,
        event.type,
        event.schema_version,
        canonical_document(event.data),
        canonical_document(event.metadata),
        fields["occurred_at"],
        fields["recorded_at"],
    )

    assert spliced == canonical_json(fields)
    assert event_hash(prev, event) == chain_hash(prev, fields)


@given(json_values)
def test_the_document_encoders_write_what_json_dumps_writes(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_document(value) == expected
    assert document_encoder(allow_nan=False)(value) == expected


def test_the_document_encoders_refuse_what_json_dumps_refuses() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    for encode in (canonical_document, document_encoder(allow_nan=False)):
        with pytest.raises(ValueError, match="Circular reference"):
            encode({"a": cycle})
    with pytest.raises(ValueError):
        document_encoder(allow_nan=False)({"a": float("nan")})
    # a key JSON has no text for is refused, not left out of the hashed text
    for encode in (canonical_document, document_encoder(allow_nan=False)):
        with pytest.raises(TypeError, match="keys must be"):
            encode({"a": {(1, 2): 2}})


def test_the_hashed_document_keeps_nan_and_infinity_as_canonical_json_writes_them() -> None:
    # ``canonical_json`` (the recipe) writes NaN and Infinity; the spliced text must too.
    value = {"x": [float("nan"), float("inf"), -float("inf")]}
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_document(value) == expected == '{"x":[NaN,Infinity,-Infinity]}'


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31), timezones=zones)
    | st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30))
)
def test_format_time_writes_what_strftime_writes(moment: datetime) -> None:
    expected = to_utc(moment).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_time(moment) == expected


def test_format_time_remembers_only_what_cannot_be_another_instant() -> None:
    # Two equal datetimes of one zone can be different instants (``fold``, the hour that comes
    # twice): the second is not given the first's remembered text.
    # London's second 01:30 is at offset 0, as UTC is.
    for zone, first_text, second_text in (
        ("Europe/Berlin", "2026-10-25T00:30:00.000000Z", "2026-10-25T01:30:00.000000Z"),
        ("Europe/London", "2026-10-25T00:30:00.000000Z", "2026-10-25T01:30:00.000000Z"),
    ):
        hour = 2 if zone == "Europe/Berlin" else 1
        first = datetime(2026, 10, 25, hour, 30, tzinfo=ZoneInfo(zone))
        second = first.replace(fold=1)
        assert first == second and hash(first) == hash(second)
        assert (format_time(first), format_time(second)) == (first_text, second_text)
        assert (format_time(second), format_time(first)) == (second_text, first_text)
    # A UTC instant, again and again, and past the bound of what is remembered.
    start = datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    moments = [start + timedelta(microseconds=i) for i in range(3 * timefmt._FORMATTED_MAX)]
    for _ in range(2):
        for moment in moments:
            assert format_time(moment) == moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert len(timefmt._formatted) <= timefmt._FORMATTED_MAX


# From year 1000: format_time writes earlier years unpadded, as strftime does.
@given(
    st.datetimes(min_value=datetime(1000, 1, 2), max_value=datetime(9999, 12, 30), timezones=zones)
)
def test_parse_time_reads_back_what_format_time_writes(moment: datetime) -> None:
    text = format_time(moment)
    parsed = parse_time(text)
    assert parsed == moment and parsed.tzinfo is UTC
    # The general path (an offset, surrounding space) gives the same instant.
    assert parse_time(" " + text[:-1] + "+00:00 ") == parsed


def test_format_time_writes_years_before_1000_unpadded_from_999_down() -> None:
    # The chain covers strftime's text: "999-…" unpadded, "1000-…" as written.
    assert format_time(datetime(999, 12, 31, 23, 59, 59, tzinfo=UTC)) == (
        "999-12-31T23:59:59.000000Z"
    )
    assert format_time(datetime(1000, 1, 1, tzinfo=UTC)) == "1000-01-01T00:00:00.000000Z"


def test_the_own_format_fast_paths_take_only_that_format() -> None:
    for junk in ("2026-11-24T10:00:00.000000Q", "2026-11-24T10:00:00.000000Z and more"):
        for read in (parse_time, canonical_time):
            with pytest.raises(ValueError):
                read(junk)
    # RFC 3339 texts our format's fast paths must not take as they are: a space for the "T",
    # a comma for the decimal point (ISO 8601's, which datetime reads too)
    for other in ("2026-11-24 10:00:00.000000Z", "2026-11-24T10:00:00,000000Z"):
        assert canonical_time(other) == "2026-11-24T10:00:00.000000Z"
    # Every digit of our format is checked on the fast path, the last one of the fraction too
    with pytest.raises(ValueError):
        canonical_time("2026-11-24T10:00:00.12345xZ")
    # An ISO week date has our format's length, "T" and "." too: written as the calendar date
    assert canonical_time("2026-W47-2T10:00:00.123456Z") == "2026-11-17T10:00:00.123456Z"


def test_sqlite_time_texts_read_as_utc_and_stamp_shortcut_takes_only_the_stored_shape() -> None:
    read = parse_sqlite_time("2026-11-24 10:00:00.123456")  # the stored shape: the fast path
    assert read == datetime(2026, 11, 24, 10, 0, 0, 123456, tzinfo=UTC) and read.tzinfo is UTC
    # Texts no writer of ours makes, one character either side of the stored shape's length
    for text in ("2026-11-24 10:00:00.12345", "2026-11-24 10:00:00.1234567"):
        assert stamp_of_sqlite_time(text) == format_time(parse_sqlite_time(text))


def test_a_naive_time_is_taken_as_utc_whatever_the_hosts_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Not as the host's local time, which ``astimezone`` would assume.
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        naive = datetime(2026, 11, 24, 10, 0, 0, 5)
        assert to_utc(naive) == naive.replace(tzinfo=UTC)
        assert format_time(naive) == "2026-11-24T10:00:00.000005Z"
    finally:
        monkeypatch.undo()
        time.tzset()


def test_format_any_time_pads_a_year_before_1000_and_is_format_time_otherwise() -> None:
    # 1000-01-01T00:30+01:00 is in the year 999 in UTC: the year of the UTC instant counts.
    east = timezone(timedelta(hours=1))
    assert format_any_time(datetime(1000, 1, 1, 0, 30, tzinfo=east)) == (
        "0999-12-31T23:30:00.000000Z"
    )
    assert format_any_time(datetime(999, 3, 4, 5, 6, 7, 8, tzinfo=UTC)) == (
        "0999-03-04T05:06:07.000008Z"
    )
    assert format_any_time(datetime(5, 1, 1)) == "0005-01-01T00:00:00.000000Z"  # naive: UTC
    later = datetime(2026, 11, 24, 11, 0, 0, 5, tzinfo=east)
    assert format_any_time(later) == format_time(later) == "2026-11-24T10:00:00.000005Z"


def test_parse_time_refuses_a_time_without_offset_and_one_utc_cannot_hold() -> None:
    assert parse_time("2026-11-24T10:00:00z") == datetime(2026, 11, 24, 10, tzinfo=UTC)
    # 26 characters, our own format without its "Z": no offset, so refused, not taken as UTC.
    for naive in ("2026-11-24T10:00:00.123456", "2026-11-24T10:00:00", "2026-11-24 10:00"):
        with pytest.raises(ValueError, match=f"^timestamp '{naive}' has no UTC offset; use e.g"):
            parse_time(naive)
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_time("2026-11-24T10:00:00.123456+")  # our format's length, not its "Z"
    with pytest.raises(
        ValueError, match=r"^timestamp '9999-12-31T23:59:59-01:00' is out of range in UTC$"
    ):
        parse_time("9999-12-31T23:59:59-01:00")


# ---------------------------------------------------------------- orjson where it agrees with json

# Texts and values where orjson and json part ways: big integers, floats of every formatting,
# lone surrogates, control characters, keys that sort differently by UTF-16 and by code point,
# NaN and infinities, duplicate keys, deep nesting.
wide_text = st.text(
    st.characters(codec=None, exclude_categories=()) | st.sampled_from("\x00\x1f\x7f\u2028\ud800"),
    max_size=8,
)
wide_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**65), max_value=2**65)
    | st.floats()
    | st.sampled_from([1e16, 1e-05, 1e22, 5e-324, -0.0, 1e15, 123456789012345680.0])
    | wide_text
)
wide_values = st.recursive(
    wide_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(wide_text, inner, max_size=4),
    max_leaves=12,
)
json_texts = (
    wide_values.map(lambda v: json.dumps(v))
    | wide_values.map(lambda v: json.dumps(v, ensure_ascii=False, indent=1))
    | st.sampled_from(
        [
            '{"a":1,"b":2,"a":3}',
            "123456789012345678901234567890",
            "[-9223372036854775809, 18446744073709551615, 18446744073709551616]",
            "1e400",
            "[-0, -0.0, 1E5, 1.0e-400]",
            '"\\ud800"',
            "NaN",
            "[Infinity]",
            "[" * 300 + "]" * 300,
            '{"x": "\\u0000"}',
            "\ufeff{}",
            '{"a" : [1 , 2]}\n',
            "",
            "[1,]",
        ]
    )
)


def _json_outcome(function: Any, argument: Any) -> tuple[str, Any]:
    """What ``function(argument)`` returns (with its exact types and key order), or raises."""
    try:
        value = function(argument)
    except (ValueError, RecursionError) as exc:
        return ("raises", type(exc))
    return ("returns", _exact(value))


def _exact(value: Any) -> Any:
    if type(value) is dict:
        return ("dict", [(key, _exact(item)) for key, item in value.items()])
    if type(value) is list:
        return ("list", [_exact(item) for item in value])
    if type(value) is float:
        return ("float", value.hex() if value == value else "nan")
    return (type(value).__name__, value)


@settings(max_examples=500)
@given(json_texts)
def test_fastjson_loads_is_json_loads(text: str) -> None:
    assert _json_outcome(fastjson.loads, text) == _json_outcome(json.loads, text)
    encoded = text.encode("utf-8", "surrogatepass")
    assert _json_outcome(fastjson.loads, encoded) == _json_outcome(json.loads, encoded)


# A run of exactly 19 digits, and nothing longer, as the one long number of the text: those
# below -2**63 orjson reads as floats, those up to 2**64 - 1 exactly.
@pytest.mark.parametrize(
    "text", ["-9223372036854775809", "[-9999999999999999999]", "9999999999999999999"]
)
def test_fastjson_loads_reads_19_digit_integers_as_json_does(text: str) -> None:
    assert _json_outcome(fastjson.loads, text) == _json_outcome(json.loads, text)


def _containers(value: Any) -> list[Any]:
    """Every dict and list in ``value``, outermost first."""
    if type(value) is dict:
        return [value, *(c for item in value.values() for c in _containers(item))]
    if type(value) is list:
        return [value, *(c for item in value for c in _containers(item))]
    return []


@settings(max_examples=300)
@given(wide_values)
def test_fastjson_copy_json_is_an_equal_copy_sharing_no_container(value: Any) -> None:
    copied = fastjson.copy_json(value)
    assert _exact(copied) == _exact(value)
    originals = {id(c) for c in _containers(value)}
    assert not originals & {id(c) for c in _containers(copied)}


@settings(max_examples=500)
@given(wide_values)
def test_fastjson_canonical_texts_are_json_dumps(value: Any) -> None:
    expected = _json_outcome(canonical_document, value)
    assert _json_outcome(
        lambda v: fastjson.canonical_plain(v, canonical_document), value
    ) == expected or fastjson.has_float(value)  # only float-free documents may take orjson
    text = json.dumps(value)
    assert _json_outcome(
        lambda t: fastjson.canonical_from_text(t, canonical_document), text
    ) == _json_outcome(lambda t: canonical_document(json.loads(t)), text)


@settings(max_examples=300)
@given(json_objects, metadata_objects)
def test_the_store_writes_documents_as_json_dumps_does(data: Any, metadata: Any) -> None:
    from events.types import NewEvent
    from events.writing import documents_of

    event = NewEvent("T", data, datetime(2026, 1, 1, tzinfo=UTC), metadata)
    for postgres in (False, True):
        [prepared] = documents_of([event], postgres)
        if prepared is None:  # left to the database
            continue
        data_text, metadata_text, data_copy, metadata_copy = prepared
        assert data_text == document_encoder(allow_nan=False)(data)
        assert metadata_text == document_encoder(allow_nan=False)(metadata)
        # (a flat copy keeps the caller's key order; the values and their types are the same)
        for copy, text in ((data_copy, data_text), (metadata_copy, metadata_text)):
            assert _exact(dict(sorted(copy.items()))) == _exact(json.loads(text))


def test_the_documents_readers_get_share_no_container_with_the_appended_event() -> None:
    from events.types import NewEvent
    from events.writing import documents_of

    data, metadata = {"a": {"b": [1]}, "n": 1}, {"actor": {"id": "x"}}
    event = NewEvent("T", data, datetime(2026, 1, 1, tzinfo=UTC), metadata)
    for postgres in (False, True):
        [prepared] = documents_of([event], postgres)
        assert prepared is not None
        _, _, data_copy, metadata_copy = prepared
        assert (data_copy, metadata_copy) == (data, metadata)
        assert data_copy["a"] is not data["a"]
        assert metadata_copy["actor"] is not metadata["actor"]


def test_the_idempotency_fingerprint_of_events_is_a_stable_recipe() -> None:
    """Recorded keys keep the fingerprint they were stored with: a retry after an upgrade
    must compute the same one (sha256 of the canonical JSON of each event's type, schema
    version and data), whatever its event ids, times and metadata."""
    from events.types import NewEvent
    from events.writing import fingerprint_events

    at = datetime(2026, 1, 1, tzinfo=UTC)
    events = [
        NewEvent("ViolationReported", {"account_id": "acct_42", "n": 1}, at, {"actor": "a"}),
        NewEvent("NoticeIssued", {}, at + timedelta(seconds=1)),
    ]

    assert fingerprint_events(events) == (
        "b5b31f672ec13ef9cbc5b7333fc04b4a27eee23e1e2eb78eb6ab3733288548ef"
    )
