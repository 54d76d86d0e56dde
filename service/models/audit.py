"""The audit log: one document for each admin action, written by service/audit.py."""

from datetime import datetime
from typing import ClassVar, Literal

from beanie import Document, PydanticObjectId
from pydantic import BaseModel, Field
from pymongo import DESCENDING, IndexModel

from service.models.base import utc_now

AuditAction = Literal[
    "deactivate_user", "activate_user", "set_role", "delete_post", "delete_comment", "create_user"
]
TargetKind = Literal["user", "post", "comment"]
# pending: written before the action, which has not ended (or its process stopped in it);
# done: made; refused: not made, `detail` says why (the answer's detail).
AuditOutcome = Literal["pending", "done", "refused"]


class AuditEntry(Document):
    created_at: datetime = Field(default_factory=utc_now)
    # Who: an admin, by the API; or whoever ran `social-api` on the database (no actor).
    via: Literal["api", "cli"]
    actor_id: PydanticObjectId | None = None
    actor_email: str | None = None
    action: AuditAction
    target_kind: TargetKind
    target_id: PydanticObjectId
    reason: str | None = None
    outcome: AuditOutcome = "pending"
    detail: str | None = None

    class Settings:
        name = "audit"
        indexes: ClassVar[list[IndexModel]] = [
            # The log newest first, paged by cursor.
            IndexModel([("created_at", DESCENDING), ("_id", DESCENDING)]),
        ]


class AuditActor(BaseModel):
    id: PydanticObjectId
    email: str


class AuditTarget(BaseModel):
    kind: TargetKind
    id: PydanticObjectId


class AuditOut(BaseModel):
    """One entry of the audit log, as `GET /admin/audit` answers it."""

    id: PydanticObjectId
    created_at: datetime
    via: Literal["api", "cli"] = Field(description="`api`: an admin's request; `cli`: social-api")
    actor: AuditActor | None = Field(description="The admin who acted; null for the CLI")
    action: AuditAction
    target: AuditTarget
    reason: str | None
    outcome: AuditOutcome
    detail: str | None = Field(description="What changed, or why the action was refused")

    @classmethod
    def of(cls, entry: AuditEntry) -> "AuditOut":
        assert entry.id is not None
        actor = None
        if entry.actor_id is not None:
            actor = AuditActor(id=entry.actor_id, email=entry.actor_email or "")
        return cls(
            id=entry.id,
            created_at=entry.created_at,
            via=entry.via,
            actor=actor,
            action=entry.action,
            target=AuditTarget(kind=entry.target_kind, id=entry.target_id),
            reason=entry.reason,
            outcome=entry.outcome,
            detail=entry.detail,
        )
