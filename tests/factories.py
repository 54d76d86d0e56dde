"""Small async factories that build test data through the API itself."""

import itertools
import re
from dataclasses import dataclass, field
from typing import Any

import httpx
from bson import ObjectId

from service.models import AuditEntry, Comment, Post, Vote

DEFAULT_PASSWORD = "correct horse battery"
LEAKED_KEYS = {"password", "hashed_password", "_id", "revision_id"}

_sequence = itertools.count(1)


@dataclass
class LoggedInUser:
    id: str
    email: str
    password: str
    token: str
    refresh_token: str = ""
    headers: dict[str, str] = field(default_factory=dict)


def assert_no_secrets(body: Any) -> None:
    """Fail if a response body carries a password, a hash, `_id` or `revision_id`."""
    if isinstance(body, dict):
        leaked = LEAKED_KEYS & body.keys()
        assert not leaked, f"response leaks {leaked}: {body}"
        for value in body.values():
            assert_no_secrets(value)
    elif isinstance(body, list):
        for value in body:
            assert_no_secrets(value)
    elif isinstance(body, str):
        assert not body.startswith(("$2b$", "$2a$", "$2y$", "$bcrypt-sha256$")), (
            f"response leaks a hash: {body}"
        )


def unique_email() -> str:
    return f"user{next(_sequence)}@example.com"


async def register(
    client: httpx.AsyncClient, email: str | None = None, password: str = DEFAULT_PASSWORD
) -> dict[str, Any]:
    response = await client.post(
        "/users/", json={"email": email or unique_email(), "password": password}
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def login_pair(
    client: httpx.AsyncClient, email: str, password: str = DEFAULT_PASSWORD
) -> dict[str, Any]:
    """Log in; the whole answer: access_token, token_type, refresh_token, expires_in."""
    response = await client.post("/login", data={"username": email, "password": password})
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def login(client: httpx.AsyncClient, email: str, password: str = DEFAULT_PASSWORD) -> str:
    token: str = (await login_pair(client, email, password))["access_token"]
    return token


async def create_user(
    client: httpx.AsyncClient, email: str | None = None, password: str = DEFAULT_PASSWORD
) -> LoggedInUser:
    """Register and log in a user."""
    user = await register(client, email, password)
    pair = await login_pair(client, user["email"], password)
    return LoggedInUser(
        id=user["id"],
        email=user["email"],
        password=password,
        token=pair["access_token"],
        refresh_token=pair["refresh_token"],
        headers=bearer(pair["access_token"]),
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def create_post(
    client: httpx.AsyncClient, owner: LoggedInUser, **fields: Any
) -> dict[str, Any]:
    """Create a post for `owner`; any field can be overridden."""
    n = next(_sequence)
    payload = {"title": f"Post {n}", "content": f"Content of post {n}", **fields}
    response = await client.post("/posts/", json=payload, headers=owner.headers)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


async def vote(
    client: httpx.AsyncClient, user: LoggedInUser, post_id: str, direction: int = 1
) -> httpx.Response:
    return await client.post(
        "/vote/", json={"post_id": post_id, "dir": direction}, headers=user.headers
    )


async def create_admin(client: httpx.AsyncClient) -> LoggedInUser:
    """Register and log in a user, and make them an admin as `social-api set-role` does (the
    app's database, in this process)."""
    from beanie import PydanticObjectId

    from service import moderation

    user = await create_user(client)
    await moderation.change_account(PydanticObjectId(user.id), role="admin")
    return user


# The admin API's tests (tests/test_admin_*.py) share what follows.

MISSING_ID = "0123456789abcdef01234567"
NEXT = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')
ADMIN_ONLY = {"detail": "Admin role required"}
NOT_YOURSELF = "Admins cannot deactivate or demote themselves"
REASON = "Spam, reported by three users"

# Each admin action: its method and path, named as the audit log names the action.
ACTIONS = {
    "deactivate_user": ("POST", "/admin/users/{}/deactivate"),
    "activate_user": ("POST", "/admin/users/{}/activate"),
    "set_role": ("PUT", "/admin/users/{}/role"),
    "delete_post": ("DELETE", "/admin/posts/{}"),
    "delete_comment": ("DELETE", "/admin/comments/{}"),
}


async def act(
    client: httpx.AsyncClient,
    admin: LoggedInUser,
    action: str,
    target_id: str,
    body: Any = None,
) -> httpx.Response:
    method, path = ACTIONS[action]
    return await client.request(method, path.format(target_id), json=body, headers=admin.headers)


async def done(
    client: httpx.AsyncClient, admin: LoggedInUser, action: str, target_id: str, body: Any = None
) -> None:
    response = await act(client, admin, action, target_id, body)
    assert response.status_code in {200, 204}, response.text


async def comment(
    client: httpx.AsyncClient, user: LoggedInUser, post_id: str, content: str = "Well put."
) -> dict[str, Any]:
    response = await client.post(
        f"/posts/{post_id}/comments", json={"content": content}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    made: dict[str, Any] = response.json()
    return made


async def counts(
    client: httpx.AsyncClient, viewer: LoggedInUser, post_id: str
) -> tuple[int, int] | None:
    """A post's (votes, comments) as the viewer reads it; None for a 404."""
    response = await client.get(f"/posts/{post_id}", headers=viewer.headers)
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return response.json()["votes"], response.json()["comments"]


async def comment_ids(
    client: httpx.AsyncClient, viewer: LoggedInUser, post_id: str
) -> list[str] | None:
    """A post's comments as the viewer lists them, oldest first; None for a 404."""
    response = await client.get(
        f"/posts/{post_id}/comments", params={"limit": 100}, headers=viewer.headers
    )
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    return [made["id"] for made in response.json()]


async def stored(document: type[Post] | type[Comment] | type[Vote], **match: str) -> int:
    """How many documents of the collection hold these ids."""
    ids = {key: ObjectId(value) for key, value in match.items()}
    return await document.get_pymongo_collection().count_documents(ids)


async def audit_rows(**match: Any) -> list[dict[str, Any]]:
    """Audit documents, oldest first."""
    found = AuditEntry.get_pymongo_collection().find(match).sort([("created_at", 1), ("_id", 1)])
    return await found.to_list()


async def audit_count() -> int:
    return await AuditEntry.get_pymongo_collection().count_documents({})


async def pages(client: httpx.AsyncClient, admin: LoggedInUser, url: str) -> list[list[str]]:
    """Every page of an admin list, following `Link`, each page's ids; each `X-Next-Cursor`
    must lead to the same page as its `Link`."""
    found: list[list[str]] = []
    while True:
        response = await client.get(url, headers=admin.headers)
        assert response.status_code == 200, response.text
        found.append([item["id"] for item in response.json()])
        link = response.headers.get("link")
        if link is None:
            assert "x-next-cursor" not in response.headers
            return found
        match = NEXT.match(link)
        assert match, link
        by_cursor = httpx.URL(url).copy_set_param("cursor", response.headers["x-next-cursor"])
        url = match["url"]
        following = await client.get(by_cursor, headers=admin.headers)
        assert following.json() == (await client.get(url, headers=admin.headers)).json()
