"""HTTP tests for /users: registration, normalisation, password rules, hashing, reads."""

import asyncio
import re
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from service.models import User, UserCreate
from tests.factories import DEFAULT_PASSWORD, create_user, login, register

MISSING_ID = "0123456789abcdef01234567"
DUPLICATE = {"detail": "Email already registered"}
NOT_AUTHENTICATED = {"detail": "Not authenticated"}


def error_messages(response: httpx.Response) -> str:
    return " ".join(error["msg"] for error in response.json()["detail"])


async def raw_user(email: str) -> dict[str, Any] | None:
    document: dict[str, Any] | None = await User.get_pymongo_collection().find_one({"email": email})
    return document


async def count_users() -> int:
    count: int = await User.get_pymongo_collection().count_documents({})
    return count


@pytest.mark.parametrize("path", ["/users/", "/users"])
async def test_register_answers_201_on_both_spellings(client: httpx.AsyncClient, path: str) -> None:
    response = await client.post(path, json={"email": "ann@example.com", "password": "password1"})

    assert response.status_code == 201, response.text
    body = response.json()
    assert body.keys() == {"id", "email", "created_at", "email_verified"}
    assert body["email"] == "ann@example.com"
    assert len(body["id"]) == 24
    int(body["id"], 16)


async def test_created_at_is_iso_8601_in_utc(client: httpx.AsyncClient) -> None:
    body = await register(client)

    created_at = body["created_at"]
    assert created_at.endswith(("Z", "+00:00"))
    parsed = datetime.fromisoformat(created_at)
    assert parsed.utcoffset() == timedelta(0)


async def test_email_is_trimmed_and_lower_cased(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users/", json={"email": "  Bob@X.com ", "password": DEFAULT_PASSWORD}
    )

    assert response.status_code == 201, response.text
    assert response.json()["email"] == "bob@x.com"
    stored = await raw_user("bob@x.com")
    assert stored is not None
    assert stored["email"] == "bob@x.com"


async def test_same_email_in_another_case_is_409(client: httpx.AsyncClient) -> None:
    await register(client, "  Bob@X.com ")

    response = await client.post(
        "/users/", json={"email": "bob@x.com", "password": DEFAULT_PASSWORD}
    )

    assert response.status_code == 409
    assert response.json() == DUPLICATE
    assert await count_users() == 1


@pytest.mark.parametrize("email", ["bob@x.com", "BOB@X.COM", "  bOb@x.CoM  "])
async def test_login_works_with_any_case_of_the_email(
    client: httpx.AsyncClient, email: str
) -> None:
    user = await register(client, "Bob@X.com")

    token = await login(client, email)
    response = await client.get("/users/me", headers={"Authorization": f"Bearer {token}"})

    assert response.status_code == 200
    assert response.json()["id"] == user["id"]


@pytest.mark.parametrize("email", ["not-an-email", "a@", "@x.com", "", "a b@x.com", 42])
async def test_invalid_email_is_422(client: httpx.AsyncClient, email: object) -> None:
    response = await client.post("/users/", json={"email": email, "password": DEFAULT_PASSWORD})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "email"]
    assert await count_users() == 0


@pytest.mark.parametrize(
    "email", ["ann@example.test", "ann@qa.example", "Ann@x.INVALID", "ann@dev.localhost"]
)
async def test_the_reserved_test_domains_are_addresses_like_any_other(
    client: httpx.AsyncClient, email: str
) -> None:
    """RFC 2606's names for tests and documentation: clients use them in their fixtures."""
    response = await client.post("/users/", json={"email": email, "password": DEFAULT_PASSWORD})

    assert response.status_code == 201, response.text
    assert response.json()["email"] == email.lower()
    assert await login(client, email, DEFAULT_PASSWORD)


@pytest.mark.parametrize("email", ["ann@printer.local", "ann@x.onion", "ann@1.0.10.in-addr.arpa"])
async def test_the_other_special_use_domains_are_422_as_the_schema_says(
    client: httpx.AsyncClient, email: str
) -> None:
    response = await client.post("/users/", json={"email": email, "password": DEFAULT_PASSWORD})

    assert response.status_code == 422
    assert "special-use or reserved name" in response.json()["detail"][0]["msg"]
    assert await count_users() == 0
    pattern = UserCreate.model_json_schema()["properties"]["email"]["pattern"]
    assert not re.search(pattern, email)
    assert re.search(pattern, "ann@example.test")


