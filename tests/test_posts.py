"""HTTP tests for /posts: every rule of the contract's Posts section, through the app.

The `client` fixture fails any response that leaks a password, a hash, `_id` or `revision_id`.
"""

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from beanie import PydanticObjectId
from bson import ObjectId

from service.derived import recount
from service.models import Post, Vote
from tests.factories import LoggedInUser, create_post, create_user, vote

POST_KEYS = {"id", "title", "content", "published", "created_at", "owner_id", "owner"}
USER_OUT_KEYS = {"id", "email", "created_at"}
OBJECT_ID = re.compile(r"[0-9a-f]{24}")
BODY = {"title": "A title", "content": "Some content"}

NOT_AUTHENTICATED = "Not authenticated"
INVALID_CREDENTIALS = "Could not validate credentials"
NOT_AUTHORIZED = "Not authorized to perform requested action"

# (method, path); `{id}` is filled with an existing post's id.
ROUTES = [
    ("GET", "/posts/"),
    ("POST", "/posts/"),
    ("GET", "/posts/{id}"),
    ("PUT", "/posts/{id}"),
    ("DELETE", "/posts/{id}"),
]


def missing_id() -> str:
    """A well-formed id that matches no post."""
    return str(ObjectId())


def assert_error(response: httpx.Response, status_code: int, detail: str) -> None:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"detail": detail}


def assert_validation_error(response: httpx.Response, *loc: str | int) -> None:
    """FastAPI's standard 422: `detail` is a list, one entry of which starts at `loc`."""
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, list), detail
    assert any(tuple(error["loc"][: len(loc)]) == loc for error in detail), detail


def parse_utc(value: str) -> datetime:
    """An ISO-8601 datetime in UTC with an explicit offset, as the contract requires."""
    assert value.endswith(("Z", "+00:00")), value
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value
    return parsed


def same_post(actual: dict[str, Any], expected: dict[str, Any]) -> bool:
    """Equal Posts, datetimes compared as instants (`Z` and `+00:00` are both allowed)."""

    def normalized(post: dict[str, Any]) -> dict[str, Any]:
        owner = {**post["owner"], "created_at": parse_utc(post["owner"]["created_at"])}
        return {**post, "created_at": parse_utc(post["created_at"]), "owner": owner}

    return normalized(actual) == normalized(expected)


async def read_post(client: httpx.AsyncClient, user: LoggedInUser, post_id: str) -> httpx.Response:
    return await client.get(f"/posts/{post_id}", headers=user.headers)


async def list_posts(
    client: httpx.AsyncClient, user: LoggedInUser, **params: Any
) -> httpx.Response:
    return await client.get("/posts/", params=params, headers=user.headers)


def ids_of(response: httpx.Response) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["Post"]["id"] for item in response.json()]


async def assert_unchanged(
    client: httpx.AsyncClient, owner: LoggedInUser, post: dict[str, Any]
) -> None:
    response = await read_post(client, owner, post["id"])
    assert response.status_code == 200, response.text
    assert same_post(response.json()["Post"], post)


async def insert_posts(owner: LoggedInUser, count: int, created_at: datetime) -> list[str]:
    """Posts written straight to the database, all with one `created_at`; ids in insert order."""
    posts = [
        Post(
            title=f"Direct {n}",
            content="direct",
            owner_id=PydanticObjectId(owner.id),
            created_at=created_at,
        )
        for n in range(count)
    ]
    for post in posts:
        await post.insert()
    # Written outside the API, as an import would: owner, vote count and tallies are derived after.
    await recount(Post.get_pymongo_collection().database)
    return [str(post.id) for post in posts]


# Authentication


