"""``/docs``: Swagger UI served from the package, not from a CDN.

FastAPI's own ``/docs`` page loads Swagger UI's script from cdn.jsdelivr.net (a floating
``@5`` version, no integrity check) and ``/redoc`` loads ReDoc's likewise: the page is blank on
a network without that CDN, and whatever the CDN serves runs on this API's origin, where an
operator pastes a token into "Authorize". The script and style come from
``static/swagger-ui`` (a pinned ``swagger-ui-dist``; its ``VERSION`` file says which and how to
update it), under ``/docs/static``. ``/redoc`` is not served (the contract names ``/docs`` and
``/openapi.json`` only).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parent / "static" / "swagger-ui"
# The vendored version, as its VERSION file names it ("swagger-ui-dist 5.30.2 …"): in the assets'
# URLs, so that a browser's cached copy is not used after an upgrade.
SWAGGER_UI_VERSION = (STATIC / "VERSION").read_text().split()[1]
DOCS = "/docs"
ASSETS = f"{DOCS}/static"


def install_docs(app: FastAPI) -> None:
    """``/docs`` and its OAuth2 redirect page, the assets under ``/docs/static``. The app must
    be made with ``docs_url=None`` and ``redoc_url=None``."""
    app.mount(ASSETS, StaticFiles(directory=STATIC), name="swagger-ui")
    redirect = f"{DOCS}/oauth2-redirect"

    @app.get(DOCS, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", "")).rstrip("/")  # behind a path prefix
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{redirect}",
            swagger_js_url=f"{root}{ASSETS}/swagger-ui-bundle.js?v={SWAGGER_UI_VERSION}",
            swagger_css_url=f"{root}{ASSETS}/swagger-ui.css?v={SWAGGER_UI_VERSION}",
            swagger_favicon_url=f"{root}{ASSETS}/favicon-32x32.png?v={SWAGGER_UI_VERSION}",
        )

    @app.get(redirect, include_in_schema=False)
    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()
