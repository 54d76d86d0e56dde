"""Posts: the document, its schemas, and the reads that join owners and vote counts."""

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints
from pymongo import ASCENDING, DESCENDING, IndexModel

from service.models.base import utc_now
from service.models.user import PostAuthor

TITLE_MAX = 300
CONTENT_MAX = 20_000

Title = Annotated[str, StringConstraints(min_length=1, max_length=TITLE_MAX)]
Content = Annotated[str, StringConstraints(min_length=1, max_length=CONTENT_MAX)]

# Newest first; the id breaks ties between posts created in the same millisecond, so that
# paging with skip neither repeats nor drops a post.
FEED_ORDER = {"created_at": -1, "_id": -1}

# The collection of counts kept rather than counted, and the one of published posts (see
# service/tallies.py).
COUNTERS = "counters"
PUBLISHED_COUNTER = "published_posts"

# Not hidden (service/moderation.py): false, or missing in a document written before the
# field existed.
SHOWN = {"$ne": True}


class PostBase(BaseModel):
    title: Title
    content: Content
    # Strict: JSON true or false only; 0, 1 or "true" are 422, as the schema says.
    published: Annotated[bool, Strict()] = True


class PostOwner(BaseModel):
    """The owner's public fields, copied onto each of their posts so that reading posts needs
    no join. An account's email and creation date never change, so the copy never goes stale
    (and an account's posts go with it)."""

    email: str
    created_at: datetime


class Post(Document, PostBase):
    created_at: datetime = Field(default_factory=utc_now)
    owner_id: PydanticObjectId  # who owns it; see the indexes below
    # Derived fields, kept on the post because reads outnumber writes: the owner's public
    # fields and the number of documents in `votes` for this post. The vote route and account
    # deletion keep `votes` in step, one atomic $inc per vote added or taken back; the
    # migration at start-up and `social-api import` derive both for posts that lack them,
    # and `social-api recount` repairs them (see service/derived.py). None for a post whose
    # owner is gone or not yet derived (written by an older version): such a post is not shown.
    owner: PostOwner | None = None
    votes: int = 0
    # The number of the post's comments that are shown (`comments` documents not hidden),
    # kept likewise.
    comments: int = 0
    # True while the owner's account is deactivated: the post is shown to nobody, and is not
    # in the published count (service/moderation.py). Derived from the owner, as `owner` is.
    hidden: bool = False

    class Settings:
        name = "posts"
        # The feed is `published: true OR owner_id: <viewer>`, newest first. Each branch of
        # that $or has an index that also holds the feed's order, so MongoDB reads both in
        # order and merges them (SORT_MERGE): no collection scan, no in-memory sort, whatever
        # the page. The owner_id index also serves ownership lookups and account deletion.
        indexes: ClassVar[list[IndexModel]] = [
            IndexModel([("published", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]),
            IndexModel([("owner_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)]),
        ]

    def is_visible_to(self, user_id: PydanticObjectId) -> bool:
        """Drafts exist only for their owner; a post whose owner is gone or deactivated, for
        nobody."""
        return (
            self.owner is not None
            and not self.hidden
            and (self.published or self.owner_id == user_id)
        )

    @classmethod
    def row_is_visible_to(cls, row: Mapping[str, Any], user_id: PydanticObjectId) -> bool:
        """`is_visible_to` for a post as stored, before (or without) building a `Post`."""
        return (
            row.get("owner") is not None
            and not row.get("hidden")
            and (row.get("published", True) or row.get("owner_id") == user_id)
        )

    @classmethod
    def visible_to(cls, viewer_id: PydanticObjectId) -> dict[str, Any]:
        """The filter `is_visible_to` is, for queries (the owner check aside: see above).

        `hidden` is in each branch, so that each stays one range of its own index; a hidden
        post in that range is read and passed over (there are few: a deactivated account's).
        """
        return {
            "$or": [
                {"published": True, "hidden": SHOWN},
                {"owner_id": viewer_id, "hidden": SHOWN},
            ]
        }

    @classmethod
    async def read_feed(
        cls,
        viewer_id: PydanticObjectId,
        viewer_drafts: int,
        *,
        search: str,
        skip: int,
        limit: int,
        after: tuple[datetime, PydanticObjectId] | None = None,
    ) -> tuple[int, list["PostOut"], tuple[datetime, Any] | None]:
        """One page of the posts the viewer may see, how many match in all, and the sort key
        the next page starts after (None if none follows).

        One aggregation answers all three, and nothing is joined: posts carry their owner and
        counts. Without a search the feed is every published post and the viewer's drafts, so
        its size is the published count (one document of `counters`, added to the page) plus
        the viewer's drafts (`viewer_drafts`, from their user document): only the page is
        read, whatever the number of posts. A search counts its matches as it pages them.

        `after` (a cursor's sort key) starts the page after that post: a range read on each
        branch's index instead of a skip, so its cost does not depend on its depth.
        """
        visible: dict[str, Any] = cls.visible_to(viewer_id)
        if after is not None:
            # Each branch of the feed's $or with the range in it, whole, so that each is one
            # range of its own index, in the feed's order.
            created_at, post_id = after
            visible = {
                "$or": [
                    {**branch, **bound}
                    for branch in visible["$or"]
                    for bound in (
                        {"created_at": {"$lt": created_at}},
                        {"created_at": created_at, "_id": {"$lt": post_id}},
                    )
                ]
            }
        order: list[dict[str, Any]] = [{"$sort": FEED_ORDER}]
        page: list[dict[str, Any]] = (
            [{"$skip": skip}, {"$limit": limit + 1}] if skip else [{"$limit": limit + 1}]
        )
        if search:
            # A literal, case-insensitive substring: the text is escaped, never a pattern.
            # A BSON regex cannot hold a NUL byte, so NUL goes in as the escape PCRE reads.
            literal = re.escape(search).replace("\x00", "\\x00")
            pattern = {"$regex": literal, "$options": "i"}
            found = {"$or": [{"title": pattern}, {"content": pattern}]}
            everything = {"$and": [cls.visible_to(viewer_id), found]}
            items = page if after is None else [{"$match": {"$and": [visible, found]}}, *page]
            pipeline = [
                {"$match": everything},
                *order,
                {"$facet": {"total": [{"$count": "n"}], "items": items}},
            ]
            [result] = await cls.aggregate(pipeline).to_list()
            total = result["total"][0]["n"] if result["total"] else 0
            rows = result["items"]
        else:
            published = {"$match": {"_id": PUBLISHED_COUNTER}}
            pipeline = [
                {"$match": visible},
                *order,
                *page,
                {"$unionWith": {"coll": COUNTERS, "pipeline": [published]}},
            ]
            rows = await cls.aggregate(pipeline).to_list()
            counted = [row for row in rows if row.get("_id") == PUBLISHED_COUNTER]
            rows = [row for row in rows if row.get("_id") != PUBLISHED_COUNTER]
            total = (counted[0].get("value", 0) if counted else 0) + viewer_drafts
        # The next page starts after the last post read, shown or not (a post whose owner is
        # gone is not shown, but the page still ends there).
        after_page = (
            (rows[limit - 1]["created_at"], rows[limit - 1]["_id"]) if len(rows) > limit else None
        )
        posts = [PostOut.of_row(row) for row in rows[:limit] if row.get("owner") is not None]
        return total, posts, after_page


class PostCreate(PostBase):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"title": "Hello MongoDB", "content": "My first post", "published": True}]
        }
    )


