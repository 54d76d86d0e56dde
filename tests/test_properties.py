"""Property tests (Hypothesis) of two invariants, driven through the app over HTTP.

1. Votes: for any sequence of vote, unvote and delete-post actions by several users, every
   answer is the one a simple model of the contract predicts, every surviving post's `votes`
   (by id and in each user's feed) is the number of users whose vote stands, and a deleted
   post leaves no vote documents behind.
2. Paging: for any set of posts (owners, drafts, equal `created_at`s, arbitrary ids), walking
   the feed page by page with `limit`/`skip` yields exactly the posts the viewer may see, each
   once, newest first with ties broken by id descending, and `X-Total-Count` is their number.

The autouse `clean_database` fixture runs once per test function, not once per example, so
each example empties the posts and votes collections itself. The users are made once per test
function (fixture `users`) and shared by its examples: nothing an example does changes them.

PROPERTY_EXAMPLES (default 200) sets how many examples each property runs.
"""

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import pytest
from beanie import PydanticObjectId
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from service.derived import recount
from service.models import Post, Vote
from tests.factories import LoggedInUser, create_post, create_user, vote

EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "200"))
USERS = 3

PROPERTY_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    # `client` and `users` are function-scoped: shared by the examples of one test, which is
    # intended, since every example starts by emptying the collections it uses.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

ADDED = {"message": "successfully added vote"}
DELETED = {"message": "successfully deleted vote"}
# A well-formed id that never names a post: the generated ids below avoid it.
MISSING_ID = "0123456789abcdef01234567"


@pytest.fixture
async def users(client: httpx.AsyncClient) -> list[LoggedInUser]:
    return [await create_user(client) for _ in range(USERS)]


async def empty_posts_and_votes() -> None:
    for document in (Post, Vote):
        await document.get_pymongo_collection().delete_many({})
    await recount(Post.get_pymongo_collection().database)  # the feed's tallies, back to zero


async def feed(
    client: httpx.AsyncClient, viewer: LoggedInUser, *, limit: int, skip: int
) -> tuple[int, list[dict[str, Any]]]:
    response = await client.get(
        "/posts/", params={"limit": limit, "skip": skip}, headers=viewer.headers
    )
    assert response.status_code == 200, response.text
    body: list[dict[str, Any]] = response.json()
    return int(response.headers["X-Total-Count"]), body


# --- 1. votes ---------------------------------------------------------------------------------

Kind = Literal["vote", "unvote", "delete"]


@dataclass
class ModelPost:
    """What the model knows of one post: who may see it and whose votes stand."""

    id: str
    owner: int
    published: bool
    alive: bool = True
    voters: set[int] = field(default_factory=set)

    def visible_to(self, user: int) -> bool:
        return self.alive and (self.published or self.owner == user)


def expected_answer(
    posts: list[ModelPost], kind: Kind, user: int, target: int, user_id: str
) -> tuple[int, dict[str, str]]:
    """The status and body the contract predicts; updates the model as the service should.

    `target == len(posts)` stands for a well-formed id that names no post at all.
    """
    post = posts[target] if target < len(posts) else None
    post_id = post.id if post else MISSING_ID
    if post is None or not post.visible_to(user):
        if kind == "delete":
            return 404, {"detail": f"post with id: {post_id} does not exist"}
        return 404, {"detail": f"Post with id: {post_id} does not exist"}
    if kind == "delete":
        if post.owner != user:
            return 403, {"detail": "Not authorized to perform requested action"}
        post.alive = False
        post.voters.clear()
        return 204, {}
    if kind == "vote":
        if user in post.voters:
            return 409, {"detail": f"user {user_id} has already voted on post {post_id}"}
        post.voters.add(user)
        return 201, ADDED
    if user not in post.voters:
        return 404, {"detail": "Vote does not exist"}
    post.voters.discard(user)
    return 201, DELETED


@st.composite
def vote_scenarios(
    draw: st.DrawFn,
) -> tuple[list[tuple[int, bool]], list[tuple[Kind, int, int]]]:
    """Posts as (owner, published), then actions as (kind, user, post index); the index one
    past the last post stands for a missing post."""
    posts = draw(
        st.lists(
            st.tuples(st.integers(0, USERS - 1), st.booleans() | st.just(True)),
            min_size=1,
            max_size=3,
        )
    )
    # Deletes are weighted down so that most sequences keep a post alive for a while.
    kind: st.SearchStrategy[Kind] = st.sampled_from(
        ["vote", "unvote", "vote", "unvote", "vote", "unvote", "delete"]
    )
    action = st.tuples(kind, st.integers(0, USERS - 1), st.integers(0, len(posts)))
    actions = draw(st.lists(action, max_size=15))
    return posts, actions


