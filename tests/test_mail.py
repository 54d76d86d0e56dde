"""Forgotten passwords and verified emails, through the outbox, against a real SMTP server.

The suite's app mails through `tests.smtp.SMTP` (aiosmtpd on loopback); the tests that need
the SMTP server down, or several API processes, run `social-api serve` in processes of their
own with an SMTP server of their own.
"""

import asyncio
import hashlib
import html
import json
import subprocess
import sys
import time
import uuid
from datetime import timedelta
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import httpx
import pymongo
import pytest
from aiosmtpd.controller import Controller
from fastapi import FastAPI

from service.config import Settings
from service.mail import Sender
from service.models import OutboxMessage, User
from service.models.base import new_id, utc_now
from service.recovery import PREPARERS
from service.recovery import verify_email as verify_token
from service.routers.auth import INVALID_MAILED_TOKEN, RESET_MAIL_QUEUED
from tests.conftest import app_client, free_port, make_settings, running_server
from tests.factories import DEFAULT_PASSWORD, bearer, create_user, login_pair, unique_email
from tests.smtp import TOKEN, SMTPServer, html_of, text_of, token_in

NEW_PASSWORD = "a brand new password"
INVALID = {"detail": INVALID_MAILED_TOKEN}
NOT_VERIFIED = {"detail": "Email address not verified"}


