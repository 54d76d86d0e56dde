"""Votes: one per user and post."""

from datetime import datetime
from typing import Annotated, ClassVar, Literal

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pymongo import ASCENDING, IndexModel

from service.models.base import IdIn, utc_now


class Vote(Document):
    post_id: PydanticObjectId
    user_id: PydanticObjectId
    created_at: datetime = Field(default_factory=utc_now)

    class Settings:
        name = "votes"
        indexes: ClassVar[list[IndexModel]] = [
            # One vote per user and post, enforced by MongoDB itself, so simultaneous identical
            # votes cannot both land. Its post_id prefix also serves vote counts and the
            # cascade when a post is deleted.
            IndexModel([("post_id", ASCENDING), ("user_id", ASCENDING)], unique=True),
            # A user's own votes, found when their account is deleted.
            IndexModel([("user_id", ASCENDING)]),
        ]


def _exact_int(value: object) -> object:
    # JSON true, 1.0 and "1" are not 0 or 1; pydantic's lax mode would take them.
    if type(value) is not int:
        raise ValueError("dir must be the integer 0 or 1")
    return value


class VoteCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"post_id": "6b05fd523f23202455a49a96", "dir": 1}]}
    )

    post_id: IdIn
    dir: Annotated[Literal[0, 1], BeforeValidator(_exact_int)] = Field(
        description="1 adds the caller's vote, 0 takes it back"
    )


class Message(BaseModel):
    message: str
