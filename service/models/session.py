"""Sessions: refresh tokens (stored as digests) and the failed-login log that throttles logins."""

from datetime import datetime
from typing import Annotated, ClassVar

from beanie import Document, Indexed, PydanticObjectId
from pydantic import BaseModel, ConfigDict, Field
from pymongo import ASCENDING, IndexModel

REFRESH_TOKEN_MAX = 512  # ours are 43 characters; anything far longer is not one


class PasswordCheck(BaseModel):
    """A password check that succeeded, as the login throttle reads it (service/throttle.py):
    recorded on the first refresh token of the session it began (a login, a password change).
    """

    email_key: str  # the throttle's keys: a digest of the email, never the email itself
    address_key: str
    # The `login_attempts` that no longer count: the check's own, and the failures of its
    # email that it counted (at most LOGIN_MAX_FAILURES_PER_EMAIL - 1): a reset.
    attempt_ids: list[PydanticObjectId]


class RefreshToken(Document):
    """One refresh token of a session. A session (a "family") starts at a login; each refresh
    uses up its token and adds the next one to the same family."""

    # SHA-256 of the token, hex: the token itself is never stored, so a copy of this
    # collection lets nobody refresh. Unique, and the index every refresh looks it up by.
    token_hash: Annotated[str, Indexed(unique=True)]
    family_id: Annotated[str, Indexed()]  # the session's id, the `sid` of its access tokens
    user_id: Annotated[PydanticObjectId, Indexed()]  # serves logout-all and account deletion
    # The user's session epoch when the family began: a token from an older epoch (before a
    # logout-all or a password change) is refused even if this document was written late.
    epoch: int
    issued_at: datetime
    expires_at: datetime
    used_at: datetime | None = None  # set when it is exchanged; a second use is a replay
    revoked_at: datetime | None = None  # set when its family ends
    # On the first token of a session begun by a password check: that success, so the login
    # throttle resets the email's counter and leaves the check's own attempts uncounted
    # without a write of its own. None on the tokens of refreshes (and on older tokens).
    password_check: PasswordCheck | None = None

    class Settings:
        name = "refresh_tokens"
        indexes: ClassVar[list[IndexModel]] = [
            # MongoDB deletes each token once it has expired (within its TTL monitor's minute);
            # every lookup also checks expires_at, so a late deletion changes nothing.
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
            # Each login reads the successes of its email within the throttle's window.
            IndexModel([("password_check.email_key", ASCENDING), ("issued_at", ASCENDING)]),
        ]


class LoginAttempt(Document):
    """A password check of an email, or a failed one from a client address (service/throttle.py).

    `key` is `email:<sha256 of the normalised email>` or `address:<ip or IPv6 /64>`: the
    email is digested so that whatever an attacker types is stored at a fixed size. An email's
    attempt is written before its check and counts against the email unless a success lists
    it in its `RefreshToken.password_check` (its own, or its email's failures that it reset);
    an address's record is written only for a check that failed. A request that sends mail
    (forgot-password, a fresh verification mail) is counted under the same two keys behind
    its kind (`password_reset:email:...`), every one of them (throttle.count_request).
    """

    key: str
    at: datetime
    expires_at: datetime
    # True once the check failed (both of a failure's records); null on an email's attempt
    # still being checked or that succeeded, whose refresh token says so.
    failed: bool | None = None

    class Settings:
        name = "login_attempts"
        indexes: ClassVar[list[IndexModel]] = [
            # Counting a key's attempts within the window is a range scan of this index.
            IndexModel([("key", ASCENDING), ("at", ASCENDING)]),
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
        ]


class TokenPair(BaseModel):
    """What login, refresh and a password change answer: the course's two fields first."""

    access_token: str
    token_type: str = "bearer"
    refresh_token: str = Field(description="Opaque; exchange it at POST /auth/refresh, once")
    expires_in: int = Field(description="Seconds until the access token expires")


class RefreshRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"refresh_token": "Yb3kQ9w1m0c2VnN5c2hvcnQtbGl2ZWQtZXhhbXBsZXRva2Vu"}]
        }
    )

    refresh_token: Annotated[str, Field(min_length=1, max_length=REFRESH_TOKEN_MAX)]


class LogoutRequest(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"refresh_token": "Yb3kQ9w1m0c2VnN5c2hvcnQtbGl2ZWQtZXhhbXBsZXRva2Vu"}]
        }
    )

    refresh_token: Annotated[str, Field(min_length=1, max_length=REFRESH_TOKEN_MAX)] | None = None
