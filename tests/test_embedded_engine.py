"""The embedded memory engine's index reads (service/embedded_engine.py) against mongoeco's own.

Two mongoeco wire servers, one running the stock `MemoryEngine` and one `IndexedMemoryEngine`,
get the same writes through PyMongo, as the service sends them; every read, generated at
random among the shapes the fast paths take (and some they must refuse), must give both the
same answer in the same order. Other tests check that the fast paths do run, that writes
keep the ordered index copies in step without rebuilding them, and the plain-Python matcher
document by document.
"""

import asyncio
import random
import re
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId
from mongoeco import AsyncMongoClient as EmulatorClient
from mongoeco.compat import MONGODB_DIALECT_80
from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.semantic_core import compile_find_semantics
from mongoeco.wire.proxy import AsyncMongoEcoProxyServer
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import BulkWriteError, PyMongoError, WriteError

from service.embedded_engine import (
    _LINEAGE,
    IndexedMemoryEngine,
    _folding,
    _literal,
    _NativeMatcher,
    batched_inserts,
    install_batched_inserts,
    install_union_pushdown,
    install_validator_cache,
    union_filters,
    union_pushdowns,
    validator_cache_hits,
)

type Db = Database[dict[str, Any]]
FEED_ORDER = [("created_at", -1), ("_id", -1)]
POST_INDEXES = [
    [("published", 1), ("created_at", -1), ("_id", -1)],
    [("owner_id", 1), ("created_at", -1), ("_id", -1)],
    [("tag", 1), ("created_at", 1), ("_id", 1)],
]
# Regex metacharacters, accents, and letters Python's IGNORECASE folds across scripts:
# the Kelvin sign and the long s match k and s, dotless and dotted i do not match I and i.
WORDS = [
    "needle", "Needle", "NEEDLE", "hay", "a.b", "a+b", "(x)", "[y]", "c:d", "q?", "star*",
    "back\\slash", "naïve", "ÉCOLE", "école", "\u017ftraße", "\u212aelvin", "kelvin", "İstanbul",
    "\u0131i", "Straße", "日本", "x",
]  # fmt: skip
SEARCHED = ["needle", "a.b", "(x)", "école", "STRASSE", "straße", "kelvin", "i", "s", "x", ""]


