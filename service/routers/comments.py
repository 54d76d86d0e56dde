"""Comments: write one on a post you can see, list a post's comments by cursor, delete one.

Each post keeps its number of comments (`Post.comments`), as it keeps its votes: a comment is
a document in `comments` plus one atomic $inc of the post's count, written in that order, and
a count that cannot be written (the post is gone, or is someone else's draft) takes the
comment back. A draft's comments are as invisible as the draft.
"""

from typing import Annotated, Any

from beanie import PydanticObjectId
from fastapi import HTTPException, Query, Request, Response, status

from service import cursors
from service.deps import CurrentUser, SettingsDep, WritingUser, cursor_secret
from service.models import Comment, Post, id_of
from service.models.base import IdIn, new_id
from service.models.comment import COMMENT_ORDER, CommentCreate, CommentOut
from service.models.post import SHOWN, PostOwner
from service.routing import NEXT_PAGE_HEADERS, CollectionRouter, Responses, error

router = CollectionRouter(tags=["Comments"])

UNAUTHORIZED: Responses = {status.HTTP_401_UNAUTHORIZED: error("Missing or invalid token")}
NO_POST: Responses = {status.HTTP_404_NOT_FOUND: error("No such post, or someone else's draft")}
UNVERIFIED: Responses = {
    status.HTTP_403_FORBIDDEN: error("Email address not verified (REQUIRE_VERIFIED_EMAIL)")
}
PAGED: Responses = {
    status.HTTP_200_OK: {"headers": NEXT_PAGE_HEADERS},
    status.HTTP_400_BAD_REQUEST: error(cursors.INVALID_CURSOR),
}


def no_such_post(post_id: object) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, f"post with id: {post_id} was not found")


@router.post(
    "/posts/{post_id}/comments",
    status_code=status.HTTP_201_CREATED,
    responses={**UNAUTHORIZED, **UNVERIFIED, **NO_POST},
)
async def create_comment(post_id: IdIn, comment_in: CommentCreate, user: WritingUser) -> CommentOut:
    """Comment on a post you can see."""
    user_id = id_of(user)
    comment = Comment(
        post_id=post_id,
        author_id=user_id,
        author=PostOwner(email=user.email, created_at=user.created_at),
        content=comment_in.content,
    )
    comment.id = new_id()
    await comment.insert()
    # PyMongo rather than Beanie's find_one().update(): the same filter and $inc as a vote's
    # count, which measured 0.41 ms of CPU against 0.51 ms (routers/votes.py).
    counted = await Post.get_pymongo_collection().update_one(
        {"$and": [{"_id": post_id}, Post.visible_to(user_id)]},
        {"$inc": {"comments": 1}},
    )
    if counted.matched_count == 0:  # no such post for this user: the comment goes back
        # Unless another request (the draft's owner, the author's account deletion) deleted
        # it first and counted it off: then the count it took off is given back.
        gone = await Comment.get_pymongo_collection().delete_one({"_id": comment.id})
        if gone.deleted_count == 0:
            await Post.find_one(Post.id == post_id).update({"$inc": {"comments": 1}})
        raise no_such_post(post_id)
    return CommentOut.of(comment)


@router.get("/posts/{post_id}/comments", responses={**UNAUTHORIZED, **NO_POST, **PAGED})
async def read_comments(
    post_id: IdIn,
    user: CurrentUser,
    settings: SettingsDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size")] = 20,
    cursor: Annotated[
        str | None,
        Query(max_length=cursors.CURSOR_MAX, description="From `X-Next-Cursor` of a page"),
    ] = None,
) -> list[CommentOut]:
    """A post's comments, oldest first, a page at a time: follow `Link` (or pass
    `X-Next-Cursor` as `cursor`) for the next."""
    scope = f"comments:{post_id}"
    secret = cursor_secret(settings)
    match: dict[str, Any] = {"post_id": post_id, "hidden": SHOWN}
    if cursor is not None:
        try:
            after, after_id = cursors.decode(secret, scope, cursor)
        except cursors.InvalidCursor:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, cursors.INVALID_CURSOR) from None
        # Each branch whole, post_id included, so that each is one range of the index.
        match = {
            "$or": [
                {"post_id": post_id, "created_at": {"$gt": after}, "hidden": SHOWN},
                {
                    "post_id": post_id,
                    "created_at": after,
                    "_id": {"$gt": after_id},
                    "hidden": SHOWN,
                },
            ]
        }
    # One round trip: the post (to check the caller may see it) and the page, a range of the
    # comments' (post_id, created_at, _id) index, one more than the page to know if it ends.
    pipeline = [
        {"$match": {"_id": post_id}},
        {"$project": {"owner": 1, "owner_id": 1, "published": 1, "hidden": 1}},
        {
            "$unionWith": {
                "coll": Comment.Settings.name,
                "pipeline": [{"$match": match}, {"$sort": COMMENT_ORDER}, {"$limit": limit + 1}],
            }
        },
    ]
    rows = await Post.aggregate(pipeline).to_list()
    post = next((row for row in rows if "post_id" not in row), None)
    if post is None or not Post.row_is_visible_to(post, id_of(user)):
        raise no_such_post(post_id)
    page = [Comment.model_validate(row) for row in rows if "post_id" in row]
    if len(page) > limit:
        page = page[:limit]
        last = page[-1]
        assert last.id is not None
        following = cursors.encode(secret, scope, last.created_at, last.id)
        response.headers["X-Next-Cursor"] = following
        url = request.url.include_query_params(cursor=following)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return [CommentOut.of(comment) for comment in page]


@router.delete(
    "/comments/{comment_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={
        **UNAUTHORIZED,
        status.HTTP_403_FORBIDDEN: error(
            "Neither the comment's author nor the post's owner, or (with "
            "REQUIRE_VERIFIED_EMAIL) your email address is not verified"
        ),
        status.HTTP_404_NOT_FOUND: error("No such comment, or one on someone else's draft"),
    },
)
async def delete_comment(comment_id: IdIn, user: WritingUser) -> None:
    """Delete a comment: yours, or one on your post."""
    user_id = id_of(user)
    missing = HTTPException(
        status.HTTP_404_NOT_FOUND, f"comment with id: {comment_id} does not exist"
    )
    comment = await Comment.get(comment_id)
    post = await Post.get(comment.post_id) if comment is not None else None
    if comment is None or comment.hidden or post is None or not post.is_visible_to(user_id):
        raise missing
    if user_id not in (comment.author_id, post.owner_id):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "Not authorized to perform requested action")
    if await remove_comment(comment_id) is None:  # deleted meanwhile: the other request counted it
        raise missing


async def remove_comment(comment_id: PydanticObjectId) -> dict[str, Any] | None:
    """Delete a comment and take it off its post's count; the comment as deleted (its post,
    author and `hidden`), or None if there was none (another request deleted it, and counted
    it off). The author's, the post owner's and an admin's
    delete all come here."""
    # PyMongo: Beanie has no find_one_and_delete, and only the request that deleted the
    # comment may take it off the count, if it was counted: a hidden comment (its author
    # deactivated) was taken off when it was hidden.
    deleted = await Comment.get_pymongo_collection().find_one_and_delete(
        {"_id": comment_id}, projection={"post_id": 1, "author_id": 1, "hidden": 1}
    )
    if deleted is None:
        return None
    if not deleted.get("hidden"):
        await Post.find_one(Post.id == deleted["post_id"]).update({"$inc": {"comments": -1}})
    return dict(deleted)
