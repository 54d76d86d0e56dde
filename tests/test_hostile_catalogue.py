"""The hostile input catalogue: each entry answers a 4xx with a JSON body and changes no data.

Operator objects and wrong types in every field of every JSON body, operator-looking and
pattern-looking query values, bodies over MAX_BODY_BYTES, wrong content types and invalid
UTF-8. "No data changed" is checked on every collection that holds data or sessions, before
and after (failed logins are the throttle's to count, so login_attempts is left out); the
audit log among them, so an admin action that took a hostile value would show there even
where it changes nothing else. The admin routes are called by an admin: anyone else is
refused (403) before their input is read.
"""

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from bson import ObjectId
from fastapi import FastAPI

from tests.factories import (
    DEFAULT_PASSWORD,
    LoggedInUser,
    create_admin,
    create_post,
    create_user,
)

OPERATORS: dict[str, Any] = {
    "ne-null": {"$ne": None},
    "gt-empty": {"$gt": ""},
    "where": {"$where": "sleep(1000) || true"},
    "regex": {"$regex": ".*"},
    "in": {"$in": ["a", "b"]},
}
# Wrong JSON types: every field of every body is a string, a boolean or an integer.
WRONG_TYPES: dict[str, Any] = {
    "array": ["x"],
    "object": {"a": 1},
    "number": 12345,
    "float": 1.5,
    "true": True,
    "null": None,
}
NOT_A_STRING = {**OPERATORS, **{k: v for k, v in WRONG_TYPES.items() if k != "null"}}
NOT_A_BOOL = {**OPERATORS, "string": "true", "one": 1, "zero": 0, "array": [True]}
NOT_0_OR_1 = {**OPERATORS, "string": "1", "true": True, "float": 1.0, "two": 2, "minus": -1}
# An admin's reason: optional (null is no reason), 1 to 500 characters.
NOT_A_REASON = {**NOT_A_STRING, "empty": "", "too-long": "x" * 501}
NOT_A_ROLE = {**NOT_A_STRING, "null": None, "unknown": "superuser", "capitalised": "Admin"}
DATA = ("users", "posts", "votes", "comments", "refresh_tokens", "counters", "audit")


@dataclass
class World:
    user: LoggedInUser
    post_id: str
    comment_id: str
    admin: LoggedInUser

    def headers(self, path: str) -> dict[str, str]:
        """Who calls `path`: the admin on the admin routes, the user elsewhere."""
        return (self.admin if path.startswith("/admin/") else self.user).headers


@pytest.fixture
async def world(client: httpx.AsyncClient) -> World:
    user = await create_user(client)
    post = await create_post(client, user)
    comment = await client.post(
        f"/posts/{post['id']}/comments", json={"content": "c"}, headers=user.headers
    )
    assert comment.status_code == 201, comment.text
    admin = await create_admin(client)
    return World(user=user, post_id=post["id"], comment_id=comment.json()["id"], admin=admin)


async def snapshot(app: FastAPI) -> dict[str, list[dict[str, Any]]]:
    database = app.state.database
    return {name: await database[name].find().sort("_id", 1).to_list() for name in DATA}


@pytest.fixture
async def unchanged(app: FastAPI, world: World, quiet_outbox: None) -> AsyncIterator[None]:
    """Fails the test if any data or session document changed during it. The outbox's sender
    is stopped first: its mail to the world's new accounts would write to their documents."""
    before = await snapshot(app)
    yield
    assert await snapshot(app) == before


def assert_json_4xx(response: httpx.Response, *expected: int) -> None:
    assert response.status_code in (expected or range(400, 500)), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert "detail" in response.json()


