"""``deps.route_needs``: what a route's dependencies ask of the caller, however deep they ask
it (the OpenAPI document and the refusal of a malformed body's caller go by it)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.routing import APIRoute

from enforcement.api.deps import ContainerDep, PrincipalDep, Reporter, route_needs
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
