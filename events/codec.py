"""Event-type registry: payload classes, schema versions and upcasters.

The log is never rewritten. When a payload's shape changes, its ``schema_version`` goes up and an
upcaster turns the stored old shape into the next one on read, so old events stay readable and
their hash chain stays intact (the chain covers the stored shape, which the public feed serves).
"""

from __future__ import annotations

import builtins
import copy
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from events.errors import UnknownEventType
from events.types import JSON, NewEvent, RecordedEvent

Upcaster = Callable[[JSON], JSON]


@dataclass(frozen=True, slots=True)
class Registration:
    """How one event type is encoded, decoded and upcast."""

    type: str
    payload_class: builtins.type[Any]  # ``type`` is the field above here
    schema_version: int
    upcasters: dict[int, Upcaster] = field(default_factory=dict)
    field_names: tuple[str, ...] = ()  # the payload class's fields, looked up once


@dataclass(frozen=True, slots=True)
class DecodedEvent:
    """A recorded event whose payload is the current shape of its registered class."""

    record: RecordedEvent
    payload: Any


class Codec:
    """Maps event types to payload dataclasses and brings old shapes up to date on read."""

    def __init__(self) -> None:
        self._by_type: dict[str, Registration] = {}
        self._by_class: dict[type[Any], Registration] = {}

    def register(
        self,
        payload_class: type[Any],
        *,
        type_name: str | None = None,
        schema_version: int = 1,
        upcasters: dict[int, Upcaster] | None = None,
    ) -> None:
        """Register a dataclass payload. ``upcasters[n]`` turns shape ``n`` into shape ``n + 1``."""
        if not dataclasses.is_dataclass(payload_class):
            raise TypeError(f"{payload_class!r} is not a dataclass")
        name = type_name or payload_class.__name__
        ups = dict(upcasters or {})
        missing = [v for v in range(1, schema_version) if v not in ups]
        if missing:
            raise ValueError(f"{name}: no upcaster from schema version(s) {missing}")
        names = tuple(f.name for f in dataclasses.fields(payload_class))
        reg = Registration(name, payload_class, schema_version, ups, names)
        self._by_type[name] = reg
        self._by_class[payload_class] = reg

    def registration(self, type_name: str) -> Registration:
        try:
            return self._by_type[type_name]
        except KeyError:
            raise UnknownEventType(f"no event type {type_name!r} is registered") from None

    @property
    def types(self) -> Iterable[str]:
        return self._by_type.keys()

    def encode(self, payload: Any, **new_event_fields: Any) -> NewEvent:
        """A ``NewEvent`` carrying ``payload`` at its class's current schema version."""
        try:
            reg = self._by_class[type(payload)]
        except KeyError:
            raise UnknownEventType(f"{type(payload).__name__} is not registered") from None
        return NewEvent(
            type=reg.type,
            data={name: getattr(payload, name) for name in reg.field_names},
            schema_version=reg.schema_version,
            **new_event_fields,
        )

    def upcast(self, type_name: str, schema_version: int, data: JSON) -> JSON:
        """The current shape of ``data`` stored at ``schema_version``."""
        reg = self.registration(type_name)
        version = schema_version
        if version > reg.schema_version:
            raise UnknownEventType(
                f"{type_name} schema version {version} is newer than this code's "
                f"{reg.schema_version}"
            )
        if version not in reg.upcasters and version != reg.schema_version:
            raise UnknownEventType(f"{type_name} has no schema version {version}")
        if version < reg.schema_version:
            data = copy.deepcopy(data)  # upcasters may edit in place; the record must not change
        while version < reg.schema_version:
            data = reg.upcasters[version](data)
            version += 1
        return data

    def decode(self, record: RecordedEvent) -> DecodedEvent:
        """The recorded event with its payload upcast and built as its registered class."""
        return DecodedEvent(record, self.payload(record.type, record.schema_version, record.data))

    def payload(self, type_name: str, schema_version: int, data: JSON) -> Any:
        """``decode``'s payload of an event stored as ``type_name`` at ``schema_version`` with
        ``data``, without the ``DecodedEvent`` around it (the fold decodes every event)."""
        reg = self._by_type.get(type_name)
        if reg is None:
            reg = self.registration(type_name)  # raises UnknownEventType
        if schema_version != reg.schema_version:
            data = self.upcast(type_name, schema_version, data)
        return reg.payload_class(**data)
