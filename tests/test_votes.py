"""HTTP tests for /vote: adding and taking back votes, visibility, validation, races."""

import asyncio

import httpx
import pytest
from bson import ObjectId

from service.models import Post, Vote
from tests.factories import LoggedInUser, create_post, create_user, vote

MISSING_ID = "0123456789abcdef01234567"
ADDED = {"message": "successfully added vote"}
DELETED = {"message": "successfully deleted vote"}
NOT_AUTHENTICATED = {"detail": "Not authenticated"}


def post_not_found(post_id: str) -> dict[str, str]:
    return {"detail": f"Post with id: {post_id} does not exist"}


async def votes_on(client: httpx.AsyncClient, viewer: LoggedInUser, post_id: str) -> int:
    response = await client.get(f"/posts/{post_id}", headers=viewer.headers)
    assert response.status_code == 200, response.text
    count: int = response.json()["votes"]
    return count


async def count_votes() -> int:
    count: int = await Vote.get_pymongo_collection().count_documents({})
    return count


@pytest.mark.parametrize("path", ["/vote/", "/vote"])
async def test_vote_answers_on_both_spellings(client: httpx.AsyncClient, path: str) -> None:
    user = await create_user(client)
    post = await create_post(client, user)

    response = await client.post(path, json={"post_id": post["id"], "dir": 1}, headers=user.headers)

    assert response.status_code == 201, response.text
    assert response.json() == ADDED


async def test_add_vote_is_201(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)

    response = await vote(client, voter, post["id"])

    assert response.status_code == 201
    assert response.json() == ADDED
    assert await votes_on(client, voter, post["id"]) == 1


async def test_voting_twice_is_409(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)
    await vote(client, voter, post["id"])

    response = await vote(client, voter, post["id"])

    assert response.status_code == 409
    assert response.json() == {"detail": f"user {voter.id} has already voted on post {post['id']}"}
    assert await votes_on(client, voter, post["id"]) == 1


async def test_delete_vote_is_201(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)
    await vote(client, voter, post["id"])

    response = await vote(client, voter, post["id"], 0)

    assert response.status_code == 201
    assert response.json() == DELETED
    assert await votes_on(client, voter, post["id"]) == 0


async def test_delete_vote_not_cast_is_404(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)
    await vote(client, owner, post["id"])  # someone else's vote is not the caller's

    response = await vote(client, voter, post["id"], 0)

    assert response.status_code == 404
    assert response.json() == {"detail": "Vote does not exist"}
    assert await votes_on(client, voter, post["id"]) == 1


async def test_vote_removed_then_added_again(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)
    await vote(client, voter, post["id"])

    removed = await vote(client, voter, post["id"], 0)
    added = await vote(client, voter, post["id"], 1)

    assert (removed.status_code, removed.json()) == (201, DELETED)
    assert (added.status_code, added.json()) == (201, ADDED)
    assert await votes_on(client, voter, post["id"]) == 1


@pytest.mark.parametrize("direction", [1, 0])
async def test_vote_on_missing_post_is_404(client: httpx.AsyncClient, direction: int) -> None:
    voter = await create_user(client)

    response = await vote(client, voter, MISSING_ID, direction)

    assert response.status_code == 404
    assert response.json() == post_not_found(MISSING_ID)
    assert await count_votes() == 0


@pytest.mark.parametrize("direction", [1, 0])
async def test_vote_on_someone_elses_draft_is_404(
    client: httpx.AsyncClient, direction: int
) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    draft = await create_post(client, owner, published=False)

    response = await vote(client, voter, draft["id"], direction)

    assert response.status_code == 404
    assert response.json() == post_not_found(draft["id"])
    assert await count_votes() == 0


