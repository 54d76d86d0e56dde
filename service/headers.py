"""Security headers on every response."""

from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from service.asgi import HTTPMiddleware

# nosniff: browsers must not guess a JSON body is HTML or script. no-referrer: URLs (with ids
# in them) do not leak to other sites. DENY: no page may frame the API or its docs.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Where a response carries a token or a user's own data, no cache (browser or proxy) keeps it.
# The mail routes' answers too: a verified user's profile, or what became of a token.
CREDENTIAL_PATHS = frozenset(
    {
        "/login",
        "/auth/refresh",
        "/auth/forgot-password",
        "/auth/reset-password",
        "/auth/verify",
    }
)


def headers_for(path: str, has_authorization: bool) -> dict[str, str]:
    """The headers a response to this request must carry."""
    private = path.rstrip("/") in CREDENTIAL_PATHS or has_authorization
    return {**SECURITY_HEADERS, **({"Cache-Control": "no-store"} if private else {})}


class SecurityHeadersMiddleware(HTTPMiddleware):
    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        wanted = headers_for(
            scope["path"], any(name == b"authorization" for name, _ in scope["headers"])
        )

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in wanted.items():
                    if name == "Cache-Control":
                        headers[name] = value
                    else:
                        headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
