"""Outgoing mail, through an outbox in MongoDB.

A request that sends mail writes one `outbox` document and returns: what the mail says, and
the token it carries, are made later by a sender. Each API process runs one sender task. It
claims the message due first with one atomic update (findAndModify) that marks it with a
claim id of its own, moves its `due_at` a lease ahead and counts the attempt, so of N
processes one gets each message; a process that dies holding one leaves it to be claimed
again once the lease has run out. The sender then prepares the mail (service/recovery.py
makes a new token, which replaces the one before, and the text) and delivers it: over SMTP
with aiosmtplib, or, on the embedded development store without SMTP_HOST, as an .eml file
under DATA_DIR/outbox/ with a log line that gives its link. Preparing and delivering are
cut off well within the lease, and every later update of the message is made only under
the sender's claim id, so a sender never works on a message another has taken over.

The mail itself is never stored: each attempt prepares it anew, with a new token, so the
outbox holds no usable token at any time, and a retry never sends a link that has since
stopped working.

A delivery the server could not take (it is down, or answers 4xx) is tried again after
MAIL_RETRY_SECONDS, doubling each time up to an hour; after MAIL_MAX_ATTEMPTS tries, or at
once on a permanent refusal (5xx), the message is marked failed and logged, and stays in the
outbox until `social-api outbox --retry` queues it again. While the server is unreachable,
the process's sender claims nothing else until that pause is over, so one outage does not
spend every queued message's attempts. A sent message is deleted by a TTL index a week later.

Delivery is at least once: a process that dies after the SMTP server took a message but
before recording it leaves it to be sent again. At shutdown the sender finishes the message
in hand (for a few seconds at most), or gives it back.
"""

import asyncio
import contextlib
import html
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
from beanie import PydanticObjectId
from pydantic import ValidationError
from pymongo import ASCENDING, ReturnDocument
from pymongo.errors import PyMongoError
from pymongo.results import UpdateResult

from service.config import Settings, private_dir
from service.models import OutboxMessage, id_of
from service.models.base import new_id, utc_now
from service.models.outbox import MailKind

logger = logging.getLogger(__name__)

# How long preparing a mail may take (its commands, each bounded by MONGODB_TIMEOUT_MS),
# besides SMTP_TIMEOUT_SECONDS for the SMTP exchange; then a margin before the lease ends.
PREPARE_BUDGET = timedelta(seconds=30)
LEASE_MARGIN = timedelta(seconds=30)
# A sent or skipped message is kept this long (for `social-api outbox` and mongosh), then
# deleted by the outbox's TTL index.
RETENTION = timedelta(days=7)
MAX_RETRY_PAUSE_S = 3600.0
# At shutdown, how long the message in hand may take before it is given back.
SHUTDOWN_GRACE_S = 5.0
OUTBOX_DIR = "outbox"


@dataclass(frozen=True, slots=True)
class Mail:
    """A prepared mail: its subject, its two parts, and the link it carries."""

    subject: str
    text: str
    html: str
    link: str


# Makes the mail a message asks for (and its token), or None when there is nothing to send
# (a reset asked for an email that has no account).
Preparer = Callable[[OutboxMessage, Settings], Awaitable[Mail | None]]


class TemporaryFailure(Exception):
    """The server could not take the message now: try again later."""


