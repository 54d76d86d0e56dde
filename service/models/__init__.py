"""The Beanie documents, each with the schemas derived from it."""

from beanie import Document

from service.models.audit import AuditEntry
from service.models.base import id_of
from service.models.comment import Comment, CommentCreate, CommentOut
from service.models.outbox import OutboxMessage
from service.models.post import Post, PostCreate, PostOut, PostPublic, PostUpdate
from service.models.session import (
    LoginAttempt,
    LogoutRequest,
    RefreshRequest,
    RefreshToken,
    TokenPair,
)
from service.models.user import AccountDeletion, PasswordChange, User, UserCreate, UserPublic
from service.models.vote import Message, Vote, VoteCreate

# The collections that hold the social network's data: what export and import handle.
DATA_DOCUMENTS: list[type[Document]] = [User, Post, Vote, Comment, AuditEntry]
# Every document init_beanie manages; its order is the order indexes are built in. Sessions
# and login attempts are state of the moment, and the outbox mail on its way: not data to export.
DOCUMENTS: list[type[Document]] = [*DATA_DOCUMENTS, RefreshToken, LoginAttempt, OutboxMessage]

__all__ = [
    "DATA_DOCUMENTS",
    "DOCUMENTS",
    "AccountDeletion",
    "AuditEntry",
    "Comment",
    "CommentCreate",
    "CommentOut",
    "LoginAttempt",
    "LogoutRequest",
    "Message",
    "OutboxMessage",
    "PasswordChange",
    "Post",
    "PostCreate",
    "PostOut",
    "PostPublic",
    "PostUpdate",
    "RefreshRequest",
    "RefreshToken",
    "TokenPair",
    "User",
    "UserCreate",
    "UserPublic",
    "Vote",
    "VoteCreate",
    "id_of",
]
