"""Login throttling: per email and per client address, shared by every API process."""

import asyncio
import hashlib
from datetime import timedelta
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from pydantic import ValidationError

from service.config import Settings
from service.main import create_app
from service.models import LoginAttempt, RefreshToken
from service.models.base import utc_now
from service.security import HASH_WORKERS
from service.throttle import address_key, email_key
from tests.conftest import TEST_SECRET_KEY, app_client, make_settings, running_server
from tests.factories import DEFAULT_PASSWORD, bearer, create_user, login_pair, unique_email

THROTTLED = {"detail": "Too many failed login attempts"}
WINDOW = 15 * 60


async def attempt(
    client: httpx.AsyncClient, email: str, password: str = "wrong password", **headers: str
) -> httpx.Response:
    return await client.post(
        "/login", data={"username": email, "password": password}, headers=headers
    )


async def counted(key: str) -> list[dict[str, Any]]:
    """The key's stored attempts that count, oldest first, by the rule that
    docs/sessions-and-throttling.md states: all but those a success lists (its own, and the
    failures of its email it reset). Successes are recorded on refresh tokens
    (`password_check`), not by deleting attempts."""
    successes = (
        await RefreshToken.get_pymongo_collection()
        .find({"password_check": {"$type": "object"}})
        .to_list()
    )
    listed = {i for success in successes for i in success["password_check"]["attempt_ids"]}
    rows = (
        await LoginAttempt.get_pymongo_collection()
        .find({"key": key})
        .sort([("at", 1), ("_id", 1)])
        .to_list()
    )
    return [row for row in rows if row["_id"] not in listed]


async def backdate_attempts(seconds: float, **query: object) -> None:
    collection = LoginAttempt.get_pymongo_collection()
    async for row in collection.find(query):
        shift = timedelta(seconds=seconds)
        await collection.update_one(
            {"_id": row["_id"]},
            {"$set": {"at": row["at"] - shift, "expires_at": row["expires_at"] - shift}},
        )


async def test_five_failures_for_an_email_lock_it_even_with_the_right_password(client):
    user = await create_user(client)
    for _ in range(5):
        assert (await attempt(client, user.email)).status_code == 403
    refused = await attempt(client, user.email, DEFAULT_PASSWORD)
    assert refused.status_code == 429
    assert refused.json() == THROTTLED
    assert WINDOW - 5 <= int(refused.headers["retry-after"]) <= WINDOW
    # The email's spelling does not matter: it is counted as registration stores it.
    assert (await attempt(client, f"  {user.email.upper()} ")).status_code == 429
    # Another account from the same address is not locked.
    other = await create_user(client)
    await login_pair(client, other.email)


async def test_an_unknown_email_is_throttled_exactly_like_a_known_one(client):
    email = unique_email()
    answers = [(await attempt(client, email)).status_code for _ in range(6)]
    assert answers == [403] * 5 + [429]


async def test_a_success_resets_the_email_counter(client):
    user = await create_user(client)
    for _ in range(2):
        for _ in range(4):
            assert (await attempt(client, user.email)).status_code == 403
        await login_pair(client, user.email)
    assert await counted(email_key(user.email)) == []
    # Reset, not lifted: the next 5 failures are checked and lock the email again.
    for _ in range(5):
        assert (await attempt(client, user.email)).status_code == 403
    assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 429
    assert len(await counted(email_key(user.email))) == 5


async def test_the_lock_lifts_when_the_window_has_passed(client):
    user = await create_user(client)
    for _ in range(5):
        await attempt(client, user.email)
    # Refused attempts are not counted: waiting out the window is enough, however many came.
    for _ in range(3):
        assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 429
    await backdate_attempts(WINDOW + 1)
    await login_pair(client, user.email)


async def test_retry_after_says_when_the_oldest_failure_leaves_the_window(client):
    user = await create_user(client)
    for _ in range(5):
        await attempt(client, user.email)
    oldest, *_ = await counted(email_key(user.email))
    await backdate_attempts(600, _id=oldest["_id"])
    refused = await attempt(client, user.email, DEFAULT_PASSWORD)
    assert 295 <= int(refused.headers["retry-after"]) <= 300


