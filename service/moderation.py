"""Moderation: roles, deactivated accounts, and the count that keeps one admin at least.

A user's `role` (`user` or `admin`) and `active` flag change only here, by one conditional
write on the user document, made only if both are still as read: of two simultaneous changes
of one account, one is made and the other is tried again on what it finds.

**The last admin.** The number of active admins is kept in `counters` (like the published
count, service/tallies.py), and a change that takes an admin away first takes one off that
count, only while it is above one (one atomic update): of two admins who deactivate each
other at the same moment, one is refused, with no transaction. The count is given back if
the change is then not made; a change that makes an admin adds one after its write. Should a
crash come between the two, the count is one low (an admin change refused that could have
been made, never the reverse) until `social-api recount` derives it again.

**Deactivation** ends every session in the same write that clears `active` (the epoch rises,
as a password change does), so every token of the account answers 401 from the next request,
and stays refused after reactivation. Then the account's posts and comments are hidden
(`hidden: true`), with the counts they made:
- each published post hidden takes one off the published count (the feed's total);
- each comment hidden takes one off its post's `comments`.
Reactivation shows them again and gives the counts back. Each step is a conditional write
whose effect is counted, so a delete of the same post or comment at the same moment (by its
owner, an admin) counts it off once, whichever comes first (see routers/posts.py).
The sweep then reads the account again and sweeps again if it changed meanwhile (an admin
reactivated it while another deactivated it), so the content ends as the account does.
"""

import logging
from collections import Counter
from typing import Any

from beanie import PydanticObjectId
from beanie.odm.queries.update import UpdateResponse
from pydantic import BaseModel, Field

from service import accounts
from service.models import Comment, Post, User
from service.models.post import SHOWN
from service.models.user import ADMIN, ADMINS_COUNTER, Role
from service.tallies import count_posts, counters

logger = logging.getLogger(__name__)

ATTEMPTS = 5  # tries of a change whose account keeps changing under it


class Refused(Exception):
    """A change that is not made; its message says why, to the admin or operator."""


class NoSuchUser(Refused):
    """No user has that id (or email)."""


class LastAdmin(Refused):
    """The change would leave no active admin."""

    def __init__(self) -> None:
        super().__init__("The last admin cannot be removed: make another admin first")


class Contended(Refused):
    """The account changed under every attempt."""

    def __init__(self) -> None:
        super().__init__("The account kept changing meanwhile: try again")


def is_admin(user: User) -> bool:
    """An admin who may act: an active account with the admin role."""
    return user.role == ADMIN and user.active


def as_read(user: User) -> dict[str, Any]:
    """The filter of a user whose role and active flag are still as `user` has them (a
    document written before either existed has neither: a user, active)."""
    role = {"role": ADMIN} if user.role == ADMIN else {"role": {"$ne": ADMIN}}
    active = {"active": {"$ne": False}} if user.active else {"active": False}
    return {"_id": user.id, **role, **active}


async def count_admins(delta: int) -> None:
    """Add `delta` active admins to their count."""
    await counters().update_one({"_id": ADMINS_COUNTER}, {"$inc": {"value": delta}}, upsert=True)


async def reserve_admin_removal() -> bool:
    """Take one admin off the count if more than one is left; False (nothing taken) if not."""
    taken = await counters().update_one(
        {"_id": ADMINS_COUNTER, "value": {"$gt": 1}}, {"$inc": {"value": -1}}
    )
    return taken.modified_count == 1


async def change_account(
    user_id: PydanticObjectId, *, role: Role | None = None, active: bool | None = None
) -> tuple[User, User]:
    """Set a user's role or active flag: the user before and after.

    NoSuchUser, LastAdmin if the change would leave no active admin, Contended if the account
    kept changing. The content of an account whose active flag changed is swept to match.
    """
    for _ in range(ATTEMPTS):
        before = await User.get(user_id)
        if before is None:
            raise NoSuchUser
        after = before.model_copy(
            update={
                "role": before.role if role is None else role,
                "active": before.active if active is None else active,
            }
        )
        removes_admin = is_admin(before) and not is_admin(after)
        if removes_admin and not await reserve_admin_removal():
            raise LastAdmin
        changes = {"role": after.role, "active": after.active}
        written: User | None
        if before.active and not after.active:  # every session ends with the same write
            written = await accounts.end_all_sessions(
                user_id, where=as_read(before), also_set=changes
            )
        else:
            updated = await User.find_one(as_read(before)).update(
                {"$set": changes}, response_type=UpdateResponse.NEW_DOCUMENT
            )
            written = updated if isinstance(updated, User) else None
        if written is None:  # changed meanwhile: read it again
            if removes_admin:
                await count_admins(1)
            continue
        if is_admin(after) and not is_admin(before):
            await count_admins(1)
        if before.active != after.active:
            await sync_content(user_id)
        return before, written
    raise Contended


async def sync_content(user_id: PydanticObjectId) -> None:
    """Hide the posts and comments of a deactivated account, or show those of an active one,
    until the account holds still while it is done."""
    user = await User.get(user_id)
    while user is not None:
        hide = not user.active
        await _sweep_posts(user_id, hide=hide)
        await _sweep_comments(user_id, hide=hide)
        again = await User.get(user_id)
        if again is None or again.active == user.active:
            return
        user = again


def _hidden(value: bool) -> dict[str, Any]:
    return {"hidden": True} if value else {"hidden": SHOWN}


async def _sweep_posts(owner_id: PydanticObjectId, *, hide: bool) -> None:
    """Hide or show every post of the owner; move the published count by what changed.

    Round after round until one changes nothing, while the account still says `hide`: once it
    does not (another admin changed it meanwhile, and is sweeping the other way), this sweep
    stops, and `sync_content` reads the account again and sweeps as it now is. Two sweeps in
    opposite directions would otherwise undo each other's rounds for ever."""
    posts = Post.get_pymongo_collection()
    users = User.get_pymongo_collection()
    while True:
        account = await users.find_one({"_id": owner_id}, {"active": 1})
        if account is None or account.get("active", True) == hide:
            return
        changed = 0
        for published in (True, False):
            result = await posts.update_many(
                {"owner_id": owner_id, "published": published, **_hidden(not hide)},
                {"$set": {"hidden": hide}},
            )
            changed += result.modified_count
            if published:  # drafts are counted on their owner, hidden or not
                delta = result.modified_count
                await count_posts(owner_id, published=True, delta=-delta if hide else delta)
        if not changed:  # a post published or unpublished meanwhile is taken next round
            return


class _CommentOn(BaseModel):
    """A projection: a comment's id and its post."""

    id: PydanticObjectId = Field(alias="_id")
    post_id: PydanticObjectId


async def _sweep_comments(author_id: PydanticObjectId, *, hide: bool) -> None:
    """Hide or show every comment of the author, one by one, each counted on its post only
    if this sweep is what changed it."""
    moved: Counter[PydanticObjectId] = Counter()
    comments = Comment.get_pymongo_collection()
    async for row in Comment.find(
        {"author_id": author_id, **_hidden(not hide)}, projection_model=_CommentOn
    ):
        result = await comments.update_one(
            {"_id": row.id, **_hidden(not hide)}, {"$set": {"hidden": hide}}
        )
        if result.modified_count:
            moved[row.post_id] += 1
    posts = Post.get_pymongo_collection()
    for post_id, number in moved.items():
        await posts.update_one(
            {"_id": post_id}, {"$inc": {"comments": -number if hide else number}}
        )
