"""Database commands per request, counted with PyMongo's command monitoring.

The targets (issue 6): at most 2 commands for a read (the caller's user document, then one
query), at most 3 for a write, whatever the page size: no N+1. `bench/` reports the same
counts under load; this keeps them from creeping up unnoticed. An admin's action costs more,
by design: its audit entry's two writes, and a deactivation's sweep of the account's content
(one conditional write per comment); each is pinned here with why.
"""

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pymongo import monitoring

from service.main import create_app
from tests.conftest import stop_sender
from tests.factories import (
    DEFAULT_PASSWORD,
    LoggedInUser,
    create_admin,
    create_post,
    create_user,
    unique_email,
)


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []
        self.targets: list[tuple[str, object]] = []  # (command, the collection it names)

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)
        self.targets.append((event.command_name, event.command.get(event.command_name)))

    def clear(self) -> None:
        self.commands.clear()
        self.targets.clear()

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
async def counted(
    settings, restore_beanie
) -> AsyncIterator[tuple[httpx.AsyncClient, CommandCounter]]:
    counter = CommandCounter()
    app = create_app(settings, command_listeners=[counter])
    async with LifespanManager(app):
        # Only the requests' own commands are counted: no sender reads the outbox meanwhile.
        await stop_sender(app)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            yield client, counter


async def many_posts(client: httpx.AsyncClient, owner: LoggedInUser, voter: LoggedInUser) -> str:
    """Posts enough for a full page of 100, some voted on, a draft among them."""
    first = ""
    for number in range(105):
        published = number % 7 != 3
        post = await create_post(client, owner, title=f"post {number}", published=published)
        first = first or post["id"]
        if published and number % 3 == 0:
            body = {"post_id": post["id"], "dir": 1}
            assert (
                await client.post("/vote/", json=body, headers=voter.headers)
            ).status_code == 201
    return first


@pytest.mark.parametrize(
    "query",
    ["limit=10", "limit=100", "limit=10&search=post 1", "limit=100&search=POST", "skip=50"],
)
async def test_a_page_of_posts_costs_two_commands(counted, query: str) -> None:
    client, counter = counted
    owner, voter = await create_user(client), await create_user(client)
    await many_posts(client, owner, voter)
    for viewer in (owner, voter):
        counter.commands.clear()
        response = await client.get(f"/posts/?{query}", headers=viewer.headers)
        assert response.status_code == 200
        assert response.json(), query
        assert counter.commands == ["find", "aggregate"], query


async def test_reading_one_post_costs_two_commands(counted) -> None:
    client, counter = counted
    owner, voter = await create_user(client), await create_user(client)
    first = await many_posts(client, owner, voter)
    counter.commands.clear()
    response = await client.get(f"/posts/{first}", headers=voter.headers)
    assert response.status_code == 200
    assert response.json()["votes"] == 1
    assert counter.commands == ["find", "find"]


async def test_writing_a_post_or_a_vote_costs_three_commands(counted) -> None:
    client, counter = counted
    owner, voter = await create_user(client), await create_user(client)
    counter.commands.clear()
    for published in (True, False):
        counter.commands.clear()
        post = await create_post(client, owner, published=published)
        assert counter.commands == ["find", "insert", "update"], published
    post = await create_post(client, owner)
    for direction in (1, 0):
        counter.commands.clear()
        body = {"post_id": post["id"], "dir": direction}
        assert (await client.post("/vote/", json=body, headers=voter.headers)).status_code == 201
        expected = ["find", "insert", "update"] if direction else ["find", *["findAndModify"] * 2]
        assert counter.commands == expected, direction


# A login: the attempt written first, then one aggregation on `users` that reads the account,
# the attempts of its email, the failures of its address and the successes that discount
# the email's attempts (service/throttle.py).
COUNTED = [("insert", "login_attempts"), ("aggregate", "users")]
# A failure's two records, in one command: its attempt marked failed, the address's failure.
FAILED = [*COUNTED, ("update", "login_attempts")]


