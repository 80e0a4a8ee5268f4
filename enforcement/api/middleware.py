"""Pure ASGI middleware: request ids, access logs, and body size limits before any parsing."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette._utils import get_route_path  # the path the router matches (no root_path)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from enforcement.logs import request_id_var

log = logging.getLogger("enforcement.http")

DEFAULT_BODY_LIMIT = 64 * 1024
BATCH_BODY_LIMIT = 4 * 1024 * 1024
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


BATCH_PATH = "/v1/violations:batch"


def body_limit_for(path: str) -> int:
    """The batch route's own path takes 4 MiB; every other path, whatever it ends with, 64 KiB
    (the body is read before the caller is known)."""
    return BATCH_BODY_LIMIT if path == BATCH_PATH else DEFAULT_BODY_LIMIT


def error_body(code: str, message: str, details: Any = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message, "details": details}}).encode()


REQUEST_ID_KEY = "enforcement.request_id"  # the request's id, in its ASGI scope

# (scope, the whole request body, receive, send) -> whether it answered the request
Shortcut = Callable[[Scope, bytes, Receive, Send], Awaitable[bool]]


class RequestContextMiddleware:
    """Gives every request an id (``X-Request-Id`` in and out), logs it, enforces body limits.

    The body is read and measured here, before FastAPI parses anything, so an oversized body is
    refused with 413 without being parsed and without touching the database.

    ``shortcuts`` maps ``(method, path)`` to a coroutine that gets the scope and the whole body
    first and answers the request itself if it can (``api.shortcuts``); when it returns False
    the request goes on to the application.
    """

    def __init__(
        self,
        app: ASGIApp,
        shortcuts: Mapping[tuple[str, str], Shortcut] | None = None,
    ):
        self.app = app
        self.shortcuts = dict(shortcuts or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _VALID_REQUEST_ID.match(supplied) else "req_" + uuid.uuid4().hex
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        # For the handler of unexpected errors, which answers from ``ServerErrorMiddleware``,
        # outside this middleware (``errors.install_error_handlers``).
        scope[REQUEST_ID_KEY] = request_id
        # The answer as sent, for the access log: its status, and whether it was cut off (its
        # status went out and its end did not: a streamed answer that failed while it was
        # encoded, a client gone; or the client left before its body was read).
        answer = {"status": 500, "aborted": False}
        rid_header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                answer.update(status=message["status"], aborted=True)  # until its end is sent
                message["headers"] = [*message.get("headers", []), rid_header]
            elif message["type"] == "http.response.pathsend" or (
                message["type"] == "http.response.body" and not message.get("more_body")
            ):
                answer["aborted"] = False
            await send(message)

        route_path = get_route_path(scope)  # the path the router matches (no root_path)
        try:
            limit = body_limit_for(route_path)
            declared = headers.get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await self._too_large(send_with_id, limit)
                return
            if scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
                chunks: list[bytes] = []
                size = 0
                more = True
                while more:
                    message = await receive()
                    if message["type"] == "http.disconnect":  # nginx's "client closed request"
                        answer.update(status=499, aborted=True)
                        return
                    chunk = message.get("body", b"")
                    size += len(chunk)
                    if size > limit:
                        await self._too_large(send_with_id, limit)
                        return
                    chunks.append(chunk)
                    more = message.get("more_body", False)
                body = b"".join(chunks)
                shortcut = self.shortcuts.get((scope["method"], route_path))
                if shortcut is not None and await shortcut(scope, body, receive, send_with_id):
                    return
                delivered = False

                async def replay() -> Message:
                    nonlocal delivered
                    if not delivered:
                        delivered = True
                        return {"type": "http.request", "body": body, "more_body": False}
                    return await receive()

                await self.app(scope, replay, send_with_id)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            aborted = bool(answer["aborted"])
            fields = {
                "method": scope["method"],
                "path": scope["path"],
                "status": answer["status"],
                "duration_ms": round((time.perf_counter() - started) * 1000, 3),
            }
            log.log(
                logging.WARNING if aborted else logging.INFO,
                "%s %s %s%s",
                scope["method"],
                scope["path"],
                answer["status"],
                " aborted" if aborted else "",
                extra={"fields": {**fields, "aborted": True} if aborted else fields},
            )
            request_id_var.reset(token)

    @staticmethod
    async def _too_large(send: Send, limit: int) -> None:
        body = error_body(
            "payload_too_large",
            f"The request body is larger than {limit // 1024} KiB.",
            {"limit_bytes": limit},
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
