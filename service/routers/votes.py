"""Votes: add or take back your vote on a post."""

from fastapi import HTTPException, status
from pymongo.errors import DuplicateKeyError

from service.deps import CurrentUser
from service.models import Message, Post, Vote, VoteCreate, id_of
from service.routing import CollectionRouter, error

router = CollectionRouter(prefix="/vote", tags=["Vote"])


@router.post(
    "/",
    status_code=status.HTTP_201_CREATED,
    responses={
        status.HTTP_401_UNAUTHORIZED: error("Missing or invalid token"),
        status.HTTP_404_NOT_FOUND: error("No such post, or no vote to take back"),
        status.HTTP_409_CONFLICT: error("Already voted on this post"),
    },
)
async def vote(vote_in: VoteCreate, user: CurrentUser) -> Message:
    """`dir: 1` votes for a post, `dir: 0` takes the vote back."""
    user_id = id_of(user)
    post = await Post.get(vote_in.post_id)
    if post is None or not post.is_visible_to(user_id):
        raise HTTPException(
            status.HTTP_404_NOT_FOUND, f"Post with id: {vote_in.post_id} does not exist"
        )
    if vote_in.dir == 1:
        try:
            await Vote(post_id=vote_in.post_id, user_id=user_id).insert()
        except DuplicateKeyError:
            # The unique (post_id, user_id) index decides between simultaneous votes.
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                f"user {user_id} has already voted on post {vote_in.post_id}",
            ) from None
        return Message(message="successfully added vote")
    deleted = await Vote.find_one(Vote.post_id == vote_in.post_id, Vote.user_id == user_id).delete()
    if deleted is None or deleted.deleted_count == 0:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Vote does not exist")
    return Message(message="successfully deleted vote")