async def login_form(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/login", data={"username": email, "password": password})


async def test_a_login_costs_three_commands_whatever_the_answer(counted) -> None:
    client, counter = counted
    user = await create_user(client)
    counter.clear()
    assert (await login_form(client, user.email, DEFAULT_PASSWORD)).status_code == 200
    # The success is recorded on the new session's refresh token, which it writes anyway.
    assert counter.targets == [*COUNTED, ("insert", "refresh_tokens")]
    counter.clear()
    assert (await login_form(client, user.email, "wrong password")).status_code == 403
    assert counter.targets == FAILED


@pytest.mark.parametrize("email", ["unknown@example.com", "not an email"])
async def test_an_unknown_email_costs_what_a_wrong_password_costs(counted, email) -> None:
    """The same commands whether the account exists or not: nothing tells them apart."""
    client, counter = counted
    user = await create_user(client)
    answers = {}
    for typed in (user.email, email):
        counter.clear()
        response = await login_form(client, typed, "wrong password")
        answers[typed] = (response.status_code, response.json(), list(counter.targets))
    assert answers[user.email] == answers[email] == (403, {"detail": "Invalid Credentials"}, FAILED)


@pytest.mark.parametrize("search", ["", "post"])
async def test_a_page_by_cursor_costs_two_commands_at_any_depth(counted, search: str) -> None:
    client, counter = counted
    owner, voter = await create_user(client), await create_user(client)
    await many_posts(client, owner, voter)
    params: dict[str, str | int] = {"limit": 10, "search": search}
    for _ in range(5):
        counter.clear()
        response = await client.get("/posts/", params=params, headers=voter.headers)
        assert response.status_code == 200 and len(response.json()) == 10
        assert counter.commands == ["find", "aggregate"]
        params["cursor"] = response.headers["x-next-cursor"]


async def test_comments_cost_three_commands_to_write_and_two_a_page(counted) -> None:
    client, counter = counted
    user = await create_user(client)
    post = await create_post(client, user)
    path = f"/posts/{post['id']}/comments"
    for number in range(3):
        counter.clear()
        made = await client.post(path, json={"content": f"c{number}"}, headers=user.headers)
        assert made.status_code == 201
        assert counter.commands == ["find", "insert", "update"]
    cursor = None
    for _ in range(3):  # a page by cursor costs what the first page costs
        counter.clear()
        params = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = await client.get(path, params=params, headers=user.headers)
        assert page.status_code == 200 and len(page.json()) == 1
        assert counter.commands == ["find", "aggregate"]
        cursor = page.headers.get("x-next-cursor")


async def test_forgot_password_sends_the_same_commands_whether_or_not_the_account_exists(
    counted,
) -> None:
    """The request never reads the account: the outbox's sender (stopped here) does."""
    client, counter = counted
    user = await create_user(client)
    answers = []
    for typed in (user.email, unique_email()):
        counter.clear()
        response = await client.post("/auth/forgot-password", json={"email": typed})
        answers.append((response.status_code, response.content, list(counter.targets)))
    queued = [("insert", "login_attempts"), ("find", "login_attempts"), ("insert", "outbox")]
    assert answers[0][2] == queued
    assert answers[0] == answers[1]


async def test_a_throttled_login_costs_three_commands(counted) -> None:
    client, counter = counted
    email = unique_email()
    for _ in range(5):
        assert (await login_form(client, email, "wrong password")).status_code == 403
    counter.clear()
    response = await login_form(client, email, "wrong password")
    assert response.status_code == 429
    # The refused attempt is taken back.
    assert counter.targets == [*COUNTED, ("delete", "login_attempts")]


async def test_a_password_change_records_its_success_on_the_new_session(counted) -> None:
    """The check and the session it begins: no write of the throttle's own on success."""
    client, counter = counted
    user = await create_user(client)
    counter.clear()
    response = await client.put(
        "/users/me/password",
        headers=user.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "a brand new secret"},
    )
    assert response.status_code == 200
    assert counter.targets == [
        ("find", "users"),  # the caller
        *COUNTED,
        ("findAndModify", "users"),  # new hash, every session ended
        ("update", "refresh_tokens"),  # their refresh tokens marked revoked
        ("insert", "refresh_tokens"),  # the new session, with the success
    ]


