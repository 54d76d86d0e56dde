"""The MongoDB connection, the documents' indexes, and the embedded development store.

The application speaks to MongoDB only through `pymongo.AsyncMongoClient` and Beanie. What
answers at the URL is either a real MongoDB (`MONGODB_URL`) or, when that is unset, the
embedded store: a mongoeco wire-protocol server on loopback, which the same client reaches
over TCP exactly as it would reach `mongod`. There is no second code path.
"""

import asyncio
import contextlib
import fcntl
import gc
import logging
import os
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from types import UnionType
from typing import IO, Any, Literal, Union, get_args, get_origin

import pymongo
from beanie import Document, PydanticObjectId, init_beanie
from beanie.odm.utils.typing import get_index_attributes
from pydantic import BaseModel
from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import CollectionInvalid, ConnectionFailure, OperationFailure
from pymongo.monitoring import CommandListener

from service.config import ConfigurationError, Settings, private_dir
from service.derived import derive_post_fields, derive_tallies
from service.models import DOCUMENTS

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 2.0
INITIALISE_TIMEOUT_S = 600.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 5.0
EMBEDDED_DB_FILE = "embedded.sqlite"
EMBEDDED_LOCK_FILE = "embedded.lock"

type Database = AsyncDatabase[dict[str, Any]]


class EmbeddedStore:
    """A mongoeco wire server on 127.0.0.1, run on its own thread and event loop.

    Its own loop keeps the store independent of the loop (or loops) of whoever connects to it:
    the app in this process, or the worker processes of `social-api serve --workers N`.
    """

    def __init__(self, storage: Literal["sqlite", "memory"], data_dir: Path, port: int = 0) -> None:
        self.storage = storage
        self.data_dir = data_dir
        self.port = port
        self.url: str | None = None
        self._lock_file: IO[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-store", daemon=True)

    @property
    def path(self) -> Path | None:
        """The SQLite file holding the data, or None in memory."""
        return self.data_dir / EMBEDDED_DB_FILE if self.storage == "sqlite" else None

    def start(self, timeout: float = 30.0) -> str:
        """Start serving and return the URL to connect to."""
        self._lock()
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            self.stop()
            reason = self._error or f"it did not start within {timeout} s"
            raise ConfigurationError(f"the embedded store failed to start: {reason}")
        assert self.url is not None
        return self.url

    def stop(self) -> None:
        """Stop serving (the SQLite engine flushes and closes its file) and release the lock."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        self._unlock()

    def _lock(self) -> None:
        # Two stores on one DATA_DIR would corrupt one SQLite file (caches, index catalogue)
        # or, in memory, silently split the data between processes; the lock makes a second
        # process fail loudly instead.
        private_dir(self.data_dir)
        handle = (self.data_dir / EMBEDDED_LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise ConfigurationError(
                f"the embedded store of {self.data_dir.resolve()} is already open in another "
                "process. Run several workers with `social-api serve --workers N` (they share "
                "one store), give this process another DATA_DIR, or set MONGODB_URL."
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._error = error
            if self._stop is not None and self._stop.is_set():
                # Asked to stop, and the engine failed while closing (seen: SQLite "database is
                # locked" from its heartbeat after a long seed, every write already committed):
                # worth a line, not an alarm.
                logger.warning("The embedded store closed with an error: %r", error)
            elif self._started.is_set():  # it had been serving: requests now fail with 503
                logger.critical("The embedded store stopped: %r", error, exc_info=error)
            self._started.set()  # before start-up, start() raises it in the caller

    async def _serve(self) -> None:
        # Imported here: only the embedded mode needs the emulator loaded.
        from mongoeco.wire.proxy import AsyncMongoEcoProxyServer

        from service.embedded_engine import _engines

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        memory_engine, sqlite_engine = _engines()
        engine = memory_engine() if self.path is None else sqlite_engine(str(self.path))
        server = AsyncMongoEcoProxyServer(
            engine=engine,
            host="127.0.0.1",
            port=self.port,
            mongodb_dialect="8.0",
            pymongo_profile="auto-installed",
        )
        address = await server.start()
        gc_freezing.hold()
        try:
            self.url = address.uri
            self._started.set()
            await self._stop.wait()
        finally:
            gc_freezing.release()
            await server.close()


class GcFreezing:
    """While an embedded store runs: the survivors of each full garbage collection are frozen
    (`gc.freeze`), so the next full collection examines only what was allocated since.

    The emulator keeps every document as Python objects, and a full collection examines them
    all while every thread waits: 0.7 s at the benchmark's data set (1.2 million objects), a
    pause every client of the process sees (BENCHMARKS.md). Frozen objects are still freed
    when nothing refers to them; only a reference cycle among them is never reclaimed, and
    the emulator's data hold none. Process-wide, as the collector is; released (frozen objects
    handed back to the collector) when the last store in the process stops.
    """

    def __init__(self) -> None:
        self._holders = 0
        self._lock = threading.Lock()

    @property
    def held(self) -> bool:
        return self._holders > 0

    @staticmethod
    def after_collection(phase: str, info: dict[str, Any]) -> None:
        if phase == "stop" and info.get("generation") == 2:  # CPython's oldest generation
            gc.freeze()

    def hold(self) -> None:
        with self._lock:
            if self._holders == 0:
                gc.callbacks.append(self.after_collection)
            self._holders += 1

    def release(self) -> None:
        with self._lock:
            self._holders -= 1
            if self._holders == 0:
                gc.callbacks.remove(self.after_collection)
                gc.unfreeze()


gc_freezing = GcFreezing()


def embedded_banner(store: EmbeddedStore) -> str:
    where = (
        f"in the SQLite file {store.path.resolve()} (kept across restarts)"
        if store.path is not None
        else "in memory only (lost when the process stops)"
    )
    return "\n".join(
        [
            "=" * 78,
            "EMBEDDED DEVELOPMENT STORE: MONGODB_URL is not set, so this process runs a",
            "MongoDB emulator (mongoeco) for development, not a production database.",
            f"  data:        {where}",
            f"  wire URL:    {store.url}  (PyMongo and `social-api` commands)",
            "  switch with: EMBEDDED_STORAGE=memory | sqlite",
            "  production:  set MONGODB_URL=mongodb://user:pass@host:27017/ and SECRET_KEY",
            "=" * 78,
        ]
    )


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
        store = EmbeddedStore(settings.embedded_storage, settings.data_dir, settings.embedded_port)
        url = await asyncio.to_thread(store.start)
        logger.warning("\n%s", embedded_banner(store))
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
        if store is not None:
            await asyncio.to_thread(store.stop)


# Fields added to a collection after its first release, with the value a document written
# before then gets: by the migration at start-up, and by `social-api import` of older exports.
ADDED_FIELDS: dict[str, dict[str, Any]] = {
    "users": {"session_epoch": 0, "revoked_sessions": []},
    "refresh_tokens": {"password_check": None},
    "login_attempts": {"failed": None},
}
# Fields added later whose value is derived from other collections (service/derived.py).
DERIVED_FIELDS: dict[str, tuple[str, ...]] = {"posts": ("owner", "votes"), "users": ("drafts",)}


async def migrate(database: Database) -> None:
    """Give documents written before a field existed that field's value, so that what
    mongosh or an export shows is what the API reads."""
    changed = await derive_post_fields(database, only_lacking=True)
    if changed:
        logger.warning("Migrated posts: %d got their owner and vote count", changed)
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