async def forgot(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post("/auth/forgot-password", json={"email": email})


async def reset(client: httpx.AsyncClient, token: str, password: str = NEW_PASSWORD) -> Any:
    return await client.post(
        "/auth/reset-password", json={"token": token, "new_password": password}
    )


async def attempt_login(client: httpx.AsyncClient, email: str, password: str) -> int:
    response = await client.post("/login", data={"username": email, "password": password})
    return response.status_code


async def outbox_settled(count: int) -> list[OutboxMessage]:
    """The outbox once `count` messages are in it and none is pending or being sent (15 s)."""
    deadline = time.monotonic() + 15
    while True:
        messages = await OutboxMessage.find_all().to_list()
        if len(messages) >= count and all(m.status not in ("pending", "sending") for m in messages):
            return messages
        assert time.monotonic() < deadline, [(m.kind, m.to, m.status) for m in messages]
        await asyncio.sleep(0.02)


async def test_registration_mails_a_link_that_verifies_the_address(
    client, smtp_server, settings: Settings
):
    user = await create_user(client)
    me = await client.get("/users/me", headers=user.headers)
    assert me.json()["email_verified"] is False

    message = await smtp_server.received(user.email)
    assert message["From"] == settings.mail_from
    assert message["Subject"] == "Confirm your email address"
    token = token_in(message)
    link = f"{settings.public_base_url}/verify-email?token={token}"
    assert link in text_of(message)
    assert html.escape(link, quote=True) in html_of(message)

    verified = await client.post("/auth/verify", json={"token": token})
    assert verified.status_code == 200, verified.text
    # The account as anyone may see it: /users/me adds the caller's role, which this does not.
    mine = {key: value for key, value in me.json().items() if key != "role"}
    assert verified.json() == {**mine, "email_verified": True}
    assert verified.headers["cache-control"] == "no-store"
    assert (await client.get("/users/me", headers=user.headers)).json()["email_verified"] is True
    again = await client.post("/auth/verify", json={"token": token})
    assert (again.status_code, again.json()) == (400, INVALID)


async def test_a_reset_by_mail_sets_the_password_and_ends_every_session(client, smtp_server):
    user = await create_user(client)
    await smtp_server.received(user.email)  # the verification mail
    asked = await forgot(client, f"  {user.email.upper()} ")
    assert (asked.status_code, asked.json()) == (202, {"message": RESET_MAIL_QUEUED})
    assert asked.headers["cache-control"] == "no-store"

    message = await smtp_server.received(user.email, 2)
    assert message["Subject"] == "Reset your Social API password"
    token = token_in(message)
    done = await reset(client, token)
    assert (done.status_code, done.content) == (204, b"")
    assert done.headers["cache-control"] == "no-store"

    assert await attempt_login(client, user.email, DEFAULT_PASSWORD) == 403
    assert await attempt_login(client, user.email, NEW_PASSWORD) == 200
    assert (await client.get("/users/me", headers=user.headers)).status_code == 401
    refreshed = await client.post("/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refreshed.status_code == 401
    # The link proved the address as well.
    fresh = await login_pair(client, user.email, NEW_PASSWORD)
    me = await client.get("/users/me", headers=bearer(fresh["access_token"]))
    assert me.json()["email_verified"] is True
    again = await reset(client, token, "yet another password")
    assert (again.status_code, again.json()) == (400, INVALID)
    assert await attempt_login(client, user.email, NEW_PASSWORD) == 200


async def test_forgot_password_answers_the_same_bytes_whether_or_not_the_account_exists(
    client, smtp_server
):
    user = await create_user(client)
    missing = unique_email()
    known = await forgot(client, user.email)
    unknown = await forgot(client, missing)
    assert known.status_code == unknown.status_code == 202
    assert known.content == unknown.content
    per_request = {"x-request-id", "date"}
    assert {k: v for k, v in known.headers.items() if k not in per_request} == {
        k: v for k, v in unknown.headers.items() if k not in per_request
    }
    # Only the sender, later, tells them apart: the one with no account is skipped.
    messages = await outbox_settled(3)
    assert {(m.kind, m.to, m.status) for m in messages} == {
        ("email_verification", user.email, "sent"),
        ("password_reset", user.email, "sent"),
        ("password_reset", missing, "skipped"),
    }
    assert smtp_server.to(missing) == []
    assert len(smtp_server.to(user.email)) == 2


async def test_a_reset_token_works_once_and_only_for_its_own_user(client, smtp_server):
    alice, bob = await create_user(client), await create_user(client)
    await forgot(client, alice.email)
    token = token_in(await smtp_server.received(alice.email, 2))
    assert (await reset(client, token)).status_code == 204
    assert (await reset(client, token, "a third password")).status_code == 400
    assert await attempt_login(client, alice.email, NEW_PASSWORD) == 200
    assert await attempt_login(client, bob.email, DEFAULT_PASSWORD) == 200
    assert await attempt_login(client, bob.email, NEW_PASSWORD) == 403


async def test_an_expired_reset_token_is_refused_and_changes_nothing(client, smtp_server):
    user = await create_user(client)
    await forgot(client, user.email)
    token = token_in(await smtp_server.received(user.email, 2))
    await User.get_pymongo_collection().update_one(
        {"email": user.email}, {"$set": {"password_reset.expires_at": utc_now()}}
    )
    refused = await reset(client, token)
    assert (refused.status_code, refused.json()) == (400, INVALID)
    assert await attempt_login(client, user.email, DEFAULT_PASSWORD) == 200


async def test_a_password_change_voids_a_reset_token_sent_before_it(client, smtp_server):
    user = await create_user(client)
    await forgot(client, user.email)
    token = token_in(await smtp_server.received(user.email, 2))
    changed = await client.put(
        "/users/me/password",
        json={"current_password": DEFAULT_PASSWORD, "new_password": "changed by hand"},
        headers=user.headers,
    )
    assert changed.status_code == 200, changed.text
    refused = await reset(client, token)
    assert (refused.status_code, refused.json()) == (400, INVALID)
    assert await attempt_login(client, user.email, "changed by hand") == 200


async def test_a_newer_reset_token_voids_the_older_one(client, smtp_server):
    user = await create_user(client)
    await forgot(client, user.email)
    older = token_in(await smtp_server.received(user.email, 2))
    await forgot(client, user.email)
    newer = token_in(await smtp_server.received(user.email, 3))
    assert older != newer
    assert (await reset(client, older)).status_code == 400
    assert (await reset(client, newer)).status_code == 204


async def test_a_wrong_token_gets_the_same_answer_as_a_used_one(client):
    for path, body in [
        ("/auth/reset-password", {"token": "A" * 43, "new_password": NEW_PASSWORD}),
        ("/auth/verify", {"token": "A" * 43}),
    ]:
        response = await client.post(path, json=body)
        assert (response.status_code, response.json()) == (400, INVALID)


async def test_the_database_keeps_only_digests_of_the_tokens(client, smtp_server, app: FastAPI):
    user = await create_user(client)
    verification = token_in(await smtp_server.received(user.email))
    await forgot(client, user.email)
    reset_token = token_in(await smtp_server.received(user.email, 2))
    await outbox_settled(2)

    stored = await User.get_pymongo_collection().find_one({"email": user.email})
    assert stored is not None
    digest = hashlib.sha256
    assert stored["password_reset"]["token_hash"] == digest(reset_token.encode()).hexdigest()
    assert stored["email_verification"]["token_hash"] == (digest(verification.encode()).hexdigest())
    database = app.state.database
    for name in await database.list_collection_names():
        async for row in database[name].find():
            dumped = json.dumps(row, default=str)
            assert reset_token not in dumped and verification not in dumped, name
    # The sent messages keep their subject (never their text) until the TTL index's day.
    for message in await OutboxMessage.find_all().to_list():
        assert message.status == "sent" and message.subject
        assert message.expires_at is not None


async def test_a_fresh_verification_mail_voids_the_earlier_link(client, smtp_server):
    user = await create_user(client)
    first = token_in(await smtp_server.received(user.email))
    asked = await client.post("/auth/verify/request", headers=user.headers)
    assert asked.status_code == 202, asked.text
    second = token_in(await smtp_server.received(user.email, 2))
    assert (await client.post("/auth/verify", json={"token": first})).status_code == 400
    assert (await client.post("/auth/verify", json={"token": second})).status_code == 200
    done = await client.post("/auth/verify/request", headers=user.headers)
    assert (done.status_code, done.json()) == (409, {"detail": "Email address already verified"})
    assert (await client.post("/auth/verify/request")).status_code == 401


async def test_mail_requests_are_throttled_per_email(client, settings: Settings):
    user = await create_user(client)
    for _ in range(settings.mail_requests_per_email):
        assert (await forgot(client, user.email)).status_code == 202
    refused = await forgot(client, user.email)
    assert refused.status_code == 429
    assert refused.json() == {"detail": "Too many requests for this email or from this address"}
    window = settings.login_failure_window_seconds
    assert window - 5 <= int(refused.headers["retry-after"]) <= window
    # A missing account is counted the same way; another email is not held up.
    missing = unique_email()
    for _ in range(settings.mail_requests_per_email):
        assert (await forgot(client, missing)).status_code == 202
    assert (await forgot(client, missing)).status_code == 429
    assert (await forgot(client, unique_email())).status_code == 202


async def test_with_require_verified_email_an_unverified_user_reads_but_does_not_write(
    settings: Settings, smtp_server, restore_beanie
):
    async with app_client(settings, require_verified_email=True) as client:
        writer = await create_user(client)
        token = token_in(await smtp_server.received(writer.email))
        assert (await client.post("/auth/verify", json={"token": token})).status_code == 200
        post = await client.post(
            "/posts/", json={"title": "t", "content": "c"}, headers=writer.headers
        )
        assert post.status_code == 201, post.text
        post_id = post.json()["id"]

        user = await create_user(client)
        headers = user.headers
        for method, path, body in [
            ("POST", "/posts/", {"title": "t", "content": "c"}),
            ("PUT", f"/posts/{post_id}", {"title": "t", "content": "c"}),
            ("DELETE", f"/posts/{post_id}", None),
            ("POST", "/vote/", {"post_id": post_id, "dir": 1}),
        ]:
            refused = await client.request(method, path, json=body, headers=headers)
            assert (refused.status_code, refused.json()) == (403, NOT_VERIFIED), (method, path)
        assert (await client.get("/posts/", headers=headers)).status_code == 200
        assert (await client.get(f"/posts/{post_id}", headers=headers)).status_code == 200
        assert (await client.get("/users/me", headers=headers)).status_code == 200
        assert (await client.post("/logout", headers=headers)).status_code == 204
        again = await login_pair(client, user.email)

        token = token_in(await smtp_server.received(user.email))
        assert (await client.post("/auth/verify", json={"token": token})).status_code == 200
        voted = await client.post(
            "/vote/", json={"post_id": post_id, "dir": 1}, headers=bearer(again["access_token"])
        )
        assert voted.status_code == 201, voted.text


HOSTILE = [
    ("/auth/reset-password", {"token": "A" * 10_000, "new_password": NEW_PASSWORD}),
    ("/auth/reset-password", {"token": "../../etc/passwd", "new_password": NEW_PASSWORD}),
    ("/auth/reset-password", {"token": {"$ne": None}, "new_password": NEW_PASSWORD}),
    ("/auth/reset-password", {"token": "", "new_password": NEW_PASSWORD}),
    ("/auth/reset-password", {"token": "A" * 43, "new_password": "short"}),
    ("/auth/reset-password", {"new_password": NEW_PASSWORD}),
    ("/auth/verify", {"token": ["A" * 43]}),
    ("/auth/verify", {"token": None}),
    ("/auth/verify", "not an object"),
    ("/auth/forgot-password", {"email": "not-an-email"}),
    ("/auth/forgot-password", {"email": "a" * 300 + "@example.com"}),
    ("/auth/forgot-password", {"email": {"$regex": ".*"}}),
    ("/auth/forgot-password", {"email": "user@example.local"}),
    ("/auth/forgot-password", {}),
]


async def test_one_token_used_twice_at_once_works_once(client, smtp_server):
    user = await create_user(client)
    verification = token_in(await smtp_server.received(user.email))
    await forgot(client, user.email)
    token = token_in(await smtp_server.received(user.email, 2))
    resets = await asyncio.gather(reset(client, token, "first password"), reset(client, token))
    assert sorted(r.status_code for r in resets) == [204, 400]
    winner = "first password" if resets[0].status_code == 204 else NEW_PASSWORD
    assert await attempt_login(client, user.email, winner) == 200
    verifies = await asyncio.gather(
        *(client.post("/auth/verify", json={"token": verification}) for _ in range(2))
    )
    assert sorted(r.status_code for r in verifies) == [200, 400]


async def test_sessions_ended_while_a_reset_hashes_do_not_spend_its_token(client, smtp_server):
    """Whoever knows the old password cannot make the owner's reset fail by ending sessions
    (or logging in) while it runs: the token is used up with the password's write alone."""
    user = await create_user(client)
    await forgot(client, user.email)
    token = token_in(await smtp_server.received(user.email, 2))
    pairs = [await login_pair(client, user.email) for _ in range(4)]
    answers = await asyncio.gather(
        reset(client, token),
        *(client.post("/logout/all", headers=bearer(p["access_token"])) for p in pairs),
    )
    assert answers[0].status_code == 204, answers[0].text
    assert await attempt_login(client, user.email, NEW_PASSWORD) == 200


async def test_mail_requests_are_throttled_per_address_and_for_verification_too(
    settings: Settings, restore_beanie
):
    async with app_client(settings, mail_requests_per_address=2) as client:
        for _ in range(2):
            assert (await forgot(client, unique_email())).status_code == 202
        refused = await forgot(client, unique_email())
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
        user = await create_user(client)
        for _ in range(2):
            asked = await client.post("/auth/verify/request", headers=user.headers)
            assert asked.status_code == 202
        again = await client.post("/auth/verify/request", headers=user.headers)
        assert again.status_code == 429


@pytest.mark.parametrize(("path", "body"), HOSTILE)
async def test_hostile_tokens_and_emails_get_a_4xx_and_change_nothing(client, path, body):
    user = await create_user(client)
    await outbox_settled(1)
    before = await User.get_pymongo_collection().find_one({"email": user.email})
    response = await client.post(path, json=body)
    assert 400 <= response.status_code < 500, response.text
    assert response.headers["content-type"] == "application/json"
    assert "detail" in response.json()
    assert await User.get_pymongo_collection().find_one({"email": user.email}) == before
    assert await OutboxMessage.count() == 1  # the registration's mail alone
    assert await attempt_login(client, user.email, DEFAULT_PASSWORD) == 200


# --- the sender on its own: the suite app's sender is stopped for these -------------------


class Refusing:
    """An SMTP server's handler that refuses every recipient with `reply`."""

    def __init__(self, reply: str) -> None:
        self.reply = reply
        self.tried = 0

    async def handle_RCPT(self, server, session, envelope, address, options):
        self.tried += 1
        return self.reply


async def queued_verification(settings: Settings) -> OutboxMessage:
    user = User(email=unique_email(), hashed_password="x")
    await user.insert()
    message = OutboxMessage(id=new_id(), kind="email_verification", to=user.email, user_id=user.id)
    await message.insert()
    return message


def sender_with(settings: Settings, **overrides: Any) -> Sender:
    """A sender of its own, on the suite's database, with settings overridden."""
    return Sender(
        make_settings(settings.mongodb_url or "", settings.mongodb_db, **overrides), PREPARERS
    )


async def one_try_at(settings: Settings, reply: str) -> tuple[Refusing, Sender, OutboxMessage]:
    """One attempt at a verification mail, to an SMTP server that answers every recipient
    with `reply`."""
    handler = Refusing(reply)
    server = Controller(handler, hostname="127.0.0.1", port=free_port())
    server.start()
    try:
        sender = sender_with(settings, smtp_port=server.port)
        message = await queued_verification(settings)
        assert await sender.send_next()
    finally:
        server.stop()
    return handler, sender, message


async def test_a_permanent_refusal_fails_the_message_at_once(quiet_outbox, settings, caplog):
    handler, _, message = await one_try_at(settings, "550 5.1.1 No such mailbox")
    failed = await OutboxMessage.get(message.id)
    assert failed is not None
    assert (failed.status, failed.attempts, handler.tried) == ("failed", 1, 1)
    assert failed.last_error is not None and "550" in failed.last_error
    assert f"Mail {message.id} (email_verification) to {message.to} failed" in caplog.text


async def test_a_server_that_stays_down_fails_the_message_after_the_last_attempt(
    quiet_outbox, settings, caplog
):
    # Nothing listens on that port.
    sender = sender_with(
        settings, smtp_port=free_port(), mail_max_attempts=3, mail_retry_seconds=0.05
    )
    message = await queued_verification(settings)
    for attempt in (1, 2):
        assert await sender.send_next()
        waiting = await OutboxMessage.get(message.id)
        assert waiting is not None
        assert (waiting.status, waiting.attempts) == ("pending", attempt)
        assert waiting.last_error is not None and "unreachable" in waiting.last_error
        assert not await sender.send_next()  # not due yet: the pause doubles each time
        await asyncio.sleep(0.05 * 2 ** (attempt - 1) + 0.05)
    assert await sender.send_next()
    failed = await OutboxMessage.get(message.id)
    assert failed is not None and (failed.status, failed.attempts) == ("failed", 3)
    assert "failed after 3 attempts" in caplog.text
    # Each attempt made its own token; none is kept anywhere but as the user's digest.
    stored = await OutboxMessage.get_pymongo_collection().find_one({"_id": message.id})
    assert stored is not None and not TOKEN.search(json.dumps(stored, default=str))
    user = await User.get(message.user_id)
    assert user is not None and user.email_verification is not None


async def test_an_unreachable_server_holds_back_the_other_messages_for_a_while(
    quiet_outbox, settings
):
    # Nothing listens on that port.
    sender = sender_with(
        settings, smtp_port=free_port(), mail_retry_seconds=60, mail_poll_seconds=0.05
    )
    first, second = await queued_verification(settings), await queued_verification(settings)
    ready = asyncio.Event()
    ready.set()
    running = asyncio.create_task(sender.run(ready))
    try:
        for _ in range(200):
            tried = await OutboxMessage.find(OutboxMessage.attempts > 0).to_list()
            if tried:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.5)  # ten polls: the other one is not tried meanwhile
        tried = await OutboxMessage.find(OutboxMessage.attempts > 0).to_list()
        assert [m.id for m in tried] in ([first.id], [second.id])
        assert tried[0].status == "pending" and "unreachable" in (tried[0].last_error or "")
        assert sender.paused()
    finally:
        await sender.close(running)


async def test_a_4xx_answer_is_tried_again_later(quiet_outbox, settings):
    _, sender, message = await one_try_at(settings, "451 4.3.0 Try again later")
    waiting = await OutboxMessage.get(message.id)
    assert waiting is not None and (waiting.status, waiting.attempts) == ("pending", 1)
    assert waiting.last_error is not None and "451" in waiting.last_error
    assert not sender.paused()  # the server answered: only this message waits


async def test_shutdown_gives_back_the_message_in_hand(quiet_outbox, settings):
    started = asyncio.Event()

    async def slow(message: OutboxMessage, settings: Settings) -> None:
        started.set()
        await asyncio.sleep(60)

    sender = Sender(settings, {"email_verification": slow})
    message = await queued_verification(settings)
    ready = asyncio.Event()
    ready.set()
    running = asyncio.create_task(sender.run(ready))
    await asyncio.wait_for(started.wait(), 10)
    await sender.close(running, grace=0.2)  # then cancelled
    back = await OutboxMessage.get(message.id)
    assert back is not None and (back.status, back.attempts) == ("pending", 1)
    assert back.due_at <= utc_now()


async def test_a_fault_in_preparing_a_mail_counts_as_an_attempt(quiet_outbox, settings, caplog):
    async def broken(message: OutboxMessage, settings: Settings) -> None:
        raise RuntimeError("no template")

    one_try = make_settings(settings.mongodb_url or "", settings.mongodb_db, mail_max_attempts=1)
    sender = Sender(one_try, {"email_verification": broken})
    message = await queued_verification(settings)
    assert await sender.send_next()
    failed = await OutboxMessage.get(message.id)
    assert failed is not None and (failed.status, failed.attempts) == ("failed", 1)
    assert failed.last_error == "RuntimeError('no template')"
    assert f"Mail {message.id} (email_verification) could not be sent" in caplog.text


async def test_a_message_claimed_by_a_sender_that_died_is_sent_once_its_lease_ends(
    quiet_outbox, settings, smtp_server
):
    message = await queued_verification(settings)
    sender = Sender(settings, PREPARERS)
    claimed = await sender.claim()
    assert claimed is not None and claimed[0]["_id"] == message.id
    stale_row, stale_claim = claimed
    assert await sender.claim() is None  # claimed: nobody else gets it meanwhile
    await OutboxMessage.get_pymongo_collection().update_one(
        {"_id": message.id}, {"$set": {"due_at": utc_now() - timedelta(seconds=1)}}
    )
    assert await sender.send_next()
    mail = await smtp_server.received(message.to)
    token = token_in(mail)
    # The first sender, back from its stall, changes nothing: no new token, no mail, no update.
    await sender.process(OutboxMessage.model_validate(stale_row), stale_claim)
    await sender.finish(OutboxMessage.model_validate(stale_row), stale_claim, status="skipped")
    sent = await OutboxMessage.get(message.id)
    assert sent is not None and (sent.status, sent.attempts) == ("sent", 2)
    await asyncio.sleep(0.2)
    assert len(smtp_server.to(message.to)) == 1
    verified = await verify_token(token)
    assert verified is not None  # the mail sent carries the live token


# --- processes of their own -----------------------------------------------------------------


def serve_env(mongodb_url: str, database: str, smtp: SMTPServer) -> dict[str, str]:
    return {
        "MONGODB_URL": mongodb_url,
        "MONGODB_DB": database,
        "SECRET_KEY": "s" * 48,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp.port),
        "SMTP_SECURITY": "none",
        "MAIL_RETRY_SECONDS": "0.3",
        "MAIL_POLL_SECONDS": "0.2",
        "LOG_FORMAT": "text",
    }


