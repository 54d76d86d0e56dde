"""Sessions and accounts: the multi-step writes that the auth and users routers share.

A session begins at a login and is named by a random id (`sid`). Its refresh tokens form a
family: each refresh uses up one token and adds the next, stored only as SHA-256 digests.
Its access tokens are JWTs that carry the `sid` and the user's session epoch (`ver`).

Ending sessions has two halves. The refresh tokens are marked revoked in their collection,
which every refresh reads anyway. The access tokens are checked against the user document,
which every protected request reads anyway (deps.get_current_user), so a logout is honoured
on the very next request by every API process at no extra database round trip:
- one session ends (logout, a replayed refresh token): its `sid` goes into
  `revoked_sessions` until the last access token it can have issued has expired;
- every session ends (logout-all, a password change, account deletion): `session_epoch` goes
  up, and a token of an older epoch, access or refresh, is refused from then on.

No write here needs a transaction: each step is one single-document or idempotent multi-
document update, ordered so that a failure halfway leaves the tokens refused, never live.
"""

import logging
from collections import Counter
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from beanie.odm.queries.update import UpdateResponse
from beanie.operators import In
from pydantic import BaseModel, Field
from pymongo.results import DeleteResult

from service.config import Settings
from service.models import Comment, LoginAttempt, Post, RefreshToken, TokenPair, User, Vote, id_of
from service.models.base import new_id, utc_now
from service.models.post import SHOWN
from service.models.session import PasswordCheck
from service.security import (
    access_token_lifetime,
    create_access_token,
    digest_token,
    new_refresh_token,
    new_session_id,
)
from service.tallies import count_posts
from service.throttle import email_key

BATCH = 1000  # ids per command, which keeps each command well under 16 MB

logger = logging.getLogger(__name__)

REVOCATION_LEEWAY = timedelta(minutes=5)


class RefreshRefused(Exception):
    """The refresh token is unknown, expired, used up, revoked, or its user is gone."""


async def start_session(
    user: User,
    settings: Settings,
    *,
    session_id: str | None = None,
    check: PasswordCheck | None = None,
) -> TokenPair:
    """Issue an access token and a refresh token: a new session, or the next of `session_id`.

    `check` is the password check that begins a new session (a login, a password change):
    its refresh token records that success for the login throttle (service/throttle.py),
    which is how the email's counter resets at no extra write.
    """
    now = utc_now()
    session_id = session_id or new_session_id()
    refresh_token = new_refresh_token()
    await RefreshToken(
        id=new_id(),
        token_hash=digest_token(refresh_token),
        family_id=session_id,
        user_id=id_of(user),
        epoch=user.session_epoch,
        issued_at=now,
        expires_at=now + timedelta(days=settings.refresh_token_expire_days),
        password_check=check,
    ).insert()
    lifetime = access_token_lifetime(settings)
    access_token = create_access_token(
        str(id_of(user)), settings, session_id=session_id, epoch=user.session_epoch, now=now
    )
    return TokenPair(
        access_token=access_token,
        refresh_token=refresh_token,
        expires_in=int(lifetime.total_seconds()),
    )


async def refresh_session(refresh_token: str, settings: Settings) -> TokenPair:
    """Use up a refresh token and issue the session's next pair.

    A token that was already used is a replay: either its holder or a thief has the newer
    one, and there is no telling which, so the whole session ends for both.
    """
    now = utc_now()
    digest = digest_token(refresh_token)
    # Exchanging is one atomic update (findAndModify): of two simultaneous uses of one token,
    # one gets it.
    used = await RefreshToken.find_one(
        {"token_hash": digest, "used_at": None, "revoked_at": None, "expires_at": {"$gt": now}}
    ).update({"$set": {"used_at": now}}, response_type=UpdateResponse.NEW_DOCUMENT)
    if not isinstance(used, RefreshToken):  # None: no such live token
        replayed = await RefreshToken.find_one(RefreshToken.token_hash == digest)
        if replayed is not None and replayed.used_at is not None:
            logger.warning(
                "A used refresh token was presented again: ending session %s of user %s",
                replayed.family_id,
                replayed.user_id,
            )
            await end_session(replayed.user_id, replayed.family_id, settings)
        raise RefreshRefused
    user = await User.get(used.user_id)
    if user is None or not user.session_is_live(used.family_id, used.epoch, now):
        raise RefreshRefused
    pair = await start_session(user, settings, session_id=used.family_id)
    # A logout of this session may have revoked its tokens between the exchange above and the
    # insert of the next one, missing it. Any revoked token of the family says so: then the
    # new one goes too.
    if (
        await RefreshToken.find_one({"family_id": used.family_id, "revoked_at": {"$ne": None}})
        is not None
    ):
        await _revoke_family(used.user_id, used.family_id, utc_now())
        raise RefreshRefused
    return pair


