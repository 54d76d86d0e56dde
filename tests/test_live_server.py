"""The contract over real TCP: `social-api serve` as `make run` starts it, on the embedded store.

The other files drive the app in-process; this one checks what only a real server shows
(headers and bodies on the wire, concurrency across sockets) against one started once.
"""

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import jwt
import pytest

from tests.conftest import check_for_leaks, free_port, running_server
from tests.factories import DEFAULT_PASSWORD, LoggedInUser, unique_email


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory: Path = tmp_path_factory.mktemp("live")
    with running_server(directory) as (base, _):
        yield base


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=32)
    async with httpx.AsyncClient(
        base_url=base_url,
        limits=limits,
        timeout=30,
        event_hooks={"response": [check_for_leaks]},
    ) as client:
        yield client


async def sign_up(http: httpx.AsyncClient) -> LoggedInUser:
    email = unique_email()
    created = await http.post("/users", json={"email": email, "password": DEFAULT_PASSWORD})
    assert created.status_code == 201, created.text
    token = await http.post("/login", data={"username": email, "password": DEFAULT_PASSWORD})
    assert token.status_code == 200, token.text
    access = token.json()["access_token"]
    return LoggedInUser(
        id=created.json()["id"],
        email=email,
        password=DEFAULT_PASSWORD,
        token=access,
        headers={"Authorization": f"Bearer {access}"},
    )


async def test_ready_and_errors_are_json_on_the_wire(http):
    ready = await http.get("/readyz")
    missing = await http.get("/no/such/route")
    assert ready.status_code == 200
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/json"
    assert missing.json() == {"detail": "Not Found"}


async def test_unauthenticated_is_401_with_bearer_challenge(http):
    response = await http.get("/posts")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json() == {"detail": "Not authenticated"}


async def test_registration_login_and_wrong_password(http):
    user = await sign_up(http)
    again = await http.post("/users/", json={"email": user.email.upper(), "password": "whatever1"})
    wrong = await http.post("/login", data={"username": user.email, "password": "wrong-pass"})
    me = await http.get("/users/me", headers=user.headers)
    assert again.status_code == 409
    assert again.json() == {"detail": "Email already registered"}
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": "Invalid Credentials"}
    assert me.json() == {
        "id": user.id,
        "email": user.email,
        "created_at": me.json()["created_at"],
        "email_verified": False,
        "role": "user",
    }


async def test_posts_drafts_paging_and_delete_on_the_wire(http):
    alice, bob = await sign_up(http), await sign_up(http)
    ids = []
    for n in range(3):
        created = await http.post(
            "/posts", json={"title": f"wire {n}", "content": "c"}, headers=alice.headers
        )
        assert created.status_code == 201
        ids.append(created.json()["id"])
    draft = await http.post(
        "/posts/",
        json={"title": "draft", "content": "c", "published": False},
        headers=alice.headers,
    )
    page = await http.get("/posts/?search=WIRE&limit=2&skip=1", headers=bob.headers)
    assert page.status_code == 200
    assert page.headers["x-total-count"] == "3"
    assert [item["Post"]["id"] for item in page.json()] == [ids[1], ids[0]]
    hidden = await http.get(f"/posts/{draft.json()['id']}", headers=bob.headers)
    assert hidden.status_code == 404
    assert hidden.json() == {"detail": f"post with id: {draft.json()['id']} was not found"}
    forbidden = await http.delete(f"/posts/{ids[0]}", headers=bob.headers)
    assert forbidden.status_code == 403
    deleted = await http.delete(f"/posts/{ids[0]}", headers=alice.headers)
    assert deleted.status_code == 204
    assert deleted.content == b""


async def test_simultaneous_identical_votes_over_sockets_count_once(http):
    owner, voter = await sign_up(http), await sign_up(http)
    post = await http.post("/posts/", json={"title": "t", "content": "c"}, headers=owner.headers)
    post_id = post.json()["id"]
    responses = await asyncio.gather(
        *[
            http.post("/vote", json={"post_id": post_id, "dir": 1}, headers=voter.headers)
            for _ in range(16)
        ]
    )
    assert Counter(r.status_code for r in responses) == {201: 1, 409: 15}
    read = await http.get(f"/posts/{post_id}", headers=owner.headers)
    assert read.json()["votes"] == 1


async def test_simultaneous_registrations_over_sockets_give_one_account(http):
    email = unique_email()
    responses = await asyncio.gather(
        *[
            http.post("/users/", json={"email": email, "password": DEFAULT_PASSWORD})
            for _ in range(8)
        ]
    )
    assert Counter(r.status_code for r in responses) == {201: 1, 409: 7}
    assert all(
        r.json() == {"detail": "Email already registered"}
        for r in responses
        if r.status_code == 409
    )


def test_a_server_whose_mongodb_is_down_answers_503_json(tmp_path):
    secret = "s" * 48
    url = f"mongodb://127.0.0.1:{free_port()}/?directConnection=true"
    env = {"MONGODB_URL": url, "SECRET_KEY": secret, "MONGODB_TIMEOUT_MS": "300"}
    with running_server(tmp_path, ready_path="/healthz", **env) as (base, _):
        token = jwt.encode(
            {
                "sub": "6b05fd523f23202455a49a96",
                "iat": 0,
                "exp": 4102444800,
                "jti": "j",
                "sid": "s",
                "ver": 0,
            },
            secret,
        )
        with httpx.Client(base_url=base, timeout=10) as http:
            ready = http.get("/readyz")
            me = http.get("/users/me", headers={"Authorization": f"Bearer {token}"})
            register = http.post("/users/", json={"email": "a@example.com", "password": "p" * 8})
    assert ready.status_code == 503
    assert ready.json()["detail"][0].startswith("not initialised")
    for response in (me, register):
        assert response.status_code == 503
        assert response.json() == {"detail": "Database unavailable, try again shortly"}
