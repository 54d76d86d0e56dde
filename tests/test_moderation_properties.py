"""Moderation's counts as a property, driven through the app over HTTP.

1. A Hypothesis state machine (issue 16, acceptance 2: "the feed's total stays exact
   throughout"): a few users and one admin post (published or drafts), publish and unpublish,
   delete, vote and take votes back, comment and delete comments (as author, post owner and
   admin), while the admin deactivates and activates users and deletes their content. A plain
   model says what each viewer should see; after every step, for every active user, the
   feed's `X-Total-Count` (with and without a search) is the model's number and the number of
   posts a cursor walk returns, each post's votes and comments are the model's, and
   `GET /posts/{id}` is 200 exactly for the posts they should see. At the end of each run the
   stored counts and tallies are what a recount derives (it corrects nothing).
(The races of the same counts are in tests/test_moderation_races.py.)

Hypothesis runs a state machine synchronously, and the app lives on the test's event loop: the
machine runs in a worker thread and hands each request to that loop.

PROPERTY_EXAMPLES (tests/test_properties.py) scales the state machine's runs too.
"""

import asyncio
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import FastAPI
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from pymongo.asynchronous.database import AsyncDatabase

from service.derived import recount
from service.models import DOCUMENTS
from service.models.post import COUNTERS
from tests.factories import LoggedInUser, create_admin, create_user, login
from tests.test_properties import ADDED, DELETED, EXAMPLES, PROPERTY_SETTINGS, USERS

Database = AsyncDatabase[dict[str, Any]]

