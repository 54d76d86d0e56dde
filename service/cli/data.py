"""The data commands: `seed`, `export`, `import`, `recount` and `indexes`."""

import os
import random
import time
from collections import Counter
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Annotated

import typer
from beanie import Document, PydanticObjectId
from bson import json_util
from bson.errors import BSONError
from bson.json_util import JSONOptions
from pydantic import ValidationError
from pymongo.errors import BulkWriteError
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from service import db, derived, security
from service.cli import collection_name, database, fail, load_settings, run
from service.models import DATA_DOCUMENTS, DOCUMENTS, Post, User, UserCreate, Vote
from service.models.base import utc_now
from service.models.post import PostOwner

console = Console(stderr=True)

# Small batches: each is one command, and the embedded emulator spends time per insert that
# grows with the collection, so a big batch can outlast its operation deadline.
BATCH = 100
# What mongoexport writes by default (relaxed Extended JSON v2); read back with tz-aware dates.
EXPORT_JSON = json_util.RELAXED_JSON_OPTIONS
IMPORT_JSON = JSONOptions(tz_aware=True)
WORDS = (
    "mongo", "fastapi", "beanie", "python", "async", "index", "vote", "post", "draft", "query",
    "shard", "replica", "cursor", "schema", "token", "bcrypt", "cluster", "atlas", "compass",
    "aggregate", "lookup",
)  # fmt: skip


