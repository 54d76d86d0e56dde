"""`social-api outbox`: the mail still to send or given up on, and `--retry`."""

from datetime import UTC, datetime
from typing import Annotated

import typer
from beanie.operators import In
from pymongo.results import UpdateResult

from service.cli import database, load_settings, printable, run
from service.models import OutboxMessage
from service.models.base import utc_now
from service.models.outbox import MailStatus

# What `outbox` lists (mail still to go, or given up on), then what it only counts.
OUTBOX_LISTED: tuple[MailStatus, ...] = ("pending", "sending", "failed")
OUTBOX_COUNTED: tuple[MailStatus, ...] = (*OUTBOX_LISTED, "sent", "skipped")


def outbox(
    retry: Annotated[
        bool,
        typer.Option(
            "--retry",
            help="Queue every failed message again: pending, due now, no attempts yet. Its "
            "last error is kept until the next attempt replaces it.",
        ),
    ] = False,
) -> None:
    """List the mail pending, being sent or failed, oldest first, and count the outbox by
    status (sent and skipped mail is kept a week); --retry queues the failed mail again."""
    settings = load_settings()

    async def show() -> None:
        async with database(settings):
            messages = (
                await OutboxMessage.find(In(OutboxMessage.status, list(OUTBOX_LISTED)))
                .sort("+created_at", "+_id")
                .to_list()
            )
            rows = await OutboxMessage.aggregate(
                [{"$group": {"_id": "$status", "count": {"$sum": 1}}}]
            ).to_list()
        counts = {row["_id"]: row["count"] for row in rows}
        summary = ", ".join(f"{counts.get(status, 0)} {status}" for status in OUTBOX_COUNTED)
        if not messages:
            typer.echo(f"nothing pending, sending or failed in the outbox ({summary})")
            return
        for message in messages:
            typer.echo(outbox_line(message))
        typer.echo(f"outbox: {summary}")

    async def queue_again() -> None:
        async with database(settings):
            # Failed is final for the senders, so none of them writes these meanwhile.
            result = await OutboxMessage.find(OutboxMessage.status == "failed").update_many(
                {"$set": {"status": "pending", "attempts": 0, "due_at": utc_now()}}
            )
        queued = result.modified_count if isinstance(result, UpdateResult) else 0
        if not queued:
            typer.echo("no failed mail to queue again")
            return
        typer.echo(
            f"queued {queued} failed message(s) again: a running API sends them within "
            f"MAIL_POLL_SECONDS ({settings.mail_poll_seconds:g} s)"
        )

    run(queue_again if retry else show)


def outbox_line(message: OutboxMessage) -> str:
    """One message as `outbox` lists it; the recipient and the error are made one line of
    printable text (an SMTP server's answer may hold line breaks or escape sequences)."""
    fields = [
        str(message.id),
        f"{message.status:<7}",
        f"{message.kind:<18}",
        printable(message.to),
        f"attempts {message.attempts}",
    ]
    if message.status == "pending":
        fields.append(f"due {timestamp(message.due_at)}")
    elif message.status == "sending":
        # A sending message's due_at is its sender's lease: after it, another may claim it.
        fields.append(f"claimed until {timestamp(message.due_at)}")
    if message.last_error:
        fields.append(f"last error: {printable(message.last_error)}")
    return "  ".join(fields)


def timestamp(moment: datetime) -> str:
    """UTC to the second; a naive datetime is taken as UTC, as the service stores them."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
