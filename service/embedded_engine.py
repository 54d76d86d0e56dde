"""The embedded store's mongoeco engines, with the scans they need not do replaced by lookups.

Imported only in embedded mode (service/db.py imports it when it starts the store), since it
loads the emulator. Everything here answers exactly what mongoeco's own engines answer, only
sooner: where a shortcut cannot prove that, the engine's own code runs.

The memory engine's reads (`IndexedMemoryEngine`). mongoeco 4.11 uses an index only for
equality on a single-field one; any other find scans every document with a generic matcher
and then sorts with a generic comparator. Here finds (and an aggregation's leading
`$match`/`$sort`/`$skip`/`$limit`, which mongoeco hands to the engine as a find) and counts of
committed data, without collation, hint or text query, go one of these ways:

- The filter is an equality prefix of a declared index, or an `$or` of such branches (either
  ANDed with anything else): candidates come from ordered copies of those indexes, in the
  sort's order when the rest of the index is the sort (the branches merged, stopping at skip
  + limit), or else the few candidates in the collection's order. A count of exactly such
  equalities is counted in the index.
- Otherwise, or for a sorted read without a limit over many candidates: one pass over the
  collection, then a sort of the matches by their plain values.
- A filter that requires a substring (a regex of a plain ASCII literal, case-insensitive or
  not, or an `$or` of them: the service's search) and no index range narrows: candidates
  come from text columns of the fields searched (`_TextColumn`: each document's text folded
  as `re` folds case, in one string that `str.find` searches in C), then sorted by value.
- Either way through a plain-Python test compiled from the filter (equality, `$and`, `$or`,
  `$regex`), which hands any document it is not sure of to the engine's own matcher, with the
  whole filter.

Whatever these paths cannot vouch for (values Python does not order or compare as MongoDB
does: null, missing, arrays, mixed types...) takes mongoeco's own path. The ordered copies
follow writes, and are rebuilt from mongoeco's index map whenever they might differ
(`_OrderedIndex`); the text columns follow the keys each write changed (`_LINEAGE`), and are
rebuilt when they cannot. `tests/test_embedded_engine.py` compares every path with mongoeco's.
"""

import bisect
import heapq
import operator
import re
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import aclosing, contextmanager
from copy import deepcopy
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache, lru_cache
from itertools import chain, count, islice
from operator import itemgetter
from string import ascii_lowercase
from typing import Any, NamedTuple, cast

from bson import ObjectId
from mongoeco.core._filtering_support import compile_regex
from mongoeco.core.bson_ordering import bson_equality_key
from mongoeco.core.codec import DocumentCodec
from mongoeco.core.operation_limits import enforce_deadline
from mongoeco.core.query_plan import (
    AndCondition,
    EqualsCondition,
    ExistsCondition,
    GreaterThanCondition,
    GreaterThanOrEqualCondition,
    InCondition,
    LessThanCondition,
    LessThanOrEqualCondition,
    MatchAll,
    NotEqualsCondition,
    NotInCondition,
    OrCondition,
    QueryNode,
    RegexCondition,
)
from mongoeco.engines._memory_collection import MemoryCollection, MemoryIndexMap
from mongoeco.engines.memory import MemoryEngine, _StoredDocument
from mongoeco.engines.semantic_core import EngineFindSemantics, stream_finalize_documents
from mongoeco.engines.sqlite import SQLiteEngine
from mongoeco.session import ClientSession

_SCALARS = (ObjectId, str, datetime)  # values whose equality has one form
# Values whose equality, between two of one type, means one index key.
_PLAIN_VALUES = frozenset({ObjectId, str, datetime, bool, int})


def _engines() -> tuple[type[Any], type[Any]]:
    """mongoeco's two engines, without a full scan of the collection on every insert.

    mongoeco 4.11 checks each document inserted alone (and its wire server inserts one at a
    time) against every stored `_id` by value, so that ids equal as numbers but stored
    differently (1 and 1.0) collide. That makes each insert cost O(collection size): tens of
    milliseconds at ten thousand posts, minutes for a seed. An ObjectId has one stored form,
    so the engine's own lookup by storage key already finds its duplicate; for ObjectId ids
    (every id this service writes) the scan is skipped, for any other id it still runs.
    The memory engine likewise checks a compound unique index (the votes' one) against every
    document, where single-field ones use its key map; here the map serves both. The SQLite
    engine still checks those by scanning. `tests/test_embedded.py` checks that duplicate ids
    and duplicate pairs are still refused.

    The memory engine also reads through its indexes (`IndexedMemoryEngine`, below);
    `tests/test_embedded_engine.py` compares its answers with mongoeco's own. It leaves its
    indexes alone when an update changes no indexed field (a vote's count). A `$unionWith`
    reads only what its opening `$match` selects (`install_union_pushdown`), both engines
    compile a collection's validator once rather than on every write
    (`install_validator_cache`), and the memory engine takes an insert of many documents as
    one batch (`install_batched_inserts`).
    """
    install_union_pushdown()
    install_lineage()
    install_validator_cache()
    install_batched_inserts()
    return IndexedMemoryEngine, ScanFreeSQLiteEngine


# Query operators a `$unionWith`'s opening `$match` may use to be read as a find: plain
# comparisons of stored values, nothing that evaluates expressions or variables.
_FIND_OPERATORS = frozenset(
    {"$and", "$or", "$in", "$eq", "$gt", "$gte", "$lt", "$lte", "$exists", "$type"}
)
# How often a union was read through its `$match` (tests check that the path is taken).
union_pushdowns: Counter[str] = Counter()


def _plain_filter(value: Any) -> bool:
    if isinstance(value, dict):
        return all(
            (not key.startswith("$") or key in _FIND_OPERATORS) and _plain_filter(item)
            for key, item in value.items()
        )
    if isinstance(value, list):
        return all(_plain_filter(item) for item in value)
    return True


def union_filters(pipeline: Any) -> dict[str, dict[str, Any]]:
    """The collections a pipeline names only once, in a `$unionWith` whose own pipeline opens
    with a plain `$match`: that match, by collection."""
    references: Counter[str] = Counter()
    filters: dict[str, dict[str, Any]] = {}

    def walk(stages: Any) -> None:
        for stage in stages if isinstance(stages, list) else []:
            if not isinstance(stage, dict) or len(stage) != 1:
                continue
            [(name, spec)] = stage.items()
            if name == "$unionWith" and isinstance(spec, str):
                references[spec] += 1
            elif name == "$unionWith" and isinstance(spec, dict):
                collection, inner = spec.get("coll"), spec.get("pipeline") or []
                if not isinstance(collection, str):
                    continue
                references[collection] += 1
                opening = inner[0] if isinstance(inner, list) and inner else {}
                match = opening.get("$match") if isinstance(opening, dict) else None
                if len(opening) == 1 and isinstance(match, dict) and _plain_filter(match):
                    filters[collection] = match
                walk(inner)
            elif name == "$lookup" and isinstance(spec, dict):
                references[str(spec.get("from"))] += 1
                walk(spec.get("pipeline"))
            elif name == "$facet" and isinstance(spec, dict):
                for inner in spec.values():
                    walk(inner)

    walk(pipeline)
    return {name: match for name, match in filters.items() if references[name] == 1}


class _Selected(list[Any]):
    """A collection's documents that a union's opening `$match` selected, read as a find for
    this aggregation alone (fresh copies, as every scan gives)."""

    def __init__(self, documents: Iterable[Any], match: dict[str, Any]) -> None:
        super().__init__(documents)
        self.match = match


def install_union_pushdown() -> None:
    """Make mongoeco's aggregations read a `$unionWith`'s collection through its `$match`.

    mongoeco 4.11 loads every document of a collection that a `$unionWith` or `$lookup` names,
    copies each, and only then runs the stage's pipeline over them, so a login's union with
    the window's attempts and the sessions that succeeded cost a pass over both whole
    collections. When a collection is named once, by a `$unionWith` whose pipeline opens with
    a plain `$match`, and the aggregation has no collation, it is read as a find with that
    filter instead (through the engine's indexes): those documents are all it can use. The
    stage then runs the rest of its pipeline on them as they are: they already match, and
    were copied for this read alone. Anything else is loaded, and joined, as mongoeco does.
    """
    from mongoeco.api._async.aggregation_cursor import AsyncAggregationCursor
    from mongoeco.api.operations import compile_find_operation
    from mongoeco.compat import MONGODB_DIALECT_70
    from mongoeco.core.aggregation import resources
    from mongoeco.core.aggregation import stages as stages_module
    from mongoeco.core.aggregation.runtime import _require_union_with_spec

    cursor: Any = AsyncAggregationCursor
    stages: Any = stages_module
    if getattr(cursor, "_union_pushdown", False):
        return
    load_all = cursor._load_collection_documents
    union_all = stages._apply_union_with
    scoped: Any = resources.scoped_resolver_kwargs

    async def load(self: Any, collection_name: str) -> list[Any]:
        match = union_filters(self._effective_pipeline()).get(collection_name)
        if match is None or getattr(self, "_collation", None) is not None:
            return list(await load_all(self, collection_name))
        union_pushdowns[collection_name] += 1
        operation = compile_find_operation(
            match,
            comment=self._comment,
            max_time_ms=self._max_time_ms,
            dialect=getattr(self._collection, "mongodb_dialect", MONGODB_DIALECT_70),
        )
        scan = self._scan_collection_with_operation(collection_name, operation)
        return _Selected([document async for document in scan], match)

    def union_with(
        documents: list[Any],
        spec: object,
        collection_resolver: Any,
        variables: dict[str, Any] | None = None,
        **options: Any,
    ) -> list[Any]:
        union = _require_union_with_spec(spec)
        name, pipeline = union["coll"], union["pipeline"] or []
        selected = collection_resolver(name) if collection_resolver and name else None
        if not isinstance(selected, _Selected) or pipeline[:1] != [{"$match": selected.match}]:
            return list(union_all(documents, spec, collection_resolver, variables, **options))
        union_pushdowns["joined as read"] += 1
        named = ("dialect", "collation", "spill_policy", "lookup_hash_max_associations")
        settings = {key: options.pop(key) for key in (*named, "deadline") if key in options}
        joined: list[Any] = list(selected)
        if pipeline[1:]:
            joined = stages.apply_pipeline(
                joined,
                pipeline[1:],
                **scoped(collection_resolver, name, options),
                variables=variables,
                **settings,
            )
        return [deepcopy(document) for document in documents] + joined

    cursor._load_collection_documents = load
    stages._apply_union_with = union_with
    cursor._union_pushdown = True


