"""The embedded memory engine's reads, before and after service/embedded_engine.py.

Seeds 1,000 users, 10,000 posts and 50,000 votes, with the indexes the service declares, into
two mongoeco wire servers (memory engine) on loopback, each in a process of its own (as the
embedded store is a thread of its own, apart from the client): one with the engine the
service used before (`ScanFreeMemoryEngine`), one with `IndexedMemoryEngine`. Times the
feed's queries and some writes through PyMongo, alternating between the two so that other
load on the machine hits both alike. Prints medians in ms, and whether both answered alike.

    .venv/bin/python bench/embedded_engine.py [--posts 10000] [--runs 15]
"""

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer
from pymongo import MongoClient

from service.embedded_engine import IndexedMemoryEngine, ScanFreeMemoryEngine

# The words of `social-api seed`, and a few with accents: content that is not all ASCII
# takes the regular expression itself in a case-insensitive search.
WORDS = [
    *("mongo", "fastapi", "beanie", "python", "async", "index", "vote", "post", "draft"),
    *("query", "shard", "replica", "cursor", "schema", "token", "bcrypt", "cluster", "atlas"),
    *("compass", "aggregate", "lookup"),
]
ACCENTED = ["émigré", "naïve", "café"]
NEEDLE = "needle"
FEED_ORDER = [("created_at", -1), ("_id", -1)]


ENGINES = {"before": ScanFreeMemoryEngine, "after": IndexedMemoryEngine}