async def test_a_hundred_failures_from_one_address_lock_the_address(client, app):
    user = await create_user(client)
    for _ in range(100):
        assert (await attempt(client, unique_email())).status_code == 403
    refused = await attempt(client, user.email, DEFAULT_PASSWORD)
    assert refused.status_code == 429
    assert refused.json() == THROTTLED
    # A forwarded address from an untrusted peer changes nothing.
    forged = await attempt(client, user.email, DEFAULT_PASSWORD, **{"X-Forwarded-For": "1.2.3.4"})
    assert forged.status_code == 429
    # Another client address is not locked.
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 5000))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as elsewhere:
        assert (await attempt(elsewhere, user.email, DEFAULT_PASSWORD)).status_code == 200


async def test_successes_never_count_against_their_address(settings, restore_beanie):
    async with app_client(settings, login_max_failures_per_address=10) as http:
        users = [await create_user(http) for _ in range(3)]
        for turn in range(30):
            await login_pair(http, users[turn % 3].email)
        # 33 successes from this address, over three times its limit, and still all 10
        # failures are checked.
        for _ in range(10):
            assert (await attempt(http, unique_email())).status_code == 403
        refused = await attempt(http, users[0].email, DEFAULT_PASSWORD)
        assert refused.status_code == 429
        assert len(await counted(address_key("127.0.0.1"))) == 10


async def test_simultaneous_failures_never_get_more_than_the_limit_checked(client):
    user = await create_user(client)
    answers = await asyncio.gather(*(attempt(client, user.email) for _ in range(20)))
    codes = [answer.status_code for answer in answers]
    assert set(codes) <= {403, 429}
    # At most the limit is checked. A burst may refuse more than it strictly had to (when
    # every attempt is written before any counts, all are refused): the limit errs on the
    # closed side, and what was refused is taken back, so the email is not locked by it.
    checked = codes.count(403)
    assert checked <= 5
    # Exactly the checked attempts are counted; the refused ones were taken back.
    assert len(await counted(email_key(user.email))) == checked
    stored = await LoginAttempt.find({"key": email_key(user.email)}).count()
    assert stored == checked + 1  # + the login of create_user, a success
    # So the email is locked if and only if the limit was checked, and its next attempt says so.
    after = await attempt(client, user.email)
    assert after.status_code == (429 if checked == 5 else 403)


async def test_attempts_are_stored_without_the_email(client):
    email = unique_email()
    await attempt(client, email)
    rows = await LoginAttempt.get_pymongo_collection().find().to_list()
    assert sorted(row["key"] for row in rows) == sorted(
        [email_key(email), address_key("127.0.0.1")]
    )
    assert email not in str(rows)
    assert all(row["expires_at"] - row["at"] == timedelta(seconds=WINDOW) for row in rows)
    # A failure's two records both say so.
    assert [row["failed"] for row in rows] == [True, True]


async def test_a_success_writes_nothing_under_its_address(client):
    """What a login reads of its address is the address's failures, however many people log
    in through it: successes leave no record there."""
    users = [await create_user(client) for _ in range(3)]
    for user in users:
        await login_pair(client, user.email)
    rows = await LoginAttempt.get_pymongo_collection().find().to_list()
    assert len(rows) == 6  # create_user logs in too: two successes per email
    assert {row["key"] for row in rows} == {email_key(user.email) for user in users}
    assert all(row["failed"] is None for row in rows)


async def test_simultaneous_failures_from_one_address_never_get_more_than_its_limit_checked(
    settings, restore_beanie
):
    """Each email differs, so only the address's limit can stop them: within one process,
    each count sees the failures of the checks that ran before it (one per hashing thread at
    a time), so at most the limit is checked, plus one per other hashing thread."""
    async with app_client(settings, login_max_failures_per_address=3) as http:
        answers = await asyncio.gather(*(attempt(http, unique_email()) for _ in range(20)))
        codes = [answer.status_code for answer in answers]
        assert set(codes) == {403, 429}
        assert codes.count(403) <= 3 + (HASH_WORKERS - 1)
        failures = await LoginAttempt.find(
            {"key": address_key("127.0.0.1"), "failed": True}
        ).count()
        assert failures == codes.count(403)
        refused = await attempt(http, unique_email())
        assert refused.status_code == 429


async def test_records_of_an_earlier_version_do_not_count_against_the_address(client):
    """Before failures were recorded under the address, every attempt was, successes
    included: those records (no `failed: true`) are not failures and are not counted."""
    now = utc_now()
    await LoginAttempt.get_pymongo_collection().insert_many(
        [
            {
                "key": address_key("127.0.0.1"),
                "at": now,
                "expires_at": now + timedelta(seconds=WINDOW),
                "failed": None,
            }
            for _ in range(150)
        ]
    )
    user = await create_user(client)
    assert (await attempt(client, user.email, DEFAULT_PASSWORD)).status_code == 200


