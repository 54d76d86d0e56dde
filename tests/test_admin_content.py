"""The admin API (issue 16), content: a deactivated user's posts and comments are hidden and
come back, and an admin's delete of a post or comment does what the owner's or author's would,
hidden content counted once.

The feed's total is checked against the feed itself wherever it is read (`feed` below): the
total comes from counters, the page from a query, so a counter that drifts fails there.
"""

from collections.abc import Awaitable, Callable
from itertools import pairwise
from typing import Any

import httpx
from beanie import PydanticObjectId

from service.models import Comment, Post, Vote
from tests.factories import (
    REASON,
    LoggedInUser,
    act,
    comment,
    comment_ids,
    counts,
    create_admin,
    create_post,
    create_user,
    done,
    login_pair,
    stored,
    vote,
)


async def feed(
    client: httpx.AsyncClient, viewer: LoggedInUser, **params: Any
) -> tuple[int, list[str]]:
    """The viewer's feed in one page: X-Total-Count, which must count the page, and the ids."""
    response = await client.get("/posts/", params={"limit": 100, **params}, headers=viewer.headers)
    assert response.status_code == 200, response.text
    ids = [item["Post"]["id"] for item in response.json()]
    total = int(response.headers["x-total-count"])
    assert total == len(ids), (total, ids)
    return total, ids


async def test_a_deactivated_users_posts_and_comments_vanish_and_come_back(client):
    admin, alice, bob = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    bobs = await create_post(client, bob, title="zebra by bob")
    hers = await create_post(client, alice, title="zebra by alice")
    draft = await create_post(client, alice, title="zebra draft", published=False)
    assert (await vote(client, alice, bobs["id"])).status_code == 201
    assert (await vote(client, bob, hers["id"])).status_code == 201
    her_comment = await comment(client, alice, bobs["id"])
    his_comment = await comment(client, bob, hers["id"])
    her_own = await comment(client, alice, hers["id"])

    async def as_before() -> None:
        for params in ({}, {"search": "ZEBRA"}):
            assert await feed(client, bob, **params) == (2, [hers["id"], bobs["id"]])
        assert await counts(client, bob, hers["id"]) == (1, 2)
        assert await counts(client, bob, bobs["id"]) == (1, 1)
        assert await comment_ids(client, bob, hers["id"]) == [his_comment["id"], her_own["id"]]
        assert await comment_ids(client, bob, bobs["id"]) == [her_comment["id"]]

    await as_before()
    await done(client, admin, "deactivate_user", alice.id)

    for params in ({}, {"search": "zebra"}):
        assert await feed(client, bob, **params) == (1, [bobs["id"]])
    assert await feed(client, bob, search="by alice") == (0, [])
    assert await feed(client, admin) == (1, [bobs["id"]])
    for viewer in (bob, admin):
        assert await counts(client, viewer, hers["id"]) is None
        assert await counts(client, viewer, draft["id"]) is None
    # (Listing her post's comments: test_a_hidden_posts_comments_are_not_listed.)
    # Her vote still counts; her comment is off bob's post, listed and counted.
    assert await counts(client, bob, bobs["id"]) == (1, 0)
    assert await comment_ids(client, bob, bobs["id"]) == []
    # Nobody votes, takes a vote back, or comments on her hidden post.
    for voter, direction in ((admin, 1), (bob, 1), (bob, 0)):
        refused = await vote(client, voter, hers["id"], direction)
        assert refused.status_code == 404, refused.text
    hidden_comment = await client.post(
        f"/posts/{hers['id']}/comments", json={"content": "Hello?"}, headers=bob.headers
    )
    assert hidden_comment.status_code == 404
    # Her data is intact, only hidden: the draft too.
    assert await stored(Vote, post_id=hers["id"]) == 1
    assert await stored(Comment, author_id=alice.id) == 2
    hidden_draft = await Post.get(PydanticObjectId(draft["id"]))
    assert hidden_draft is not None and hidden_draft.hidden
    profile = await client.get(f"/users/{alice.id}", headers=bob.headers)
    assert profile.status_code == 200

    await done(client, admin, "activate_user", alice.id)
    await as_before()
    again = await create_user_session(client, alice)
    assert await feed(client, again) == (3, [draft["id"], hers["id"], bobs["id"]])
    assert (await vote(client, admin, hers["id"])).status_code == 201


async def test_a_hidden_posts_comments_are_not_listed(client):
    admin, alice, bob = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    hers = await create_post(client, alice)
    await comment(client, bob, hers["id"])
    await done(client, admin, "deactivate_user", alice.id)
    for viewer in (bob, admin):
        response = await client.get(f"/posts/{hers['id']}/comments", headers=viewer.headers)
        assert (response.status_code, response.json()) == (
            404,
            {"detail": f"post with id: {hers['id']} was not found"},
        ), response.text


async def create_user_session(client: httpx.AsyncClient, user: LoggedInUser) -> LoggedInUser:
    """A new login of `user` (their old tokens are refused after a deactivation)."""
    pair = await login_pair(client, user.email, user.password)
    return LoggedInUser(
        id=user.id,
        email=user.email,
        password=user.password,
        token=pair["access_token"],
        refresh_token=pair["refresh_token"],
        headers={"Authorization": f"Bearer {pair['access_token']}"},
    )


# Admins' deletes


Deleter = Callable[[LoggedInUser, str], Awaitable[httpx.Response]]