class Server:
    """A mongoeco wire server for one engine, on its own thread and loop, as the service's
    embedded store runs it."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.url = ""
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        server = AsyncMongoEcoProxyServer(
            engine=self.engine,
            host="127.0.0.1",
            port=0,
            mongodb_dialect="8.0",
            pymongo_profile="auto-installed",
        )
        self.url = (await server.start()).uri
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await server.close()

    def start(self) -> str:
        self._thread.start()
        assert self._ready.wait(30)
        return self.url

    def stop(self) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)


class Twins:
    """The same database on both servers: writes go to both, reads must agree."""

    def __init__(self, stock: Db, ours: Db, engine: IndexedMemoryEngine) -> None:
        self.stock, self.ours, self.engine = stock, ours, engine

    def write(self, operation: Callable[[Db], Any]) -> None:
        assert _outcome(operation, self.stock) == _outcome(operation, self.ours)

    def read(self, operation: Callable[[Db], Any], label: str) -> Any:
        expected = operation(self.stock)
        assert operation(self.ours) == expected, label
        return expected


def _outcome(operation: Callable[[Db], Any], db: Db) -> Any:
    try:
        result = operation(db)
    except BulkWriteError as error:
        details = error.details
        return "BulkWriteError", details["nInserted"], [e["index"] for e in details["writeErrors"]]
    except PyMongoError as error:
        return type(error).__name__
    for attribute in ("inserted_id", "inserted_ids", "deleted_count"):
        if hasattr(result, attribute):
            return getattr(result, attribute)
    if hasattr(result, "matched_count"):
        return result.matched_count, result.modified_count
    return result


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[MongoClient[dict[str, Any]], MongoClient[dict[str, Any]], Any]]:
    engine = IndexedMemoryEngine()
    stock_server, our_server = Server(MemoryEngine()), Server(engine)
    stock = MongoClient(stock_server.start(), tz_aware=True)
    ours = MongoClient(our_server.start(), tz_aware=True)
    yield stock, ours, engine
    stock.close()
    ours.close()
    stock_server.stop()
    our_server.stop()


def _twins(servers: Any, name: str) -> Twins:
    stock, ours, engine = servers
    twins = Twins(stock[name], ours[name], engine)
    for db in (twins.stock, twins.ours):
        for keys in POST_INDEXES:
            db.posts.create_index(keys)
        db.votes.create_index([("post_id", 1), ("user_id", 1)], unique=True)
        db.votes.create_index("user_id")
    return twins


class World:
    """Random posts and votes, clean or with values that must send reads to the stock path."""

    def __init__(self, rng: random.Random, *, messy: bool) -> None:
        self.rng = rng
        self.messy = messy
        self.owners = [self.oid() for _ in range(4)]
        base = datetime(2026, 3, 1, 12, tzinfo=UTC)
        # Few distinct times: many posts tie on created_at and only _id orders them.
        self.times = [base + timedelta(minutes=rng.randrange(30), milliseconds=ms) for ms in (0, 7)]
        self.times += [base + timedelta(seconds=s) for s in range(6)]
        self.ids: list[ObjectId] = []

    def oid(self) -> ObjectId:
        return ObjectId(self.rng.randbytes(12))

    def text(self, words: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(1, words)))

    def post(self) -> dict[str, Any]:
        rng = self.rng
        post: dict[str, Any] = {
            "_id": self.oid(),
            "title": self.text(4),
            "content": self.text(12),
            "published": rng.random() < 0.7,
            "owner_id": rng.choice(self.owners),
            "created_at": rng.choice(self.times),
            "tag": rng.choice(["a", "b", "B", "é"]),
        }
        if self.messy and rng.random() < 0.15:
            name = rng.choice(["published", "owner_id", "created_at", "title", "tag"])
            post.update(self.odd_value(name))
            if post.get(name, 0) is None or rng.random() < 0.3:
                post.pop(name, None)  # missing rather than null
        self.ids.append(post["_id"])
        return post

    def odd_value(self, name: str) -> dict[str, Any]:
        """A value of another kind than the field usually holds: an array, null, a string,
        a number, a document."""
        usual = {
            "published": True,
            "owner_id": self.rng.choice(self.owners),
            "created_at": self.rng.choice(self.times),
            "title": "needle",
            "tag": "a",
        }[name]
        odd = [[usual], None, str(usual), 1, {"v": usual}, [usual, usual], []]
        return {name: self.rng.choice(odd)}

    def some_id(self) -> ObjectId:
        return self.rng.choice(self.ids) if self.ids else self.oid()

    def write(self) -> Callable[[Db], Any]:
        rng = self.rng
        choice = rng.randrange(12)
        target = self.some_id()
        if choice < 3:
            post = self.post()
            return lambda db: db.posts.insert_one(dict(post))
        if choice == 3:
            batch = [self.post() for _ in range(rng.randint(1, 4))]
            if rng.random() < 0.4:  # a duplicate key: the batch stops there, in both
                batch.insert(rng.randrange(len(batch) + 1), {"_id": target})
            return lambda db: db.posts.insert_many([dict(p) for p in batch])
        if choice == 4:
            change = {"created_at": rng.choice(self.times), "published": rng.random() < 0.5}
            return lambda db: db.posts.update_one({"_id": target}, {"$set": change})
        if choice == 5:
            owner, published = rng.choice(self.owners), rng.random() < 0.5
            return lambda db: db.posts.update_many(
                {"owner_id": owner}, {"$set": {"published": published}}
            )
        if choice == 6:
            title = self.text(3)
            return lambda db: db.posts.update_one({"_id": target}, {"$set": {"title": title}})
        if choice == 7:
            return lambda db: db.posts.delete_one({"_id": target})
        if choice == 8:
            tag = rng.choice(["a", "b"])
            return lambda db: db.posts.delete_many({"tag": tag, "published": False})
        if choice == 9 and self.messy:
            odd = self.odd_value(rng.choice(["published", "owner_id", "created_at", "title"]))
            return lambda db: db.posts.update_one({"_id": target}, {"$set": odd})
        if choice == 9:
            replacement = {k: v for k, v in self.post().items() if k != "_id"}
            self.ids.pop()
            return lambda db: db.posts.replace_one({"_id": target}, replacement)
        if choice == 10:
            vote = {"_id": self.oid(), "post_id": target, "user_id": rng.choice(self.owners)}
            return lambda db: db.votes.insert_one(dict(vote))
        return lambda db: db.votes.delete_many({"post_id": target})

    def filter(self) -> dict[str, Any]:
        rng = self.rng
        viewer = rng.choice(self.owners)
        feed = {"$or": [{"published": True}, {"owner_id": viewer}]}
        word = re.escape(rng.choice(SEARCHED))
        pattern = {"$regex": word, "$options": rng.choice(["i", "i", ""])}
        return rng.choice(
            [
                feed,
                feed,
                {"$and": [feed, {"$or": [{"title": pattern}, {"content": pattern}]}]},
                {"$and": [feed, {"title": pattern}]},
                {"owner_id": viewer},
                {"owner_id": viewer, "published": True},
                {"published": False},
                {"published": True, "title": pattern},
                {"tag": rng.choice(["a", "B", "é", "z"])},
                {"$or": [{"owner_id": viewer}, {"owner_id": rng.choice(self.owners)}]},
                {"$or": [{"published": True}, {"title": "x"}]},  # a branch no index holds
                {"$or": [{"published": True}, {"owner_id": viewer}], "tag": "a"},
                {"owner_id": {"$in": [viewer]}},
                # As a login counts attempts: an $in of keys, after a time.
                {
                    "owner_id": {"$in": [viewer, rng.choice(self.owners)]},
                    "created_at": {"$gt": rng.choice(self.times)},
                },
                {"tag": {"$in": ["a", "B", 1]}},  # mixed kinds: the engine's own matcher
                {"published": {"$in": [True, 1]}, "tag": {"$lte": "b"}},
                {"title": {"$gt": "n"}, "created_at": {"$lt": rng.choice(self.times)}},
                {"created_at": {"$gte": rng.choice(self.times)}, "published": True},
                {"published": 1},  # a number never equals a boolean
                {"owner_id": str(viewer)},
                {"title": {"$regex": "^(x|hay)", "$options": "i"}},
                {},
            ]
        )

    def sort(self) -> list[tuple[str, int]] | None:
        return self.rng.choice(
            [
                FEED_ORDER,
                FEED_ORDER,
                [("created_at", 1), ("_id", 1)],
                [("created_at", -1)],  # ties: only the stock sort's own order breaks them
                [("created_at", -1), ("_id", 1)],
                [("title", 1), ("_id", 1)],
                [("tag", 1), ("_id", -1)],
                None,
            ]
        )

    def read(self) -> tuple[Callable[[Db], Any], str]:
        rng = self.rng
        query, sort = self.filter(), self.sort()
        skip = rng.choice([0, 0, 0, 1, 3, 40, 10_000])
        limit = rng.choice([None, 1, 2, 10, 100])
        kind = rng.randrange(7)
        label = f"{kind} {query} sort={sort} skip={skip} limit={limit}"
        if kind == 0 or (kind == 1 and sort is None):
            return lambda db: list(_find(db, query, sort, skip, limit)), label
        if kind == 1:
            pipeline: list[dict[str, Any]] = [{"$match": query}, {"$sort": dict(sort or [])}]
            pipeline += [{"$skip": skip}] + ([{"$limit": limit}] if limit else [])
            return lambda db: list(db.posts.aggregate(pipeline)), label
        if kind == 2 and sort is not None:
            facet = {"total": [{"$count": "n"}], "items": [{"$skip": skip}, {"$limit": 10}]}
            pipeline = [{"$match": query}, {"$sort": dict(sort)}, {"$facet": facet}]
            return lambda db: list(db.posts.aggregate(pipeline)), label
        if kind == 3:
            options = {"skip": skip, **({"limit": limit} if limit else {})}
            return lambda db: db.posts.count_documents(query, **options), label
        if kind == 4:  # the count command: the engine's count_find_semantics
            return lambda db: db.command("count", "posts", query=query)["n"], label
        if kind == 5:
            projection = {"title": 1, "created_at": 1}
            return lambda db: list(_find(db, query, sort, skip, limit, projection)), label
        post, user = self.some_id(), rng.choice(self.owners)
        votes = rng.choice(
            [{"post_id": post}, {"user_id": user}, {"post_id": post, "user_id": user}]
        )
        return lambda db: list(db.votes.find(votes).skip(skip % 7)), f"votes {votes}"


def _find(
    db: Db,
    query: dict[str, Any],
    sort: list[tuple[str, int]] | None,
    skip: int,
    limit: int | None,
    projection: dict[str, int] | None = None,
) -> Any:
    cursor = db.posts.find(query, projection).skip(skip)
    if sort:
        cursor = cursor.sort(sort)
    return cursor.limit(limit) if limit else cursor


@pytest.mark.parametrize(("seed", "messy"), [(1, False), (2, False), (3, True), (4, True)])
def test_index_reads_answer_as_mongoeco_does(servers: Any, seed: int, messy: bool) -> None:
    rng = random.Random(seed)
    world = World(rng, messy=messy)
    twins = _twins(servers, f"differential_{seed}")
    stats = twins.engine.index_stats
    text_reads = stats["text_finds"] + stats["text_sorts"] + stats["text_counts"]
    posts = [world.post() for _ in range(120)]
    twins.write(lambda db: db.posts.insert_many([dict(p) for p in posts]))
    for _ in range(70):
        for _ in range(rng.randint(0, 3)):
            twins.write(world.write())
        for _ in range(4):
            twins.read(*world.read())
    # The searches among those reads went through the text columns, following the writes.
    assert stats["text_finds"] + stats["text_sorts"] + stats["text_counts"] > text_reads


def _seeded(servers: Any, name: str, seed: int, count: int) -> tuple[World, Twins, list[Any]]:
    """A clean world's `count` posts, written to both servers' database `name`."""
    world = World(random.Random(seed), messy=False)
    twins = _twins(servers, name)
    posts = [world.post() for _ in range(count)]
    twins.write(lambda db: db.posts.insert_many([dict(p) for p in posts]))
    return world, twins, posts


def test_the_fast_paths_run(servers: Any) -> None:
    """Timing-free evidence: which path answered, and how many documents the matcher saw."""
    world, twins, posts = _seeded(servers, "fast_paths", 11, 600)
    viewer = world.owners[0]
    feed = {"$or": [{"published": True}, {"owner_id": viewer}]}
    engine = twins.engine
    before = engine.index_stats.copy()

    def seen(operation: Callable[[Db], Any], path: str) -> int:
        """Run the read on both; return how many documents our matcher saw."""
        engine.index_stats.pop(path, None)
        matched = engine.index_stats["matched_documents"]
        twins.read(operation, path)
        assert engine.index_stats[path] == 1, dict(engine.index_stats)
        return engine.index_stats["matched_documents"] - matched

    def page(db: Db) -> list[Any]:
        return list(db.posts.find(feed).sort(FEED_ORDER).limit(10))

    def deep(db: Db) -> list[Any]:
        return list(db.posts.find(feed).sort(FEED_ORDER).skip(300).limit(5))

    def aggregated(db: Db) -> list[Any]:
        pipeline = [{"$match": feed}, {"$sort": dict(FEED_ORDER)}, {"$skip": 20}, {"$limit": 10}]
        return list(db.posts.aggregate(pipeline))

    def count(db: Db) -> int:
        return int(db.command("count", "posts", query=feed)["n"])

    def drafts(db: Db) -> list[Any]:
        return list(db.posts.find({"owner_id": viewer, "published": False}))

    assert seen(page, "ordered_finds") == 10  # exact branches: each candidate matches
    assert seen(deep, "ordered_finds") == 5  # the skipped ones are passed over in the index
    assert seen(aggregated, "ordered_finds") == 10
    assert seen(count, "index_counts") == 0  # counted from the index alone
    # The smaller of the two ranges (one owner's posts, not every draft), then the filter.
    assert seen(drafts, "index_finds") <= 600 // 4
    pattern = {"$regex": "needle", "$options": "i"}
    search = {"$and": [feed, {"$or": [{"title": pattern}, {"content": pattern}]}]}
    facet = {"total": [{"$count": "n"}], "items": [{"$skip": 0}, {"$limit": 10}]}
    searched = [{"$match": search}, {"$sort": dict(FEED_ORDER)}, {"$facet": facet}]

    # The search reads only the posts whose title or content holds the word, in any case.
    def holds(text: str) -> bool:
        return re.search("needle", text, re.IGNORECASE) is not None

    candidates = sum(holds(p["title"]) or holds(p["content"]) for p in posts)
    assert 0 < candidates < 600
    assert seen(lambda db: list(db.posts.aggregate(searched)), "text_sorts") == candidates
    assert engine.index_stats["matcher_fallbacks"] == before["matcher_fallbacks"]
    assert engine.index_stats["stock_finds"] == before["stock_finds"]

    # Writes move the ordered copies along: no rebuild, and the newest post comes first.
    rebuilds = engine.index_stats["rebuilds"]
    newest = {**world.post(), "published": True, "created_at": datetime(2027, 1, 1, tzinfo=UTC)}
    twins.write(lambda db: db.posts.insert_one(dict(newest)))
    hidden = {"published": False, "created_at": datetime(2027, 1, 2, tzinfo=UTC)}
    twins.write(lambda db: db.posts.update_one({"_id": world.ids[5]}, {"$set": hidden}))
    twins.write(lambda db: db.posts.delete_one({"_id": world.ids[7]}))
    first = twins.read(page, "after writes")
    assert first[0]["_id"] == newest["_id"]
    assert engine.index_stats["rebuilds"] == rebuilds

    # A batch refused half-way (a duplicate key): the copies keep what mongoeco keeps.
    latest = {"published": True, "created_at": datetime(2027, 1, 3, tzinfo=UTC)}
    batch = [{**world.post(), **latest}, {"_id": world.ids[0]}]
    twins.write(lambda db: db.posts.insert_many([dict(p) for p in batch]))
    assert twins.read(page, "after a failed write")[0]["_id"] == batch[0]["_id"]
    twins.read(count, "count after a failed write")
    assert engine.index_stats["rebuilds"] == rebuilds


def _search(word: str, options: str = "i") -> dict[str, Any]:
    """The service's search filter (service/models/post.py), without the feed's part."""
    pattern = {"$regex": re.escape(word), "$options": options}
    return {"$or": [{"title": pattern}, {"content": pattern}]}


def test_text_columns_follow_writes_without_rebuilding(servers: Any) -> None:
    """Each write changes only its own documents' segments: searches after inserts,
    updates into and out of a match, into other kinds of value, deletes and a batch refused
    half-way answer as mongoeco does, from the columns built once."""
    world, twins, _ = _seeded(servers, "text_columns", 21, 300)
    engine = twins.engine
    feed = {"$or": [{"published": True}, {"owner_id": world.owners[0]}]}
    facet = {"total": [{"$count": "n"}], "items": [{"$skip": 0}, {"$limit": 10}]}

    def searched(word: str) -> Callable[[Db], Any]:
        match = {"$and": [feed, _search(word)]}
        pipeline = [{"$match": match}, {"$sort": dict(FEED_ORDER)}, {"$facet": facet}]
        return lambda db: list(db.posts.aggregate(pipeline))

    def everything(label: str) -> None:
        for word in ("needle", "Zephyrine", "hay needle"):
            twins.read(searched(word), f"{label}: {word}")
            twins.read(lambda db, w=word: db.posts.count_documents(_search(w, "")), label)
            twins.read(lambda db, w=word: list(db.posts.find(_search(w)).limit(3)), label)

    everything("before writes")
    builds = engine.index_stats["text_builds"]
    assert builds >= 2  # the title's column and the content's, built by the first search
    newest = {**world.post(), "title": "zephyrine", "published": True}
    newest["created_at"] = datetime(2027, 1, 1, tzinfo=UTC)
    target, batch = world.ids[4], [{**world.post(), "title": "zephyrine"}, {"_id": world.ids[4]}]
    writes: list[Callable[[Db], Any]] = [
        lambda db: db.posts.insert_one(dict(newest)),
        lambda db: db.posts.update_one({"_id": target}, {"$set": {"title": "ZEPHYRINE x"}}),
        lambda db: db.posts.update_one({"_id": target}, {"$set": {"content": "Hay Needle"}}),
        lambda db: db.posts.update_one({"_id": target}, {"$set": {"title": "naïve zephyrine"}}),
        lambda db: db.posts.update_one({"_id": target}, {"$set": {"title": ["zephyrine"]}}),
        lambda db: db.posts.update_one({"_id": target}, {"$unset": {"content": ""}}),
        lambda db: db.posts.update_many({"tag": "b"}, {"$set": {"content": "hay"}}),
        lambda db: db.posts.delete_one({"_id": newest["_id"]}),
        lambda db: db.posts.insert_many([dict(post) for post in batch]),  # refused half-way
        lambda db: db.posts.replace_one({"_id": world.ids[9]}, {"title": "zephyrine needle"}),
    ]
    for number, write in enumerate(writes):
        twins.write(write)
        everything(f"after write {number}")
    assert engine.index_stats["text_builds"] == builds


def test_a_text_column_rebuilds_when_it_cannot_follow(servers: Any) -> None:
    """A version the lineage does not lead back from (here, forgotten) is built afresh."""
    world, twins, _ = _seeded(servers, "text_rebuild", 22, 50)
    search = _search("needle")
    twins.read(lambda db: list(db.posts.find(search)), "built")
    builds = twins.engine.index_stats["text_builds"]
    twins.write(
        lambda db: db.posts.update_many({}, {"$set": {"title": "a needle", "content": "hay"}})
    )
    _LINEAGE.clear()
    twins.write(lambda db: db.posts.update_one({"_id": world.ids[0]}, {"$set": {"title": "x"}}))
    assert len(twins.read(lambda db: list(db.posts.find(search)), "rebuilt")) == 49
    assert twins.engine.index_stats["text_builds"] == builds + 2  # title and content


def test_folded_text_holds_a_piece_exactly_when_re_finds_it_ignoring_case() -> None:
    """The text columns' folding against Python's re (mongoeco's), on text mixing ASCII
    with the characters re matches to ASCII letters and others that merely look alike."""
    table, unfoldable = _folding()
    assert not unfoldable
    assert {chr(c) for c in table if c > 127} == {"\u0130", "\u0131", "\u017f", "\u212a"}
    rng = random.Random(6)
    alphabet = "aAbiIkKsStxX .+(" + "\u0130\u0131\u017f\u212a\u00df\u00e9\u00c9\u0456\u0399\uff4b"
    for _ in range(4000):
        text = "".join(rng.choices(alphabet, k=rng.randint(0, 12)))
        piece = "".join(rng.choices("abikstx .+(", k=rng.randint(1, 3)))
        found = re.search(re.escape(piece), text, re.IGNORECASE) is not None
        assert (piece in text.translate(table)) == found, (text, piece)
        if re.search(re.escape(piece), text) is not None:  # as written: found folded too
            assert piece in text.translate(table), (text, piece)


def test_an_unusable_index_sends_reads_to_the_stock_path(servers: Any) -> None:
    """A null, an array or a value of another kind in an indexed field: the sorted copy
    cannot order it as MongoDB would, so reads take mongoeco's path, until it is gone."""
    rng = random.Random(5)
    world = World(rng, messy=False)
    twins = _twins(servers, "unusable")
    posts = [world.post() for _ in range(50)]
    twins.write(lambda db: db.posts.insert_many([dict(p) for p in posts]))
    feed = {"$or": [{"published": True}, {"owner_id": world.owners[0]}]}
    engine = twins.engine

    def page(db: Db) -> list[Any]:
        return list(db.posts.find(feed).sort(FEED_ORDER).limit(5))

    def publish(value: Any) -> Callable[[Db], Any]:
        return lambda db: db.posts.update_one({"_id": world.ids[3]}, {"$set": {"published": value}})

    for odd in ([True], None, "yes"):
        twins.write(publish(odd))
        ordered = engine.index_stats["ordered_finds"]
        twins.read(page, f"published={odd!r}")
        assert engine.index_stats["ordered_finds"] == ordered
    twins.write(publish(True))
    ordered = engine.index_stats["ordered_finds"]
    twins.read(page, "clean again")
    assert engine.index_stats["ordered_finds"] == ordered + 1


@pytest.mark.parametrize("value", ["array", "null"])
def test_an_index_of_arrays_or_nulls_everywhere(servers: Any, value: str) -> None:
    """An indexed field of one odd kind in every document: MongoDB sorts an array by its
    least (or, descending, greatest) element and matches it by any element, which no order
    of whole keys gives."""
    rng = random.Random(8)
    world = World(rng, messy=False)
    twins = _twins(servers, f"every_{value}")
    for db in (twins.stock, twins.ours):
        db.posts.create_index([("owner_id", 1), ("tag", 1), ("_id", 1)])
    posts = [world.post() for _ in range(60)]
    for post in posts:
        post["tag"] = (
            rng.sample(["a", "b", "c", "d"], rng.randint(1, 3)) if value == "array" else None
        )
    twins.write(lambda db: db.posts.insert_many([dict(p) for p in posts]))
    for owner in world.owners:
        for direction in (1, -1):
            order = [("tag", direction), ("_id", direction)]
            for query in ({"owner_id": owner}, {"owner_id": owner, "tag": "b"}):
                twins.read(
                    lambda db, q=query, o=order: list(db.posts.find(q).sort(o).limit(7)),
                    f"{query} {order}",
                )
                twins.read(
                    lambda db, q=query: db.command("count", "posts", query=q)["n"], f"{query}"
                )


def test_transactions_read_their_own_view_and_commits_rebuild() -> None:
    """Through mongoeco's own client (its wire server has no transactions): a read inside a
    transaction takes the stock path; an abort leaves the ordered copy as it was, and a
    commit, which installs the transaction's index maps without the write hook seeing it,
    makes the next read rebuild the copy rather than answer from it."""

    async def scenario(engine: Any) -> list[Any]:
        client = EmulatorClient(engine)
        posts = client["t"]["posts"]
        await posts.create_index([("published", 1), ("created_at", -1), ("_id", -1)])
        for number in range(6):
            await posts.insert_one({"_id": number, "published": True, "created_at": number})

        async def newest(**session: Any) -> list[Any]:
            cursor = posts.find({"published": True}, **session).sort(FEED_ORDER).limit(3)
            return list(await cursor.to_list())

        seen = [await newest()]
        for commit in (False, True):
            async with client.start_session() as session:
                session.start_transaction()
                await posts.insert_one(
                    {"_id": 9 + commit, "created_at": 9, "published": True}, session=session
                )
                await posts.update_one({"_id": 0}, {"$set": {"created_at": 20}}, session=session)
                seen.append(await newest(session=session))
                seen.append(await newest())
                if commit:
                    session.commit_transaction()
                else:
                    session.abort_transaction()
            seen.append(await newest())
        return seen

    ours = IndexedMemoryEngine()
    assert asyncio.run(scenario(ours)) == asyncio.run(scenario(MemoryEngine()))
    assert ours.index_stats["stock_finds"] == 2  # the reads inside the transactions
    assert ours.index_stats["rebuilds"] == 2  # the first read, and the first after the commit


PLAIN_VALUES = [True, False, 0, 1, 7, "needle", "x", "", ObjectId(b"a" * 12), ObjectId(b"b" * 12)]
PLAIN_VALUES += [datetime(2026, 1, 1), datetime(2026, 1, 2)]
ODD_VALUES: list[Any] = [None, [], ["needle"], [True], {"a": 1}, 1.0, 2.5, b"needle"]
ODD_VALUES += [datetime(2026, 1, 1, tzinfo=UTC), [datetime(2026, 1, 1)]]


def test_the_native_matcher_agrees_with_the_engine_document_by_document() -> None:
    """Every filter, on documents with every kind of value: the plain test answers only
    where it is sure, and then as the engine's own matcher does."""
    rng = random.Random(3)
    texts = [
        "Needle in a HAYSTACK", "\u017ftraße", "STRASSE", "\u212aelvin", "İstanbul", "\u0131i",
        "a.b", "(x) [y]", "naïve ÉCOLE", "", "back\\slash", "日本 needle", "NEEDLE\u00e9",
    ]  # fmt: skip
    patterns = [re.escape(w) for w in SEARCHED] + ["^needle", "e+d", "x|y", "(?i)k"]

    def value() -> Any:
        return rng.choice(PLAIN_VALUES + ODD_VALUES + texts)

    def document() -> dict[str, Any]:
        fields = {name: value() for name in ("a", "b", "t") if rng.random() < 0.85}
        if rng.random() < 0.6:  # a subdocument, or on the path something that is not one
            fields["s"] = {k: v for k, v in fields.items() if rng.random() < 0.85}
        elif rng.random() < 0.7:
            fields["s"] = rng.choice([None, "needle", 7, [dict(fields)], [], {"a": [1]}])
        return fields

    documents = [document() for _ in range(250)]
    filters: list[dict[str, Any]] = []
    for _ in range(30):
        regex = {"$regex": rng.choice(patterns), "$options": rng.choice(["", "i"])}
        equals = {"a": rng.choice(PLAIN_VALUES)}
        compared = {rng.choice(["$gt", "$gte", "$lt", "$lte"]): rng.choice(PLAIN_VALUES + texts)}
        kind = type(rng.choice(PLAIN_VALUES))  # an $in of one kind (mixed: the engine's)
        of_kind = [v for v in PLAIN_VALUES + texts if type(v) is kind]
        listed = rng.sample(of_kind, rng.randint(1, min(3, len(of_kind))))
        filters += [
            equals,
            {"t": regex},
            {"$or": [equals, {"b": rng.choice(PLAIN_VALUES)}]},
            {"$and": [{"$or": [equals, {"t": regex}]}, {"b": rng.choice(PLAIN_VALUES)}]},
            {"a": compared},
            {"t": compared, "b": {"$in": listed}},
            {"b": {"$in": listed}},
            {"s.a": rng.choice(PLAIN_VALUES)},
            {"s.t": regex, "s.b": {"$in": listed}},
            {"s.a": compared},
        ]
    native_answers = fallbacks = 0
    for query in filters:
        semantics = compile_find_semantics(query, dialect=MONGODB_DIALECT_80)
        stock = semantics.compiled_query
        assert stock is not None
        engine = IndexedMemoryEngine()
        native = engine._native(semantics).compiled_query
        assert isinstance(native, _NativeMatcher), query
        for document in documents:
            assert native.match(document) == stock.match(document), (query, document)
        fallbacks += engine.index_stats["matcher_fallbacks"]
        native_answers += len(documents) - engine.index_stats["matcher_fallbacks"]
    assert native_answers > (native_answers + fallbacks) // 10  # the plain test does answer


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        (re.escape("a.b (c) [d] e+f? g*h ^$ |\\"), "a.b (c) [d] e+f? g*h ^$ |\\"),
        ("needle", "needle"),
        ("", ""),
        ("a.b", None),
        ("\\d", None),
        ("caf\u00e9", None),
        ("\\x00", None),
        ("a{2}", None),
    ],
)
def test_only_plain_literals_skip_the_regex(pattern: str, literal: str | None) -> None:
    assert _literal(pattern) == literal


