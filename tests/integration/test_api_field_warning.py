"""No pydantic ``UnsupportedFieldAttributeWarning`` escapes while the API is made, whatever other
threads do with the warning filters.

FastAPI silences that warning while it builds a parameter's field (pydantic warns that the
``alias`` FastAPI gives every parameter has no effect where FastAPI uses it; FastAPI builds them
when an application answers its first requests) inside ``warnings.catch_warnings``, and enters
such a block around every response it encodes too. The
blocks save and restore the one process-wide filter list, so they are not thread-safe: a block
that another thread leaves puts back the list it saved, without the "ignore" FastAPI had just
added, and the warning escapes (in about one run of the suite in five)."""

from __future__ import annotations

import threading
import warnings
from collections.abc import Iterator
from typing import Annotated, Any

import fastapi._compat.v2 as fastapi_fields
import pytest
from fastapi.testclient import TestClient
from pydantic import Field, TypeAdapter
from pydantic.warnings import UnsupportedFieldAttributeWarning

from enforcement.api.app import create_app
from enforcement.bootstrap import Container, bootstrap
from enforcement.settings import Settings


@pytest.fixture
def system(sqlite_url: str) -> Iterator[Container]:
    """What the API is made over (making it reads no table: SQLite alone is enough)."""
    container = bootstrap(Settings(database_url=sqlite_url))
    yield container
    container.close()


def test_no_field_warning_escapes_when_another_thread_restores_the_filters(
    system: Container, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the API, made as `serve` makes it before anything serves
    app = create_app(system)
    # and another thread inside a catch_warnings block, as FastAPI is around every response
    inside, leave = threading.Event(), threading.Event()

    def answering() -> None:
        with warnings.catch_warnings():
            inside.set()
            leave.wait(30)

    other = threading.Thread(target=answering, name="answering")
    take_apart = fastapi_fields.asdict

    def other_thread_leaves_first(field_info: Any) -> dict[str, Any]:
        # FastAPI's own block is open (it ignores the warning) when it takes the FieldInfo
        # apart: the other thread leaves its block now, before the field's TypeAdapter warns.
        if field_info.alias is not None and not leave.is_set():
            leave.set()
            other.join(30)
        parts: dict[str, Any] = take_apart(field_info)
        return parts

    with warnings.catch_warnings(record=True) as caught:
        other.start()
        assert inside.wait(30)
        monkeypatch.setattr(fastapi_fields, "asdict", other_thread_leaves_first)

        # When the application answers its first request (FastAPI builds its routes' parameter
        # fields then)
        with TestClient(app) as client:
            assert client.post("/v1/violations", json={}).status_code == 401

    # Then the other thread's leaving let nothing through
    assert leave.is_set() and not other.is_alive()
    escaped = [w for w in caught if issubclass(w.category, UnsupportedFieldAttributeWarning)]
    assert escaped == [], [str(w.message) for w in escaped]


def test_only_the_warning_fastapi_provokes_is_silenced(system: Container) -> None:
    """The filter is for the ``alias`` FastAPI gives every parameter, not for pydantic's other
    warnings of that kind."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every warning shows, but for what the API ignores
        create_app(system)
        TypeAdapter(Annotated[int, Field(alias="a")])  # what FastAPI's parameters do
        TypeAdapter(Annotated[int, Field(frozen=True)])  # a mistake of our own

    assert [str(w.message).split(" was ")[0] for w in caught] == [
        "The 'frozen' attribute with value True"
    ]
