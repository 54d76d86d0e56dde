"""The outbox: every mail the service sends, written by the request that asks for it and
delivered by the sender task of whichever API process claims it (service/mail.py)."""

from datetime import datetime
from typing import ClassVar, Literal

from beanie import Document, PydanticObjectId
from pydantic import Field
from pymongo import ASCENDING, IndexModel

from service.models.base import utc_now

MailKind = Literal["password_reset", "email_verification"]
# pending: due at `due_at`; sending: claimed by a sender until `due_at` (its lease), after
# which another may claim it; sent; skipped (a reset asked for an email with no account);
# failed (MAIL_MAX_ATTEMPTS tries, or a permanent refusal).
MailStatus = Literal["pending", "sending", "sent", "skipped", "failed"]


class OutboxMessage(Document):
    kind: MailKind
    to: str  # the address, as the account has it (lower-cased)
    # The account a verification mail is for; a reset names only the email that was typed,
    # and the sender looks its account up, so the request does the same either way.
    user_id: PydanticObjectId | None = None
    status: MailStatus = "pending"
    due_at: datetime = Field(default_factory=utc_now)
    attempts: int = 0
    created_at: datetime = Field(default_factory=utc_now)
    # The sender that holds it (while `sending`): each of its updates is made under this id.
    claim: str | None = None
    # The mail itself is never stored (it carries a token); the subject is, once it is sent.
    subject: str | None = None
    sent_at: datetime | None = None
    last_error: str | None = None
    # Set when the message is done with (sent or skipped): the TTL index deletes it then.
    expires_at: datetime | None = None

    class Settings:
        name = "outbox"
        indexes: ClassVar[list[IndexModel]] = [
            # A sender claims the message due first: pending ones, and sending ones whose
            # lease has run out.
            IndexModel([("status", ASCENDING), ("due_at", ASCENDING)]),
            IndexModel([("expires_at", ASCENDING)], expireAfterSeconds=0),
        ]