@pytest.mark.parametrize(
    ("match", "collation", "pushed"),
    [
        ({"key": {"$in": ["a", "c"]}, "at": {"$gt": 3}}, None, True),
        ({"$or": [{"key": "b"}, {"at": {"$lte": 1}}]}, None, True),
        ({"$expr": {"$gt": ["$at", 3]}}, None, False),  # an expression: loaded whole
        ({"key": "A"}, {"locale": "en", "strength": 1}, False),  # a collation: loaded whole
    ],
)
def test_a_union_reads_only_what_its_match_selects(
    servers: Any, match: Any, collation: Any, pushed: bool
) -> None:
    """Read through its $match, a union runs the rest of its pipeline on what it read, and
    answers as mongoeco does, as the login's count does."""
    install_union_pushdown()  # what the embedded store's start does (idempotent)
    twins = _twins(servers, f"union_{random.randrange(10**9)}")
    rows = [{"_id": i, "key": "abc"[i % 3], "at": i % 7} for i in range(60)]
    twins.write(lambda db: db.base.insert_one({"_id": "only", "n": 1}))
    twins.write(lambda db: db.other.insert_many([dict(row) for row in rows]))
    twins.write(lambda db: db.other.create_index([("key", 1), ("at", 1)]))
    inner = [
        {"$match": match},
        {"$group": {"_id": "$key", "seen": {"$push": {"id": "$_id", "at": "$at"}}}},
        {"$project": {"_id": 0, "of": "$_id", "seen": 1}},
        {"$sort": {"of": 1}},
    ]
    pipeline = [{"$match": {"n": 1}}, {"$unionWith": {"coll": "other", "pipeline": inner}}]
    options = {} if collation is None else {"collation": collation}
    before = union_pushdowns["other"], union_pushdowns["joined as read"]

    answer = twins.ours.base.aggregate(pipeline, **options).to_list()

    # Both servers run in this process, under the same (patched) cursor: the answer to
    # match is mongoeco's own aggregation of the union's pipeline, on the stock server.
    expected = [{"_id": "only", "n": 1}, *twins.stock.other.aggregate(inner, **options)]
    assert answer == expected
    assert len(answer) > 1
    after = union_pushdowns["other"], union_pushdowns["joined as read"]
    assert after == (before[0] + pushed, before[1] + pushed)