def good_bodies(world: World) -> dict[str, tuple[str, str, dict[str, Any]]]:
    """A valid body for each JSON operation: (method, path, body)."""
    return {
        "register": ("POST", "/users/", {"email": "new@example.com", "password": "p" * 10}),
        "create-post": ("POST", "/posts/", {"title": "t", "content": "c", "published": True}),
        "update-post": (
            "PUT",
            f"/posts/{world.post_id}",
            {"title": "t2", "content": "c2", "published": False},
        ),
        "vote": ("POST", "/vote/", {"post_id": world.post_id, "dir": 1}),
        "refresh": ("POST", "/auth/refresh", {"refresh_token": world.user.refresh_token}),
        "logout": ("POST", "/logout", {"refresh_token": world.user.refresh_token}),
        "password": (
            "PUT",
            "/users/me/password",
            {"current_password": DEFAULT_PASSWORD, "new_password": "another secret"},
        ),
        "delete-me": ("DELETE", "/users/me", {"password": DEFAULT_PASSWORD}),
        "comment": ("POST", f"/posts/{world.post_id}/comments", {"content": "c"}),
        # The admin actions, each on the world's own user, post and comment: one that took a
        # hostile value would act on them, and leave an audit document in any case.
        "deactivate": ("POST", f"/admin/users/{world.user.id}/deactivate", {"reason": "r"}),
        "activate": ("POST", f"/admin/users/{world.user.id}/activate", {"reason": "r"}),
        "set-role": ("PUT", f"/admin/users/{world.user.id}/role", {"role": "admin"}),
        "admin-delete-post": ("DELETE", f"/admin/posts/{world.post_id}", {"reason": "r"}),
        "admin-delete-comment": ("DELETE", f"/admin/comments/{world.comment_id}", {"reason": "r"}),
    }


# (operation, field, the bad values for it)
FIELDS = [
    ("register", "email", NOT_A_STRING | {"null": None}),
    ("register", "password", NOT_A_STRING | {"null": None}),
    ("create-post", "title", NOT_A_STRING | {"null": None}),
    ("create-post", "content", NOT_A_STRING | {"null": None}),
    ("create-post", "published", NOT_A_BOOL | {"null": None}),
    ("update-post", "title", NOT_A_STRING | {"null": None}),
    ("update-post", "published", NOT_A_BOOL),
    ("vote", "post_id", NOT_A_STRING | {"null": None, "short": "abc", "not-hex": "g" * 24}),
    ("vote", "dir", NOT_0_OR_1 | {"null": None}),
    ("refresh", "refresh_token", NOT_A_STRING | {"null": None}),
    ("logout", "refresh_token", NOT_A_STRING),  # null is allowed: the field is optional
    ("password", "current_password", NOT_A_STRING | {"null": None}),
    ("password", "new_password", NOT_A_STRING | {"null": None}),
    ("delete-me", "password", NOT_A_STRING | {"null": None}),
    ("comment", "content", NOT_A_STRING | {"null": None, "empty": ""}),
    ("deactivate", "reason", NOT_A_REASON),  # null is allowed: no reason given
    ("activate", "reason", NOT_A_REASON),
    ("set-role", "role", NOT_A_ROLE),
    ("set-role", "reason", NOT_A_REASON),
    ("admin-delete-post", "reason", NOT_A_REASON),
    ("admin-delete-comment", "reason", NOT_A_REASON),
]
CASES = [
    pytest.param(operation, field, value, id=f"{operation}-{field}-{name}")
    for operation, field, values in FIELDS
    for name, value in values.items()
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(("operation", "field", "value"), CASES)
async def test_a_hostile_value_in_any_field_is_422(client, world, operation, field, value):
    method, path, body = good_bodies(world)[operation]
    response = await client.request(
        method, path, json={**body, field: value}, headers=world.headers(path)
    )
    assert_json_4xx(response, 422)
    assert any(error["loc"][-1] == field for error in response.json()["detail"])


# Not logout: every field of its body is optional, so any object (or null, or no body) is
# an ordinary logout (see tests/test_sessions.py). Nor, for the same reason, the admin actions
# whose only field is the optional reason: see the next test.
OPERATIONS = [
    *("register", "create-post", "update-post", "vote", "refresh", "password", "delete-me"),
    *("comment", "set-role"),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "body",
    [["a"], "text", 42, None, {"$where": "1"}],
    ids=["array", "string", "number", "null", "operator-only"],
)
async def test_a_body_that_is_not_the_expected_object_is_422(client, world, operation, body):
    method, path, _ = good_bodies(world)[operation]
    response = await client.request(method, path, json=body, headers=world.headers(path))
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "operation", ["deactivate", "activate", "admin-delete-post", "admin-delete-comment"]
)
@pytest.mark.parametrize(
    "body", [["a"], "text", 42, True], ids=["array", "string", "number", "bool"]
)
async def test_an_admin_actions_body_that_is_not_an_object_is_422(client, world, operation, body):
    """Null (or no body) is an action with no reason, and any object one whose reason is
    looked for in it; anything else is refused."""
    method, path, _ = good_bodies(world)[operation]
    response = await client.request(method, path, json=body, headers=world.headers(path))
    assert_json_4xx(response, 422)


