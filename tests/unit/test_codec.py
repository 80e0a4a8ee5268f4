"""The codec, without a database: payload classes to events and back, schema versions, upcasters."""

from __future__ import annotations

import copy
import dataclasses
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import Codec, NewEvent, RecordedEvent, UnknownEventType

T0 = datetime(2026, 11, 24, 10, 0, 0, tzinfo=UTC)


def recorded(event: NewEvent) -> RecordedEvent:
    """What the store would hand back for ``event`` (the codec never looks at the chain)."""
    return RecordedEvent(
        position=1,
        event_id=event.event_id,
        account_id="acct_1",
        version=1,
        type=event.type,
        schema_version=event.schema_version,
        data=copy.deepcopy(event.data),
        metadata=event.metadata,
        occurred_at=event.occurred_at,
        recorded_at=T0,
        prev_hash="0" * 64,
        hash="0" * 64,
    )


def stored(type_name: str, schema_version: int, data: dict[str, Any]) -> RecordedEvent:
    return recorded(NewEvent(type_name, data, T0, schema_version=schema_version))


# ---------------------------------------------------------------- round trip


@dataclass(frozen=True)
class ViolationReported:
    violation_id: str
    category: str
    severity: str | None
    strikes: int
    score: float
    automated: bool
    tags: list[str]
    details: dict[str, Any]


json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
)
json_values = st.recursive(
    json_leaves,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
violations = st.builds(
    ViolationReported,
    violation_id=st.text(min_size=1, max_size=30),
    category=st.text(max_size=30),
    severity=st.none() | st.sampled_from(["low", "medium", "high", "critical"]),
    strikes=st.integers(min_value=0, max_value=10**6),
    score=st.floats(allow_nan=False, allow_infinity=False),
    automated=st.booleans(),
    tags=st.lists(st.text(max_size=10), max_size=4),
    details=st.dictionaries(st.text(max_size=8), json_values, max_size=4),
)


@settings(deadline=None)
@given(violations)
def test_encode_then_decode_gives_the_payload_back(payload: ViolationReported) -> None:
    codec = Codec()
    codec.register(ViolationReported)

    event = codec.encode(payload, occurred_at=T0, metadata={"actor": "svc"})
    decoded = codec.decode(recorded(event))

    assert (event.type, event.schema_version) == ("ViolationReported", 1)
    assert event.data == {
        "violation_id": payload.violation_id,
        "category": payload.category,
        "severity": payload.severity,
        "strikes": payload.strikes,
        "score": payload.score,
        "automated": payload.automated,
        "tags": payload.tags,
        "details": payload.details,
    }
    assert event.metadata == {"actor": "svc"}
    assert decoded.payload == payload
    assert decoded.record.event_id == event.event_id


def test_encode_takes_the_type_name_and_version_from_the_registration() -> None:
    codec = Codec()
    codec.register(ViolationReported, type_name="violation.reported", schema_version=1)

    event = codec.encode(
        ViolationReported("v1", "spam", None, 1, 0.5, True, [], {}), occurred_at=T0
    )

    assert event.type == "violation.reported"
    assert set(codec.types) == {"violation.reported"}


# ---------------------------------------------------------------- upcasting v1 → v2 → v3


@dataclass(frozen=True)
class ThrottleApplied:
    """Shape 3: several reasons, an optional key, the factor as a percentage."""

    percent: int
    reasons: list[str]
    key_id: str | None


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    """Shape 1 had one ``reason``; shape 2 has a list of them and an optional key."""
    return {"factor": data["factor"], "reasons": [data["reason"]], "key_id": None}


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    """Shape 3 stores the factor as a whole percentage."""
    return {
        "percent": round(data["factor"] * 100),
        "reasons": data["reasons"],
        "key_id": data["key_id"],
    }


@pytest.fixture(scope="module")
def v3_codec() -> Codec:
    codec = Codec()
    codec.register(ThrottleApplied, schema_version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})
    return codec


factors = st.integers(min_value=1, max_value=100).map(lambda p: p / 100)
texts = st.text(max_size=30)


@settings(deadline=None)
@given(factors, texts)
def test_a_v1_event_reads_as_v3(factor: float, reason: str) -> None:
    codec = Codec()
    codec.register(ThrottleApplied, schema_version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})
    record = stored("ThrottleApplied", 1, {"factor": factor, "reason": reason})

    decoded = codec.decode(record)

    assert decoded.payload == ThrottleApplied(round(factor * 100), [reason], None)
    # The record itself is untouched: upcasting is a view, the log keeps its stored shape.
    assert record.data == {"factor": factor, "reason": reason}
    assert decoded.record is record