def test_a_collection_named_twice_is_loaded_whole() -> None:
    twice = [
        {"$unionWith": {"coll": "x", "pipeline": [{"$match": {"a": 1}}]}},
        {"$lookup": {"from": "x", "localField": "a", "foreignField": "a", "as": "xs"}},
        {"$unionWith": {"coll": "y", "pipeline": [{"$match": {"b": {"$gte": 2}}}, {"$limit": 1}]}},
        {"$unionWith": {"coll": "z", "pipeline": [{"$limit": 1}, {"$match": {"c": 1}}]}},
    ]
    assert union_filters(twice) == {"y": {"b": {"$gte": 2}}}


def test_ids_listed_with_in_are_found_by_key_as_mongoeco_finds_them(servers: Any) -> None:
    twins = _twins(servers, f"in_{random.randrange(10**9)}")
    rows = [{"_id": ObjectId(), "n": n, "published": n % 3 != 0} for n in range(300)]
    for db in (twins.stock, twins.ours):
        db.posts.insert_many([dict(row) for row in rows])
    listed = [row["_id"] for row in rows[250:100:-3]] + [ObjectId()]  # out of order, one absent
    for db in (twins.stock, twins.ours):
        changed = {"_id": {"$in": listed[:20]}, "published": True}
        db.posts.update_many(changed, {"$inc": {"n": 1000}})
        db.posts.delete_many({"_id": {"$in": listed[-5:]}})
    queries: list[Any] = [
        {"_id": {"$in": listed}},
        {"_id": {"$in": listed}, "published": False},
        {"$and": [{"_id": {"$in": listed}}, {"n": {"$gte": 1000}}]},
        {"_id": {"$in": [*listed[:5], 7]}},  # not only ObjectIds: mongoeco's own path
    ]
    for query in queries:
        assert twins.ours.posts.find(query).to_list() == twins.stock.posts.find(query).to_list()
        assert twins.ours.posts.count_documents(query) == twins.stock.posts.count_documents(query)