async def post_deletion(client: httpx.AsyncClient, delete: Deleter) -> dict[str, Any]:
    """A published post and a draft, each with votes and comments, beside a post that stays;
    `delete(owner, post_id)` deletes the two. What moved, and what is left."""
    owner, reader = await create_user(client), await create_user(client)
    post = await create_post(client, owner)
    draft = await create_post(client, owner, published=False)
    kept = await create_post(client, owner)
    for target in (post, kept):
        for user in (owner, reader):
            assert (await vote(client, user, target["id"])).status_code == 201
            await comment(client, user, target["id"])
    assert (await vote(client, owner, draft["id"])).status_code == 201
    await comment(client, owner, draft["id"])

    async def totals() -> tuple[int, int]:
        return (await feed(client, reader))[0], (await feed(client, owner))[0]

    seen = [await totals()]
    answers = []
    for target in (post, draft):
        answers.append((await delete(owner, target["id"])).status_code)
        seen.append(await totals())
    return {
        "answers": answers,
        "reader's total moved": [after[0] - before[0] for before, after in pairwise(seen)],
        "owner's total moved": [after[1] - before[1] for before, after in pairwise(seen)],
        "found": [await counts(client, owner, target["id"]) for target in (post, draft, kept)],
        "votes left": [await stored(Vote, post_id=t["id"]) for t in (post, draft, kept)],
        "comments left": [await stored(Comment, post_id=t["id"]) for t in (post, draft, kept)],
    }


async def test_an_admins_delete_of_a_post_or_draft_cascades_and_counts_as_the_owners(
    client: httpx.AsyncClient,
) -> None:
    admin = await create_admin(client)

    async def by_owner(owner: LoggedInUser, post_id: str) -> httpx.Response:
        return await client.delete(f"/posts/{post_id}", headers=owner.headers)

    async def by_admin(owner: LoggedInUser, post_id: str) -> httpx.Response:
        return await act(client, admin, "delete_post", post_id, {"reason": REASON})

    expected = {
        "answers": [204, 204],
        "reader's total moved": [-1, 0],
        "owner's total moved": [-1, -1],  # the owner's feed holds their drafts
        "found": [None, None, (2, 2)],
        "votes left": [0, 0, 2],
        "comments left": [0, 0, 2],
    }
    assert await post_deletion(client, by_owner) == expected
    assert await post_deletion(client, by_admin) == expected


async def test_an_admin_deletes_a_deactivated_users_hidden_posts_counted_once(client):
    admin, alice, bob = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    bobs = await create_post(client, bob)
    post, kept = await create_post(client, alice), await create_post(client, alice)
    draft = await create_post(client, alice, published=False)
    assert (await vote(client, bob, post["id"])).status_code == 201
    await comment(client, bob, post["id"])
    assert await feed(client, bob) == (3, [kept["id"], post["id"], bobs["id"]])
    await done(client, admin, "deactivate_user", alice.id)
    assert await feed(client, bob) == (1, [bobs["id"]])

    for target in (post, draft):
        await done(client, admin, "delete_post", target["id"])
        assert await stored(Post, _id=target["id"]) == 0
    assert await stored(Vote, post_id=post["id"]) == await stored(Comment, post_id=post["id"]) == 0
    # Already off the feed's total: not taken off again.
    assert await feed(client, bob) == (1, [bobs["id"]])
    await done(client, admin, "activate_user", alice.id)
    assert await feed(client, bob) == (2, [kept["id"], bobs["id"]])
    # Her draft was taken off her own total.
    assert await feed(client, await create_user_session(client, alice)) == (
        2,
        [kept["id"], bobs["id"]],
    )


async def comment_deletion(client: httpx.AsyncClient, delete: Deleter) -> dict[str, Any]:
    """Two comments on a post, deleted by `delete(author, comment_id)`: the post's count each
    time, and what is left."""
    owner, author = await create_user(client), await create_user(client)
    post = await create_post(client, owner)
    made = [await comment(client, author, post["id"]) for _ in range(2)]
    seen = [await counts(client, owner, post["id"])]
    answers = []
    for each in made:
        answers.append((await delete(author, each["id"])).status_code)
        seen.append(await counts(client, owner, post["id"]))
    return {
        "answers": answers,
        "counts": seen,
        "listed": await comment_ids(client, owner, post["id"]),
        "stored": await stored(Comment, post_id=post["id"]),
        "again": (await delete(author, made[0]["id"])).status_code,
    }


async def test_an_admins_delete_of_a_comment_counts_as_the_authors(
    client: httpx.AsyncClient,
) -> None:
    admin = await create_admin(client)

    async def by_author(author: LoggedInUser, comment_id: str) -> httpx.Response:
        return await client.delete(f"/comments/{comment_id}", headers=author.headers)

    async def by_admin(author: LoggedInUser, comment_id: str) -> httpx.Response:
        return await act(client, admin, "delete_comment", comment_id)

    expected = {
        "answers": [204, 204],
        "counts": [(0, 2), (0, 1), (0, 0)],
        "listed": [],
        "stored": 0,
        "again": 404,
    }
    assert await comment_deletion(client, by_author) == expected
    assert await comment_deletion(client, by_admin) == expected


async def test_an_admins_delete_of_a_hidden_comment_is_not_counted_twice(client):
    admin, owner, author = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    post = await create_post(client, owner)
    first, second = [await comment(client, author, post["id"]) for _ in range(2)]
    owners = await comment(client, owner, post["id"])
    assert await counts(client, owner, post["id"]) == (0, 3)
    await done(client, admin, "deactivate_user", author.id)
    assert await counts(client, owner, post["id"]) == (0, 1)

    await done(client, admin, "delete_comment", first["id"])
    assert await stored(Comment, _id=first["id"]) == 0
    assert await counts(client, owner, post["id"]) == (0, 1)
    assert await comment_ids(client, owner, post["id"]) == [owners["id"]]
    await done(client, admin, "activate_user", author.id)
    assert await counts(client, owner, post["id"]) == (0, 2)
    assert await comment_ids(client, owner, post["id"]) == [second["id"], owners["id"]]
