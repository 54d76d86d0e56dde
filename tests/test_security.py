"""Unit tests for hashing and tokens, without HTTP or a database."""

import base64
import json
import os
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from service import security
from tests.conftest import TEST_SECRET_KEY, make_settings

SETTINGS = make_settings("mongodb://unused", "unused")


def test_hash_is_salted_bcrypt_of_the_configured_cost():
    first = security.hash_password_sync("password123", rounds=4)
    second = security.hash_password_sync("password123", rounds=4)
    assert first.startswith("$2b$04$")
    assert first != second  # a fresh salt each time
    assert "password123" not in first


def test_verify_accepts_the_password_and_rejects_others():
    hashed = security.hash_password_sync("password123", rounds=4)
    assert security.verify_password_sync("password123", hashed, rounds=4)
    assert not security.verify_password_sync("password124", hashed, rounds=4)


@pytest.mark.parametrize(
    "password",
    ["x" * 73, "x" * 5000, "with\x00nul", "\ud800surrogate"],
    ids=["73-bytes", "5000-chars", "nul", "surrogate"],
)
def test_verify_fails_quietly_for_passwords_bcrypt_cannot_take(password):
    hashed = security.hash_password_sync("x" * 72, rounds=4)
    assert security.verify_password_sync(password, hashed, rounds=4) is False


def test_a_password_over_72_bytes_never_matches_its_first_72():
    hashed = security.hash_password_sync("x" * 72, rounds=4)
    assert security.verify_password_sync("x" * 72, hashed, rounds=4)
    assert not security.verify_password_sync("x" * 72 + "y", hashed, rounds=4)


def test_a_password_over_72_bytes_is_digested_first_and_every_byte_counts():
    password = "€" * 30  # 90 bytes
    hashed = security.hash_password_sync(password, rounds=4)
    assert hashed.startswith("$bcrypt-sha256$v=2,t=2b,r=4$")
    assert security.verify_password_sync(password, hashed, rounds=4)
    assert not security.verify_password_sync("€" * 24 + "x" * 18, hashed, rounds=4)
    assert security.needs_rehash(hashed, rounds=5) and not security.needs_rehash(hashed, rounds=4)


def test_verify_fails_quietly_for_a_malformed_stored_hash():
    assert security.verify_password_sync("password123", "not-a-hash", rounds=4) is False


async def test_async_hashing_round_trip():
    hashed = await security.hash_password("s3cret-pass", SETTINGS)
    assert await security.verify_password("s3cret-pass", hashed, SETTINGS)
    assert not await security.verify_password("wrong-pass", hashed, SETTINGS)


async def test_unknown_user_never_verifies():
    assert not await security.verify_password("anything", None, SETTINGS)


def test_token_carries_the_course_claims():
    now = datetime(2026, 1, 1, tzinfo=UTC)
    token = security.create_access_token(
        "6b05fd523f23202455a49a96", SETTINGS, session_id="s1", epoch=3, now=now
    )
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    claims = jwt.decode(token, TEST_SECRET_KEY, algorithms=["HS256"], options={"verify_exp": False})
    assert header["alg"] == "HS256"
    assert claims["sub"] == claims["user_id"] == "6b05fd523f23202455a49a96"
    assert claims["exp"] - claims["iat"] == 30 * 60
    assert len(claims["jti"]) == 32
    assert claims["sid"] == "s1" and claims["ver"] == 3


def test_each_token_has_its_own_id():
    one = security.decode_access_token(
        security.create_access_token("a" * 24, SETTINGS, session_id="s", epoch=0), SETTINGS
    )
    two = security.decode_access_token(
        security.create_access_token("a" * 24, SETTINGS, session_id="s", epoch=0), SETTINGS
    )
    assert one.jti != two.jti
    assert one.sub == "a" * 24


def test_expired_token_is_rejected():
    past = datetime.now(UTC) - timedelta(minutes=31)
    token = security.create_access_token("a" * 24, SETTINGS, session_id="s", epoch=0, now=past)
    with pytest.raises(jwt.ExpiredSignatureError):
        security.decode_access_token(token, SETTINGS)


