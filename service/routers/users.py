"""Users: register, and read yourself or anyone by id."""

from beanie import PydanticObjectId
from fastapi import HTTPException, status
from pymongo.errors import DuplicateKeyError

from service.deps import CurrentUser, SettingsDep
from service.models import User, UserCreate, UserPublic
from service.routing import CollectionRouter, Responses, error
from service.security import hash_password

router = CollectionRouter(prefix="/users", tags=["Users"])

UNAUTHORIZED: Responses = {status.HTTP_401_UNAUTHORIZED: error("Missing or invalid token")}


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: error("Email already registered")},
)
async def create_user(user_in: UserCreate, settings: SettingsDep) -> UserPublic:
    """Register a user; the email is trimmed and lower-cased, the password stored hashed."""
    user = User(
        email=user_in.email,
        hashed_password=await hash_password(user_in.password, settings),
    )
    try:
        await user.insert()
    except DuplicateKeyError:
        # The unique index decides, so two simultaneous registrations get one 201, one 409.
        raise HTTPException(status.HTTP_409_CONFLICT, "Email already registered") from None
    return UserPublic.model_validate(user)


@router.get("/me", responses=UNAUTHORIZED)
async def read_user_me(user: CurrentUser) -> UserPublic:
    """The user the token belongs to."""
    return UserPublic.model_validate(user)


@router.get(
    "/{user_id}",
    responses={**UNAUTHORIZED, status.HTTP_404_NOT_FOUND: error("No such user")},
)
async def read_user(user_id: PydanticObjectId, _: CurrentUser) -> UserPublic:
    """Any user's public profile."""
    user = await User.get(user_id)
    if user is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"User with id: {user_id} does not exist")
    return UserPublic.model_validate(user)
