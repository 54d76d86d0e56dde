"""Login, and how every protected route treats bad or missing tokens."""

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from beanie import PydanticObjectId

from service import security
from service.config import Settings
from service.main import create_app
from service.models import User
from tests.conftest import TEST_SECRET_KEY
from tests.factories import DEFAULT_PASSWORD, create_user, register

BEARER = {"www-authenticate": "Bearer"}


async def test_login_returns_a_bearer_token_for_the_user(client):
    user = await register(client, "ann@example.com")
    response = await client.post(
        "/login", data={"username": "ann@example.com", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"access_token", "token_type", "refresh_token", "expires_in"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 30 * 60
    claims = jwt.decode(body["access_token"], TEST_SECRET_KEY, algorithms=["HS256"])
    assert claims["sub"] == claims["user_id"] == user["id"]
    assert claims["exp"] - claims["iat"] == 30 * 60
    assert claims["jti"]
    assert claims["sid"] and claims["ver"] == 0
    # The refresh token is opaque: not a JWT, and not the access token.
    assert body["refresh_token"].count(".") == 0 and len(body["refresh_token"]) >= 43


async def test_login_email_is_trimmed_and_case_insensitive(client):
    await register(client, "ann@example.com")
    response = await client.post(
        "/login", data={"username": "  ANN@Example.com ", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200


async def test_wrong_password_and_unknown_email_get_the_same_403(client):
    await register(client, "ann@example.com")
    wrong_password = await client.post(
        "/login", data={"username": "ann@example.com", "password": "not-the-password"}
    )
    unknown_email = await client.post(
        "/login", data={"username": "nobody@example.com", "password": DEFAULT_PASSWORD}
    )
    for response in (wrong_password, unknown_email):
        assert response.status_code == 403
        assert response.json() == {"detail": "Invalid Credentials"}


class SpyVerifier:
    def __init__(self, real: Any) -> None:
        self.real = real
        self.hashes: list[str] = []

    def verify(self, password: str, hashed: str) -> bool:
        result: bool = self.real.verify(password, hashed)  # a refusal raises before any hashing
        self.hashes.append(hashed)
        return result


@pytest.mark.parametrize(
    ("email", "password"),
    [
        ("nobody@example.com", DEFAULT_PASSWORD),
        ("ann@example.com", "x" * 73),
        ("ann@example.com", "nul\x00byte"),
        ("nobody@example.com", "x" * 5000),
    ],
    ids=["unknown-email", "known-73-bytes", "known-nul", "unknown-5000-chars"],
)
async def test_every_failed_login_checks_one_hash_and_is_403(client, monkeypatch, email, password):
    await register(client, "ann@example.com")
    spy = SpyVerifier(security._verifier)
    monkeypatch.setattr(security, "_verifier", spy)
    response = await client.post("/login", data={"username": email, "password": password})
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid Credentials"}
    # One bcrypt check of the configured cost, as for a wrong password: no timing tell.
    assert len(spy.hashes) == 1 and spy.hashes[0].startswith("$2b$04$")


@pytest.mark.parametrize(
    "data", [{"username": "ann@example.com"}, {"password": DEFAULT_PASSWORD}, {}]
)
async def test_login_missing_a_field_is_422(client, data):
    response = await client.post("/login", data=data)
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"username": "", "password": DEFAULT_PASSWORD}, "username"),
        ({"username": "ann@example.com", "password": ""}, "password"),
        (
            {"username": "ann@example.com", "password": DEFAULT_PASSWORD, "grant_type": "x"},
            "grant_type",
        ),
    ],
)
async def test_the_login_form_refuses_what_its_schema_refuses(client, app, data, field):
    """An empty field is a missing one, and OAuth2's grant can only be `password`: the
    form's schema says both, so a client that follows it is not refused."""
    await register(client, "ann@example.com")
    response = await client.post("/login", data=data)
    assert response.status_code == 422
    assert [error["loc"] for error in response.json()["detail"]] == [["body", field]]
    form = app.openapi()["components"]["schemas"]["LoginForm"]
    assert form["required"] == ["username", "password"]
    assert form["properties"]["username"]["minLength"] == 1
    assert form["properties"]["password"]["minLength"] == 1
    assert form["properties"]["grant_type"]["pattern"] == "^password$"