async def test_a_page_of_the_admins_lists_costs_two_commands_at_any_depth(counted) -> None:
    """The caller, then one query on the list's (created_at, _id) index, by cursor."""
    client, counter = counted
    admin = await create_admin(client)
    for _ in range(7):  # more than three pages of two, of users and of audit entries
        user = await create_user(client)
        role = f"/admin/users/{user.id}/role"
        assert (await client.put(role, json={"role": "user"}, headers=admin.headers)).is_success
    for path, listed, search in [
        ("/admin/users", "users", ""),
        ("/admin/users", "users", "USER"),
        ("/admin/audit", "audit", ""),
    ]:
        params: dict[str, str | int] = {"limit": 2, **({"search": search} if search else {})}
        for _ in range(3):
            counter.clear()
            response = await client.get(path, params=params, headers=admin.headers)
            assert response.status_code == 200 and len(response.json()) == 2, response.text
            assert counter.targets == [("find", "users"), ("find", listed)], (path, search)
            params["cursor"] = response.headers["x-next-cursor"]


def audited(*action: tuple[str, object]) -> list[tuple[str, object]]:
    """An admin action's commands: the caller, then its audit entry written `pending` before
    the action and closed after it, whatever the outcome (service/audit.py)."""
    return [("find", "users"), ("insert", "audit"), *action, ("update", "audit")]


async def targets(
    client: httpx.AsyncClient,
    counter: CommandCounter,
    admin: LoggedInUser,
    request: tuple[str, str, object],
    status: int,
) -> list[tuple[str, object]]:
    method, path, body = request
    counter.clear()
    response = await client.request(method, path, json=body, headers=admin.headers)
    assert response.status_code == status, response.text
    return list(counter.targets)


async def test_a_role_change_costs_a_read_a_conditional_write_and_the_admins_count(
    counted,
) -> None:
    client, counter = counted
    admin, user = await create_admin(client), await create_user(client)
    role = f"/admin/users/{user.id}/role"
    assert await targets(client, counter, admin, ("PUT", role, {"role": "admin"}), 200) == audited(
        ("find", "users"),  # the account as it is
        ("findAndModify", "users"),  # the role, only if the account is still as read
        ("update", "counters"),  # one more active admin, counted after the write
    )
    assert await targets(client, counter, admin, ("PUT", role, {"role": "user"}), 200) == audited(
        ("find", "users"),
        # One admin fewer, taken off before the write and only while more than one is left:
        # of two admins removing each other at once, one is refused.
        ("update", "counters"),
        ("findAndModify", "users"),
    )
    # Refused before any read of the account, and recorded all the same.
    itself = ("PUT", f"/admin/users/{admin.id}/role", {"role": "user"})
    assert await targets(client, counter, admin, itself, 409) == audited()
    missing = ("PUT", f"/admin/users/{'0' * 24}/role", {"role": "admin"})
    assert await targets(client, counter, admin, missing, 404) == audited(("find", "users"))


