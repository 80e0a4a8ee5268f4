"""``PUT /v1/accounts/{id}/contact`` keeps since when each channel has been set
(``contacts.email_since``, ``webhook_since``), which a re-send of the notices without an outcome
reads (``workers.recovery``): a channel set starts then, one whose target changes keeps its
time, one cleared loses it. On SQLite and PostgreSQL (the upsert is each one's own)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from test_service_support import FakeClock

from enforcement.api.app import create_app
from enforcement.bootstrap import Container
from enforcement.roles import Role
from enforcement.tables import contacts
from enforcement.tokens import create_token
from events.timefmt import to_utc


@pytest.fixture
def put_contact(system: Container) -> Iterator[Callable[..., None]]:
    headers = {"Authorization": f"Bearer {create_token(system.engine, Role.OPERATOR, 'op')}"}
    with TestClient(create_app(system)) as client:

        def put(**body: str | None) -> None:
            answer = client.put("/v1/accounts/acct_c/contact", json=body, headers=headers)
            assert answer.status_code == 200, answer.text

        yield put


def since(system: Container) -> tuple[datetime | None, datetime | None]:
    with system.engine.connect() as conn:
        row = conn.execute(
            sa.select(contacts.c.email_since, contacts.c.webhook_since).where(
                contacts.c.account_id == "acct_c"
            )
        ).one()
    email, webhook = (None if t is None else to_utc(t) for t in row)
    return email, webhook


def test_each_channel_keeps_since_when_it_has_been_set(
    system: Container, clock: FakeClock, put_contact: Callable[..., None]
) -> None:
    first = to_utc(clock())
    put_contact(email="a@customer.test")
    assert since(system) == (first, None)

    clock.advance(timedelta(days=3))
    second = to_utc(clock())
    put_contact(email="b@customer.test", webhook_url="https://customer.test/hook")
    assert since(system) == (first, second)  # another address: the same channel

    clock.advance(timedelta(days=3))
    put_contact(email="b@customer.test")  # the webhook cleared
    assert since(system) == (first, None)

    clock.advance(timedelta(days=3))
    fourth = to_utc(clock())
    put_contact(webhook_url="https://customer.test/hook")  # e-mail cleared, webhook set again
    assert since(system) == (None, fourth)


def test_a_channel_set_before_the_columns_existed_stays_set_since_always(
    system: Container, clock: FakeClock, put_contact: Callable[..., None]
) -> None:
    with system.engine.begin() as conn:  # as revision 0004 leaves a contact: NULL, since always
        conn.execute(
            contacts.insert().values(
                account_id="acct_c", email="a@customer.test", updated_at=clock()
            )
        )
    put_contact(email="a@customer.test", webhook_url="https://customer.test/hook")
    assert since(system) == (None, to_utc(clock()))
