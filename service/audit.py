"""The audit log's writer: one `audit` document, and one log line, for each admin action.

The document is written before the action, `pending`, and closed after it, `done` or
`refused` (with why): an action is never made without its record, and a process that stops
in the middle of one leaves it `pending`, which says to look. Nothing in the API updates or
deletes a closed entry; the only routes on the log read it.
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from beanie import PydanticObjectId
from fastapi import HTTPException

from service.models import AuditEntry, User, id_of
from service.models.audit import AuditAction, AuditOutcome, TargetKind
from service.models.base import new_id
from service.moderation import Refused

logger = logging.getLogger(__name__)


@asynccontextmanager
async def audited(
    action: AuditAction,
    target_kind: TargetKind,
    target_id: PydanticObjectId,
    *,
    actor: User | None,
    reason: str | None,
) -> AsyncIterator[AuditEntry]:
    """Record the action of the block: `actor` (None: the CLI) does `action` to the target.

    The block may set the entry's `detail` (what changed). An HTTPException or a Refused
    raised in it refuses the action, with its message as the detail.
    """
    entry = AuditEntry(
        via="cli" if actor is None else "api",
        actor_id=None if actor is None else id_of(actor),
        actor_email=None if actor is None else actor.email,
        action=action,
        target_kind=target_kind,
        target_id=target_id,
        reason=reason,
    )
    entry.id = new_id()
    await entry.insert()
    try:
        yield entry
    except HTTPException as refused:
        await _close(entry, "refused", str(refused.detail))
        raise
    except Refused as refused:
        await _close(entry, "refused", str(refused))
        raise
    await _close(entry, "done", entry.detail)


async def _close(entry: AuditEntry, outcome: AuditOutcome, detail: str | None) -> None:
    entry.outcome, entry.detail = outcome, detail
    await AuditEntry.get_pymongo_collection().update_one(
        {"_id": entry.id}, {"$set": {"outcome": outcome, "detail": detail}}
    )
    logger.info(
        "Admin action %s %s on %s %s by %s%s%s",
        entry.action,
        outcome,
        entry.target_kind,
        entry.target_id,
        entry.actor_email or "the CLI",
        f": {detail}" if detail else "",
        f" (reason: {entry.reason!r})" if entry.reason else "",
        extra={
            "audit_id": str(entry.id),
            "action": entry.action,
            "outcome": outcome,
            "target": f"{entry.target_kind}:{entry.target_id}",
            "actor": str(entry.actor_id) if entry.actor_id else "cli",
        },
    )