@pytest.mark.parametrize(
    "extra",
    [
        {"grant_type": "password", "scope": "", "client_id": "swagger"},
        {"grant_type": "", "client_id": "app", "client_secret": "app-secret"},
        {},
    ],
    ids=["swagger-ui", "empty-grant-and-client-secret", "nothing-more"],
)
async def test_the_login_form_takes_what_oauth2_clients_add(client, extra):
    """Swagger UI's Authorize button sends the grant, an empty scope and a client id; other
    clients an empty grant (taken as `password`) or a client secret, which are not used."""
    await register(client, "ann@example.com")
    data = {"username": "ann@example.com", "password": DEFAULT_PASSWORD, **extra}
    response = await client.post("/login", data=data)
    assert response.status_code == 200
    assert response.json()["token_type"] == "bearer"


async def test_login_with_a_json_body_is_422(client):
    await register(client, "ann@example.com")
    response = await client.post(
        "/login", json={"username": "ann@example.com", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 422
    assert isinstance(response.json()["detail"], list)


async def test_token_works_on_a_protected_route(client):
    user = await create_user(client)
    response = await client.get("/users/me", headers=user.headers)
    assert response.status_code == 200
    assert response.json()["id"] == user.id


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": ""},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Token abc"},
    ],
    ids=["none", "empty", "basic", "other-scheme"],
)
async def test_missing_or_non_bearer_header_is_not_authenticated(client, headers):
    response = await client.get("/users/me", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}
    assert response.headers["www-authenticate"] == "Bearer"


def _token(
    claims_update: dict[str, Any] | None = None,
    key: str | None = TEST_SECRET_KEY,
    algorithm: str = "HS256",
    drop: Iterable[str] = (),
) -> str:
    now = datetime.now(UTC)
    claims: dict[str, Any] = {
        "sub": str(PydanticObjectId()),
        "iat": now,
        "exp": now + timedelta(minutes=5),
        "jti": "j",
    }
    claims.update(claims_update or {})
    for name in drop:
        del claims[name]
    return jwt.encode(claims, key, algorithm=algorithm)


async def _assert_rejected(client: httpx.AsyncClient, token: str) -> None:
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert response.json() == {"detail": "Could not validate credentials"}
    assert response.headers["www-authenticate"] == "Bearer"


async def test_expired_token_is_rejected(client):
    user = await create_user(client)
    past = datetime.now(UTC) - timedelta(hours=1)
    await _assert_rejected(client, _token({"sub": user.id, "iat": past, "exp": past}))


async def test_tampered_token_is_rejected(client):
    user = await create_user(client)
    other = await create_user(client)
    header, _, signature = user.token.split(".")
    forged_payload = other.token.split(".")[1]  # someone else's claims, this signature
    await _assert_rejected(client, f"{header}.{forged_payload}.{signature}")
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    await _assert_rejected(client, f"{header}.{user.token.split('.')[1]}.{flipped}")


async def test_alg_none_token_is_rejected(client):
    user = await create_user(client)
    await _assert_rejected(client, _token({"sub": user.id}, key=None, algorithm="none"))


async def test_token_signed_with_another_key_is_rejected(client):
    user = await create_user(client)
    await _assert_rejected(client, _token({"sub": user.id}, key="another-key-" * 4))


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "Bearer", "x" * 500])
async def test_malformed_token_is_rejected(client, token):
    await _assert_rejected(client, token)


@pytest.mark.parametrize("sub", ["not-an-object-id", 12345, ""])
async def test_token_with_a_bad_subject_is_rejected(client, sub):
    await _assert_rejected(client, _token({"sub": sub}))


