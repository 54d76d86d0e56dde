"""Every query the service sends is served by a declared index.

A workload that touches every route runs with a PyMongo command listener; each command's
query shape (the fields it filters on, sorts by, or joins on) is then matched to an index
the documents declare. The emulator has no `explain()` worth reading, so this is the check:
a new query on an unindexed field fails here, on any store.
"""

from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pymongo import monitoring

from service.db import declared_indexes
from service.main import create_app
from service.models import DOCUMENTS
from service.models.post import COUNTERS
from tests.factories import (
    DEFAULT_PASSWORD,
    bearer,
    create_admin,
    create_post,
    create_user,
    login_pair,
)

# Commands that carry a query, and where it is.
QUERY_OF = {
    "find": lambda c: [c.get("filter", {})],
    "findAndModify": lambda c: [c.get("query", {})],
    "update": lambda c: [u["q"] for u in c.get("updates", [])],
    "delete": lambda c: [d["q"] for d in c.get("deletes", [])],
    "count": lambda c: [c.get("query", {})],
}
IGNORED = {
    "insert",
    "ping",
    "hello",
    "isMaster",
    "endSessions",
    "listIndexes",
    "createIndexes",
    "listCollections",
    "create",
    "collMod",
    "buildInfo",
    "getMore",
    "killCursors",
}


class Recorder(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[tuple[str, dict[str, Any]]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append((event.command_name, dict(event.command)))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def index_keys() -> dict[str, list[list[str]]]:
    """Each collection's indexes, as lists of field names, `_id` included."""
    return {
        COUNTERS: [["_id"]],  # one document per count, found by its name
        **{
            document.Settings.name: [
                ["_id"],
                *([k for k, _ in keys] for keys in declared_indexes(document)),
            ]
            for document in DOCUMENTS
        },
    }


def equality_fields(query: dict[str, Any]) -> list[set[str]]:
    """The alternatives a query can be served by: a set of top-level fields for each branch
    of an `$or` (every branch must be indexed), or the query's own fields."""
    if "$or" in query:
        return [field for branch in query["$or"] for field in equality_fields(branch)]
    fields: set[str] = set()
    for key, value in query.items():
        if key == "$and":
            for part in value:
                for alternative in equality_fields(part):
                    fields |= alternative
        elif not key.startswith("$"):
            fields.add(key)
    return [fields]


def served(fields: set[str], indexes: list[list[str]]) -> bool:
    """An index serves a query whose fields include the index's first field."""
    return not fields or any(index[0] in fields for index in indexes)


def shapes(commands: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, str, Any]]:
    """(collection, what, fields) for every query, sort and join the commands contain."""
    found: list[tuple[str, str, Any]] = []
    for name, command in commands:
        if name in IGNORED or name not in {*QUERY_OF, "aggregate"}:
            continue
        collection = command[name]
        if name == "aggregate":
            found += pipeline_shapes(collection, command["pipeline"])
            continue
        for query in QUERY_OF[name](command):
            found += [(collection, "filter", fields) for fields in equality_fields(query)]
        if command.get("sort"):
            [query] = QUERY_OF[name](command)  # a find's filter, a findAndModify's query
            matched = set().union(*equality_fields(query))
            found.append((collection, "sort", (list(command["sort"]), matched)))
    return found


def pipeline_shapes(collection: str, pipeline: list[dict[str, Any]]) -> list[tuple[str, str, Any]]:
    found: list[tuple[str, str, Any]] = []
    matched: set[str] = set()
    for position, stage in enumerate(pipeline):
        if "$match" in stage and position == 0:
            alternatives = equality_fields(stage["$match"])
            found += [(collection, "filter", fields) for fields in alternatives]
            matched = set().union(*alternatives)
        if "$sort" in stage:
            found.append((collection, "sort", (list(stage["$sort"]), matched)))
        if "$lookup" in stage:
            lookup = stage["$lookup"]
            found.append((lookup["from"], "filter", {lookup["foreignField"]}))
        if "$facet" in stage:
            for branch in stage["$facet"].values():
                found += pipeline_shapes(collection, [{"$noop": 1}, *branch])
        if "$unionWith" in stage:
            union = stage["$unionWith"]
            found += pipeline_shapes(union["coll"], union.get("pipeline", []))
    return found


def sort_served(sort: list[str], matched: set[str], indexes: list[list[str]]) -> bool:
    """An index serves a sort if it holds the sort's fields in order, after fields the query
    matches on (the feed's `published` or `owner_id`)."""
    return any(
        index[start : start + len(sort)] == sort and set(index[:start]) <= matched
        for index in indexes
        for start in range(len(index))
    )


async def run_every_route(client: httpx.AsyncClient) -> None:
    ann, bob = await create_user(client), await create_user(client)
    post = await create_post(client, ann)
    draft = await create_post(client, bob, published=False)
    await client.post("/login", data={"username": ann.email, "password": "wrong password"})
    await client.get("/posts/", headers=bob.headers)
    await client.get("/posts/?search=post&limit=100&skip=1", headers=bob.headers)
    await client.get(f"/posts/{post['id']}", headers=bob.headers)
    await client.get(f"/users/{ann.id}", headers=bob.headers)
    await client.get("/users/me", headers=bob.headers)
    await client.put(
        f"/posts/{draft['id']}", headers=bob.headers, json={"title": "t", "content": "c"}
    )
    await client.post("/vote/", headers=bob.headers, json={"post_id": post["id"], "dir": 1})
    await client.post("/vote/", headers=ann.headers, json={"post_id": draft["id"], "dir": 1})
    await client.post("/vote/", headers=bob.headers, json={"post_id": post["id"], "dir": 0})
    comments = f"/posts/{post['id']}/comments"
    made = (await client.post(comments, headers=ann.headers, json={"content": "c"})).json()
    await client.post(comments, headers=bob.headers, json={"content": "d"})
    first = await client.get(f"{comments}?limit=1", headers=bob.headers)
    cursor = first.headers["x-next-cursor"]
    await client.get(comments, params={"limit": 1, "cursor": cursor}, headers=bob.headers)
    await client.delete(f"/comments/{made['id']}", headers=bob.headers)  # 403: not theirs
    await client.delete(f"/comments/{made['id']}", headers=ann.headers)
    await client.post(f"/posts/{draft['id']}/comments", headers=ann.headers, json={"content": "e"})
    pair = (await client.post("/auth/refresh", json={"refresh_token": ann.refresh_token})).json()
    await client.post("/auth/refresh", json={"refresh_token": ann.refresh_token})  # a replay
    other = await login_pair(client, bob.email)
    await client.post("/logout", headers=bearer(other["access_token"]))
    await client.put(
        "/users/me/password",
        headers=bob.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "a brand new secret"},
    )
    fresh = await login_pair(client, bob.email, "a brand new secret")
    await client.post("/logout/all", headers=bearer(fresh["access_token"]))
    ann_again = await login_pair(client, ann.email)
    await client.delete(f"/posts/{post['id']}", headers=bearer(ann_again["access_token"]))
    await client.request(
        "DELETE",
        "/users/me",
        headers=bearer(ann_again["access_token"]),
        json={"password": DEFAULT_PASSWORD},
    )
    assert pair["access_token"]
    await run_every_admin_route(client)