async def stored_votes() -> dict[str, set[str]]:
    """Every vote document, as post id -> user ids; fails on a duplicate pair."""
    rows = await Vote.get_pymongo_collection().find({}, {"post_id": 1, "user_id": 1}).to_list()
    pairs = [(str(row["post_id"]), str(row["user_id"])) for row in rows]
    assert len(pairs) == len(set(pairs)), f"duplicate vote documents: {pairs}"
    result: dict[str, set[str]] = {}
    for post_id, user_id in pairs:
        result.setdefault(post_id, set()).add(user_id)
    return result


async def check_votes(
    client: httpx.AsyncClient, users: list[LoggedInUser], posts: list[ModelPost]
) -> None:
    """Counts by id, in every user's feed and in the votes collection match the model."""
    stored = await stored_votes()
    for post in posts:
        expected_voters = {users[u].id for u in post.voters}
        assert stored.get(post.id, set()) == expected_voters, (post, stored)
        owner = users[post.owner]
        response = await client.get(f"/posts/{post.id}", headers=owner.headers)
        if not post.alive:
            assert response.status_code == 404, response.text
            continue
        assert response.status_code == 200, response.text
        votes = response.json()["votes"]
        assert votes >= 0
        assert votes == len(post.voters), (post, response.json())
    assert set(stored) <= {post.id for post in posts if post.alive}, stored
    for u, viewer in enumerate(users):
        total, page = await feed(client, viewer, limit=100, skip=0)
        seen = {item["Post"]["id"]: item["votes"] for item in page}
        expected = {post.id: len(post.voters) for post in posts if post.visible_to(u)}
        assert total == len(expected)
        assert seen == expected, (u, seen, expected)


@PROPERTY_SETTINGS
@given(scenario=vote_scenarios())
async def test_vote_counts_follow_a_model_of_the_contract(
    client: httpx.AsyncClient,
    users: list[LoggedInUser],
    scenario: tuple[list[tuple[int, bool]], list[tuple[Kind, int, int]]],
) -> None:
    await empty_posts_and_votes()
    post_specs, actions = scenario
    posts = []
    for owner, published in post_specs:
        created = await create_post(client, users[owner], published=published)
        posts.append(ModelPost(id=created["id"], owner=owner, published=published))

    for kind, user, target in actions:
        caller = users[user]
        status, body = expected_answer(posts, kind, user, target, caller.id)
        post_id = posts[target].id if target < len(posts) else MISSING_ID
        if kind == "delete":
            response = await client.delete(f"/posts/{post_id}", headers=caller.headers)
        else:
            response = await vote(client, caller, post_id, 1 if kind == "vote" else 0)
        step = (kind, user, target, response.status_code, response.text)
        event(f"{kind}: {status}")  # the mix of outcomes, in --hypothesis-show-statistics
        assert response.status_code == status, step
        if status == 204:
            assert response.content == b"", step
            # The cascade is immediate: no vote on the deleted post remains.
            left = await Vote.get_pymongo_collection().count_documents(
                {"post_id": PydanticObjectId(post_id)}
            )
            assert left == 0, step
        else:
            assert response.json() == body, step
        if target < len(posts) and posts[target].alive:
            # The acted-on post's count, as its owner (who always sees it) reads it.
            post = posts[target]
            read = await client.get(f"/posts/{post.id}", headers=users[post.owner].headers)
            assert read.status_code == 200, (step, read.text)
            assert read.json()["votes"] == len(post.voters), (step, read.json())

    await check_votes(client, users, posts)


# --- 2. paging --------------------------------------------------------------------------------

BASE_TIME = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# (owner, published, created_at offset in ms, 12 id bytes, voters as a bit mask). Few distinct
# offsets, so many posts share a created_at and only the id orders them.
post_rows = st.lists(
    st.tuples(
        st.integers(0, USERS - 1),
        st.booleans(),
        st.integers(0, 3),
        st.binary(min_size=12, max_size=12).filter(lambda b: b.hex() != MISSING_ID),
        st.integers(0, 2**USERS - 1),
    ),
    max_size=14,
    unique_by=lambda row: row[3],
)


def posts_of(
    rows: list[tuple[int, bool, int, bytes, int]], users: list[LoggedInUser]
) -> list[Post]:
    """The posts `post_rows` describe, as an import would write them."""
    return [
        Post.model_validate(
            {
                "id": PydanticObjectId(raw_id),
                "title": f"Post {raw_id.hex()}",
                "content": "content",
                "published": published,
                "created_at": BASE_TIME + timedelta(milliseconds=offset),
                "owner_id": PydanticObjectId(users[owner].id),
            }
        )
        for owner, published, offset, raw_id, _ in rows
    ]