async def test_owner_can_vote_on_own_draft(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    draft = await create_post(client, owner, published=False)

    response = await vote(client, owner, draft["id"])

    assert response.status_code == 201
    assert response.json() == ADDED
    assert await votes_on(client, owner, draft["id"]) == 1


async def test_users_may_vote_on_own_published_post(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await vote(client, owner, post["id"])

    assert response.status_code == 201
    assert response.json() == ADDED
    assert await votes_on(client, owner, post["id"]) == 1


@pytest.mark.parametrize(
    "payload",
    [
        {"dir": 2},
        {"dir": -1},
        {"dir": True},
        {"dir": "1"},
        {"dir": 1.5},
        {"dir": 1.0},
        {"dir": None},
        {},
    ],
    ids=["2", "-1", "true", "string", "1.5", "1.0", "null", "missing"],
)
async def test_dir_other_than_0_or_1_is_422(
    client: httpx.AsyncClient, payload: dict[str, object]
) -> None:
    user = await create_user(client)
    post = await create_post(client, user)

    response = await client.post(
        "/vote/", json={"post_id": post["id"], **payload}, headers=user.headers
    )

    assert response.status_code == 422
    assert any(error["loc"] == ["body", "dir"] for error in response.json()["detail"])
    assert await count_votes() == 0


@pytest.mark.parametrize("post_id", ["123", "not-an-object-id", "0123456789abcdef0123456z", 7])
async def test_malformed_post_id_is_422(client: httpx.AsyncClient, post_id: object) -> None:
    user = await create_user(client)

    response = await client.post(
        "/vote/", json={"post_id": post_id, "dir": 1}, headers=user.headers
    )

    assert response.status_code == 422
    assert any(error["loc"] == ["body", "post_id"] for error in response.json()["detail"])


async def test_missing_post_id_is_422(client: httpx.AsyncClient) -> None:
    user = await create_user(client)

    response = await client.post("/vote/", json={"dir": 1}, headers=user.headers)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "post_id"]


async def test_vote_without_token_is_401(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    post = await create_post(client, owner)

    response = await client.post("/vote/", json={"post_id": post["id"], "dir": 1})

    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await count_votes() == 0


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"", b'{"post_id": "nope", "dir": 7}'],
    ids=["broken-json", "no-body", "invalid-fields"],
)
async def test_unauthenticated_bad_body_is_401_not_422(
    client: httpx.AsyncClient, content: bytes
) -> None:
    response = await client.post(
        "/vote/", content=content, headers={"Content-Type": "application/json"}
    )

    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_votes_count_follows_adds_and_deletes_by_several_users(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    voters = [await create_user(client) for _ in range(3)]
    post = await create_post(client, owner)
    other_post = await create_post(client, owner)

    for voter in voters:
        assert (await vote(client, voter, post["id"])).status_code == 201
    assert await votes_on(client, owner, post["id"]) == 3

    assert (await vote(client, voters[0], post["id"], 0)).status_code == 201
    assert await votes_on(client, owner, post["id"]) == 2
    assert await votes_on(client, owner, other_post["id"]) == 0


async def test_simultaneous_identical_votes_count_once(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)

    responses = await asyncio.gather(*(vote(client, voter, post["id"]) for _ in range(16)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 15, [response.text for response in responses]
    duplicate = {"detail": f"user {voter.id} has already voted on post {post['id']}"}
    assert all(r.json() == duplicate for r in responses if r.status_code == 409)
    assert await votes_on(client, owner, post["id"]) == 1
    assert await count_votes() == 1


async def test_simultaneous_votes_by_different_users_all_count(client: httpx.AsyncClient) -> None:
    owner = await create_user(client)
    voters = [await create_user(client) for _ in range(16)]
    post = await create_post(client, owner)

    responses = await asyncio.gather(*(vote(client, voter, post["id"]) for voter in voters))

    assert [response.status_code for response in responses] == [201] * 16
    assert all(response.json() == ADDED for response in responses)
    assert await votes_on(client, owner, post["id"]) == 16


async def stored_count(post_id: str) -> int:
    """The count kept on the post, which must equal its documents in `votes`."""
    post = await Post.get_pymongo_collection().find_one({"_id": ObjectId(post_id)})
    assert post is not None
    kept: int = post["votes"]
    counted = await Vote.get_pymongo_collection().count_documents({"post_id": ObjectId(post_id)})
    assert kept == counted, f"post keeps {kept} votes, votes has {counted}"
    return kept


async def test_taking_back_a_vote_on_a_post_now_someone_elses_draft_changes_nothing(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)
    assert (await vote(client, voter, post["id"])).status_code == 201
    draft = {"title": post["title"], "content": post["content"], "published": False}
    assert (await client.put(f"/posts/{post['id']}", json=draft, headers=owner.headers)).is_success

    again = await vote(client, voter, post["id"])
    taken_back = await vote(client, voter, post["id"], 0)

    # To the voter the post does not exist, whichever way they vote; their vote stays.
    assert (again.status_code, again.json()) == (404, post_not_found(post["id"]))
    assert (taken_back.status_code, taken_back.json()) == (404, post_not_found(post["id"]))
    assert await votes_on(client, owner, post["id"]) == 1
    assert await stored_count(post["id"]) == 1


async def test_a_vote_refused_for_a_missing_post_leaves_no_document(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    voter = await create_user(client)
    post = await create_post(client, owner)
    assert (await client.delete(f"/posts/{post['id']}", headers=owner.headers)).status_code == 204

    response = await vote(client, voter, post["id"])

    assert (response.status_code, response.json()) == (404, post_not_found(post["id"]))
    assert await count_votes() == 0


async def test_simultaneous_votes_and_take_backs_keep_the_count_exact(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    voters = [await create_user(client) for _ in range(24)]
    post = await create_post(client, owner)
    first, second = voters[:12], voters[12:]
    for voter in first:
        assert (await vote(client, voter, post["id"])).status_code == 201

    # At once: the first twelve take their votes back (each twice: one 201, one 404) while
    # the other twelve vote (each twice: one 201, one 409).
    responses = await asyncio.gather(
        *(vote(client, voter, post["id"], 0) for voter in first + first),
        *(vote(client, voter, post["id"], 1) for voter in second + second),
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] * 24 + [404] * 12 + [409] * 12
    assert await votes_on(client, owner, post["id"]) == 12
    assert await stored_count(post["id"]) == 12


async def test_deleting_an_account_takes_its_votes_off_the_counts(
    client: httpx.AsyncClient,
) -> None:
    owner = await create_user(client)
    leaver = await create_user(client)
    stayer = await create_user(client)
    posts = [await create_post(client, owner) for _ in range(3)]
    for post in posts:
        assert (await vote(client, leaver, post["id"])).status_code == 201
    assert (await vote(client, stayer, posts[0]["id"])).status_code == 201

    # The account goes while its owner takes one of the same votes back: each vote is
    # counted off once, whoever deletes it.
    deleted, taken_back = await asyncio.gather(
        client.request(
            "DELETE", "/users/me", json={"password": leaver.password}, headers=leaver.headers
        ),
        vote(client, leaver, posts[1]["id"], 0),
    )

    assert deleted.status_code == 204, deleted.text
    assert taken_back.status_code in {201, 401, 404}
    assert [await stored_count(post["id"]) for post in posts] == [1, 0, 0]
