"""The `social-api` command: serve the API, and the admin tasks an operator runs by hand."""

import asyncio
import logging
import os
import random
import shutil
import signal
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import uvicorn
from beanie import Document, PydanticObjectId
from beanie.operators import In
from bson import json_util
from bson.errors import BSONError
from bson.json_util import JSONOptions
from pydantic import ValidationError
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError
from pymongo.results import UpdateResult
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from service import db, derived, logs, metrics, security
from service.config import ConfigurationError, Settings
from service.models import (
    DATA_DOCUMENTS,
    DOCUMENTS,
    OutboxMessage,
    Post,
    User,
    UserCreate,
    Vote,
)
from service.models.base import utc_now
from service.models.outbox import MailStatus
from service.models.post import PostOwner

if TYPE_CHECKING:
    from devstore import EmbeddedStore

app = typer.Typer(
    help="The Social API: serve it, and manage its MongoDB data.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)
logger = logging.getLogger("service.cli")

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


def fail(message: str) -> NoReturn:
    # Plain echo, not rich: one unwrapped line, and no markup read into the message.
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def load_settings() -> Settings:
    """The settings from the environment, or one line on what is wrong with them."""
    try:
        return Settings()
    except ValidationError as error:
        fail(
            "; ".join(f"{'.'.join(map(str, e['loc'])).upper()}: {e['msg']}" for e in error.errors())
        )


def run(task: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run an async command, turning the failures an operator can fix into one clear line."""
    try:
        asyncio.run(task())
    except ConfigurationError as error:
        fail(str(error))
    except ConnectionFailure as error:
        fail(f"cannot reach MongoDB: {error}")
    except OSError as error:
        fail(str(error))


@asynccontextmanager
async def database(settings: Settings) -> AsyncIterator[db.Database]:
    """The service's database, initialised as the service does it (validators, indexes)."""
    async with db.connect(settings) as connected:
        await db.initialise(connected)
        yield connected


def collection_name(document: type[Document]) -> str:
    name: str = document.Settings.name
    return name


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT")] = 8000,
    workers: Annotated[
        int, typer.Option(envvar="WEB_CONCURRENCY", min=1, help="Worker processes.")
    ] = 1,
) -> None:
    """Serve the HTTP API (what `make run` runs)."""
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    store: EmbeddedStore | None = None
    try:
        if settings.embedded and settings.embedded_store_url is None:
            # This process owns the store and hands its URL to the app through the
            # environment: with several workers they all share it, and a store that cannot
            # open (not installed, another process has it, its port is taken) is one line
            # here, not a startup traceback.
            store = db.start_embedded_store(settings)
            assert store.url is not None
            os.environ["EMBEDDED_STORE_URL"] = store.url
        # Refuse a missing or placeholder SECRET_KEY, or mail with nowhere to go, here, with a
        # plain message, rather than in a worker's startup traceback; on the embedded store
        # this creates the key file.
        settings.with_secret_key().check_mail()
    except (ConfigurationError, OSError) as error:
        if store is not None:
            store.stop()
        fail(str(error))
    # Several workers write their metrics to one directory, which /metrics sums; it must start
    # empty, so each run has its own (unless the operator names one).
    figures: Path | None = None
    if workers > 1 and settings.metrics_enabled and metrics.MULTIPROCESS_DIR not in os.environ:
        try:
            figures = Path(tempfile.mkdtemp(prefix="social-api-metrics-"))
        except OSError as error:
            if store is not None:
                store.stop()
            fail(
                f"no directory for the workers' metrics ({error}): give the temporary "
                f"directory a writable mount, set {metrics.MULTIPROCESS_DIR} to an empty "
                "writable directory, or set METRICS_ENABLED=false"
            )
        metrics.use_directory(figures)
    # uvicorn shuts down gracefully on SIGTERM (in-flight requests finish), then sends the
    # signal to itself again; by default that would kill this process before the `finally`
    # below closes the embedded store. Here it ends the process normally instead.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # the app configures logging (JSON lines or text) itself
            access_log=False,  # one line per request comes from the app, with its request id
            # The app reads X-Forwarded-For itself, from TRUSTED_PROXIES only; uvicorn's own
            # handling would trust 127.0.0.1 by default.
            proxy_headers=False,
        )
    finally:
        if store is not None:
            store.stop()
        if figures is not None:
            shutil.rmtree(figures, ignore_errors=True)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


