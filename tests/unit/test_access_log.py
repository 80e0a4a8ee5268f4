"""The access log line of ``RequestContextMiddleware``: the status sent, and ``aborted`` when an
answer did not reach its end (a streamed one cut off, a client gone before it was answered)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import pytest

from enforcement.api.middleware import RequestContextMiddleware

Message = dict[str, Any]


def access_line(
    app: Callable[[Any, Any, Any], Awaitable[None]],
    incoming: list[Message],
    caplog: pytest.LogCaptureFixture,
    method: str = "POST",
) -> logging.LogRecord:
    """Run one request through the middleware around ``app``; its access log record."""
    scope = {"type": "http", "method": method, "path": "/v1/x", "headers": [], "root_path": ""}
    queue = list(incoming)

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        pass

    # An app's error is the server's own handler's to answer: suppressed here.
    with caplog.at_level(logging.INFO, logger="enforcement.http"), suppress(RuntimeError):
        asyncio.run(RequestContextMiddleware(app)(scope, receive, send))
    [record] = [r for r in caplog.records if r.name == "enforcement.http"]
    return record


def answering(*bodies: Message) -> Callable[[Any, Any, Any], Awaitable[None]]:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for body in bodies:
            await send(body)
        if not bodies or bodies[-1].get("more_body"):
            raise RuntimeError("stopped while answering")

    return app


BODY = {"type": "http.request", "body": b"{}", "more_body": False}


@pytest.mark.parametrize(
    ("bodies", "line", "level"),
    [
        ([{"type": "http.response.body", "body": b"{}"}], "POST /v1/x 200", logging.INFO),
        (
            [
                {"type": "http.response.body", "body": b"[", "more_body": True},
                {"type": "http.response.body", "body": b"]", "more_body": False},
            ],
            "POST /v1/x 200",
            logging.INFO,
        ),
        ([{"type": "http.response.pathsend", "path": "/x"}], "POST /v1/x 200", logging.INFO),
        (
            [{"type": "http.response.body", "body": b"[", "more_body": True}],
            "POST /v1/x 200 aborted",
            logging.WARNING,
        ),
        ([], "POST /v1/x 200 aborted", logging.WARNING),
    ],
)
def test_an_answer_that_did_not_reach_its_end_is_logged_aborted(
    bodies: list[Message], line: str, level: int, caplog: pytest.LogCaptureFixture
) -> None:
    record = access_line(answering(*bodies), [BODY], caplog)
    assert (record.getMessage(), record.levelno) == (line, level)
    assert record.fields.get("aborted", False) == line.endswith("aborted")  # type: ignore[attr-defined]


def test_a_client_gone_before_its_body_was_read_is_not_a_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def never_called(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError("the application is not called without a body")

    part = {"type": "http.request", "body": b'{"account_id": ', "more_body": True}
    record = access_line(never_called, [part, {"type": "http.disconnect"}], caplog)
    assert record.getMessage() == "POST /v1/x 499 aborted"
    assert record.fields["status"] == 499  # type: ignore[attr-defined]
