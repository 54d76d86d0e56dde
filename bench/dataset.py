"""The benchmark's database and users: the store, the tokens, and the (voter, post) pairs that
keep every vote new.
"""

import asyncio
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pymongo
from pymongo.database import Database as MongoDatabase
from pymongo.errors import PyMongoError

from bench import report
from bench.processes import HarnessError, Processes, read_line
from service.config import Settings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DEMO_PASSWORD = "demo-password"
VOTER_PASSWORD = "bench voter password"
HTTP_TIMEOUT_S = 30.0

type Say = Callable[[str], None]


@dataclass(frozen=True)
class Database:
    url: str
    name: str
    description: str
    external: bool  # MONGODB_URL's server: dropped at the end unless --keep


def open_database(processes: Processes, data_dir: Path) -> Database:
    """MONGODB_URL's server (its database must be empty), or the embedded store on
    `data_dir` (SQLite, the default engine) in a process of its own."""
    url = os.environ.get("MONGODB_URL", "").strip()
    if url:
        name = os.environ.get("MONGODB_DB", "").strip() or "bench"
        with pymongo.MongoClient[dict[str, Any]](url, serverSelectionTimeoutMS=10_000) as client:
            database = client[name]
            filled = [n for n in database.list_collection_names() if database[n].find_one()]
            if filled:
                raise HarnessError(
                    f"database {name!r} at MONGODB_URL is not empty ({', '.join(sorted(filled))}"
                    "): the benchmark seeds its own data; set MONGODB_DB to a new database"
                )
            try:
                version = client.server_info().get("version", "of unknown version")
            except PyMongoError:  # a server without buildInfo
                version = "of unknown version"
        return Database(url, name, f"MongoDB {version} at MONGODB_URL", external=True)
    command = [sys.executable, str(ROOT / "bench" / "store.py"), "--data-dir", str(data_dir)]
    store = processes.start("store", command, os.environ.copy(), database=True, pipe_stdout=True)
    try:
        url = read_line(store, 60)
    except HarnessError as error:
        raise HarnessError(f"the embedded store did not start: {error}") from None
    if not url.startswith("mongodb://"):
        raise HarnessError(f"the embedded store printed {url!r}, not a URL")
    engine = f"mongoeco {report.package_version('mongoeco')}"
    description = f"the development store ({engine}, SQLite) in a process of its own"
    return Database(url, "social_api", description, external=False)


def drop(database: Database) -> None:
    """Drop MONGODB_URL's benchmark database (it was empty when the run began)."""
    try:
        with pymongo.MongoClient[dict[str, Any]](database.url) as client:
            client.drop_database(database.name)
    except PyMongoError as error:
        print(f"could not drop the database {database.name!r}: {error}", file=sys.stderr)
        return
    print(f"dropped the benchmark's database {database.name!r}")


def service_env(database: Database, secret_key: str, smtp_port: int) -> dict[str, str]:
    """The environment of every server and CLI run: each service setting given explicitly
    (the defaults but for the database, the key and the SMTP server, which a MongoDB of its
    own requires: the harness's sink on loopback), none inherited."""
    settings = {name.upper() for name in Settings.model_fields}
    inherited = {"HOST", "PORT", "WEB_CONCURRENCY", *settings}
    env = {k: v for k, v in os.environ.items() if k.upper() not in inherited}
    env.update(
        MONGODB_URL=database.url,
        MONGODB_DB=database.name,
        SECRET_KEY=secret_key,
        BCRYPT_ROUNDS="12",
        ACCESS_TOKEN_EXPIRE_MINUTES="30",
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(smtp_port),
        SMTP_SECURITY="none",
        PYTHONPATH=str(ROOT),
    )
    return env


class MailSink:
    """An SMTP server's handler (aiosmtpd) that takes every message and keeps none: the
    registrations and password changes the benchmark makes send mail."""

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 Message accepted"


def published_posts(database: MongoDatabase[dict[str, Any]]) -> list[str]:
    """Published posts, newest first: anyone may read and vote on them."""
    rows = database["posts"].find({"published": True}, {"_id": 1})
    return [str(row["_id"]) for row in rows.sort([("created_at", -1), ("_id", -1)])]


def client(base: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base, timeout=HTTP_TIMEOUT_S, trust_env=False)


async def log_in(http: httpx.AsyncClient, email: str, password: str) -> str:
    """POST /login with the OAuth2 form; the access token."""
    response = await http.post("/login", data={"username": email, "password": password})
    if response.status_code != 200:
        raise HarnessError(f"login of {email}: {response.status_code} {response.text[:300]}")
    token: str = response.json()["access_token"]
    return token


async def register(http: httpx.AsyncClient, email: str) -> str:
    """A new user (POST /users/), logged in: its access token."""
    response = await http.post("/users/", json={"email": email, "password": VOTER_PASSWORD})
    if response.status_code != 201:
        raise HarnessError(f"register {email}: {response.status_code} {response.text[:300]}")
    return await log_in(http, email, VOTER_PASSWORD)


async def _register_all(bases: list[str], emails: list[str]) -> list[str]:
    """Register the users through the servers in turn: each hashes in its own pool."""
    clients = [client(base) for base in bases]
    try:
        registrations = (
            register(clients[n % len(clients)], email) for n, email in enumerate(emails)
        )
        return list(await asyncio.gather(*registrations))
    finally:
        for http in clients:
            await http.aclose()


def demo_token(base: str, number: int) -> str:
    """An access token of demo user `number`."""

    async def one() -> str:
        async with client(base) as http:
            return await log_in(http, f"demo{number}@example.com", DEMO_PASSWORD)

    return asyncio.run(one())


class Voters:
    """Users registered for the votes, and the published posts, none of which they have voted
    on: (voter, post) pairs, numbered in order and handed out once each."""

    def __init__(self, bases: list[str], post_ids: list[str]) -> None:
        self.bases = bases  # servers to register through (same database)
        self.post_ids = post_ids
        self.tokens: list[str] = []
        self.used = 0

    @property
    def remaining(self) -> int:
        return len(self.tokens) * len(self.post_ids) - self.used

    def ensure(self, pairs: int) -> None:
        """Register (and log in) enough new voters for `pairs` more votes."""
        missing = -(-max(0, pairs - self.remaining) // len(self.post_ids))
        if missing:
            first = len(self.tokens) + 1
            emails = [f"bench-voter-{n}@example.com" for n in range(first, first + missing)]
            self.tokens += asyncio.run(_register_all(self.bases, emails))

    def pair(self, number: int) -> tuple[int, str]:
        """Pair `number` (from 0): its voter's index and the post id."""
        voter, post = divmod(number, len(self.post_ids))
        return voter, self.post_ids[post]

    def write_pairs(self, path: Path, count: int) -> None:
        """The next `count` pairs (at most those left) as the vote script reads them: one
        `<voter number from 1> <post id>` per line."""
        end = self.used + min(count, self.remaining)
        lines = (f"{voter + 1} {post}" for voter, post in map(self.pair, range(self.used, end)))
        path.write_text("\n".join(lines) + "\n")

    def take(self) -> tuple[str, str]:
        """One pair for a single request: the voter's token and the post id."""
        if not self.remaining:
            raise HarnessError("no vote pairs left")
        voter, post = self.pair(self.used)
        self.used += 1
        return self.tokens[voter], post
