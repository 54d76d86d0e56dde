"""Moderation, for admins: list users, deactivate and activate them, change roles, delete
any post or comment, and read the audit log.

Every action (not the two lists) writes one audit document and one log line
(service/audit.py), whatever its outcome once the caller is known to be an admin; the audit
log has no route that writes or deletes.
"""

import hashlib
import re
from typing import Annotated, Any

from beanie import Document, PydanticObjectId
from fastapi import HTTPException, Query, Request, Response, status

from service import cursors, moderation
from service.audit import audited
from service.config import Settings
from service.deps import AdminUser, SettingsDep, cursor_secret
from service.models import AuditEntry, User, id_of
from service.models.audit import AuditAction, AuditOut
from service.models.base import IdIn
from service.models.user import AccountOut, AdminAction, RoleChange
from service.routers.comments import remove_comment
from service.routers.posts import remove_post
from service.routing import NEXT_PAGE_HEADERS, CollectionRouter, Responses, error

router = CollectionRouter(prefix="/admin", tags=["Admin"])

NEWEST_FIRST = {"created_at": -1, "_id": -1}
NOT_YOURSELF = "Admins cannot deactivate or demote themselves"

PAGED: Responses = {
    status.HTTP_200_OK: {"headers": NEXT_PAGE_HEADERS},
    status.HTTP_400_BAD_REQUEST: error(cursors.INVALID_CURSOR),
}
NO_USER: Responses = {status.HTTP_404_NOT_FOUND: error("No such user")}
CONFLICT: Responses = {
    status.HTTP_409_CONFLICT: error(
        "The change is on yourself, would leave no active admin, or met another change of the "
        "account (try again)"
    )
}

Limit = Annotated[int, Query(ge=1, le=100, description="Page size")]
Cursor = Annotated[
    str | None,
    Query(max_length=cursors.CURSOR_MAX, description="From `X-Next-Cursor` of a page"),
]


async def _newest_first[D: Document](
    document: type[D],
    match: dict[str, Any],
    *,
    scope: str,
    cursor: str | None,
    limit: int,
    settings: Settings,
    request: Request,
    response: Response,
) -> list[D]:
    """One page of a newest-first list (`scope` names it in its cursors), read from the
    collection's `(created_at, _id)` index after the cursor's item; when more follow, `Link`
    and `X-Next-Cursor` name the next page."""
    secret = cursor_secret(settings)
    if cursor is not None:
        try:
            created_at, item_id = cursors.decode(secret, scope, cursor)
        except cursors.InvalidCursor:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, cursors.INVALID_CURSOR) from None
        # Each branch whole, so that each is one range of the index.
        match = {
            "$or": [
                {**match, "created_at": {"$lt": created_at}},
                {**match, "created_at": created_at, "_id": {"$lt": item_id}},
            ]
        }
    rows = (
        await document.get_pymongo_collection()
        .find(match)
        .sort(list(NEWEST_FIRST.items()))
        .limit(limit + 1)
        .to_list()
    )
    if len(rows) > limit:
        last = rows[limit - 1]
        following = cursors.encode(secret, scope, last["created_at"], last["_id"])
        response.headers["X-Next-Cursor"] = following
        url = request.url.include_query_params(cursor=following)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return [document.model_validate(row) for row in rows[:limit]]


def _reason(action_in: AdminAction | None) -> str | None:
    return None if action_in is None else action_in.reason


@router.get("/users", responses=PAGED)
async def admin_list_users(
    _: AdminUser,
    settings: SettingsDep,
    request: Request,
    response: Response,
    limit: Limit = 20,
    search: Annotated[
        str, Query(max_length=254, description="Literal, case-insensitive text in the email")
    ] = "",
    cursor: Cursor = None,
) -> list[AccountOut]:
    """Every user, newest first, with their role and whether they are active; `search`
    keeps those whose email contains the text."""
    scope = f"admin-users:{hashlib.sha256(search.encode(errors='surrogatepass')).hexdigest()}"
    # Emails are stored lower-cased: the text is too, and escaped (never a pattern).
    found = {"email": {"$regex": re.escape(search.lower()).replace("\x00", "\\x00")}}
    users = await _newest_first(
        User,
        found if search else {},
        scope=scope,
        cursor=cursor,
        limit=limit,
        settings=settings,
        request=request,
        response=response,
    )
    return [AccountOut.model_validate(user) for user in users]