def seed(
    users: Annotated[int, typer.Option(min=0, help="Demo users to create.")] = 100,
    posts: Annotated[int, typer.Option(min=0, help="Posts, spread over those users.")] = 1_000,
    votes: Annotated[
        int, typer.Option(min=0, help="Votes, each a distinct user and post.")
    ] = 5_000,
    password: Annotated[str, typer.Option(help="Every demo user's password.")] = "demo-password",
    random_seed: Annotated[int | None, typer.Option(help="Make the data reproducible.")] = None,
) -> None:
    """Fill the database with demo users, posts and votes."""
    if posts and not users:
        fail("posts need at least one user")
    if votes > users * posts:
        fail(f"at most {users * posts} distinct votes fit {users} users and {posts} posts")
    try:
        UserCreate(email="demo@example.com", password=password)
    except ValidationError as error:
        fail(str(error.errors()[0]["msg"]).removeprefix("Value error, "))
    settings = load_settings()
    rng = random.Random(random_seed)

    async def fill() -> None:
        async with database(settings) as connected:
            if await User.find(User.email == "demo1@example.com").count():
                fail("this database already has demo users; seed an empty one (MONGODB_DB)")
            started = time.perf_counter()
            # One hash for all: hashing each demo user at full cost would take minutes.
            hashed = await security.hash_password(password, settings)
            now = utc_now()
            # Verified: their example.com addresses take no mail, and REQUIRE_VERIFIED_EMAIL
            # would leave the demo unable to write.
            demo_users = [
                User(email=f"demo{n}@example.com", hashed_password=hashed, email_verified=True)
                for n in range(1, users + 1)
            ]
            # Votes are drawn first so that each post is written with its count.
            pairs = rng.sample(range(users * posts), votes)
            counts = Counter(i // users for i in pairs)
            with Progress(console=console) as progress:
                user_ids = await insert(progress, "users", demo_users, users)

                def demo_post(number: int) -> Post:
                    owner = rng.randrange(users)
                    return Post(
                        title=" ".join(rng.choices(WORDS, k=rng.randint(2, 6))).capitalize(),
                        content=" ".join(rng.choices(WORDS, k=rng.randint(10, 60))),
                        published=rng.random() < 0.9,
                        owner_id=user_ids[owner],
                        owner=PostOwner.model_validate(demo_users[owner], from_attributes=True),
                        created_at=now - timedelta(seconds=rng.randint(0, 30 * 86_400)),
                        votes=counts[number],
                    )

                post_ids = await insert(progress, "posts", map(demo_post, range(posts)), posts)
                await insert(
                    progress,
                    "votes",
                    (
                        Vote(post_id=post_ids[i // users], user_id=user_ids[i % users])
                        for i in pairs
                    ),
                    votes,
                )
            await derived.derive_tallies(connected)
            seconds = time.perf_counter() - started
            typer.echo(
                f"seeded {users} users, {posts} posts and {votes} votes in {seconds:.1f} s "
                f"(every demo user's password: {password})"
            )

    run(fill)


async def insert[D: Document](
    progress: Progress, label: str, documents: Iterable[D], total: int
) -> list[PydanticObjectId]:
    """Insert in batches, advancing a progress bar; return the ids in order."""
    task = progress.add_task(label, total=total)
    ids: list[PydanticObjectId] = []
    batch: list[D] = []
    for document in documents:
        batch.append(document)
        if len(batch) == BATCH:
            ids += await _insert_batch(batch)
            progress.advance(task, len(batch))
            batch = []
    if batch:
        ids += await _insert_batch(batch)
        progress.advance(task, len(batch))
    return ids


async def _insert_batch[D: Document](batch: list[D]) -> list[PydanticObjectId]:
    result = await type(batch[0]).insert_many(batch)
    return [PydanticObjectId(inserted) for inserted in result.inserted_ids]


def export_data(
    directory: Annotated[Path, typer.Argument(help="Where to write <collection>.json files.")],
) -> None:
    """Write every collection as mongoexport does: one Extended JSON document per line."""
    settings = load_settings()

    async def write() -> None:
        async with database(settings) as connected:
            # The users file holds password hashes: only the owner may read what is written.
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            for document in DATA_DOCUMENTS:
                name = collection_name(document)
                path = directory / f"{name}.json"
                count = 0
                handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                # A command line tool: no other task shares this loop, blocking writes are fine.
                with open(handle, "w", encoding="utf-8") as out:  # noqa: ASYNC230
                    async for raw in connected[name].find().sort("_id", 1):
                        out.write(json_util.dumps(raw, json_options=EXPORT_JSON) + "\n")
                        count += 1
                typer.echo(f"{name}: {count} documents -> {path}")

    run(write)


def import_data(
    directory: Annotated[Path, typer.Argument(help="Where the <collection>.json files are.")],
    drop: Annotated[
        bool, typer.Option(help="Empty each collection first (indexes and validators stay).")
    ] = False,
) -> None:
    """Load files written by `export` or mongoexport (Extended JSON, one document per line)."""
    files = {collection_name(d): directory / f"{collection_name(d)}.json" for d in DATA_DOCUMENTS}
    if not any(path.exists() for path in files.values()):
        fail(f"no {', '.join(p.name for p in files.values())} in {directory}")
    loaded: dict[str, list[dict[str, object]]] = {}
    for name, path in files.items():
        if not path.exists():
            continue
        loaded[name] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as error:
            fail(f"cannot read {path}: {error}")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                document = json_util.loads(line, json_options=IMPORT_JSON)
            except (ValueError, BSONError) as error:
                fail(f"{path}:{number}: not Extended JSON: {error}")
            if not isinstance(document, dict):
                fail(f"{path}:{number}: not a document (one JSON object per line)")
            # Exports made before a field was added lack it; it gets the value a migration gives.
            loaded[name].append({**db.ADDED_FIELDS.get(name, {}), **document})
    settings = load_settings()

    async def load() -> None:
        async with database(settings) as connected:
            for name in loaded:
                if not drop and await connected[name].count_documents({}, limit=1):
                    fail(f"{name} is not empty: import into an empty database, or pass --drop")
            for name, documents in loaded.items():
                if drop:
                    await connected[name].delete_many({})
                for start in range(0, len(documents), BATCH):
                    try:
                        await connected[name].insert_many(documents[start : start + BATCH])
                    except BulkWriteError as error:
                        first = error.details["writeErrors"][0]
                        fail(
                            f"{name}: document {start + first['index'] + 1} was refused "
                            f"({first['errmsg']}); {error.details['nInserted']} of this batch "
                            "were inserted"
                        )
                typer.echo(f"{name}: {len(documents)} documents imported")
            # The files may come from different moments (or from mongoexport): each post's
            # owner and counts are derived from what was imported, not taken on trust.
            posts, tallies = await derived.recount(connected)
            typer.echo(f"posts: {posts} owners or counts derived")
            typer.echo(f"tallies: {tallies} published count or drafts derived")

    run(load)


def recount() -> None:
    """Derive every post's owner and its vote and comment counts again from users, votes and
    comments (a repair)."""
    settings = load_settings()

    async def derive() -> None:
        async with database(settings) as connected:
            started = time.perf_counter()
            posts, tallies = await derived.recount(connected)
            seconds = time.perf_counter() - started
            typer.echo(
                f"posts: {posts} corrected, tallies: {tallies} corrected, in {seconds:.1f} s"
            )

    run(derive)


def indexes() -> None:
    """Compare the indexes the documents declare with those MongoDB has."""
    settings = load_settings()

    async def compare() -> None:
        missing = 0
        table = Table("collection", "keys", "state")
        async with db.connect(settings) as connected:
            for document in DOCUMENTS:
                name = collection_name(document)
                info = await connected[name].index_information()
                present = {str(dict(index["key"])) for index in info.values()}
                declared = {str(dict(keys)) for keys in db.declared_indexes(document)}
                declared.add(str({"_id": 1}))
                for keys in sorted(declared | present):
                    state = (
                        "ok"
                        if keys in declared & present
                        else "MISSING"
                        if keys in declared
                        else "extra (not declared)"
                    )
                    missing += state == "MISSING"
                    table.add_row(name, keys, state)
        Console().print(table)
        if missing:
            fail(f"{missing} declared index(es) missing; start the service to create them")

    run(compare)
