"""Posts: the feed, one post, and create, replace and delete for their owner."""

import hashlib
from typing import Annotated, Any

from beanie import PydanticObjectId
from fastapi import Header, HTTPException, Query, Request, Response, status
from fastapi.exceptions import RequestValidationError
from pymongo.results import UpdateResult

from service import conditional, cursors
from service.cursors import INVALID_CURSOR
from service.deps import (
    CurrentUser,
    OwnedPostDep,
    SettingsDep,
    VisiblePostDep,
    WritingUser,
    cursor_secret,
    no_such_post,
)
from service.models import Comment, Post, PostCreate, PostOut, PostPublic, PostUpdate, Vote, id_of
from service.models.base import new_id
from service.models.post import SHOWN, PostOwner
from service.routing import NEXT_PAGE_HEADERS, CollectionRouter, Responses, error
from service.tallies import count_posts

router = CollectionRouter(prefix="/posts", tags=["Posts"])

# A bound on skip so that absurd values are a 422, not a driver error: the largest 32-bit
# integer, which every store takes as a plain int (2 billion posts; past the last post a
# page is simply empty).
MAX_SKIP = 2**31 - 1

UNAUTHORIZED: Responses = {status.HTTP_401_UNAUTHORIZED: error("Missing or invalid token")}
NOT_FOUND: Responses = {status.HTTP_404_NOT_FOUND: error("No such post, or someone else's draft")}
FORBIDDEN: Responses = {
    status.HTTP_403_FORBIDDEN: error(
        "The post belongs to someone else, or (with REQUIRE_VERIFIED_EMAIL) your email "
        "address is not verified"
    )
}
UNVERIFIED: Responses = {
    status.HTTP_403_FORBIDDEN: error("Email address not verified (REQUIRE_VERIFIED_EMAIL)")
}


TOTAL_COUNT_HEADER: Responses = {
    status.HTTP_200_OK: {
        "headers": {
            "X-Total-Count": {
                "description": "How many posts match, before limit and skip",
                "schema": {"type": "integer"},
            },
            **NEXT_PAGE_HEADERS,
        }
    }
}
CURSOR_REFUSED: Responses = {status.HTTP_400_BAD_REQUEST: error(INVALID_CURSOR)}


@router.get("/", responses={**TOTAL_COUNT_HEADER, **UNAUTHORIZED, **CURSOR_REFUSED})
async def read_posts(
    user: CurrentUser,
    settings: SettingsDep,
    request: Request,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=100, description="Page size")] = 10,
    skip: Annotated[
        int, Query(ge=0, le=MAX_SKIP, description="Posts to skip (not with `cursor`)")
    ] = 0,
    search: Annotated[
        str, Query(max_length=300, description="Literal, case-insensitive text in title or content")
    ] = "",
    cursor: Annotated[
        str | None,
        Query(
            max_length=cursors.CURSOR_MAX,
            description="From `X-Next-Cursor` of a page (of the same search): the next page",
        ),
    ] = None,
) -> list[PostOut]:
    """Newest posts first, with their counts; X-Total-Count says how many match, and `Link`
    (or `X-Next-Cursor`) leads to the next page."""
    viewer = id_of(user)
    # A cursor belongs to its viewer's feed and its search: elsewhere it is refused.
    scope = f"feed:{viewer}:{hashlib.sha256(search.encode(errors='surrogatepass')).hexdigest()}"
    secret = cursor_secret(settings)
    after = None
    if cursor is not None:
        if "skip" in request.query_params:
            raise RequestValidationError(
                [
                    {
                        "type": "value_error",
                        "loc": ("query", "skip"),
                        "msg": "skip cannot be combined with cursor",
                        "input": request.query_params["skip"],
                    }
                ]
            )
        try:
            created_at, post_id = cursors.decode(secret, scope, cursor)
        except cursors.InvalidCursor:
            raise HTTPException(status.HTTP_400_BAD_REQUEST, INVALID_CURSOR) from None
        after = (created_at, PydanticObjectId(post_id))
    total, posts, after_page = await Post.read_feed(
        viewer, user.drafts, search=search, skip=skip, limit=limit, after=after
    )
    response.headers["X-Total-Count"] = str(total)
    if after_page is not None:
        following = cursors.encode(secret, scope, *after_page)
        response.headers["X-Next-Cursor"] = following
        url = request.url.remove_query_params("skip").include_query_params(cursor=following)
        response.headers["Link"] = f'<{url}>; rel="next"'
    return posts


IfMatch = Annotated[
    str | None,
    Header(
        description="The post's `ETag` as read: the change is made only if it still is (412)",
        max_length=conditional.HEADER_MAX,
        pattern=conditional.HEADER_PATTERN,
    ),
]
ETAG_HEADER = {
    "ETag": {
        "description": "The version of the post's title, content and published flag",
        "schema": {"type": "string"},
    }
}
STALE: Responses = {
    status.HTTP_412_PRECONDITION_FAILED: error("The post changed since it was read (If-Match)")
}


