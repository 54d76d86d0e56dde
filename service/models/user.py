"""Users: the document, and the schemas derived from it."""

from datetime import datetime
from typing import Annotated, ClassVar, Literal

import email_validator
from beanie import Document, Indexed, PydanticObjectId
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    EmailStr,
    Field,
    TypeAdapter,
    ValidationError,
    WithJsonSchema,
)
from pymongo import ASCENDING, DESCENDING, IndexModel

from service.models.base import utc_now

PASSWORD_MIN_CHARS = 8
# Characters, as JSON Schema counts them: a password's bytes beyond bcrypt's 72 are digested
# first (service/security.py), so the limit need not count them.
PASSWORD_MAX_CHARS = 72


def _strip(value: object) -> object:
    if not isinstance(value, str):
        return value
    if "<" in value or ">" in value:
        # EmailStr would take "Name <addr>" and keep only addr; an account's email is the
        # bare address, so say so instead of guessing.
        raise ValueError("value is not a valid email address: give the bare address")
    return value.strip()


def _check_password(password: str) -> str:
    if len(password) < PASSWORD_MIN_CHARS:
        raise ValueError(f"Password must be at least {PASSWORD_MIN_CHARS} characters long")
    if len(password) > PASSWORD_MAX_CHARS:
        raise ValueError(f"Password must be at most {PASSWORD_MAX_CHARS} characters long")
    if "\x00" in password:
        raise ValueError("Password must not contain NUL characters")  # bcrypt refuses them
    return password


# RFC 2606 reserves .test, .example, .invalid and .localhost for tests and documentation, and
# clients' own fixtures use them (alice@example.test): accounts may have them. email-validator
# refuses special-use domains through a list it documents as its users' to change; the other
# special-use domains (.local, .onion, .arpa) are still refused, as the schema says.
for _reserved in ("test", "invalid", "localhost"):
    if _reserved in email_validator.SPECIAL_USE_DOMAIN_NAMES:
        email_validator.SPECIAL_USE_DOMAIN_NAMES.remove(_reserved)
REFUSED_DOMAINS = ("local", "onion", "arpa")


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" for c in word)


# Emails are one account whatever their case: trimmed before validation, lower-cased after.
NormalizedEmail = Annotated[
    EmailStr,
    BeforeValidator(_strip),
    AfterValidator(str.lower),
    WithJsonSchema(
        {
            "type": "string",
            "format": "email",
            # What email-validator refuses that JSON Schema's `email` format allows: a quoted
            # local part, an IP address for a domain, a domain without a dot, more than 254
            # characters, and the special-use domains above.
            "pattern": (
                f"^(?!.*\\.(?:{'|'.join(map(_any_case, REFUSED_DOMAINS))})$)"
                '[^\\s"@\\[\\]]+@[^\\s@\\[\\]]+\\.[^\\s@\\[\\]]+$'
            ),
            "maxLength": 254,
            "description": (
                "An email address, stored lower-cased: at most 254 characters, a domain with "
                "a dot (no IP address), no quoted local part; addresses in the special-use "
                "domains .local, .onion and .arpa are refused (.test, .example, .invalid and "
                ".localhost are taken)"
            ),
        }
    ),
]
# The schema states the whole rule, so a client that follows it is never refused.
Password = Annotated[
    str,
    AfterValidator(_check_password),
    WithJsonSchema(
        {
            "type": "string",
            "minLength": PASSWORD_MIN_CHARS,
            "maxLength": PASSWORD_MAX_CHARS,
            "pattern": "^[^\\u0000]*$",
            "description": (
                f"{PASSWORD_MIN_CHARS} to {PASSWORD_MAX_CHARS} characters, in any script; "
                "no NUL character"
            ),
            "examples": ["correct horse battery"],
        }
    ),
]

_email = TypeAdapter(NormalizedEmail)


def normalize_email(value: str) -> str | None:
    """The stored form of an email (as registration makes it), or None if it is not one."""
    try:
        return _email.validate_python(value)
    except ValidationError:
        return None


# `admin`: may act on any account, post or comment under /admin/ (service/moderation.py).
Role = Literal["user", "admin"]
ADMIN: Role = "admin"
# The document of `counters` that holds how many active admins there are.
ADMINS_COUNTER = "active_admins"


class UserBase(BaseModel):
    # The unique index is what makes registration race-free: see routers/users.py.
    email: Annotated[str, Indexed(unique=True)]


class RevokedSession(BaseModel):
    """A session ended by a logout, kept until every access token it issued has expired."""

    sid: str
    until: datetime


