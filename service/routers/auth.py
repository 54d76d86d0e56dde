"""Login (OAuth2's password flow, as Swagger UI's Authorize button sends it), refresh, logout."""

from typing import Annotated

from fastapi import Form, HTTPException, Request, status
from pydantic import BaseModel, Field

from service import accounts, recovery
from service.deps import (
    BEARER,
    TOO_MANY_ATTEMPTS,
    TOO_MANY_REQUESTS,
    CurrentSession,
    CurrentUser,
    MailSenderDep,
    SettingsDep,
    check_password,
    count_mail_request,
)
from service.models import (
    LogoutRequest,
    Message,
    RefreshRequest,
    RefreshToken,
    TokenPair,
    User,
    UserPublic,
    id_of,
)
from service.models.user import (
    EmailVerification,
    ForgotPassword,
    PasswordReset,
    normalize_email,
)
from service.routing import BEARER_HEADER, CollectionRouter, Responses, error
from service.security import digest_token, hash_password, needs_rehash

router = CollectionRouter(tags=["Authentication"])

INVALID_CREDENTIALS = "Invalid Credentials"
INVALID_REFRESH_TOKEN = "Invalid or expired refresh token"
ACCOUNT_DISABLED = "Account disabled"

THROTTLED: Responses = {
    status.HTTP_429_TOO_MANY_REQUESTS: {
        **error(f"{TOO_MANY_ATTEMPTS}; wait the seconds in Retry-After"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}
UNAUTHORIZED: Responses = {status.HTTP_401_UNAUTHORIZED: error("Missing, invalid or ended token")}
MAIL_THROTTLED: Responses = {
    status.HTTP_429_TOO_MANY_REQUESTS: {
        **error(f"{TOO_MANY_REQUESTS}; wait the seconds in Retry-After"),
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    }
}
INVALID_MAILED_TOKEN = "Invalid, used or expired token"
RESET_MAIL_QUEUED = "If an account has this email, a password reset link is on its way to it"


class LoginForm(BaseModel):
    """OAuth2's password grant, as Swagger UI's Authorize button and the course's clients send
    it, with the rules the route applies in its schema: an empty field is a missing one."""

    username: str = Field(min_length=1, description="The account's email, in any case")
    password: str = Field(min_length=1, json_schema_extra={"format": "password"})
    grant_type: str = Field(
        default="password", pattern="^password$", description="OAuth2's grant: `password`"
    )


@router.post(
    "/login",
    responses={
        status.HTTP_403_FORBIDDEN: error(
            f"Unknown email or wrong password ({INVALID_CREDENTIALS}), or, with the right "
            f"password, an account an admin deactivated ({ACCOUNT_DISABLED})"
        ),
        **THROTTLED,
    },
)
async def login(
    form: Annotated[LoginForm, Form()],
    request: Request,
    settings: SettingsDep,
) -> TokenPair:
    """Exchange an email (in `username`) and password for an access and a refresh token."""
    email = normalize_email(form.username)
    # Throttled by what was typed, whether or not it is an account's email: an unknown email
    # is refused exactly as a known one is, so the throttle tells nobody which exist. The
    # throttle's count reads the account too (one round trip for both), the same commands
    # whether it exists or not, and an unknown email is checked against a dummy hash: the
    # same answer, in about the same time.
    checked = await check_password(
        email or form.username, form.password, request, settings, account_email=email
    )
    if not checked.valid or checked.account is None:
        raise HTTPException(status.HTTP_403_FORBIDDEN, INVALID_CREDENTIALS)
    user = User.model_validate(checked.account)
    if not user.active:
        # Said only once the password is checked, after the same work as any login: a
        # deactivated account looks like any other to someone without its password.
        raise HTTPException(status.HTTP_403_FORBIDDEN, ACCOUNT_DISABLED)
    if needs_rehash(user.hashed_password, settings.bcrypt_rounds):
        # The only moment the password is at hand: raise an old hash to the configured cost,
        # unless the password changed meanwhile (a reset, a change), which must stand.
        rehashed = await hash_password(form.password, settings)
        await User.find_one({"_id": user.id, "hashed_password": user.hashed_password}).update(
            {"$set": {"hashed_password": rehashed}}
        )
    # The session's refresh token records the success: the email's counter resets with it.
    return await accounts.start_session(user, settings, check=checked.check)


@router.post(
    "/auth/refresh",
    responses={
        status.HTTP_401_UNAUTHORIZED: {
            **error("Unknown, expired, used or revoked refresh token"),
            "headers": BEARER_HEADER,
        }
    },
)
async def refresh_tokens(refresh_in: RefreshRequest, settings: SettingsDep) -> TokenPair:
    """Exchange a refresh token for a new pair; the old refresh token is used up.

    Presenting a used refresh token again ends its whole session: whoever else holds the
    newer token is logged out too, since one of the two holders is a thief.
    """
    try:
        return await accounts.refresh_session(refresh_in.refresh_token, settings)
    except accounts.RefreshRefused:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, INVALID_REFRESH_TOKEN, headers=BEARER
        ) from None


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, responses=UNAUTHORIZED)
async def logout(
    session: CurrentSession, settings: SettingsDep, logout_in: LogoutRequest | None = None
) -> None:
    """End this session: its access token stops working now, its refresh tokens too.

    A `refresh_token` in the body ends the session it belongs to as well, if it is the
    caller's (a token of someone else's is ignored, and says nothing about that session).
    """
    user_id = id_of(session.user)
    await accounts.end_session(user_id, session.claims.sid, settings)
    if logout_in is not None and logout_in.refresh_token is not None:
        digest = digest_token(logout_in.refresh_token)
        other = await RefreshToken.find_one(RefreshToken.token_hash == digest)
        if other is not None and other.user_id == user_id and other.family_id != session.claims.sid:
            await accounts.end_session(user_id, other.family_id, settings)


