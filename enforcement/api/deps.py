"""Request dependencies as ``Annotated`` aliases: the container, the caller and their rights.

They are coroutines: FastAPI runs a plain function dependency in the thread pool, a hop to a
worker thread and back per dependency and request. Only a token lookup the cache cannot answer
goes to the thread pool (it reads the database).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
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


def require(permission: Permission):  # type: ignore[no-untyped-def]
    async def check(principal: PrincipalDep) -> Principal:
        if not allows(principal.role, permission):
            raise ApiError(
                403,
                "forbidden",
                f"The {principal.role.value} role may not do this.",
                {"role": principal.role.value, "needs": permission.value},
            )
        return principal

    return check


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