@router.get(
    "/{post_id}",
    response_model=PostOut,
    responses={
        status.HTTP_200_OK: {"headers": ETAG_HEADER},
        status.HTTP_304_NOT_MODIFIED: {
            "description": "The post's ETag is one of If-None-Match's",
            "headers": ETAG_HEADER,
        },
        **UNAUTHORIZED,
        **NOT_FOUND,
    },
)
async def read_post(
    post: VisiblePostDep,
    response: Response,
    if_none_match: Annotated[
        str | None,
        Header(
            description="ETags the client has: 304 if the post's is one of them",
            max_length=conditional.HEADER_MAX,
            pattern=conditional.HEADER_PATTERN,
        ),
    ] = None,
) -> PostOut | Response:
    """One post with its vote and comment counts, and its `ETag`."""
    fields = post.post
    etag = conditional.post_etag(fields.id, fields.title, fields.content, fields.published)
    if if_none_match is not None and conditional.none_match(if_none_match, etag):
        return Response(status_code=status.HTTP_304_NOT_MODIFIED, headers={"ETag": etag})
    response.headers["ETag"] = etag
    return post


@router.post("/", status_code=status.HTTP_201_CREATED, responses={**UNAUTHORIZED, **UNVERIFIED})
async def create_post(post_in: PostCreate, user: WritingUser) -> PostPublic:
    """Write a post; `published: false` keeps it a draft only you can see."""
    owner = PostOwner(email=user.email, created_at=user.created_at)
    post = Post(**post_in.model_dump(), owner_id=id_of(user), owner=owner)
    post.id = new_id()
    await post.insert()
    await count_posts(post.owner_id, published=post.published, delta=1)
    return PostPublic.of(post)


def _etag(post: Post) -> str:
    return conditional.post_etag(post.id, post.title, post.content, post.published)


async def _replaced(post: Post, changes: dict[str, Any], *, whole: bool) -> bool:
    """Whether `changes` were written: only while the post's `published` is as read, or with
    `whole`, its title, content and published flag (what its ETag versions)."""
    # Not hidden either: the owner was deactivated since the post was read.
    match: dict[str, Any] = {"_id": post.id, "published": post.published, "hidden": SHOWN}
    if whole:
        match |= {"title": post.title, "content": post.content}
    result = await Post.find_one(match).update({"$set": changes})
    return isinstance(result, UpdateResult) and result.matched_count > 0


@router.put(
    "/{post_id}",
    responses={
        status.HTTP_200_OK: {"headers": ETAG_HEADER},
        **UNAUTHORIZED,
        **FORBIDDEN,
        **NOT_FOUND,
        **STALE,
    },
)
async def update_post(
    post: OwnedPostDep, post_in: PostUpdate, response: Response, if_match: IfMatch = None
) -> PostPublic:
    """Replace your post's title, content and published flag; with If-Match, only if it is
    still the version you read (412 otherwise)."""
    conditional.if_match(if_match, _etag(post))
    changes = post_in.model_dump()
    # Written only if `published` is still what was read, so that of two simultaneous changes
    # of it each moves the tallies by what it actually changed; with If-Match, only if the
    # whole version is, so that of two editors with one ETag exactly one wins.
    while not await _replaced(post, changes, whole=if_match is not None):
        again = await Post.get(post.id)
        if again is None or again.hidden:
            raise no_such_post(post.id)
        if if_match is not None:
            raise conditional.stale()
        post = again
    if post.published != post_in.published:
        await count_posts(post.owner_id, published=post.published, delta=-1)
        await count_posts(post.owner_id, published=post_in.published, delta=1)
    updated = post.model_copy(update=changes)
    response.headers["ETag"] = _etag(updated)
    return PostPublic.of(updated)


@router.delete(
    "/{post_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**UNAUTHORIZED, **FORBIDDEN, **NOT_FOUND, **STALE},
)
async def delete_post(post: OwnedPostDep, if_match: IfMatch = None) -> None:
    """Delete your post, and the votes and comments on it; with If-Match, only if it is
    still the version you read (412 otherwise)."""
    conditional.if_match(if_match, _etag(post))
    match: dict[str, Any] = {"_id": post.id}
    if if_match is not None:
        match |= {"title": post.title, "content": post.content, "published": post.published}
    if await remove_post(match) is None:  # deleted since it was read, or
        if if_match is not None and await Post.get(post.id) is not None:  # edited meanwhile
            raise conditional.stale()
        raise no_such_post(post.id)


async def remove_post(match: dict[str, Any]) -> dict[str, Any] | None:
    """Delete the post `match` finds, with the votes and comments on it, and take it off the
    feed's tallies; the post as deleted (its owner, title and flags), or None if there was
    none (another request deleted it, and counted it off).

    The owner's delete and an admin's both come here, so both cascade and count alike."""
    # PyMongo: Beanie has no find_one_and_delete, and the count to move depends on the post
    # as deleted: a draft is counted on its owner; a published post is in the published
    # count unless it is hidden (its owner deactivated, which took it off already).
    deleted = await Post.get_pymongo_collection().find_one_and_delete(
        match, projection={"published": 1, "hidden": 1, "owner_id": 1, "title": 1}
    )
    if deleted is None:
        return None
    if not (deleted["published"] and deleted.get("hidden")):
        await count_posts(deleted["owner_id"], published=deleted["published"], delta=-1)
    await Vote.find(Vote.post_id == deleted["_id"]).delete()
    await Comment.find(Comment.post_id == deleted["_id"]).delete()
    return dict(deleted)
