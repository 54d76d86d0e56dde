"""Users: register, and read yourself or anyone by id."""

from fastapi import HTTPException, Request, status
from pymongo.errors import DuplicateKeyError

from service import accounts, deps, moderation
from service.deps import CurrentUser, MailSenderDep, SettingsDep
from service.models import (
    AccountDeletion,
    PasswordChange,
    TokenPair,
    User,
    UserCreate,
    UserPublic,
    id_of,
)
from service.models.base import IdIn, new_id
from service.models.session import PasswordCheck
from service.models.user import UserMe
from service.routers.auth import INVALID_CREDENTIALS, THROTTLED
from service.routing import CollectionRouter, Responses, error
from service.security import hash_password

router = CollectionRouter(prefix="/users", tags=["Users"])

UNAUTHORIZED: Responses = {status.HTTP_401_UNAUTHORIZED: error("Missing or invalid token")}


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: error("Email already registered")},
)
async def create_user(
    user_in: UserCreate, settings: SettingsDep, sender: MailSenderDep
) -> UserPublic:
    """Register a user; the email is trimmed and lower-cased, the password stored hashed.

    A verification mail goes to the address (POST /auth/verify takes its token)."""
    user = User(
        email=user_in.email,
        hashed_password=await hash_password(user_in.password, settings),
    )
    user.id = new_id()
    try:
        await user.insert()
    except DuplicateKeyError:
        # The unique index decides, so two simultaneous registrations get one 201, one 409.
        raise HTTPException(status.HTTP_409_CONFLICT, "Email already registered") from None
    await sender.queue("email_verification", user.email, user_id=id_of(user))
    return UserPublic.model_validate(user)


@router.get("/me", responses=UNAUTHORIZED)
async def read_user_me(user: CurrentUser) -> UserMe:
    """The user the token belongs to, with their role (which only they see)."""
    return UserMe.model_validate(user)


PASSWORD_CHECKED: Responses = {
    **UNAUTHORIZED,
    status.HTTP_403_FORBIDDEN: error("Wrong password"),
    **THROTTLED,
}


async def check_password(
    user: User, password: str, request: Request, settings: SettingsDep
) -> PasswordCheck:
    """403 unless `password` is the user's; throttled like a login of the user's email, so a
    stolen access token cannot be used to guess the password either.

    The success is what the caller records with its write (a new session's refresh token, or
    the deletion of the account's attempts): that resets the email's counter.
    """
    checked = await deps.check_password(
        user.email,
        password,
        request,
        settings,
        account_email=user.email,
        hashed_password=user.hashed_password,
    )
    if not checked.valid:
        raise HTTPException(status.HTTP_403_FORBIDDEN, INVALID_CREDENTIALS)
    return checked.check


@router.put("/me/password", responses=PASSWORD_CHECKED)
async def update_password(
    password_in: PasswordChange, user: CurrentUser, request: Request, settings: SettingsDep
) -> TokenPair:
    """Change your password: every session ends, and this answer starts a new one."""
    check = await check_password(user, password_in.current_password, request, settings)
    hashed = await hash_password(password_in.new_password, settings)
    changed = await accounts.end_all_sessions(
        id_of(user), unchanged=user, also_set={"hashed_password": hashed, "password_reset": None}
    )
    if changed is None:  # the password changed, sessions ended or the user went meanwhile
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, deps.INVALID_CREDENTIALS, headers=deps.BEARER
        )
    return await accounts.start_session(changed, settings, check=check)


LAST_ADMIN_DELETION = "The last admin cannot delete their account: make another admin first"


@router.delete(
    "/me",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**PASSWORD_CHECKED, status.HTTP_409_CONFLICT: error(LAST_ADMIN_DELETION)},
)
async def delete_user_me(
    deletion_in: AccountDeletion, user: CurrentUser, request: Request, settings: SettingsDep
) -> None:
    """Delete your account, your posts, the votes on them and yours, and your sessions."""
    await check_password(user, deletion_in.password, request, settings)
    # An admin's account takes one off the count of admins first, if one is left after it
    # (service/moderation.py): the last admin cannot go.
    removes_admin = moderation.is_admin(user)
    if removes_admin and not await moderation.reserve_admin_removal():
        raise HTTPException(status.HTTP_409_CONFLICT, LAST_ADMIN_DELETION)
    # Made only if the password, the sessions, the role and the active flag are as read.
    if not await accounts.delete_account(user, where=moderation.as_read(user)):
        if removes_admin:
            await moderation.count_admins(1)
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED, deps.INVALID_CREDENTIALS, headers=deps.BEARER
        )


@router.get(
    "/{user_id}",
    responses={**UNAUTHORIZED, status.HTTP_404_NOT_FOUND: error("No such user")},
)
async def read_user(user_id: IdIn, _: CurrentUser) -> UserPublic:
    """Any user's public profile."""
    user = await User.get(user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"User with id: {user_id} does not exist")
    return UserPublic.model_validate(user)
