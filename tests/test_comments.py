"""Comments: every answer of the three routes, drafts, cursor pages, cascades and counts."""

import asyncio
import re
from typing import Any

import httpx
import pytest
from bson import ObjectId
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.derived import recount
from service.models import Comment, Post
from tests.factories import LoggedInUser, create_post, create_user

MISSING_ID = "0123456789abcdef01234567"
NEXT = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


async def comment(
    client: httpx.AsyncClient, user: LoggedInUser, post_id: str, content: str = "Well put."
) -> httpx.Response:
    return await client.post(
        f"/posts/{post_id}/comments", json={"content": content}, headers=user.headers
    )


async def counts(client: httpx.AsyncClient, user: LoggedInUser, post_id: str) -> int:
    response = await client.get(f"/posts/{post_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    number: int = response.json()["comments"]
    return number


async def stored(post_id: str) -> int:
    return await Comment.get_pymongo_collection().count_documents({"post_id": ObjectId(post_id)})


async def test_a_comment_is_created_with_its_author_and_counted(client):
    owner, reader = await create_user(client), await create_user(client)
    post = await create_post(client, owner)
    response = await comment(client, reader, post["id"], "  A thought.  ")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body.keys() == {"id", "post_id", "content", "created_at", "author"}
    assert body["post_id"] == post["id"] and body["content"] == "  A thought.  "
    assert body["author"] == {
        "id": reader.id,
        "email": reader.email,
        "created_at": body["author"]["created_at"],
    }
    assert await counts(client, owner, post["id"]) == 1
    feed = await client.get("/posts/", headers=reader.headers)
    assert feed.json()[0]["comments"] == 1


@pytest.mark.parametrize(
    "body",
    [{}, {"content": ""}, {"content": "x" * 2_001}, {"content": 5}, {"content": None}, []],
    ids=["missing", "empty", "too-long", "number", "null", "array"],
)
async def test_a_bad_comment_is_422_and_writes_nothing(client, body):
    user = await create_user(client)
    post = await create_post(client, user)
    response = await client.post(f"/posts/{post['id']}/comments", json=body, headers=user.headers)
    assert response.status_code == 422, response.text
    assert await stored(post["id"]) == 0
    assert await counts(client, user, post["id"]) == 0


async def test_the_longest_comment_is_taken(client):
    user = await create_user(client)
    post = await create_post(client, user)
    assert (await comment(client, user, post["id"], "x" * 2_000)).status_code == 201


async def test_every_route_wants_a_token(client):
    user = await create_user(client)
    post = await create_post(client, user)
    made = (await comment(client, user, post["id"])).json()
    for method, path in [
        ("POST", f"/posts/{post['id']}/comments"),
        ("GET", f"/posts/{post['id']}/comments"),
        ("DELETE", f"/comments/{made['id']}"),
    ]:
        response = await client.request(method, path, json={"content": "c"})
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
    assert await stored(post["id"]) == 1


async def test_a_missing_post_or_someone_elses_draft_is_404(client):
    owner, other = await create_user(client), await create_user(client)
    draft = await create_post(client, owner, published=False)
    for post_id in (MISSING_ID, draft["id"]):
        made = await comment(client, other, post_id)
        listed = await client.get(f"/posts/{post_id}/comments", headers=other.headers)
        assert made.status_code == listed.status_code == 404, (made.text, listed.text)
    assert await stored(draft["id"]) == 0
    # Its owner comments on it and reads the comments; nobody else sees them, not even to
    # delete one.
    own = await comment(client, owner, draft["id"])
    assert own.status_code == 201
    listed = await client.get(f"/posts/{draft['id']}/comments", headers=owner.headers)
    assert [c["id"] for c in listed.json()] == [own.json()["id"]]
    refused = await client.delete(f"/comments/{own.json()['id']}", headers=other.headers)
    assert refused.status_code == 404
    assert (await client.get("/posts/x/comments", headers=other.headers)).status_code == 422


async def test_the_author_or_the_posts_owner_deletes_a_comment_and_nobody_else(client):
    owner, author, third = [await create_user(client) for _ in range(3)]
    post = await create_post(client, owner)
    first = (await comment(client, author, post["id"])).json()
    second = (await comment(client, author, post["id"])).json()
    refused = await client.delete(f"/comments/{first['id']}", headers=third.headers)
    assert (refused.status_code, refused.json()) == (
        403,
        {"detail": "Not authorized to perform requested action"},
    )
    by_author = await client.delete(f"/comments/{first['id']}", headers=author.headers)
    by_owner = await client.delete(f"/comments/{second['id']}", headers=owner.headers)
    assert (by_author.status_code, by_author.content) == (204, b"")
    assert by_owner.status_code == 204
    assert await counts(client, owner, post["id"]) == 0
    gone = await client.delete(f"/comments/{first['id']}", headers=author.headers)
    assert gone.status_code == 404
    missing = await client.delete(f"/comments/{MISSING_ID}", headers=author.headers)
    assert missing.status_code == 404
    assert (await client.delete("/comments/nope", headers=author.headers)).status_code == 422


async def pages(
    client: httpx.AsyncClient, user: LoggedInUser, post_id: str, limit: int
) -> list[list[str]]:
    """Every page of a post's comments, following each answer's Link header."""
    url = f"/posts/{post_id}/comments?limit={limit}"
    found: list[list[str]] = []
    while True:
        response = await client.get(url, headers=user.headers)
        assert response.status_code == 200, response.text
        found.append([c["content"] for c in response.json()])
        link = response.headers.get("link")
        if link is None:
            assert "x-next-cursor" not in response.headers
            return found
        match = NEXT.match(link)
        assert match, link
        assert response.headers["x-next-cursor"] in match["url"]
        url = match["url"]


async def test_comments_come_oldest_first_a_page_at_a_time(client):
    user = await create_user(client)
    post = await create_post(client, user)
    for number in range(5):
        assert (await comment(client, user, post["id"], f"c{number}")).status_code == 201
    assert await pages(client, user, post["id"], 2) == [["c0", "c1"], ["c2", "c3"], ["c4"]]
    assert await pages(client, user, post["id"], 5) == [["c0", "c1", "c2", "c3", "c4"]]


async def test_a_cursor_holds_while_comments_come_and_go(client):
    user = await create_user(client)
    post = await create_post(client, user)
    made = [(await comment(client, user, post["id"], f"c{n}")).json() for n in range(4)]
    first = await client.get(f"/posts/{post['id']}/comments?limit=2", headers=user.headers)
    cursor = first.headers["x-next-cursor"]
    # The first page's comments go and new ones come: the next page starts where it left off.
    for gone in made[:2]:
        assert (
            await client.delete(f"/comments/{gone['id']}", headers=user.headers)
        ).status_code == 204
    await comment(client, user, post["id"], "c4")
    second = await client.get(
        f"/posts/{post['id']}/comments", params={"limit": 2, "cursor": cursor}, headers=user.headers
    )
    assert [c["content"] for c in second.json()] == ["c2", "c3"]


async def test_a_bad_cursor_is_400_and_a_long_one_422(client):
    user = await create_user(client)
    post, other = await create_post(client, user), await create_post(client, user)
    for n in range(3):
        await comment(client, user, post["id"], f"c{n}")
        await comment(client, user, other["id"], f"c{n}")
    first = await client.get(f"/posts/{post['id']}/comments?limit=1", headers=user.headers)
    cursor = first.headers["x-next-cursor"]
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    for bad in ("garbage", "", "%%%", tampered, cursor[:20]):
        response = await client.get(
            f"/posts/{post['id']}/comments", params={"cursor": bad}, headers=user.headers
        )
        assert (response.status_code, response.json()) == (400, {"detail": "Invalid cursor"}), bad
    # Another post's list does not take it.
    foreign = await client.get(
        f"/posts/{other['id']}/comments", params={"cursor": cursor}, headers=user.headers
    )
    assert foreign.status_code == 400
    too_long = await client.get(
        f"/posts/{post['id']}/comments", params={"cursor": "A" * 201}, headers=user.headers
    )
    assert too_long.status_code == 422


async def test_deleting_a_post_deletes_its_comments(client):
    owner, reader = await create_user(client), await create_user(client)
    post, kept = await create_post(client, owner), await create_post(client, owner)
    await comment(client, reader, post["id"])
    await comment(client, reader, kept["id"])
    assert (await client.delete(f"/posts/{post['id']}", headers=owner.headers)).status_code == 204
    assert await stored(post["id"]) == 0
    assert await stored(kept["id"]) == 1


async def test_deleting_an_account_deletes_its_comments_and_those_on_its_posts(client):
    leaving, staying = await create_user(client), await create_user(client)
    theirs, mine = await create_post(client, leaving), await create_post(client, staying)
    await comment(client, staying, theirs["id"])
    for _ in range(2):  # two on one post: its count goes down by both
        await comment(client, leaving, mine["id"])
    await comment(client, staying, mine["id"])
    deleted = await client.request(
        "DELETE", "/users/me", json={"password": leaving.password}, headers=leaving.headers
    )
    assert deleted.status_code == 204, deleted.text
    assert await stored(theirs["id"]) == 0
    assert await stored(mine["id"]) == 1
    assert await counts(client, staying, mine["id"]) == 1


async def test_recount_repairs_a_wrong_comment_count(client):
    user = await create_user(client)
    post = await create_post(client, user)
    await comment(client, user, post["id"])
    posts = Post.get_pymongo_collection()
    await posts.update_one({"_id": ObjectId(post["id"])}, {"$set": {"comments": 7}})
    corrected, _ = await recount(posts.database)
    assert corrected == 1
    assert await counts(client, user, post["id"]) == 1


# Concurrent creates and deletes, from several users on a few posts: afterwards each post's
# count is the number of its comments in the collection, however the requests interleaved.
actions = st.lists(
    st.tuples(st.sampled_from(["create", "delete"]), st.integers(0, 2), st.integers(0, 2)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(rounds=st.lists(actions, min_size=1, max_size=3))
async def test_counts_match_the_comments_after_concurrent_creates_and_deletes(client, rounds):
    await Comment.get_pymongo_collection().delete_many({})
    await Post.get_pymongo_collection().delete_many({})
    users = [await create_user(client) for _ in range(3)]
    posts = [await create_post(client, users[n]) for n in range(3)]
    made: list[dict[str, Any]] = []
    for batch in rounds:
        calls = []
        for kind, user, target in batch:
            if kind == "create" or not made:
                calls.append(comment(client, users[user], posts[target]["id"]))
            else:
                victim = made[target % len(made)]
                owner = users[target]  # the post's owner or not: 204, 403 or 404 all count
                calls.append(client.delete(f"/comments/{victim['id']}", headers=owner.headers))
        for response in await asyncio.gather(*calls):
            assert response.status_code in (201, 204, 403, 404), response.text
            if response.status_code == 201:
                made.append(response.json())
    for post in posts:
        assert await counts(client, users[0], post["id"]) == await stored(post["id"])