@pytest.mark.parametrize(
    "email",
    ["ann@localhost", '"ann smith"@example.com', "ann@[127.0.0.1]", "a@" + "x" * 250 + ".com"],
)
async def test_what_the_email_schema_refuses_is_422(client: httpx.AsyncClient, email: str) -> None:
    """Beyond JSON Schema's `email` format: a domain with a dot, no IP address, no quoted
    local part, at most 254 characters. The schema says each, so no client that follows it
    is refused."""
    response = await client.post("/users/", json={"email": email, "password": DEFAULT_PASSWORD})

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "email"]
    schema = UserCreate.model_json_schema()["properties"]["email"]
    assert len(email) > schema["maxLength"] or not re.search(schema["pattern"], email)


@pytest.mark.parametrize(
    ("payload", "missing"),
    [
        ({"password": DEFAULT_PASSWORD}, {"email"}),
        ({"email": "ann@example.com"}, {"password"}),
        ({}, {"email", "password"}),
    ],
)
async def test_missing_fields_are_422(
    client: httpx.AsyncClient, payload: dict[str, str], missing: set[str]
) -> None:
    response = await client.post("/users/", json=payload)

    assert response.status_code == 422
    detail = response.json()["detail"]
    assert {error["loc"][-1] for error in detail if error["type"] == "missing"} == missing


async def test_password_shorter_than_8_characters_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users/", json={"email": "ann@example.com", "password": "1234567"}
    )

    assert response.status_code == 422
    assert "8 characters" in error_messages(response)
    assert await count_users() == 0


async def test_password_of_8_characters_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users/", json={"email": "ann@example.com", "password": "12345678"}
    )

    assert response.status_code == 201, response.text
    assert response.json()["email"] == "ann@example.com"


async def test_password_of_72_bytes_is_accepted_and_usable(client: httpx.AsyncClient) -> None:
    password = "p" * 72
    response = await client.post("/users/", json={"email": "ann@example.com", "password": password})

    assert response.status_code == 201, response.text
    assert response.json()["email"] == "ann@example.com"
    assert await login(client, "ann@example.com", password)


async def test_password_of_73_characters_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/users/", json={"email": "ann@example.com", "password": "p" * 73})

    assert response.status_code == 422
    assert "at most 72 characters" in error_messages(response)
    assert await count_users() == 0


async def test_multibyte_password_of_72_bytes_is_accepted(client: httpx.AsyncClient) -> None:
    password = "€" * 24  # 24 characters, 72 bytes in UTF-8
    response = await client.post("/users/", json={"email": "ann@example.com", "password": password})

    assert response.status_code == 201, response.text
    assert response.json()["email"] == "ann@example.com"
    assert await login(client, "ann@example.com", password)


@pytest.mark.parametrize("password", ["€" * 25, "密码" * 36], ids=["75-bytes", "216-bytes"])
async def test_a_password_over_bcrypts_72_bytes_is_accepted_and_every_byte_counts(
    client: httpx.AsyncClient, password: str
) -> None:
    """The limit counts characters, as the schema does: a passphrase in a script of two or
    three bytes a character may be as long as any other, and bcrypt's first 72 bytes are not
    all that is checked."""
    response = await client.post("/users/", json={"email": "ann@example.com", "password": password})

    assert response.status_code == 201, response.text
    assert await login(client, "ann@example.com", password)
    stored = await raw_user("ann@example.com")
    assert stored is not None and stored["hashed_password"].startswith("$bcrypt-sha256$")
    same_first_72_bytes = password[:-1] + "x"
    refused = await client.post(
        "/login", data={"username": "ann@example.com", "password": same_first_72_bytes}
    )
    assert refused.status_code == 403


def strings_in(body: Any) -> list[str]:
    if isinstance(body, dict):
        return [s for value in body.values() for s in strings_in(value)]
    if isinstance(body, list):
        return [s for value in body for s in strings_in(value)]
    return [body] if isinstance(body, str) else []


@pytest.mark.parametrize(
    "payload",
    [
        {"email": "ann@example.com", "password": "short12"},
        {"email": "ann@example.com", "password": "p" * 73},
        {"email": "ann@example.com", "password": "€" * 73},
        {"email": "not-an-email", "password": "a valid secret"},
        {"password": "a valid secret"},
    ],
    ids=["too-short", "73-bytes", "75-utf8-bytes", "bad-email", "no-email"],
)
async def test_rejected_registration_never_echoes_the_password(
    client: httpx.AsyncClient, payload: dict[str, str]
) -> None:
    response = await client.post("/users/", json=payload)

    assert response.status_code == 422
    assert payload["password"] not in strings_in(response.json())
    assert payload["password"] not in response.text


