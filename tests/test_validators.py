"""The $jsonSchema validators each collection gets from its Beanie model."""

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId
from pymongo import AsyncMongoClient
from pymongo.errors import WriteError

from service.db import apply_validators, initialise, migrate, validator_schema
from service.models import DOCUMENTS, Post, User

NOW = datetime.now(UTC)
GOOD = {
    "users": {
        "email": "hand@example.com",
        "hashed_password": "$2b$04$x",
        "created_at": NOW,
        "session_epoch": 0,
        "revoked_sessions": [{"sid": "s", "until": NOW}],
    },
    "posts": {
        "title": "t",
        "content": "c",
        "published": True,
        "created_at": NOW,
        "owner_id": ObjectId(),
    },
    "votes": {"post_id": ObjectId(), "user_id": ObjectId(), "created_at": NOW},
    "refresh_tokens": {
        "token_hash": "0" * 64,
        "family_id": "f",
        "user_id": ObjectId(),
        "epoch": 0,
        "issued_at": NOW,
        "expires_at": NOW,
        "used_at": None,
        "revoked_at": NOW,
    },
    "login_attempts": {"key": "address:127.0.0.1", "at": NOW, "expires_at": NOW},
    "comments": {
        "post_id": ObjectId(),
        "author_id": ObjectId(),
        "author": {"email": "hand@example.com", "created_at": NOW},
        "content": "Well put.",
        "created_at": NOW,
    },
}


def test_post_schema_follows_the_model():
    schema = validator_schema(Post)
    assert schema["bsonType"] == "object"
    assert set(schema["required"]) == {
        "_id",
        "title",
        "content",
        "published",
        "created_at",
        "owner_id",
    }
    assert schema["properties"]["title"] == {"bsonType": "string", "minLength": 1, "maxLength": 300}
    assert schema["properties"]["content"]["maxLength"] == 20_000
    assert schema["properties"]["owner_id"] == {"bsonType": "objectId"}
    assert schema["properties"]["created_at"] == {"bsonType": "date"}
    assert schema["properties"]["published"] == {"bsonType": "bool"}


async def test_every_collection_carries_its_validator(app):
    database = app.state.database
    for document in DOCUMENTS:
        name = document.Settings.name
        [info] = await (await database.list_collections(filter={"name": name})).to_list()
        assert info["options"]["validator"] == {"$jsonSchema": validator_schema(document)}
        assert info["options"]["validationAction"] == "error"


@pytest.mark.parametrize("collection", list(GOOD))
async def test_a_valid_document_written_by_hand_is_accepted(app, collection):
    # Dates an hour ahead: the TTL indexes of sessions and attempts must not remove them.
    document = {
        k: NOW.replace(year=NOW.year + 1) if v is NOW else v for k, v in GOOD[collection].items()
    }
    result = await app.state.database[collection].insert_one(document)
    assert await app.state.database[collection].count_documents({"_id": result.inserted_id}) == 1


@pytest.mark.parametrize(
    ("collection", "change"),
    [
        ("users", {"hashed_password": None}),
        ("users", {"email": 42}),
        ("users", {"created_at": "yesterday"}),
        ("posts", {"title": "x" * 301}),
        ("posts", {"title": ""}),
        ("posts", {"owner_id": "not-an-object-id"}),
        ("posts", {"published": "yes"}),
        ("votes", {"user_id": None}),
        ("votes", {"post_id": str(ObjectId())}),
        ("users", {"session_epoch": "0"}),
        ("users", {"revoked_sessions": [{"sid": 1, "until": NOW}]}),
        ("refresh_tokens", {"used_at": "never"}),
        ("refresh_tokens", {"expires_at": None}),
        ("login_attempts", {"key": None}),
        ("comments", {"content": "x" * 2_001}),
        ("comments", {"author": None}),
    ],
    ids=[
        "user-without-hash",
        "user-email-number",
        "user-date-string",
        "post-title-too-long",
        "post-title-empty",
        "post-owner-string",
        "post-published-string",
        "vote-without-user",
        "vote-post-id-string",
        "user-epoch-string",
        "user-revoked-session-bad-sid",
        "token-used-at-string",
        "token-without-expiry",
        "attempt-without-key",
        "comment-too-long",
        "comment-without-author",
    ],
)
async def test_an_invalid_document_written_by_hand_is_refused(app, collection, change):
    document = {**GOOD[collection], **change}
    document = {key: value for key, value in document.items() if value is not None}
    with pytest.raises(WriteError) as refused:
        await app.state.database[collection].insert_one(document)
    assert refused.value.code == 121  # DocumentValidationFailure
    assert await app.state.database[collection].count_documents({}) == 0