class MailedToken(BaseModel):
    """A token sent by mail (a password reset, an email verification), as stored: its
    SHA-256 digest, never the token, and when it stops working."""

    token_hash: str
    expires_at: datetime


class User(Document, UserBase):
    hashed_password: str
    created_at: datetime = Field(default_factory=utc_now)
    # Session state lives on the user document because every protected request already reads
    # it: checking an access token against it costs no extra round trip, and every API
    # process sees a logout on its next request. `session_epoch` is the generation of the
    # user's sessions (logout-all and a password change raise it, ending every token signed
    # before); `revoked_sessions` lists sessions ended one by one whose access tokens may still
    # be unexpired. Entries leave the list once `until` has passed.
    session_epoch: int = 0
    revoked_sessions: list[RevokedSession] = []
    # How many of the user's posts are drafts: with the published count, the size of their
    # feed, kept here because every request reads this document (see service/tallies.py).
    drafts: int = 0
    # Set by the link of a verification mail (or a password reset, which proves the same).
    email_verified: bool = False
    # The one live token of each kind: a newer one replaces the older, and every password
    # write clears `password_reset` (service/recovery.py).
    password_reset: MailedToken | None = None
    email_verification: MailedToken | None = None
    role: Role = "user"
    # False while an admin has the account deactivated: its tokens and logins are refused,
    # and its posts and comments are hidden (service/moderation.py).
    active: bool = True

    class Settings:
        name = "users"
        indexes: ClassVar[list[IndexModel]] = [
            # The admins' list of users, newest first, paged by cursor.
            IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)]),
            # A reset or a verification finds its user by the token's digest; sparse, as
            # most users have neither.
            IndexModel([("password_reset.token_hash", ASCENDING)], sparse=True),
            IndexModel([("email_verification.token_hash", ASCENDING)], sparse=True),
        ]

    def session_is_live(self, session_id: str, epoch: int, now: datetime) -> bool:
        """Whether an access token of this session and epoch may still be honoured."""
        if epoch != self.session_epoch or not self.active:
            return False
        return not any(
            revoked.sid == session_id and revoked.until > now for revoked in self.revoked_sessions
        )


class UserCreate(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "alice@example.com", "password": "correct horse battery"}]
        }
    )

    email: NormalizedEmail
    password: Password


class PasswordChange(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "current_password": "correct horse battery",
                    "new_password": "staple battery horse",
                }
            ]
        }
    )

    current_password: str
    new_password: Password


class AccountDeletion(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"password": "correct horse battery"}]}
    )

    password: str


# A token from a mail: ours are 43 characters of URL-safe base64 (256 random bits).
MailedTokenIn = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern="^[A-Za-z0-9_-]+$",
        description="The token from the mail (its link's `token` parameter)",
        examples=["Yb3kQ9w1m0c2VnN5c2hvcnQtbGl2ZWQtZXhhbXBsZXRva2Vu"],
    ),
]


class ForgotPassword(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"email": "alice@example.com"}]})

    email: NormalizedEmail


class PasswordReset(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "token": "Yb3kQ9w1m0c2VnN5c2hvcnQtbGl2ZWQtZXhhbXBsZXRva2Vu",
                    "new_password": "staple battery horse",
                }
            ]
        }
    )

    token: MailedTokenIn
    new_password: Password


class EmailVerification(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"token": "Yb3kQ9w1m0c2VnN5c2hvcnQtbGl2ZWQtZXhhbXBsZXRva2Vu"}]
        }
    )

    token: MailedTokenIn


class PostAuthor(UserBase):
    """A post's owner as the course's clients read it: id, email, and since when."""

    model_config = ConfigDict(from_attributes=True)

    id: PydanticObjectId
    created_at: datetime


class UserPublic(PostAuthor):
    """A user as the users routes answer it."""

    email_verified: bool


class UserMe(UserPublic):
    """The caller, as `/users/me` answers: their role too, which nobody else sees."""

    role: Role


class AccountOut(UserMe):
    """A user as the admins' routes answer it."""

    active: bool


Reason = Annotated[
    str,
    Field(
        min_length=1,
        max_length=500,
        description="Why, for the audit log",
        examples=["Spam, reported by three users"],
    ),
]


class AdminAction(BaseModel):
    """What an admin may say of any action: why, kept in the audit log."""

    model_config = ConfigDict(json_schema_extra={"examples": [{"reason": "Spam"}]})

    reason: Reason | None = None


class RoleChange(AdminAction):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"role": "admin", "reason": "Joins the moderators"}]}
    )

    role: Role