async def _request_route(
    client: httpx.AsyncClient, method: str, path: str, post_id: str, headers: dict[str, str]
) -> httpx.Response:
    json = BODY if method in {"POST", "PUT"} else None
    return await client.request(method, path.format(id=post_id), json=json, headers=headers)


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_no_token_is_401_and_changes_nothing(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await _request_route(client, method, path, post["id"], {})

    assert_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["www-authenticate"] == "Bearer"
    listed = await list_posts(client, owner)
    assert ids_of(listed) == [post["id"]]
    assert same_post(listed.json()[0]["Post"], post)


BAD_AUTH = [
    ("Basic {token}", NOT_AUTHENTICATED),  # not a Bearer header at all
    ("Bearer {token}x", INVALID_CREDENTIALS),  # a Bearer token whose signature fails
]


@pytest.mark.parametrize(("method", "path"), ROUTES)
@pytest.mark.parametrize(("header", "detail"), BAD_AUTH, ids=["non-bearer", "bad-signature"])
async def test_bad_authorization_is_401(
    client: httpx.AsyncClient, method: str, path: str, header: str, detail: str
) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    headers = {"Authorization": header.format(token=owner.token)}
    response = await _request_route(client, method, path, post["id"], headers)

    assert_error(response, 401, detail)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_unauthenticated_put_without_body_is_401_not_422(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await client.put(f"/posts/{post['id']}")

    assert_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_unauthenticated_put_with_invalid_json_is_401_not_422(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await client.put(
        f"/posts/{post['id']}",
        content=b'{"title": ',
        headers={"Content-Type": "application/json"},
    )

    assert_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_unauthenticated_create_with_bad_body_is_401_not_422(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/posts/", json={"title": ""})

    assert_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_unauthenticated_malformed_id_is_401_not_422(
    client: httpx.AsyncClient, method: str
) -> None:
    json = BODY if method == "PUT" else None
    response = await client.request(method, "/posts/abc", json=json)

    assert_error(response, 401, NOT_AUTHENTICATED)
    assert response.headers["www-authenticate"] == "Bearer"


# Both spellings of the collection


@pytest.mark.parametrize("path", ["/posts", "/posts/"])
async def test_list_answers_on_both_spellings_without_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    user = await create_user(client)
    post = await create_post(client, user)

    response = await client.get(path, headers=user.headers)

    assert response.status_code != 307
    assert response.status_code == 200, response.text
    assert ids_of(response) == [post["id"]]


@pytest.mark.parametrize("path", ["/posts", "/posts/"])
async def test_create_answers_on_both_spellings_without_redirect(
    client: httpx.AsyncClient, path: str
) -> None:
    user = await create_user(client)

    response = await client.post(path, json=BODY, headers=user.headers)

    assert response.status_code != 307
    assert response.status_code == 201, response.text
    assert response.json()["title"] == BODY["title"]
    assert ids_of(await list_posts(client, user)) == [response.json()["id"]]


# Create


async def test_create_returns_the_full_post(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    before = datetime.now(UTC)

    response = await client.post("/posts/", json=BODY, headers=user.headers)

    assert response.status_code == 201, response.text
    post = response.json()
    assert set(post) == POST_KEYS
    assert OBJECT_ID.fullmatch(post["id"])
    assert post["title"] == BODY["title"]
    assert post["content"] == BODY["content"]
    assert post["published"] is True
    created_at = parse_utc(post["created_at"])
    assert before - timedelta(seconds=1) <= created_at <= datetime.now(UTC)
    assert post["owner_id"] == user.id
    assert set(post["owner"]) == USER_OUT_KEYS
    assert post["owner"]["id"] == user.id
    assert post["owner"]["email"] == user.email
    parse_utc(post["owner"]["created_at"])


async def test_create_draft_keeps_published_false(client: httpx.AsyncClient) -> None:
    user = await create_user(client)

    response = await client.post("/posts/", json={**BODY, "published": False}, headers=user.headers)

    assert response.status_code == 201, response.text
    assert response.json()["published"] is False
    stored = (await read_post(client, user, response.json()["id"])).json()
    assert stored["Post"]["published"] is False


async def test_create_ignores_id_and_owner_id_in_body(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    other = await create_user(client)
    given_id = missing_id()

    response = await client.post(
        "/posts/", json={**BODY, "id": given_id, "owner_id": other.id}, headers=user.headers
    )

    assert response.status_code == 201, response.text
    post = response.json()
    assert post["id"] != given_id
    assert post["owner_id"] == user.id
    assert post["owner"]["id"] == user.id
    assert_error(
        await read_post(client, user, given_id), 404, f"post with id: {given_id} was not found"
    )
    assert (await read_post(client, user, post["id"])).json()["Post"]["owner_id"] == user.id


@pytest.mark.parametrize(
    ("field", "value"),
    [("title", "t"), ("title", "t" * 300), ("content", "c"), ("content", "c" * 20_000)],
    ids=["title-1", "title-300", "content-1", "content-20000"],
)
async def test_create_accepts_lengths_at_the_limits(
    client: httpx.AsyncClient, field: str, value: str
) -> None:
    user = await create_user(client)

    response = await client.post("/posts/", json={**BODY, field: value}, headers=user.headers)

    assert response.status_code == 201, response.text
    assert response.json()[field] == value
    stored = (await read_post(client, user, response.json()["id"])).json()
    assert stored["Post"][field] == value


@pytest.mark.parametrize(
    ("field", "value"),
    [("title", ""), ("title", "t" * 301), ("content", ""), ("content", "c" * 20_001)],
    ids=["title-empty", "title-301", "content-empty", "content-20001"],
)
async def test_create_rejects_lengths_outside_the_limits(
    client: httpx.AsyncClient, field: str, value: str
) -> None:
    user = await create_user(client)

    response = await client.post("/posts/", json={**BODY, field: value}, headers=user.headers)

    assert_validation_error(response, "body", field)
    listed = await list_posts(client, user)
    assert ids_of(listed) == []
    assert listed.headers["x-total-count"] == "0"


@pytest.mark.parametrize("field", ["title", "content"])
async def test_create_without_a_required_field_is_422(
    client: httpx.AsyncClient, field: str
) -> None:
    user = await create_user(client)
    body = {key: value for key, value in BODY.items() if key != field}

    response = await client.post("/posts/", json=body, headers=user.headers)

    assert_validation_error(response, "body", field)
    [error] = response.json()["detail"]
    assert error["type"] == "missing"


async def test_create_with_invalid_json_is_422(client: httpx.AsyncClient) -> None:
    user = await create_user(client)

    response = await client.post(
        "/posts/",
        content=b'{"title": ',
        headers={**user.headers, "Content-Type": "application/json"},
    )

    assert_validation_error(response, "body")


# Read one


async def test_read_post_returns_post_and_votes(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    reader = await create_user(client)
    post = await create_post(client, owner)

    response = await read_post(client, reader, post["id"])

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"Post", "votes", "comments"}
    assert same_post(body["Post"], post)
    assert body["votes"] == 0


async def test_read_missing_post_is_404(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    post_id = missing_id()

    response = await read_post(client, user, post_id)

    assert_error(response, 404, f"post with id: {post_id} was not found")


@pytest.mark.parametrize("post_id", ["abc", "123", "z" * 24, "0" * 25])
async def test_read_malformed_id_is_422(client: httpx.AsyncClient, post_id: str) -> None:
    user = await create_user(client)

    response = await read_post(client, user, post_id)

    assert_validation_error(response, "path", "post_id")


async def test_read_someone_elses_draft_is_404(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    draft = await create_post(client, owner, published=False)

    response = await read_post(client, other, draft["id"])

    assert_error(response, 404, f"post with id: {draft['id']} was not found")


async def test_read_own_draft_is_200(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    draft = await create_post(client, owner, published=False)

    response = await read_post(client, owner, draft["id"])

    assert response.status_code == 200, response.text
    assert same_post(response.json()["Post"], draft)
    assert response.json()["votes"] == 0


# List


async def test_list_returns_postout_items(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    reader = await create_user(client)
    post = await create_post(client, owner)

    response = await list_posts(client, reader)

    assert response.status_code == 200, response.text
    [item] = response.json()
    assert set(item) == {"Post", "votes", "comments"}
    assert same_post(item["Post"], post)
    assert item["votes"] == 0
    assert response.headers["x-total-count"] == "1"


async def test_list_shows_drafts_only_to_their_owner(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    public = await create_post(client, owner)
    draft = await create_post(client, owner, published=False)
    others_draft = await create_post(client, other, published=False)

    as_owner = await list_posts(client, owner)
    as_other = await list_posts(client, other)

    assert ids_of(as_owner) == [draft["id"], public["id"]]
    assert as_owner.headers["x-total-count"] == "2"
    assert ids_of(as_other) == [others_draft["id"], public["id"]]
    assert as_other.headers["x-total-count"] == "2"


async def test_list_is_newest_first(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    created = [(await create_post(client, user))["id"] for _ in range(15)]

    response = await list_posts(client, user, limit=100)

    assert ids_of(response) == created[::-1]
    times = [parse_utc(item["Post"]["created_at"]) for item in response.json()]
    assert times == sorted(times, reverse=True)


async def test_list_breaks_created_at_ties_by_id_descending(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    moment = datetime(2024, 1, 1, tzinfo=UTC)
    older = await insert_posts(user, 1, moment - timedelta(days=1))
    tied = await insert_posts(user, 6, moment)
    newer = await create_post(client, user)

    response = await list_posts(client, user, limit=100)

    assert ids_of(response) == [newer["id"], *sorted(tied, reverse=True), *older]


async def test_paging_returns_every_post_once_in_order(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    for _ in range(15):
        await create_post(client, user)

    everything = ids_of(await list_posts(client, user, limit=100))
    pages = [await list_posts(client, user, limit=4, skip=skip) for skip in (0, 4, 8, 12)]

    assert [len(ids_of(page)) for page in pages] == [4, 4, 4, 3]
    assert [post_id for page in pages for post_id in ids_of(page)] == everything
    assert len(set(everything)) == 15
    assert [page.headers["x-total-count"] for page in pages] == ["15"] * 4


async def test_paging_through_tied_created_at_never_repeats_or_skips(
    client: httpx.AsyncClient,
) -> None:
    user = await create_user(client)
    tied = await insert_posts(user, 10, datetime(2024, 1, 1, tzinfo=UTC))

    pages = [await list_posts(client, user, limit=3, skip=skip) for skip in (0, 3, 6, 9)]

    assert [post_id for page in pages for post_id in ids_of(page)] == sorted(tied, reverse=True)


async def test_list_limit_defaults_to_10(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    created = [(await create_post(client, user))["id"] for _ in range(12)]

    response = await list_posts(client, user)

    assert ids_of(response) == created[::-1][:10]
    assert response.headers["x-total-count"] == "12"


async def test_list_accepts_limit_100(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    await insert_posts(user, 101, datetime(2024, 1, 1, tzinfo=UTC))

    response = await list_posts(client, user, limit=100)

    assert len(ids_of(response)) == 100
    assert response.headers["x-total-count"] == "101"


async def test_skip_past_the_end_is_an_empty_page(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    for _ in range(3):
        await create_post(client, user)

    response = await list_posts(client, user, skip=5)

    assert ids_of(response) == []
    assert response.headers["x-total-count"] == "3"


@pytest.mark.parametrize(
    "params",
    [
        {"limit": 0},
        {"limit": 101},
        {"limit": -1},
        {"limit": "x"},
        {"skip": -1},
        {"skip": "x"},
    ],
    ids=["limit-0", "limit-101", "limit-negative", "limit-text", "skip-negative", "skip-text"],
)
async def test_list_rejects_bad_paging_values(
    client: httpx.AsyncClient, params: dict[str, Any]
) -> None:
    user = await create_user(client)
    [name] = params

    response = await list_posts(client, user, **params)

    assert_validation_error(response, "query", name)


async def test_total_count_ignores_limit_and_skip(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    other = await create_user(client)
    for _ in range(7):
        await create_post(client, user)
    await create_post(client, other, published=False)

    for params in ({}, {"limit": 2}, {"limit": 2, "skip": 4}, {"skip": 7}):
        response = await list_posts(client, user, **params)
        assert response.status_code == 200, response.text
        assert response.headers["x-total-count"] == "7", params


# Search


async def test_search_is_case_insensitive_in_title_or_content(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    in_title = await create_post(client, user, title="Hello World", content="plain")
    in_content = await create_post(client, user, title="plain", content="they said HELLO there")
    await create_post(client, user, title="Goodbye", content="nothing to see")

    response = await list_posts(client, user, search="hElLo")

    assert ids_of(response) == [in_content["id"], in_title["id"]]
    assert response.headers["x-total-count"] == "2"


async def test_search_matches_substrings(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    match = await create_post(client, user, title="unbelievable", content="plain")
    await create_post(client, user, title="plain", content="plain")

    response = await list_posts(client, user, search="eliev")

    assert ids_of(response) == [match["id"]]


async def test_search_dot_is_literal(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    await create_post(client, user, title="abc", content="plain")
    literal = await create_post(client, user, title="xa.cx", content="plain")

    response = await list_posts(client, user, search="a.c")

    assert ids_of(response) == [literal["id"]]
    assert response.headers["x-total-count"] == "1"


@pytest.mark.parametrize("text", ["(", ")", ".*", "[", "\\", "$", "^", "+", "?", "|", "{2}"])
async def test_search_special_characters_match_only_literal_text(
    client: httpx.AsyncClient, text: str
) -> None:
    user = await create_user(client)
    await create_post(client, user, title="aa plain title", content="plain content")
    literal = await create_post(client, user, title=f"has {text} inside", content="plain")

    response = await list_posts(client, user, search=text)

    assert response.status_code == 200, response.text
    assert ids_of(response) == [literal["id"]]
    assert response.headers["x-total-count"] == "1"


async def test_empty_search_matches_every_post(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    created = [(await create_post(client, user))["id"] for _ in range(3)]

    response = await list_posts(client, user, search="")

    assert ids_of(response) == created[::-1]
    assert response.headers["x-total-count"] == "3"


async def test_search_total_count_counts_all_matches_and_not_drafts_of_others(
    client: httpx.AsyncClient,
) -> None:
    user = await create_user(client)
    other = await create_user(client)
    for _ in range(5):
        await create_post(client, user, title="needle here")
    await create_post(client, user, title="haystack")
    await create_post(client, other, title="needle in a draft", published=False)

    response = await list_posts(client, user, search="needle", limit=2, skip=1)

    assert len(ids_of(response)) == 2
    assert response.headers["x-total-count"] == "5"


# Votes count


async def test_votes_count_in_list_and_by_id(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voters = [await create_user(client) for _ in range(3)]
    voted = await create_post(client, owner)
    unvoted = await create_post(client, owner)
    for voter in voters:
        assert (await vote(client, voter, voted["id"])).status_code == 201
    assert (await vote(client, voters[0], voted["id"], direction=0)).status_code == 201

    by_id = await read_post(client, owner, voted["id"])
    listed = await list_posts(client, owner)

    assert by_id.json()["votes"] == 2
    assert [(item["Post"]["id"], item["votes"]) for item in listed.json()] == [
        (unvoted["id"], 0),
        (voted["id"], 2),
    ]


# Replace (PUT)


async def test_update_replaces_title_content_and_publishes_by_default(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    draft = await create_post(client, owner, published=False)
    change = {"title": "New title", "content": "New content"}

    response = await client.put(f"/posts/{draft['id']}", json=change, headers=owner.headers)

    assert response.status_code == 200, response.text
    expected = {**draft, **change, "published": True}
    assert set(response.json()) == POST_KEYS
    assert same_post(response.json(), expected)
    await assert_unchanged(client, owner, expected)


async def test_update_can_make_a_draft(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    post = await create_post(client, owner)

    response = await client.put(
        f"/posts/{post['id']}", json={**BODY, "published": False}, headers=owner.headers
    )

    assert response.status_code == 200, response.text
    assert same_post(response.json(), {**post, **BODY, "published": False})
    assert_error(
        await read_post(client, other, post["id"]), 404, f"post with id: {post['id']} was not found"
    )


async def test_update_ignores_id_and_owner_id_in_body(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    post = await create_post(client, owner)
    body = {**BODY, "id": missing_id(), "owner_id": other.id}

    response = await client.put(f"/posts/{post['id']}", json=body, headers=owner.headers)

    assert response.status_code == 200, response.text
    expected = {**post, **BODY}
    assert same_post(response.json(), expected)
    await assert_unchanged(client, owner, expected)


async def test_update_missing_post_is_404(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    post_id = missing_id()

    response = await client.put(f"/posts/{post_id}", json=BODY, headers=user.headers)

    assert_error(response, 404, f"post with id: {post_id} does not exist")
    assert ids_of(await list_posts(client, user)) == []


async def test_update_someone_elses_post_is_403_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    post = await create_post(client, owner)

    response = await client.put(f"/posts/{post['id']}", json=BODY, headers=other.headers)

    assert_error(response, 403, NOT_AUTHORIZED)
    await assert_unchanged(client, owner, post)


async def test_update_someone_elses_draft_is_404_not_403(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    draft = await create_post(client, owner, published=False)

    response = await client.put(f"/posts/{draft['id']}", json=BODY, headers=other.headers)

    assert_error(response, 404, f"post with id: {draft['id']} does not exist")
    await assert_unchanged(client, owner, draft)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"content": "c"}, ("body", "title")),
        ({"title": "t"}, ("body", "content")),
        ({**BODY, "title": ""}, ("body", "title")),
        ({**BODY, "title": "t" * 301}, ("body", "title")),
        ({**BODY, "content": ""}, ("body", "content")),
        ({**BODY, "content": "c" * 20_001}, ("body", "content")),
        ({**BODY, "published": "not a bool"}, ("body", "published")),
    ],
    ids=[
        "no-title",
        "no-content",
        "empty-title",
        "title-301",
        "empty-content",
        "content-20001",
        "bad-published",
    ],
)
async def test_update_with_bad_body_is_422_and_changes_nothing(
    client: httpx.AsyncClient, body: dict[str, Any], loc: tuple[str, str]
) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner, published=False)

    response = await client.put(f"/posts/{post['id']}", json=body, headers=owner.headers)

    assert_validation_error(response, *loc)
    await assert_unchanged(client, owner, post)


async def test_update_without_body_is_422_and_changes_nothing(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await client.put(f"/posts/{post['id']}", headers=owner.headers)

    assert_validation_error(response, "body")
    await assert_unchanged(client, owner, post)


async def test_update_with_invalid_json_is_422_and_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await client.put(
        f"/posts/{post['id']}",
        content=b'{"title": "x", ',
        headers={**owner.headers, "Content-Type": "application/json"},
    )

    assert_validation_error(response, "body")
    await assert_unchanged(client, owner, post)


async def test_update_malformed_id_is_422(client: httpx.AsyncClient) -> None:
    user = await create_user(client)

    response = await client.put("/posts/abc", json=BODY, headers=user.headers)

    assert_validation_error(response, "path", "post_id")


# Delete


async def test_delete_is_204_with_empty_body_and_the_post_is_gone(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)
    kept = await create_post(client, owner)

    response = await client.delete(f"/posts/{post['id']}", headers=owner.headers)

    assert response.status_code == 204, response.text
    assert response.content == b""
    assert_error(
        await read_post(client, owner, post["id"]), 404, f"post with id: {post['id']} was not found"
    )
    assert ids_of(await list_posts(client, owner)) == [kept["id"]]


async def test_delete_missing_post_is_404(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    post_id = missing_id()

    response = await client.delete(f"/posts/{post_id}", headers=user.headers)

    assert_error(response, 404, f"post with id: {post_id} does not exist")


async def test_delete_twice_is_404_the_second_time(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)
    assert (await client.delete(f"/posts/{post['id']}", headers=owner.headers)).status_code == 204

    response = await client.delete(f"/posts/{post['id']}", headers=owner.headers)

    assert_error(response, 404, f"post with id: {post['id']} does not exist")


async def test_delete_someone_elses_post_is_403_and_keeps_it(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    post = await create_post(client, owner)

    response = await client.delete(f"/posts/{post['id']}", headers=other.headers)

    assert_error(response, 403, NOT_AUTHORIZED)
    await assert_unchanged(client, owner, post)


async def test_delete_someone_elses_draft_is_404_and_keeps_it(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    other = await create_user(client)
    draft = await create_post(client, owner, published=False)

    response = await client.delete(f"/posts/{draft['id']}", headers=other.headers)

    assert_error(response, 404, f"post with id: {draft['id']} does not exist")
    await assert_unchanged(client, owner, draft)


async def test_delete_malformed_id_is_422(client: httpx.AsyncClient) -> None:
    user = await create_user(client)

    response = await client.delete("/posts/abc", headers=user.headers)

    assert_validation_error(response, "path", "post_id")


async def test_delete_removes_the_posts_votes_only(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voters = [await create_user(client) for _ in range(2)]
    doomed = await create_post(client, owner)
    kept = await create_post(client, owner)
    for voter in voters:
        assert (await vote(client, voter, doomed["id"])).status_code == 201
    assert (await vote(client, voters[0], kept["id"])).status_code == 201

    async def votes_on(post: dict[str, Any]) -> int:
        return await Vote.find(Vote.post_id == PydanticObjectId(post["id"])).count()

    assert await votes_on(doomed) == 2

    response = await client.delete(f"/posts/{doomed['id']}", headers=owner.headers)

    assert response.status_code == 204, response.text
    assert await votes_on(doomed) == 0
    assert await votes_on(kept) == 1
    assert (await read_post(client, owner, kept["id"])).json()["votes"] == 1


async def test_search_longer_than_300_characters_is_422(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    ok = await client.get("/posts/", params={"search": "x" * 300}, headers=user.headers)
    too_long = await client.get("/posts/", params={"search": "x" * 301}, headers=user.headers)
    assert ok.status_code == 200
    assert_validation_error(too_long, "query", "search")


async def test_skip_is_bounded_to_a_32_bit_integer(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    await create_post(client, user)
    last = await client.get("/posts/", params={"skip": 2**31 - 1}, headers=user.headers)
    beyond = await client.get("/posts/", params={"skip": 2**31}, headers=user.headers)
    huge = await client.get("/posts/", params={"skip": "9" * 30}, headers=user.headers)
    assert last.status_code == 200
    assert last.json() == []
    assert last.headers["x-total-count"] == "1"
    assert_validation_error(beyond, "query", "skip")
    assert_validation_error(huge, "query", "skip")


async def test_search_with_a_nul_character_matches_literally(client: httpx.AsyncClient) -> None:
    user = await create_user(client)
    post = await create_post(client, user, title="before\x00after")
    await create_post(client, user, title="before after")
    response = await client.get("/posts/", params={"search": "e\x00a"}, headers=user.headers)
    assert response.status_code == 200
    assert [item["Post"]["id"] for item in response.json()] == [post["id"]]


# The feed's size, kept as tallies (service/tallies.py)


async def assert_totals_match_the_lists(
    client: httpx.AsyncClient, viewers: list[LoggedInUser]
) -> None:
    """Each viewer's X-Total-Count equals what paging through their whole feed finds."""
    for viewer in viewers:
        response = await list_posts(client, viewer, limit=100)
        assert int(response.headers["x-total-count"]) == len(ids_of(response)), viewer.email


async def test_total_stays_exact_under_simultaneous_creates_deletes_and_flips(
    client: httpx.AsyncClient,
) -> None:
    author, other = await create_user(client), await create_user(client)
    posts = [await create_post(client, author, published=n % 3 != 0) for n in range(12)]

    def put(post: dict[str, Any], published: bool) -> Any:
        body = {"title": post["title"], "content": post["content"], "published": published}
        return client.put(f"/posts/{post['id']}", json=body, headers=author.headers)

    # At once: new posts and drafts, deletes (each twice), and each of eight posts flipped
    # both ways, twice, by requests racing each other.
    creates = [create_post(client, author, published=n % 2 == 0) for n in range(6)]
    creates += [create_post(client, other, published=False) for _ in range(3)]
    deletes = [client.delete(f"/posts/{p['id']}", headers=author.headers) for p in posts[:4] * 2]
    flips = [put(p, published) for p in posts[4:] for published in (True, False, True, False)]
    responses = await asyncio.gather(*creates, *deletes, *flips)

    deleted = [r.status_code for r in responses[len(creates) : len(creates) + len(deletes)]]
    assert sorted(deleted) == [204] * 4 + [404] * 4
    assert all(r.status_code == 200 for r in responses[len(creates) + len(deletes) :])
    await assert_totals_match_the_lists(client, [author, other])
    kept = await Post.get_pymongo_collection().database["counters"].find_one()
    published = await Post.get_pymongo_collection().count_documents({"published": True})
    assert kept is not None and kept["value"] == published


async def test_deleting_an_account_takes_its_posts_off_everyone_s_total(
    client: httpx.AsyncClient,
) -> None:
    leaver, stayer = await create_user(client), await create_user(client)
    for published in (True, True, False):
        await create_post(client, leaver, published=published)
    await create_post(client, stayer)
    await create_post(client, stayer, published=False)
    before = await list_posts(client, stayer)
    assert before.headers["x-total-count"] == "4"

    deleted = await client.request(
        "DELETE", "/users/me", json={"password": leaver.password}, headers=leaver.headers
    )

    assert deleted.status_code == 204
    after = await list_posts(client, stayer)
    assert after.headers["x-total-count"] == "2"
    await assert_totals_match_the_lists(client, [stayer])


async def test_the_feed_pages_by_cursor_through_its_link_header(client):
    owner, viewer = await create_user(client), await create_user(client)
    made = [await create_post(client, owner, title=f"cursor {n}") for n in range(5)]
    await create_post(client, owner, title="cursor draft", published=False)
    url: str | None = "/posts/?limit=2&search=cursor"
    seen: list[str] = []
    while url is not None:
        response = await client.get(url, headers=viewer.headers)
        assert response.status_code == 200, response.text
        assert response.headers["x-total-count"] == "5"  # every page: all that match
        seen += [item["Post"]["title"] for item in response.json()]
        link = response.headers.get("link")
        if link is None:
            assert "x-next-cursor" not in response.headers
            break
        match = re.fullmatch(r'<(?P<url>[^>]+)>; rel="next"', link)
        assert match and "skip" not in match["url"] and "search=cursor" in match["url"]
        url = match["url"]
    assert seen == [post["title"] for post in reversed(made)]
    # A skip page offers the next page by cursor too, without its skip.
    skipped = await client.get("/posts/?limit=2&skip=1&search=cursor", headers=viewer.headers)
    assert "skip=" not in skipped.headers["link"]


async def test_a_bad_or_foreign_feed_cursor_is_400_and_skip_with_cursor_422(client):
    owner, viewer = await create_user(client), await create_user(client)
    for n in range(3):
        await create_post(client, owner, title=f"t{n}")
    first = await client.get("/posts/?limit=1", headers=viewer.headers)
    cursor = first.headers["x-next-cursor"]
    refused = [
        await client.get("/posts/", params={"cursor": bad}, headers=viewer.headers)
        for bad in ("nonsense", cursor[:-4] + "AAAA", "")
    ]
    # Another viewer's feed, and the same feed with another search, do not take it.
    refused.append(await client.get("/posts/", params={"cursor": cursor}, headers=owner.headers))
    refused.append(
        await client.get(
            "/posts/", params={"cursor": cursor, "search": "t"}, headers=viewer.headers
        )
    )
    for response in refused:
        assert (response.status_code, response.json()) == (400, {"detail": "Invalid cursor"})
    both = await client.get("/posts/", params={"cursor": cursor, "skip": 0}, headers=viewer.headers)
    assert both.status_code == 422
    assert both.json()["detail"][0]["loc"] == ["query", "skip"]
    assert (
        await client.get("/posts/", params={"cursor": "A" * 201}, headers=viewer.headers)
    ).status_code == 422


async def test_a_page_of_posts_not_shown_still_leads_to_the_next(client):
    """A post whose owner is gone is not shown; a page of only such posts still has a next."""
    owner, viewer = await create_user(client), await create_user(client)
    older = [await create_post(client, owner, title=f"kept {n}") for n in range(2)]
    orphan = {
        "title": "orphan",
        "content": "c",
        "published": True,
        "created_at": datetime.now(UTC) + timedelta(seconds=5),  # the newest
        "owner_id": ObjectId(),
        "owner": None,
        "votes": 0,
        "comments": 0,
    }
    await Post.get_pymongo_collection().insert_one(orphan)
    first = await client.get("/posts/?limit=1", headers=viewer.headers)
    assert first.status_code == 200 and first.json() == []
    titles: list[str] = []
    cursor = first.headers["x-next-cursor"]
    while cursor:
        page = await client.get(
            "/posts/", params={"limit": 1, "cursor": cursor}, headers=viewer.headers
        )
        titles += [item["Post"]["title"] for item in page.json()]
        cursor = page.headers.get("x-next-cursor")
    assert titles == [post["title"] for post in reversed(older)]
