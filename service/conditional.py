"""Conditional requests on posts (RFC 9110, section 13): entity tags, If-None-Match, If-Match.

A post's entity tag is a digest of what `PUT` replaces, its title, content and published
flag (and its id), so it changes exactly when the post is edited. Its vote and comment counts
are not in it: they are tallies that every reader's vote moves, and an editor's `If-Match`
must not fail because someone voted. So a 304 says that the post's text and published flag
are as the client has them, not that its counts are.
"""

import hashlib
import json
import re
from typing import Any

from fastapi import HTTPException, status

HEADER_MAX = 2048
# If-Match and If-None-Match as the schema (and so the request's validation, 422) has them:
# `*`, or entity tags in double quotes (RFC 9110's etagc, ASCII), separated by commas.
HEADER_PATTERN = r'^\s*(\*|(W/)?"[!#-~]*"(\s*,\s*(W/)?"[!#-~]*")*)\s*$'
_TAG = re.compile(r'(W/)?"([!#-~]*)"')


def post_etag(post_id: Any, title: str, content: str, published: bool) -> str:
    """The strong entity tag of a post's editable state."""
    state = json.dumps([str(post_id), title, content, published], ensure_ascii=False)
    return '"' + hashlib.sha256(state.encode()).hexdigest()[:32] + '"'


def _tags(header: str) -> list[tuple[bool, str]] | None:
    """The (weak, opaque) tags of a header that matched HEADER_PATTERN; None for `*`."""
    if header.strip() == "*":
        return None
    return [(weak == "W/", opaque) for weak, opaque in _TAG.findall(header)]


def none_match(header: str, etag: str) -> bool:
    """Whether If-None-Match holds a tag of this representation (weak comparison)."""
    tags = _tags(header)
    return tags is None or any(f'"{opaque}"' == etag for _, opaque in tags)


def if_match(header: str | None, etag: str) -> None:
    """A 412 unless If-Match (when given) holds this tag (strong comparison: a weak tag never
    matches)."""
    if header is None:
        return
    tags = _tags(header)
    if tags is not None and not any(not weak and f'"{opaque}"' == etag for weak, opaque in tags):
        raise stale()


def stale() -> HTTPException:
    return HTTPException(
        status.HTTP_412_PRECONDITION_FAILED,
        "Precondition failed: the post changed since you read it (If-Match)",
    )
