"""Outgoing mail, through an outbox in MongoDB.

A request that sends mail writes one `outbox` document and returns: what the mail says, and
the token it carries, are made later by a sender. Each API process runs one sender task. It
claims the message due first with one atomic update (findAndModify), which also moves the
message's `due_at` a lease ahead and counts the attempt, so of N processes one gets each
message; a process that dies holding one leaves it to be claimed again once the lease has
run out. The sender then prepares the mail if it is not yet prepared (service/recovery.py
makes the token and the text), and delivers it: over SMTP with aiosmtplib, or, on the
embedded development store without SMTP_HOST, as an .eml file under DATA_DIR/outbox/ with
a log line that gives its link.

A delivery the server could not take (it is down, or answers 4xx) is tried again after
MAIL_RETRY_SECONDS, doubling each time up to an hour; after MAIL_MAX_ATTEMPTS tries, or at
once on a permanent refusal (5xx), the message is marked failed and logged, and stays in the
outbox until `social-api outbox --retry` queues it again. A sent message loses its text (and
so its token) and is deleted by a TTL index a week later.

Every update after the claim is made only while the message is still this sender's (its
status and attempt count as claimed): if the lease ran out and another sender took it, the
late one changes nothing. Delivery is at least once: a process that dies after the SMTP
server took a message but before recording it leaves it to be sent again.
"""

import asyncio
import contextlib
import html
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
from beanie import PydanticObjectId
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import PyMongoError

from service.config import Settings, private_dir
from service.models import OutboxMessage, id_of
from service.models.base import new_id, utc_now
from service.models.outbox import MailKind

logger = logging.getLogger(__name__)

# How long a claimed message is its sender's: well past an SMTP exchange's timeout.
LEASE_MARGIN = timedelta(seconds=60)
# A sent or skipped message is kept this long (for `social-api outbox` and mongosh), then
# deleted by the outbox's TTL index.
RETENTION = timedelta(days=7)
MAX_RETRY_PAUSE_S = 3600.0
# A prepared mail whose token expires sooner than this is prepared again before it is sent.
FRESH_ENOUGH = timedelta(minutes=5)
OUTBOX_DIR = "outbox"


@dataclass(frozen=True, slots=True)
class Mail:
    """A prepared mail: its subject, its two parts, the link it carries and until when."""

    subject: str
    text: str
    html: str
    link: str
    token_expires_at: datetime


# Makes the mail a message asks for (and its token), or None when there is nothing to send
# (a reset asked for an email that has no account).
Preparer = Callable[[OutboxMessage, Settings], Awaitable[Mail | None]]


class TemporaryFailure(Exception):
    """The server could not take the message now: try again later."""


class PermanentFailure(Exception):
    """The server refused the message for good (a 5xx answer)."""


def page(title: str, paragraphs: list[str], link: str, action: str) -> str:
    """A mail's HTML part: the paragraphs (plain text, escaped here) and a button to `link`."""
    body = "".join(f"<p>{html.escape(paragraph)}</p>" for paragraph in paragraphs)
    href = html.escape(link, quote=True)
    return (
        '<!DOCTYPE html><html><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head>"
        '<body style="font-family: sans-serif; line-height: 1.5">'
        f"<h1>{html.escape(title)}</h1>{body}"
        f'<p><a href="{href}">{html.escape(action)}</a></p>'
        f"<p>Or open this address: {html.escape(link)}</p></body></html>"
    )


def build_message(settings: Settings, to: str, mail: Mail) -> EmailMessage:
    """The MIME message: a plain-text part and an HTML alternative."""
    message = EmailMessage()
    message["From"] = settings.mail_from
    message["To"] = to
    message["Subject"] = mail.subject
    message["Date"] = format_datetime(utc_now())
    domain = parseaddr(settings.mail_from)[1].rpartition("@")[2] or "localhost"
    message["Message-ID"] = make_msgid(domain=domain)
    message.set_content(mail.text)
    message.add_alternative(mail.html, subtype="html")
    return message


