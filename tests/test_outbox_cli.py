"""`social-api outbox`: the mail still to send or given up on, and `--retry`, run in-process
against the suite's database.

The tests are synchronous, as in tests/test_cli.py: while one runs, the suite app's event
loop does not, so its outbox sender cannot claim a message between the command and the
checks. The documents are written and read through Beanie in a loop of their own
(`asyncio.run`, as the command does), bound to the suite's database for that loop only.
"""

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from beanie import PydanticObjectId
from typer.testing import CliRunner

from service.cli import app as cli
from service.cli import database
from service.config import Settings
from service.models import OutboxMessage
from service.models.base import utc_now
from tests.conftest import TEST_SECRET_KEY

runner = CliRunner()
# Far enough ahead that the suite app's sender never finds these pending messages due.
DUE = datetime(2999, 1, 1, 12, 0, tzinfo=UTC)
CREATED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)


@pytest.fixture
def outbox_env(monkeypatch, tmp_path, settings, restore_beanie):
    """Point the commands at the suite's database (emptied before each test)."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("MONGODB_URL", settings.mongodb_url)
    monkeypatch.setenv("MONGODB_DB", settings.mongodb_db)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MAIL_POLL_SECONDS", "5")


def with_outbox[T](settings: Settings, work: Callable[[], Awaitable[T]]) -> T:
    """Run `work` with Beanie bound to the suite's database, in a loop of its own."""

    async def bound() -> T:
        async with database(settings):
            return await work()

    return asyncio.run(bound())


def put(settings: Settings, *messages: OutboxMessage) -> None:
    async def insert() -> None:
        await OutboxMessage.insert_many(list(messages))

    with_outbox(settings, insert)


def stored(settings: Settings) -> dict[PydanticObjectId, OutboxMessage]:
    async def read() -> dict[PydanticObjectId, OutboxMessage]:
        return {m.id: m for m in await OutboxMessage.find_all().to_list() if m.id is not None}

    return with_outbox(settings, read)


def message(n: int, status: str, **fields: object) -> OutboxMessage:
    """A message created `n` minutes after CREATED, with an id that sorts the other way
    (the listing must go by creation, not by id)."""
    built: OutboxMessage = OutboxMessage.model_validate(
        {
            "_id": PydanticObjectId(f"{99 - n:024x}"),
            "kind": "password_reset",
            "to": f"user{n}@example.com",
            "status": status,
            "due_at": DUE,
            "created_at": CREATED + timedelta(minutes=n),
            **fields,
        }
    )
    return built


def test_lists_pending_sending_and_failed_oldest_first_then_counts(outbox_env, settings):
    failed = message(
        1,
        "failed",
        kind="email_verification",
        attempts=8,
        # As an SMTP server may answer: over lines, with an escape sequence in it.
        last_error="SMTP server answered 550: mailbox unavailable\n\x1b[31mgo away",
    )
    pending = message(2, "pending", last_error="SMTP server unreachable: refused", attempts=1)
    sending = message(3, "sending", attempts=2, due_at=datetime(2999, 1, 1, 12, 1, tzinfo=UTC))
    put(
        settings,
        pending,
        message(4, "sent", sent_at=CREATED),
        message(5, "skipped", last_error="no such account"),
        message(6, "skipped", last_error="no such account"),
        sending,
        failed,
    )

    result = runner.invoke(cli, ["outbox"])

    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        f"{failed.id}  failed   email_verification  user1@example.com  attempts 8  "
        "last error: SMTP server answered 550: mailbox unavailable [31mgo away",
        f"{pending.id}  pending  password_reset      user2@example.com  attempts 1  "
        "due 2999-01-01 12:00:00Z  last error: SMTP server unreachable: refused",
        f"{sending.id}  sending  password_reset      user3@example.com  attempts 2  "
        "claimed until 2999-01-01 12:01:00Z",
        "outbox: 1 pending, 1 sending, 1 failed, 1 sent, 2 skipped",
    ]


def test_an_outbox_with_nothing_to_list_says_so_in_one_line(outbox_env, settings):
    empty = runner.invoke(cli, ["outbox"])
    put(settings, message(1, "sent"), message(2, "skipped"))
    done = runner.invoke(cli, ["outbox"])

    assert empty.exit_code == 0, empty.output
    assert empty.output == (
        "nothing pending, sending or failed in the outbox "
        "(0 pending, 0 sending, 0 failed, 0 sent, 0 skipped)\n"
    )
    assert done.exit_code == 0, done.output
    assert done.output == (
        "nothing pending, sending or failed in the outbox "
        "(0 pending, 0 sending, 0 failed, 1 sent, 1 skipped)\n"
    )


def test_retry_queues_every_failed_message_again_and_nothing_else(outbox_env, settings):
    first = message(1, "failed", attempts=8, last_error="SMTP server answered 451: later")
    second = message(2, "failed", attempts=1, last_error="recipient refused: 550")
    pending = message(3, "pending", attempts=3, last_error="SMTP server unreachable")
    sent = message(4, "sent", attempts=1)
    put(settings, first, second, pending, sent)
    before = utc_now()

    result = runner.invoke(cli, ["outbox", "--retry"])

    after = utc_now()
    assert result.exit_code == 0, result.output
    assert result.output == (
        "queued 2 failed message(s) again: a running API sends them within "
        "MAIL_POLL_SECONDS (5 s)\n"
    )
    now = stored(settings)
    for old in (first, second):
        assert old.id is not None
        queued = now[old.id]
        assert (queued.status, queued.attempts) == ("pending", 0)
        # Due now: MongoDB keeps milliseconds, so `before` is rounded down to them.
        assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= queued.due_at
        assert queued.due_at <= after
        assert queued.last_error == old.last_error  # kept until the next attempt
    assert pending.id is not None and sent.id is not None
    assert now[pending.id] == pending
    assert now[sent.id] == sent

    listed = runner.invoke(cli, ["outbox"])
    assert listed.output.splitlines()[-1] == (
        "outbox: 3 pending, 0 sending, 0 failed, 1 sent, 0 skipped"
    )
    again = runner.invoke(cli, ["outbox", "--retry"])
    assert again.exit_code == 0, again.output
    assert again.output == "no failed mail to queue again\n"


def test_outbox_without_mongodb_is_one_line(outbox_env, monkeypatch):
    monkeypatch.setenv("MONGODB_URL", "mongodb://127.0.0.1:9/?serverSelectionTimeoutMS=300")
    monkeypatch.setenv("MONGODB_TIMEOUT_MS", "300")
    result = runner.invoke(cli, ["outbox", "--retry"])
    assert result.exit_code == 1
    assert result.output.startswith("error: cannot reach MongoDB")
    assert "Traceback" not in result.output
