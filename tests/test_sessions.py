"""Sessions: refresh rotation and replay, logout, logout-all, password change, account deletion."""

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from beanie import PydanticObjectId
from pymongo import monitoring

from service import accounts
from service.main import create_app
from service.models import LoginAttempt, Post, RefreshToken, User, Vote
from service.throttle import email_key
from tests.conftest import TEST_SECRET_KEY
from tests.factories import (
    DEFAULT_PASSWORD,
    bearer,
    create_post,
    create_user,
    login_pair,
    vote,
)

INVALID = {"detail": "Could not validate credentials"}
REFRESH_REFUSED = {"detail": "Invalid or expired refresh token"}


async def me(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get("/users/me", headers=bearer(token))


async def refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/auth/refresh", json={"refresh_token": refresh_token})


# Refresh --------------------------------------------------------------------------------------


async def test_refresh_rotates_both_tokens_and_keeps_the_session(client):
    user = await create_user(client)
    response = await refresh(client, user.refresh_token)
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    pair = response.json()
    assert pair.keys() == {"access_token", "token_type", "refresh_token", "expires_in"}
    assert pair["refresh_token"] != user.refresh_token
    assert pair["access_token"] != user.token
    assert (await me(client, pair["access_token"])).json()["id"] == user.id
    old = jwt.decode(user.token, TEST_SECRET_KEY, algorithms=["HS256"])
    new = jwt.decode(pair["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    assert new["sid"] == old["sid"] and new["ver"] == old["ver"] == 0
    # The newer refresh token goes on working, one exchange at a time.
    again = await refresh(client, pair["refresh_token"])
    assert again.status_code == 200


async def test_refresh_tokens_are_stored_only_as_sha256_digests(client):
    user = await create_user(client)
    [stored] = await RefreshToken.get_pymongo_collection().find().to_list()
    assert stored["token_hash"] == hashlib.sha256(user.refresh_token.encode()).hexdigest()
    assert user.refresh_token not in str(stored)
    assert stored["user_id"] == PydanticObjectId(user.id)
    lifetime = stored["expires_at"] - stored["issued_at"]
    assert lifetime == timedelta(days=14)


async def test_replaying_a_used_refresh_token_ends_the_session_of_both_holders(client):
    user = await create_user(client)
    thief = await refresh(client, user.refresh_token)  # the thief refreshes first
    assert thief.status_code == 200
    replay = await refresh(client, user.refresh_token)  # the victim's copy, already used
    assert replay.status_code == 401
    assert replay.json() == REFRESH_REFUSED
    assert replay.headers["www-authenticate"] == "Bearer"
    # The thief's newer tokens died with the family, access token included, at once.
    assert (await refresh(client, thief.json()["refresh_token"])).status_code == 401
    assert (await me(client, thief.json()["access_token"])).status_code == 401
    assert (await me(client, user.token)).status_code == 401
    # Other sessions of the same user are untouched.
    other = await login_pair(client, user.email)
    assert (await me(client, other["access_token"])).status_code == 200
    assert (await refresh(client, other["refresh_token"])).status_code == 200


async def test_simultaneous_uses_of_one_refresh_token_end_the_session(client):
    user = await create_user(client)
    responses = await asyncio.gather(*(refresh(client, user.refresh_token) for _ in range(6)))
    codes = [r.status_code for r in responses]
    # At most one exchange wins (it may itself lose to a replay that ended the session first).
    assert set(codes) <= {200, 401} and codes.count(200) <= 1 and codes.count(401) >= 5
    # The others were replays: whatever the winner got is dead too.
    for pair in (r.json() for r in responses if r.status_code == 200):
        assert (await refresh(client, pair["refresh_token"])).status_code == 401
        assert (await me(client, pair["access_token"])).status_code == 401
    assert (await me(client, user.token)).status_code == 401


@pytest.mark.parametrize(
    "token",
    ["", "x" * 43, "not a token", "a.b.c", "x" * 513],
    ids=["empty", "unknown", "text", "jwt-like", "too-long"],
)
async def test_a_bad_refresh_token_is_401_or_422(client, token):
    await create_user(client)
    response = await refresh(client, token)
    if token and len(token) <= 512:
        assert response.status_code == 401
        assert response.json() == REFRESH_REFUSED
    else:
        assert response.status_code == 422


async def test_an_access_token_is_not_a_refresh_token(client):
    user = await create_user(client)
    assert (await refresh(client, user.token)).status_code == 401


@pytest.mark.parametrize(
    "body",
    [None, {}, {"refresh_token": 5}, {"token": "x"}],
    ids=["none", "empty", "number", "wrong-name"],
)
async def test_a_malformed_refresh_request_is_422(client, body):
    response = await client.post("/auth/refresh", json=body)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


async def test_an_expired_refresh_token_is_refused(client):
    user = await create_user(client)
    await RefreshToken.get_pymongo_collection().update_many(
        {}, {"$set": {"expires_at": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    assert (await refresh(client, user.refresh_token)).status_code == 401


async def test_a_refresh_token_of_a_deleted_user_is_refused(client):
    user = await create_user(client)
    await User.get_pymongo_collection().delete_one({"_id": PydanticObjectId(user.id)})
    assert (await refresh(client, user.refresh_token)).status_code == 401


# Logout ---------------------------------------------------------------------------------------


async def test_logout_ends_this_session_on_the_very_next_request(client):
    user = await create_user(client)
    other = await login_pair(client, user.email)  # another device
    response = await client.post("/logout", headers=user.headers)
    assert response.status_code == 204
    assert response.content == b""
    assert response.headers["cache-control"] == "no-store"
    after = await me(client, user.token)
    assert after.status_code == 401
    assert after.json() == INVALID
    assert (await refresh(client, user.refresh_token)).status_code == 401
    assert (await client.post("/logout", headers=user.headers)).status_code == 401
    # The other device stays logged in.
    assert (await me(client, other["access_token"])).status_code == 200
    assert (await refresh(client, other["refresh_token"])).status_code == 200


async def test_logout_ends_a_refreshed_session_whichever_token_it_is_given(client):
    user = await create_user(client)
    pair = (await refresh(client, user.refresh_token)).json()
    # The old access token (still unexpired) logs out the session the new pair belongs to.
    assert (await client.post("/logout", headers=user.headers)).status_code == 204
    assert (await me(client, pair["access_token"])).status_code == 401
    assert (await refresh(client, pair["refresh_token"])).status_code == 401


async def test_logout_with_a_refresh_token_ends_that_session_too(client):
    user = await create_user(client)
    other = await login_pair(client, user.email)
    stranger = await create_user(client)
    response = await client.post(
        "/logout", headers=user.headers, json={"refresh_token": other["refresh_token"]}
    )
    assert response.status_code == 204
    assert (await refresh(client, other["refresh_token"])).status_code == 401
    assert (await me(client, other["access_token"])).status_code == 401
    # Someone else's refresh token in the body is ignored.
    mine = await login_pair(client, user.email)
    response = await client.post(
        "/logout",
        headers=bearer(mine["access_token"]),
        json={"refresh_token": stranger.refresh_token},
    )
    assert response.status_code == 204
    assert (await me(client, stranger.token)).status_code == 200
    assert (await refresh(client, stranger.refresh_token)).status_code == 200


async def test_logout_needs_an_access_token_and_a_valid_body(client):
    user = await create_user(client)
    assert (await client.post("/logout")).status_code == 401
    # Authentication comes first, the body after.
    assert (
        await client.post("/logout", content=b"{", headers={"Content-Type": "application/json"})
    ).status_code == 401
    bad = await client.post("/logout", headers=user.headers, json={"refresh_token": 7})
    assert bad.status_code == 422
    assert (await me(client, user.token)).status_code == 200  # a refused logout ends nothing


async def test_ended_sessions_leave_the_user_document_once_their_tokens_expired(client):
    user = await create_user(client)
    second = await login_pair(client, user.email)
    await client.post("/logout", headers=user.headers)
    users = User.get_pymongo_collection()
    # Pretend the first logout was over 30 minutes ago: its entry has nothing left to stop.
    await users.update_one(
        {}, {"$set": {"revoked_sessions.0.until": datetime.now(UTC) - timedelta(seconds=1)}}
    )
    await client.post("/logout", headers=bearer(second["access_token"]))
    [stored] = await users.find().to_list()
    second_sid = jwt.decode(second["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])["sid"]
    assert [entry["sid"] for entry in stored["revoked_sessions"]] == [second_sid]


async def test_logout_all_ends_every_session_at_once(client):
    user = await create_user(client)
    sessions = [await login_pair(client, user.email) for _ in range(3)]
    refreshed = (await refresh(client, sessions[0]["refresh_token"])).json()
    response = await client.post("/logout/all", headers=user.headers)
    assert response.status_code == 204
    for token in [user.token, refreshed["access_token"], *(s["access_token"] for s in sessions)]:
        assert (await me(client, token)).status_code == 401
    for token in [user.refresh_token, refreshed["refresh_token"], sessions[1]["refresh_token"]]:
        assert (await refresh(client, token)).status_code == 401
    # A new login starts a new epoch's sessions.
    fresh = await login_pair(client, user.email)
    assert (await me(client, fresh["access_token"])).status_code == 200
    claims = jwt.decode(fresh["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    assert claims["ver"] == 1


async def test_logout_all_of_one_user_leaves_other_users_alone(client):
    ann, bob = await create_user(client), await create_user(client)
    await client.post("/logout/all", headers=ann.headers)
    assert (await me(client, bob.token)).status_code == 200
    assert (await refresh(client, bob.refresh_token)).status_code == 200


async def test_a_refresh_racing_a_logout_cannot_outlive_it(client):
    """A refresh that exchanged its token just before a logout must not leave a live token."""
    for _ in range(5):
        user = await create_user(client)
        refreshed, logout = await asyncio.gather(
            refresh(client, user.refresh_token), client.post("/logout", headers=user.headers)
        )
        assert logout.status_code == 204
        if refreshed.status_code == 200:
            pair = refreshed.json()
            assert (await refresh(client, pair["refresh_token"])).status_code == 401
            assert (await me(client, pair["access_token"])).status_code == 401


async def test_a_logout_between_a_refresh_and_its_next_token_still_ends_the_session(
    client, monkeypatch
):
    """The race above, made certain: the logout lands after the exchange, before the insert."""
    user = await create_user(client)
    sid = jwt.decode(user.token, TEST_SECRET_KEY, algorithms=["HS256"])["sid"]
    start_session = accounts.start_session

    async def logout_first(*args, **kwargs):
        assert (await client.post("/logout", headers=user.headers)).status_code == 204
        return await start_session(*args, **kwargs)

    monkeypatch.setattr(accounts, "start_session", logout_first)
    assert (await refresh(client, user.refresh_token)).status_code == 401
    live = RefreshToken.find({"family_id": sid, "revoked_at": None})
    assert await live.count() == 0


async def test_a_refresh_token_of_an_earlier_epoch_is_refused(client):
    """Even one that logout-all's marking missed (written late by a racing refresh)."""
    user = await create_user(client)
    await User.get_pymongo_collection().update_one({}, {"$inc": {"session_epoch": 1}})
    assert await RefreshToken.find({"revoked_at": None}).count() == 1
    assert (await refresh(client, user.refresh_token)).status_code == 401
    assert (await me(client, user.token)).status_code == 401


async def test_a_user_written_before_sessions_existed_can_log_out(client):
    user = await create_user(client)
    await User.get_pymongo_collection().update_one(
        {}, {"$unset": {"session_epoch": "", "revoked_sessions": ""}}
    )
    assert (await me(client, user.token)).status_code == 200
    assert (await client.post("/logout", headers=user.headers)).status_code == 204
    assert (await me(client, user.token)).status_code == 401
    [stored] = await User.get_pymongo_collection().find().to_list()
    assert stored["session_epoch"] == 0 and len(stored["revoked_sessions"]) == 1
    other = await login_pair(client, user.email)
    assert (
        await client.post("/logout/all", headers=bearer(other["access_token"]))
    ).status_code == 204


# Password change ------------------------------------------------------------------------------


async def test_changing_the_password_ends_other_sessions_and_returns_a_new_pair(client):
    user = await create_user(client)
    other = await login_pair(client, user.email)
    response = await client.put(
        "/users/me/password",
        headers=user.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "a brand new secret"},
    )
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    pair = response.json()
    assert pair.keys() == {"access_token", "token_type", "refresh_token", "expires_in"}
    for token in (user.token, other["access_token"]):
        assert (await me(client, token)).status_code == 401
    for token in (user.refresh_token, other["refresh_token"]):
        assert (await refresh(client, token)).status_code == 401
    assert (await me(client, pair["access_token"])).status_code == 200
    assert (await refresh(client, pair["refresh_token"])).status_code == 200
    old = await client.post("/login", data={"username": user.email, "password": DEFAULT_PASSWORD})
    assert old.status_code == 403
    await login_pair(client, user.email, "a brand new secret")


async def test_a_wrong_current_password_is_403_and_changes_nothing(client):
    user = await create_user(client)
    response = await client.put(
        "/users/me/password",
        headers=user.headers,
        json={"current_password": "not my password", "new_password": "a brand new secret"},
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid Credentials"}
    assert (await me(client, user.token)).status_code == 200
    await login_pair(client, user.email)


async def change_password_behind_the_request(monkeypatch, new_hash: str) -> None:
    """Make the victim's own password change land while the request under test is running:
    after it checked the password, before it writes."""
    end_all_sessions = accounts.end_all_sessions

    async def victim_first(user_id, **kwargs):
        await User.get_pymongo_collection().update_one(
            {"_id": user_id},
            {"$set": {"hashed_password": new_hash}, "$inc": {"session_epoch": 1}},
        )
        return await end_all_sessions(user_id, **kwargs)

    monkeypatch.setattr(accounts, "end_all_sessions", victim_first)


async def test_a_password_change_racing_another_one_with_the_old_password_loses(
    client, monkeypatch
):
    """An attacker's request, checked against the old password, must not win the account."""
    user = await create_user(client)
    await change_password_behind_the_request(monkeypatch, "$2b$04$victimsnewhash")
    response = await client.put(
        "/users/me/password",
        headers=user.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "the attacker's own"},
    )
    assert response.status_code == 401
    [stored] = await User.get_pymongo_collection().find().to_list()
    assert stored["hashed_password"] == "$2b$04$victimsnewhash"


async def test_an_account_deletion_racing_a_password_change_deletes_nothing(client, monkeypatch):
    user = await create_user(client)
    post = await create_post(client, user)
    await change_password_behind_the_request(monkeypatch, "$2b$04$victimsnewhash")
    response = await client.request(
        "DELETE", "/users/me", headers=user.headers, json={"password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 401
    assert await User.find().count() == 1
    assert await Post.get(PydanticObjectId(post["id"])) is not None


@pytest.mark.parametrize(
    ("new_password", "message"),
    [
        ("short", "at least 8 characters"),
        ("é" * 73, "at most 72 characters"),
        ("nul\x00byte!", "NUL"),
    ],
    ids=["short", "too-long", "nul"],
)
async def test_a_new_password_breaking_the_rules_is_422(client, new_password, message):
    user = await create_user(client)
    response = await client.put(
        "/users/me/password",
        headers=user.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": new_password},
    )
    assert response.status_code == 422
    assert message in response.text
    assert new_password not in response.text  # the 422 does not echo it
    assert (await me(client, user.token)).status_code == 200


async def test_changing_the_password_needs_a_token(client):
    response = await client.put(
        "/users/me/password", json={"current_password": "x", "new_password": "y" * 8}
    )
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


# Account deletion -----------------------------------------------------------------------------


async def test_deleting_an_account_cascades_and_fixes_vote_counts(client):
    ann, bob, cat = [await create_user(client) for _ in range(3)]
    ann_posts = [await create_post(client, ann), await create_post(client, ann, published=False)]
    bob_post = await create_post(client, bob)
    for voter in (bob, cat):
        assert (await vote(client, voter, ann_posts[0]["id"])).status_code == 201
    for voter in (ann, cat):
        assert (await vote(client, voter, bob_post["id"])).status_code == 201
    before = await client.get(f"/posts/{bob_post['id']}", headers=bob.headers)
    assert before.json()["votes"] == 2
    failed = await client.post("/login", data={"username": ann.email, "password": "wrong one"})
    assert failed.status_code == 403

    response = await client.request(
        "DELETE", "/users/me", headers=ann.headers, json={"password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 204
    assert response.content == b""
    assert await LoginAttempt.find({"key": email_key(ann.email)}).count() == 0

    assert (await me(client, ann.token)).status_code == 401
    assert (await refresh(client, ann.refresh_token)).status_code == 401
    gone = await client.post("/login", data={"username": ann.email, "password": DEFAULT_PASSWORD})
    assert gone.status_code == 403
    assert (await client.get(f"/users/{ann.id}", headers=bob.headers)).status_code == 404
    feed = await client.get("/posts/", headers=bob.headers)
    assert feed.headers["x-total-count"] == "1"
    assert [(p["Post"]["id"], p["votes"]) for p in feed.json()] == [(bob_post["id"], 1)]
    ann_id = PydanticObjectId(ann.id)
    assert await Post.find(Post.owner_id == ann_id).count() == 0
    assert await Vote.find(Vote.user_id == ann_id).count() == 0
    post_ids = [PydanticObjectId(p["id"]) for p in ann_posts]
    assert await Vote.find({"post_id": {"$in": post_ids}}).count() == 0
    assert await RefreshToken.find(RefreshToken.user_id == ann_id).count() == 0
    # The others are untouched.
    assert (await me(client, bob.token)).status_code == 200
    assert await Vote.find(Vote.user_id == PydanticObjectId(cat.id)).count() == 1


async def test_deleting_an_account_needs_the_password(client):
    user = await create_user(client)
    post = await create_post(client, user)
    wrong = await client.request(
        "DELETE", "/users/me", headers=user.headers, json={"password": "not my password"}
    )
    assert wrong.status_code == 403
    assert wrong.json() == {"detail": "Invalid Credentials"}
    missing = await client.request("DELETE", "/users/me", headers=user.headers)
    assert missing.status_code == 422
    anonymous = await client.request("DELETE", "/users/me", json={"password": DEFAULT_PASSWORD})
    assert anonymous.status_code == 401
    assert (await me(client, user.token)).status_code == 200
    assert (await client.get(f"/posts/{post['id']}", headers=user.headers)).status_code == 200


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"password=correct horse battery", "application/x-www-form-urlencoded"),
        (b'"correct horse battery"', "application/json"),
    ],
    ids=["form", "json-string"],
)
async def test_a_body_that_is_not_an_object_is_not_echoed(client, content, content_type):
    user = await create_user(client)
    response = await client.request(
        "DELETE",
        "/users/me",
        headers={**user.headers, "Content-Type": content_type},
        content=content,
    )
    assert response.status_code == 422
    assert "horse" not in response.text
    assert response.json()["detail"][0]["loc"] == ["body"]


async def test_an_email_can_register_again_after_its_account_is_deleted(client):
    user = await create_user(client)
    await client.request(
        "DELETE", "/users/me", headers=user.headers, json={"password": DEFAULT_PASSWORD}
    )
    again = await client.post("/users/", json={"email": user.email, "password": DEFAULT_PASSWORD})
    assert again.status_code == 201
    assert again.json()["id"] != user.id


# Cost -----------------------------------------------------------------------------------------


class CommandCounter(monitoring.CommandListener):
    def __init__(self) -> None:
        self.commands: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_reading_a_post_costs_two_commands_with_ended_sessions_on_the_user(
    settings, restore_beanie
):
    """Revocation adds no round trip: the user lookup and the post's own lookup, no more."""
    counter = CommandCounter()
    app = create_app(settings, command_listeners=[counter])
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            author = await create_user(client)
            ended = await login_pair(client, author.email)
            await client.post("/logout", headers=bearer(ended["access_token"]))
            post = await create_post(client, author)
            for viewer_token in (author.token,):
                counter.commands.clear()
                response = await client.get(f"/posts/{post['id']}", headers=bearer(viewer_token))
                assert response.status_code == 200
                assert counter.commands == ["find", "find"]
            counter.commands.clear()
            refused = await me(client, ended["access_token"])
            assert refused.status_code == 401
            assert counter.commands == ["find"]