@pytest.mark.parametrize("comments", [1, 3])
async def test_deactivation_costs_one_write_per_comment_and_the_rest_whatever_the_posts(
    counted, comments: int
) -> None:
    """Posts are hidden by kind, in one write each, however many; comments one at a time,
    each counted off its post only if that write is what hid it (service/moderation.py)."""
    client, counter = counted
    admin, user, other = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    for published in (True, True, False):
        await create_post(client, user, published=published)
    post = await create_post(client, other)
    for number in range(comments):
        made = await client.post(
            f"/posts/{post['id']}/comments", json={"content": f"c{number}"}, headers=user.headers
        )
        assert made.status_code == 201
    sweep = [
        ("find", "users"),  # the sweep reads the account: hide or show?
        ("find", "users"),  # each round of the posts' sweep: does the account still say so?
        ("update", "posts"),  # its published posts, in one write
        ("update", "counters"),  # ... taken off (or given back to) the published count
        ("update", "posts"),  # its drafts (counted on their owner, hidden or not)
        # A second round, which finds nothing: no post was published or unpublished meanwhile.
        ("find", "users"),
        ("update", "posts"),
        ("update", "posts"),
        ("find", "comments"),  # its comments, by the author_id index
        *[("update", "comments")] * comments,  # each hidden or shown by a write of its own
        ("update", "posts"),  # ... and counted on its post, once per post
        ("find", "users"),  # the account again: it held still, so the content matches it
    ]
    account = f"/admin/users/{user.id}"
    deactivate = ("POST", f"{account}/deactivate", {"reason": "spam"})
    assert await targets(client, counter, admin, deactivate, 200) == audited(
        ("find", "users"),
        ("findAndModify", "users"),  # active: false, and every session ended, in one write
        ("update", "refresh_tokens"),  # the refresh tokens marked revoked, for their readers
        *sweep,
    )
    activate = ("POST", f"{account}/activate", None)
    assert await targets(client, counter, admin, activate, 200) == audited(
        ("find", "users"), ("findAndModify", "users"), *sweep
    )
    # Already active: the write (a no-op) and no sweep.
    assert await targets(client, counter, admin, activate, 200) == audited(
        ("find", "users"), ("findAndModify", "users")
    )


def writes(targets: list[tuple[str, object]]) -> list[tuple[str, object]]:
    return [target for target in targets if target[0] != "find"]


async def test_an_admins_delete_writes_what_the_owners_does_and_the_audit_entry(counted) -> None:
    """The owner's delete and an admin's share their code (routers/posts.py `remove_post`,
    routers/comments.py `remove_comment`): the same writes, and the audit entry's two. The
    owner's reads check who may delete; an admin's delete reads nothing first (the entry's
    detail comes from the document as deleted)."""
    client, counter = counted
    admin, user = await create_admin(client), await create_user(client)
    posts = [await create_post(client, user), await create_post(client, user)]
    made = [
        await client.post(
            f"/posts/{posts[0]['id']}/comments", json={"content": "c"}, headers=user.headers
        )
        for _ in range(2)
    ]
    owners = []
    for path in [f"/comments/{made[0].json()['id']}", f"/posts/{posts[1]['id']}"]:
        counter.clear()
        response = await client.delete(path, headers=user.headers)
        assert response.status_code == 204, response.text
        owners.append(writes(counter.targets))
    comment = ("DELETE", f"/admin/comments/{made[1].json()['id']}", None)
    deleted = await targets(client, counter, admin, comment, 204)
    assert writes(deleted) == writes(audited(*owners[0]))
    assert deleted == audited(
        ("findAndModify", "comments"),  # deleted by whichever request gets there first
        ("update", "posts"),  # ... which alone takes it off its post's count
    )
    deleted_post = ("DELETE", f"/admin/posts/{posts[0]['id']}", {"reason": "spam"})
    deleted = await targets(client, counter, admin, deleted_post, 204)
    assert writes(deleted) == writes(audited(*owners[1]))
    assert deleted == audited(
        ("findAndModify", "posts"),  # deleted by whichever request gets there first
        ("update", "counters"),  # ... which alone takes it off the published count
        ("delete", "votes"),  # the cascade, whatever the number of votes and comments
        ("delete", "comments"),
    )
    assert await targets(client, counter, admin, deleted_post, 404) == audited(
        ("findAndModify", "posts")
    )
