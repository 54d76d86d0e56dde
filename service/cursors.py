"""Opaque page cursors: where the next page starts, signed so that a client can neither
forge one nor carry one over to another list.

A cursor names the last item of a page by its sort key, `(created_at, _id)`, so that the
next page is a range read on the list's own index, after that item: its cost does not depend
on its depth, and items written or deleted while a client pages neither repeat nor drop one
that existed throughout. It is the key and an HMAC-SHA256 (keyed from SECRET_KEY) of the key
and the list it belongs to (`scope`: a post's comments, a viewer's feed and its search), in
URL-safe base64: nothing is kept on the server, so every API process reads every cursor.
"""

import base64
import binascii
import hashlib
import hmac
import json
from datetime import UTC, datetime

from bson import ObjectId

CURSOR_MAX = 200  # ours are about 70 characters
INVALID_CURSOR = "Invalid cursor"  # the 400's detail
SIGNATURE_BYTES = 16


class InvalidCursor(ValueError):
    """Malformed, tampered with, or from another list."""


def _key(secret: str) -> bytes:
    return hashlib.sha256(f"social-api cursor key:{secret}".encode()).digest()


def _signature(secret: str, scope: str, body: bytes) -> bytes:
    message = scope.encode() + b"\x00" + body
    return hmac.new(_key(secret), message, hashlib.sha256).digest()[:SIGNATURE_BYTES]


def encode(secret: str, scope: str, created_at: datetime, item_id: ObjectId) -> str:
    """The cursor of the page after the item with this sort key, in the list `scope`."""
    millis = int(created_at.timestamp() * 1000)
    body = json.dumps([millis, str(item_id)], separators=(",", ":")).encode()
    token = body + _signature(secret, scope, body)
    return base64.urlsafe_b64encode(token).decode().rstrip("=")


def decode(secret: str, scope: str, cursor: str) -> tuple[datetime, ObjectId]:
    """The sort key a cursor of the list `scope` names, or InvalidCursor."""
    if len(cursor) > CURSOR_MAX:
        raise InvalidCursor
    try:
        token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCursor from None
    body, signature = token[:-SIGNATURE_BYTES], token[-SIGNATURE_BYTES:]
    if not body or not hmac.compare_digest(signature, _signature(secret, scope, body)):
        raise InvalidCursor
    # Signed by this service, for this list: what follows only fails for a key of its own
    # making, but a cursor is input, and is read as such.
    try:
        millis, item_id = json.loads(body)
        return datetime.fromtimestamp(millis / 1000, UTC), ObjectId(item_id)
    except (ValueError, TypeError, OverflowError, OSError):
        raise InvalidCursor from None
