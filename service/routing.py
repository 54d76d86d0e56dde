"""Router, route and request classes that carry rules of the contract for every route."""

import json
import math
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response, status
from fastapi.dependencies.models import Dependant
from fastapi.dependencies.utils import get_dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel

from service.deps import get_admin, get_app_settings, get_current_session, oauth2_scheme

type Responses = dict[int | str, dict[str, Any]]


class ErrorDetail(BaseModel):
    detail: str


def error(description: str) -> dict[str, Any]:
    """An OpenAPI `responses=` entry for an error with a `{"detail": "..."}` body."""
    return {"model": ErrorDetail, "description": description}


def _needs_user(dependant: Dependant) -> bool:
    return any(
        sub.call is get_current_session or _needs_user(sub) for sub in dependant.dependencies
    )


def _needs_admin(dependant: Dependant) -> bool:
    return any(sub.call is get_admin or _needs_admin(sub) for sub in dependant.dependencies)


def _has_body(dependant: Dependant) -> bool:
    return bool(dependant.body_params) or any(_has_body(sub) for sub in dependant.dependencies)


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} is out of range for a number")
    return value


def _check_strings(value: Any) -> None:
    if isinstance(value, str):
        value.encode("utf-8")  # raises UnicodeEncodeError on an unpaired surrogate
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key)
            _check_strings(item)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item)


class StrictJSONRequest(Request):
    """A request whose JSON body must be JSON as RFC 8259 defines it.

    Python's parser also takes NaN, Infinity, numbers beyond a float's range and unpaired
    surrogate escapes; none of them can be stored in MongoDB or written back in a response,
    so each is a 422 `json_invalid` here rather than a 500 further on.
    """

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = (await self.body()).decode("utf-8", errors="replace")
            try:
                parsed = json.loads(body, parse_constant=_no_constants, parse_float=_finite)
                _check_strings(parsed)
            except json.JSONDecodeError:
                raise
            except (ValueError, RecursionError) as error:
                message = "nested too deeply" if isinstance(error, RecursionError) else str(error)
                raise json.JSONDecodeError(message, body, 0) from None
            self._json = parsed
        return self._json


BEARER_HEADER = {
    "WWW-Authenticate": {"description": "Always `Bearer`", "schema": {"type": "string"}}
}
RETRY_AFTER_HEADER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}
UNAUTHENTICATED: dict[str, Any] = {
    "model": ErrorDetail,
    "description": "No token, or one that is invalid, expired, revoked or of a deleted user",
    "headers": BEARER_HEADER,
}
NOT_ADMIN: dict[str, Any] = {
    "model": ErrorDetail,
    "description": "The caller is not an admin (`Admin role required`)",
}
UNAVAILABLE: dict[str, Any] = {
    "model": ErrorDetail,
    "description": "MongoDB is unreachable; try again after Retry-After seconds",
    "headers": RETRY_AFTER_HEADER,
}
TOO_LARGE: dict[str, Any] = {
    "model": ErrorDetail,
    "description": "The body is larger than MAX_BODY_BYTES",
}


def contract_responses(path: str, endpoint: Callable[..., Any], responses: Responses) -> Responses:
    """The route's own error responses plus those every route of its kind can answer, so that
    the OpenAPI document names every status a client may see: 401 (with WWW-Authenticate) on
    protected routes, 403 on admin routes, 413 on routes with a body, 503 on all of them (they
    all use MongoDB)."""
    dependant = get_dependant(path=path, call=endpoint)
    extra: Responses = {status.HTTP_503_SERVICE_UNAVAILABLE: UNAVAILABLE}
    if _needs_user(dependant):
        extra[status.HTTP_401_UNAUTHORIZED] = UNAUTHENTICATED
    if _needs_admin(dependant):
        extra[status.HTTP_403_FORBIDDEN] = NOT_ADMIN
    if _has_body(dependant):  # JSON bodies, and forms (login's comes from a dependency)
        extra[status.HTTP_413_CONTENT_TOO_LARGE] = TOO_LARGE
    merged = dict(responses)
    for code, entry in extra.items():
        merged[code] = {**entry, **merged.get(code, {})}
        if "headers" in entry:
            merged[code]["headers"] = {**entry["headers"], **merged[code].get("headers", {})}
    return merged


class ContractRoute(APIRoute):
    """Strict JSON bodies, and 401 (not 422) when an unauthenticated request is also malformed.

    FastAPI parses a JSON body before it runs any dependency, and collects path errors after
    them, so without the second rule a caller with no token could learn how the body or path
    is checked. Likewise an admin route answers a caller who is no admin 403, not 422. Only
    a failing request pays for the second look at the token. The OpenAPI
    document also learns the errors every such route can answer (`contract_responses`).
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        kwargs["responses"] = contract_responses(path, endpoint, kwargs.get("responses") or {})
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        needs_user = _needs_user(self.dependant)
        needs_admin = _needs_admin(self.dependant)

        async def handle(request: Request) -> Response:
            request = StrictJSONRequest(request.scope, request.receive)
            if not needs_user:
                return await handler(request)
            try:
                return await handler(request)
            except RequestValidationError:
                token = await oauth2_scheme(request)
                session = await get_current_session(await get_app_settings(request), token)
                if needs_admin:
                    await get_admin(session.user)  # raises the 403
                raise

        return handle


class CollectionRouter(APIRouter):
    """Serve a collection's root on both `/things` and `/things/`, with no 307 between them.

    Clients of the course call both spellings; a redirect would turn their POSTs into
    extra round trips (or, for some clients, GETs). The spelling without the slash is left
    out of the OpenAPI document so each operation appears once.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(route_class=ContractRoute, **kwargs)

    def add_api_route(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().add_api_route(path, endpoint, **kwargs)
        if path == "/" and self.prefix:
            super().add_api_route("", endpoint, **{**kwargs, "include_in_schema": False})


# The headers of a page that has a next one (the feed, a post's comments).
NEXT_PAGE_HEADERS: dict[str, Any] = {
    "Link": {
        "description": 'The next page, as `<url>; rel="next"` (RFC 8288), if any',
        "schema": {"type": "string"},
    },
    "X-Next-Cursor": {
        "description": "The `cursor` of the next page, if any",
        "schema": {"type": "string"},
    },
}
