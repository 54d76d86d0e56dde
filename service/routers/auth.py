"""Login: OAuth2's password flow, as Swagger UI's Authorize button sends it."""

from typing import Annotated

from fastapi import Depends, HTTPException, status
from fastapi.security import OAuth2PasswordRequestForm
from pydantic import BaseModel

from service.deps import SettingsDep
from service.models import User
from service.models.user import normalize_email
from service.routing import CollectionRouter, error
from service.security import create_access_token, hash_password, needs_rehash, verify_password

router = CollectionRouter(tags=["Authentication"])

INVALID_CREDENTIALS = "Invalid Credentials"


class Token(BaseModel):
    access_token: str
    token_type: str = "bearer"


@router.post(
    "/login",
    responses={status.HTTP_403_FORBIDDEN: error("Unknown email or wrong password")},
)
async def login(
    form: Annotated[OAuth2PasswordRequestForm, Depends()], settings: SettingsDep
) -> Token:
    """Exchange an email (in `username`) and password for a bearer token."""
    email = normalize_email(form.username)
    user = await User.find_one(User.email == email) if email else None
    # An unknown email is checked against a dummy hash: same answer, about the same time.
    valid = await verify_password(form.password, user.hashed_password if user else None, settings)
    if user is None or not valid:
        raise HTTPException(status.HTTP_403_FORBIDDEN, INVALID_CREDENTIALS)
    if needs_rehash(user.hashed_password, settings.bcrypt_rounds):
        # The only moment the password is at hand: raise an old hash to the configured cost.
        rehashed = await hash_password(form.password, settings)
        await user.set({User.hashed_password: rehashed})
    return Token(access_token=create_access_token(str(user.id), settings))