def test_a_compiled_validator_is_reused_until_the_collection_changes_it(servers: Any) -> None:
    """Writes are checked against the collection's validator as it is now, compiled once."""
    install_validator_cache()  # what the embedded store's start does (idempotent)
    _, ours, _ = servers
    db = ours[f"validated_{random.randrange(10**9)}"]
    positive = {"$jsonSchema": {"required": ["n"], "properties": {"n": {"minimum": 0}}}}
    db.create_collection("things", validator=positive)
    before = validator_cache_hits["hit"]
    for n in range(3):
        db.things.insert_one({"n": n})
    with pytest.raises(WriteError) as refused:
        db.things.insert_one({"n": -1})
    assert refused.value.code == 121  # DocumentValidationFailure
    with pytest.raises(WriteError):
        db.things.update_one({"n": 1}, {"$set": {"n": -5}})
    assert validator_cache_hits["hit"] >= before + 4
    # Another validator applies from the very next write (mongoeco has no collMod: the
    # collection is made again with it).
    required_m = {"$jsonSchema": {"required": ["m"]}}
    db.things.drop()
    db.create_collection("things", validator=required_m)
    with pytest.raises(WriteError):
        db.things.insert_one({"n": 7})
    db.things.insert_one({"n": -7, "m": 1})
    db.other.drop()
    db.create_collection("other", validator=required_m, validationAction="warn")
    db.other.insert_one({"n": 8})  # warned, not refused
    assert [row["n"] for row in db.things.find()] == [-7]
    assert [row["n"] for row in db.other.find()] == [8]


