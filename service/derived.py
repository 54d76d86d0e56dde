"""Values derived from other documents: each post's owner, vote count and comment count
(`Post.owner`, `Post.votes`, `Post.comments`), whether posts and comments are hidden (their
owner or author deactivated: service/moderation.py), and the tallies in `counters` (the
published count and each user's `drafts`, service/tallies.py; the active admins).

The API keeps them in step as it writes. They are derived here from `users`, `votes` and
`comments`:
- at start-up, for posts that lack them (written before they existed, or imported from an
  older export while no API process ran);
- after `social-api import`, for every post, since the files may not agree;
- by `social-api recount`, for every post, to repair counts after a crash between a vote's two
  writes, or after a rolling upgrade during which processes of the older version took votes
  without counting them.

A vote cast while a post is being recounted can make its count off by one, so every post
that changed is checked again until its count holds still (at most `PASSES` times); the
tallies likewise.

All of it goes through PyMongo, on the database it is given: the start-up migration runs it
before init_beanie (service/db.py, `initialise`), when Beanie's documents are not bound yet
(CollectionWasNotInitialized) or, in a process that bound them before, bound to another
database.
"""

import logging
from collections.abc import Iterable
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from service.models.post import COUNTERS, PUBLISHED_COUNTER, SHOWN
from service.models.user import ADMIN, ADMINS_COUNTER

logger = logging.getLogger(__name__)

BATCH = 1000  # posts per round of commands
PASSES = 3

COUNTED = ("votes", "comments")  # each post's count of the documents of these collections
LACKING = {"$or": [{field: {"$exists": False}} for field in ("owner", *COUNTED)]}


async def recount(database: AsyncDatabase[dict[str, Any]]) -> tuple[int, int]:
    """Derive everything again: how many posts, and how many tallies, were corrected."""
    return await derive_post_fields(database), await derive_tallies(database)


async def derive_post_fields(
    database: AsyncDatabase[dict[str, Any]], *, only_lacking: bool = False
) -> int:
    """Set the owner, counts and `hidden` of every post (or of those lacking them) where they
    are wrong; return how many posts changed. Every comment's `hidden` is derived first (but
    for `only_lacking`), since the comment counts leave hidden ones out."""
    posts = database["posts"]
    if not only_lacking:
        await _derive_hidden_comments(database)
    ids = [row["_id"] async for row in posts.find(LACKING if only_lacking else {}, {"_id": 1})]
    changed = await _derive(database, ids)
    rechecked = changed
    for _ in range(PASSES - 1):
        if not rechecked:
            break
        rechecked = await _derive(database, rechecked)
    if rechecked:
        logger.warning("%d posts' counts kept changing while recounted", len(rechecked))
    return len(changed)


async def _derive(database: AsyncDatabase[dict[str, Any]], ids: list[Any]) -> list[Any]:
    changed: list[Any] = []
    for start in range(0, len(ids), BATCH):
        changed += await _derive_batch(database, ids[start : start + BATCH])
    return changed


async def _derive_batch(database: AsyncDatabase[dict[str, Any]], ids: list[Any]) -> list[Any]:
    posts = database["posts"]
    fields = {"owner_id": 1, "owner": 1, "hidden": 1, **dict.fromkeys(COUNTED, 1)}
    rows = await posts.find({"_id": {"$in": ids}}, fields).to_list()
    counts = {name: await _counts(database, name, ids) for name in COUNTED}
    owners = {
        row["_id"]: row
        async for row in database["users"].find(
            {"_id": {"$in": list({row["owner_id"] for row in rows})}},
            {"email": 1, "created_at": 1, "active": 1},
        )
    }
    updates = list(_updates(rows, counts, owners))
    if updates:
        await posts.bulk_write([update for _, update in updates], ordered=False)
    orphans = sum(row["owner_id"] not in owners for row in rows)
    if orphans:
        logger.warning("%d posts have no owner in users: they are not shown", orphans)
    return [post_id for post_id, _ in updates]