@settings(deadline=None)
@given(factors, st.lists(texts, max_size=3), st.none() | texts)
def test_a_v2_event_reads_as_v3_and_v3_is_left_alone(
    factor: float, reasons: list[str], key_id: str | None
) -> None:
    codec = Codec()
    codec.register(ThrottleApplied, schema_version=3, upcasters={1: v1_to_v2, 2: v2_to_v3})
    v2 = stored("ThrottleApplied", 2, {"factor": factor, "reasons": reasons, "key_id": key_id})
    v3 = stored("ThrottleApplied", 3, {"percent": 40, "reasons": reasons, "key_id": key_id})

    assert codec.decode(v2).payload == ThrottleApplied(round(factor * 100), reasons, key_id)
    assert codec.decode(v3).payload == ThrottleApplied(40, reasons, key_id)
    # ``payload`` (what the fold uses) is ``decode``'s payload without the record around it.
    for record in (v2, v3):
        payload = codec.payload(record.type, record.schema_version, record.data)
        assert payload == codec.decode(record).payload


def test_upcast_applies_the_chain_in_order(v3_codec: Codec) -> None:
    calls: list[int] = []
    codec = Codec()
    codec.register(
        ThrottleApplied,
        schema_version=3,
        upcasters={
            2: lambda d: calls.append(2) or v2_to_v3(d),
            1: lambda d: calls.append(1) or v1_to_v2(d),
        },
    )

    data = codec.upcast("ThrottleApplied", 1, {"factor": 0.25, "reason": "burst"})

    assert calls == [1, 2]
    assert data == {"percent": 25, "reasons": ["burst"], "key_id": None}
    assert v3_codec.upcast("ThrottleApplied", 3, data) == data


def test_an_upcaster_that_edits_its_input_in_place_cannot_change_the_record() -> None:
    def careless_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
        data["reasons"].append("added on read")
        data["factor"] = 0.0
        return v2_to_v3(data)

    codec = Codec()
    codec.register(ThrottleApplied, schema_version=3, upcasters={1: v1_to_v2, 2: careless_v2_to_v3})
    record = stored("ThrottleApplied", 2, {"factor": 0.5, "reasons": ["burst"], "key_id": None})

    decoded = codec.decode(record)

    assert decoded.payload == ThrottleApplied(0, ["burst", "added on read"], None)
    assert record.data == {"factor": 0.5, "reasons": ["burst"], "key_id": None}


def test_new_events_are_encoded_at_the_current_version(v3_codec: Codec) -> None:
    event = v3_codec.encode(ThrottleApplied(25, ["burst"], "key_7"), occurred_at=T0)

    assert event.schema_version == 3
    assert v3_codec.decode(recorded(event)).payload == ThrottleApplied(25, ["burst"], "key_7")


# ---------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("upcasters", "missing"), [({1: v1_to_v2}, "[2]"), ({2: v2_to_v3}, "[1]"), ({}, "[1, 2]")]
)
def test_a_version_without_an_upcaster_cannot_be_registered(
    upcasters: dict[int, Any], missing: str
) -> None:
    message = f"ThrottleApplied: no upcaster from schema version(s) {missing}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Codec().register(ThrottleApplied, schema_version=3, upcasters=upcasters)


def test_a_payload_class_must_be_a_dataclass() -> None:
    class NotData:
        pass

    # Refused as such, before its missing upcasters are counted
    with pytest.raises(TypeError, match=r"\.NotData'> is not a dataclass$"):
        Codec().register(NotData, schema_version=2)


def test_a_registration_and_a_decoded_event_cannot_be_changed(v3_codec: Codec) -> None:
    # A registration is shared by every read (an edit would change how the log reads from then
    # on); a decoded event is what was read
    registration = v3_codec.registration("ThrottleApplied")
    decoded = v3_codec.decode(
        stored("ThrottleApplied", 3, {"percent": 1, "reasons": [], "key_id": None})
    )
    for changed, name in ((registration, "schema_version"), (decoded, "payload")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(changed, name, None)


def test_an_unknown_type_is_refused_both_ways(v3_codec: Codec) -> None:
    with pytest.raises(UnknownEventType, match=r"^no event type 'SomethingElse' is registered$"):
        v3_codec.decode(stored("SomethingElse", 1, {}))
    with pytest.raises(UnknownEventType, match=r"^ViolationReported is not registered$"):
        v3_codec.encode(ViolationReported("v1", "spam", None, 1, 0.5, True, [], {}), occurred_at=T0)


def test_an_event_newer_than_the_code_is_refused(v3_codec: Codec) -> None:
    with pytest.raises(
        UnknownEventType, match=r"^ThrottleApplied schema version 4 is newer than this code's 3$"
    ):
        v3_codec.decode(stored("ThrottleApplied", 4, {"percent": 1}))


@pytest.mark.parametrize("schema_version", [0, -1])
def test_a_schema_version_below_one_is_refused_as_unknown(
    v3_codec: Codec, schema_version: int
) -> None:
    # No append stores one (the store refuses it); a row edited to hold one is named, not a
    # KeyError from the upcaster table.
    with pytest.raises(
        UnknownEventType, match=f"^ThrottleApplied has no schema version {schema_version}$"
    ):
        v3_codec.decode(stored("ThrottleApplied", schema_version, {"percent": 1}))
