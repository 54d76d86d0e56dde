"""The application factory."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from beanie.exceptions import CollectionWasNotInitialized
from fastapi import APIRouter, FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from pymongo.errors import ConnectionFailure, ExecutionTimeout, PyMongoError
from pymongo.monitoring import CommandListener
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Route
from starlette.types import Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from service import db, docs, logs, mail, metrics, recovery, security
from service.asgi import HTTPMiddleware
from service.config import Settings, get_settings
from service.headers import SecurityHeadersMiddleware
from service.limits import BodySizeLimitMiddleware
from service.routers import admin, auth, comments, posts, users, votes

logger = logging.getLogger(__name__)

# Response headers a browser client on an allowed origin may read.
EXPOSED_HEADERS = ["X-Total-Count", logs.REQUEST_ID_HEADER]


class Status(BaseModel):
    message: str


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings.with_secret_key().check_mail()
    app.state.settings = settings
    listeners = list(app.state.command_listeners)
    if settings.metrics_enabled:
        listeners.append(metrics.CommandMetrics())
    async with db.connect(settings, listeners, bounded=True) as database:
        app.state.database = database
        app.state.initialised = initialised = asyncio.Event()
        retry: asyncio.Task[None] | None = None
        try:
            await db.initialise(database)
            initialised.set()
        except ConnectionFailure as error:
            # Start anyway: /healthz answers, /readyz and data routes say 503 until MongoDB
            # does, so an orchestrator can tell "starting" from "dead".
            logger.error("MongoDB is unreachable; serving 503 until it answers: %s", error)
            retry = asyncio.create_task(db.initialise_when_reachable(database, initialised))
        await security.warm_up(settings)
        app.state.mail_sender = sender = mail.Sender(settings, recovery.PREPARERS)
        app.state.mail_sending = asyncio.create_task(sender.run(initialised), name="outbox")
        logger.info("Mail goes %s", sender.describe())
        try:
            yield
        finally:
            await sender.close(app.state.mail_sending)
            if retry is not None:
                retry.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await retry


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and "password" in key.lower()


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _redact(v) for k, v in value.items() if not _is_secret(k)}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


async def validation_failed(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's standard 422 body, without echoing passwords back.

    Each error's `input` repeats what was rejected: the password itself when the password
    breaks a rule, or the whole body when a field is missing.
    """
    assert isinstance(exc, RequestValidationError)
    errors = []
    for error in exc.errors():
        error = dict(error)
        whole_body = tuple(error.get("loc", ())) == ("body",)
        if any(_is_secret(part) for part in error.get("loc", ())) or (
            # A body that is not an object (a form, a bare string) is echoed whole, and may
            # be `password=...`: nothing of it comes back.
            whole_body and not isinstance(error.get("input"), dict)
        ):
            error.pop("input", None)
        elif "input" in error:
            error["input"] = _redact(error["input"])
        errors.append(error)
    return JSONResponse(
        {"detail": jsonable_encoder(errors)}, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


async def http_error(request: Request, exc: Exception) -> Response:
    """FastAPI's JSON answer to an HTTPException; a 405 with an `Allow` header that lists every
    method the path answers.

    Starlette names only the methods of the first route whose path matched, so `DELETE
    /users/me` would look unsupported to an `OPTIONS /users/me` caller."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code != status.HTTP_405_METHOD_NOT_ALLOWED:
        return await http_exception_handler(request, exc)
    methods = _methods_of(request.url.path, request.app.router.routes)
    headers = {"Allow": ", ".join(sorted(methods))} if methods else exc.headers
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)


def _methods_of(path: str, routes: Sequence[BaseRoute]) -> set[str]:
    methods: set[str] = set()
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI's include_router
        if isinstance(included, APIRouter):
            methods |= _methods_of(path, included.routes)
        elif isinstance(route, Route) and route.path_regex.match(path):
            methods |= route.methods or set()
    return methods


async def database_timed_out(request: Request, exc: Exception) -> JSONResponse:
    """A request's database work that ran out of MONGODB_TIMEOUT_MS is a 503 as well; any
    other driver error is a fault of ours and goes on to the 500."""
    if isinstance(exc, PyMongoError) and exc.timeout:
        return await database_unavailable(request, exc)
    raise exc


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.error("MongoDB unavailable on %s %s: %r", request.method, request.url.path, exc)
    return JSONResponse(
        {"detail": "Database unavailable, try again shortly"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": "5"},
    )


class UnhandledErrorMiddleware(HTTPMiddleware):
    """Answer an unhandled error with a JSON 500, inside the app's own middlewares.

    Starlette would answer it in text/plain from its outermost layer, past the middlewares
    that add the request id, the security headers and CORS; here the 500 passes through them
    like any other response, and the error is logged once, with its request id.
    """

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            logger.exception("Unhandled error on %s %s", scope["method"], scope["path"])
            if started:  # too late to answer: the client sees the connection end
                raise
            response = JSONResponse(
                {"detail": "Internal Server Error"},
                status_code=status.HTTP_500_INTERNAL_SERVER_ERROR,
            )
            await response(scope, receive, send)


def create_app(
    settings: Settings | None = None, *, command_listeners: Sequence[CommandListener] = ()
) -> FastAPI:
    """Build the app; `settings` overrides the environment (tests pass their own), and
    `command_listeners` watch its MongoDB commands (tests count round trips with them)."""
    settings = settings or get_settings()
    logs.configure(settings.log_level, settings.log_format)
    app = FastAPI(
        title="Social API",
        summary="The FastAPI course's social network: users, posts and votes on MongoDB.",
        version="1.0.0",
        lifespan=lifespan,
        # service.docs serves both from local assets; FastAPI's own load them from a CDN.
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        # Operation ids are the handlers' names (`read_posts`, `login`): stable and readable.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.settings = settings
    app.state.command_listeners = command_listeners
    # Added first: the innermost, so their answers pass through the headers middlewares too.
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnhandledErrorMiddleware)
    if settings.cors_origins:
        # Bearer tokens, not cookies: no credentials mode, so no origin can ride a session.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type", logs.REQUEST_ID_HEADER],
            expose_headers=EXPOSED_HEADERS,
        )
    app.add_middleware(SecurityHeadersMiddleware)
    observe = metrics.observe_request if settings.metrics_enabled else None
    app.add_middleware(logs.RequestLogMiddleware, observe=observe)
    if settings.trusted_proxies:
        # Outermost, so that everything inside (the login throttle above all) sees the client
        # that the trusted proxy names in X-Forwarded-For, and never a forged one: the header
        # is read only from a peer in TRUSTED_PROXIES. Servers must not rewrite the client
        # themselves (`social-api serve` and the image run uvicorn with proxy headers off).
        app.add_middleware(ProxyHeadersMiddleware, trusted_hosts=settings.trusted_proxy_networks)
    app.add_exception_handler(RequestValidationError, validation_failed)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ConnectionFailure, database_unavailable)
    app.add_exception_handler(ExecutionTimeout, database_unavailable)
    app.add_exception_handler(PyMongoError, database_timed_out)
    # Until the first connection succeeds, Beanie's documents are not bound to a collection.
    app.add_exception_handler(CollectionWasNotInitialized, database_unavailable)

    app.include_router(auth.router)
    app.include_router(users.router)
    app.include_router(posts.router)
    app.include_router(votes.router)
    app.include_router(comments.router)
    app.include_router(admin.router)
    if settings.metrics_enabled:
        # For Prometheus on an internal network: not part of the API, nor of its schema.
        app.add_route(
            "/metrics", metrics.metrics_endpoint, methods=["GET"], include_in_schema=False
        )
    if settings.docs_enabled:
        docs.mount(app)

    @app.get("/", tags=["Health"])
    async def root() -> Status:
        """A greeting, to show the API answers."""
        return Status(message="Welcome to the Social API: see /docs")

    @app.get("/healthz", tags=["Health"])
    async def healthz() -> Status:
        """Liveness: the process is up."""
        return Status(message="ok")

    @app.get(
        "/readyz",
        tags=["Health"],
        responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"description": "Not ready"}},
    )
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: MongoDB answers a ping and every declared index exists."""
        state = request.app.state
        problems = await db.readiness_problems(state.database, state.initialised.is_set())
        if problems:
            return JSONResponse(
                {"detail": problems}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE
            )
        return JSONResponse({"message": "ready"})

    return app
