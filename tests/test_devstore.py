"""The development store's fixes to mongoeco, each on the SQLite engine (the default).

Each test fails on stock mongoeco 4.11: docs/development-store.md lists which test goes with
which fix. The costs are counted, not timed: documents the engine decodes, SQLite
virtual-machine steps (deterministic for the same data), and calls of the slow path a fix
avoids. A write must cost
the same with ten times the documents; stock mongoeco's grows with them.
"""

import contextlib
import inspect
import random
import sqlite3
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from bson import DBRef, Decimal128, Int64, ObjectId
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from mongoeco.core import collation, sorting
from mongoeco.engines.sqlite import SQLiteEngine
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError

from devstore import EmbeddedStore
from devstore.fixes import FixedSQLiteEngine

SMALL, LARGE = 200, 2_000


class Work(Counter[str]):
    """What the engine did: `decoded` documents, SQLite `steps` (virtual-machine
    instructions, counted while `measuring`), `compared` sort values by mongoeco's general
    comparison, `signatures` asked of its codec, `sort_scans` (mongoeco's check before a
    sorted read, which reads every match)."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: list[Any] = []
        self.measuring = False

    def step(self) -> int:
        self["steps"] += 1
        return 0  # go on

    def measure(self, on: bool) -> None:
        self.measuring = on
        for connection in self.connections:
            with contextlib.suppress(sqlite3.ProgrammingError):  # closed since
                connection.set_progress_handler(self.step if on else None, 1)


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Work:
    counted = Work()
    deserialize = SQLiteEngine._deserialize_document
    connect = FixedSQLiteEngine._create_sqlite_connection
    compare = collation.compare_with_collation  # the function sorting imports from there
    signature = inspect.signature
    sort_check = SQLiteEngine._sort_requires_python

    def deserialize_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted["decoded"] += 1
        return deserialize(self, *args, **kwargs)

    def connect_counted(self: Any) -> Any:
        connection = connect(self)
        counted.connections.append(connection)
        if counted.measuring:
            connection.set_progress_handler(counted.step, 1)
        return connection

    def compare_counted(*args: Any, **kwargs: Any) -> Any:
        counted["compared"] += 1
        return compare(*args, **kwargs)

    def signature_counted(function: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(function, "__name__", "") == "decode":
            counted["signatures"] += 1
        return signature(function, *args, **kwargs)

    def sort_check_counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        counted["sort_scans"] += 1
        return sort_check(self, *args, **kwargs)

    monkeypatch.setattr(SQLiteEngine, "_sort_requires_python", sort_check_counted)
    monkeypatch.setattr(SQLiteEngine, "_deserialize_document", deserialize_counted)
    monkeypatch.setattr(FixedSQLiteEngine, "_create_sqlite_connection", connect_counted)
    monkeypatch.setattr(sorting, "compare_with_collation", compare_counted)
    monkeypatch.setattr(inspect, "signature", signature_counted)
    return counted


@pytest.fixture
def store(tmp_path: Path, work: Work) -> Iterator[MongoClient[dict[str, Any]]]:
    """A SQLite store of its own (started after `work`, so its connections are counted)."""
    running = EmbeddedStore("sqlite", tmp_path / "data")
    with MongoClient[dict[str, Any]](running.start(), tz_aware=True) as client:
        yield client
    running.stop()


def votes_of(client: MongoClient[dict[str, Any]], name: str) -> Collection[dict[str, Any]]:
    """A collection shaped as the service's votes: a compound unique index and one more."""
    votes = client["devstore"][name]
    votes.create_index([("post_id", 1), ("user_id", 1)], unique=True)
    votes.create_index([("user_id", 1)])
    return votes


def fill(collection: Collection[dict[str, Any]], count: int) -> None:
    for start in range(0, count, 500):
        batch = min(500, count - start)
        collection.insert_many(
            [{"post_id": ObjectId(), "user_id": ObjectId(), "n": start + i} for i in range(batch)]
        )


def cost(work: Work, kind: str, action: Any) -> int:
    """How much of `kind` the engine spent on `action`."""
    before = work[kind]
    work.measure(kind == "steps")
    try:
        action()
    finally:
        work.measure(False)
    return work[kind] - before