async def test_operator_keys_beside_the_fields_are_ignored_not_applied(client, world, app):
    body = {
        "title": "mine",
        "content": "c",
        "owner_id": "0" * 24,
        "$set": {"owner_id": "0" * 24},
        "votes": 1000,
        "hidden": True,
    }
    response = await client.post("/posts/", json=body, headers=world.user.headers)
    assert response.status_code == 201
    assert response.json()["owner_id"] == world.user.id
    stored = await app.state.database["posts"].find_one({"title": "mine"})
    assert set(stored) == {
        *("_id", "title", "content", "published", "created_at", "owner_id"),
        *("owner", "votes", "comments", "hidden"),  # the service's, never the body's
    }
    assert stored["votes"] == stored["comments"] == 0
    assert stored["hidden"] is False
    assert stored["owner"]["email"] == world.user.email
    read = await client.get(f"/posts/{response.json()['id']}", headers=world.user.headers)
    assert read.json()["votes"] == 0


async def test_keys_beside_a_role_change_are_ignored_not_applied(client, world, app):
    """Only the role changes: not the account's active flag, email or sessions, and nothing of
    the audit document but the reason is taken from the body."""
    body = {
        "role": "admin",
        "active": False,
        "email": "taken@example.com",
        "$set": {"active": False, "session_epoch": 99},
        "actor_id": world.user.id,
        "outcome": "refused",
    }
    path = f"/admin/users/{world.user.id}/role"
    response = await client.put(path, json=body, headers=world.admin.headers)
    assert response.status_code == 200, response.text
    assert {key: response.json()[key] for key in ("role", "active", "email")} == {
        "role": "admin",
        "active": True,
        "email": world.user.email,
    }
    stored = await app.state.database["users"].find_one({"email": world.user.email})
    assert (stored["role"], stored["active"], stored["session_epoch"]) == ("admin", True, 0)
    [entry] = await app.state.database["audit"].find().to_list()
    assert (entry["actor_id"], entry["outcome"], entry["reason"]) == (
        ObjectId(world.admin.id),
        "done",
        None,
    )
    me = await client.get("/users/me", headers=world.user.headers)  # the token still works
    assert me.status_code == 200 and me.json()["role"] == "admin"


# Text that a pattern or a query would read as an operator; none is in any title or email.
PATTERNS = {
    "dot-star": ".*",
    "paren": "(",
    "bracket": "[a-",
    "backslash": "\\",
    "quantifier": "a{1000000}",
    "dollar": "$where",
    "json-op": '{"$ne": null}',
    "caret": "^",
    "pipe": "|",
    "nul": "\x00",
}
# The longest search each list takes: the feed's is 300 characters, the users' 254 (an email).
SEARCHES = [
    *(("/posts/", name, text) for name, text in PATTERNS.items()),
    ("/posts/", "300-multibyte", "é" * 300),
    *(("/admin/users", name, text) for name, text in PATTERNS.items()),
    ("/admin/users", "254-multibyte", "é" * 254),
]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("path", "search"),
    [pytest.param(path, text, id=f"{path}-{name}") for path, name, text in SEARCHES],
)
async def test_pattern_and_operator_text_in_search_is_matched_literally(
    client, world, path, search
):
    response = await client.get(path, params={"search": search}, headers=world.headers(path))
    assert response.status_code == 200
    assert response.json() == []
    if path == "/posts/":
        assert response.headers["x-total-count"] == "0"


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("path", "length"),
    [
        *(("/posts/", length) for length in (301, 10_000, 50_000)),
        *(("/admin/users", length) for length in (255, 10_000)),
    ],
)
async def test_a_search_too_long_is_422(client, world, path, length):
    response = await client.get(path, params={"search": "a" * length}, headers=world.headers(path))
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "query",
    [
        "limit=%7B%22%24gt%22%3A0%7D",  # limit={"$gt":0}
        "skip=%7B%22%24ne%22%3Anull%7D",
        "limit=1e3",
        "limit=true",
        "skip=-1",
        "limit=0",
        "limit=101",
        "skip=99999999999999999999",
    ],
)
async def test_operator_and_wrong_type_paging_values_are_422(client, world, query):
    response = await client.get(f"/posts/?{query}", headers=world.user.headers)
    assert_json_4xx(response, 422)


