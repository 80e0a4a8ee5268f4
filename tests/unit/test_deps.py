"""``deps.route_needs``: what a route's dependencies ask of the caller, however deep they ask
it (the OpenAPI document and the refusal of a malformed body's caller go by it), and
``deps.refusal``, that refusal."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from pydantic import BaseModel

from enforcement.api.deps import ContainerDep, PrincipalDep, Reporter, refusal, route_needs
from enforcement.api.errors import install_error_handlers
from enforcement.roles import Permission
from enforcement.tokens import Principal


async def caller(principal: PrincipalDep) -> Principal:
    return principal


async def nothing(container: ContainerDep) -> None:
    pass


async def the_caller(container: ContainerDep, principal: PrincipalDep) -> None:
    pass


async def deeper(container: ContainerDep, who: Annotated[Principal, Depends(caller)]) -> None:
    pass


async def a_reporter(container: ContainerDep, who: Reporter) -> None:
    pass


async def a_reporter_deeper(
    container: ContainerDep, who: Annotated[Principal, Depends(a_reporter)]
) -> None:
    pass


def test_a_route_needs_a_token_for_its_caller_and_the_permission_it_asks_at_any_depth() -> None:
    assert route_needs(APIRoute("/a", nothing)) == (False, None)
    assert route_needs(APIRoute("/b", the_caller)) == (True, None)
    assert route_needs(APIRoute("/c", deeper)) == (True, None)
    assert route_needs(APIRoute("/d", a_reporter)) == (True, Permission.REPORT)
    assert route_needs(APIRoute("/e", a_reporter_deeper)) == (True, Permission.REPORT)


class Body(BaseModel):
    n: int


def test_a_malformed_body_is_refused_first_only_when_its_route_asks_a_token() -> None:
    """A route that asks no token answers a malformed body 400 to anyone; one that does answers
    a caller without a token 401 first."""
    app = FastAPI()
    app.state.container = None  # no token is sent: none is looked up
    install_error_handlers(app, refusal)

    @app.post("/open")
    async def open_to_all(body: Body) -> None:
        pass

    @app.post("/reporters")
    async def reporters_only(body: Body, who: Reporter) -> None:
        pass

    json = {"Content-Type": "application/json"}
    with TestClient(app) as client:
        answers = [
            client.post(path, content=b"{", headers=json) for path in ("/open", "/reporters")
        ]
    assert [(a.status_code, a.json()["error"]["code"]) for a in answers] == [
        (400, "malformed_json"),
        (401, "unauthorized"),
    ]
