"""The skeleton the service's pure-ASGI middlewares share."""

from starlette.types import ASGIApp, Receive, Scope, Send


class HTTPMiddleware:
    """A middleware that acts on HTTP requests only; everything else (the lifespan) passes.

    Pure ASGI rather than Starlette's BaseHTTPMiddleware: no extra task per request, and
    bodies stream through untouched. Subclasses implement `handle`.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self.handle(scope, receive, send)

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise NotImplementedError
