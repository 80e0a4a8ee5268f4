"""The FastAPI application: routers, error handlers, middleware, lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from enforcement.api import deps
from enforcement.api.coalesce import install_report_queue
from enforcement.api.docs_ui import install_docs
from enforcement.api.documents import document_answers, document_auth
from enforcement.api.errors import ErrorBody, install_error_handlers
from enforcement.api.middleware import RequestContextMiddleware
from enforcement.api.routes import accounts, gate, reading, reporting, webhooks
from enforcement.api.shortcuts import ReportShortcut
from enforcement.api.warning_filters import quiet_fastapi_alias_warning
from enforcement.bootstrap import Container
from events.dialects import fetch_all


def create_app(container: Container, run_workers: bool = False) -> FastAPI:
    """The API over ``container``; ``run_workers`` starts the embedded workers with it."""
    quiet_fastapi_alias_warning()  # before anything serves (warning_filters.py)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        background = container.extras.get("start_workers")
        stop = background() if (run_workers and callable(background)) else None
        try:
            yield
        finally:
            if callable(stop):
                stop()
            container.close()

    app = FastAPI(
        title="TaaS AUP enforcement",
        version="1",
        description="Event-sourced enforcement of the TaaS API Service Acceptable Use Policy.",
        lifespan=lifespan,
        docs_url=None,  # served from the package instead (docs_ui)
        redoc_url=None,
        # An unknown path is 404 (CONTRACT.md), not a 307 to the path without its trailing
        # slash, on a host taken from the request's Host header.
        redirect_slashes=False,
    )
    install_docs(app)
    app.state.container = container
    install_report_queue(container)
    install_error_handlers(app, deps.refusal)

    @app.get(
        "/healthz",
        tags=["health"],
        responses={503: {"model": ErrorBody, "description": "The database does not answer."}},
    )
    def healthz() -> dict[str, str]:
        """200 once the API can serve (its database answers a query), else 503."""
        fetch_all(container.engine, "SELECT 1")  # an unreachable database: 503 (errors.py)
        return {"status": "ok"}

    # Load balancers often probe with HEAD: the same check, answered without the body.
    app.head("/healthz", include_in_schema=False)(healthz)

    routers = (reporting.router, accounts.router, reading.router, gate.router, webhooks.router)
    for router in routers:
        app.include_router(router)
    _document_answers(app, [route for router in routers for route in router.routes])
    app.add_middleware(
        RequestContextMiddleware,
        shortcuts={("POST", "/v1/violations"): ReportShortcut(app)},
    )
    return app


def _document_answers(app: FastAPI, routes: Sequence[BaseRoute]) -> None:
    """The OpenAPI document with the answers' shapes and the token each of ``routes`` asks for
    (``api.documents``), made once."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            needs = {
                (route.path_format, method.lower()): deps.route_needs(route)
                for route in routes
                if isinstance(route, APIRoute)
                for method in route.methods or ()
            }
            app.openapi_schema = document_auth(document_answers(generate()), needs)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
