"""Comments on posts: the document, and the schemas derived from it."""

from datetime import datetime
from typing import Annotated, ClassVar

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from pymongo import ASCENDING, IndexModel

from service.models.base import utc_now
from service.models.post import PostOwner
from service.models.user import PostAuthor

COMMENT_MAX = 2_000

CommentText = Annotated[str, StringConstraints(min_length=1, max_length=COMMENT_MAX)]

# Oldest first; the id breaks ties between comments written in the same millisecond, so that a
# cursor (the last comment's time and id) neither repeats nor drops one.
COMMENT_ORDER = {"created_at": 1, "_id": 1}


class Comment(Document):
    post_id: PydanticObjectId
    author_id: PydanticObjectId
    # The author's public fields, copied as a post copies its owner's (they never change, and
    # an account's comments go with it): listing comments needs no join.
    author: PostOwner
    content: CommentText
    created_at: datetime = Field(default_factory=utc_now)
    # True while the author's account is deactivated: listed nowhere, and not in the post's
    # count (service/moderation.py).
    hidden: bool = False

    class Settings:
        name = "comments"
        indexes: ClassVar[list[IndexModel]] = [
            # A post's comments in their order: every page is a range of this index, and a
            # post's deletion finds its comments by its prefix.
            IndexModel([("post_id", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)]),
            # An author's comments, found when their account is deleted.
            IndexModel([("author_id", ASCENDING)]),
        ]


class CommentCreate(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"content": "Well put."}]})

    content: CommentText


class CommentOut(BaseModel):
    id: PydanticObjectId
    post_id: PydanticObjectId
    content: str
    created_at: datetime
    author: PostAuthor

    @classmethod
    def of(cls, comment: Comment) -> "CommentOut":
        assert comment.id is not None
        return cls(
            id=comment.id,
            post_id=comment.post_id,
            content=comment.content,
            created_at=comment.created_at,
            author=PostAuthor(id=comment.author_id, **comment.author.model_dump()),
        )