def test_cursor_ids_are_64_bit_integers_on_the_wire(store):
    """mongosh and Compass (the Node.js driver) read no cursor id from an int32."""
    things = store["devstore"]["things"]
    things.insert_many([{"n": n} for n in range(5)])
    raw = CodecOptions(document_class=RawBSONDocument)
    database = store["devstore"]
    first = database.command("find", "things", batchSize=2, codec_options=raw)["cursor"]
    assert b"\x12id\x00" in first.raw  # BSON type 0x12: int64
    more = database.command(
        "getMore", first["id"], collection="things", batchSize=10, codec_options=raw
    )
    assert b"\x12id\x00" in more["cursor"].raw and more["cursor"]["id"] == 0
    # The Node.js driver names the cursor of a getMore as an int64 too.
    again = database.command("find", "things", batchSize=2, codec_options=raw)["cursor"]
    rest = database.command("getMore", Int64(again["id"]), collection="things", batchSize=10)
    assert [row["n"] for row in rest["cursor"]["nextBatch"]] == [2, 3, 4]
    killed = database.command("find", "things", batchSize=2, codec_options=raw)["cursor"]
    answer = database.command("killCursors", "things", cursors=[Int64(killed["id"])])
    assert answer["cursorsKilled"] == [killed["id"]]
    single = database.command("find", "things", codec_options=raw)["cursor"]
    assert b"\x12id\x00" in single.raw and single["id"] == 0


def test_an_insert_decodes_no_stored_document(store, work):
    """An ObjectId `_id`, and a compound unique index, are checked without reading every
    document of the collection."""
    votes = votes_of(store, "votes")
    fill(votes, SMALL)
    vote = {"post_id": ObjectId(), "user_id": ObjectId()}
    decoded = cost(work, "decoded", lambda: votes.insert_one(vote))
    assert decoded == 0
    plain = store["devstore"]["plain"]
    fill(plain, SMALL)
    assert cost(work, "decoded", lambda: plain.insert_one({"x": 1})) == 0


def test_unique_indexes_and_ids_still_refuse_duplicates(store):
    votes = votes_of(store, "votes")
    fill(votes, 50)
    post, user = ObjectId(), ObjectId()
    first = votes.insert_one({"post_id": post, "user_id": user}).inserted_id
    votes.insert_one({"post_id": post, "user_id": ObjectId()})
    with pytest.raises(DuplicateKeyError):
        votes.insert_one({"post_id": post, "user_id": user})
    with pytest.raises(BulkWriteError):
        votes.insert_many(
            [{"post_id": ObjectId(), "user_id": user}, {"post_id": post, "user_id": user}]
        )
    with pytest.raises(DuplicateKeyError):
        votes.insert_one({"_id": first, "post_id": ObjectId(), "user_id": ObjectId()})
    other = votes.insert_one({"post_id": ObjectId(), "user_id": ObjectId()}).inserted_id
    with pytest.raises(DuplicateKeyError):
        votes.update_one({"_id": other}, {"$set": {"post_id": post, "user_id": user}})
    votes.update_one({"_id": first}, {"$set": {"post_id": post, "user_id": user, "c": 1}})
    # Values without one stored form still get mongoeco's own check: 1 and 1.0 are equal.
    votes.insert_one({"post_id": 1, "user_id": "a"})
    with pytest.raises(DuplicateKeyError):
        votes.insert_one({"post_id": 1.0, "user_id": "a"})
    votes.delete_one({"_id": first})
    votes.insert_one({"post_id": post, "user_id": user})  # free again once deleted


def steps_at(store, work: Work, size: int, action: Any) -> int:
    """SQLite steps of `action(collection)` on a votes-like collection of `size` documents,
    right after a write (which is when stock mongoeco forgets what it knew)."""
    votes = votes_of(store, f"votes_{size}")
    fill(votes, size)
    votes.insert_one({"post_id": ObjectId(), "user_id": ObjectId()})
    return cost(work, "steps", lambda: action(votes))


@pytest.mark.parametrize(
    "write",
    [
        pytest.param(
            lambda votes: votes.insert_one({"post_id": ObjectId(), "user_id": ObjectId()}),
            id="insert",
        ),
        pytest.param(
            lambda votes: votes.find_one_and_delete({"post_id": ObjectId(), "user_id": ObjectId()}),
            id="find_one_and_delete",
        ),
    ],
)
def test_a_write_costs_the_same_with_ten_times_the_documents(store, work, write):
    """Whether a field holds arrays or Decimal128s is answered through an index on it."""
    small = steps_at(store, work, SMALL, write)
    large = steps_at(store, work, LARGE, write)
    assert large < 1.5 * small, (small, large)