async def test_a_success_is_recorded_on_its_session_without_the_email(client):
    user = await create_user(client)
    await attempt(client, user.email)
    [failure] = await counted(email_key(user.email))
    pair = await login_pair(client, user.email)
    first = await RefreshToken.get_pymongo_collection().find_one(
        {"token_hash": hashlib.sha256(pair["refresh_token"].encode()).hexdigest()}
    )
    assert first is not None
    check = first["password_check"]
    assert check["email_key"] == email_key(user.email)
    assert check["address_key"] == address_key("127.0.0.1")
    # Its own attempt, then the failure of its email that it reset.
    assert len(check["attempt_ids"]) == 2 and check["attempt_ids"][1] == failure["_id"]
    own = await LoginAttempt.get_pymongo_collection().find_one({"_id": check["attempt_ids"][0]})
    assert own is not None and own["key"] == email_key(user.email) and own["failed"] is None
    assert user.email not in str(first)
    # The tokens of later refreshes record nothing: only a password check begins a session.
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    digest = hashlib.sha256(refreshed.json()["refresh_token"].encode()).hexdigest()
    next_token = await RefreshToken.get_pymongo_collection().find_one({"token_hash": digest})
    assert next_token is not None and next_token["password_check"] is None


async def test_password_checks_of_a_logged_in_user_are_throttled_too(client):
    user = await create_user(client)
    body = {"current_password": "wrong password", "new_password": "a brand new secret"}
    for _ in range(5):
        response = await client.put("/users/me/password", headers=user.headers, json=body)
        assert response.status_code == 403
    body["current_password"] = DEFAULT_PASSWORD
    refused = await client.put("/users/me/password", headers=user.headers, json=body)
    assert refused.status_code == 429
    assert "retry-after" in refused.headers
    deletion = await client.request(
        "DELETE", "/users/me", headers=user.headers, json={"password": DEFAULT_PASSWORD}
    )
    assert deletion.status_code == 429
    assert (await client.get("/users/me", headers=user.headers)).status_code == 200


async def test_a_password_change_resets_the_email_counter(client):
    user = await create_user(client)
    for _ in range(4):
        assert (await attempt(client, user.email)).status_code == 403
    changed = await client.put(
        "/users/me/password",
        headers=user.headers,
        json={"current_password": DEFAULT_PASSWORD, "new_password": "a brand new secret"},
    )
    assert changed.status_code == 200
    assert await counted(email_key(user.email)) == []
    # Without the reset the fifth failure would be the last one checked.
    for _ in range(5):
        assert (await attempt(client, user.email)).status_code == 403
    assert (await attempt(client, user.email, "a brand new secret")).status_code == 429


async def test_a_success_does_not_reset_its_address(settings, restore_beanie):
    """Only the email's counter resets: logging in to an account of one's own does not buy
    an address more guesses at others."""
    async with app_client(settings, login_max_failures_per_address=3) as http:
        user = await create_user(http)
        for _ in range(2):
            assert (await attempt(http, unique_email())).status_code == 403
        await login_pair(http, user.email)
        assert (await attempt(http, unique_email())).status_code == 403
        assert (await attempt(http, unique_email())).status_code == 429


async def test_deleting_an_account_leaves_its_successes_uncounted(settings, restore_beanie):
    """Its refresh tokens, which record its successful logins, go with it; the address
    records of those logins go too rather than start counting as failures."""
    async with app_client(settings, login_max_failures_per_address=3) as http:
        user = await create_user(http)
        again = await login_pair(http, user.email)
        deleted = await http.request(
            "DELETE",
            "/users/me",
            headers=bearer(again["access_token"]),
            json={"password": DEFAULT_PASSWORD},
        )
        assert deleted.status_code == 204
        assert await LoginAttempt.find({}).count() == 0
        for _ in range(3):
            assert (await attempt(http, unique_email())).status_code == 403
        assert (await attempt(http, unique_email())).status_code == 429


def test_address_keys_group_ipv6_by_64_and_unwrap_mapped_ipv4():
    assert address_key("203.0.113.9") == "address:203.0.113.9"
    assert address_key("2001:db8:1:2:aaaa::1") == address_key("2001:db8:1:2:bbbb::2")
    assert address_key("2001:db8:1:2::1") == "address:2001:db8:1:2::/64"
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:203.0.113.9") == "address:203.0.113.9"
    assert address_key(None) == "address:unknown"


