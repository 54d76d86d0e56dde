"""Password hashing and access tokens, as plain functions of their inputs and the settings."""

import asyncio
import contextlib
import hashlib
import os
import secrets
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import jwt
from passlib.context import CryptContext
from passlib.hash import bcrypt, bcrypt_sha256

from service import metrics
from service.config import Settings

# bcrypt costs about a quarter of a second of CPU at the default cost. It runs in its own small
# pool (bcrypt releases the GIL, so these threads use other cores), never on the event loop.
# The pool leaves one core to the event loop: a burst of logins queues here instead of
# starving the requests that only read. Its threads also run at a lower priority (nice
# HASH_NICENESS below the process's own, at most 19): where the cores are shared (with the
# database, other processes), a hash waits rather than a read. On the benchmark's 2 cores
# (BENCHMARKS.md), reads' p99 while 8 clients log in was 2.5x its p99 alone at nice 5, 1.9x at
# 10 and 1.8x at 19, and logins went at 2.8, 2.0 and 1.4 a second: 10 keeps most of both.
HASH_NICENESS = 10


def _lower_priority() -> None:
    """Lower the calling thread's scheduling priority (Linux schedules threads one by one)."""
    # No setpriority (not Unix), or not permitted: the pool runs at the usual priority.
    with contextlib.suppress(AttributeError, OSError):
        thread = threading.get_native_id()
        lower = min(19, os.getpriority(os.PRIO_PROCESS, thread) + HASH_NICENESS)
        os.setpriority(os.PRIO_PROCESS, thread, lower)


# How many hashes run at once in each process: all cores but one.
HASH_WORKERS = max(1, (os.cpu_count() or 2) - 1)

_hash_pool = ThreadPoolExecutor(
    max_workers=HASH_WORKERS,
    thread_name_prefix="bcrypt",
    initializer=_lower_priority,
)

# `sid` names the session (the refresh-token family the token belongs to) and `ver` the
# user's session epoch when it was signed: the two facts deps.get_current_user checks against
# the user document to honour a logout on the very next request.
REQUIRED_CLAIMS = ("sub", "exp", "iat", "jti", "sid", "ver")
REFRESH_TOKEN_BYTES = 32


BCRYPT_MAX_BYTES = 72  # bcrypt reads no further, and bcrypt 5 refuses longer passwords

# Verification reads the scheme and the cost from the hash itself, so one context checks
# hashes of either scheme and any cost.
_verifier = CryptContext(schemes=["bcrypt", "bcrypt_sha256"])


def hash_password_sync(password: str, rounds: int) -> str:
    """Hash with a fresh random salt (bcrypt makes it; never supply one).

    bcrypt reads a password's first 72 bytes only: a longer one (a passphrase in a script of
    two or three bytes a character) is first digested with HMAC-SHA256, the salt its key
    (passlib's bcrypt_sha256, `$bcrypt-sha256$...`), so that every byte of it counts.
    """
    long = len(password.encode("utf-8")) > BCRYPT_MAX_BYTES
    return str(_hasher("bcrypt_sha256" if long else "bcrypt", rounds).hash(password))


@lru_cache
def _hasher(scheme: str, rounds: int) -> Any:
    """passlib's handler for `scheme` at `rounds`, made once (`using` derives a class)."""
    return (bcrypt_sha256 if scheme == "bcrypt_sha256" else bcrypt).using(rounds=rounds)


@lru_cache
def _dummy_hash(rounds: int) -> str:
    return hash_password_sync(uuid.uuid4().hex, rounds)


def verify_password_sync(password: str, hashed: str | None, rounds: int) -> bool:
    """Check a password against a bcrypt hash; a bad password is False, never an error.

    With no hash (an unknown email), or a password the hash cannot take (over 72 bytes for a
    plain bcrypt hash, a NUL byte: registration never makes such a pair), it checks a dummy
    hash of the configured cost and fails, so every failed login costs about the same time
    and none reveals whether an email has an account.
    """
    if hashed is not None:
        try:
            if _verifier.verify(password, hashed):
                return True
            if not needs_rehash(hashed, rounds):
                return False
            # A cheaper hash from before BCRYPT_ROUNDS rose: top the failure up to the cost of
            # an unknown email's, or its speed would tell that the account exists.
        except ValueError:  # passlib's size and value errors, unencodable text, a bad hash
            pass
    _verifier.verify("not the password", _dummy_hash(rounds))
    return False


def needs_rehash(hashed: str, rounds: int) -> bool:
    """True for a hash of a lower cost than `rounds` (made before BCRYPT_ROUNDS rose): the
    cost is `$2b$<cost>$...` in bcrypt's hashes, `r=<cost>` in bcrypt_sha256's."""
    parts = hashed.split("$")
    try:
        if parts[1] == "bcrypt-sha256":
            return int(dict(item.split("=", 1) for item in parts[2].split(","))["r"]) < rounds
        return int(parts[2]) < rounds
    except (IndexError, KeyError, ValueError):  # not a hash of either scheme
        return False


