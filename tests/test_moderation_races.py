"""Moderation's races, with real concurrency (asyncio.gather on the in-process app), each
repeated on fresh data: a deactivation against deletes of the account's comments, and of its
posts; a deactivation and an activation of one account at once; two admins demoting each
other. After each, the counts are the documents' and a recount corrects nothing.

RACE_REPETITIONS (default 6) sets how many times each race is run.
"""

import asyncio
import os
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import httpx
from beanie import PydanticObjectId
from fastapi import FastAPI

from service.derived import recount
from service.models.post import COUNTERS, PUBLISHED_COUNTER
from service.models.user import ADMINS_COUNTER
from tests.factories import LoggedInUser, create_admin, create_post, create_user, login
from tests.test_comments import comment
from tests.test_moderation_properties import (
    Database,
    empty_database,
    set_active,
    walk_feed,
)

REPETITIONS = int(os.environ.get("RACE_REPETITIONS", "6"))
CONTENDED = {"detail": "The account kept changing meanwhile: try again"}
# Not a timing assertion: a race's requests answer in tens of milliseconds, so requests still
# running after this long are stuck (a livelock), and the test fails instead of hanging.
HANG_GUARD = 4.0


async def at_once[T](*requests: Coroutine[Any, Any, T]) -> list[T]:
    """The requests (or chains of them), sent at the same moment; their answers in the same
    order."""
    try:
        async with asyncio.timeout(HANG_GUARD):
            return list(await asyncio.gather(*requests))
    except TimeoutError as stuck:
        raise AssertionError(f"the requests had not all answered after {HANG_GUARD} s") from stuck


async def commented(client: httpx.AsyncClient, author: LoggedInUser, post_id: str) -> str:
    response = await comment(client, author, post_id)
    assert response.status_code == 201, response.text
    comment_id: str = response.json()["id"]
    return comment_id


async def check_comment_counts(
    client: httpx.AsyncClient, reader: LoggedInUser, database: Database, expected: dict[str, int]
) -> None:
    """Each post's `comments`, as stored and as read, is its number of shown comment
    documents, and the number expected."""
    for post_id, number in expected.items():
        oid = PydanticObjectId(post_id)
        stored = await database["posts"].find_one({"_id": oid})
        assert stored is not None
        shown = await database["comments"].count_documents(
            {"post_id": oid, "hidden": {"$ne": True}}
        )
        assert (stored["comments"], shown) == (number, number), (post_id, stored, shown)
        read = await client.get(f"/posts/{post_id}", headers=reader.headers)
        assert read.status_code == 200, read.text
        assert read.json()["comments"] == number, read.json()
        listed = await client.get(
            f"/posts/{post_id}/comments", params={"limit": 100}, headers=reader.headers
        )
        assert listed.status_code == 200, listed.text
        assert len(listed.json()) == number, listed.json()


async def check_feeds(
    client: httpx.AsyncClient, viewers: list[LoggedInUser], database: Database, expected: set[str]
) -> None:
    """Every viewer's feed is `expected` (none of them has drafts), its total exact; the
    published count is the number of published posts shown."""
    for viewer in viewers:
        total, items = await walk_feed(client, viewer)
        ids = [item["Post"]["id"] for item in items]
        assert (total, len(ids), set(ids)) == (len(expected), len(expected), expected), viewer.email
    counter = await database[COUNTERS].find_one({"_id": PUBLISHED_COUNTER})
    shown = await database["posts"].count_documents({"published": True, "hidden": {"$ne": True}})
    assert (counter or {}).get("value", 0) == shown == len(expected), (counter, shown)


async def one_by_one(
    client: httpx.AsyncClient,
    caller: LoggedInUser,
    lead: int,
    sends: list[Callable[[], Coroutine[Any, Any, httpx.Response]]],
) -> list[httpx.Response]:
    """`lead` harmless reads (the caller's own account), then each request after the other.
    A chain of requests spans a whole concurrent change, and a different lead in each
    repetition lands each request at a different point of it: before, during, after."""
    for _ in range(lead):
        read = await client.get("/users/me", headers=caller.headers)
        assert read.status_code == 200, read.text
    return [await send() for send in sends]


LEADS = 4  # the leads tried in turn, 0 to 3 reads