async def _change(
    admin: User,
    user_id: PydanticObjectId,
    action: AuditAction,
    action_in: AdminAction | None,
    **change: Any,
) -> AccountOut:
    """Deactivate, activate or set the role of a user, recorded in the audit log."""
    async with audited(action, "user", user_id, actor=admin, reason=_reason(action_in)) as entry:
        removes_self = change.get("role", "admin") != "admin" or change.get("active") is False
        if user_id == id_of(admin) and removes_self:
            raise HTTPException(status.HTTP_409_CONFLICT, NOT_YOURSELF)
        try:
            before, after = await moderation.change_account(user_id, **change)
        except moderation.NoSuchUser:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"User with id: {user_id} does not exist"
            ) from None
        except moderation.Refused as refused:
            raise HTTPException(status.HTTP_409_CONFLICT, str(refused)) from None
        field = "role" if "role" in change else "active"
        old, new = (str(getattr(user, field)).lower() for user in (before, after))
        entry.detail = f"{field}: {old} -> {new}" if old != new else f"{field}: already {new}"
    return AccountOut.model_validate(after)


@router.post(
    "/users/{user_id}/deactivate", responses={**NO_USER, **CONFLICT}, response_model=AccountOut
)
async def deactivate_user(
    user_id: IdIn, admin: AdminUser, action_in: AdminAction | None = None
) -> AccountOut:
    """Deactivate an account: its tokens stop working, its logins are refused (403 `Account
    disabled`), and its posts and comments are hidden everywhere until it is activated."""
    return await _change(admin, user_id, "deactivate_user", action_in, active=False)


@router.post("/users/{user_id}/activate", responses={**NO_USER, **CONFLICT})
async def activate_user(
    user_id: IdIn, admin: AdminUser, action_in: AdminAction | None = None
) -> AccountOut:
    """Activate a deactivated account again: its posts and comments are shown again, and its
    user may log in (the tokens it held before stay refused)."""
    return await _change(admin, user_id, "activate_user", action_in, active=True)


@router.put("/users/{user_id}/role", responses={**NO_USER, **CONFLICT})
async def set_user_role(user_id: IdIn, role_in: RoleChange, admin: AdminUser) -> AccountOut:
    """Make a user an admin, or an admin a user again."""
    return await _change(admin, user_id, "set_role", role_in, role=role_in.role)


@router.delete(
    "/posts/{post_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={status.HTTP_404_NOT_FOUND: error("No such post")},
)
async def admin_delete_post(
    post_id: IdIn, admin: AdminUser, action_in: AdminAction | None = None
) -> None:
    """Delete any post (a draft, or a deactivated account's, too), with the votes and comments
    on it, as its owner's delete does."""
    async with audited(
        "delete_post", "post", post_id, actor=admin, reason=_reason(action_in)
    ) as entry:
        post = await remove_post({"_id": post_id})
        if post is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"post with id: {post_id} does not exist"
            )
        entry.detail = f"owner {post['owner_id']}: {post['title'][:100]!r}"


@router.delete(
    "/comments/{comment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={status.HTTP_404_NOT_FOUND: error("No such comment")},
)
async def admin_delete_comment(
    comment_id: IdIn, admin: AdminUser, action_in: AdminAction | None = None
) -> None:
    """Delete any comment, taking it off its post's count, as its author's delete does."""
    reason = _reason(action_in)
    async with audited(
        "delete_comment", "comment", comment_id, actor=admin, reason=reason
    ) as entry:
        comment = await remove_comment(comment_id)
        if comment is None:
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, f"comment with id: {comment_id} does not exist"
            )
        entry.detail = f"author {comment['author_id']} on post {comment['post_id']}"


@router.get("/audit", responses=PAGED)
async def read_audit_log(
    _: AdminUser,
    settings: SettingsDep,
    request: Request,
    response: Response,
    limit: Limit = 20,
    cursor: Cursor = None,
) -> list[AuditOut]:
    """The audit log, newest first: who did what, to what, when, why, and how it ended."""
    entries = await _newest_first(
        AuditEntry,
        {},
        scope="admin-audit",
        cursor=cursor,
        limit=limit,
        settings=settings,
        request=request,
        response=response,
    )
    return [AuditOut.of(entry) for entry in entries]
