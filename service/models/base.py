"""What the documents share."""

from datetime import UTC, datetime

from beanie import Document, PydanticObjectId


def utc_now() -> datetime:
    """The current time in UTC, cut to the millisecond that a BSON date can hold.

    Cutting here keeps the `created_at` a create returns equal to the one every later read
    returns from MongoDB.
    """
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def id_of(document: Document) -> PydanticObjectId:
    """A stored document's id; Beanie types `id` optional for documents not inserted yet."""
    if document.id is None:
        raise ValueError(f"this {type(document).__name__} has not been saved")
    return document.id
