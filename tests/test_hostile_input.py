"""Input that Python's JSON parser takes but MongoDB and JSON responses cannot: always a 4xx."""

import pytest

from tests.factories import create_admin, create_post, create_user

# Bodies json.loads accepts and RFC 8259 does not, or that nothing downstream can store.
NOT_JSON = {
    "nan": b'{"title": NaN, "content": "c"}',
    "infinity": b'{"title": "t", "content": "c", "published": Infinity}',
    "top-level-infinity": b"-Infinity",
    "float-overflow": b'{"title": 1e999, "content": "c"}',
    "lone-surrogate": b'{"title": "\\ud800", "content": "c"}',
    "surrogate-key": b'{"\\udfff": 1, "title": "t", "content": "c"}',
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
}
JSON = {"Content-Type": "application/json"}


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_unrepresentable_json_is_422_and_stores_nothing(client, body):
    user = await create_user(client)
    response = await client.post("/posts/", content=body, headers={**user.headers, **JSON})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    listed = await client.get("/posts/", headers=user.headers)
    assert listed.headers["x-total-count"] == "0"


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_unrepresentable_json_without_a_token_is_401(client, body):
    response = await client.post("/vote/", content=body, headers=JSON)
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_unrepresentable_json_to_an_admin_action_is_422_and_acts_on_nothing(client, body):
    """Deactivation's body is optional: a parser that let such a body through as "no reason"
    would deactivate the account."""
    admin, user = await create_admin(client), await create_user(client)
    response = await client.post(
        f"/admin/users/{user.id}/deactivate", content=body, headers={**admin.headers, **JSON}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
    assert (await client.get("/admin/audit", headers=admin.headers)).json() == []
    me = await client.get("/users/me", headers=user.headers)
    assert me.status_code == 200 and me.json()["role"] == "user"


@pytest.mark.parametrize("body", NOT_JSON.values(), ids=NOT_JSON.keys())
async def test_unrepresentable_json_to_an_admin_action_by_anyone_else_is_401_or_403(client, body):
    """Who may call the route is answered before anything is said of the body."""
    user = await create_user(client)
    path = f"/admin/users/{user.id}/deactivate"
    anonymous = await client.post(path, content=body, headers=JSON)
    member = await client.post(path, content=body, headers={**user.headers, **JSON})
    assert (anonymous.status_code, anonymous.json()) == (401, {"detail": "Not authenticated"})
    assert (member.status_code, member.json()) == (403, {"detail": "Admin role required"})


@pytest.mark.parametrize(
    "body",
    [
        b'{"email": NaN, "password": "password123"}',
        b'{"email": "\\ud800@example.com", "password": "password123"}',
        b'{"email": "a@example.com", "password": "\\ud800\\ud800\\ud800\\ud800\\ud800"}',
        b"Infinity",
    ],
    ids=["nan-email", "surrogate-email", "surrogate-password", "infinity"],
)
async def test_registration_with_unrepresentable_json_is_422(client, body):
    response = await client.post("/users/", content=body, headers=JSON)
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_vote_with_nan_direction_is_422(client):
    user = await create_user(client)
    post = await create_post(client, user)
    body = b'{"post_id": "%s", "dir": NaN}' % post["id"].encode()
    response = await client.post("/vote/", content=body, headers={**user.headers, **JSON})
    assert response.status_code == 422


async def test_invalid_utf8_in_a_query_is_answered(client):
    user = await create_user(client)
    await create_post(client, user, title="plain")
    response = await client.get("/posts/?search=%ED%A0%80", headers=user.headers)
    assert response.status_code == 200
    assert response.json() == []


async def test_a_body_that_is_not_json_at_all_is_422(client):
    user = await create_user(client)
    response = await client.post(
        "/posts/", content=b"\xff\xfe not utf-8", headers={**user.headers, **JSON}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"