class ServerUnreachable(TemporaryFailure):
    """No SMTP exchange at all: the server is down or out of reach, for every message."""


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
        self.stopping = False
        # While the SMTP server is unreachable, no claim before `down_until` (monotonic): a
        # pause of this process's own, which doubles while the outage lasts.
        self.down_until = 0.0
        self.down_pause = 0.0
        self.budget = PREPARE_BUDGET + timedelta(seconds=settings.smtp_timeout_seconds)

    def describe(self) -> str:
        """Where the mail goes, for the start-up log."""
        settings = self.settings
        if settings.mail_to_files:
            return f"as .eml files in {(settings.data_dir / OUTBOX_DIR).resolve()}"
        return f"over SMTP to {settings.smtp_host}:{settings.smtp_port} ({settings.smtp_security})"

    async def queue(
        self, kind: MailKind, to: str, *, user_id: PydanticObjectId | None = None
    ) -> None:
        """Write a message to the outbox, due now, and wake this sender for it."""
        await OutboxMessage(id=new_id(), kind=kind, to=to, user_id=user_id).insert()
        self.wake.set()

    async def run(self, ready: asyncio.Event) -> None:
        """Deliver what is due, then wait for a message or the next poll; until stopped."""
        await ready.wait()  # the collections and Beanie are initialised
        while not self.stopping:
            try:
                while not self.stopping and not self.paused() and await self.send_next():
                    pass
            except PyMongoError as error:
                logger.warning("The outbox could not be read, trying again shortly: %r", error)
            except Exception:
                logger.exception("The outbox's sender failed, trying again shortly")
            pause = self.settings.mail_poll_seconds
            if self.paused():
                pause = min(pause, self.down_until - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), pause)
            self.wake.clear()

    def paused(self) -> bool:
        return time.monotonic() < self.down_until

    async def close(self, task: "asyncio.Task[None]", grace: float = SHUTDOWN_GRACE_S) -> None:
        """Stop `task` (this sender's `run`): the message in hand may finish, for `grace`
        seconds; then it is cancelled, and gives its message back."""
        self.stopping = True
        self.wake.set()
        done, _ = await asyncio.wait({task}, timeout=grace)
        if not done:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def send_next(self) -> bool:
        """Claim the message due first and deal with it; False if none is due."""
        claimed = await self.claim()
        if claimed is None:
            return False
        row, claim = claimed
        try:
            message = OutboxMessage.model_validate(row)
        except ValidationError as error:  # written by hand (mongosh), and not as the model says
            logger.error("Outbox message %s is malformed: %s", row.get("_id"), error)
            await self.update(row["_id"], claim, {"status": "failed", "last_error": str(error)})
            return True
        await self.process(message, claim)
        return True

    async def claim(self) -> tuple[dict[str, Any], str] | None:
        """The message due first, now this sender's, and the claim id it holds it by."""
        now = utc_now()
        claim = secrets.token_hex(8)
        lease = now + self.budget + LEASE_MARGIN
        # A pending message due, else one whose sender's lease ran out: each one status, so
        # that the (status, due_at) index answers both, filter and sort.
        for status in ("pending", "sending"):
            # PyMongo: Beanie's find_one().update() has no sort, and the claim takes the
            # message due first.
            row = await OutboxMessage.get_pymongo_collection().find_one_and_update(
                {"status": status, "due_at": {"$lte": now}},
                {
                    "$set": {"status": "sending", "due_at": lease, "claim": claim},
                    "$inc": {"attempts": 1},
                },
                sort=[("due_at", ASCENDING)],
                return_document=ReturnDocument.AFTER,
            )
            if row is not None:
                return row, claim
        return None

    async def process(self, message: OutboxMessage, claim: str) -> None:
        if message.attempts > self.settings.mail_max_attempts:
            # Claimed that often with no outcome recorded: its senders died or were cut off.
            reason = f"claimed {message.attempts - 1} times without an outcome"
            await self.failed(message, claim, reason, permanent=True)
            return
        # The lease runs from here: should this sender have stalled since its claim and
        # another have taken the message over, it neither makes a token nor sends.
        lease = utc_now() + self.budget + LEASE_MARGIN
        if not await self.update(message.id, claim, {"due_at": lease}):
            return
        try:
            async with asyncio.timeout(self.budget.total_seconds()):
                mail = await self.preparers[message.kind](message, self.settings)
                if mail is None:
                    await self.finish(message, claim, status="skipped", last_error="no account")
                    return
                await self.deliver(message, mail)
        except ServerUnreachable as error:
            self.down_pause = min(
                max(self.settings.mail_retry_seconds, self.down_pause * 2), MAX_RETRY_PAUSE_S
            )
            self.down_until = time.monotonic() + self.down_pause
            await self.failed(message, claim, str(error), permanent=False)
        except TemporaryFailure as error:
            await self.failed(message, claim, str(error), permanent=False)
        except PermanentFailure as error:
            await self.failed(message, claim, str(error), permanent=True)
        except TimeoutError:
            reason = f"no outcome within {self.budget.total_seconds():.0f} s"
            await self.failed(message, claim, reason, permanent=False)
        except asyncio.CancelledError:
            # Shutting down: back to pending, due now, for whichever sender is next.
            await asyncio.shield(
                self.update(message.id, claim, {"status": "pending", "due_at": utc_now()})
            )
            raise
        except PyMongoError:
            raise  # the outbox itself is out of reach: the claim's lease brings it back
        except Exception as error:
            # A fault of ours (in preparing it, say): counted as an attempt like any other, so
            # that one message cannot hold the outbox up for ever.
            logger.exception("Mail %s (%s) could not be sent", message.id, message.kind)
            await self.failed(message, claim, repr(error), permanent=False)
        else:
            self.down_pause = 0.0
            await self.finish(
                message, claim, status="sent", sent_at=utc_now(), subject=mail.subject
            )

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
        except aiosmtplib.SMTPNotSupported as error:
            # The server lacks what this message needs (SMTPUTF8 for an international address,
            # or STARTTLS as configured): trying again changes nothing.
            raise PermanentFailure(f"SMTP server cannot take it: {error}") from None
        except aiosmtplib.SMTPResponseException as error:
            failure = PermanentFailure if error.code >= 500 else TemporaryFailure
            raise failure(f"SMTP server answered {error.code}: {error.message}") from None
        except (aiosmtplib.SMTPException, OSError) as error:
            raise ServerUnreachable(f"SMTP server unreachable: {error!r}") from None

    async def failed(
        self, message: OutboxMessage, claim: str, reason: str, *, permanent: bool
    ) -> None:
        if permanent or message.attempts >= self.settings.mail_max_attempts:
            logger.error(
                "Mail %s (%s) to %s failed after %d attempts: %s",
                message.id,
                message.kind,
                message.to,
                message.attempts,
                reason,
            )
            await self.update(message.id, claim, {"status": "failed", "last_error": reason})
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
        await self.update(
            message.id, claim, {"status": "pending", "due_at": due, "last_error": reason}
        )

    async def finish(
        self, message: OutboxMessage, claim: str, *, status: str, **fields: Any
    ) -> None:
        """Done with (sent or skipped): the TTL index deletes it a week later."""
        done = {"status": status, "expires_at": utc_now() + RETENTION, **fields}
        await self.update(message.id, claim, done)

    async def update(self, message_id: Any, claim: str, fields: dict[str, Any]) -> bool:
        """Change the message while this sender's claim holds; whether it did."""
        result = await OutboxMessage.find_one({"_id": message_id, "claim": claim}).update(
            {"$set": fields}
        )
        held = isinstance(result, UpdateResult) and result.matched_count > 0
        if not held:
            logger.warning("Mail %s was claimed by another sender meanwhile", message_id)
        return held