@router.post("/logout/all", status_code=status.HTTP_204_NO_CONTENT, responses=UNAUTHORIZED)
async def logout_all(session: CurrentSession) -> None:
    """End every session of the caller: every access and refresh token issued before now."""
    await accounts.end_all_sessions(id_of(session.user))


@router.post(
    "/auth/forgot-password",
    status_code=status.HTTP_202_ACCEPTED,
    responses=MAIL_THROTTLED,
)
async def forgot_password(
    forgot_in: ForgotPassword, request: Request, settings: SettingsDep, sender: MailSenderDep
) -> Message:
    """Mail a password reset link to the account of this email, if there is one.

    The answer is the same, in about the same time, whether the account exists or not: the
    request only queues the mail, and the outbox's sender looks the account up.
    """
    await count_mail_request("password_reset", forgot_in.email, request, settings)
    await sender.queue("password_reset", forgot_in.email)
    return Message(message=RESET_MAIL_QUEUED)


@router.post(
    "/auth/reset-password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={status.HTTP_400_BAD_REQUEST: error(INVALID_MAILED_TOKEN)},
)
async def reset_password(reset_in: PasswordReset, settings: SettingsDep) -> None:
    """Choose a new password with the token of a reset mail: every session ends."""
    if not await recovery.reset_password(reset_in.token, reset_in.new_password, settings):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_MAILED_TOKEN)


@router.post(
    "/auth/verify",
    responses={status.HTTP_400_BAD_REQUEST: error(INVALID_MAILED_TOKEN)},
)
async def verify_email(verify_in: EmailVerification) -> UserPublic:
    """Confirm an email address with the token of its verification mail."""
    user = await recovery.verify_email(verify_in.token)
    if user is None:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_MAILED_TOKEN)
    return UserPublic.model_validate(user)


@router.post(
    "/auth/verify/request",
    status_code=status.HTTP_202_ACCEPTED,
    responses={
        **UNAUTHORIZED,
        status.HTTP_409_CONFLICT: error("Email address already verified"),
        **MAIL_THROTTLED,
    },
)
async def request_verification(
    user: CurrentUser, request: Request, settings: SettingsDep, sender: MailSenderDep
) -> Message:
    """Mail a fresh verification link to your address; the link of any earlier one stops
    working once this one is sent."""
    if user.email_verified:
        raise HTTPException(status.HTTP_409_CONFLICT, "Email address already verified")
    await count_mail_request("email_verification", user.email, request, settings)
    await sender.queue("email_verification", user.email, user_id=id_of(user))
    return Message(message="A verification link is on its way to your address")