ADMIN_LISTS = ["/admin/users", "/admin/audit"]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("path", ADMIN_LISTS)
@pytest.mark.parametrize(
    "query",
    [
        "limit=%7B%22%24gt%22%3A0%7D",  # limit={"$gt":0}
        "limit=1e3",
        "limit=true",
        "limit=0",
        "limit=101",
        "cursor=" + "x" * 201,
    ],
)
async def test_operator_and_wrong_type_paging_values_of_the_admin_lists_are_422(
    client, world, path, query
):
    response = await client.get(f"{path}?{query}", headers=world.admin.headers)
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("path", ADMIN_LISTS)
@pytest.mark.parametrize(
    "cursor",
    ['{"$ne": null}', '{"$gt": ""}', "$where", ".*", "", "a" * 200],
    ids=["json-ne", "json-gt", "dollar", "dot-star", "empty", "200-chars"],
)
async def test_operator_text_as_an_admin_lists_cursor_is_400(client, world, path, cursor):
    response = await client.get(path, params={"cursor": cursor}, headers=world.admin.headers)
    assert_json_4xx(response, 400)
    assert response.json() == {"detail": "Invalid cursor"}


@pytest.mark.usefixtures("unchanged")
async def test_bracketed_operator_parameters_are_unknown_parameters(client, world):
    response = await client.get(
        "/posts/?search[$ne]=x&limit[$gt]=0&published[$ne]=true", headers=world.user.headers
    )
    assert response.status_code == 200
    assert [item["Post"]["id"] for item in response.json()] == [world.post_id]


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    "path", ["/posts/%7B%22%24ne%22%3Anull%7D", "/posts/$ne", "/users/%7B%7D", "/posts/" + "a" * 25]
)
async def test_operator_text_in_a_path_id_is_422(client, world, path):
    response = await client.get(path, headers=world.user.headers)
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/admin/users/{}/deactivate", None),
        ("POST", "/admin/users/{}/activate", None),
        ("PUT", "/admin/users/{}/role", {"role": "admin"}),
        ("DELETE", "/admin/posts/{}", None),
        ("DELETE", "/admin/comments/{}", None),
    ],
    ids=["deactivate", "activate", "set-role", "delete-post", "delete-comment"],
)
@pytest.mark.parametrize(
    "bad_id",
    ["%7B%22%24ne%22%3Anull%7D", "$ne", "%7B%7D", "a" * 25],
    ids=["json-ne", "dollar", "empty-object", "25-chars"],
)
async def test_operator_text_in_an_admin_actions_path_id_is_422(
    client, world, method, path, body, bad_id
):
    response = await client.request(
        method, path.format(bad_id), json=body, headers=world.admin.headers
    )
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/posts/"),
        ("POST", "/users/"),
        ("POST", "/vote/"),
        ("POST", "/login"),
        ("PUT", "/admin/users/{user}/role"),
    ],
)
async def test_a_body_over_the_limit_is_413_before_it_is_read(client, world, method, path):
    path = path.format(user=world.user.id)
    if path == "/login":
        big, content_type = (
            b"username=a&password=" + b"x" * (1024 * 1024),
            "application/x-www-form-urlencoded",
        )
    else:
        big, content_type = (
            b'{"title": "' + b"x" * (1024 * 1024) + b'", "content": "c"}',
            "application/json",
        )
    declared = await client.request(
        method,
        path,
        content=big,
        headers={**world.headers(path), "Content-Type": content_type},
    )
    assert_json_4xx(declared, 413)
    assert "larger than the limit of 1048576 bytes" in declared.json()["detail"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    streamed = await client.request(
        method,
        path,
        content=chunks(),
        headers={**world.headers(path), "Content-Type": content_type},
    )
    assert_json_4xx(streamed, 413)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("path", "content_type", "content"),
    [
        ("/posts/", "text/plain", b'{"title": "t", "content": "c"}'),
        ("/posts/", "application/x-www-form-urlencoded", b"title=t&content=c"),
        ("/posts/", "multipart/form-data; boundary=x", b"--x--"),
        ("/users/", "application/xml", b"<user/>"),
        ("/vote/", "text/plain", b"post_id=1&dir=1"),
        ("/login", "application/json", b'{"username": "a@example.com", "password": "x"}'),
        ("/admin/users/{user}/deactivate", "text/plain", b'{"reason": "r"}'),
        ("/admin/users/{user}/deactivate", "application/x-www-form-urlencoded", b"reason=r"),
    ],
    ids=[
        *("post-text", "post-form", "post-multipart", "user-xml", "vote-text", "login-json"),
        *("deactivate-text", "deactivate-form"),
    ],
)
async def test_a_wrong_content_type_is_422(client, world, path, content_type, content):
    path = path.format(user=world.user.id)
    response = await client.post(
        path, content=content, headers={**world.headers(path), "Content-Type": content_type}
    )
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/users/"),
        ("POST", "/vote/"),
        ("PUT", "/users/me/password"),
        ("POST", "/auth/refresh"),
        ("PUT", "/admin/users/{user}/role"),
    ],
)
@pytest.mark.parametrize(
    "content",
    [b"\xff\xfe\xfd", b'{"email": "\xc3\x28@example.com", "password": "x"}', b"\xed\xa0\x80"],
    ids=["garbage", "bad-continuation", "encoded-surrogate"],
)
async def test_invalid_utf8_bodies_are_422(client, world, method, path, content):
    path = path.format(user=world.user.id)
    response = await client.request(
        method,
        path,
        content=content,
        headers={**world.headers(path), "Content-Type": "application/json"},
    )
    assert_json_4xx(response, 422)