async def serve(name: str) -> None:
    """Serve one engine until stdin closes; then print its counters, if it has any."""
    engine = ENGINES[name]()
    server = AsyncMongoEcoProxyServer(
        engine=engine,
        host="127.0.0.1",
        port=0,
        mongodb_dialect="8.0",
        pymongo_profile="auto-installed",
    )
    print((await server.start()).uri, flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await server.close()
    print(json.dumps(dict(getattr(engine, "index_stats", {}))), flush=True)


@contextmanager
def server(name: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    command = [sys.executable, __file__, "--serve", name]
    with subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as process:
        assert process.stdout is not None and process.stdin is not None
        try:
            yield process.stdout.readline().strip(), process
        finally:
            process.stdin.close()
            process.wait(30)


def oid(rng: random.Random) -> ObjectId:
    return ObjectId(rng.randbytes(12))


def seed(client: MongoClient[dict[str, Any]], posts: int, rng: random.Random) -> dict[str, Any]:
    """1 user per 10 posts, 5 votes per post, 1% of titles with the searched word."""
    db = client["bench"]
    db.users.create_index("email", unique=True)
    db.posts.create_index([("published", 1), ("created_at", -1), ("_id", -1)])
    db.posts.create_index([("owner_id", 1), ("created_at", -1), ("_id", -1)])
    db.votes.create_index([("post_id", 1), ("user_id", 1)], unique=True)
    db.votes.create_index("user_id")
    # Ids from the seeded generator: both engines get the same data, so the same answers.
    users = [{"_id": oid(rng), "email": f"demo{n}@example.com"} for n in range(posts // 10)]
    db.users.insert_many(users)
    now = datetime(2026, 11, 1, tzinfo=UTC)
    documents = []
    for number in range(posts):
        title = [rng.choice(WORDS) for _ in range(rng.randint(2, 6))]
        if number % 100 == 0:  # 1% of titles hold the searched word
            title.insert(rng.randrange(len(title) + 1), NEEDLE.capitalize())
        documents.append(
            {
                "_id": oid(rng),
                "title": " ".join(title),
                "content": " ".join(
                    rng.choice(ACCENTED if number % 10 == 0 else WORDS)
                    for _ in range(rng.randint(10, 60))
                ),
                "published": rng.random() < 0.9,
                "owner_id": rng.choice(users)["_id"],
                "created_at": now - timedelta(seconds=rng.randint(0, 30 * 86_400)),
            }
        )
    for start in range(0, posts, 1000):
        db.posts.insert_many(documents[start : start + 1000])
    pairs = rng.sample(range(len(users) * posts), posts * 5)
    votes = [
        {"post_id": documents[i // len(users)]["_id"], "user_id": users[i % len(users)]["_id"]}
        for i in pairs
    ]
    for start in range(0, len(votes), 1000):
        db.votes.insert_many(votes[start : start + 1000])
    return {"viewer": users[0]["_id"], "post": documents[0]["_id"], "posts": documents}


def queries(db: Any, data: dict[str, Any], rng: random.Random) -> dict[str, Callable[[], object]]:
    """What is timed: the feed's reads, as the service and PyMongo send them, and writes."""
    feed = {"$or": [{"published": True}, {"owner_id": data["viewer"]}]}
    pattern = {"$regex": NEEDLE, "$options": "i"}
    search = {"$and": [feed, {"$or": [{"title": pattern}, {"content": pattern}]}]}
    sort = dict(FEED_ORDER)
    facet = {"total": [{"$count": "n"}], "items": [{"$skip": 0}, {"$limit": 10}]}

    def find(skip: int, limit: int) -> Callable[[], object]:
        return lambda: [
            d["_id"] for d in db.posts.find(feed).sort(FEED_ORDER).skip(skip).limit(limit)
        ]

    def aggregate(skip: int, limit: int) -> Callable[[], object]:
        pipeline = [{"$match": feed}, {"$sort": sort}, {"$skip": skip}, {"$limit": limit}]
        return lambda: [d["_id"] for d in db.posts.aggregate(pipeline)]

    def searched() -> object:
        pipeline = [{"$match": search}, {"$sort": sort}, {"$facet": facet}]
        return [(r["total"], [d["_id"] for d in r["items"]]) for r in db.posts.aggregate(pipeline)]

    def votes() -> object:
        return [(d["post_id"], d["user_id"]) for d in db.votes.find({"post_id": data["post"]})]

    numbers = iter(range(10**9))

    def insert_post() -> object:
        post = {
            "title": f"new {next(numbers)}",
            "content": "c",
            "published": True,
            "owner_id": data["viewer"],
            "created_at": datetime.now(UTC),
        }
        return db.posts.insert_one(post).acknowledged

    def insert_vote() -> object:
        vote = {"post_id": rng.choice(data["posts"])["_id"], "user_id": ObjectId()}
        return db.votes.insert_one(vote).acknowledged

    def update_post() -> object:
        change = {"created_at": datetime.now(UTC), "published": rng.random() < 0.9}
        target = {"_id": rng.choice(data["posts"])["_id"]}
        return db.posts.update_one(target, {"$set": change}).modified_count

    return {
        "find $or feed, limit 10": find(0, 10),
        "find $or feed, limit 100": find(0, 100),
        "find $or feed, skip 5000 limit 10": find(5000, 10),
        "aggregate feed, limit 10": aggregate(0, 10),
        "aggregate feed, limit 100": aggregate(0, 100),
        "aggregate feed, skip 5000 limit 10": aggregate(5000, 10),
        "search $regex + $facet count/page": searched,
        "count_documents published": lambda: db.posts.count_documents({"published": True}),
        "count command published": lambda: db.command("count", "posts", query=feed)["n"],
        "votes find post_id": votes,
        "insert_one post": insert_post,
        "insert_one vote": insert_vote,
        "update_one post (created_at, published)": update_post,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=15, help="runs of each read (writes: x10)")
    parser.add_argument("--serve", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve))
        return
    with server("before") as (old, _), server("after") as (new, new_process):
        clients = {
            "before": MongoClient(old, tz_aware=True),
            "after": MongoClient(new, tz_aware=True),
        }
        timed: dict[str, dict[str, Callable[[], object]]] = {}
        for name, client in clients.items():
            started = time.perf_counter()
            data = seed(client, args.posts, random.Random(7))  # the same data in both
            print(f"{name}: seeded in {time.perf_counter() - started:.1f} s", flush=True)
            timed[name] = queries(client["bench"], data, random.Random(8))
        print(f"\n{'median ms':<42}  {'before':>8}  {'after':>8}  same answer", flush=True)
        for label in timed["before"]:
            runs = args.runs * (10 if "_one" in label else 1)
            answers = {name: timed[name][label]() for name in timed}  # also builds copies
            times: dict[str, list[float]] = {name: [] for name in timed}
            for _ in range(runs):  # alternating, so that load on the machine hits both
                for name in timed:
                    started = time.perf_counter()
                    timed[name][label]()
                    times[name].append((time.perf_counter() - started) * 1000)
            was, now = (statistics.median(times[name]) for name in timed)
            same = "yes" if answers["before"] == answers["after"] else "NO"
            print(f"{label:<42}  {was:8.2f}  {now:8.2f}  {same}", flush=True)
        for client in clients.values():
            client.close()
        assert new_process.stdin is not None and new_process.stdout is not None
        new_process.stdin.close()
        print(f"\nafter's counters: {new_process.stdout.read().strip()}")


if __name__ == "__main__":
    main()