# A tenth of the other properties' examples, 20 by default (a run is a sequence of steps,
# each checked from every viewer): about 20 s on two cores.
STATEFUL_SETTINGS = settings(
    PROPERTY_SETTINGS, max_examples=max(1, EXAMPLES // 10), stateful_step_count=10
)
SEARCH = "needle"  # in the title of some posts (as "Needle"): the search is case-insensitive
WALK_LIMIT = 3  # a small page, so that every walk takes several

INVALID_TOKEN = {"detail": "Could not validate credentials"}


async def empty_database(database: Database) -> None:
    """Every document of every collection, and the counters (as tests/conftest.py does
    between tests): each example or repetition starts from nothing."""
    for name in [*(document.Settings.name for document in DOCUMENTS), COUNTERS]:
        await database[name].delete_many({})


async def walk_feed(
    client: httpx.AsyncClient, viewer: LoggedInUser, *, search: str = ""
) -> tuple[int, list[dict[str, Any]]]:
    """The feed's `X-Total-Count`, and every post of it, walked by cursor a few at a time."""
    params: dict[str, Any] = {"limit": WALK_LIMIT, "search": search}
    response = await client.get("/posts/", params=params, headers=viewer.headers)
    assert response.status_code == 200, response.text
    total = int(response.headers["X-Total-Count"])
    items: list[dict[str, Any]] = response.json()
    for _ in range(total + 2):
        cursor = response.headers.get("X-Next-Cursor")
        if cursor is None:
            return total, items
        response = await client.get(
            "/posts/", params={**params, "cursor": cursor}, headers=viewer.headers
        )
        assert response.status_code == 200, response.text
        assert int(response.headers["X-Total-Count"]) == total, "the total changed mid-walk"
        items += response.json()
    raise AssertionError(f"the walk did not end: {total} posts, {len(items)} read")


async def set_active(
    client: httpx.AsyncClient, admin: LoggedInUser, user: LoggedInUser, active: bool
) -> httpx.Response:
    action = "activate" if active else "deactivate"
    return await client.post(f"/admin/users/{user.id}/{action}", headers=admin.headers)


# --- 1. the state machine ---------------------------------------------------------------------


@dataclass
class Account:
    user: LoggedInUser
    active: bool = True


@dataclass(eq=False)
class ModelComment:
    id: str
    author: int
    alive: bool = True


@dataclass(eq=False)
class ModelPost:
    """What the model knows of one post; `accounts` says whose content is hidden."""

    id: str
    owner: int
    published: bool
    marked: bool  # its title holds SEARCH
    alive: bool = True
    voters: set[int] = field(default_factory=set)
    comments: list[ModelComment] = field(default_factory=list)

    def visible_to(self, viewer: int, accounts: list[Account]) -> bool:
        shown = self.alive and accounts[self.owner].active
        return shown and (self.published or self.owner == viewer)

    def counts(self, accounts: list[Account]) -> tuple[int, int]:
        """Its votes, and its comments whose authors are active."""
        shown = [c for c in self.comments if c.alive and accounts[c.author].active]
        return len(self.voters), len(shown)


ADMIN = USERS  # the index of the admin, after the USERS ordinary users
# Ordinary users post, and the admin deactivates and activates them; anyone votes and
# comments, the admin too.
members = st.integers(0, USERS - 1)
actors = st.integers(0, USERS)
# A post: owner, published, whether its title holds SEARCH, and who comments on it at once.
post_specs = st.tuples(members, st.booleans(), st.booleans(), st.lists(actors, max_size=3))
picks = st.integers(0, 15)  # the how-manieth of a list, modulo its length


class ModerationMachine(RuleBasedStateMachine):
    """Posts are a bundle (deleted ones leave it, so that later steps mostly act on posts
    that exist); a comment is picked among a post's. Hypothesis turns rules off at random in
    each run (swarm testing), so related actions are one rule with a parameter."""

    posts = Bundle("posts")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, client: httpx.AsyncClient, database: Database
    ) -> None:
        super().__init__()
        self.loop, self.client, self.database = loop, client, database
        self.all_posts: list[ModelPost] = []
        self.buried: set[str] = set()  # deleted posts whose 404 every viewer has had
        self.accounts: list[Account] = self.run(self.start())

    def run[T](self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the app's loop, from the machine's thread."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    async def start(self) -> list[Account]:
        await empty_database(self.database)
        users = [await create_user(self.client) for _ in range(USERS)]
        return [Account(user) for user in [*users, await create_admin(self.client)]]

    def user(self, index: int) -> LoggedInUser:
        return self.accounts[index].user

    def request(
        self, method: str, url: str, actor: int, json: Any = None
    ) -> tuple[int, dict[str, Any] | None]:
        """The status and JSON body (None if empty) of a request by `actor`."""

        async def send() -> httpx.Response:
            headers = self.user(actor).headers
            return await self.client.request(method, url, json=json, headers=headers)

        response = self.run(send())
        return response.status_code, response.json() if response.content else None

    def refused_if_inactive(self, actor: int, answer: tuple[int, Any]) -> bool:
        """An inactive account's token answers 401; True if `actor` is inactive."""
        if self.accounts[actor].active:
            return False
        assert answer == (401, INVALID_TOKEN), answer
        return True

    @initialize(target=posts, specs=st.lists(post_specs, min_size=USERS, max_size=USERS + 2))
    def create_posts(self, specs: list[tuple[int, bool, bool, list[int]]]) -> Any:
        """Posts and comments to start with, one post of each user at least, so that most
        runs moderate accounts that have some."""
        specs = [(i, *spec[1:]) if i < USERS else spec for i, spec in enumerate(specs)]
        return multiple(*(self.create_post(*spec) for spec in specs))

    @rule(target=posts, spec=post_specs)
    def new_post(self, spec: tuple[int, bool, bool, list[int]]) -> Any:
        return self.create_post(*spec) or multiple()

    def create_post(
        self, owner: int, published: bool, marked: bool, commenters: list[int]
    ) -> ModelPost | None:
        title = f"{'Needle' if marked else 'Plain'} post"
        body = {"title": title, "content": "Some content", "published": published}
        answer = self.request("POST", "/posts/", owner, body)
        if self.refused_if_inactive(owner, answer):
            return None
        status, created = answer
        assert status == 201 and created is not None, answer
        assert created["published"] is published, created
        post = ModelPost(created["id"], owner, published, marked)
        self.all_posts.append(post)
        for author in commenters:
            self.create_comment(author, post)
        return post

    @rule(post=posts, published=st.booleans())
    def put_post(self, post: ModelPost, published: bool) -> None:
        """Its owner publishes or unpublishes it (or leaves it as it is)."""
        title = f"{'Needle' if post.marked else 'Plain'} post, edited"
        body = {"title": title, "content": "Other content", "published": published}
        answer = self.request("PUT", f"/posts/{post.id}", post.owner, body)
        if self.refused_if_inactive(post.owner, answer):
            return
        if not post.alive:
            assert answer == (404, {"detail": f"post with id: {post.id} does not exist"}), answer
            return
        status, updated = answer
        assert status == 200 and updated is not None, answer
        assert (updated["id"], updated["published"]) == (post.id, published), updated
        post.published = published

    @rule(post=consumes(posts), by_admin=st.booleans())
    def delete_post(self, post: ModelPost, by_admin: bool) -> None:
        """Its owner deletes it, or an admin does (a draft, or a hidden post, too)."""
        if by_admin:
            answer = self.request("DELETE", f"/admin/posts/{post.id}", ADMIN)
        else:
            answer = self.request("DELETE", f"/posts/{post.id}", post.owner)
            if self.refused_if_inactive(post.owner, answer):
                return
        self.post_deleted(post, answer)

    def post_deleted(self, post: ModelPost, answer: tuple[int, Any]) -> None:
        if not post.alive:
            assert answer == (404, {"detail": f"post with id: {post.id} does not exist"}), answer
            return
        assert answer == (204, None), answer
        post.alive = False
        post.voters.clear()
        for each in post.comments:
            each.alive = False

    @rule(voter=actors, post=posts, direction=st.sampled_from([1, 0]))
    def vote(self, voter: int, post: ModelPost, direction: int) -> None:
        body = {"post_id": post.id, "dir": direction}
        answer = self.request("POST", "/vote/", voter, body)
        if self.refused_if_inactive(voter, answer):
            return
        if not post.visible_to(voter, self.accounts):
            assert answer == (404, {"detail": f"Post with id: {post.id} does not exist"}), answer
        elif direction == 1 and voter in post.voters:
            voter_id = self.user(voter).id
            detail = f"user {voter_id} has already voted on post {post.id}"
            assert answer == (409, {"detail": detail}), answer
        elif direction == 1:
            assert answer == (201, ADDED), answer
            post.voters.add(voter)
        elif voter not in post.voters:
            assert answer == (404, {"detail": "Vote does not exist"}), answer
        else:
            assert answer == (201, DELETED), answer
            post.voters.discard(voter)

    @rule(author=actors, post=posts)
    def create_comment(self, author: int, post: ModelPost) -> None:
        answer = self.request("POST", f"/posts/{post.id}/comments", author, {"content": "Hm."})
        if self.refused_if_inactive(author, answer):
            return
        if not post.visible_to(author, self.accounts):
            assert answer == (404, {"detail": f"post with id: {post.id} was not found"}), answer
            return
        status, created = answer
        assert status == 201 and created is not None, answer
        assert created["post_id"] == post.id, created
        post.comments.append(ModelComment(created["id"], author))

    @rule(post=posts, pick=picks, by=st.sampled_from(["author", "post owner", "admin"]))
    def delete_comment(self, post: ModelPost, pick: int, by: str) -> None:
        """One of the post's comments is deleted by its author, the post's owner or an
        admin."""
        if not post.comments:
            return
        made = post.comments[pick % len(post.comments)]
        if by == "admin":
            self.admin_delete_comment(made)
            return
        actor = made.author if by == "author" else post.owner
        answer = self.request("DELETE", f"/comments/{made.id}", actor)
        if self.refused_if_inactive(actor, answer):
            return
        may = (
            made.alive
            and self.accounts[made.author].active  # else hidden, even from the post's owner
            and post.visible_to(actor, self.accounts)
        )
        self.comment_deleted(made, answer, may=may)

    def admin_delete_comment(self, made: ModelComment) -> None:
        answer = self.request("DELETE", f"/admin/comments/{made.id}", ADMIN)
        self.comment_deleted(made, answer, may=made.alive)  # hidden or not

    def comment_deleted(self, made: ModelComment, answer: tuple[int, Any], *, may: bool) -> None:
        if not may:
            assert answer == (404, {"detail": f"comment with id: {made.id} does not exist"})
            return
        assert answer == (204, None), answer
        made.alive = False

    @rule(member=members, active=st.booleans())
    def moderate(self, member: int, active: bool) -> None:
        """The admin deactivates or activates a user (either may find it so already)."""
        was_active = self.accounts[member].active
        user = self.user(member)
        action = "activate" if active else "deactivate"
        status, account = self.request("POST", f"/admin/users/{user.id}/{action}", ADMIN)
        assert status == 200 and account is not None, (status, account)
        assert (account["id"], account["active"]) == (user.id, active), account
        self.accounts[member].active = active
        if active and not was_active:  # the tokens from before stay refused: a new login
            assert self.request("GET", "/users/me", member) == (401, INVALID_TOKEN)
            token = self.run(login(self.client, user.email))
            user.token, user.headers = token, {"Authorization": f"Bearer {token}"}

    def hidden_content(self) -> list[ModelPost | ModelComment]:
        """The posts and comments of deactivated users, not yet deleted."""
        inactive = {i for i, account in enumerate(self.accounts) if not account.active}
        posts = [p for p in self.all_posts if p.alive and p.owner in inactive]
        comments = [
            c for p in self.all_posts for c in p.comments if c.alive and c.author in inactive
        ]
        return [*posts, *comments]

    @precondition(lambda self: self.hidden_content())
    @rule(pick=picks)
    def remove_hidden_content(self, pick: int) -> None:
        """The admin deletes a post or comment of a user they deactivated, as one would
        after deactivating an abusive account."""
        content = self.hidden_content()
        chosen = content[pick % len(content)]
        if isinstance(chosen, ModelComment):
            self.admin_delete_comment(chosen)
        else:
            self.post_deleted(chosen, self.request("DELETE", f"/admin/posts/{chosen.id}", ADMIN))

    @invariant()
    def every_viewer_sees_what_the_model_says(self) -> None:
        self.run(self.check_views())

    async def check_views(self) -> None:
        for viewer, account in enumerate(self.accounts):
            if account.active:
                await self.check_view(viewer)
        # A deleted post stays deleted: its 404 is checked once, by every viewer.
        self.buried |= {post.id for post in self.all_posts if not post.alive}

    async def check_view(self, viewer: int) -> None:
        visible = [p for p in self.all_posts if p.visible_to(viewer, self.accounts)]
        user = self.user(viewer)
        for search in ("", SEARCH):
            expected = {p.id: p.counts(self.accounts) for p in visible if p.marked or not search}
            total, items = await walk_feed(self.client, user, search=search)
            seen = {item["Post"]["id"]: (item["votes"], item["comments"]) for item in items}
            where = (viewer, search)
            assert total == len(expected), (where, total, expected)
            assert len(items) == len(seen) == total, (where, total, items)
            assert seen == expected, (where, seen, expected)
        for post in self.all_posts:
            if post.id in self.buried:
                continue
            response = await self.client.get(f"/posts/{post.id}", headers=user.headers)
            if post in visible:
                assert response.status_code == 200, (viewer, response.text)
                body = response.json()
                assert (body["votes"], body["comments"]) == post.counts(self.accounts), body
            else:
                assert response.status_code == 404, (viewer, post, response.text)

    def teardown(self) -> None:
        # Stored tallies and counts against a fresh derivation from the documents: nothing to
        # correct. Not after a failing step (teardown runs then too), whose error is the one
        # to report.
        if sys.exc_info()[1] is None:
            assert self.run(recount(self.database)) == (0, 0)


async def test_the_feed_stays_exact_while_accounts_are_moderated(
    client: httpx.AsyncClient, app: FastAPI
) -> None:
    loop = asyncio.get_running_loop()
    database: Database = app.state.database

    class Machine(ModerationMachine):
        def __init__(self) -> None:
            super().__init__(loop, client, database)

    await asyncio.to_thread(run_state_machine_as_test, Machine, settings=STATEFUL_SETTINGS)


# --- 2. races -----------------------------------------------------------------------------------
# Each repetition starts from an empty database, with new users; the requests of a race are
# sent at once (asyncio.gather) and interleave at every database round trip.