# How many compiled collection validators are kept (a handful of collections use one).
_VALIDATORS_KEPT = 32
# How often a write's validator was found compiled (tests check that the path is taken).
validator_cache_hits: Counter[str] = Counter()


def install_validator_cache() -> None:
    """Compile each collection validator once, not on every write.

    mongoeco 4.11 compiles a collection's `validator` (deep copies of its `$jsonSchema`, and a
    check of the schema itself) for each document it inserts or updates: a tenth of a vote's
    or a seeded document's time in the store. The compiled validator is a function of the
    collection's `validator`, `validationLevel` and `validationAction` and the dialect alone,
    and mongoeco only reads it, so one compiled for options equal to these is reused. The
    options are compared by value on every write (a `collMod` that changes the validator
    gives a different value, so it is compiled afresh); a validator that does not compile
    raises as before and is not kept.
    """
    from mongoeco.engines import semantic_core

    module: Any = semantic_core
    if getattr(module, "_validator_cache", False):
        return
    compile_validator = module.compile_collection_validation_semantics
    kept: OrderedDict[int, tuple[tuple[Any, Any, Any], Any, Any]] = OrderedDict()
    numbers = count()

    def compiled(options: dict[str, object] | None, *, dialect: Any = None) -> Any:
        if not options or options.get("validator") is None:
            return compile_validator(options, dialect=dialect)
        spec = (
            options.get("validator"),
            options.get("validationLevel", "strict"),
            options.get("validationAction", "error"),
        )
        for number, (known, known_dialect, validator) in reversed(kept.items()):
            if known_dialect is dialect and known == spec:
                kept.move_to_end(number)
                validator_cache_hits["hit"] += 1
                return validator
        validator = compile_validator(options, dialect=dialect)
        kept[next(numbers)] = (deepcopy(spec), dialect, validator)
        if len(kept) > _VALIDATORS_KEPT:
            kept.popitem(last=False)
        validator_cache_hits["compiled"] += 1
        return validator

    module.compile_collection_validation_semantics = compiled
    module._validator_cache = True


# How often an insert command went as one batch (tests check that the path is taken).
batched_inserts: Counter[str] = Counter()


def install_batched_inserts() -> None:
    """Insert the documents of one ordered `insert` command as one batch.

    mongoeco 4.11's wire server inserts the documents of an `insert` command one by one, each
    a whole write of its own (operation context, locks, the collection's options copied,
    change publication), where its own `insert_many` writes them as one batch: a third less
    time a document, and most of the time of a seed or an import. On the memory engines
    here, an acknowledged, ordered `insert` of several documents outside a transaction goes
    through `insert_many`, in the command's session. That commits the documents before the
    first one it cannot insert, and stops there, exactly as the command's loop would; from
    that document on, the command's own loop runs on the rest (it fails on it again, or
    inserts it if the batch was wrong to refuse it), and its answer counts the batch's
    documents in. Anything else (unordered, in a transaction, with a write concern, one
    document) is the stock command.
    """
    from mongoeco._types.documents import WriteCommandResult
    from mongoeco.api._async import _database_admin_write_commands as commands
    from mongoeco.errors import BulkWriteError

    service: Any = commands.DatabaseAdminWriteCommandService
    if getattr(service, "_batched_inserts", False):
        return
    stock = service.command_insert

    async def command_insert(
        self: Any, spec: dict[str, object], *, session: ClientSession | None = None
    ) -> Any:
        documents = spec.get("documents")
        if (
            (session is not None and session.in_transaction)
            or not isinstance(documents, list)
            or len(documents) < 2
            or spec.get("ordered", True) is not True
            or not set(spec) <= {"insert", "documents", "ordered", "$db", "lsid", "$clusterTime"}
            or not isinstance(getattr(self._admin._database, "_engine", None), ScanFreeMemoryEngine)
        ):
            return await stock(self, spec, session=session)
        try:
            name = self._admin._require_collection_name(spec.get("insert"), "insert")
            documents = self._admin._normalize_insert_documents(documents)
        except Exception:
            return await stock(self, spec, session=session)  # it raises the same
        collection = self._admin._database.get_collection(name)
        batched_inserts["commands"] += 1
        try:
            await collection.insert_many(documents, ordered=True, session=session)
        except BulkWriteError as error:
            details: Any = getattr(error, "details", None) or {}
            done = int(details.get("nInserted", 0))
        else:
            return WriteCommandResult(count=len(documents))
        batched_inserts["stopped"] += 1
        rest = await stock(self, {**spec, "documents": documents[done:]}, session=session)
        errors = [replace(entry, index=entry.index + done) for entry in rest.write_errors or []]
        return replace(rest, count=rest.count + done, write_errors=errors or None)

    service.command_insert = command_insert
    service._batched_inserts = True


# --- What changed between two versions of a collection --------------------------------------

# Every write to a MemoryCollection replaces its persistent root (`_values`, an immutable
# rpds.HashTrieMap of storage key -> stored version). For the latest writes, `_LINEAGE` keeps,
# by the new root's identity, the root it replaced and the storage keys whose versions differ
# between the two; each entry holds both roots, so no identity in it can be reused. Whatever
# was derived from one root is brought to a later one by redoing only the keys on the chain
# between them; a root the chain does not reach (a rollback, a cleared collection, entries
# forgotten) means deriving again. Only the roots' contents matter, not which collection object
# holds them, so a transaction's copy published in place of the committed one chains too.
_LINEAGE: OrderedDict[int, tuple[Any, Any, tuple[Any, ...]]] = OrderedDict()
_LINEAGE_LIMIT = 16_384


def _remember(collection: MemoryCollection[Any, Any], before: Any, keys: tuple[Any, ...]) -> None:
    after = collection._values
    if after is before:
        return
    _LINEAGE[id(after)] = (after, before, keys)
    if len(_LINEAGE) > _LINEAGE_LIMIT:
        _LINEAGE.popitem(last=False)


def install_lineage() -> None:
    """Record in `_LINEAGE` each change of a MemoryCollection's root made by a write of one
    key (`__setitem__`, `__delitem__`, `replace_key`: the ones mongoeco's engine makes, and
    which its other mutators call). Any other change leaves a root with no entry."""
    collection: Any = MemoryCollection
    if getattr(collection, "_lineage", False):
        return
    set_item, del_item, replace_key = (
        collection.__setitem__,
        collection.__delitem__,
        collection.replace_key,
    )

    def __setitem__(self: MemoryCollection[Any, Any], key: Any, value: Any) -> None:
        before = self._values
        set_item(self, key, value)
        _remember(self, before, (key,))

    def __delitem__(self: MemoryCollection[Any, Any], key: Any) -> None:
        before = self._values
        del_item(self, key)
        _remember(self, before, (key,))

    def replace_key_(self: MemoryCollection[Any, Any], key: Any, replacement: Any) -> None:
        before = self._values
        replace_key(self, key, replacement)
        _remember(self, before, (key, replacement))

    collection.__setitem__ = __setitem__
    collection.__delitem__ = __delitem__
    collection.replace_key = replace_key_
    collection._lineage = True


def _changed_keys(old: Any, new: Any, limit: int) -> set[Any] | None:
    """The storage keys whose versions may differ between root `old` and the later root
    `new`, if `_LINEAGE` links them in at most `limit` writes; else None."""
    keys: set[Any] = set()
    root = new
    for _ in range(limit + 1):
        if root is old:
            return keys
        entry = _LINEAGE.get(id(root))
        if entry is None or entry[0] is not root:
            return None
        keys.update(entry[2])
        root = entry[1]
    return None


# --- Substrings of text ------------------------------------------------------------------------

_SEPARATOR = "\x00"  # never in a piece searched for (printable ASCII only)


@cache
def _folding() -> tuple[dict[int, str], frozenset[str]]:
    """How Python's `re` (mongoeco's regex engine) matches text to an ASCII letter when it
    ignores case, character by character: a `str.translate` table taking each character
    that matches a letter to that lowercase letter (A-Z, and on Python 3.13 also the dotted
    and dotless i, the long s and the Kelvin sign), asked of `re` itself once; and the
    characters it matches to more than one letter (none on 3.13), which no table folds.
    Every other character matches no ASCII character but itself (re folds case only)."""
    table: dict[int, str] = {}
    unfoldable: set[str] = set()
    everything = "".join(map(chr, chain(range(0xD800), range(0xE000, 0x110000))))
    for character in re.findall("[a-z]", everything, re.IGNORECASE):
        letters = [a for a in ascii_lowercase if re.fullmatch(a, character, re.IGNORECASE)]
        if len(letters) == 1:
            table[ord(character)] = letters[0]
        else:
            unfoldable.add(character)
    return table, frozenset(unfoldable)


