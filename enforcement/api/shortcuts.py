"""The hot route's usual request, answered without FastAPI's per-request machinery.

``POST /v1/violations`` is the route other services call for every violation. For its usual
request (a JSON object body that validates, a cached reporter token, a well-formed
Idempotency-Key or none) FastAPI's routing, dependency solving and parameter validation cost
about as much CPU as the constant route of ``benchmarks/bench_http.py`` does in all.
``ReportShortcut`` answers that request itself, with the route's own model, use case and
answer encoding; everything else (a missing, unknown or uncached token, a wrong role, a body
that is not a JSON object or does not validate, another content type, an odd header) goes the
usual way through FastAPI, which answers it as before (as does every request while the
application's ``dependency_overrides`` replace a dependency). Nothing is written before the
request is known to be the usual one, so handing it on is always safe. It is one of the
middleware's ``Shortcut``s.

Errors of the use case itself (a reused Idempotency-Key, the database down …) are answered by
the application's own exception handlers, through Starlette's own handling of a route's errors
(``wrap_app_handling_exceptions``); an exception without one propagates to
``ServerErrorMiddleware`` (the handler of ``Exception``: a 500), as from the route.

What the shortcut does not do, and the route would: FastAPI's own OpenTelemetry spans (when a
tracer is configured, a shortcut request's span is named ``POST`` and has no ``http.route``),
and dependencies declared on the app or the router (there are none; one added later must be
honoured here too).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from pydantic import ValidationError
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.types import Receive, Scope, Send

from enforcement.api import strict_json
from enforcement.api.coalesce import report_violation_answer
from enforcement.api.deps import actor_of, bearer_token
from enforcement.api.idempotency import IDEMPOTENCY_KEY_MAX
from enforcement.api.schemas import ViolationIn, is_reserved_key
from enforcement.bootstrap import Container
from enforcement.roles import Permission, allows
from enforcement.tokens import Principal

_JSON = b"application/json"


class ReportShortcut:
    """``POST /v1/violations`` for its usual request (see the module's docstring)."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    async def __call__(self, scope: Scope, body: bytes, receive: Receive, send: Send) -> bool:
        container: Container = self.app.state.container
        usual = self._usual(scope, body, container)
        if usual is None:
            return False
        model, principal, key = usual

        async def answer(scope: Scope, receive: Receive, send: Send) -> None:
            response = await report_violation_answer(container, model, actor_of(principal), key)
            await response(scope, receive, send)

        # Errors as the route's: Starlette's own handling, with the handlers its
        # ``ExceptionMiddleware`` would put in the scope (``Exception``'s and 500's are
        # ``ServerErrorMiddleware``'s, outside: an error without another handler goes there).
        handlers = self.app.exception_handlers
        by_class = {k: v for k, v in handlers.items() if isinstance(k, type) and k is not Exception}
        by_status = {k: v for k, v in handlers.items() if isinstance(k, int) and k != 500}
        scope["starlette.exception_handlers"] = (by_class, by_status)
        await wrap_app_handling_exceptions(answer, Request(scope, receive))(scope, receive, send)
        return True

    def _usual(
        self, scope: Scope, body: bytes, container: Container
    ) -> tuple[ViolationIn, Principal, str | None] | None:
        """The validated body, caller and Idempotency-Key of a usual request, else None."""
        if self.app.dependency_overrides:  # a test replaced a dependency: honour it
            return None
        authorization = content_type = key = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                if authorization is not None:
                    return None
                authorization = value
            elif name == b"content-type":
                if content_type is not None:
                    return None
                content_type = value
            elif name == b"idempotency-key":
                if key is not None:
                    return None
                key = value
        if authorization is None or content_type is None:
            return None
        if content_type.partition(b";")[0].strip().lower() != _JSON:
            return None
        token = bearer_token(authorization.decode("latin-1"))
        if token is None:
            return None
        principal = container.tokens.cached(token)
        if principal is None or not allows(principal.role, Permission.REPORT):
            return None
        idempotency_key = None
        if key is not None:
            try:
                idempotency_key = key.decode()  # UTF-8 text, as the route reads it
            except UnicodeDecodeError:
                return None  # the route answers it (422)
            if (
                not 0 < len(idempotency_key) <= IDEMPOTENCY_KEY_MAX
                or "\x00" in idempotency_key
                or is_reserved_key(idempotency_key)
            ):
                return None  # the route answers it (422)
        try:
            document = strict_json.loads(body)  # what the route reads, read the same way
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        try:
            model = ViolationIn.model_validate(document)
        except ValidationError:
            return None
        return model, principal, idempotency_key
