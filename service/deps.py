"""Dependencies shared by the routers: settings, the current user, posts looked up by id."""

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import jwt
from bson import ObjectId
from fastapi import Depends, HTTPException, Request, status
from fastapi.security import OAuth2PasswordBearer

from service import metrics, throttle
from service.config import Settings
from service.mail import Sender
from service.models import Post, PostOut, User, id_of
from service.models.base import IdIn
from service.models.user import ADMIN
from service.security import TokenClaims, decode_access_token
from service.throttle import CheckedPassword

# auto_error=False: a missing header gets this project's own 401, raised below.
oauth2_scheme = OAuth2PasswordBearer(tokenUrl="login", auto_error=False)

BEARER = {"WWW-Authenticate": "Bearer"}
NOT_AUTHENTICATED = "Not authenticated"
INVALID_CREDENTIALS = "Could not validate credentials"
NOT_AUTHORIZED = "Not authorized to perform requested action"
TOO_MANY_ATTEMPTS = "Too many failed login attempts"
TOO_MANY_REQUESTS = "Too many requests for this email or from this address"


async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with (and its secret resolved at start)."""
    # async although it never awaits: FastAPI runs a plain `def` dependency in its thread
    # pool, a hand-off to another thread and back on every request that needs the settings.
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_mail_sender(request: Request) -> Sender:
    """This process's outbox sender: what queues a mail, and goes for it at once."""
    sender: Sender = request.app.state.mail_sender
    return sender


MailSenderDep = Annotated[Sender, Depends(get_mail_sender)]


def cursor_secret(settings: Settings) -> str:
    """What page cursors are signed with (service/cursors.py): SECRET_KEY, resolved at start."""
    assert settings.secret_key is not None, "the lifespan resolves SECRET_KEY"
    return settings.secret_key.get_secret_value()


TokenDep = Annotated[str | None, Depends(oauth2_scheme)]


@dataclass(frozen=True, slots=True)
class Session:
    """The caller: their user document and the claims of the access token they presented."""

    user: User
    claims: TokenClaims


async def get_current_session(settings: SettingsDep, token: TokenDep) -> Session:
    """The user and session the bearer token names; every failure is the same 401."""
    if token is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, NOT_AUTHENTICATED, headers=BEARER)
    credentials_error = HTTPException(
        status.HTTP_401_UNAUTHORIZED, INVALID_CREDENTIALS, headers=BEARER
    )
    try:
        claims = decode_access_token(token, settings)
    except jwt.InvalidTokenError:
        raise credentials_error from None
    if not ObjectId.is_valid(claims.sub):
        raise credentials_error
    # Looked up on every request, so a deleted user's tokens stop working at once; the same
    # document carries the session state (see service/accounts.py), so checking that the
    # session was not ended costs nothing more.
    # Read with PyMongo and validated into the model, as Beanie's `User.get` would: 0.40 ms of
    # CPU per lookup against 0.57 ms through `User.get` (0.47 ms through `User.find_one`),
    # measured in-process over 15,000 lookups with the store in a process of its own.
    row = await User.get_pymongo_collection().find_one({"_id": ObjectId(claims.sub)})
    user = User.model_validate(row) if row is not None else None
    if user is None or not user.session_is_live(claims.sid, claims.ver, datetime.now(UTC)):
        raise credentials_error
    return Session(user=user, claims=claims)


CurrentSession = Annotated[Session, Depends(get_current_session)]


async def get_current_user(session: CurrentSession) -> User:
    """The user the bearer token names."""
    return session.user


CurrentUser = Annotated[User, Depends(get_current_user)]

NOT_VERIFIED = "Email address not verified"
ADMIN_ONLY = "Admin role required"


async def get_admin(user: CurrentUser) -> User:
    """The caller, if an admin (403 otherwise). A deactivated admin's tokens are refused
    before this (401), like anyone's."""
    if user.role != ADMIN:
        raise HTTPException(status.HTTP_403_FORBIDDEN, ADMIN_ONLY)
    return user


AdminUser = Annotated[User, Depends(get_admin)]


async def get_writing_user(user: CurrentUser, settings: SettingsDep) -> User:
    """The caller, if they may write posts and votes: with REQUIRE_VERIFIED_EMAIL, only once
    their address is verified (403)."""
    if settings.require_verified_email and not user.email_verified:
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_VERIFIED)
    return user


WritingUser = Annotated[User, Depends(get_writing_user)]


async def get_visible_post(post_id: IdIn, user: CurrentUser) -> PostOut:
    """The post with its owner and votes; someone else's draft does not exist (404)."""
    # Read with PyMongo and answered straight from the stored document, no `Post` built on the
    # way: 0.40 ms of CPU per lookup against 0.53 ms through `Post.get` and `PostPublic.of`
    # (measured in-process, 15,000 lookups, the store in a process of its own).
    row = await Post.get_pymongo_collection().find_one({"_id": post_id})
    if row is None or not Post.row_is_visible_to(row, id_of(user)):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"post with id: {post_id} was not found")
    return PostOut.of_row(row)


def no_such_post(post_id: object) -> HTTPException:
    """The 404 of PUT and DELETE (the contract's wording)."""
    return HTTPException(status.HTTP_404_NOT_FOUND, f"post with id: {post_id} does not exist")


async def get_owned_post(post_id: IdIn, user: WritingUser) -> Post:
    """A post the caller may change: 404 if it does not exist for them, then 403 if not theirs."""
    post = await Post.get(post_id)
    if post is None or not post.is_visible_to(id_of(user)):
        raise no_such_post(post_id)
    if post.owner_id != id_of(user):
        raise HTTPException(status.HTTP_403_FORBIDDEN, NOT_AUTHORIZED)
    return post


VisiblePostDep = Annotated[PostOut, Depends(get_visible_post)]
OwnedPostDep = Annotated[Post, Depends(get_owned_post)]


def client_host(request: Request) -> str | None:
    """The client's address: the peer, or the one a trusted proxy forwarded (see main.py)."""
    return request.client.host if request.client else None


async def count_mail_request(kind: str, email: str, request: Request, settings: Settings) -> None:
    """Count a request that sends mail against the limits per email and per client address
    (the login throttle's records, service/throttle.py), or answer 429."""
    limits = {
        f"{kind}:{throttle.email_key(email)}": settings.mail_requests_per_email,
        f"{kind}:{throttle.address_key(client_host(request))}": settings.mail_requests_per_address,
    }
    try:
        await throttle.count_request(limits, settings)
    except throttle.TooManyAttempts as refused:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            TOO_MANY_REQUESTS,
            headers={"Retry-After": str(refused.retry_after)},
        ) from None


async def check_password(
    email: str,
    password: str,
    request: Request,
    settings: Settings,
    *,
    account_email: str | None,
    hashed_password: str | None = None,
) -> CheckedPassword:
    """Check a password past the login throttle, or answer 429 without checking it.

    The account of `account_email` is read with the throttle's count (service/throttle.py);
    the password is checked against `hashed_password`, or else that account's hash.
    """
    try:
        return await throttle.check_password(
            email,
            password,
            client_host(request),
            settings,
            account_email=account_email,
            hashed_password=hashed_password,
        )
    except throttle.TooManyAttempts as refused:
        metrics.throttle_refusals_total.inc()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            TOO_MANY_ATTEMPTS,
            headers={"Retry-After": str(refused.retry_after)},
        ) from None
