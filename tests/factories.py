"""Small async factories that build test data through the API itself."""

import itertools
from dataclasses import dataclass, field
from typing import Any

import httpx

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