def test_nothing_is_lost_while_the_smtp_server_is_down_with_two_api_processes(
    mongodb_url: str, tmp_path: Path
):
    smtp = SMTPServer()  # not started: down
    database = f"mail_{uuid.uuid4().hex[:8]}"
    env = serve_env(mongodb_url, database, smtp)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    emails = [unique_email() for _ in range(3)]
    with (
        running_server(tmp_path / "a", **env) as (first, _),
        running_server(tmp_path / "b", **env) as (second, _),
        pymongo.MongoClient[dict[str, Any]](mongodb_url) as mongo,
    ):
        for email, (one, other) in zip(
            emails, [(first, second), (second, first)] * 2, strict=False
        ):
            body = {"email": email, "password": DEFAULT_PASSWORD}
            assert httpx.post(f"{one}/users/", json=body).status_code == 201
            asked = httpx.post(f"{other}/auth/forgot-password", json={"email": email})
            assert asked.status_code == 202, asked.text
        outbox = mongo[database]["outbox"]
        deadline = time.monotonic() + 20
        # Tried and not delivered; each process then holds the rest back for a while.
        while outbox.count_documents({"last_error": {"$regex": "unreachable"}}) < 2:
            assert time.monotonic() < deadline, list(outbox.find())
            time.sleep(0.1)
        assert outbox.count_documents({}) == 6
        assert {row["status"] for row in outbox.find()} <= {"pending", "sending"}

        smtp.start()
        try:
            for email in emails:
                smtp.wait_sync(email, 2)
            time.sleep(2)  # time for a duplicate to show, were there one
            assert len(smtp.messages) == 6
            for email in emails:
                subjects = sorted(str(m["Subject"]) for m in smtp.to(email))
                assert subjects == ["Confirm your email address", "Reset your Social API password"]
            assert len({m["Message-ID"] for m in smtp.messages}) == 6
            assert [row["status"] for row in outbox.find()] == ["sent"] * 6
        finally:
            smtp.stop()
        mongo.drop_database(database)