def test_a_token_verified_before_is_still_rejected_once_it_expires():
    # Verified tokens are remembered (security.decode_access_token): the expiry is checked
    # again on each use, not only the first time.
    issued = datetime.now(UTC) - timedelta(minutes=29)
    token = security.create_access_token("a" * 24, SETTINGS, session_id="s", epoch=0, now=issued)
    assert security.decode_access_token(token, SETTINGS).sub == "a" * 24
    assert security.decode_access_token(token, SETTINGS).sub == "a" * 24
    with pytest.raises(jwt.ExpiredSignatureError):
        security.decode_access_token(token, SETTINGS, now=issued + timedelta(minutes=30))


def test_a_token_verified_before_is_rejected_under_another_key():
    token = security.create_access_token("a" * 24, SETTINGS, session_id="s", epoch=0)
    assert security.decode_access_token(token, SETTINGS).sub == "a" * 24
    rotated = make_settings("mongodb://unused", "unused", secret_key="r" * 64)
    with pytest.raises(jwt.InvalidSignatureError):
        security.decode_access_token(token, rotated)


def test_token_signed_with_another_key_is_rejected():
    token = jwt.encode({"sub": "a" * 24, "exp": 4102444800, "iat": 0, "jti": "x"}, "k" * 40)
    with pytest.raises(jwt.InvalidSignatureError):
        security.decode_access_token(token, SETTINGS)


def test_unsigned_token_is_rejected():
    token = jwt.encode(
        {"sub": "a" * 24, "exp": 4102444800, "iat": 0, "jti": "x"}, None, algorithm="none"
    )
    with pytest.raises(jwt.InvalidAlgorithmError):
        security.decode_access_token(token, SETTINGS)


def test_token_of_another_hmac_algorithm_is_rejected():
    token = jwt.encode(
        {"sub": "a" * 24, "exp": 4102444800, "iat": 0, "jti": "x"},
        TEST_SECRET_KEY,
        algorithm="HS512",
    )
    with pytest.raises(jwt.InvalidAlgorithmError):
        security.decode_access_token(token, SETTINGS)


@pytest.mark.parametrize("missing", ["sub", "exp", "iat", "jti"])
def test_token_missing_a_claim_is_rejected(missing):
    claims = {"sub": "a" * 24, "exp": 4102444800, "iat": 0, "jti": "x"}
    del claims[missing]
    token = jwt.encode(claims, TEST_SECRET_KEY, algorithm="HS256")
    with pytest.raises(jwt.MissingRequiredClaimError):
        security.decode_access_token(token, SETTINGS)


@pytest.mark.parametrize(
    ("hashed", "rounds", "expected"),
    [
        ("$2b$04$abc", 5, True),
        ("$2b$12$abc", 12, False),
        ("$2b$13$abc", 12, False),
        ("x", 12, False),
        ("$bcrypt-sha256$v=2,t=2b,r=4$salt$digest", 5, True),
        ("$bcrypt-sha256$v=2,t=2b,r=12$salt$digest", 12, False),
        ("$bcrypt-sha256$v=2,t=2b$salt$digest", 12, False),
    ],
)
def test_needs_rehash_only_for_a_lower_cost(hashed, rounds, expected):
    assert security.needs_rehash(hashed, rounds) is expected


class CountingVerifier:
    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.hashes: list[str] = []

    def verify(self, password: str, hashed: str) -> bool:
        self.hashes.append(hashed)
        return bool(self.inner.verify(password, hashed))


@pytest.mark.parametrize(
    ("stored_rounds", "password", "checks"),
    [(6, "wrong password", 2), (6, "right password", 1), (5, "wrong password", 1)],
    ids=["cheaper-hash-wrong", "cheaper-hash-right", "same-cost-wrong"],
)
def test_a_wrong_password_on_a_cheaper_hash_costs_what_an_unknown_email_costs(
    monkeypatch, stored_rounds, password, checks
):
    """After BCRYPT_ROUNDS rose, a failure on an old hash also checks the dummy hash."""
    stored = security.hash_password_sync("right password", stored_rounds)
    counter = CountingVerifier(security._verifier)
    monkeypatch.setattr(security, "_verifier", counter)
    ok = security.verify_password_sync(password, stored, 5 if stored_rounds == 5 else 8)
    assert ok is (password == "right password")
    assert len(counter.hashes) == checks
    if checks == 2:
        assert counter.hashes[1] == security._dummy_hash(8)


def test_hashes_run_at_a_lower_priority_than_the_event_loop():
    """Where cores are shared, a hash waits rather than a read (see security.HASH_NICENESS)."""

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    expected = min(19, priority() + security.HASH_NICENESS)
    assert security._hash_pool.submit(priority).result() == expected