def test_a_filter_on_id_and_more_reads_one_document(store, work):
    """`{_id: X, n: 3}` reads the document with that `_id` only, then matches the rest."""

    target: dict[str, Any] | None = None

    def update(votes: Collection[dict[str, Any]]) -> None:
        assert target is not None
        missed = votes.update_one({"_id": target["_id"], "n": 4}, {"$set": {"hit": True}})
        assert missed.matched_count == 0
        hit = votes.update_one(
            {"$and": [{"_id": target["_id"]}, {"$or": [{"n": 3}, {"n": 9}]}]},
            {"$inc": {"hits": 1}},
        )
        assert hit.matched_count == 1
        # A field that is not true (or missing), as the service asks of a post that is not
        # hidden: `$ne` with a value, in each branch.
        shown = {"hidden": {"$ne": True}}
        hit = votes.update_one(
            {"$and": [{"_id": target["_id"]}, {"$or": [{"n": 3, **shown}, {"n": 9, **shown}]}]},
            {"$inc": {"hits": 1}},
        )
        assert hit.matched_count == 1
        missed = votes.update_one({"_id": target["_id"], "n": {"$ne": 3}}, {"$set": {"hit": True}})
        assert missed.matched_count == 0

    votes = votes_of(store, "votes")
    fill(votes, SMALL)
    target = votes.find_one({"n": 3})
    small = cost(work, "steps", lambda: update(votes))
    votes = votes_of(store, "more_votes")
    fill(votes, LARGE)
    target = votes.find_one({"n": 3})
    large = cost(work, "steps", lambda: update(votes))
    assert large < 1.5 * small, (small, large)
    assert votes.find_one({"n": 3}, {"_id": 0, "hits": 1}) == {"hits": 2}
    assert votes.count_documents({"hit": True}) == 0


def test_dates_and_ids_sort_as_bson_orders_them_without_the_general_comparison(store, work):
    """A sort that mongoeco runs in Python (after a filter SQL cannot take, such as the
    service's case-insensitive search) compares dates and ids as Python does."""
    things = store["devstore"]["things"]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        {"_id": ObjectId(), "at": start + timedelta(milliseconds=random.randrange(50)), "t": "x"}
        for _ in range(300)
    ]
    things.insert_many(rows)
    search = {"$or": [{"t": {"$regex": "X", "$options": "i"}}, {"u": {"$regex": "X"}}]}
    order = [("at", -1), ("_id", -1)]
    found: list[dict[str, Any]] = []
    compared = cost(work, "compared", lambda: found.extend(things.find(search).sort(order)))
    assert compared == 0
    expected = sorted(rows, key=lambda row: (row["at"], row["_id"]), reverse=True)
    assert [row["_id"] for row in found] == [row["_id"] for row in expected]
    # Values of different types still follow BSON's order of types: strings before dates.
    things.insert_one({"_id": ObjectId(), "at": "not a date", "t": "x"})
    assert next(things.find(search).sort("at", 1))["at"] == "not a date"
    assert work["compared"] > 0


