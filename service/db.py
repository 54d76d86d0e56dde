"""The MongoDB connection, the documents' indexes and validators, and migrations.

The application speaks to MongoDB only through `pymongo.AsyncMongoClient` and Beanie. What
answers at the URL is either a real MongoDB (`MONGODB_URL`) or, when that is unset, the
embedded development store (the `devstore` package): an emulator's wire-protocol server on
loopback, which the same client reaches over TCP exactly as it would reach `mongod`. There is
no second code path.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from types import UnionType
from typing import TYPE_CHECKING, Any, Literal, Union, get_args, get_origin

import pymongo
from beanie import Document, PydanticObjectId, init_beanie
from beanie.odm.utils.typing import get_index_attributes
from pydantic import BaseModel
from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, ConnectionFailure, OperationFailure
from pymongo.monitoring import CommandListener

from service import logs
from service.config import ConfigurationError, Settings
from service.derived import derive_post_fields, derive_tallies
from service.models import DOCUMENTS

if TYPE_CHECKING:
    from devstore import EmbeddedStore

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
INITIALISE_TIMEOUT_S = 600.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0

type Database = AsyncDatabase[dict[str, Any]]


def start_embedded_store(settings: Settings) -> "EmbeddedStore":
    """Start the embedded development store (the `devstore` extra) and print its banner.

    Imported here, and only here: a service with MONGODB_URL never loads the emulator, and an
    image without the extra says how to get it rather than failing on an import.
    """
    try:
        import devstore
    except ModuleNotFoundError as error:
        # Only the packages themselves missing; a broken install of them is its own error.
        if error.name not in {"devstore", "mongoeco"}:
            raise
        raise ConfigurationError(
            "MONGODB_URL is not set and the embedded development store is not installed: "
            "set MONGODB_URL=mongodb://host:27017/, or install the store with "
            "pip install 'social-api[devstore]' (make run does)"
        ) from None
    store = devstore.EmbeddedStore(
        settings.embedded_storage, settings.data_dir, settings.embedded_port
    )
    try:
        store.start()
    except devstore.StoreError as error:
        raise ConfigurationError(str(error)) from None
    logger.warning("%s", devstore.banner(store, settings.mongodb_db), extra=logs.BLOCK)
    return store


@asynccontextmanager
async def connect(
    settings: Settings, listeners: Sequence[CommandListener] = (), *, bounded: bool = False
) -> AsyncIterator[Database]:
    """Open the client (and the embedded store if there is no URL); close both on exit.

    `listeners` see every command the client sends (tests and the benchmark count them).
    `bounded` (the API's client) limits every operation to MONGODB_TIMEOUT_MS, with PyMongo's
    client-side operation timeout: a MongoDB that accepts connections but stops answering
    gets a 503 in that time rather than a request that hangs. The admin commands, whose
    batches may take longer, are not bounded.
    """
    store: EmbeddedStore | None = None
    url = settings.mongodb_url or settings.embedded_store_url
    if url is None:
        store = await asyncio.to_thread(start_embedded_store, settings)
        url = store.url
    try:  # from here on, whatever fails stops the store
        client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
            url,
            tz_aware=True,
            serverSelectionTimeoutMS=settings.mongodb_timeout_ms,
            timeoutMS=settings.mongodb_timeout_ms if bounded else None,
            appname="social-api",
            event_listeners=list(listeners),
        )
        try:
            yield client[settings.mongodb_db]
        finally:
            await client.close()
    finally:
        if store is not None:
            await asyncio.to_thread(store.stop)


# Fields added to a collection after its first release, with the value a document written
# before then gets: by the migration at start-up, and by `social-api import` of older exports.
ADDED_FIELDS: dict[str, dict[str, Any]] = {
    "users": {
        "session_epoch": 0,
        "revoked_sessions": [],
        "email_verified": False,
        "password_reset": None,
        "email_verification": None,
        "role": "user",
        "active": True,
    },
    # No account was deactivated before moderation existed: nothing was hidden.
    "posts": {"hidden": False},
    "comments": {"hidden": False},
    "refresh_tokens": {"password_check": None},
    "login_attempts": {"failed": None},
}
# Fields added later whose value is derived from other collections (service/derived.py).
DERIVED_FIELDS: dict[str, tuple[str, ...]] = {
    "posts": ("owner", "votes", "comments"),
    "users": ("drafts",),
}


async def migrate(database: Database) -> None:
    """Give documents written before a field existed that field's value, so that what
    mongosh or an export shows is what the API reads."""
    changed = await derive_post_fields(database, only_lacking=True)
    if changed:
        logger.warning("Migrated posts: %d got their owner and counts", changed)
    changed = await derive_tallies(database, only_lacking=True)
    if changed:
        logger.warning("Migrated the feed's tallies: %d published count or drafts derived", changed)
    for name, fields in ADDED_FIELDS.items():
        for field, value in fields.items():
            result = await database[name].update_many(
                {field: {"$exists": False}}, {"$set": {field: value}}
            )
            if result.modified_count:
                logger.warning(
                    "Migrated %s: %d documents got %s", name, result.modified_count, field
                )


async def initialise(database: Database) -> None:
    """Migrations, validators, then Beanie (which creates the indexes).

    Building an index on a large collection can take minutes: that runs under a deadline of
    its own, whatever the client's per-operation timeout, once a ping has shown (within the
    client's usual timeouts) that MongoDB answers at all.
    """
    await database.command("ping")
    with pymongo.timeout(INITIALISE_TIMEOUT_S):
        await migrate(database)
        await apply_validators(database)
        await init_beanie(database=database, document_models=list(DOCUMENTS))


async def initialise_when_reachable(database: Database, done: asyncio.Event) -> None:
    """Retry `initialise` with a growing pause until MongoDB answers, then set `done`."""
    pause = RETRY_FIRST_S
    while True:
        await asyncio.sleep(pause)
        try:
            await initialise(database)
        except ConnectionFailure as error:
            logger.warning("MongoDB still unreachable, retrying in %.1f s: %s", pause, error)
            pause = min(pause * 2, RETRY_MAX_S)
            continue
        except Exception as error:
            # Reachable but refusing (bad credentials, missing rights): an operator must act;
            # say so loudly and keep trying, as readiness keeps reporting 503.
            logger.error("MongoDB refused the initialisation, retrying in %.1f s: %r", pause, error)
            pause = min(pause * 2, RETRY_MAX_S)
            continue
        logger.warning("MongoDB answers: collections, validators and indexes are ready")
        done.set()
        return


_BSON_TYPES: dict[type, str | list[str]] = {
    PydanticObjectId: "objectId",
    str: "string",
    bool: "bool",
    int: ["int", "long"],
    datetime: "date",
}


def validator_schema(document: type[Document]) -> dict[str, Any]:
    """A `$jsonSchema` for the document's collection, derived from its model's fields.

    Every stored field is typed as Pydantic declares it, with the same string lengths, and
    required, so a document written by hand (mongosh, Compass, an import) that the API could
    not read is refused by MongoDB itself. Extra fields are allowed, as MongoDB's default is.
    Fields added after a collection's first release (ADDED_FIELDS, DERIVED_FIELDS) are typed
    but not required: during a rolling upgrade the processes still running the older version
    go on writing documents without them, which the model reads with their defaults.
    """
    schema = _object_schema(document, skip=("id", "revision_id"))  # Beanie stores no revision
    schema["properties"] = {"_id": {"bsonType": "objectId"}, **schema["properties"]}
    collection = document.Settings.name
    later = {*ADDED_FIELDS.get(collection, {}), *DERIVED_FIELDS.get(collection, ())}
    schema["required"] = ["_id", *(name for name in schema["required"] if name not in later)]
    return {"bsonType": "object", "title": document.__name__, **schema}


def _object_schema(model: type[BaseModel], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        rule = _field_schema(f"{model.__name__}.{name}", field.annotation)
        for constraint in field.metadata:
            if getattr(constraint, "min_length", None) is not None:
                rule["minLength"] = constraint.min_length
            if getattr(constraint, "max_length", None) is not None:
                rule["maxLength"] = constraint.max_length
        properties[field.alias or name] = rule
    return {"required": list(properties), "properties": properties}


def _field_schema(where: str, annotation: Any) -> dict[str, Any]:
    if annotation in _BSON_TYPES:
        return {"bsonType": _BSON_TYPES[annotation]}
    arguments = get_args(annotation)
    if get_origin(annotation) in (UnionType, Union) and type(None) in arguments:
        [inner] = [argument for argument in arguments if argument is not type(None)]
        rule = _field_schema(where, inner)
        kinds = rule["bsonType"]
        rule["bsonType"] = [*(kinds if isinstance(kinds, list) else [kinds]), "null"]
        return rule
    if get_origin(annotation) is Literal and all(isinstance(a, str) for a in arguments):
        return {"bsonType": "string", "enum": list(arguments)}
    if get_origin(annotation) is list:
        return {"bsonType": "array", "items": _field_schema(where, arguments[0])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return {"bsonType": "object", **_object_schema(annotation)}
    raise TypeError(f"{where}: no BSON type for {annotation}")


async def apply_validators(database: Database) -> None:
    """Create each collection with its validator, or bring an existing one's up to date."""
    existing = await database.list_collection_names()
    for document in DOCUMENTS:
        # Runs before init_beanie (which would create the collections without a validator),
        # so the name comes from the document's own Settings.
        name: str = document.Settings.name
        options: dict[str, Any] = {
            "validator": {"$jsonSchema": validator_schema(document)},
            "validationLevel": "strict",
            "validationAction": "error",
        }
        if name not in existing:
            try:
                await database.create_collection(name, **options)
                continue
            except (CollectionInvalid, OperationFailure):
                # Several processes start at once (workers, replicas): if another one created
                # it in the meantime, its validator is checked below like any existing one.
                if name not in await database.list_collection_names():
                    raise
        [info] = await (await database.list_collections(filter={"name": name})).to_list()
        if {k: info["options"].get(k) for k in options} == options:
            continue
        try:
            await database.command({"collMod": name, **options})
        except OperationFailure as error:
            # The embedded emulator has no collMod, and a user with only readWrite may not run
            # it (changing a validator needs dbAdmin): the collection keeps its old validator,
            # or none, until someone with the right runs the service once.
            logger.warning(
                "Could not set the validator of %s (code %s): %s", name, error.code, error
            )


def declared_indexes(document: type[Document]) -> list[list[tuple[str, Any]]]:
    """The key patterns a document declares, by `Indexed` fields and `Settings.indexes`."""
    keys: list[list[tuple[str, Any]]] = []
    for name, field in document.model_fields.items():
        attributes = get_index_attributes(field)
        if attributes is not None:
            keys.append([(field.alias or name, attributes[0])])
    # The class's own Settings, so this works before init_beanie too (the `indexes` command).
    for index in getattr(document.Settings, "indexes", []):
        if isinstance(index, IndexModel):
            keys.append(list(index.document["key"].items()))
    return keys


async def readiness_problems(database: Database, initialised: bool) -> list[str]:
    """What keeps the service from being ready: no answer from MongoDB, or a missing index."""
    problems: list[str] = []
    if not initialised:
        problems.append("not initialised: MongoDB was unreachable at start; retrying")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await database.command("ping")
            for document in DOCUMENTS:
                collection = document.get_pymongo_collection()
                info = await collection.index_information()
                present = [list(index["key"]) for index in info.values()]
                problems += [
                    f"missing index {collection.name} {dict(keys)}"
                    for keys in declared_indexes(document)
                    if keys not in present
                ]
    except TimeoutError:
        problems.append(f"MongoDB did not answer within {READY_TIMEOUT_S} s")
    except Exception as error:  # any driver failure means "not ready", with its reason
        problems.append(f"MongoDB is unavailable: {type(error).__name__}")
    return problems