async def end_session(user_id: PydanticObjectId, session_id: str, settings: Settings) -> None:
    """End one session: its refresh tokens now, its access tokens on their next request."""
    now = utc_now()
    # The refresh tokens first: if the second write fails, the client's retry finds a session
    # whose access tokens still work rather than one that can be refreshed back to life.
    await _revoke_family(user_id, session_id, now)
    # Kept a while past the access tokens' life: another process's clock may run ahead, or a
    # refresh finishing just now may sign one a moment later.
    until = now + access_token_lifetime(settings) + REVOCATION_LEEWAY
    kept = {
        "$filter": {
            "input": {"$ifNull": ["$revoked_sessions", []]},
            "cond": {"$gt": ["$$this.until", now]},
        }
    }
    # One pipeline update: drop the entries whose tokens have all expired, append this one
    # (and give a user written before sessions existed its epoch, as the migration would).
    # PyMongo: Beanie's update() takes update documents only (typed Mapping, and its docs show
    # no pipeline form), and the expiry filter needs the pipeline's $filter.
    await User.get_pymongo_collection().update_one(
        {"_id": user_id},
        [
            {
                "$set": {
                    "revoked_sessions": {
                        "$concatArrays": [kept, [{"sid": session_id, "until": until}]]
                    },
                    "session_epoch": {"$ifNull": ["$session_epoch", 0]},
                }
            }
        ],
    )


async def end_all_sessions(
    user_id: PydanticObjectId,
    *,
    unchanged: User | None = None,
    where: dict[str, Any] | None = None,
    also_set: dict[str, Any] | None = None,
) -> User | None:
    """End every session of a user; return the user as it now is.

    Raising the epoch is what ends them, in one write that can also set other fields (a new
    password hash); marking the refresh tokens revoked afterwards is for whoever reads them.
    With `unchanged`, the write happens only if the user's epoch and password hash are still
    those of that copy: a request that checked the password against it must not act after
    the password changed or every session ended in the meantime. `where` adds conditions of
    its own (a reset token still live). None if nothing matched (or the user is gone).
    """
    match: dict[str, Any] = {**(where or {}), "_id": user_id}
    if unchanged is not None:
        match |= {
            "session_epoch": unchanged.session_epoch,
            "hashed_password": unchanged.hashed_password,
        }
    updated = await User.find_one(match).update(
        {"$inc": {"session_epoch": 1}, "$set": {"revoked_sessions": [], **(also_set or {})}},
        response_type=UpdateResponse.NEW_DOCUMENT,
    )
    if not isinstance(updated, User):  # None: nothing matched
        return None
    await RefreshToken.find({"user_id": user_id, "revoked_at": None}).update_many(
        {"$set": {"revoked_at": utc_now()}}
    )
    return updated


