"""Support for the tests of a dependency gone silent behind a ``CuttingProxy``: the application
through it, and a request timed in a thread of its own (it may wait for as long as the proxy
holds it)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from fastapi.testclient import TestClient

from enforcement.api.app import create_app
from enforcement.api.deps import get_principal
from enforcement.bootstrap import Clock, bootstrap, system_clock
from enforcement.roles import Role
from enforcement.settings import Settings
from enforcement.tokens import Principal
from tests.cutting_proxy import CuttingProxy

T = TypeVar("T")


@contextmanager
def admin_client(
    settings: Settings, proxy: CuttingProxy | None = None, clock: Clock = system_clock
) -> Iterator[TestClient]:
    """The application of ``settings``, every request made as an admin; the proxy, if any,
    forwards again before the client stops, so that a request it still holds ends."""
    container = bootstrap(settings, clock=clock)
    app = create_app(container)
    app.dependency_overrides[get_principal] = lambda: Principal("tok_t", "test", Role.ADMIN)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            try:
                yield client
            finally:
                if proxy is not None:
                    proxy.resume()
    finally:
        container.close()


def timed(call: Callable[[], T], limit: float = 30.0) -> tuple[T, float]:
    """``call()``'s result and how long it took, in a thread; fails after ``limit`` seconds
    (the call then goes on, held by the proxy, until the test's end resumes it)."""
    done: list[T] = []
    started = time.monotonic()
    thread = threading.Thread(target=lambda: done.append(call()), daemon=True)
    thread.start()
    thread.join(limit)
    assert done, f"no answer within {limit} s: the request waits for the silent server"
    return done[0], time.monotonic() - started
