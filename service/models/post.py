"""Posts: the document, its schemas, and the reads that join owners and vote counts."""

import re
from datetime import datetime
from typing import Annotated, Any, ClassVar, Self

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints
from pymongo import ASCENDING, DESCENDING, IndexModel

from service.models.base import utc_now
from service.models.user import User, UserPublic
from service.models.vote import Vote

TITLE_MAX = 300
CONTENT_MAX = 20_000

Title = Annotated[str, StringConstraints(min_length=1, max_length=TITLE_MAX)]
Content = Annotated[str, StringConstraints(min_length=1, max_length=CONTENT_MAX)]

# Newest first; the id breaks ties between posts created in the same millisecond, so that
# paging with skip neither repeats nor drops a post.
FEED_ORDER = {"created_at": -1, "_id": -1}


class PostBase(BaseModel):
    title: Title
    content: Content
    # Strict: JSON true or false only; 0, 1 or "true" are 422, as the schema says.
    published: Annotated[bool, Strict()] = True


class Post(Document, PostBase):
    created_at: datetime = Field(default_factory=utc_now)
    owner_id: PydanticObjectId  # who owns it; see the indexes below

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
        """Drafts exist only for their owner."""
        return self.published or self.owner_id == user_id

    @classmethod
    async def read_feed(
        cls, viewer_id: PydanticObjectId, *, search: str, skip: int, limit: int
    ) -> tuple[int, list["PostOut"]]:
        """One page of the posts the viewer may see, and how many match in all.

        One aggregation answers both: the count and the page come from the same match.
        """
        match: dict[str, Any] = _visible_to(viewer_id)
        if search:
            # A literal, case-insensitive substring: the text is escaped, never a pattern.
            # A BSON regex cannot hold a NUL byte, so NUL goes in as the escape PCRE reads.
            literal = re.escape(search).replace("\x00", "\\x00")
            pattern = {"$regex": literal, "$options": "i"}
            match = {"$and": [match, {"$or": [{"title": pattern}, {"content": pattern}]}]}
        pipeline = [
            {"$match": match},
            {"$sort": FEED_ORDER},
            {
                "$facet": {
                    "total": [{"$count": "n"}],
                    "items": [{"$skip": skip}, {"$limit": limit}, *_with_owner_and_votes()],
                }
            },
        ]
        [result] = await cls.aggregate(pipeline).to_list()
        total = result["total"][0]["n"] if result["total"] else 0
        return total, [PostOut.model_validate(row) for row in result["items"]]

    @classmethod
    async def read_one(
        cls, post_id: PydanticObjectId, viewer_id: PydanticObjectId
    ) -> "PostOut | None":
        """The post with its owner and vote count, if the viewer may see it."""
        pipeline = [
            {"$match": {"$and": [{"_id": post_id}, _visible_to(viewer_id)]}},
            *_with_owner_and_votes(),
        ]
        rows = await cls.aggregate(pipeline).to_list()
        return PostOut.model_validate(rows[0]) if rows else None


def _visible_to(viewer_id: PydanticObjectId) -> dict[str, Any]:
    return {"$or": [{"published": True}, {"owner_id": viewer_id}]}


def _with_owner_and_votes() -> list[dict[str, Any]]:
    """Stages that shape posts into PostOut: owner joined, votes counted, nothing else kept.

    Only the owner's public fields are fetched, so a hash never leaves the database; the votes
    are counted on the server through the (post_id, user_id) index, not shipped and counted.
    """
    users = User.get_settings().name
    votes = Vote.get_settings().name
    return [
        {
            "$lookup": {
                "from": users,
                "localField": "owner_id",
                "foreignField": "_id",
                "pipeline": [{"$project": {"email": 1, "created_at": 1}}],
                "as": "owner",
            }
        },
        {"$unwind": "$owner"},
        {
            "$lookup": {
                "from": votes,
                "localField": "_id",
                "foreignField": "post_id",
                "pipeline": [{"$count": "n"}],
                "as": "votes",
            }
        },
        {
            "$project": {
                "_id": 0,
                "Post": {
                    "id": "$_id",
                    "title": "$title",
                    "content": "$content",
                    "published": "$published",
                    "created_at": "$created_at",
                    "owner_id": "$owner_id",
                    "owner": {
                        "id": "$owner._id",
                        "email": "$owner.email",
                        "created_at": "$owner.created_at",
                    },
                },
                "votes": {"$ifNull": [{"$arrayElemAt": ["$votes.n", 0]}, 0]},
            }
        },
    ]


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
    owner: UserPublic

    @classmethod
    def of(cls, post: Post, owner: User) -> Self:
        return cls.model_validate(
            {**post.model_dump(exclude={"id", "revision_id"}), "id": post.id, "owner": owner}
        )


class PostOut(BaseModel):
    # The capital P is the course's wire format, which its clients read.
    model_config = ConfigDict(validate_by_name=True, validate_by_alias=True)

    post: PostPublic = Field(alias="Post")
    votes: int