async def _counts(database: AsyncDatabase[dict[str, Any]], name: str, ids: list[Any]) -> Any:
    """How many shown documents of collection `name` each of these posts has (absent:
    none)."""
    shown = {"hidden": SHOWN} if name == "comments" else {}
    return {
        row["_id"]: row["n"]
        async for row in await database[name].aggregate(
            [
                {"$match": {"post_id": {"$in": ids}, **shown}},
                {"$group": {"_id": "$post_id", "n": {"$sum": 1}}},
            ]
        )
    }


def _updates(
    rows: list[dict[str, Any]],
    counts: dict[str, dict[Any, int]],
    owners: dict[Any, dict[str, Any]],
) -> Iterable[tuple[Any, UpdateOne]]:
    for row in rows:
        wanted: dict[str, Any] = {name: counts[name].get(row["_id"], 0) for name in COUNTED}
        owner = owners.get(row["owner_id"])
        wanted["owner"] = (
            None if owner is None else {"email": owner["email"], "created_at": owner["created_at"]}
        )
        wanted["hidden"] = owner is not None and owner.get("active") is False
        if any(row.get(field, ...) != value for field, value in wanted.items()):
            yield row["_id"], UpdateOne({"_id": row["_id"]}, {"$set": wanted})


async def _derive_hidden_comments(database: AsyncDatabase[dict[str, Any]]) -> None:
    """Hide the comments of deactivated authors, show everyone else's."""
    inactive = [row["_id"] async for row in database["users"].find({"active": False}, {"_id": 1})]
    comments = database["comments"]
    await comments.update_many(
        {"author_id": {"$in": inactive}, "hidden": SHOWN}, {"$set": {"hidden": True}}
    )
    await comments.update_many(
        {"author_id": {"$nin": inactive}, "hidden": True}, {"$set": {"hidden": False}}
    )


async def derive_tallies(
    database: AsyncDatabase[dict[str, Any]], *, only_lacking: bool = False
) -> int:
    """Set the published count and every user's drafts where they are wrong (or, with
    `only_lacking`, where they are missing); return how many values changed."""
    changed_total = 0
    for number in range(PASSES):
        changed = await _derive_tallies(database, only_lacking=only_lacking)
        if number == 0:
            changed_total = changed
        if not changed or only_lacking:
            break
    return changed_total


async def _derive_tallies(database: AsyncDatabase[dict[str, Any]], *, only_lacking: bool) -> int:
    posts, users, counters = database["posts"], database["users"], database[COUNTERS]
    changed = 0
    tallied: dict[str, tuple[AsyncCollection[dict[str, Any]], dict[str, Any]]] = {
        PUBLISHED_COUNTER: (posts, {"published": True, "hidden": SHOWN}),
        ADMINS_COUNTER: (users, {"role": ADMIN, "active": {"$ne": False}}),
    }
    for name, (collection, counted) in tallied.items():
        kept = await counters.find_one({"_id": name})
        if kept is None or not only_lacking:
            value = await collection.count_documents(counted)
            if kept is None or kept.get("value") != value:
                await counters.update_one({"_id": name}, {"$set": {"value": value}}, upsert=True)
                # A new database's count starting at zero corrected nothing.
                changed += kept is not None or value > 0
    lacking = {"drafts": {"$exists": False}} if only_lacking else {}
    rows = await users.find(lacking, {"drafts": 1}).to_list()
    if not rows:
        return changed
    drafts = {
        row["_id"]: row["n"]
        async for row in await posts.aggregate(
            [
                {"$match": {"published": False}},
                {"$group": {"_id": "$owner_id", "n": {"$sum": 1}}},
            ]
        )
    }
    updates = [
        UpdateOne({"_id": row["_id"]}, {"$set": {"drafts": drafts.get(row["_id"], 0)}})
        for row in rows
        if row.get("drafts") != drafts.get(row["_id"], 0)
    ]
    for start in range(0, len(updates), BATCH):
        await users.bulk_write(updates[start : start + BATCH], ordered=False)
    return changed + len(updates)