def test_an_update_that_changes_no_indexed_field_leaves_the_indexes_alone(servers: Any) -> None:
    """An update or replace touches the indexes only if an index key changed; a delete still
    takes the document out of them. Every read must still answer as mongoeco's own engine."""
    twins = _twins(servers, f"held_{random.randrange(10**9)}")
    owners = [ObjectId() for _ in range(3)]
    base = datetime(2026, 3, 1, tzinfo=UTC)
    rows = [
        {
            "_id": ObjectId(),
            "published": n % 4 != 0,
            "owner_id": owners[n % 3],
            "created_at": base + timedelta(minutes=n),
            "votes": 0,
        }
        for n in range(40)
    ]
    twins.write(lambda db: db.posts.insert_many([dict(row) for row in rows]))
    stats = twins.engine.index_stats
    skipped = stats["index_updates_skipped"]

    def reads(label: str) -> None:
        # Every index holds each stored document, and nothing else.
        engine = twins.engine
        stored = set(engine._storage[twins.ours.name]["posts"].keys())
        for name, index_map in engine._index_data[twins.ours.name]["posts"].items():
            members = [key for keys in index_map._buckets.values() for key in keys]
            assert sorted(members) == sorted(stored), (label, name)  # once each, none stale
        for match in ({"published": True}, {"owner_id": owners[1]}, {"owner_id": owners[2]}):
            twins.read(lambda db, m=match: db.posts.find(m).sort(FEED_ORDER).to_list(), label)
            twins.read(lambda db, m=match: db.posts.count_documents(m), label)

    reads("before")
    for row in rows[:10]:  # a vote's count: no index key changes
        twins.write(
            lambda db, row=row: db.posts.update_one({"_id": row["_id"]}, {"$inc": {"votes": 1}})
        )
    twins.write(lambda db: db.posts.replace_one({"_id": rows[10]["_id"]}, {**rows[10], "votes": 9}))
    assert stats["index_updates_skipped"] == skipped + 11
    reads("after updates that change no key")
    # Keys that change: published flips, an owner changes, a post moves in time (the drafts
    # among the ten keep `published: false`, and so their keys).
    twins.write(lambda db: db.posts.update_many({"votes": 1}, {"$set": {"published": False}}))
    skipped += sum(not row["published"] for row in rows[:10])
    twins.write(
        lambda db: db.posts.update_one({"_id": rows[20]["_id"]}, {"$set": {"owner_id": owners[1]}})
    )
    twins.write(
        lambda db: db.posts.update_one({"_id": rows[21]["_id"]}, {"$set": {"created_at": base}})
    )
    assert stats["index_updates_skipped"] == skipped + 11
    reads("after updates that change keys")
    twins.write(lambda db: db.posts.delete_many({"owner_id": owners[0]}))
    twins.write(lambda db: db.posts.delete_one({"_id": rows[20]["_id"]}))
    reads("after deletes")


