"""mongoeco's wire server and engines, with the fixes this service needs.

Each fix is one wrong answer, or one cost that grows with a collection on a path the service
takes, put right at the narrowest seam; each is listed in docs/development-store.md with the
test that fails without it, so that it can go once mongoeco has it.
"""

import inspect
import sqlite3
from collections import Counter
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

from bson import Int64, ObjectId
from mongoeco.api._async.aggregation_cursor import AsyncAggregationCursor
from mongoeco.api.operations import compile_find_operation
from mongoeco.compat import MONGODB_DIALECT_70
from mongoeco.core import sorting
from mongoeco.core.bson_scalars import BsonInt64
from mongoeco.core.filtering import QueryEngine
from mongoeco.core.paths import get_document_value
from mongoeco.core.query_plan import (
    AndCondition,
    EqualsCondition,
    ExistsCondition,
    GreaterThanCondition,
    GreaterThanOrEqualCondition,
    InCondition,
    LessThanCondition,
    LessThanOrEqualCondition,
    NotEqualsCondition,
    OrCondition,
    QueryNode,
)
from mongoeco.engines.memory import MemoryEngine
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.engines.sqlite_query import (
    index_expressions_sql,
    json_path_for_field,
    translate_query_plan,
)
from mongoeco.engines.virtual_indexes import document_in_virtual_index
from mongoeco.wire import _executor_validation, proxy
from mongoeco.wire.cursors import WireCursorStore

_COMPARISONS = (
    EqualsCondition,
    NotEqualsCondition,
    GreaterThanCondition,
    GreaterThanOrEqualCondition,
    LessThanCondition,
    LessThanOrEqualCondition,
)


def _plain_plan(node: QueryNode) -> bool:
    """Whether mongoeco's matcher answers `node` the same with no variables and any dialect:
    comparisons with a value (not null; `$ne` too, which the service asks of `hidden`),
    `$in`, `$exists`, and `$and`/`$or` of those."""
    if isinstance(node, AndCondition | OrCondition):
        return all(_plain_plan(clause) for clause in node.clauses)
    if isinstance(node, _COMPARISONS):
        return node.value is not None
    if isinstance(node, InCondition):
        return None not in node.values
    return isinstance(node, ExistsCondition)


def _one_form(value: object) -> bool:
    """Whether a value has one stored form, so that two such values are equal exactly when
    their stored forms are: an ObjectId (mongoeco's own subclasses it) or a plain string
    (not BSON Code, which subclasses str)."""
    return isinstance(value, ObjectId) or type(value) is str


