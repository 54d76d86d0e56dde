"""Database commands per request, counted with PyMongo's command monitoring.

The targets (issue 6): at most 2 commands for a read (the caller's user document, then one
query), at most 3 for a write, whatever the page size: no N+1. `bench/` reports the same
counts under load; this keeps them from creeping up unnoticed.
"""

from collections.abc import AsyncIterator

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pymongo import monitoring

from service.main import create_app
from tests.factories import LoggedInUser, create_post, create_user


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

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