def test_an_insert_of_many_documents_answers_as_mongoeco_inserting_them_one_by_one(
    servers: Any,
) -> None:
    """An ordered insert of several documents goes as one batch on our engine; whatever a
    document of it breaks, the answer and what was stored are those of mongoeco's loop."""
    install_batched_inserts()  # what the embedded store's start does (idempotent)
    twins = _twins(servers, f"batch_{random.randrange(10**9)}")
    for db in (twins.stock, twins.ours):
        db.create_collection("checked", validator={"$jsonSchema": {"required": ["n"]}})
    taken, post, user, twin = ObjectId(), ObjectId(), ObjectId(), ObjectId()
    twins.write(lambda db: db.posts.insert_one({"_id": taken, "n": 0}).acknowledged)
    voted = {"_id": ObjectId(), "post_id": post, "user_id": user}
    twins.write(lambda db: db.votes.insert_one(dict(voted)).acknowledged)

    def rows(*fields: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"_id": ObjectId(), **row} for row in fields]  # ids: answers may name them

    batches: list[tuple[str, list[dict[str, Any]], bool]] = [
        ("posts", rows(*({"n": n} for n in range(5))), True),
        ("posts", [*rows({"n": 1}), {"_id": taken, "n": 2}, *rows({"n": 3})], True),
        ("posts", [{"_id": twin, "n": 1}, *rows({"n": 2}), {"_id": twin, "n": 3}], True),
        (
            "votes",
            rows({"post_id": ObjectId(), "user_id": user}, {"post_id": post, "user_id": user}),
            True,
        ),
        ("checked", rows({"n": 1}, {"m": 2}, {"n": 3}), True),
        ("checked", rows({"n": 4}, {"m": 5}, {"n": 6}), False),  # unordered: the stock command
        ("posts", [{"_id": taken, "n": 9}], True),  # one document: the stock command
    ]
    before = batched_inserts["commands"]
    for collection, documents, ordered in batches:
        answers = []
        for db in (twins.stock, twins.ours):
            try:
                answer = db.command(
                    "insert", collection, documents=[dict(d) for d in documents], ordered=ordered
                )
            except PyMongoError as error:
                answer = {"raised": type(error).__name__, "details": getattr(error, "details", 0)}
            answers.append(answer)
        assert answers[0] == answers[1], (collection, documents)
    assert batched_inserts["commands"] == before + 5
    for name in ("posts", "votes", "checked"):
        stored = [db[name].find().sort("_id").to_list() for db in (twins.stock, twins.ours)]
        assert stored[0] == stored[1], name
