"""Users: the document, and the schemas derived from it."""

from datetime import datetime
from typing import Annotated

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
)

from service.models.base import utc_now
from service.security import BCRYPT_MAX_BYTES

PASSWORD_MIN_CHARS = 8
PASSWORD_MAX_BYTES = BCRYPT_MAX_BYTES


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
    if len(password.encode("utf-8")) > PASSWORD_MAX_BYTES:
        raise ValueError(f"Password must be at most {PASSWORD_MAX_BYTES} bytes long in UTF-8")
    if "\x00" in password:
        raise ValueError("Password must not contain NUL characters")  # bcrypt refuses them
    return password


# Emails are one account whatever their case: trimmed before validation, lower-cased after.
NormalizedEmail = Annotated[EmailStr, BeforeValidator(_strip), AfterValidator(str.lower)]
Password = Annotated[str, AfterValidator(_check_password)]

_email = TypeAdapter(NormalizedEmail)


def normalize_email(value: str) -> str | None:
    """The stored form of an email (as registration makes it), or None if it is not one."""
    try:
        return _email.validate_python(value)
    except ValidationError:
        return None


class UserBase(BaseModel):
    # The unique index is what makes registration race-free: see routers/users.py.
    email: Annotated[str, Indexed(unique=True)]


class User(Document, UserBase):
    hashed_password: str
    created_at: datetime = Field(default_factory=utc_now)

    class Settings:
        name = "users"


class UserCreate(BaseModel):
    email: NormalizedEmail
    password: Password


class UserPublic(UserBase):
    model_config = ConfigDict(from_attributes=True)

    id: PydanticObjectId
    created_at: datetime