class _TextColumn:
    """One top-level field of one version of a collection, for finding the documents whose
    field may contain a piece of ASCII text without reading every document.

    Each document's field, if it is a string, is kept folded (`_folding`: lowercased, and
    the few other characters `re` matches to an ASCII letter made that letter) as one
    segment of `corpus`, every segment preceded by NUL; `candidates` finds a lowercase ASCII
    piece in it with `str.find` (in C) and maps each hit to its segment's document. A
    document whose field holds anything else (an array, a number, null...) is in `others`,
    always a candidate, for the matcher to decide. A document without the field is never
    one: no regex matches a missing field. Candidates are a superset of the matches: a text
    contains a piece, in any case, exactly when its folded form contains the piece's
    lowercase (and contains it as written only if so too); the read's matcher still tests
    each with the whole filter.

    `root` is the collection version it reflects. `follow` redoes the keys written since
    (from `_LINEAGE`): their old segments become dead (owner None) and their new text is
    appended; dead segments are dropped when they outnumber the live ones (by rebuilding).
    """

    def __init__(self, name: str, root: Any, read: Callable[[Any], dict[str, Any]]) -> None:
        self.name = name
        self.root = root
        self.corpus = ""
        self.starts: list[int] = []  # each segment's first position in the corpus
        self.owners: list[Any] = []  # each segment's storage key, None once dead
        self.segments: dict[Any, int] = {}  # storage key -> its live segment
        self.others: set[Any] = set()
        self.dead = 0
        self._append([(key, read(data)) for key, data in root.items()])

    def _append(self, documents: Iterable[tuple[Any, dict[str, Any]]]) -> None:
        parts = [self.corpus]
        position = len(self.corpus)
        for key, document in documents:
            value = document.get(self.name, _MISSING)
            if value is _MISSING:
                continue
            if type(value) is not str:
                self.others.add(key)
                continue
            if value.isascii():
                folded = value.lower()
            else:
                table, unfoldable = _folding()
                if unfoldable and not unfoldable.isdisjoint(value):
                    self.others.add(key)
                    continue
                folded = value.translate(table)
            position += len(_SEPARATOR)
            self.segments[key] = len(self.owners)
            self.starts.append(position)
            self.owners.append(key)
            parts += (_SEPARATOR, folded)
            position += len(folded)
        self.corpus = "".join(parts)

    def follow(self, root: Any, keys: set[Any], read: Callable[[Any], dict[str, Any]]) -> bool:
        """Bring the column to `root`, where only `keys` changed; False if it is worth
        rebuilding instead (more dead segments than live ones)."""
        changed = []
        for key in keys:
            self.others.discard(key)
            segment = self.segments.pop(key, None)
            if segment is not None:
                self.owners[segment] = None
                self.dead += 1
            data = root.get(key, _MISSING)
            if data is not _MISSING:
                changed.append((key, read(data)))
        self._append(changed)
        self.root = root
        return self.dead <= max(64, len(self.segments))

    def candidates(self, piece: str) -> set[Any]:
        """Every document whose field may contain `piece` (lowercase ASCII, not empty)."""
        found = set(self.others)
        corpus, starts, owners = self.corpus, self.starts, self.owners
        position = corpus.find(piece)
        while position != -1:
            segment = bisect.bisect_right(starts, position) - 1
            owner = owners[segment]
            if owner is not None:
                found.add(owner)
            following = segment + 1
            # The rest of this segment cannot add a document: look from the next one.
            position = corpus.find(piece, starts[following]) if following < len(starts) else -1
        return found


def _substring(node: QueryNode) -> tuple[str, str] | None:
    """(field, lowercase piece) if the node is a regex of a plain ASCII literal on a top-level
    field (as the service's search writes it), which only texts containing it match."""
    if not isinstance(node, RegexCondition) or node.options not in ("", "i"):
        return None
    if "." in node.field or node.field.startswith("$"):
        return None
    literal = _literal(node.pattern)
    return (node.field, literal.lower()) if literal else None


def _searches(node: QueryNode) -> list[tuple[str, str]] | None:
    """Substring searches of which the node requires at least one to match, if there are:
    a literal regex, or an $or whose every branch requires one."""
    search = _substring(node)
    if search is not None:
        return [search]
    if not isinstance(node, OrCondition) or not node.clauses:
        return None
    found: list[tuple[str, str]] = []
    for clause in node.clauses:
        branch = next((s for s in map(_searches, _conjuncts(clause)) if s is not None), None)
        if branch is None:
            return None
        found += branch
    return found


def _listed_ids(plan: QueryNode) -> list[ObjectId] | None:
    """The ObjectIds of an `_id: {$in: [...]}` the plan requires (alone or ANDed), if any."""
    clauses = plan.clauses if isinstance(plan, AndCondition) else (plan,)
    for clause in clauses:
        if (
            isinstance(clause, InCondition)
            and clause.field == "_id"
            and all(isinstance(value, ObjectId) for value in clause.values)
        ):
            return [value for value in clause.values if isinstance(value, ObjectId)]
    return None


class ScanFreeMemoryEngine(MemoryEngine):
    def _candidate_items_for_plan_locked(
        self, coll: Any, query_plan: QueryNode, **kwargs: Any
    ) -> list[tuple[Any, Any]]:
        """`_id: {$in: [ObjectIds]}` finds its candidates by storage key, in the collection's
        order, where mongoeco 4.11 compares every listed id with every document (seconds for
        a hundred ids at ten thousand posts). An ObjectId has one stored form, so the key is
        the whole answer; the full filter still runs on each candidate."""
        ids = _listed_ids(query_plan)
        if ids is None or not isinstance(coll, MemoryCollection):
            return list(super()._candidate_items_for_plan_locked(coll, query_plan, **kwargs))
        keys = {self._storage_key(value) for value in ids}
        found = sorted((key for key in keys if key in coll), key=coll.ordinal_for)
        return [(key, coll[key]) for key in found]

    def _ensure_unique_indexes(
        self, db_name: str, coll_name: str, candidate: dict[str, Any], *args: Any, **kwargs: Any
    ) -> None:
        if isinstance(candidate.get("_id"), ObjectId):
            kwargs["scan_payload_id"] = False
        indexes_view = kwargs.get("indexes_view")
        indexes = (
            (self._indexes if indexes_view is None else indexes_view)
            .get(db_name, {})
            .get(coll_name, [])
        )
        looked_up = [
            index
            for index in indexes
            if self._check_by_lookup(db_name, coll_name, candidate, index, kwargs)
        ]
        if looked_up:
            rest = [index for index in indexes if index not in looked_up]
            kwargs["indexes_view"] = {db_name: {coll_name: rest}}
        super()._ensure_unique_indexes(db_name, coll_name, candidate, *args, **kwargs)

    def _check_by_lookup(
        self,
        db_name: str,
        coll_name: str,
        candidate: dict[str, Any],
        index: Any,
        kwargs: dict[str, Any],
    ) -> bool:
        """Check a compound unique index (the votes' (post_id, user_id)) in its own key
        map, as mongoeco already does for single-field ones, instead of comparing the
        candidate with every stored document. Only for plain, present, scalar values:
        True when checked here, False to leave the index to mongoeco."""
        fields = index["fields"]
        if not index.get("unique") or len(fields) < 2 or index.get("collation") is not None:
            return False
        if index.get("partial_filter_expression") or index.get("sparse"):
            return False
        if not all("." not in f and isinstance(candidate.get(f), _SCALARS) for f in fields):
            return False
        data_view = kwargs.get("index_data_view")
        index_map = (
            (self._index_data if data_view is None else data_view)
            .get(db_name, {})
            .get(coll_name, {})
            .get(index["name"])
        )
        if index_map is None:
            return False
        key = self._index_key(candidate, fields)
        # The document being replaced, in the same form mongoeco's own check uses.
        exclude = kwargs.get("exclude_storage_key")
        storage_view = kwargs.get("storage_view")
        stored = (
            (self._storage if storage_view is None else storage_view)
            .get(db_name, {})
            .get(coll_name, {})
        )
        if exclude is not None and exclude not in stored:
            exclude = self._storage_key(exclude)
        if any(match != exclude for match in index_map.get(key, ())):
            raise self._unique_key_error(  # type: ignore[no-untyped-call]
                f"Duplicate key for unique index '{index['name']}': {fields}={key!r}",
                f"{db_name}.{coll_name}",
                candidate,
                index=index,
                conflict=key,
            )
        return True


class ScanFreeSQLiteEngine(SQLiteEngine):
    def _validate_document_against_unique_indexes(
        self, db_name: str, coll_name: str, document: dict[str, Any], **kwargs: Any
    ) -> None:
        if isinstance(document.get("_id"), ObjectId):
            kwargs["scan_payload_id"] = False
        super()._validate_document_against_unique_indexes(db_name, coll_name, document, **kwargs)


# Index keys are tuples of mongoeco's equality keys, one per field: ("bool", True),
# ("str", "x"), ("objectid", oid), ("datetime", naive UTC in ms), ("number", Decimal). For
# these, and for one kind per field, Python's order of the keys is MongoDB's order of the
# values. Anything else (null or missing: "none"; arrays: "list"; documents, binaries,
# floats that are not small integers...) makes the index unusable here until it is gone.
_ORDERED_TAGS = frozenset({"bool", "str", "objectid", "datetime"})
_EXACT_INTEGERS = Decimal(2**53)  # up to here a double holds every integer exactly


def _tag(component: Any) -> str | None:
    """The kind of one field's key, if keys of that kind sort as MongoDB sorts values."""
    if type(component) is not tuple or len(component) != 2:
        return None
    tag, value = component
    if tag in _ORDERED_TAGS:
        return str(tag)
    if (
        tag == "number"
        and type(value) is Decimal
        and value.is_finite()
        and value == value.to_integral_value()
        and abs(value) < _EXACT_INTEGERS
    ):
        return "number"
    return None


def _ordered_key(key: Any, width: int) -> tuple[list[str], tuple[Any, ...]] | None:
    """The kinds of an index key's fields and the key as the ordered copy stores it, with
    each ObjectId as its 12 bytes (the same order, but compared in C rather than in
    Python); None if a field is not of an ordered kind."""
    if type(key) is not tuple or len(key) != width:
        return None
    tags: list[str] = []
    sortable: list[Any] = []
    for component in key:
        tag = _tag(component)
        if tag is None:
            return None
        tags.append(tag)
        sortable.append((tag, component[1].binary) if tag == "objectid" else component)
    return tags, tuple(sortable)