async def run_every_admin_route(client: httpx.AsyncClient) -> None:
    """The admin routes, on an account with posts (one a draft) and comments (on its own post
    and another user's), so that deactivation and activation sweep them. Each answer is
    checked: a refused request would not send the queries that are to be checked."""
    admin, cat, dan = (
        await create_admin(client),
        await create_user(client),
        await create_user(client),
    )
    dans = await create_post(client, dan)
    cats = await create_post(client, cat)
    await create_post(client, cat, published=False)
    on_dans = f"/posts/{dans['id']}/comments"
    made = await client.post(on_dans, headers=cat.headers, json={"content": "c"})
    await client.post(on_dans, headers=cat.headers, json={"content": "d"})
    await client.post(f"/posts/{cats['id']}/comments", headers=cat.headers, json={"content": "e"})
    for search in ("", "USER"):
        params: dict[str, str | int] = {"limit": 1, "search": search}
        first = await client.get("/admin/users", params=params, headers=admin.headers)
        assert first.status_code == 200 and len(first.json()) == 1, first.text
        params["cursor"] = first.headers["x-next-cursor"]
        page = await client.get("/admin/users", params=params, headers=admin.headers)
        assert page.status_code == 200 and len(page.json()) == 1, page.text
    user = f"/admin/users/{cat.id}"
    why = {"reason": "checking the indexes"}
    answers = [
        await client.post(f"{user}/deactivate", headers=admin.headers, json=why),
        await client.post("/login", data={"username": cat.email, "password": DEFAULT_PASSWORD}),
        await client.post(f"{user}/activate", headers=admin.headers),
        await client.put(f"{user}/role", headers=admin.headers, json={"role": "admin"}),
        await client.put(f"{user}/role", headers=admin.headers, json={"role": "user", **why}),
        await client.request(
            "DELETE", f"/admin/posts/{cats['id']}", headers=admin.headers, json=why
        ),
        await client.delete(f"/admin/comments/{made.json()['id']}", headers=admin.headers),
    ]
    assert [answer.status_code for answer in answers] == [200, 403, 200, 200, 200, 204, 204]
    assert answers[1].json() == {"detail": "Account disabled"}
    first = await client.get("/admin/audit", params={"limit": 1}, headers=admin.headers)
    assert first.status_code == 200 and len(first.json()) == 1, first.text
    cursor = first.headers["x-next-cursor"]
    page = await client.get("/admin/audit", params={"cursor": cursor}, headers=admin.headers)
    assert page.status_code == 200 and len(page.json()) == 5, page.text