async def delete_account(user: User, *, where: dict[str, Any] | None = None) -> bool:
    """Delete a user with their posts, every vote and comment on those posts, their votes and
    comments, their sessions.

    Each of the user's votes and comments on other users' posts is taken back with its count.
    The order makes a retry safe:
    sessions end first (a failure later leaves an account that can log in and delete again),
    the posts go before the votes on them (a vote cannot land on a post that is going), and
    the user document goes last. False, and nothing deleted, if the password changed or every
    session ended since `user` was read (or `where`, conditions of the caller's own, fails).

    The login throttle's attempts of the email go too (the successes that discount them are
    recorded on the refresh tokens that go here). The failures of its client addresses stay:
    they were failures, whoever's email they tried.
    """
    user_id = id_of(user)
    if await end_all_sessions(user_id, unchanged=user, where=where) is None:
        return False
    await _delete_content(user_id)
    await LoginAttempt.find(LoginAttempt.key == email_key(user.email)).delete()
    await RefreshToken.find(RefreshToken.user_id == user_id).delete()
    await user.delete()
    # A request of this user that was authenticated before the sessions ended may still have
    # written a post or vote since; without transactions, a second pass is what sweeps it up.
    await _delete_content(user_id)
    return True


class _Id(BaseModel):
    """A projection: a document's id alone."""

    id: PydanticObjectId = Field(alias="_id")


class _VoteOn(_Id):
    """A projection: a vote's id and its post."""

    post_id: PydanticObjectId


class _CommentOn(_VoteOn):
    """A projection: a comment's id and its post."""


async def _delete_content(user_id: PydanticObjectId) -> None:
    """The user's posts, the votes and comments on them, and the user's votes and comments
    (with the counts they made)."""
    post_ids = [row.id async for row in Post.find(Post.owner_id == user_id, projection_model=_Id)]
    # Published posts are counted off by what each command deleted (drafts are counted on the
    # user document, which goes too). A post published or unpublished meanwhile is left by one
    # filter and taken by the other on the next round.
    # Hidden posts (an account deactivated) are out of the published count already.
    while True:
        published = await _deleted(
            Post.find({"owner_id": user_id, "published": True, "hidden": SHOWN}).delete()
        )
        await count_posts(user_id, published=True, delta=-published)
        drafts = await _deleted(Post.find({"owner_id": user_id, "published": False}).delete())
        hidden = await _deleted(
            Post.find({"owner_id": user_id, "published": True, "hidden": True}).delete()
        )
        if not published and not drafts and not hidden:
            break
    for start in range(0, len(post_ids), BATCH):
        await Vote.find(In(Vote.post_id, post_ids[start : start + BATCH])).delete()
    # Each of the user's votes is taken back one by one, so that the count goes down exactly
    # once per vote deleted here, even when the user's own request takes the same vote back
    # at the same moment (one of the two deletes it, and only that one counts it).
    counted: list[PydanticObjectId] = []
    async for row in Vote.find(Vote.user_id == user_id, projection_model=_VoteOn):
        if await _deleted(Vote.find_one(Vote.id == row.id).delete()):
            counted.append(row.post_id)
    # One vote per user and post: each post in the list lost exactly one vote.
    for start in range(0, len(counted), BATCH):
        await Post.find(In(Post.id, counted[start : start + BATCH])).update_many(
            {"$inc": {"votes": -1}}
        )
    for start in range(0, len(post_ids), BATCH):
        await Comment.find(In(Comment.post_id, post_ids[start : start + BATCH])).delete()
    # The user's comments on other posts, one by one like the votes; a post may lose several
    # (a hidden comment was taken off its post's count when it was hidden).
    lost: Counter[PydanticObjectId] = Counter()
    comments = Comment.get_pymongo_collection()
    async for row in Comment.find(Comment.author_id == user_id, projection_model=_CommentOn):
        deleted = await comments.find_one_and_delete({"_id": row.id}, projection={"hidden": 1})
        if deleted is not None and not deleted.get("hidden"):
            lost[row.post_id] += 1
    for post_id, number in lost.items():
        await Post.find_one(Post.id == post_id).update({"$inc": {"comments": -number}})


async def _deleted(deletion: Awaitable[DeleteResult | None]) -> int:
    """How many documents a Beanie delete removed (None only for a bulk writer's)."""
    result = await deletion
    return result.deleted_count if result is not None else 0


async def _revoke_family(user_id: PydanticObjectId, session_id: str, now: datetime) -> None:
    await RefreshToken.find(
        {"family_id": session_id, "user_id": user_id, "revoked_at": None}
    ).update_many({"$set": {"revoked_at": now}})