@PROPERTY_SETTINGS
@given(
    rows=post_rows,
    viewer_index=st.integers(0, USERS - 1),
    limit=st.integers(1, 6) | st.sampled_from([15, 100]),
    window=st.tuples(st.integers(0, 16), st.integers(1, 16)),
)
async def test_paging_partitions_the_feed_in_order(
    client: httpx.AsyncClient,
    users: list[LoggedInUser],
    rows: list[tuple[int, bool, int, bytes, int]],
    viewer_index: int,
    limit: int,
    window: tuple[int, int],
) -> None:
    await empty_posts_and_votes()
    posts = posts_of(rows, users)
    votes = [
        Vote(post_id=PydanticObjectId(raw_id), user_id=PydanticObjectId(user.id))
        for _, _, _, raw_id, mask in rows
        for u, user in enumerate(users)
        if mask >> u & 1
    ]
    if posts:
        await Post.insert_many(posts)
    if votes:
        await Vote.insert_many(votes)
    # Written outside the API, as an import would: counts and tallies are derived after.
    await recount(Post.get_pymongo_collection().database)

    viewer = users[viewer_index]
    visible = [
        (offset, raw_id.hex(), bin(mask).count("1"))
        for owner, published, offset, raw_id, mask in rows
        if published or owner == viewer_index
    ]
    # Newest first, then id descending; 24-hex ids order as their bytes do.
    visible.sort(key=lambda row: (row[0], row[1]), reverse=True)
    expected = [post_id for _, post_id, _ in visible]
    expected_votes = {post_id: n for _, post_id, n in visible}

    walked: list[str] = []
    skip = 0
    while True:
        total, page = await feed(client, viewer, limit=limit, skip=skip)
        assert total == len(expected), (skip, limit, total)
        ids = [item["Post"]["id"] for item in page]
        assert ids == expected[skip : skip + limit], (skip, limit, ids)
        for item in page:
            assert item["votes"] == expected_votes[item["Post"]["id"]], item
        walked += ids
        if len(page) < limit:
            break
        skip += limit
    assert walked == expected
    assert len(set(walked)) == len(walked)

    # Any one window of the feed is the same slice of it.
    window_skip, window_limit = window
    total, page = await feed(client, viewer, limit=window_limit, skip=window_skip)
    assert total == len(expected)
    assert [item["Post"]["id"] for item in page] == expected[
        window_skip : window_skip + window_limit
    ]


# --- 3. paging by cursor while the feed changes ----------------------------------------------

# Between pages: (0) nothing, (1) a new post by a user, published or a draft, (2) one of the
# posts that existed at the start deleted by its owner.
changes = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, USERS - 1), st.booleans(), st.integers(0, 13)),
    max_size=8,
)


@PROPERTY_SETTINGS
@given(
    rows=post_rows,
    viewer_index=st.integers(0, USERS - 1),
    limit=st.integers(1, 4),
    search=st.sampled_from(["", "post", "0"]),
    between=changes,
)
async def test_a_cursor_walk_sees_every_lasting_post_once_while_posts_come_and_go(
    client: httpx.AsyncClient,
    users: list[LoggedInUser],
    rows: list[tuple[int, bool, int, bytes, int]],
    viewer_index: int,
    limit: int,
    search: str,
    between: list[tuple[int, int, bool, int]],
) -> None:
    await empty_posts_and_votes()
    posts = posts_of(rows, users)
    if posts:
        await Post.insert_many(posts)
    await recount(Post.get_pymongo_collection().database)
    viewer = users[viewer_index]

    def matches(title: str, content: str) -> bool:
        return search.lower() in title.lower() or search.lower() in content.lower()

    # The posts the viewer may see and the search finds, by id, as they are at the start.
    at_start = {
        str(post.id)
        for post in posts
        if (post.published or post.owner_id == PydanticObjectId(viewer.id))
        and matches(post.title, post.content)
    }
    deleted: set[str] = set()
    walked: list[str] = []
    params: dict[str, Any] = {"limit": limit, "search": search}
    for step in range(len(rows) + len(between) + 2):
        response = await client.get("/posts/", params=params, headers=viewer.headers)
        assert response.status_code == 200, response.text
        walked += [item["Post"]["id"] for item in response.json()]
        cursor = response.headers.get("x-next-cursor")
        if cursor is None:
            break
        params = {"limit": limit, "search": search, "cursor": cursor}
        if step < len(between):
            kind, user, published, target = between[step]
            if kind == 1:
                await create_post(client, users[user], published=published)
            elif kind == 2 and posts:
                post = posts[target % len(posts)]
                owner = next(u for u in users if u.id == str(post.owner_id))
                gone = await client.delete(f"/posts/{post.id}", headers=owner.headers)
                if gone.status_code == 204:
                    deleted.add(str(post.id))
    else:
        raise AssertionError("the walk did not end")
    assert len(walked) == len(set(walked)), walked  # never twice
    assert at_start - deleted <= set(walked)  # never misses one that lasted throughout