class PostUpdate(PostBase):
    """PUT replaces the post: a field left out takes its default, as on create."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"title": "Hello MongoDB", "content": "My first post", "published": True}]
        }
    )


class PostPublic(PostBase):
    model_config = ConfigDict(from_attributes=True)

    id: PydanticObjectId
    created_at: datetime
    owner_id: PydanticObjectId
    owner: PostAuthor

    @classmethod
    def of(cls, post: Post) -> Self:
        """The post as the API shows it (its owner must be known: see `Post.owner`)."""
        assert post.id is not None and post.owner is not None
        return cls(
            id=post.id,
            title=post.title,
            content=post.content,
            published=post.published,
            created_at=post.created_at,
            owner_id=post.owner_id,
            owner=PostAuthor(id=post.owner_id, **post.owner.model_dump()),
        )


class PostOut(BaseModel):
    # The capital P is the course's wire format, which its clients read.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    post: PostPublic = Field(alias="Post")
    votes: int
    comments: int

    @classmethod
    def of_row(cls, row: Mapping[str, Any]) -> Self:
        """A stored post (with an owner) as the API shows it, straight from the stored
        document: the feed and `GET /posts/{post_id}` skip building a `Post` for it."""
        owner = row["owner"]
        public = {"id": row["owner_id"], "email": owner["email"], "created_at": owner["created_at"]}
        return cls.model_validate(
            {
                "Post": {**row, "id": row["_id"], "owner": public},
                "votes": row.get("votes", 0),
                "comments": row.get("comments", 0),
            }
        )