def test_the_development_store_writes_each_mail_as_a_file_and_logs_its_link(tmp_path: Path):
    with running_server(tmp_path, LOG_FORMAT="text", LOG_LEVEL="INFO") as (base, _):
        email = unique_email()
        body = {"email": email, "password": DEFAULT_PASSWORD}
        assert httpx.post(f"{base}/users/", json=body).status_code == 201
        directory = tmp_path / "data" / "outbox"
        deadline = time.monotonic() + 15
        while not list(directory.glob("*.eml")):
            assert time.monotonic() < deadline, "no .eml file"
            time.sleep(0.05)
        [path] = directory.glob("*.eml")
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert message["To"] == email
        token = token_in(message)
        link = f"http://127.0.0.1:8000/verify-email?token={token}"
        log = (tmp_path / "server.log").read_text()
        [line] = [line for line in log.splitlines() if link in line]
        assert email in line and str(path) in line
        verified = httpx.post(f"{base}/auth/verify", json={"token": token})
        assert verified.status_code == 200 and verified.json()["email_verified"] is True


def test_a_real_mongodb_without_smtp_host_refuses_to_start(mongodb_url: str, tmp_path: Path):
    env = serve_env(mongodb_url, "unused", SMTPServer())
    del env["SMTP_HOST"]
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: SMTP_HOST is not set. It is required with MONGODB_URL")
    assert result.stderr.count("\n") == 1