class Sender:
    """The outbox's sender of one API process."""

    def __init__(self, settings: Settings, preparers: Mapping[str, Preparer]) -> None:
        self.settings = settings
        self.preparers = preparers
        # Set when this process queues a message, so that it goes at once rather than at the
        # next poll; the outbox in MongoDB is what every process reads.
        self.wake = asyncio.Event()

    async def queue(
        self, kind: MailKind, to: str, *, user_id: PydanticObjectId | None = None
    ) -> None:
        """Write a message to the outbox, due now, and wake this sender for it."""
        await OutboxMessage(id=new_id(), kind=kind, to=to, user_id=user_id).insert()
        self.wake.set()

    async def run(self, ready: asyncio.Event) -> None:
        """Deliver what is due, then wait for a message or the next poll; until cancelled."""
        await ready.wait()  # the collections and Beanie are initialised
        while True:
            try:
                while await self.send_next():
                    pass
            except PyMongoError as error:
                logger.warning("The outbox could not be read, trying again shortly: %r", error)
            except Exception:
                logger.exception("The outbox's sender failed, trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.settings.mail_poll_seconds)
            self.wake.clear()

    async def send_next(self) -> bool:
        """Claim the message due first and deal with it; False if none is due."""
        message = await self.claim()
        if message is None:
            return False
        await self.process(message)
        return True

    async def claim(self) -> OutboxMessage | None:
        now = utc_now()
        lease = now + timedelta(seconds=self.settings.smtp_timeout_seconds) + LEASE_MARGIN
        # A pending message due, else one whose sender's lease ran out: each one status, so
        # that the (status, due_at) index answers both, filter and sort.
        for status in ("pending", "sending"):
            # PyMongo: Beanie's find_one().update() has no sort, and the claim takes the
            # message due first.
            row = await OutboxMessage.get_pymongo_collection().find_one_and_update(
                {"status": status, "due_at": {"$lte": now}},
                {"$set": {"status": "sending", "due_at": lease}, "$inc": {"attempts": 1}},
                sort=[("due_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if row is not None:
                claimed: OutboxMessage = OutboxMessage.model_validate(row)
                return claimed
        return None

    async def process(self, message: OutboxMessage) -> None:
        try:
            mail = await self.prepared(message)
            if mail is None:
                await self.finish(message, status="skipped", last_error="no such account")
                return
            await self.deliver(message, mail)
        except TemporaryFailure as error:
            await self.failed(message, str(error), permanent=False)
        except PermanentFailure as error:
            await self.failed(message, str(error), permanent=True)
        except PyMongoError:
            raise  # the outbox itself is out of reach: the claim's lease brings it back
        except Exception as error:
            # A fault of ours (in preparing it, say): counted as an attempt like any other, so
            # that one message cannot hold the outbox up for ever.
            logger.exception("Mail %s (%s) could not be sent", message.id, message.kind)
            await self.failed(message, repr(error), permanent=False)
        else:
            await self.finish(message, status="sent", sent_at=utc_now())

    async def prepared(self, message: OutboxMessage) -> Mail | None:
        """The message's mail: as prepared before, or prepared now (a fresh token)."""
        if (
            message.subject is not None
            and message.text is not None
            and message.html is not None
            and message.link is not None
            and message.token_expires_at is not None
            and message.token_expires_at > utc_now() + FRESH_ENOUGH
        ):
            return Mail(
                message.subject,
                message.text,
                message.html,
                message.link,
                message.token_expires_at,
            )
        mail = await self.preparers[message.kind](message, self.settings)
        if mail is not None:
            # Kept for the retries: each one sends this same mail, and its token stays valid.
            await self.update(
                message,
                {
                    "subject": mail.subject,
                    "text": mail.text,
                    "html": mail.html,
                    "link": mail.link,
                    "token_expires_at": mail.token_expires_at,
                },
            )
        return mail

    async def deliver(self, message: OutboxMessage, mail: Mail) -> None:
        email = build_message(self.settings, message.to, mail)
        if self.settings.mail_to_files:
            path = await asyncio.to_thread(self.write_file, id_of(message), email)
            logger.info(
                "Mail to %s, %r: %s (saved as %s)", message.to, mail.subject, mail.link, path
            )
            return
        await self.send_smtp(email)

    def write_file(self, message_id: PydanticObjectId, email: EmailMessage) -> Path:
        directory = private_dir(self.settings.data_dir / OUTBOX_DIR)
        path = directory / f"{message_id}.eml"
        partial = directory / f".{message_id}.{os.getpid()}.part"
        partial.write_bytes(email.as_bytes())
        partial.replace(path)
        return path.resolve()

    async def send_smtp(self, email: EmailMessage) -> None:
        settings = self.settings
        password = settings.smtp_password.get_secret_value() if settings.smtp_password else None
        try:
            await aiosmtplib.send(
                email,
                hostname=settings.smtp_host,
                port=settings.smtp_port,
                username=settings.smtp_username,
                password=password,
                use_tls=settings.smtp_security == "tls",
                start_tls=settings.smtp_security == "starttls",
                timeout=settings.smtp_timeout_seconds,
            )
        except aiosmtplib.SMTPRecipientsRefused as error:
            codes = [refused.code for refused in error.recipients]
            failure = PermanentFailure if all(code >= 500 for code in codes) else TemporaryFailure
            raise failure(f"recipient refused: {error.recipients[0]}") from None
        except aiosmtplib.SMTPAuthenticationError as error:
            # The settings are wrong, not the message: it waits for them to be put right.
            raise TemporaryFailure(f"SMTP authentication failed: {error}") from None
        except aiosmtplib.SMTPResponseException as error:
            failure = PermanentFailure if error.code >= 500 else TemporaryFailure
            raise failure(f"SMTP server answered {error.code}: {error.message}") from None
        except (aiosmtplib.SMTPException, OSError) as error:
            raise TemporaryFailure(f"SMTP server unreachable: {error!r}") from None

    async def failed(self, message: OutboxMessage, reason: str, *, permanent: bool) -> None:
        if permanent or message.attempts >= self.settings.mail_max_attempts:
            logger.error(
                "Mail %s (%s) to %s failed after %d attempts: %s",
                message.id,
                message.kind,
                message.to,
                message.attempts,
                reason,
            )
            await self.update(message, {"status": "failed", "last_error": reason})
            return
        pause = min(
            self.settings.mail_retry_seconds * 2 ** (message.attempts - 1), MAX_RETRY_PAUSE_S
        )
        logger.warning(
            "Mail %s to %s not delivered (attempt %d), trying again in %.0f s: %s",
            message.id,
            message.to,
            message.attempts,
            pause,
            reason,
        )
        due = utc_now() + timedelta(seconds=pause)
        await self.update(message, {"status": "pending", "due_at": due, "last_error": reason})

    async def finish(self, message: OutboxMessage, *, status: str, **fields: Any) -> None:
        """Done with: the text and its token go, and the TTL index deletes the rest later."""
        gone = {"text": None, "html": None, "link": None}
        await self.update(
            message, {"status": status, "expires_at": utc_now() + RETENTION, **gone, **fields}
        )

    async def update(self, message: OutboxMessage, fields: dict[str, Any]) -> None:
        """Change the message while it is still this sender's claim."""
        await OutboxMessage.find_one(
            {"_id": message.id, "status": "sending", "attempts": message.attempts}
        ).update({"$set": fields})