class Int64CursorStore(WireCursorStore):
    """Cursor ids answered as 64-bit integers, as the wire protocol has them.

    mongoeco answers them as Python ints, which BSON encodes as int32; the Node.js driver (so
    mongosh and Compass) then finds no cursor id in the reply and fails every find.
    """

    def materialize_command_result(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _int64_cursor(super().materialize_command_result(*args, **kwargs))

    def get_more(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return _int64_cursor(super().get_more(*args, **kwargs))


def _int64_cursor(result: dict[str, Any]) -> dict[str, Any]:
    cursor = result.get("cursor")
    if isinstance(cursor, dict) and isinstance(cursor.get("id"), int):
        cursor["id"] = Int64(cursor["id"])
    return result


def _taking_int64_cursor_ids(validate: Any) -> Any:
    """A wire command's validator that first reads 64-bit cursor ids as integers.

    mongoeco decodes an int64 into a wrapper that is not an int, so a getMore or killCursors
    naming its cursor as the protocol does (every Node.js client, so mongosh) is refused.
    """

    def validator(body: dict[str, Any], command: dict[str, Any]) -> None:
        if isinstance(command.get("getMore"), BsonInt64):
            command["getMore"] = command["getMore"].value
        if "killCursors" in command and isinstance(command.get("cursors"), list):
            command["cursors"] = [
                cursor.value if isinstance(cursor, BsonInt64) else cursor
                for cursor in command["cursors"]
            ]
        validate(body, command)

    return validator


class FixedSQLiteEngine(SQLiteEngine):
    """mongoeco's SQLite engine without two scans of the whole collection on every insert."""

    def _decode_codec_payload(
        self, payload: object, *, preserve_bson_wrappers: bool
    ) -> dict[str, Any]:
        """A stored document decoded, as mongoeco decodes it, without asking Python for its
        decoder's signature each time: that question, asked once per document, cost a
        search over the demo's 1,000 posts a fifth of its time."""
        decode = self._codec.decode
        if not _takes_wrappers(getattr(decode, "__func__", decode)):
            return decode(payload)  # type: ignore[no-any-return]
        return decode(payload, preserve_bson_wrappers=preserve_bson_wrappers)  # type: ignore[no-any-return]

    def _validate_document_against_unique_indexes(
        self, db_name: str, coll_name: str, document: dict[str, Any], **options: Any
    ) -> None:
        """An ObjectId `_id` is checked by its storage key alone.

        mongoeco also decodes every stored document to compare `_id`s by value, so that ids
        equal as numbers but stored differently (1 and 1.0) collide. An ObjectId has one
        stored form, so the lookup by storage key that runs first already finds its
        duplicate. Any other `_id` still gets the scan.
        """
        if isinstance(document.get("_id"), ObjectId):
            options["scan_payload_id"] = False
        super()._validate_document_against_unique_indexes(db_name, coll_name, document, **options)

    def _unique_index_conflict_via_scalar_entries(
        self,
        conn: sqlite3.Connection,
        collection_id: int | None,
        index: dict[str, Any],
        document: dict[str, Any],
        *,
        exclude_storage_key: str | None,
    ) -> bool | None:
        """A compound unique index (the votes' one) checked through its SQLite index.

        mongoeco looks up single-field unique indexes in an index table and checks compound
        ones by decoding every stored document (None below sends it there). When every
        indexed value has one stored form, the documents holding the same stored values are
        found through the expression index mongoeco built for this index, and each is then
        compared as mongoeco compares them. Anything else still gets the scan.
        """
        answer = super()._unique_index_conflict_via_scalar_entries(
            conn, collection_id, index, document, exclude_storage_key=exclude_storage_key
        )
        physical_name = index.get("physical_name")
        if answer is not None or len(index["fields"]) < 2 or not physical_name:
            return answer
        if collection_id is None:
            return None
        values = [get_document_value(document, field) for field in index["fields"]]
        dotted = any("." in field for field in index["fields"])  # may go through a DBRef
        if dotted or not all(found and _one_form(value) for found, value in values):
            return None
        expressions = [e for field in index["fields"] for e in index_expressions_sql(field)]
        probe = f"SELECT {', '.join(expressions)} FROM (SELECT ? AS document)"
        keys = conn.execute(probe, (self._serialize_document(document),)).fetchone()
        if keys is None or None in keys:
            return None
        namespace = conn.execute(
            "SELECT db_name, coll_name FROM collections WHERE collection_id = ?",
            (collection_id,),
        ).fetchone()
        where = " AND ".join(f"{expression} = ?" for expression in expressions)
        query = (
            f"SELECT storage_key, document FROM documents "
            f"INDEXED BY {self._quote_identifier(str(physical_name))} "
            f"WHERE db_name = ? AND coll_name = ? AND {where}"
        )
        try:
            rows = conn.execute(query, (*namespace, *keys)).fetchall()
        except sqlite3.OperationalError:  # the planner cannot use that index: scan
            return None
        key = tuple(self._index_value(document, field) for field in index["fields"])
        for storage_key, payload in rows:
            if storage_key == exclude_storage_key:
                continue
            existing = self._deserialize_document(payload)
            if document_in_virtual_index(existing, index) and key == tuple(
                self._index_value(existing, field) for field in index["fields"]
            ):
                return True
        return False

    def _select_first_document_for_plan(
        self, db_name: str, coll_name: str, plan: QueryNode, **options: Any
    ) -> tuple[str, dict[str, Any]] | None:
        """The document an update or find-and-modify works on, when the filter names its
        `_id` beside other conditions (`{_id: X, published: true}`): read by its key.

        mongoeco reads a lone `_id` by its key, but turns any filter that has more into SQL
        over every document of the collection. Only the document with that `_id` can match:
        it is read as mongoeco reads a lone `_id`, then tested against the whole filter by
        mongoeco's own matcher, when the filter is made of plain comparisons.
        """
        by_id = next(
            (
                clause
                for clause in (plan.clauses if isinstance(plan, AndCondition) else ())
                if isinstance(clause, EqualsCondition) and clause.field == "_id"
            ),
            None,
        )
        # Anything the matcher might answer otherwise without the operation's variables and
        # dialect (`$expr`, null...) goes mongoeco's way, which has them.
        if by_id is None or options.get("hint") is not None or not _plain_plan(plan):
            return super()._select_first_document_for_plan(db_name, coll_name, plan, **options)
        found = super()._select_first_document_for_plan(db_name, coll_name, by_id, **options)
        if found is None or not QueryEngine.match_plan(found[1], plan):
            return None
        return found

    def _field_is_top_level_array_in_collection(
        self, db_name: str, coll_name: str, field: str
    ) -> bool:
        """Whether any stored document holds an array in `field`.

        An array's value in mongoeco's expression index is its JSON text, which starts with
        "[", beside an empty type: the documents that may hold one are that range's few.
        """
        kind, value = index_expressions_sql(field)
        path = json_path_for_field(field).replace("'", "''")
        found = self._through_index(
            db_name,
            coll_name,
            f"top_level_array:{field}",
            field,
            f"{kind} = '' AND {value} >= '[' AND {value} < '\\' "
            f"AND json_type(document, '{path}') = 'array'",
            (),
        )
        if found is None:
            return super()._field_is_top_level_array_in_collection(db_name, coll_name, field)
        return found

    def _field_contains_tagged_value_type_in_collection(
        self, db_name: str, coll_name: str, field: str, value_type: str
    ) -> bool:
        """Whether any stored document holds a value of `value_type` (such as a Decimal128)
        in `field`: the type is the first column mongoeco's expression index keeps for it."""
        kind, _ = index_expressions_sql(field)
        found = self._through_index(
            db_name,
            coll_name,
            f"tagged_type:{field}:{value_type}",
            field,
            f"{kind} = ?",
            (value_type,),
        )
        if found is None:
            return super()._field_contains_tagged_value_type_in_collection(
                db_name, coll_name, field, value_type
            )
        return found

    def _sort_requires_python(
        self, db_name: str, coll_name: str, plan: QueryNode, sort: Any
    ) -> bool:
        """Whether a sorted read must sort in Python, without reading every match for it.

        Before each sorted read mongoeco reads every document the filter matches (the whole
        feed) for an array, an embedded document or a wide number in a sort field. When no
        document of the collection holds one in any (top-level) sort field, as an index on
        the field tells, none of the matches does: only mongoeco's other checks remain.
        """
        fields = [field for field, _ in sort or ()]
        if not fields or not all(self._plain_sort_values(db_name, coll_name, f) for f in fields):
            return super()._sort_requires_python(db_name, coll_name, plan, sort)
        translate_query_plan(plan)  # a filter SQL cannot take raises, as in mongoeco's check
        return self._plan_has_array_traversing_paths(db_name, coll_name, plan)

    def _plain_sort_values(self, db_name: str, coll_name: str, field: str) -> bool:
        """Whether no stored document holds, in top-level `field`, a value SQLite does not
        sort as BSON does: an array, an embedded document, or a tagged number, binary or
        undefined (the first two are JSON text from "[" and "{" in the index)."""
        if "." in field:
            return False
        kind, value = index_expressions_sql(field)
        found = self._through_index(
            db_name,
            coll_name,
            f"unplain_sort_values:{field}",
            field,
            f"({kind} IN ('int64', 'decimal', 'decimal128', 'decimal128_public', 'bytes', "
            f"'undefined') OR ({kind} = '' AND ({value} >= '[' AND {value} < '\\' "
            f"OR {value} >= '{{' AND {value} < '|')))",
            (),
        )
        return found is False

    def _through_index(
        self,
        db_name: str,
        coll_name: str,
        feature: str,
        field: str,
        condition: str,
        parameters: tuple[object, ...],
    ) -> bool | None:
        """A feature of the stored documents, answered through an index on `field`, and
        cached as mongoeco caches it; None if no index can answer.

        mongoeco answers such questions (its query planner asks them before most reads and
        writes) by reading and parsing every document of the collection, and forgets the
        answer on every write to it: each write made the next command read the collection
        once per field and question. An index that leads with `field` holds the same answer
        in order; scanning one that holds it further on reads the values it keeps rather
        than parsing each document (1.2 ms against 13.6 ms over 10,000 posts).
        """
        key = (db_name, coll_name, feature)
        if key in self._collection_features_cache:
            return bool(self._collection_features_cache[key])
        whole = [
            index
            for index in self._load_indexes(db_name, coll_name)
            if index.get("physical_name")
            and field in index["fields"]
            and not index.get("sparse")
            and index.get("partial_filter_expression") is None
        ]
        # One that leads with the field, or else the one with the fewest fields.
        index = min(whole, key=lambda i: (i["fields"][0] != field, len(i["fields"])), default=None)
        if index is None:
            return None
        query = (
            "SELECT 1 FROM documents "
            f"INDEXED BY {self._quote_identifier(str(index['physical_name']))} "
            f"WHERE db_name = ? AND coll_name = ? AND {condition} LIMIT 1"
        )
        try:
            row = (
                self._require_connection()
                .execute(query, (db_name, coll_name, *parameters))
                .fetchone()
            )
        except sqlite3.OperationalError:  # the planner cannot use that index
            return None
        self._collection_features_cache[key] = found = row is not None
        return found


# Query operators a `$unionWith`'s opening `$match` may use to be read as a find: plain
# comparisons of stored values, nothing that evaluates expressions or variables.
_FIND_OPERATORS = frozenset(
    {"$and", "$or", "$in", "$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$exists"}
)


def _plain_filter(value: object) -> bool:
    if isinstance(value, dict):
        return all(
            (not key.startswith("$") or key in _FIND_OPERATORS) and _plain_filter(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return all(_plain_filter(item) for item in value)
    return True


def union_filters(pipeline: object) -> dict[str, dict[str, Any]]:
    """The collections an aggregation names once only, in a `$unionWith` whose pipeline
    opens with a plain `$match`: that match, by collection."""
    named: Counter[object] = Counter()
    filters: dict[str, dict[str, Any]] = {}

    def walk(stages: object) -> None:
        for stage in stages if isinstance(stages, list) else []:
            for name, spec in stage.items() if isinstance(stage, dict) else ():
                inner = spec.get("pipeline") if isinstance(spec, dict) else None
                if name == "$unionWith":
                    collection = spec.get("coll") if isinstance(spec, dict) else spec
                    named[collection] += 1  # None: the enclosing collection, whichever
                    first = inner[0] if isinstance(inner, list) and inner else {}
                    match = first.get("$match") if isinstance(first, dict) else None
                    one = isinstance(collection, str) and len(first) == 1
                    if one and isinstance(match, dict) and _plain_filter(match):
                        filters[str(collection)] = match
                elif name in ("$lookup", "$graphLookup") and isinstance(spec, dict):
                    named[spec.get("from")] += 1
                elif name == "$facet" and isinstance(spec, dict):
                    for branch in spec.values():
                        walk(branch)
                walk(inner)

    walk(pipeline)
    if named[None]:  # a union of the enclosing collection: which one is not worked out here
        return {}
    return {name: match for name, match in filters.items() if named[name] == 1}


_load_collection_documents = AsyncAggregationCursor._load_collection_documents


async def load_collection_documents(self: Any, collection_name: str) -> list[Any]:
    """The documents of a collection an aggregation joins, read through the `$match` that
    opens the `$unionWith` naming it.

    mongoeco reads every document of such a collection, copies each, and only then runs the
    union's pipeline over them: a login's count, a union with the window's attempts and the
    sessions, cost a pass over both whole collections (0.13 ms more per stored session). When
    the collection is named once, by a union whose pipeline opens with a plain `$match`, and
    there is no collation, it is read as a find with that filter (through the indexes): the
    union's pipeline, that `$match` included, then runs as before on what it can use.
    """
    match = union_filters(self._effective_pipeline()).get(collection_name)
    # And named once among what mongoeco itself plans to read for the aggregation.
    requests = getattr(getattr(self, "_pipeline", None), "requests", None) or ()
    reads = [r for r in requests if getattr(r, "operator", None) == "documents"]
    once = sum(getattr(r, "collection", None) == collection_name for r in reads) == 1
    if match is None or not once or self._collation is not None:
        documents: list[Any] = await _load_collection_documents(self, collection_name)
        return documents
    dialect = getattr(self._collection, "mongodb_dialect", MONGODB_DIALECT_70)
    operation = compile_find_operation(
        match, comment=self._comment, max_time_ms=self._max_time_ms, dialect=dialect
    )
    scan = self._scan_collection_with_operation(collection_name, operation)
    return [document async for document in scan]


@cache
def _takes_wrappers(decode: Any) -> bool:
    """Whether a codec's `decode` takes `preserve_bson_wrappers` (as mongoeco asks it)."""
    try:
        return "preserve_bson_wrappers" in inspect.signature(decode).parameters
    except (TypeError, ValueError):
        return False


_compare_sort_values = sorting._compare_sort_values


def compare_sort_values(left: Any, right: Any, **options: Any) -> int:
    """Two sort values of one type that Python orders as BSON does (dates, ObjectIds),
    compared as Python compares them.

    mongoeco compares them through its general BSON comparison, which costs a search over
    the demo's 1,000 posts about a third of its time, sorting its matches by date and id. Its
    own shortcut for numbers and strings is kept, and anything else (another type, a mix of
    types or of time zones, a collation) still goes its way.
    """
    kind = type(left)
    if (
        options.get("collation") is None
        and kind is type(right)
        # Dates at one UTC offset (both naive, as BSON's decode) order as instants.
        and (
            isinstance(left, ObjectId)
            or (kind is datetime and left.utcoffset() == right.utcoffset())
        )
    ):
        return int(left > right) - int(left < right)
    result: int = _compare_sort_values(left, right, **options)
    return result


@cache
def install() -> None:
    """The fixes that replace parts of mongoeco's own modules, once per process."""
    proxy.WireCursorStore = Int64CursorStore  # type: ignore[attr-defined]
    validators = _executor_validation._WIRE_COMMAND_VALIDATORS
    for command in ("getMore", "killCursors"):
        validators[command] = _taking_int64_cursor_ids(validators[command])
    sorting._compare_sort_values = compare_sort_values
    AsyncAggregationCursor._load_collection_documents = load_collection_documents  # type: ignore[method-assign]


def wire_server(path: Path | None, host: str, port: int) -> proxy.AsyncMongoEcoProxyServer:
    """A wire server on the SQLite file at `path`, or in memory when it is None."""
    install()
    engine = MemoryEngine() if path is None else FixedSQLiteEngine(str(path))
    return proxy.AsyncMongoEcoProxyServer(
        engine=engine,
        host=host,
        port=port,
        mongodb_dialect="8.0",
        pymongo_profile="auto-installed",
    )
