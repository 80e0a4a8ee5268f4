"""Request dependencies as ``Annotated`` aliases: the container, the caller and their rights.

They are coroutines: FastAPI runs a plain function dependency in the thread pool, a hop to a
worker thread and back per dependency and request. Only a token lookup the cache cannot answer
goes to the thread pool (it reads the database).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool

from enforcement.api.errors import ApiError
from enforcement.bootstrap import Container
from enforcement.logs import request_id_var
from enforcement.roles import Permission, allows
from enforcement.service import Actor
from enforcement.tokens import Principal


async def get_container(request: Request) -> Container:
    container: Container = request.app.state.container
    return container


ContainerDep = Annotated[Container, Depends(get_container)]


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


async def get_principal(request: Request, container: ContainerDep) -> Principal:
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(
            401,
            "unauthorized",
            "A bearer token is required.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    principal = container.tokens.cached(token)
    if principal is None:
        principal = await run_in_threadpool(container.tokens.authenticate, token)
    if principal is None:
        raise ApiError(
            401,
            "unauthorized",
            "The bearer token is not valid.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


def _forbidden_unless(principal: Principal, permission: Permission) -> None:
    if not allows(principal.role, permission):
        raise ApiError(
            403,
            "forbidden",
            f"The {principal.role.value} role may not do this.",
            {"role": principal.role.value, "needs": permission.value},
        )


# Each ``require`` check and the permission it asks, for ``refusal``.
_PERMISSION_OF: dict[Callable[..., Any], Permission] = {}


def require(permission: Permission):  # type: ignore[no-untyped-def]
    async def check(principal: PrincipalDep) -> Principal:
        _forbidden_unless(principal, permission)
        return principal

    _PERMISSION_OF[check] = permission
    return check


def _needs(dependant: Dependant) -> tuple[bool, Permission | None]:
    """Whether a route's dependencies ask for a token, and which permission if any."""
    token = False
    for dependency in dependant.dependencies:
        if dependency.call in _PERMISSION_OF:
            return True, _PERMISSION_OF[dependency.call]
        token = token or dependency.call is get_principal
        deeper, permission = _needs(dependency)
        if permission is not None:
            return True, permission
        token = token or deeper
    return token, None


def route_needs(route: APIRoute) -> tuple[bool, Permission | None]:
    """Whether ``route`` asks for a token, and which permission if any (the OpenAPI document
    says so per operation)."""
    return _needs(route.dependant)


async def refusal(request: Request) -> ApiError | None:
    """The 401 or 403 the matched route's own dependencies would answer this caller, or None.

    FastAPI parses a JSON body before it solves the dependencies, so a malformed body would be
    answered 400 before the caller is known; the contract answers an unknown caller 401 and one
    without the role 403 whatever they send.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or request.app.dependency_overrides:
        return None  # (a test replaced a dependency: the route answers as it would)
    token, permission = _needs(route.dependant)
    if not token:
        return None
    try:
        principal = await get_principal(request, await get_container(request))
        if permission is not None:
            _forbidden_unless(principal, permission)
    except ApiError as exc:
        return exc
    return None


Reporter = Annotated[Principal, Depends(require(Permission.REPORT))]
Operator = Annotated[Principal, Depends(require(Permission.COMMAND))]
Reader = Annotated[Principal, Depends(require(Permission.READ))]
StandingReader = Annotated[Principal, Depends(require(Permission.READ_STANDING))]
Gateway = Annotated[Principal, Depends(require(Permission.GATE))]


def correlation_id() -> str:
    return request_id_var.get() or "cli"


def actor_of(principal: Principal) -> Actor:
    """The use cases' actor for a request: ``role:name`` and the request id."""
    return Actor(name=f"{principal.role.value}:{principal.name}", correlation_id=correlation_id())
