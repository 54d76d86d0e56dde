"""Forgotten passwords and verified emails: the tokens the mails carry, and their use.

Each token is 256 random bits, sent only in its mail; the user document keeps its SHA-256
digest and expiry, one live token of each kind (`User.password_reset`,
`User.email_verification`), so a newer token replaces the older one. A token is used up by
the one atomic update that finds it (findAndModify), so it works once however many requests
present it. Every password write clears the reset token: a change through PUT
/users/me/password or a reset itself voids any reset link sent before.

A forgot-password request never looks at the account: it queues a message naming the email
that was typed, and the outbox's sender (service/mail.py) looks the account up, makes the
token and the mail, or skips the message when no account has that email. So the request
sends the same commands, and answers the same bytes in the same time, whether or not the
account exists.
"""

from datetime import timedelta

from beanie.odm.queries.update import UpdateResponse

from service import accounts
from service.config import Settings
from service.mail import Mail, Preparer, page
from service.models import LoginAttempt, OutboxMessage, User, id_of
from service.models.base import utc_now
from service.models.user import MailedToken
from service.security import digest_token, hash_password, new_mailed_token
from service.throttle import email_key

RESET_PATH = "/reset-password"
VERIFY_PATH = "/verify-email"


async def _link_mail(
    user: User,
    field: str,
    lifetime: timedelta,
    link: str,
    *,
    subject: str,
    paragraphs: list[str],
    action: str,
) -> Mail:
    """A mail with a new token of one kind for `user` (it replaces the one before, in the
    user document's `field`): the paragraphs, a link to `link` with the token, and the token
    itself for an API client (`Your token: ...`)."""
    token = new_mailed_token()
    stored = MailedToken(token_hash=digest_token(token), expires_at=utc_now() + lifetime)
    await User.find_one(User.id == id_of(user)).update({"$set": {field: stored.model_dump()}})
    link = f"{link}?token={token}"
    return Mail(
        subject=subject,
        text="\n\n".join([*paragraphs, link, f"Your token: {token}"]) + "\n",
        html=page(subject, paragraphs, link, action),
        link=link,
    )


async def prepare_password_reset(message: OutboxMessage, settings: Settings) -> Mail | None:
    """The reset mail for the account of `message.to`, or None if no account has that email."""
    user = await User.find_one(User.email == message.to)
    if user is None:
        return None
    minutes = settings.password_reset_expire_minutes
    return await _link_mail(
        user,
        "password_reset",
        timedelta(minutes=minutes),
        f"{settings.public_base_url}{RESET_PATH}",
        subject="Reset your Social API password",
        paragraphs=[
            "Someone asked to reset the password of your Social API account. If it was you, "
            f"choose a new password through the link below within {minutes} minutes; it "
            "works once.",
            "If it was not you, ignore this mail: your password stays as it is.",
        ],
        action="Choose a new password",
    )


async def prepare_email_verification(message: OutboxMessage, settings: Settings) -> Mail | None:
    """The verification mail for `message.user_id`, or None if it is gone or verified."""
    user = await User.get(message.user_id) if message.user_id is not None else None
    if user is None or user.email != message.to or user.email_verified:
        return None
    hours = settings.email_verification_expire_hours
    return await _link_mail(
        user,
        "email_verification",
        timedelta(hours=hours),
        f"{settings.public_base_url}{VERIFY_PATH}",
        subject="Confirm your email address",
        paragraphs=[
            f"Confirm that {user.email} is the address of your Social API account through "
            f"the link below, within {hours} hours.",
            "If you did not register, ignore this mail.",
        ],
        action="Confirm the address",
    )


PREPARERS: dict[str, Preparer] = {
    "password_reset": prepare_password_reset,
    "email_verification": prepare_email_verification,
}


def _live(field: str, token: str) -> dict[str, object]:
    return {f"{field}.token_hash": digest_token(token), f"{field}.expires_at": {"$gt": utc_now()}}


async def reset_password(token: str, new_password: str, settings: Settings) -> bool:
    """Set a new password with a reset token; every session ends. False if the token is
    wrong, used, expired, or voided (a newer one, a password change) meanwhile."""
    # Only a live token's holder gets a hash computed for them.
    user = await User.find_one(_live("password_reset", token))
    if user is None:
        return False
    hashed = await hash_password(new_password, settings)
    # One write uses the token up, sets the password and ends every session, on condition
    # that the token is still live: of two requests with one token one gets it, and neither
    # a logout nor a login in the meantime can spend the token and leave the password as it
    # was. The link proved the address too.
    changed = await accounts.end_all_sessions(
        id_of(user),
        where=_live("password_reset", token),
        also_set={"hashed_password": hashed, "password_reset": None, "email_verified": True},
    )
    if changed is None:
        return False
    # The failed logins of the old password no longer count against the email.
    await LoginAttempt.find(LoginAttempt.key == email_key(user.email)).delete()
    return True


async def verify_email(token: str) -> User | None:
    """Mark the address of the token's user verified; None if the token is wrong, used or
    expired."""
    verified = await User.find_one(_live("email_verification", token)).update(
        {"$set": {"email_verified": True, "email_verification": None}},
        response_type=UpdateResponse.NEW_DOCUMENT,
    )
    return verified if isinstance(verified, User) else None
