"""Root, liveness, readiness, the OpenAPI document, and errors no router raises."""

import asyncio
import uuid

import httpx
import pytest
from asgi_lifespan import LifespanManager

from devstore import EmbeddedStore
from service.main import create_app
from service.models import Post
from tests.conftest import free_port, make_settings
from tests.factories import create_user


async def test_root_greets(client):
    response = await client.get("/")
    assert response.status_code == 200
    assert isinstance(response.json()["message"], str)


async def test_liveness(client):
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"message": "ok"}


async def test_ready_when_mongodb_answers_and_indexes_exist(client):
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"message": "ready"}


async def test_not_ready_while_an_index_is_missing(client, restore_beanie):
    collection = Post.get_pymongo_collection()
    [name] = [n for n in (await collection.index_information()) if n.startswith("published")]
    await collection.drop_index(name)
    response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "detail": ["missing index posts {'published': 1, 'created_at': -1, '_id': -1}"]
    }


@pytest.mark.parametrize(
    ("method", "path", "status"), [("GET", "/nowhere", 404), ("DELETE", "/users/", 405)]
)
async def test_unknown_routes_answer_json(client, method, path, status):
    response = await client.request(method, path)
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()


async def test_unhandled_error_is_a_json_500(settings):
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": "Internal Server Error"}


async def test_database_outage_is_a_json_503_and_not_ready(tmp_path, restore_beanie):
    store = EmbeddedStore("memory", tmp_path)
    settings = make_settings(
        store.start(), f"outage_{uuid.uuid4().hex[:8]}", mongodb_timeout_ms=300
    )
    app = create_app(settings)
    async with (
        LifespanManager(app) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t"
        ) as client,
    ):
        user = await create_user(client)
        store.stop()
        response = await client.get("/posts/", headers=user.headers)
        assert response.status_code == 503
        assert response.json() == {"detail": "Database unavailable, try again shortly"}
        ready = await client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["detail"][0].startswith("MongoDB")
        alive = await client.get("/healthz")
        assert alive.status_code == 200


async def test_openapi_document_describes_the_contract(app):
    # A plain client: the schema names `password` fields, which the leak check would flag.
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as plain:
        response = await plain.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    assert set(spec["paths"]) == {
        "/",
        "/healthz",
        "/readyz",
        "/login",
        "/auth/refresh",
        "/auth/forgot-password",
        "/auth/reset-password",
        "/auth/verify",
        "/auth/verify/request",
        "/logout",
        "/logout/all",
        "/users/",
        "/users/me",
        "/users/me/password",
        "/users/{user_id}",
        "/posts/",
        "/posts/{post_id}",
        "/vote/",
        "/posts/{post_id}/comments",
        "/comments/{comment_id}",
        "/admin/users",
        "/admin/users/{user_id}/deactivate",
        "/admin/users/{user_id}/activate",
        "/admin/users/{user_id}/role",
        "/admin/posts/{post_id}",
        "/admin/comments/{comment_id}",
        "/admin/audit",
    }
    feed = spec["paths"]["/posts/"]["get"]["responses"]
    assert "X-Total-Count" in feed["200"]["headers"]
    put = spec["paths"]["/posts/{post_id}"]["put"]
    assert put["operationId"] == "update_post"
    assert set(put["responses"]) == {"200", "401", "403", "404", "412", "413", "422", "503"}
    assert "WWW-Authenticate" in put["responses"]["401"]["headers"]
    assert "Retry-After" in put["responses"]["503"]["headers"]
    operation_ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(operation_ids) == len(set(operation_ids))
    assert "read_posts" in operation_ids and "login" in operation_ids
    login = spec["paths"]["/login"]["post"]["requestBody"]["content"]
    assert "application/x-www-form-urlencoded" in login
    assert spec["components"]["securitySchemes"]["OAuth2PasswordBearer"]["flows"]["password"] == {
        "scopes": {},
        "tokenUrl": "login",
    }


async def test_starts_without_mongodb_and_becomes_ready_when_it_answers(tmp_path, restore_beanie):
    port = free_port()  # nothing listens here yet
    url = f"mongodb://127.0.0.1:{port}/?directConnection=true"
    app = create_app(make_settings(url, f"late_{uuid.uuid4().hex[:8]}", mongodb_timeout_ms=300))
    async with (
        LifespanManager(app, startup_timeout=30),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client,
    ):
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.headers["content-type"] == "application/json"
        assert not_ready.json()["detail"][0].startswith("not initialised")
        assert (await client.get("/healthz")).status_code == 200

        store = EmbeddedStore("memory", tmp_path, port=port)
        store.start()
        try:
            deadline = asyncio.get_running_loop().time() + 20
            while (ready := await client.get("/readyz")).status_code != 200:
                assert asyncio.get_running_loop().time() < deadline, ready.json()
                await asyncio.sleep(0.2)
            assert ready.json() == {"message": "ready"}
            user = await create_user(client)  # the data routes work without a restart
            assert (await client.get("/posts/", headers=user.headers)).status_code == 200
        finally:
            store.stop()