async def hash_password(password: str, settings: Settings) -> str:
    """Hash a password in the hashing pool."""
    loop = asyncio.get_running_loop()
    with metrics.hashes_in_flight.track_inprogress():
        return await loop.run_in_executor(
            _hash_pool, hash_password_sync, password, settings.bcrypt_rounds
        )


async def verify_password(password: str, hashed: str | None, settings: Settings) -> bool:
    """Verify in the hashing pool, as one job whether or not the user exists."""
    loop = asyncio.get_running_loop()
    with metrics.hashes_in_flight.track_inprogress():
        return await loop.run_in_executor(
            _hash_pool, verify_password_sync, password, hashed, settings.bcrypt_rounds
        )


async def warm_up(settings: Settings) -> None:
    """Make the dummy hash before the first login needs it."""
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(_hash_pool, _dummy_hash, settings.bcrypt_rounds)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    sub: str
    jti: str
    sid: str
    ver: int
    issued_at: datetime
    expires_at: datetime


def create_access_token(
    user_id: str,
    settings: Settings,
    *,
    session_id: str,
    epoch: int,
    now: datetime | None = None,
) -> str:
    """Sign an access token for one user's session."""
    issued = now or datetime.now(UTC)
    claims = {
        "sub": user_id,
        "user_id": user_id,  # what the course's clients read
        "iat": issued,
        "exp": issued + timedelta(minutes=settings.access_token_expire_minutes),
        "jti": uuid.uuid4().hex,
        "sid": session_id,
        "ver": epoch,
    }
    return jwt.encode(claims, _secret(settings), algorithm=settings.algorithm)


# How many verified access tokens each process remembers (about 1 KB each); see below.
VERIFIED_TOKENS_KEPT = 4096


def decode_access_token(
    token: str, settings: Settings, *, now: datetime | None = None
) -> TokenClaims:
    """Verify signature, algorithm and expiry; raise jwt.InvalidTokenError on any failure.

    Only the configured algorithm is accepted, so `alg: none` and algorithm-swapping tokens
    fail signature checks like any forgery.

    A client sends the same access token with every request until it expires, and verifying
    it took a tenth of a read's time outside the database, so a token that passed every
    check once is remembered with its claims, and each later use checks only its expiry
    again. What can change about a token before it expires (its session ended, its user
    deleted) is checked against the user document on every request, not here. A token that
    fails is never remembered.
    """
    claims = _verified_claims(token, _secret(settings), settings.algorithm)
    if claims.expires_at <= (now or datetime.now(UTC)):
        raise jwt.ExpiredSignatureError("Signature has expired")
    return claims


@lru_cache(maxsize=VERIFIED_TOKENS_KEPT)
def _verified_claims(token: str, secret: str, algorithm: str) -> TokenClaims:
    """The claims of a token that PyJWT verifies with this key and algorithm (and finds
    unexpired now); the key is part of the cache's key, so another key verifies afresh."""
    payload = jwt.decode(
        token, secret, algorithms=[algorithm], options={"require": list(REQUIRED_CLAIMS)}
    )
    sub, jti, sid, ver = payload["sub"], payload["jti"], payload["sid"], payload["ver"]
    if not all(isinstance(claim, str) for claim in (sub, jti, sid)):
        raise jwt.InvalidTokenError("sub, jti and sid must be strings")
    if type(ver) is not int:
        raise jwt.InvalidTokenError("ver must be an integer")
    return TokenClaims(
        sub=sub,
        jti=jti,
        sid=sid,
        ver=ver,
        issued_at=datetime.fromtimestamp(payload["iat"], UTC),
        expires_at=datetime.fromtimestamp(payload["exp"], UTC),
    )


def access_token_lifetime(settings: Settings) -> timedelta:
    return timedelta(minutes=settings.access_token_expire_minutes)


def new_session_id() -> str:
    """A random id for a session: one login, and every token refreshed from it."""
    return uuid.uuid4().hex


def new_refresh_token() -> str:
    """An opaque refresh token: 256 random bits, URL-safe. Only its digest is ever stored."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def new_mailed_token() -> str:
    """A token for a mail's link (a password reset, an email verification): 256 random bits,
    URL-safe. Only its digest is ever stored."""
    return secrets.token_urlsafe(REFRESH_TOKEN_BYTES)


def digest_token(token: str) -> str:
    """The SHA-256 of a refresh token or a mailed one, as stored and looked up.

    A plain digest, not a salted slow hash: the token is 256 random bits, so nothing can be
    guessed from the digest, and the lookup must be by equality on an index.
    """
    return hashlib.sha256(token.encode("utf-8", errors="surrogatepass")).hexdigest()


def _secret(settings: Settings) -> str:
    if settings.secret_key is None:
        raise RuntimeError("settings carry no secret key; call Settings.with_secret_key() first")
    return settings.secret_key.get_secret_value()