# service/routing.py (StrictJSONRequest.json) decodes a body with errors="replace": invalid
# UTF-8 inside a string becomes U+FFFD and the request is served (a post titled "\ufffd(", an
# account deactivated with that reason). Reported as a bug of the service; strict, so that
# the fix shows here as an XPASS that asks for this mark to go.
@pytest.mark.xfail(strict=True, reason="invalid UTF-8 in a JSON string is replaced, not refused")
@pytest.mark.parametrize(
    ("operation", "field"),
    [("create-post", "title"), ("comment", "content"), ("deactivate", "reason")],
)
@pytest.mark.parametrize(
    "bad", [b"\xc3\x28", b"\xed\xa0\x80", b"\xff"], ids=["bad-continuation", "surrogate", "ff"]
)
async def test_invalid_utf8_inside_a_string_is_422(client, world, operation, field, bad):
    method, path, body = good_bodies(world)[operation]
    content = json.dumps({**body, field: "?"}).encode().replace(b'"?"', b'"' + bad + b'"')
    response = await client.request(
        method,
        path,
        content=content,
        headers={**world.headers(path), "Content-Type": "application/json"},
    )
    assert_json_4xx(response, 422)


@pytest.mark.usefixtures("unchanged")
@pytest.mark.parametrize("depth", [1_000, 100_000])
async def test_deeply_nested_json_is_422(client, world, depth):
    body = b'{"title": ' + b"[" * depth + b"]" * depth + b', "content": "c"}'
    response = await client.post(
        "/posts/", content=body, headers={**world.user.headers, "Content-Type": "application/json"}
    )
    assert_json_4xx(response, 422)
