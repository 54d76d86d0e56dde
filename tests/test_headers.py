"""Security headers, CORS and the switch for the docs."""

import httpx
import pytest
from asgi_lifespan import LifespanManager

from service.config import Settings
from service.main import create_app
from tests.factories import DEFAULT_PASSWORD, create_admin, create_user, register

SECURITY = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/healthz"), ("GET", "/posts/"), ("GET", "/admin/users"), ("GET", "/nowhere")],
)
async def test_every_response_carries_the_security_headers(client, method, path):
    response = await client.request(method, path)
    assert {name: response.headers.get(name) for name in SECURITY} == SECURITY


async def test_login_answers_are_never_cached(client):
    await register(client, "ann@example.com")
    ok = await client.post(
        "/login", data={"username": "ann@example.com", "password": DEFAULT_PASSWORD}
    )
    refused = await client.post("/login", data={"username": "ann@example.com", "password": "x"})
    assert ok.status_code == 200 and refused.status_code == 403
    assert ok.headers["cache-control"] == refused.headers["cache-control"] == "no-store"


async def test_authenticated_answers_are_never_cached_and_public_ones_may_be(client):
    user = await create_user(client)
    me = await client.get("/users/me", headers=user.headers)
    health = await client.get("/healthz")
    assert me.headers["cache-control"] == "no-store"
    assert "cache-control" not in health.headers


async def test_admin_answers_are_never_cached(client):
    """Every account's email, and the audit log: no cache may keep them, nor a refusal."""
    admin, user, member = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    answers = [
        await client.get("/admin/users", headers=admin.headers),
        await client.post(f"/admin/users/{user.id}/deactivate", headers=admin.headers),
        await client.get("/admin/audit", headers=admin.headers),
        await client.get("/admin/audit", headers=member.headers),
        await client.get("/admin/audit", headers=user.headers),  # deactivated: its token is dead
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200, 403, 401]
    assert [answer.headers.get("cache-control") for answer in answers] == ["no-store"] * 5


def test_cors_origins_read_as_a_comma_separated_or_json_list(monkeypatch):
    monkeypatch.setenv("CORS_ORIGINS", " https://a.example , https://b.example ")
    assert Settings(_env_file=None).cors_origins == ["https://a.example", "https://b.example"]
    monkeypatch.setenv("CORS_ORIGINS", '["https://c.example"]')
    assert Settings(_env_file=None).cors_origins == ["https://c.example"]
    monkeypatch.delenv("CORS_ORIGINS")
    assert Settings(_env_file=None).cors_origins == []


PREFLIGHT = {
    "Origin": "https://app.example",
    "Access-Control-Request-Method": "GET",
    "Access-Control-Request-Headers": "authorization",
}


async def test_no_origin_is_allowed_by_default(client):
    preflight = await client.options("/posts/", headers=PREFLIGHT)
    simple = await client.get("/healthz", headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in simple.headers


async def _serve(
    settings: Settings, requests: list[tuple[str, str, dict[str, str]]]
) -> list[httpx.Response]:
    app = create_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        return [
            await http.request(method, path, headers=headers) for method, path, headers in requests
        ]


async def test_configured_origins_are_allowed_and_others_not(settings, restore_beanie):
    configured = settings.model_copy(update={"cors_origins": ["https://app.example"]})
    allowed, other, listing = await _serve(
        configured,
        [
            ("OPTIONS", "/posts/", PREFLIGHT),
            ("OPTIONS", "/posts/", {**PREFLIGHT, "Origin": "https://evil.example"}),
            ("GET", "/posts/", {"Origin": "https://app.example"}),
        ],
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in allowed.headers
    assert other.status_code == 400
    assert "access-control-allow-origin" not in other.headers
    assert "x-total-count" in listing.headers["access-control-expose-headers"].lower()


async def test_docs_can_be_switched_off(settings, restore_beanie):
    off = settings.model_copy(update={"docs_enabled": False})
    responses = await _serve(
        off, [("GET", path, {}) for path in ("/docs", "/redoc", "/openapi.json", "/healthz")]
    )
    assert [r.status_code for r in responses] == [404, 404, 404, 200]


async def test_a_500_carries_the_security_headers_too(settings):
    app = create_app(settings.model_copy(update={"cors_origins": ["https://app.example"]}))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get(
            "/boom", headers={"Authorization": "Bearer x", "Origin": "https://app.example"}
        )
        other = await http.get("/boom", headers={"Origin": "https://evil.example"})
    assert response.status_code == other.status_code == 500
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "access-control-allow-origin" not in other.headers
    assert {name: response.headers.get(name) for name in SECURITY} == SECURITY
    assert response.headers["cache-control"] == "no-store"
    assert len(response.headers["x-request-id"]) == 32