async def test_comment_counts_stay_exact_when_an_author_is_deactivated_while_their_comments_go(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """The post's owner and an admin delete the author's comments, one after the other,
    while another admin deactivates the author: each comment is counted off once, by its
    delete or by the deactivation, whichever came first; and on again by the activation."""
    database: Database = app.state.database
    for repetition in range(REPETITIONS):
        await empty_database(database)
        admin, moderator = await create_admin(client), await create_admin(client)
        owner, author = await create_user(client), await create_user(client)
        posts = [(await create_post(client, owner))["id"] for _ in range(2)]
        for post_id in posts:
            await commented(client, owner, post_id)  # stays, and stays shown
        theirs = {
            post_id: [await commented(client, author, post_id) for _ in range(4)]
            for post_id in posts
        }
        # Each deletes three of the author's eight comments, alternately on the two posts.
        mixed = [ids[i] for i in range(3) for ids in theirs.values()]
        by_owner, by_admin = mixed[0::2], mixed[1::2]

        deactivated, owners, admins = await at_once(
            one_by_one(
                client, moderator, 0, [partial(set_active, client, moderator, author, False)]
            ),
            one_by_one(
                client,
                owner,
                repetition % LEADS,
                [partial(client.delete, f"/comments/{c}", headers=owner.headers) for c in by_owner],
            ),
            one_by_one(
                client,
                admin,
                repetition // LEADS % LEADS,
                [
                    partial(client.delete, f"/admin/comments/{c}", headers=admin.headers)
                    for c in by_admin
                ],
            ),
        )
        assert deactivated[0].status_code == 200, deactivated[0].text
        assert [deleted.status_code for deleted in admins] == [204] * len(by_admin)  # hidden or not
        gone = set(by_admin)
        for comment_id, deleted in zip(by_owner, owners, strict=True):
            if deleted.status_code == 404:  # hidden before the owner read it: not theirs to see
                detail = f"comment with id: {comment_id} does not exist"
                assert deleted.json() == {"detail": detail}
                continue
            assert deleted.status_code == 204, deleted.text
            gone.add(comment_id)
        left = await database["comments"].count_documents(
            {"_id": {"$in": [PydanticObjectId(c) for c in gone]}}
        )
        assert left == 0
        await check_comment_counts(client, owner, database, dict.fromkeys(posts, 1))

        activated = await set_active(client, admin, author, True)
        assert activated.status_code == 200, activated.text
        expected = {post_id: 1 + len(set(ids) - gone) for post_id, ids in theirs.items()}
        await check_comment_counts(client, owner, database, expected)
        assert await recount(database) == (0, 0)


async def test_the_feed_stays_exact_when_an_owner_is_deactivated_while_an_admin_deletes_posts(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """An admin deletes published posts and a draft of a user, one after the other, while
    another admin deactivates the user: each post leaves the published count (or the
    drafts) once, and the feed's total stays exact; and after activation too."""
    database: Database = app.state.database
    for repetition in range(REPETITIONS):
        await empty_database(database)
        admin, moderator = await create_admin(client), await create_admin(client)
        owner, bystander = await create_user(client), await create_user(client)
        theirs = [(await create_post(client, owner))["id"] for _ in range(5)]
        draft = (await create_post(client, owner, published=False))["id"]
        others = {(await create_post(client, bystander))["id"] for _ in range(2)}
        doomed = [theirs[0], draft, theirs[1], theirs[2]]

        deactivated, deletes = await at_once(
            one_by_one(
                client, moderator, 0, [partial(set_active, client, moderator, owner, False)]
            ),
            one_by_one(
                client,
                admin,
                repetition % LEADS,
                [
                    partial(client.delete, f"/admin/posts/{p}", headers=admin.headers)
                    for p in doomed
                ],
            ),
        )
        assert deactivated[0].status_code == 200, deactivated[0].text
        assert [deleted.status_code for deleted in deletes] == [204] * len(doomed)
        await check_feeds(client, [admin, bystander], database, others)
        stored_owner = await database["users"].find_one({"_id": PydanticObjectId(owner.id)})
        assert stored_owner is not None and stored_owner["drafts"] == 0

        activated = await set_active(client, admin, owner, True)
        assert activated.status_code == 200, activated.text
        owner.headers = {"Authorization": f"Bearer {await login(client, owner.email)}"}
        await check_feeds(client, [admin, bystander, owner], database, others | set(theirs[3:]))
        assert await recount(database) == (0, 0)


ROUNDS = 3  # deactivate and activate sent together, so many times per repetition


async def flip_at_once(
    client: httpx.AsyncClient,
    database: Database,
    member: LoggedInUser,
    *,
    posts: set[str],
    commented_post: str,
) -> None:
    """Two admins, at the same moment, one deactivating `member` and one activating them,
    ROUNDS times (each order in turn). Whichever change is made last, the member's posts and
    comments (two, on `commented_post`) end hidden exactly if the account ends inactive, and
    the feed's total and the comment count follow."""
    admins = [await create_admin(client), await create_admin(client)]
    bystander = await create_user(client)
    oid = PydanticObjectId(member.id)
    for round_number in range(ROUNDS):
        requests = [
            set_active(client, admin, member, active)
            for admin, active in zip(admins, (False, True), strict=True)
        ]
        if round_number % 2:
            requests.reverse()
        for answer in await at_once(*requests):
            assert answer.status_code == 200 or (
                answer.status_code == 409 and answer.json() == CONTENDED
            ), answer.text
        stored = await database["users"].find_one({"_id": oid})
        assert stored is not None
        active: bool = stored["active"]
        for name, key in (("posts", "owner_id"), ("comments", "author_id")):
            flags = [
                row.get("hidden", False)
                async for row in database[name].find({key: oid}, {"hidden": 1})
            ]
            assert flags == [not active] * len(flags), (round_number, name, active, flags)
        shown = {commented_post} | (posts if active else set())
        await check_feeds(client, [*admins, bystander], database, shown)
        await check_comment_counts(
            client, bystander, database, {commented_post: 2 if active else 0}
        )
    assert await recount(database) == (0, 0)


async def test_deactivate_and_activate_at_once_leave_comments_as_the_account_ends(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A user with comments and no posts: the comments end as the account does."""
    database: Database = app.state.database
    for _ in range(REPETITIONS):
        await empty_database(database)
        member, owner = await create_user(client), await create_user(client)
        target = (await create_post(client, owner))["id"]
        for _ in range(2):
            await commented(client, member, target)
        await flip_at_once(client, database, member, posts=set(), commented_post=target)


async def test_deactivate_and_activate_at_once_leave_posts_as_the_account_ends(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    """A user with published posts, a draft and comments: all of it ends as the account
    does, and the published count with it."""
    database: Database = app.state.database
    for _ in range(REPETITIONS):
        await empty_database(database)
        member, owner = await create_user(client), await create_user(client)
        theirs = {(await create_post(client, member))["id"] for _ in range(3)}
        await create_post(client, member, published=False)
        target = (await create_post(client, owner))["id"]
        for _ in range(2):
            await commented(client, member, target)
        await flip_at_once(client, database, member, posts=theirs, commented_post=target)


async def test_two_admins_demoting_each_other_at_once_leave_one_admin(
    own_app: FastAPI, own_client: httpx.AsyncClient
) -> None:
    """With exactly two admins, each demotes the other at the same moment: exactly one
    succeeds, and one admin is left."""
    client, database = own_client, own_app.state.database
    for _ in range(REPETITIONS):
        await empty_database(database)
        first, second = await create_admin(client), await create_admin(client)
        pairs = [(first, second), (second, first)]
        answers = await at_once(
            *(
                client.put(
                    f"/admin/users/{target.id}/role", json={"role": "user"}, headers=actor.headers
                )
                for actor, target in pairs
            )
        )
        made = [i for i, answer in enumerate(answers) if answer.status_code == 200]
        assert len(made) == 1, [answer.text for answer in answers]
        [winner] = made
        actor, target = pairs[winner]
        assert answers[winner].json()["id"] == target.id
        assert answers[winner].json()["role"] == "user"
        # The other was refused: as no longer an admin (its change came after), or as the
        # last admin's removal (both were checked as admins, and the count allowed one).
        refused = answers[1 - winner]
        assert (refused.status_code, refused.json()) in [
            (403, {"detail": "Admin role required"}),
            (409, {"detail": "The last admin cannot be removed: make another admin first"}),
        ]
        admins = await database["users"].find({"role": "admin"}, {"_id": 1}).to_list()
        assert [str(row["_id"]) for row in admins] == [actor.id]
        counter = await database[COUNTERS].find_one({"_id": ADMINS_COUNTER})
        assert counter is not None and counter["value"] == 1
        assert await recount(database) == (0, 0)
