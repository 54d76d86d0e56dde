"""The admin API (issue 16), who may call what: every admin route refuses a request without a
token (401) and a member's (403) and does its work for an admin, the table of routes covers
every route, and unknown ids and hostile input are refused without writing anything.
"""

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from beanie import PydanticObjectId
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

from service.models import Comment, Post, User
from tests.factories import (
    ACTIONS,
    ADMIN_ONLY,
    MISSING_ID,
    REASON,
    LoggedInUser,
    act,
    audit_count,
    audit_rows,
    comment,
    comment_ids,
    counts,
    create_admin,
    create_post,
    create_user,
    done,
    stored,
)


@dataclass
class World:
    """An admin, an ordinary member, and a target user with a post and a comment on it."""

    admin: LoggedInUser
    member: LoggedInUser
    target: LoggedInUser
    post: dict[str, Any]
    comment: dict[str, Any]
    # Each user as the admin routes show them, by id.
    accounts: dict[str, dict[str, Any]]


async def make_world(client: httpx.AsyncClient) -> World:
    admin, member, target = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    post = await create_post(client, target)
    made = await comment(client, target, post["id"])
    accounts = {}
    for user in (admin, member, target):
        me = await client.get("/users/me", headers=user.headers)
        accounts[user.id] = {**me.json(), "active": True}
    # One entry in the audit log, for GET /admin/audit to show.
    await done(client, admin, "set_role", member.id, {"role": "user"})
    return World(admin, member, target, post, made, accounts)


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # as in app.routes
    status: int
    # The admin's answer's body (None: empty), audit entries without their id and time.
    expect: Callable[[World], Any]
    body: Any = None
    # The lists' newest items are the world's: other tests' users and entries come before.
    params: dict[str, Any] = field(default_factory=dict)


ROUTES = [
    Route(
        "GET",
        "/admin/users",
        200,
        lambda w: [w.accounts[user.id] for user in (w.target, w.member, w.admin)],
        params={"limit": 3},
    ),
    Route(
        "POST",
        "/admin/users/{user_id}/deactivate",
        200,
        lambda w: {**w.accounts[w.target.id], "active": False},
        {"reason": REASON},
    ),
    Route("POST", "/admin/users/{user_id}/activate", 200, lambda w: w.accounts[w.target.id]),
    Route(
        "PUT",
        "/admin/users/{user_id}/role",
        200,
        lambda w: {**w.accounts[w.target.id], "role": "admin"},
        {"role": "admin"},
    ),
    Route("DELETE", "/admin/posts/{post_id}", 204, lambda w: None),
    Route("DELETE", "/admin/comments/{comment_id}", 204, lambda w: None, {"reason": REASON}),
    Route(
        "GET",
        "/admin/audit",
        200,
        lambda w: [
            {
                "via": "api",
                "actor": {"id": w.admin.id, "email": w.admin.email},
                "action": "set_role",
                "target": {"kind": "user", "id": w.member.id},
                "reason": None,
                "outcome": "done",
                "detail": "role: already user",
            }
        ],
        params={"limit": 1},
    ),
]