def _sortable(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """A query's key in the ordered copy's form (see `_ordered_key`)."""
    return tuple(
        (c[0], c[1].binary) if type(c) is tuple and len(c) == 2 and c[0] == "objectid" else c
        for c in key
    )


_entry_key = itemgetter(0)

# The mongoeco internals the memory engine's reads rely on (4.11). If a release renames them,
# IndexedMemoryEngine reads as ScanFreeMemoryEngine does rather than fail.
_INTERNALS = all(
    (
        hasattr(MemoryIndexMap(), "_buckets"),
        hasattr(MemoryCollection(), "_values"),
        hasattr(MemoryEngine, "_record_index_membership_undo_locked"),
        hasattr(MemoryEngine, "_update_indexes_locked"),
        hasattr(MemoryEngine, "_purge_expired_documents_locked"),
        hasattr(MemoryEngine, "_borrow_public_storage_document"),
        "decoded_wrapped" in getattr(_StoredDocument, "__slots__", ()),
    )
)


class _Stale(Exception):
    """An ordered copy disagrees with the index or the collection: drop it, read the stock way."""


@dataclass(eq=False)
class _OrderedIndex:
    """One index's (key, storage key) entries, sorted by key, for one version of the index
    (keys as `_sortable` makes them).

    `buckets` is the persistent root of mongoeco's own map of that index (an immutable
    rpds.HashTrieMap, which every change replaces) that the entries were derived from; it is
    held, so its identity cannot be reused. The engine's write hook moves the entries along
    when it sees the root it knows replaced by the next one; any change it does not see
    (rollback, transaction commit, rebuild, drop) leaves a root it does not know, and the next
    read rebuilds. So a stale copy costs a rebuild, never a wrong answer.
    """

    spec: tuple[Any, ...]
    buckets: Any
    entries: list[tuple[tuple[Any, ...], Any]]
    unordered: int = 0  # members whose key is not of an ordered kind: none, list, ...
    kinds: list[dict[str, int]] = field(default_factory=list)  # per field: kind -> members
    record: Any = None  # the index's record it was built for (its spec decides)

    @classmethod
    def build(cls, spec: tuple[Any, ...], buckets: Any) -> "_OrderedIndex":
        """Every entry of the index version `buckets`, sorted."""
        width = len(spec[1])
        index = cls(spec, buckets, [], 0, [{} for _ in range(width)])
        entries = index.entries
        for key, members in buckets.items():
            ordered = _ordered_key(key, width)
            if ordered is None:
                index.unordered += len(members)
                continue
            tags, sortable = ordered
            for kinds, tag in zip(index.kinds, tags, strict=True):
                kinds[tag] = kinds.get(tag, 0) + len(members)
            entries.extend((sortable, member) for member in members)
        entries.sort(key=_entry_key)
        return index

    def change(self, key: tuple[Any, ...], storage_key: Any, *, added: bool) -> None:
        """Apply one membership change; raise _Stale if the entries disagree."""
        ordered = _ordered_key(key, len(self.kinds))
        step = 1 if added else -1
        if ordered is None:
            self.unordered += step
            if self.unordered < 0:
                raise _Stale("more unordered members removed than added")
            return
        tags, key = ordered
        for kinds, tag in zip(self.kinds, tags, strict=True):
            count = kinds.get(tag, 0) + step
            if count > 0:
                kinds[tag] = count
            elif count == 0:
                del kinds[tag]
            else:
                raise _Stale("more members of a kind removed than added")
        entries = self.entries
        if added:
            bisect.insort_right(entries, (key, storage_key), key=_entry_key)
            return
        low = bisect.bisect_left(entries, key, key=_entry_key)
        high = bisect.bisect_right(entries, key, lo=low, key=_entry_key)
        for position in range(low, high):
            if entries[position][1] == storage_key:
                del entries[position]
                return
        raise _Stale("removed member not among the entries")

    def kind(self, position: int) -> str | None:
        """The one kind of key the field at `position` holds, None if several (or none)."""
        kinds = self.kinds[position]
        return next(iter(kinds)) if len(kinds) == 1 else None

    def span(self, prefix: tuple[Any, ...]) -> tuple[int, int]:
        """The entries whose key starts with `prefix`, as a slice."""
        width = len(prefix)

        def head(entry: tuple[tuple[Any, ...], Any]) -> tuple[Any, ...]:
            return entry[0][:width]

        low = bisect.bisect_left(self.entries, prefix, key=head)
        return low, bisect.bisect_right(self.entries, prefix, lo=low, key=head)


class _HeldRemoval(NamedTuple):
    """An index removal held back until the same document's new entries come (see
    IndexedMemoryEngine._document_state_rollback_locked)."""

    db_name: str
    coll_name: str
    storage_key: Any
    document: dict[str, Any]
    views: tuple[dict[str, Any] | None, dict[str, Any] | None]


def _keyed_by_fields(record: Any) -> bool:
    """An index whose entries for a document are exactly its keys on the index's fields: not
    sparse, partial, TTL, text or wildcard, whose membership depends on more than that."""
    return (
        not record.sparse
        and record.partial_filter_expression is None
        and record.expire_after_seconds is None
        and record.weights is None
        and all(type(d) is int and "$" not in name for name, d in record.key)
    )


def _index_spec(record: Any) -> tuple[Any, ...]:
    return (
        record.name,
        tuple(record.fields),
        tuple((name, direction) for name, direction in record.key),
        bool(record.unique),
        bool(record.sparse),
        bool(record.hidden),
        record.collation,
        record.partial_filter_expression,
        record.expire_after_seconds,
        record.weights,
    )


def _plain_index(record: Any) -> bool:
    """A B-tree-like index on top-level fields covering every document of the collection."""
    return (
        record.name != "_id_"
        and not record.sparse
        and not record.hidden
        and record.collation is None
        and record.partial_filter_expression is None
        and record.expire_after_seconds is None
        and record.weights is None
        and all(
            "." not in name and not name.startswith("$") and type(d) is int and d in (1, -1)
            for name, d in record.key
        )
    )


# --- The filter's shape -------------------------------------------------------------------


def _conjuncts(node: QueryNode) -> list[QueryNode]:
    if isinstance(node, AndCondition):
        return [leaf for clause in node.clauses for leaf in _conjuncts(clause)]
    return [node]


def _equality(node: QueryNode) -> tuple[str, Any] | None:
    """(field, index key) if the node is an equality an index can answer."""
    if (
        isinstance(node, EqualsCondition)
        and not node.null_matches_undefined
        and "." not in node.field
        and not node.field.startswith("$")
    ):
        key = bson_equality_key(node.value)
        if _tag(key) is not None:
            return node.field, key
    return None


@dataclass(frozen=True)
class _Branch:
    """One branch of the filter's disjunction: the equalities every match of it satisfies.

    `exact` when the branch is nothing but those equalities (so an index whose prefix is
    exactly them holds exactly its matches)."""

    equalities: dict[str, Any]
    exact: bool


def _merge_equalities(nodes: Iterable[QueryNode], into: dict[str, Any]) -> bool:
    """Add the nodes' equalities to `into`; True if the nodes are nothing but equalities
    that agree with each other."""
    exact = True
    for node in nodes:
        equality = _equality(node)
        if equality is None:
            exact = False
            continue
        name, key = equality
        if name in into and into[name] != key:
            exact = False  # contradictory: a superset (the first value) is still right
            continue
        into[name] = key
    return exact


def _disjunctions(plan: QueryNode) -> Iterator[list[_Branch]]:
    """Ways to see the filter as an OR of branches with equalities, best first: the top-level
    equalities alone, then each top-level $or with the top-level equalities in each branch."""
    conjuncts = [_as_disjunction(conjunct) for conjunct in _conjuncts(plan)]
    top: dict[str, Any] = {}
    top_exact = _merge_equalities(conjuncts, top)
    if top:
        yield [_Branch(top, top_exact)]
    for position, conjunct in enumerate(conjuncts):
        if not isinstance(conjunct, OrCondition) or not conjunct.clauses:
            continue
        others: dict[str, Any] = {}
        others_exact = _merge_equalities(conjuncts[:position] + conjuncts[position + 1 :], others)
        branches = []
        for clause in conjunct.clauses:
            equalities = dict(others)
            exact = _merge_equalities(_conjuncts(clause), equalities) and others_exact
            branches.append(_Branch(equalities, exact))
        if all(branch.equalities for branch in branches):
            yield branches


def _as_disjunction(node: QueryNode) -> QueryNode:
    """An `$in` of plain values as the $or of its equalities (which it is, for values an
    index can answer), so that each value's range of an index can serve it."""
    if (
        isinstance(node, InCondition)
        and not node.null_matches_undefined
        and node.values
        and all(_equality(EqualsCondition(node.field, value)) for value in node.values)
    ):
        return OrCondition(tuple(EqualsCondition(node.field, value) for value in node.values))
    return node


# Node kinds whose evaluation cannot fail or differ by document in a way the engine would
# report (an error): a filter of only these may skip documents. Others (e.g. $where, $expr,
# $jsonSchema, geo) go to mongoeco as they are.
_SAFE_NODES = (
    MatchAll,
    EqualsCondition,
    NotEqualsCondition,
    GreaterThanCondition,
    GreaterThanOrEqualCondition,
    LessThanCondition,
    LessThanOrEqualCondition,
    InCondition,
    NotInCondition,
    ExistsCondition,
    RegexCondition,
    AndCondition,
    OrCondition,
)


def _safe(node: QueryNode) -> bool:
    if isinstance(node, AndCondition | OrCondition):
        return all(_safe(clause) for clause in node.clauses)
    if isinstance(node, RegexCondition):
        try:
            compile_regex(node.pattern, node.options)
        except Exception:
            return False
    return isinstance(node, _SAFE_NODES)


# --- The native matcher ----------------------------------------------------------------------


class _NotPlain(Exception):
    """The document holds something other than a plain scalar where the filter looks."""


type _Predicate = Callable[[dict[str, Any]], bool]
_MISSING = object()
_REGEX_SPECIALS = frozenset(".^$*+?{}[]\\|()")


def _literal(pattern: str) -> str | None:
    """The text an ASCII regex matches if it is a plain literal (as re.escape writes one)."""
    text: list[str] = []
    characters = iter(pattern)
    for character in characters:
        if not character.isascii() or not character.isprintable():
            return None
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None or not escaped.isascii() or escaped.isalnum() or escaped == "_":
                return None
            if not escaped.isprintable():
                return None
            text.append(escaped)
        elif character in _REGEX_SPECIALS:
            return None
        else:
            text.append(character)
    return "".join(text)


class _Source:
    """A generated matcher's source: one expression, its constants kept out of the text."""

    def __init__(self) -> None:
        self.constants: list[Any] = []
        self.locals = 0

    def constant(self, value: Any) -> str:
        self.constants.append(value)
        return f"K[{len(self.constants) - 1}]"

    def local(self) -> str:
        self.locals += 1
        return f"v{self.locals}"

    def path(self, field: str) -> tuple[str, str]:
        """A local for the field's value and the expression that reads it into the local:
        M if the path is missing (a part missing, or a plain scalar or null on the way), the
        value if every part on the way is a document; through an array, or any other kind of
        value, np() (arrays fan out, which the engine's matcher does)."""
        parts = field.split(".")
        v = self.local()
        source = f"d.get({self.constant(parts[0])}, M)"
        for part in parts[1:]:
            outer = self.local()
            descend = f"{outer}.get({self.constant(part)}, M)"
            stops = f"{outer} is M or {outer} is None or isinstance({outer}, PLAIN)"
            source = (
                f"({descend} if type({outer} := {source}) is dict else (M if {stops} else np()))"
            )
        return v, f"({v} := {source})"

    def expression(self, node: QueryNode) -> str | None:
        """The node as an expression on the document `d`, True or False when the values it
        reads are plain, else raising _NotPlain (by calling `np()`); None if the node is
        not one of the simple kinds."""
        if isinstance(node, MatchAll):
            return "True"
        if isinstance(node, AndCondition | OrCondition):
            parts = [self.expression(clause) for clause in node.clauses]
            if not parts or any(part is None for part in parts):
                return None
            joiner = " and " if isinstance(node, AndCondition) else " or "
            return "(" + joiner.join(part for part in parts if part is not None) + ")"
        field = getattr(node, "field", None)
        if not isinstance(field, str) or not all(
            part and part[0] != "$" for part in field.split(".")
        ):
            return None
        v, read = self.path(field)
        # A missing or null value matches none of these (the null-matching forms are left out
        # above): False, where anything else not plain goes to the engine's matcher.
        otherwise = f"(False if {v} is M or {v} is None else np())"
        if isinstance(node, EqualsCondition):
            plain = _same_kind(node.value, read, v)
            if node.null_matches_undefined or plain is None:
                return None
            return f"(({v} == {self.constant(node.value)}) if {plain} else {otherwise})"
        if isinstance(node, InCondition):
            # Values all of one plain kind, and no null (which would match a missing field).
            kinds = {_same_kind(value, read, v) for value in node.values}
            if node.null_matches_undefined or len(kinds) != 1 or None in kinds:
                return None
            [plain] = kinds
            values = self.constant(frozenset(node.values))
            return f"(({v} in {values}) if {plain} else {otherwise})"
        comparison = _COMPARISONS.get(type(node))
        if comparison is not None:
            value = getattr(node, "value", None)
            plain = _same_kind(value, read, v)
            if plain is None:
                return None
            # Not `otherwise`: mongoeco orders null and missing below everything ($lt: ""
            # matches null), so those go to its matcher.
            return f"(({v} {comparison} {self.constant(value)}) if {plain} else np())"
        if isinstance(node, RegexCondition):
            regex = self.constant(compile_regex(node.pattern, node.options))
            search = f"({regex}.search({v}) is not None)"
            literal = _literal(node.pattern) if node.options in ("", "i") else None
            if literal is not None and node.options == "i":
                # For ASCII text and an ASCII literal, IGNORECASE is ASCII case folding;
                # other text goes to the regex (whose Unicode folding matches U+017F to s).
                folded = self.constant(literal.lower())
                search = f"(({folded} in {v}.lower()) if {v}.isascii() else {search})"
            elif literal is not None:
                search = f"({self.constant(literal)} in {v})"
            return f"({search} if type({read}) is str else {otherwise})"
        return None


# For a plain value and a stored value of the same kind, Python compares as MongoDB does:
# numbers, datetimes, ObjectIds (by their bytes) and strings (by code point, which is the
# order of their UTF-8 bytes, MongoDB's without a collation).
_COMPARISONS: dict[type[QueryNode], str] = {
    GreaterThanCondition: ">",
    GreaterThanOrEqualCondition: ">=",
    LessThanCondition: "<",
    LessThanOrEqualCondition: "<=",
}


def _same_kind(value: Any, read: str, v: str) -> str | None:
    """An expression true when the stored value (read by `read` into `v`) is of the query
    value's plain kind, where Python's == and order are MongoDB's; None if the query
    value is of no such kind. `type(...) is` keeps True from equalling 1."""
    if type(value) in (bool, int, str):
        return f"type({read}) is {type(value).__name__}"
    if isinstance(value, ObjectId):
        return f"isinstance({read}, OID)"
    if type(value) is datetime and value.tzinfo is None:
        return f"type({read}) is DT and {v}.tzinfo is None"
    return None


def _not_plain() -> bool:
    raise _NotPlain


def _predicate(node: QueryNode) -> _Predicate | None:
    """A plain-Python test of the filter on documents whose fields it reads are plain
    scalars (raising _NotPlain otherwise), or None if the filter has other kinds of node.
    Generated as one expression, as mongoeco's CompiledQuery does, to save calls per
    document; the constants (field names, values, patterns) are passed in, never written
    into the source, so filters of one shape share one compiled function."""
    source = _Source()
    expression = source.expression(node)
    if expression is None:
        return None
    return _compiled(expression)(source.constants)


@lru_cache(maxsize=1024)
def _compiled(expression: str) -> Callable[[list[Any]], _Predicate]:
    """The test for one shape of filter, made once (compiling takes longer than most reads):
    a function of the constants that returns the test."""
    namespace: dict[str, Any] = {
        "M": _MISSING,
        "OID": ObjectId,
        "DT": datetime,
        "PLAIN": (str, int, float, datetime, ObjectId),
        "np": _not_plain,
    }
    exec(
        f"def make(K):\n    def test(d):\n        return {expression}\n    return test\n", namespace
    )
    make: Callable[[list[Any]], _Predicate] = namespace["make"]
    return make


class _NativeMatcher:
    """The engine's matcher, answered in plain Python where the document allows.

    Stands in for semantics.compiled_query (mongoeco calls only its `match`). The plain test
    answers only when every value it reads is a plain scalar of the query value's type (or a
    string, for a regex), where its answer is the engine's; on anything else (arrays, null,
    missing fields, other types) the whole document goes to the engine's own matcher. Clauses
    are tried in the engine's order and stop at the same place, so a clause the plain test
    never reaches is one the engine would not have evaluated either."""

    def __init__(self, test: _Predicate, stock: Any, stats: Counter[str]) -> None:
        self.test = test
        self.stock = stock
        self._stats = stats

    def match(self, document: dict[str, Any], *, variables: Any = None) -> bool:
        try:
            return self.test(document)
        except _NotPlain:
            self._stats["matcher_fallbacks"] += 1
            return bool(self.stock.match(document, variables=variables))


# --- The engine ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scan:
    """A branch's candidates: entries[low:high] of an ordered index, whose keys' `prefix`
    first components are the branch's equalities."""

    index: _OrderedIndex
    low: int
    high: int
    prefix: int
    exact: bool

    def __len__(self) -> int:
        return self.high - self.low

    def positions(self, direction: int) -> range:
        if direction == 1:
            return range(self.low, self.high)
        return range(self.high - 1, self.low - 1, -1)

    def stream(self, direction: int, width: int) -> Iterator[tuple[tuple[Any, ...], Any]]:
        """(sort key, storage key) of each entry, in the sort's direction."""
        entries = self.index.entries
        start, stop = self.prefix, self.prefix + width
        for position in self.positions(direction):
            key, storage_key = entries[position]
            yield key[start:stop], storage_key


class IndexedMemoryEngine(ScanFreeMemoryEngine):
    """The memory engine, reading through ordered copies of its indexes where it can.

    `index_stats` counts which way reads went (tests use it to see that they do): reads of
    index ranges in the sort's order (ordered_finds), of a few index candidates sorted by
    their keys (index_sorts) or in the collection's order (index_finds, index_counts); whole
    scans with the native matcher (scan_finds, scan_sorts, scan_counts); mongoeco's own
    (stock_finds, stock_counts); and rebuilds of ordered copies, documents given to the
    matcher on these paths (matched_documents), and those it left to the engine's matcher
    (matcher_fallbacks).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ordered: dict[tuple[str, str], dict[str, _OrderedIndex]] = {}
        self._texts: dict[tuple[str, str], dict[str, _TextColumn]] = {}
        self._touched: list[tuple[str, tuple[Any, ...]]] | None = None
        # Index removals held back in the current write's scope (see below); None outside one.
        self._held: list[_HeldRemoval] | None = None
        self.index_stats: Counter[str] = Counter()
        self.index_reads = _INTERNALS  # False: read as ScanFreeMemoryEngine does
        install_lineage()  # the text columns follow writes through it
        super().__init__(*args, **kwargs)

    # An update that changes no indexed field leaves the indexes alone.

    @contextmanager
    def _document_state_rollback_locked(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        """mongoeco's scope of one document write (rolled back whole if it raises), in which
        the index entries a write would remove are held back (`_held`) until the same
        document's new entries come: an update or replace takes the old document's out of
        every index, then puts the new one's in, and when none of its index keys changed,
        neither is done. Whatever is still held when the scope ends (a delete, a changed
        `_id`) is removed then, inside the scope; if the write raises, nothing held was
        applied, and mongoeco's rollback restores the rest."""
        with super()._document_state_rollback_locked(*args, **kwargs) as journal:
            outer, self._held = self._held, []
            try:
                yield journal
                for held in self._held:
                    self._remove_held(held)
            finally:
                self._held = outer

    def _update_indexes_locked(
        self,
        db_name: str,
        coll_name: str,
        storage_key: Any,
        document: dict[str, Any],
        *,
        action: str = "insert",
        index_data_view: dict[str, Any] | None = None,
        indexes_view: dict[str, Any] | None = None,
    ) -> None:
        views = (index_data_view, indexes_view)
        if self._held is not None and action == "delete":
            records = (self._indexes if indexes_view is None else indexes_view).get(db_name, {})
            if all(_keyed_by_fields(record) for record in records.get(coll_name, [])):
                self._held.append(_HeldRemoval(db_name, coll_name, storage_key, document, views))
                self.index_stats["index_removals_held"] += 1
                return
        if self._held and action == "insert":
            for position, held in enumerate(self._held):
                if (held.db_name, held.coll_name, held.storage_key) == (
                    db_name,
                    coll_name,
                    storage_key,
                ) and all(map(operator.is_, held.views, views)):
                    del self._held[position]
                    if self._same_index_keys(
                        db_name, coll_name, held.document, document, indexes_view
                    ):
                        self.index_stats["index_updates_skipped"] += 1
                        return
                    self._remove_held(held)
                    break
        self._apply_index_change(db_name, coll_name, storage_key, document, action, views)

    def _remove_held(self, held: "_HeldRemoval") -> None:
        self._apply_index_change(
            held.db_name, held.coll_name, held.storage_key, held.document, "delete", held.views
        )

    def _same_index_keys(
        self,
        db_name: str,
        coll_name: str,
        old: dict[str, Any],
        new: dict[str, Any],
        indexes_view: dict[str, Any] | None,
    ) -> bool:
        """Whether every index has the same keys for both versions of a document. A field
        whose value is the same plain value, of the same type, gives the same key; anything
        else is compared by the keys themselves (which cost more to compute)."""
        records = (self._indexes if indexes_view is None else indexes_view).get(db_name, {})
        for record in records.get(coll_name, []):
            for name in record.fields:
                before, after = old.get(name, _MISSING), new.get(name, _MISSING)
                plain = type(before) is type(after) and type(after) in _PLAIN_VALUES
                if "." in name or not (before is after or (plain and before == after)):
                    break
            else:
                continue
            if self._index_keys(old, record.fields) != self._index_keys(new, record.fields):
                return False
        return True

    # Keeping the ordered copies in step with writes.

    def _apply_index_change(
        self,
        db_name: str,
        coll_name: str,
        storage_key: Any,
        document: dict[str, Any],
        action: str,
        views: tuple[dict[str, Any] | None, dict[str, Any] | None],
    ) -> None:
        index_data_view, indexes_view = views

        def update() -> None:
            super(IndexedMemoryEngine, self)._update_indexes_locked(
                db_name,
                coll_name,
                storage_key,
                document,
                action=action,
                index_data_view=index_data_view,
                indexes_view=indexes_view,
            )

        tracked = self._ordered.get((db_name, coll_name))
        if not tracked or (index_data_view is not None and index_data_view is not self._index_data):
            # Nothing to keep, or another view (a transaction's): the committed copy's root
            # no longer matches after its commit, which rebuilds.
            update()
            return
        maps = self._index_data.get(db_name, {}).get(coll_name, {})
        before = {
            name: index_map
            for name, index_map in maps.items()
            if name in tracked
            and isinstance(index_map, MemoryIndexMap)
            and index_map._buckets is tracked[name].buckets
        }
        # The keys mongoeco adds or removes, as it records them for its own undo.
        touched: list[tuple[str, tuple[Any, ...]]] = []
        outer, self._touched = self._touched, touched
        try:
            update()
        finally:
            self._touched = outer
        if not before:
            return
        records = (self._indexes if indexes_view is None else indexes_view).get(db_name, {})
        specs = {record.name: record for record in records.get(coll_name, [])}
        for name, index_map in before.items():
            ordered = tracked.get(name)
            if ordered is None:
                continue
            after = index_map._buckets
            if after is ordered.buckets:
                continue
            record = specs.get(name)
            if record is None or (
                record is not ordered.record and _index_spec(record) != ordered.spec
            ):
                del tracked[name]
                continue
            keys = dict.fromkeys(key for index, key in touched if index == name)
            try:
                if not keys:
                    raise _Stale("the index changed in a way the hook did not see")
                distinct = len(ordered.buckets)
                for key in keys:
                    old, new = ordered.buckets.get(key), after.get(key)
                    distinct += (new is not None) - (old is not None)
                    was = old is not None and storage_key in old
                    now = new is not None and storage_key in new
                    if was != now:
                        ordered.change(key, storage_key, added=now)
                if distinct != len(after):
                    raise _Stale("keys came or went that the hook did not see")
            except _Stale:
                del tracked[name]  # rebuilt at the next read
                continue
            ordered.buckets = after

    def _record_index_membership_undo_locked(
        self,
        db_name: str,
        coll_name: str,
        index_name: str,
        key: tuple[Any, ...],
        storage_key: Any,
        **kwargs: Any,
    ) -> None:
        if self._touched is not None:
            self._touched.append((index_name, key))
        super()._record_index_membership_undo_locked(
            db_name, coll_name, index_name, key, storage_key, **kwargs
        )

    def _ordered_index(self, db_name: str, coll_name: str, record: Any) -> _OrderedIndex | None:
        """The ordered copy of the committed index, rebuilt if it is not of its version."""
        index_map = self._index_data.get(db_name, {}).get(coll_name, {}).get(record.name)
        if not isinstance(index_map, MemoryIndexMap):
            return None
        spec = _index_spec(record)
        tracked = self._ordered.setdefault((db_name, coll_name), {})
        ordered = tracked.get(record.name)
        if ordered is None or ordered.spec != spec or ordered.buckets is not index_map._buckets:
            self.index_stats["rebuilds"] += 1
            ordered = _OrderedIndex.build(spec, index_map._buckets)
            ordered.record = record
            tracked[record.name] = ordered
        return ordered

    async def drop_collection(
        self, db_name: str, coll_name: str, *args: Any, **kwargs: Any
    ) -> None:
        try:
            await super().drop_collection(db_name, coll_name, *args, **kwargs)
        finally:
            self._ordered.pop((db_name, coll_name), None)
            self._texts.pop((db_name, coll_name), None)

    async def drop_database(self, db_name: str, *args: Any, **kwargs: Any) -> None:
        try:
            await super().drop_database(db_name, *args, **kwargs)
        finally:
            for namespace in [n for n in self._ordered if n[0] == db_name]:
                del self._ordered[namespace]
            for namespace in [n for n in self._texts if n[0] == db_name]:
                del self._texts[namespace]

    async def rename_collection(
        self, db_name: str, coll_name: str, new_name: str, *args: Any, **kwargs: Any
    ) -> None:
        try:
            await super().rename_collection(db_name, coll_name, new_name, *args, **kwargs)
        finally:
            for namespace in ((db_name, coll_name), (db_name, new_name)):
                self._ordered.pop(namespace, None)
                self._texts.pop(namespace, None)

    # Reads.

    def _native(self, semantics: EngineFindSemantics) -> EngineFindSemantics:
        """The same read with the native matcher, where the filter is simple enough."""
        stock = semantics.compiled_query
        if stock is None or isinstance(semantics.query_plan, MatchAll):
            return semantics
        if semantics.collation is not None or semantics.text_query is not None:
            return semantics
        try:
            test = _predicate(semantics.query_plan)
        except Exception:  # a pattern Python's re refuses: the engine reports it
            return semantics
        if test is None:
            return semantics
        # Duck-typed: mongoeco only calls the matcher's `match`.
        matcher: Any = _NativeMatcher(test, stock, self.index_stats)
        return replace(semantics, compiled_query=matcher)

    def _may_read_here(
        self, coll_name: str, semantics: EngineFindSemantics, session: ClientSession | None
    ) -> bool:
        """Whether this read may take the paths below: a plain read of committed data."""
        return bool(
            self.index_reads
            and (session is None or not session.in_transaction)
            and not self._is_profile_namespace(coll_name)
            and semantics.text_query is None
            and semantics.hint is None
            and semantics.collation is None
            and semantics.compiled_query is not None
            and self._direct_id_lookup_from_plan(semantics.query_plan) is None
            and _listed_ids(semantics.query_plan) is None  # looked up by key, below
            and _safe(semantics.query_plan)
        )

    def scan_find_semantics(
        self,
        db_name: str,
        coll_name: str,
        semantics: EngineFindSemantics,
        *,
        context: ClientSession | None = None,
    ) -> Any:
        if not self.index_reads:
            return super().scan_find_semantics(db_name, coll_name, semantics, context=context)
        if not self._may_read_here(coll_name, semantics, context):
            self.index_stats["stock_finds"] += 1
            return super().scan_find_semantics(
                db_name, coll_name, self._native(semantics), context=context
            )
        return self._scan(db_name, coll_name, semantics, context)

    async def _scan(
        self,
        db_name: str,
        coll_name: str,
        semantics: EngineFindSemantics,
        context: ClientSession | None,
    ) -> AsyncIterator[dict[str, Any]]:
        enforce_deadline(semantics.deadline)
        native = self._native(semantics)
        async with self._get_lock(db_name, coll_name):
            try:
                documents = self._find_locked(db_name, coll_name, native, context)
            except _Stale:
                self._ordered.pop((db_name, coll_name), None)
                documents = None
        if documents is None:
            self.index_stats["stock_finds"] += 1
            stock: Any = super().scan_find_semantics(db_name, coll_name, native, context=context)
            async with aclosing(stock) as stream:
                async for document in stream:
                    yield document
            return
        self._record_operation_metadata(
            context,
            operation="scan_collection",
            comment=semantics.comment,
            max_time_ms=semantics.max_time_ms,
            hint=None,
        )
        # As the stock scan: the list was taken under the lock; copies leave it.
        for document in documents:
            enforce_deadline(semantics.deadline)
            yield cast("dict[str, Any]", self._copy_document_containers(document))

    async def count_find_semantics(
        self,
        db_name: str,
        coll_name: str,
        semantics: EngineFindSemantics,
        *,
        context: ClientSession | None = None,
        operation_context: Any = None,
    ) -> int:
        session = operation_context.session if operation_context is not None else context
        if self._may_read_here(coll_name, semantics, session):
            async with self._get_lock(db_name, coll_name):
                try:
                    total = self._count_locked(db_name, coll_name, semantics, session)
                except _Stale:
                    self._ordered.pop((db_name, coll_name), None)
                    total = None
            if total is not None:
                return total
        if self.index_reads:
            self.index_stats["stock_counts"] += 1
            semantics = self._native(semantics)
        return int(
            await super().count_find_semantics(
                db_name,
                coll_name,
                semantics,
                context=context,
                operation_context=operation_context,
            )
        )

    def _prepare_locked(
        self,
        db_name: str,
        coll_name: str,
        semantics: EngineFindSemantics,
        context: ClientSession | None,
    ) -> tuple[MemoryCollection[Any, Any], list[Any]] | None:
        """The committed collection and its plain indexes, after mongoeco's TTL purge; None
        if this read cannot use them (a transaction's view, a write being published...)."""
        if self._publication_stack or self._active_mvcc_state(context) is not None:
            return None
        self._purge_expired_documents_locked(
            db_name,
            coll_name,
            context=context,
            indexes_view=self._indexes,
            index_data_view=self._index_data,
            storage_view=self._storage,
            now=semantics.variables.now.replace(tzinfo=UTC),
        )
        collection = self._storage.get(db_name, {}).get(coll_name, MemoryCollection())
        if not isinstance(collection, MemoryCollection):
            return None
        indexes = [
            record
            for record in self._indexes.get(db_name, {}).get(coll_name, [])
            if _plain_index(record)
        ]
        return collection, indexes

    def _find_locked(
        self,
        db_name: str,
        coll_name: str,
        semantics: EngineFindSemantics,
        context: ClientSession | None,
    ) -> list[Any] | None:
        """The read's public documents (to be copied), or None for the stock scan."""
        prepared = self._prepare_locked(db_name, coll_name, semantics, context)
        if prepared is None:
            return None
        collection, indexes = prepared
        sort: list[tuple[str, Any]] = list(semantics.sort or [])
        if not all(type(direction) is int and direction in (1, -1) for _, direction in sort):
            return None  # {"$meta": ...} and the like
        scans = self._plan(db_name, coll_name, collection, indexes, semantics.query_plan, sort)
        few = scans is not None and sum(map(len, scans)) * 2 <= len(collection)
        selected: list[Any] | None
        keys: list[Any] | None
        if not sort:
            if scans is not None and few:
                self.index_stats["index_finds"] += 1
                keys = self._natural_order(collection, scans)
            else:
                keys = self._text_candidates(db_name, coll_name, collection, semantics.query_plan)
                self.index_stats["scan_finds" if keys is None else "text_finds"] += 1
            selected = self._page(self._matching(collection, keys, semantics), semantics)
            return self._publish(selected, semantics)
        if scans is not None and semantics.limit is not None:
            selected = self._ordered_page(collection, scans, semantics)
            if selected is not None:
                self.index_stats["ordered_finds"] += 1
                return self._publish(selected, semantics)
        if scans is not None and few:
            self.index_stats["index_sorts"] += 1
            selected = self._sorted_by_index(collection, scans, semantics)
        else:
            keys = self._text_candidates(db_name, coll_name, collection, semantics.query_plan)
            selected = self._sorted_by_value(collection, semantics, keys)
            if selected is None:
                return None
            self.index_stats["scan_sorts" if keys is None else "text_sorts"] += 1
        return self._publish(selected, semantics)

    def _count_locked(
        self,
        db_name: str,
        coll_name: str,
        semantics: EngineFindSemantics,
        context: ClientSession | None,
    ) -> int | None:
        prepared = self._prepare_locked(db_name, coll_name, semantics, context)
        if prepared is None:
            return None
        collection, indexes = prepared
        scans = self._plan(db_name, coll_name, collection, indexes, semantics.query_plan, [])
        if scans is not None and all(scan.exact for scan in scans):
            self.index_stats["index_counts"] += 1
            total = self._count_union(collection, scans)
        else:
            native = self._native(semantics)
            if scans is not None and sum(map(len, scans)) * 2 <= len(collection):
                keys: list[Any] | None = self._natural_order(collection, scans)
                self.index_stats["index_counts"] += 1
            else:
                keys = self._text_candidates(db_name, coll_name, collection, semantics.query_plan)
                self.index_stats["scan_counts" if keys is None else "text_counts"] += 1
            total = sum(1 for _ in self._matching(collection, keys, native))
        total = max(0, total - semantics.skip)
        return total if semantics.limit is None else min(total, max(semantics.limit, 0))

    # Planning: which index ranges hold every match.

    def _plan(
        self,
        db_name: str,
        coll_name: str,
        collection: MemoryCollection[Any, Any],
        indexes: list[Any],
        plan: QueryNode,
        sort: list[tuple[str, Any]],
    ) -> list[_Scan] | None:
        """Index ranges whose union holds every match of the filter (with a sort, each
        listing its documents in the sort's order, no two tying), or None."""
        for branches in _disjunctions(plan):
            scans: list[_Scan] = []
            kinds: set[tuple[str | None, ...]] = set()
            for branch in branches:
                chosen = self._choose(db_name, coll_name, collection, indexes, branch, sort)
                if chosen is None:
                    break
                scan, sort_kinds = chosen
                scans.append(scan)
                kinds.add(tuple(sort_kinds))
            else:
                if len(kinds) > 1 and len(collection):
                    continue  # the branches' sort keys would not compare as the values do
                if sort and len(scans) > 1 and "_id" not in (name for name, _ in sort):
                    continue  # two branches' documents could tie on the sort
                return scans
        return None

    def _choose(
        self,
        db_name: str,
        coll_name: str,
        collection: MemoryCollection[Any, Any],
        indexes: list[Any],
        branch: _Branch,
        sort: list[tuple[str, Any]],
    ) -> tuple[_Scan, list[str | None]] | None:
        """The index range that holds the branch's documents: the smallest among those with
        the longest equality prefix. With a sort, the index's next fields must be the sort,
        in its directions or all reversed, and documents must not tie on it (the sort has
        _id, or the index is unique and the sort is all of the rest)."""
        candidates: list[tuple[int, Any]] = []
        names = [name for name, _ in sort]
        wanted = [direction for _, direction in sort]
        for record in indexes:
            fields = list(record.fields)
            if sort:
                width = len(sort)
                prefix = next(
                    (
                        p
                        for p in range(1, len(fields) - width + 1)
                        if fields[p : p + width] == names
                    ),
                    None,
                )
                if prefix is None or not set(fields[:prefix]) <= branch.equalities.keys():
                    continue
                stored = [direction for _, direction in record.key[prefix : prefix + width]]
                if len(set(wanted)) != 1 or (stored != wanted and stored != [-d for d in wanted]):
                    continue
                if "_id" not in names and not (record.unique and prefix + width == len(fields)):
                    continue
            else:
                prefix = 0
                while prefix < len(fields) and fields[prefix] in branch.equalities:
                    prefix += 1
                if prefix == 0:
                    continue
            candidates.append((prefix, record))
        longest = max((prefix for prefix, _ in candidates), default=0)
        best: tuple[_Scan, list[str | None]] | None = None
        for prefix, record in candidates:
            if prefix == longest:
                chosen = self._range(db_name, coll_name, collection, record, prefix, branch, sort)
                if chosen is not None and (best is None or len(chosen[0]) < len(best[0])):
                    best = chosen
        return best

    def _range(
        self,
        db_name: str,
        coll_name: str,
        collection: MemoryCollection[Any, Any],
        record: Any,
        prefix: int,
        branch: _Branch,
        sort: list[tuple[str, Any]],
    ) -> tuple[_Scan, list[str | None]] | None:
        """The index's range for the branch's equalities, if its ordered copy is usable."""
        ordered = self._ordered_index(db_name, coll_name, record)
        if ordered is None or ordered.unordered or len(ordered.entries) != len(collection):
            return None  # unusable (a null, an array...) or not one entry per document
        fields = list(record.fields)
        key = tuple(branch.equalities[name] for name in fields[:prefix])
        if ordered.entries and any(
            ordered.kind(position) != _tag(key[position]) for position in range(prefix)
        ):
            return None  # mixed kinds in the field, or a query value of another kind
        sort_kinds = [ordered.kind(prefix + position) for position in range(len(sort))]
        if ordered.entries and None in sort_kinds:
            return None
        exact = branch.exact and len(branch.equalities) == prefix
        low, high = ordered.span(_sortable(key))
        return _Scan(ordered, low, high, prefix, exact), sort_kinds

    # Producing the documents. Candidates are mongoeco's stored versions (`data`).

    def _matching(
        self,
        collection: MemoryCollection[Any, Any] | None,
        keys: Iterable[Any] | None,
        semantics: EngineFindSemantics,
    ) -> Iterator[Any]:
        """The stored versions that match, of `keys` (or of the whole collection, if None),
        in that order: the document as the stock scan borrows it, through the read's
        matcher (the native one, or the engine's) with the whole filter."""
        compiled = semantics.compiled_query
        if compiled is None:
            raise _Stale("no compiled matcher")  # compile_find_semantics always makes one
        if isinstance(compiled, _NativeMatcher):
            test, stock = compiled.test, compiled.stock
        else:
            test, stock = compiled.match, compiled
        variables = semantics.variables
        deadline = semantics.deadline
        borrow = self._borrow_storage_document
        if keys is not None:
            source: Iterable[Any] = self._stored(collection, keys)
        elif collection is not None:
            source = collection.values()
        else:
            raise _Stale("nothing to read")
        examined = fallbacks = 0
        try:
            for data in source:
                examined += 1
                if deadline is not None:
                    enforce_deadline(deadline)
                # _borrow_storage_document's cached path, inlined: this loop is the read.
                if type(data) is _StoredDocument and data.decoded_wrapped is not None:
                    document = data.decoded_wrapped
                else:
                    document = borrow(data)
                try:
                    hit = test(document)
                except _NotPlain:
                    fallbacks += 1
                    hit = stock.match(document, variables=variables)
                if hit:
                    yield data
        finally:
            self.index_stats["matched_documents"] += examined
            self.index_stats["matcher_fallbacks"] += fallbacks

    def _stored(
        self, collection: MemoryCollection[Any, Any] | None, keys: Iterable[Any]
    ) -> Iterator[Any]:
        if collection is None:
            yield from keys  # already stored versions
            return
        values = collection._values
        for storage_key in keys:
            data = values.get(storage_key, _MISSING)
            if data is _MISSING:
                raise _Stale("an index entry without its document")
            yield data

    def _page(self, matches: Iterator[Any], semantics: EngineFindSemantics) -> list[Any]:
        limit = semantics.limit
        stop = None if limit is None else semantics.skip + limit
        return list(islice(matches, semantics.skip, stop))

    def _publish(self, selected: list[Any], semantics: EngineFindSemantics) -> list[Any]:
        """The selected versions as the stock scan emits them (projected, public), uncopied."""
        if semantics.projection is None:
            # The public form mongoeco caches on each stored version: the stock scan's
            # to_public() of the same borrowed document, without converting it again.
            return [
                self._borrow_public_storage_document(data)
                if type(data) is _StoredDocument
                else DocumentCodec.to_public(self._borrow_storage_document(data))
                for data in selected
            ]
        documents = stream_finalize_documents(
            (self._borrow_storage_document(data) for data in selected),
            semantics,
            apply_skip_limit_phase=False,
            emit_public_documents=False,
        )
        return [DocumentCodec.to_public(document) for document in documents]

    def _ordered_page(
        self,
        collection: MemoryCollection[Any, Any],
        scans: list[_Scan],
        semantics: EngineFindSemantics,
    ) -> list[Any] | None:
        """The page, reading the index ranges in the sort's order and stopping at its end;
        None if the filter turns out too selective for that (then sorting matches wins)."""
        assert semantics.sort and semantics.limit is not None
        if semantics.limit == 0:
            return []
        direction, width = semantics.sort[0][1], len(semantics.sort)
        keys, skipped = self._in_order(scans, direction, width, semantics.skip)
        skip = 0 if skipped else semantics.skip
        # Exact scans match at every candidate; otherwise give up after a quarter of the
        # collection without a full page.
        budget = None if all(scan.exact for scan in scans) else max(1_000, len(collection) // 4)
        matches = self._matching(collection, _within(keys, budget), semantics)
        try:
            return list(islice(matches, skip, skip + semantics.limit))
        except _OverBudget:
            return None

    def _in_order(
        self, scans: list[_Scan], direction: int, width: int, skip: int
    ) -> tuple[Iterator[Any], bool]:
        """Storage keys in the sort's order, merging the branches and dropping repeats; and
        whether the first `skip` were passed over here, without reading their documents
        (only with exact scans, whose every candidate matches)."""
        exact = all(scan.exact for scan in scans)
        if len(scans) == 1:
            positions = scans[0].positions(direction)
            if exact and skip:
                positions = positions[skip:]
            entries = scans[0].index.entries
            return (entries[position][1] for position in positions), exact and bool(skip)
        merged = heapq.merge(
            *(scan.stream(direction, width) for scan in scans),
            key=_entry_key,
            reverse=direction == -1,
        )
        keys = _unique(entry[1] for entry in merged)
        if exact and skip:
            return islice(keys, skip, None), True
        return keys, False

    def _sorted_by_index(
        self,
        collection: MemoryCollection[Any, Any],
        scans: list[_Scan],
        semantics: EngineFindSemantics,
    ) -> list[Any]:
        """The page of matches among few candidates, sorted by their index keys."""
        assert semantics.sort
        direction, width = semantics.sort[0][1], len(semantics.sort)
        sort_keys: dict[Any, tuple[Any, ...]] = {}
        for scan in scans:
            start, stop = scan.prefix, scan.prefix + width
            for key, storage_key in scan.index.entries[scan.low : scan.high]:
                sort_keys.setdefault(storage_key, key[start:stop])
        stored = list(self._stored(collection, sort_keys))
        by_version = {
            id(data): sort_key for data, sort_key in zip(stored, sort_keys.values(), strict=True)
        }
        matched = [(by_version[id(data)], data) for data in self._matching(None, stored, semantics)]
        matched.sort(key=_entry_key, reverse=direction == -1)
        return self._page(iter(data for _, data in matched), semantics)

    def _sorted_by_value(
        self,
        collection: MemoryCollection[Any, Any],
        semantics: EngineFindSemantics,
        keys: list[Any] | None = None,
    ) -> list[Any] | None:
        """The page of matches of a whole-collection scan (or of the candidates `keys`, in
        the collection's order), sorted by their plain values; None if a match's sort value
        is not a plain scalar of its field's one type. Python's sort is stable and the scan
        reads in the collection's order, so documents that tie keep that order, as they do
        in the stock sort (which breaks ties by scan position)."""
        assert semantics.sort
        names = [name for name, _ in semantics.sort]
        directions = [direction for _, direction in semantics.sort]
        kinds: list[type | None] = [None] * len(names)
        borrow = self._borrow_storage_document
        matched: list[tuple[tuple[Any, ...], Any]] = []
        for data in self._matching(collection, keys, semantics):
            key = _sort_values(borrow(data), names, kinds)
            if key is None:
                return None
            matched.append((key, data))
        if len(set(directions)) == 1:
            matched.sort(key=_entry_key, reverse=directions[0] == -1)
        else:  # stable sorts, least significant field first
            for position in reversed(range(len(names))):
                matched.sort(key=lambda item: item[0][position], reverse=directions[position] == -1)
        return self._page(iter(data for _, data in matched), semantics)

    def _text_candidates(
        self,
        db_name: str,
        coll_name: str,
        collection: MemoryCollection[Any, Any],
        plan: QueryNode,
    ) -> list[Any] | None:
        """If the filter requires substring searches (a literal regex, or an $or of them:
        the service's search), the storage keys of the documents that may match all of
        them, in the collection's order, from the text columns of the fields searched."""
        candidates: set[Any] | None = None
        for conjunct in _conjuncts(plan):
            searches = _searches(conjunct)
            if searches is None:
                continue
            found: set[Any] = set()
            for name, piece in searches:
                found |= self._text_column(db_name, coll_name, collection, name).candidates(piece)
            candidates = found if candidates is None else candidates & found
        return None if candidates is None else collection.ordered_keys(candidates)

    def _text_column(
        self, db_name: str, coll_name: str, collection: MemoryCollection[Any, Any], name: str
    ) -> _TextColumn:
        """The field's text column at the collection's current version: followed from the
        version it was at through the writes since, or built."""
        columns = self._texts.setdefault((db_name, coll_name), {})
        column = columns.get(name)
        root = collection._values
        if column is not None and column.root is not root:
            changed = _changed_keys(column.root, root, max(64, len(collection) // 2))
            if changed is None or not column.follow(root, changed, self._document):
                column = None
        if column is None:
            self.index_stats["text_builds"] += 1
            column = columns[name] = _TextColumn(name, root, self._document)
        return column

    def _document(self, data: Any) -> dict[str, Any]:
        """A stored version's document, as the scans borrow it."""
        if type(data) is _StoredDocument and data.decoded_wrapped is not None:
            return data.decoded_wrapped
        return self._borrow_storage_document(data)

    def _natural_order(
        self, collection: MemoryCollection[Any, Any], scans: list[_Scan]
    ) -> list[Any]:
        """The candidates in the collection's own (insertion) order, as a scan reads them."""
        keys: set[Any] = set()
        for scan in scans:
            keys.update(entry[1] for entry in scan.index.entries[scan.low : scan.high])
        return list(collection.ordered_keys(keys))

    def _count_union(self, collection: MemoryCollection[Any, Any], scans: list[_Scan]) -> int:
        """How many documents the exact scans hold together: the largest counted from its
        range, each other member only if no scan before it holds it."""
        scans = sorted(scans, key=len, reverse=True)
        total = len(scans[0])
        for position, scan in enumerate(scans[1:], start=1):
            earlier = [
                (list(s.index.spec[1][: s.prefix]), s.index.entries[s.low][0][: s.prefix])
                for s in scans[:position]
                if len(s)
            ]
            entries = scan.index.entries[scan.low : scan.high]
            if not earlier:
                total += len(entries)
                continue
            for data in self._stored(collection, (entry[1] for entry in entries)):
                document = self._borrow_storage_document(data)
                if not any(
                    _sortable(self._index_key(document, names)) == key for names, key in earlier
                ):
                    total += 1
        return total


def _sort_values(
    document: dict[str, Any], names: list[str], kinds: list[type | None]
) -> tuple[Any, ...] | None:
    """The document's sort values, if each is a plain scalar of the one type its field has
    had so far (recorded in `kinds`): values Python orders as MongoDB does. Else None."""
    values = []
    for position, name in enumerate(names):
        value = document.get(name, _MISSING)
        kind: type = type(value)
        if isinstance(value, ObjectId):
            kind = ObjectId
        elif kind is datetime:
            if value.tzinfo is not None:
                return None
        elif kind not in (bool, int, str):
            return None
        if kinds[position] is None:
            kinds[position] = kind
        elif kinds[position] is not kind:
            return None
        values.append(value)
    return tuple(values)


class _OverBudget(Exception):
    """An ordered read examined more candidates than it is worth."""


def _within(keys: Iterable[Any], budget: int | None) -> Iterator[Any]:
    for examined, key in enumerate(keys):
        if budget is not None and examined >= budget:
            raise _OverBudget
        yield key


def _unique(keys: Iterable[Any]) -> Iterator[Any]:
    seen: set[Any] = set()
    for key in keys:
        if key not in seen:
            seen.add(key)
            yield key