@app.command("create-user")
def create_user(
    email: str,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="SOCIAL_API_PASSWORD",
            help="Asked for if not given (or taken from SOCIAL_API_PASSWORD).",
        ),
    ],
) -> None:
    """Register a user, with the same rules as POST /users/."""
    try:
        user_in = UserCreate(email=email, password=password)
    except ValidationError as error:
        fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors()))
    settings = load_settings()

    async def create() -> None:
        async with database(settings):
            hashed = await security.hash_password(user_in.password, settings)
            user = User(email=user_in.email, hashed_password=hashed)
            try:
                await user.insert()
            except DuplicateKeyError:
                fail(f"{user_in.email} is already registered")
            typer.echo(f"created user {user.id} <{user.email}>")

    run(create)


@app.command()
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


@app.command("export")
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


@app.command("import")
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


@app.command()
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


@app.command()
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


# What `outbox` lists (mail still to go, or given up on), then what it only counts.
OUTBOX_LISTED: tuple[MailStatus, ...] = ("pending", "sending", "failed")
OUTBOX_COUNTED: tuple[MailStatus, ...] = (*OUTBOX_LISTED, "sent", "skipped")


@app.command()
def outbox(
    retry: Annotated[
        bool,
        typer.Option(
            "--retry",
            help="Queue every failed message again: pending, due now, no attempts yet. Its "
            "last error is kept until the next attempt replaces it.",
        ),
    ] = False,
) -> None:
    """List the mail pending, being sent or failed, oldest first, and count the outbox by
    status (sent and skipped mail is kept a week); --retry queues the failed mail again."""
    settings = load_settings()

    async def show() -> None:
        async with database(settings):
            messages = (
                await OutboxMessage.find(In(OutboxMessage.status, list(OUTBOX_LISTED)))
                .sort("+created_at", "+_id")
                .to_list()
            )
            rows = await OutboxMessage.aggregate(
                [{"$group": {"_id": "$status", "count": {"$sum": 1}}}]
            ).to_list()
        counts = {row["_id"]: row["count"] for row in rows}
        summary = ", ".join(f"{counts.get(status, 0)} {status}" for status in OUTBOX_COUNTED)
        if not messages:
            typer.echo(f"nothing pending, sending or failed in the outbox ({summary})")
            return
        for message in messages:
            typer.echo(outbox_line(message))
        typer.echo(f"outbox: {summary}")

    async def queue_again() -> None:
        async with database(settings):
            # Failed is final for the senders, so none of them writes these meanwhile.
            result = await OutboxMessage.find(OutboxMessage.status == "failed").update_many(
                {"$set": {"status": "pending", "attempts": 0, "due_at": utc_now()}}
            )
        queued = result.modified_count if isinstance(result, UpdateResult) else 0
        if not queued:
            typer.echo("no failed mail to queue again")
            return
        typer.echo(
            f"queued {queued} failed message(s) again: a running API sends them within "
            f"MAIL_POLL_SECONDS ({settings.mail_poll_seconds:g} s)"
        )

    run(queue_again if retry else show)


def outbox_line(message: OutboxMessage) -> str:
    """One message as `outbox` lists it; the recipient and the error are made one line of
    printable text (an SMTP server's answer may hold line breaks or escape sequences)."""
    fields = [
        str(message.id),
        f"{message.status:<7}",
        f"{message.kind:<18}",
        printable(message.to),
        f"attempts {message.attempts}",
    ]
    if message.status == "pending":
        fields.append(f"due {timestamp(message.due_at)}")
    elif message.status == "sending":
        # A sending message's due_at is its sender's lease: after it, another may claim it.
        fields.append(f"claimed until {timestamp(message.due_at)}")
    if message.last_error:
        fields.append(f"last error: {printable(message.last_error)}")
    return "  ".join(fields)


def printable(text: str) -> str:
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def timestamp(moment: datetime) -> str:
    """UTC to the second; a naive datetime is taken as UTC, as the service stores them."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