def test_trusted_proxies_must_be_addresses_or_networks(monkeypatch):
    monkeypatch.setenv("TRUSTED_PROXIES", "10.1.2.3/8, 192.0.2.1, 2001:db8::/32")
    configured = Settings(_env_file=None)
    # Canonical networks: uvicorn's matcher would never match 10.1.2.3/8 as written.
    assert configured.trusted_proxies == ["10.0.0.0/8", "192.0.2.1/32", "2001:db8::/32"]
    assert "::ffff:10.0.0.0/104" in configured.trusted_proxy_networks
    monkeypatch.setenv("TRUSTED_PROXIES", "proxy.example.com")
    with pytest.raises(ValidationError, match="not an IP address or network"):
        Settings(_env_file=None)


async def test_a_trusted_proxy_names_the_client(settings, restore_beanie):
    proxied = make_settings(
        settings.mongodb_url or "",
        settings.mongodb_db,
        trusted_proxies="10.1.2.3/8",  # host bits set: taken as 10.0.0.0/8
        login_max_failures_per_address=3,
    )
    app = create_app(proxied)
    async with LifespanManager(app):
        proxy = httpx.ASGITransport(app=app, client=("10.1.2.3", 4000))
        dual_stack = httpx.ASGITransport(app=app, client=("::ffff:10.9.9.9", 4000))
        stranger = httpx.ASGITransport(app=app, client=("198.51.100.7", 4000))
        async with (
            httpx.AsyncClient(transport=proxy, base_url="http://t") as via_proxy,
            httpx.AsyncClient(transport=dual_stack, base_url="http://t") as via_mapped,
            httpx.AsyncClient(transport=stranger, base_url="http://t") as direct,
        ):
            mapped = {"X-Forwarded-For": "203.0.113.7"}
            assert (await attempt(via_mapped, unique_email(), **mapped)).status_code == 403
            spoof = {"X-Forwarded-For": "203.0.113.5"}
            for _ in range(3):
                assert (await attempt(via_proxy, unique_email(), **spoof)).status_code == 403
            assert (await attempt(via_proxy, unique_email(), **spoof)).status_code == 429
            other_client = {"X-Forwarded-For": "203.0.113.6"}
            assert (await attempt(via_proxy, unique_email(), **other_client)).status_code == 403
            # From a peer that is not a trusted proxy the header is ignored: the peer counts.
            for _ in range(3):
                assert (await attempt(direct, unique_email(), **spoof)).status_code == 403
            assert (await attempt(direct, unique_email(), **other_client)).status_code == 429
        rows = await LoginAttempt.get_pymongo_collection().find().to_list()
        keys = {row["key"] for row in rows}
        assert {
            "address:203.0.113.5",
            "address:203.0.113.6",
            "address:203.0.113.7",
            "address:198.51.100.7",
        } <= keys


async def test_two_api_processes_share_sessions_and_the_throttle(client, settings, tmp_path):
    """The in-process app and a `social-api serve` process on the same database agree."""
    env = {
        "MONGODB_URL": settings.mongodb_url or "",
        "MONGODB_DB": settings.mongodb_db,
        "SECRET_KEY": TEST_SECRET_KEY,
    }
    user = await create_user(client)
    with running_server(tmp_path, **env) as (base, _):
        async with httpx.AsyncClient(base_url=base, timeout=30) as other:
            # A session started here ends there, and here honours it on the next request.
            pair = await login_pair(client, user.email)
            assert (
                await other.get("/users/me", headers=bearer(pair["access_token"]))
            ).status_code == 200
            assert (
                await other.post("/logout", headers=bearer(pair["access_token"]))
            ).status_code == 204
            assert (
                await client.get("/users/me", headers=bearer(pair["access_token"]))
            ).status_code == 401
            refused = await client.post(
                "/auth/refresh", json={"refresh_token": pair["refresh_token"]}
            )
            assert refused.status_code == 401
            # Logout-all there ends the sessions made here.
            assert (await other.post("/logout/all", headers=user.headers)).status_code == 204
            assert (await client.get("/users/me", headers=user.headers)).status_code == 401
            # Failures on both add up to one throttle.
            for http in (client, other, client, other, client):
                assert (await attempt(http, user.email)).status_code == 403
            for http in (other, client):
                assert (await attempt(http, user.email, DEFAULT_PASSWORD)).status_code == 429
