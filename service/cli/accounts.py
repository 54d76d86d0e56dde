"""The account commands: `create-user` and `set-role`.

Both work on whatever MONGODB_URL names: a real MongoDB, or a running development store
through the wire URL its banner prints (without it, on the embedded store, which no other
process may hold then). What they do to a role is recorded in the audit log
(service/audit.py) as the CLI's, with no actor, and counted in the active admins as the
API's changes are (service/moderation.py).
"""

from typing import Annotated

import typer
from pydantic import ValidationError
from pymongo.errors import DuplicateKeyError

from service import moderation, security
from service.audit import audited
from service.cli import database, fail, load_settings, printable, run
from service.models import User, UserCreate, id_of
from service.models.base import new_id
from service.models.user import ADMIN, Role, normalize_email


def create_user(
    email: str,
    password: Annotated[
        str,
        typer.Option(
            prompt=True,
            hide_input=True,
            confirmation_prompt=True,
            envvar="SOCIAL_API_PASSWORD",
            help="Asked for if not given (or taken from SOCIAL_API_PASSWORD).",
        ),
    ],
    admin: Annotated[
        bool,
        typer.Option("--admin", help="Make the user an admin (recorded in the audit log)."),
    ] = False,
) -> None:
    """Register a user, with the same rules as POST /users/; --admin makes an admin.

    No verification mail is sent. An admin made here is recorded in the audit log
    (`create_user` by the CLI, whatever its outcome); an ordinary user is not, as a
    registration through the API is not.
    """
    try:
        user_in = UserCreate(email=email, password=password)
    except ValidationError as error:
        fail("; ".join(str(e["msg"]).removeprefix("Value error, ") for e in error.errors()))
    settings = load_settings()

    async def insert(user: User) -> None:
        try:
            await user.insert()
        except DuplicateKeyError:
            raise moderation.Refused(f"{user.email} is already registered") from None

    async def create() -> None:
        async with database(settings):
            hashed = await security.hash_password(user_in.password, settings)
            # An admin from its first write: there is never an ordinary account to promote.
            user = User(
                email=user_in.email, hashed_password=hashed, role=ADMIN if admin else "user"
            )
            user.id = new_id()
            try:
                if not admin:
                    await insert(user)
                else:
                    async with audited(
                        "create_user", "user", user.id, actor=None, reason=None
                    ) as entry:
                        await insert(user)
                        # After the write, as moderation.change_account counts a new admin: a
                        # crash between the two leaves the count low (safe) until `recount`.
                        await moderation.count_admins(1)
                        entry.detail = "role: admin"
            except moderation.Refused as refused:
                fail(str(refused))
            typer.echo(f"created {'admin' if admin else 'user'} {user.id} <{user.email}>")

    run(create)


def set_role(
    email: Annotated[str, typer.Argument(help="The user's email (any case).")],
    role: Annotated[Role, typer.Argument(help="admin or user.")],
) -> None:
    """Make a user an admin, or an admin a user again (ROLE: admin or user).

    As PUT /admin/users/{user_id}/role does: the last active admin cannot be demoted. Recorded
    in the audit log, whatever its outcome: `set_role` by the CLI.
    """
    # Found by its stored form, as login finds it; what is not an email is nobody's.
    address = normalize_email(email) or printable(email)
    settings = load_settings()

    async def change() -> None:
        async with database(settings):
            user = await User.find_one(User.email == address)
            if user is None:
                fail(f"no user has the email {address}")
            user_id = id_of(user)
            try:
                async with audited("set_role", "user", user_id, actor=None, reason=None) as entry:
                    try:
                        before, after = await moderation.change_account(user_id, role=role)
                    except moderation.NoSuchUser:  # deleted since it was found
                        raise moderation.NoSuchUser(f"no user has the email {address}") from None
                    moved = (
                        f"{before.role} -> {after.role}"
                        if before.role != after.role
                        else f"already {after.role}"
                    )
                    entry.detail = f"role: {moved}"
            except moderation.Refused as refused:
                fail(str(refused))
        inactive = "" if after.active else " (the account is deactivated)"
        typer.echo(f"{after.email}: role {moved}{inactive}")

    run(change)
