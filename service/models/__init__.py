"""The Beanie documents, each with the schemas derived from it."""

from beanie import Document

from service.models.base import id_of
from service.models.post import Post, PostCreate, PostOut, PostPublic, PostUpdate
from service.models.user import User, UserCreate, UserPublic
from service.models.vote import Message, Vote, VoteCreate

# Every document init_beanie manages; its order is the order indexes are built in.
DOCUMENTS: list[type[Document]] = [User, Post, Vote]

__all__ = [
    "DOCUMENTS",
    "Message",
    "Post",
    "PostCreate",
    "PostOut",
    "PostPublic",
    "PostUpdate",
    "User",
    "UserCreate",
    "UserPublic",
    "Vote",
    "VoteCreate",
    "id_of",
]