async def test_an_existing_collection_gets_its_validator_or_a_warning(app, caplog):
    database = app.state.database.client[f"validators_{uuid.uuid4().hex[:8]}"]
    await database.create_collection("users")  # made before validators existed
    try:
        with caplog.at_level(logging.WARNING, logger="service.db"):
            await apply_validators(database)
        [info] = await (await database.list_collections(filter={"name": "users"})).to_list()
        has_validator = info["options"].get("validator") == {"$jsonSchema": validator_schema(User)}
        # A real MongoDB sets it with collMod; the emulator cannot and says so.
        assert has_validator or "Could not set the validator of users" in caplog.text
        for name in ("posts", "votes"):
            [fresh] = await (await database.list_collections(filter={"name": name})).to_list()
            assert "validator" in fresh["options"]
    finally:
        await database.client.drop_database(database.name)


async def test_processes_starting_together_all_initialise(app, mongodb_url, restore_beanie):
    """Workers or replicas start at once: each creates the collections, or finds them made."""
    name = f"together_{uuid.uuid4().hex[:8]}"
    clients = [AsyncMongoClient[dict[str, Any]](mongodb_url, tz_aware=True) for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(initialise(client[name]) for client in clients), return_exceptions=True
        )
        assert results == [None] * 4
        for document in DOCUMENTS:
            collection = clients[0][name][document.Settings.name]
            [info] = await (
                await clients[0][name].list_collections(filter={"name": collection.name})
            ).to_list()
            assert info["options"]["validator"] == {"$jsonSchema": validator_schema(document)}
    finally:
        await clients[0].drop_database(name)
        for client in clients:
            await client.close()


async def test_users_written_before_sessions_existed_are_migrated(app):
    database = app.state.database.client[f"migrate_{uuid.uuid4().hex[:8]}"]
    try:
        old = {"email": "old@example.com", "hashed_password": "$2b$04$x", "created_at": NOW}
        await database["users"].insert_one(dict(old))
        await database["users"].insert_one({**old, "email": "new@example.com", "session_epoch": 4})
        await migrate(database)
        await migrate(database)  # a second start changes nothing
        rows = await database["users"].find({}, {"_id": 0}).sort("email", 1).to_list()
        assert [(r["email"], r["session_epoch"], r["revoked_sessions"]) for r in rows] == [
            ("new@example.com", 4, []),
            ("old@example.com", 0, []),
        ]
    finally:
        await database.client.drop_database(database.name)


async def test_posts_written_before_they_carried_owner_and_votes_are_migrated(app):
    database = app.state.database.client[f"migrate_{uuid.uuid4().hex[:8]}"]
    try:
        created = NOW.replace(microsecond=0)  # as BSON keeps it
        owner = {"_id": ObjectId(), "email": "old@example.com", "created_at": created}
        await database["users"].insert_one({**owner, "hashed_password": "$2b$04$x"})
        post = {"title": "t", "content": "c", "published": True, "created_at": NOW}
        old = await database["posts"].insert_one({**post, "owner_id": owner["_id"]})
        orphan = await database["posts"].insert_one({**post, "owner_id": ObjectId()})
        voters = [ObjectId() for _ in range(3)]
        await database["votes"].insert_many(
            [{"post_id": old.inserted_id, "user_id": v, "created_at": NOW} for v in voters]
        )
        await migrate(database)
        await migrate(database)  # a second start changes nothing
        migrated = await database["posts"].find_one({"_id": old.inserted_id})
        assert migrated["votes"] == 3
        assert migrated["owner"] == {"email": "old@example.com", "created_at": created}
        # A post whose owner is gone gets no owner, so the API does not show it.
        gone = await database["posts"].find_one({"_id": orphan.inserted_id})
        assert gone["votes"] == 0 and gone["owner"] is None
        # The feed's tallies: both posts are published, the user has no draft.
        counter = await database["counters"].find_one({"_id": "published_posts"})
        assert counter["value"] == 2
        user = await database["users"].find_one({"_id": owner["_id"]})
        assert user["drafts"] == 0
    finally:
        await database.client.drop_database(database.name)