def api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    """Every APIRoute, those of included routers too (FastAPI keeps an included router
    whole in `app.routes`, as service/main.py's `_methods_of` reads it)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if isinstance(included, APIRouter):
            yield from api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


async def test_the_table_covers_every_admin_route(app: FastAPI) -> None:
    table = {(route.method, route.path) for route in ROUTES}
    routes = {
        (method, route.path)
        for route in api_routes(app.routes)
        if route.path.startswith("/admin")
        for method in route.methods or ()
    }
    assert routes == table
    documented = {
        (method.upper(), path)
        for path, operations in app.openapi()["paths"].items()
        if path.startswith("/admin")
        for method in operations
    }
    assert documented == table


def without_time(body: Any) -> Any:
    return [{k: v for k, v in entry.items() if k not in {"id", "created_at"}} for entry in body]


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
async def test_no_token_is_401_a_member_403_and_an_admin_succeeds(
    client: httpx.AsyncClient, route: Route
) -> None:
    w = await make_world(client)
    path = route.path.format(user_id=w.target.id, post_id=w.post["id"], comment_id=w.comment["id"])
    malformed = route.path.format(user_id="nope", post_id="nope", comment_id="nope")
    entries = await audit_count()

    async def call(url: str, user: LoggedInUser | None, body: Any, **params: Any) -> httpx.Response:
        headers = {} if user is None else user.headers
        return await client.request(route.method, url, json=body, params=params, headers=headers)

    anonymous = await call(path, None, route.body)
    assert (anonymous.status_code, anonymous.json()) == (401, {"detail": "Not authenticated"})
    assert anonymous.headers["www-authenticate"] == "Bearer"
    # A member is refused for who they are, before what they sent is read.
    for url, body, params in [(path, route.body, {}), (malformed, ["no"], {"limit": 0})]:
        refused = await call(url, w.member, body, **params)
        assert (refused.status_code, refused.json()) == (403, ADMIN_ONLY), url
    # The same malformed request is a 422 to an admin: the member's 403 was not by chance.
    invalid = await call(malformed, w.admin, ["no"], limit=0)
    assert invalid.status_code == 422, invalid.text
    assert await audit_count() == entries
    assert await stored(Post, _id=w.post["id"]) == await stored(Comment, _id=w.comment["id"]) == 1
    target = await User.get(PydanticObjectId(w.target.id))
    assert target is not None and (target.role, target.active) == ("user", True)

    response = await call(path, w.admin, route.body, **route.params)
    assert response.status_code == route.status, response.text
    body = response.json() if response.content else None
    if route.path == "/admin/audit":
        body = without_time(body)
    assert body == route.expect(w)
    # An action leaves one audit document; a list, none.
    assert await audit_count() == entries + (route.method != "GET")
    if route.path == "/admin/posts/{post_id}":
        assert await counts(client, w.target, w.post["id"]) is None
    if route.path == "/admin/comments/{comment_id}":
        assert await comment_ids(client, w.target, w.post["id"]) == []


async def test_unknown_ids_are_404_and_malformed_ones_422(client):
    admin = await create_admin(client)
    post = await create_post(client, admin)
    made = await comment(client, admin, post["id"])
    await done(client, admin, "delete_comment", made["id"])
    await done(client, admin, "delete_post", post["id"])
    cases = [
        ("delete_post", MISSING_ID, f"post with id: {MISSING_ID} does not exist"),
        ("delete_post", post["id"], f"post with id: {post['id']} does not exist"),
        ("delete_comment", MISSING_ID, f"comment with id: {MISSING_ID} does not exist"),
        ("delete_comment", made["id"], f"comment with id: {made['id']} does not exist"),
        ("deactivate_user", MISSING_ID, f"User with id: {MISSING_ID} does not exist"),
        ("activate_user", MISSING_ID, f"User with id: {MISSING_ID} does not exist"),
    ]
    for action, target_id, detail in cases:
        response = await act(client, admin, action, target_id)
        assert (response.status_code, response.json()) == (404, {"detail": detail}), action
    missing_role = await act(client, admin, "set_role", MISSING_ID, {"role": "admin"})
    assert missing_role.status_code == 404
    entries = await audit_count()
    for action in ACTIONS:
        for bad_id in ("nope", MISSING_ID[:-1], MISSING_ID + "0", "g" * 24):
            response = await act(client, admin, action, bad_id, {"role": "admin"})
            assert response.status_code == 422, (action, bad_id, response.text)
            assert response.json()["detail"][0]["loc"][:1] == ["path"]
    assert await audit_count() == entries


# Hostile input

TOO_LONG = "x" * 501
HOSTILE = [
    ("deactivate_user", {"reason": TOO_LONG}),
    ("deactivate_user", {"reason": ""}),
    ("deactivate_user", {"reason": 5}),
    ("deactivate_user", ["reason"]),
    ("deactivate_user", "Spam"),
    ("activate_user", {"reason": TOO_LONG}),
    ("activate_user", 5),
    ("set_role", {"role": "superuser"}),
    ("set_role", {"role": "Admin"}),
    ("set_role", {"role": None}),
    ("set_role", {}),
    ("set_role", None),
    ("set_role", {"role": "admin", "reason": TOO_LONG}),
    ("set_role", [{"role": "admin"}]),
    ("delete_post", {"reason": TOO_LONG}),
    ("delete_post", []),
    ("delete_comment", {"reason": TOO_LONG}),
    ("delete_comment", True),
]


@pytest.mark.parametrize(("action", "body"), HOSTILE)
async def test_hostile_input_is_422_and_writes_no_audit_document(client, action, body):
    admin, user = await create_admin(client), await create_user(client)
    post = await create_post(client, user)
    made = await comment(client, user, post["id"])
    target = {"delete_post": post["id"], "delete_comment": made["id"]}.get(action, user.id)
    response = await act(client, admin, action, target, body)
    assert response.status_code == 422, response.text
    assert isinstance(response.json()["detail"], list)
    assert await audit_count() == 0
    assert (await client.get("/users/me", headers=user.headers)).json()["role"] == "user"
    assert await counts(client, user, post["id"]) == (0, 1)


async def test_a_body_that_is_not_json_is_422_and_the_longest_reason_is_kept(client):
    admin, user = await create_admin(client), await create_user(client)
    method, path = ACTIONS["deactivate_user"]
    broken = await client.request(
        method,
        path.format(user.id),
        content=b'{"reason": ',
        headers={**admin.headers, "Content-Type": "application/json"},
    )
    assert broken.status_code == 422
    assert await audit_count() == 0
    await done(client, admin, "deactivate_user", user.id, {"reason": "x" * 500})
    [row] = await audit_rows()
    assert row["reason"] == "x" * 500