@pytest.mark.parametrize("claim", ["sub", "exp", "iat", "jti"])
async def test_token_missing_a_required_claim_is_rejected(client, claim):
    user = await create_user(client)
    await _assert_rejected(client, _token({"sub": user.id}, drop=(claim,)))


async def test_token_of_a_deleted_user_is_rejected(client):
    user = await create_user(client)
    assert (await client.get("/users/me", headers=user.headers)).status_code == 200
    await User.get_pymongo_collection().delete_one({"_id": PydanticObjectId(user.id)})
    await _assert_rejected(client, user.token)


async def test_authentication_comes_before_body_validation(client):
    no_body = await client.post("/posts/")
    bad_json = await client.post(
        "/posts/", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    bad_token_bad_json = await client.post(
        "/posts/",
        content=b"{not json",
        headers={"Content-Type": "application/json", "Authorization": "Bearer nope"},
    )
    assert [no_body.status_code, bad_json.status_code] == [401, 401]
    assert no_body.json() == bad_json.json() == {"detail": "Not authenticated"}
    assert bad_token_bad_json.status_code == 401
    assert bad_token_bad_json.json() == {"detail": "Could not validate credentials"}


async def test_authentication_comes_before_path_validation(client):
    response = await client.get("/posts/not-an-id")
    assert response.status_code == 401
    assert response.json() == {"detail": "Not authenticated"}


async def test_authenticated_bad_body_is_still_422(client):
    user = await create_user(client)
    response = await client.post(
        "/posts/",
        content=b"{not json",
        headers={**user.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


async def test_public_routes_do_not_ask_for_a_token(client):
    response = await client.post("/users/", json={"email": "bad", "password": "x"})
    assert response.status_code == 422  # validation, not authentication


async def test_login_validation_error_does_not_echo_the_password(client):
    response = await client.post("/login", data={"password": "a-secret-password"})
    assert response.status_code == 422
    assert "a-secret-password" not in response.text


@pytest.mark.parametrize(
    ("registered", "stored"),
    [
        ("jose\u0301@example.com", "jos\u00e9@example.com"),  # Unicode NFC
        ("dan@\uff25\uff38\uff21\uff2d\uff30\uff2c\uff25.com", "dan@example.com"),  # full-width
        ("  Mixed.Case@Example.COM ", "mixed.case@example.com"),
    ],
    ids=["nfc", "full-width-domain", "case-and-spaces"],
)
async def test_login_accepts_the_exact_string_used_to_register(client, registered, stored):
    user = await register(client, registered)
    assert user["email"] == stored
    response = await client.post(
        "/login", data={"username": registered, "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 200


async def test_login_with_something_that_is_not_an_email_is_403(client):
    response = await client.post(
        "/login", data={"username": "not an email", "password": DEFAULT_PASSWORD}
    )
    assert response.status_code == 403
    assert response.json() == {"detail": "Invalid Credentials"}


async def _login_with(settings: Settings, email: str) -> None:
    app = create_app(settings)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http,
    ):
        response = await http.post("/login", data={"username": email, "password": DEFAULT_PASSWORD})
        assert response.status_code == 200


async def test_login_raises_a_weaker_hash_to_the_configured_cost(client, settings, restore_beanie):
    await register(client, "old@example.com")  # hashed at the suite's cost, 4
    stored = User.get_pymongo_collection()
    await _login_with(settings.model_copy(update={"bcrypt_rounds": 5}), "old@example.com")
    raised_user = await stored.find_one({"email": "old@example.com"})
    assert raised_user is not None
    raised = raised_user["hashed_password"]
    assert raised.startswith("$2b$05$")
    await _login_with(settings, "old@example.com")  # a stronger hash than configured stays
    kept_user = await stored.find_one({"email": "old@example.com"})
    assert kept_user is not None
    kept = kept_user["hashed_password"]
    assert kept == raised