async def test_password_is_stored_only_as_a_bcrypt_hash(client: httpx.AsyncClient) -> None:
    await register(client, "ann@example.com", DEFAULT_PASSWORD)

    stored = await raw_user("ann@example.com")

    assert stored is not None
    assert "password" not in stored
    assert stored["hashed_password"].startswith("$2b$")
    assert stored["hashed_password"] != DEFAULT_PASSWORD
    assert DEFAULT_PASSWORD not in stored.values()


async def test_same_password_gets_different_salted_hashes(client: httpx.AsyncClient) -> None:
    await register(client, "ann@example.com", DEFAULT_PASSWORD)
    await register(client, "bob@example.com", DEFAULT_PASSWORD)

    ann = await raw_user("ann@example.com")
    bob = await raw_user("bob@example.com")

    assert ann is not None
    assert bob is not None
    assert ann["hashed_password"] != bob["hashed_password"]


async def test_me_returns_the_tokens_user(client: httpx.AsyncClient) -> None:
    await create_user(client)  # someone else, so "the first user" would be wrong
    user = await create_user(client)

    response = await client.get("/users/me", headers=user.headers)

    assert response.status_code == 200
    body = response.json()
    assert body.keys() == {"id", "email", "created_at", "email_verified", "role"}
    assert (body["id"], body["email"], body["role"]) == (user.id, user.email, "user")


async def test_read_another_user_by_id(client: httpx.AsyncClient) -> None:
    reader = await create_user(client)
    other = await register(client)

    response = await client.get(f"/users/{other['id']}", headers=reader.headers)

    assert response.status_code == 200
    assert response.json() == other


async def test_read_missing_user_is_404(client: httpx.AsyncClient) -> None:
    reader = await create_user(client)

    response = await client.get(f"/users/{MISSING_ID}", headers=reader.headers)

    assert response.status_code == 404
    assert response.json() == {"detail": f"User with id: {MISSING_ID} does not exist"}


@pytest.mark.parametrize("user_id", ["123", "not-an-object-id", "0123456789abcdef0123456z"])
async def test_read_user_with_malformed_id_is_422(client: httpx.AsyncClient, user_id: str) -> None:
    reader = await create_user(client)

    response = await client.get(f"/users/{user_id}", headers=reader.headers)

    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "user_id"]


@pytest.mark.parametrize("path", ["/users/me", f"/users/{MISSING_ID}", "/users/not-an-id"])
async def test_reads_without_token_are_401(client: httpx.AsyncClient, path: str) -> None:
    await register(client)

    response = await client.get(path)

    assert response.status_code == 401
    assert response.json() == NOT_AUTHENTICATED
    assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_simultaneous_registrations_of_one_email_give_one_201(
    client: httpx.AsyncClient,
) -> None:
    payload = {"email": "race@example.com", "password": DEFAULT_PASSWORD}

    responses = await asyncio.gather(*(client.post("/users/", json=payload) for _ in range(8)))

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 7, [response.text for response in responses]
    assert all(r.json() == DUPLICATE for r in responses if r.status_code == 409)
    assert await count_users() == 1


async def test_simultaneous_registrations_in_different_cases_give_one_201(
    client: httpx.AsyncClient,
) -> None:
    emails = [
        "race@example.com",
        "RACE@example.com",
        "Race@Example.com",
        "race@EXAMPLE.COM",
        "rAcE@eXaMpLe.CoM",
        "RACE@EXAMPLE.COM",
        " race@example.com",
        "Race@example.com ",
    ]

    responses = await asyncio.gather(
        *(client.post("/users/", json={"email": e, "password": DEFAULT_PASSWORD}) for e in emails)
    )

    statuses = sorted(response.status_code for response in responses)
    assert statuses == [201] + [409] * 7, [response.text for response in responses]
    assert all(r.json() == DUPLICATE for r in responses if r.status_code == 409)
    [created] = [r.json() for r in responses if r.status_code == 201]
    assert created["email"] == "race@example.com"
    assert await count_users() == 1


async def test_password_with_a_nul_character_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users/", json={"email": "nul@example.com", "password": "abc\u0000defgh"}
    )
    assert response.status_code == 422
    assert "NUL" in response.json()["detail"][0]["msg"]


async def test_email_with_a_display_name_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/users/", json={"email": "Carol <carol@example.com>", "password": "password123"}
    )
    assert response.status_code == 422
    assert "bare address" in response.json()["detail"][0]["msg"]
