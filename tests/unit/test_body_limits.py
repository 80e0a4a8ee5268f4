"""``RequestContextMiddleware`` on its own: the body limits (64 KiB, 4 MiB for the batch route)
refused with 413 before the application sees anything, the request id, and the body handed on
whole (CONTRACT.md, "Errors")."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

from enforcement.api.middleware import RequestContextMiddleware
from enforcement.logs import request_id_var

Message = dict[str, Any]
KIB = 1024


class Seen:
    """What the application got: its calls, the body it read and the request id it ran under."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.request_ids: list[str | None] = []
        self.after_body: list[Message] = []

    async def app(self, scope: Any, receive: Any, send: Any) -> None:
        self.request_ids.append(request_id_var.get())
        body, more = b"", scope["method"] != "GET"
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        self.bodies.append(body)
        if scope["method"] != "GET":
            self.after_body.append(await receive())  # past the body: the server's own receive
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})


def serve(
    chunks: list[bytes],
    path: str = "/v1/violations",
    method: str = "POST",
    headers: list[tuple[bytes, bytes]] | None = None,
    shortcuts: Any = None,
) -> tuple[Seen, list[Message], int]:
    """One request through the middleware; what the application saw, what was sent, and how
    many times the server's ``receive`` was called."""
    seen = Seen()
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": n < len(chunks) - 1}
        for n, chunk in enumerate(chunks)
    ]
    received = [0]

    async def receive() -> Message:
        received[0] += 1
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "root_path": "",
        "headers": headers or [],
    }
    asyncio.run(RequestContextMiddleware(seen.app, shortcuts)(scope, receive, send))
    return seen, sent, received[0]


def refused_413(sent: list[Message], limit: int) -> None:
    start, body = sent
    assert start["status"] == 413
    payload = json.dumps(
        {
            "error": {
                "code": "payload_too_large",
                "message": f"The request body is larger than {limit // KIB} KiB.",
                "details": {"limit_bytes": limit},
            }
        }
    ).encode()
    assert body == {"type": "http.response.body", "body": payload}
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/json"
    assert headers[b"content-length"] == str(len(payload)).encode()
    assert headers[b"x-request-id"].startswith(b"req_")


@pytest.mark.parametrize(
    ("path", "limit"),
    [("/v1/violations", 64 * KIB), ("/v1/violations:batch", 4 * KIB * KIB)],
)
def test_a_body_up_to_the_limit_goes_on_whole_and_one_byte_more_is_413_unread(
    path: str, limit: int
) -> None:
    # at the limit, in two chunks: the application gets it whole, once
    half = limit // 2
    seen, sent, _ = serve([b"a" * half, b"b" * (limit - half)], path)
    assert seen.bodies == [b"a" * half + b"b" * (limit - half)]
    assert sent[0]["status"] == 200
    assert seen.after_body == [{"type": "http.disconnect"}]
    # one byte over, counted across chunks: the application is not called
    seen, sent, _ = serve([b"a" * half, b"b" * (limit - half + 1)], path)
    assert seen.bodies == []
    refused_413(sent, limit)
    # declared over the limit: refused before a byte is read
    declared = [(b"content-length", str(limit + 1).encode())]
    seen, sent, received = serve([b"{}"], path, headers=declared)
    assert (seen.bodies, received) == ([], 0)
    refused_413(sent, limit)
    # declared at the limit goes on
    seen, sent, _ = serve([b"{}"], path, headers=[(b"content-length", str(limit).encode())])
    assert seen.bodies == [b"{}"]


def test_a_get_is_handed_on_unread_and_its_body_is_not_measured() -> None:
    seen, sent, received = serve([b"x" * (64 * KIB + 1)], "/v1/events", method="GET")
    assert (seen.bodies, received, sent[0]["status"]) == ([b""], 0, 200)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_every_method_with_a_body_is_measured(method: str) -> None:
    seen, sent, _ = serve([b"x" * (64 * KIB + 1)], "/v1/accounts/a/limits", method=method)
    assert seen.bodies == []
    refused_413(sent, 64 * KIB)


def test_a_valid_request_id_is_kept_and_any_other_replaced() -> None:
    for supplied, kept in (
        (b"A-z0.9_:" + b"x" * 120, True),
        (b"x" * 129, False),
        (b"bad id", False),
        (b"", False),
    ):
        seen, sent, _ = serve([b"{}"], headers=[(b"x-request-id", supplied)])
        [request_id] = seen.request_ids
        assert dict(sent[0]["headers"])[b"x-request-id"] == str(request_id).encode()
        if kept:
            assert request_id == supplied.decode()
        else:
            assert re.fullmatch(r"req_[0-9a-f]{32}", str(request_id)), request_id
    assert request_id_var.get() is None


def test_a_shortcut_gets_the_whole_body_and_answers_or_hands_it_on() -> None:
    calls: list[tuple[str, bytes]] = []

    def shortcut(answers: bool) -> Any:
        async def take(scope: Any, body: bytes, receive: Any, send: Any) -> bool:
            calls.append((scope["path"], body))
            if answers:
                await send({"type": "http.response.start", "status": 201, "headers": []})
                await send({"type": "http.response.body", "body": b"{}"})
            return answers

        return take

    for answers in (True, False):
        calls.clear()
        table = {("POST", "/v1/violations"): shortcut(answers)}
        seen, sent, _ = serve([b'{"a"', b": 1}"], shortcuts=table)
        assert calls == [("/v1/violations", b'{"a": 1}')]
        assert seen.bodies == ([] if answers else [b'{"a": 1}'])
        assert sent[0]["status"] == (201 if answers else 200)
        assert (b"x-request-id" in dict(sent[0]["headers"])) is True
        # another route's body does not go to it
        calls.clear()
        serve([b"{}"], "/v1/abuse-reports", shortcuts=table)
        assert calls == []


def test_a_scope_other_than_http_goes_to_the_application_untouched() -> None:
    calls: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        calls.append(scope)

    async def never(*_: Any) -> Any:
        raise AssertionError("the middleware itself neither receives nor sends")

    scope = {"type": "lifespan"}
    asyncio.run(RequestContextMiddleware(app)(scope, never, never))
    assert calls == [{"type": "lifespan"}]