def test_a_sorted_read_of_plain_values_does_not_read_every_match_first(store, work):
    """The feed: `published OR owner`, newest first, on the service's indexes. Each index
    holds `at` and `_id`, so it tells that no post holds an array or embedded document
    there; a post that does sends the read mongoeco's way, and the order stays BSON's."""
    posts = store["devstore"]["posts"]
    posts.create_index([("published", 1), ("at", -1), ("_id", -1)])
    posts.create_index([("owner", 1), ("at", -1), ("_id", -1)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    owner = ObjectId()
    rows: list[dict[str, Any]] = [
        {"published": n % 3 > 0, "owner": owner if n % 7 == 0 else ObjectId(),
         "at": start + timedelta(minutes=n)}
        for n in range(LARGE)
    ]  # fmt: skip
    posts.insert_many(rows)
    seen = [row["at"] for row in rows if row["published"] or row["owner"] == owner]
    feed = {"$or": [{"published": True}, {"owner": owner}]}
    order = [("at", -1), ("_id", -1)]

    def page() -> list[Any]:
        return [row["at"] for row in posts.find(feed).sort(order).limit(3)]

    found: list[Any] = []
    assert cost(work, "sort_scans", lambda: found.extend(page())) == 0
    assert found == sorted(seen, reverse=True)[:3]
    newest = max(seen)
    # An array sorts by its greatest element when descending, by its least ascending; an
    # embedded document before every date (BSON's order of types), whatever it holds.
    later = newest + timedelta(days=1)
    posts.insert_one({"published": True, "at": [start - timedelta(days=1), later]})
    posts.insert_one({"published": True, "at": {"not": "a date"}})
    assert cost(work, "sort_scans", page) > 0
    assert page() == [[start - timedelta(days=1), later], newest, sorted(seen)[-2]]
    ascending = [row["at"] for row in posts.find(feed).sort([("at", 1), ("_id", 1)]).limit(2)]
    assert ascending == [{"not": "a date"}, [start - timedelta(days=1), later]]


@pytest.mark.parametrize(
    "unplain",
    [
        pytest.param(
            [datetime(2025, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)], id="array"
        ),
        pytest.param({"not": "a date"}, id="embedded-document"),
        pytest.param(Int64(5), id="int64"),
        pytest.param(Decimal128("1.5"), id="decimal128"),
    ],
)
def test_a_sort_field_holding_any_value_sql_cannot_sort_goes_mongoecos_way(store, work, unplain):
    """One such value among the dates, whatever its kind, sends the sorted read back to
    mongoeco's own check (and its Python sort): the value sorts first ascending, as BSON's
    order of types (and an array's least element) puts it."""
    things = store["devstore"]["things"]
    things.create_index([("kind", 1), ("at", 1), ("_id", 1)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    things.insert_many([{"kind": "a", "at": start + timedelta(hours=n)} for n in range(50)])
    order = [("at", 1), ("_id", 1)]
    plain = [row["at"] for row in things.find({"kind": "a"}).sort(order).limit(1)]
    assert plain == [start]
    things.insert_one({"kind": "a", "at": unplain})
    first: list[Any] = []
    scans = cost(work, "sort_scans", lambda: first.extend(
        row["at"] for row in things.find({"kind": "a"}).sort(order).limit(1)
    ))  # fmt: skip
    assert scans > 0
    assert first == [unplain]


def test_reading_documents_asks_the_codec_signature_at_most_once(store, work):
    things = store["devstore"]["things"]
    things.insert_many([{"tag": ObjectId(), "n": n} for n in range(300)])
    asked = cost(work, "signatures", lambda: list(things.find({"n": {"$gte": 0}})))
    assert asked <= 1


def test_a_union_reads_only_what_its_opening_match_selects(store, work):
    """A login's count: `users` matched by index, then unions with attempts and sessions."""
    database = store["devstore"]
    database["people"].insert_one({"email": "ada@example.com"})
    tokens = database["tokens"]
    tokens.create_index([("key", 1), ("at", 1)])
    start = datetime(2026, 1, 1, tzinfo=UTC)
    tokens.insert_many(
        [{"key": f"k{n % 50}", "at": start + timedelta(seconds=n)} for n in range(LARGE)]
    )

    def union(match: dict[str, Any]) -> list[dict[str, Any]]:
        pipeline = [
            {"$match": {"email": "ada@example.com"}},
            {"$project": {"_id": 0, "email": 1}},
            {
                "$unionWith": {
                    "coll": "tokens",
                    "pipeline": [
                        {"$match": match},
                        {"$group": {"_id": "$key", "n": {"$sum": 1}, "last": {"$max": "$at"}}},
                    ],
                }
            },
        ]
        return list(database["people"].aggregate(pipeline))

    plain = {"key": {"$in": ["k1", "k2"]}, "at": {"$gt": start}, "gone": {"$ne": True}}
    found: list[dict[str, Any]] = []
    decoded = cost(work, "decoded", lambda: found.extend(union(plain)))
    assert decoded < 100, decoded  # the 80 documents selected, not all 2,000
    # The same answer as mongoeco's own path, which an `$expr` filter still takes.
    expression = {"$expr": {"$and": [{"$in": ["$key", ["k1", "k2"]]}, {"$gt": ["$at", start]}]}}
    stock = union(expression)
    assert sorted(found, key=str) == sorted(stock, key=str)
    assert {row.get("_id"): row.get("n") for row in found} == {None: None, "k1": 40, "k2": 40}


def test_the_fixes_answer_as_mongoeco_where_they_step_aside(store):
    """Filters with variables, unions of the enclosing collection, and unique indexes on a
    path through a DBRef still get mongoeco's own answers."""
    database = store["devstore"]
    things = database["things"]
    things.insert_many([{"_id": 5, "a": 1}, {"a": 2}, {"a": None}, {}])
    # `let` variables reach an `$expr` beside an `_id`.
    updated = database.command(
        "update",
        "things",
        updates=[{"q": {"_id": 5, "$expr": {"$eq": ["$a", "$$v"]}}, "u": {"$set": {"b": 1}}}],
        let={"v": 1},
    )
    assert updated["n"] == 1 and things.find_one({"_id": 5})["b"] == 1
    # A `$unionWith` with no `coll` reads the enclosing collection, filters and all.
    database["other"].insert_one({"o": 1})
    pipeline = [
        {"$unionWith": {"coll": "things", "pipeline": [
            {"$match": {"a": 1}}, {"$unionWith": {"pipeline": [{"$match": {"a": 2}}]}},
        ]}},
        {"$project": {"_id": 0}},
    ]  # fmt: skip
    found = list(database["other"].aggregate(pipeline))
    assert sorted(found, key=str) == sorted([{"o": 1}, {"a": 1, "b": 1}, {"a": 2}], key=str)
    # A compound unique index through a DBRef refuses a duplicate.
    refs = database["refs"]
    refs.create_index([("r.$id", 1), ("u", 1)], unique=True)
    target = ObjectId()
    refs.insert_one({"r": DBRef("x", target), "u": "a"})
    with pytest.raises(DuplicateKeyError):
        refs.insert_one({"r": DBRef("x", target), "u": "a"})
