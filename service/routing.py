"""Router and route classes that carry two HTTP rules of the contract for every route."""

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.deps import get_app_settings, get_current_user, oauth2_scheme

type Responses = dict[int | str, dict[str, Any]]


class ErrorDetail(BaseModel):
    detail: str


def error(description: str) -> dict[str, Any]:
    """An OpenAPI `responses=` entry for an error with a `{"detail": "..."}` body."""
    return {"model": ErrorDetail, "description": description}


def _needs_user(dependant: Dependant) -> bool:
    return any(sub.call is get_current_user or _needs_user(sub) for sub in dependant.dependencies)


class AuthFirstRoute(APIRoute):
    """Answer 401, not 422, when an unauthenticated request is also malformed.

    FastAPI parses a JSON body before it runs any dependency, and collects path errors after
    them, so without this a caller with no token could learn how the body or path is checked.
    Only the failing path pays for the second look at the token.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not _needs_user(self.dependant):
            return handler

        async def authenticate_first(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError:
                token = await oauth2_scheme(request)
                await get_current_user(get_app_settings(request), token)  # raises the 401
                raise

        return authenticate_first


class CollectionRouter(APIRouter):
    """Serve a collection's root on both `/things` and `/things/`, with no 307 between them.

    Clients of the course call both spellings; a redirect would turn their POSTs into
    extra round trips (or, for some clients, GETs). The spelling without the slash is left
    out of the OpenAPI document so each operation appears once.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(route_class=AuthFirstRoute, **kwargs)

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        if path == "/" and self.prefix:
            super().add_api_route("", endpoint, **{**kwargs, "include_in_schema": False})