async def test_every_query_of_every_route_is_served_by_a_declared_index(settings, restore_beanie):
    recorder = Recorder()
    app = create_app(settings, command_listeners=[recorder])
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            recorder.commands.clear()  # start-up's own commands are not queries
            await run_every_route(client)
    indexes = index_keys()
    found = shapes(recorder.commands)
    assert {collection for collection, _, _ in found} >= {
        "users",
        "posts",
        "votes",
        "refresh_tokens",
        "login_attempts",
        "comments",
        "audit",
        COUNTERS,
    }
    unserved: list[tuple[str, list[str] | str]] = []
    for collection, what, fields in found:
        if what == "filter" and not served(set(fields), indexes[collection]):
            unserved.append((collection, sorted(fields)))
        if what == "sort":
            sort, matched = fields
            if not sort_served(sort, matched, indexes[collection]):
                unserved.append((collection, f"sort {sort}"))
    assert unserved == []


@pytest.mark.parametrize("search", ["", "post"])
async def test_a_cursor_page_is_a_range_of_the_feeds_indexes_with_no_skip(
    settings, restore_beanie, search
):
    recorder = Recorder()
    app = create_app(settings, command_listeners=[recorder])
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ann, bob = await create_user(client), await create_user(client)
            for published in (True, True, False):
                await create_post(client, bob, published=published)
            await create_post(client, ann)
            params: dict[str, str | int] = {"limit": 1, "search": search}
            first = await client.get("/posts/", params=params, headers=bob.headers)
            recorder.commands.clear()
            cursor = first.headers["x-next-cursor"]
            page = await client.get(
                "/posts/", params={**params, "cursor": cursor}, headers=bob.headers
            )
            assert page.status_code == 200 and len(page.json()) == 1
    [pipeline] = [c["pipeline"] for name, c in recorder.commands if name == "aggregate"]
    stages = [stage for stage in pipeline if "$facet" not in stage] + [
        stage for facet in pipeline if "$facet" in facet for stage in facet["$facet"]["items"]
    ]
    assert not any("$skip" in stage for stage in stages), pipeline
    # The range: every branch of the feed's $or, each with a bound on (created_at, _id), and
    # each the prefix of one of the feed's indexes, in the feed's order.
    [ranged] = [
        stage["$match"] for stage in stages if "$match" in stage and "created_at" in str(stage)
    ]
    branches = ranged["$or"] if "$or" in ranged else ranged["$and"][0]["$or"]
    assert len(branches) == 4
    indexes = index_keys()["posts"]
    for branch in branches:
        assert "created_at" in branch
        assert served(set(branch), indexes)
        matched = set(branch) - {"created_at", "_id"}
        assert sort_served(["created_at", "_id"], matched, indexes), branch


def test_the_shape_check_can_fail():
    """A filter on a field no index starts with, and a sort no index has, are reported."""
    indexes = index_keys()
    assert not served({"content"}, indexes["posts"])
    assert not served({"title", "created_at"}, indexes["posts"])
    assert served({"owner_id", "title"}, indexes["posts"])
    found = shapes([("find", {"find": "posts", "filter": {"title": "x"}, "sort": {"title": 1}})])
    assert found == [("posts", "filter", {"title"}), ("posts", "sort", (["title"], {"title"}))]
    assert not sort_served(["title"], {"title"}, indexes["posts"])
    # The feed's order is held after `published`, so only a query matching on it is served.
    assert sort_served(["created_at", "_id"], {"published"}, indexes["posts"])
    assert not sort_served(["created_at", "_id"], {"title"}, indexes["posts"])
