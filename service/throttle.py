"""Login throttling: failed password checks counted per email and per client address.

Each password check writes one `login_attempts` document per key before the password is
checked, then counts the keys' attempts within the window. Writing first makes the limit
hold under concurrency: of N simultaneous attempts each one counts at least the attempts
written before it, so no more than the limit get through, however many run at once (a burst
may refuse a few more than it strictly had to: the limit errs on the closed side). A refused
attempt takes its documents back, so waiting out a refusal is enough; a failure leaves them
to be counted.

A success makes no write of its own here. It is recorded on the first refresh token of the
session it begins (`RefreshToken.password_check`), a write the success makes anyway, with
the ids of the attempts it discounts: its own two, and the failures of its email that it
counted (so the email's counter resets). Every count reads those records back and leaves
the listed attempts out: by id, not by time, so no two processes' clocks are compared. A
success lists only attempts written before its own count, so the bound above holds between
successes: no more than the limit of failures are checked after the latest one. The count is
one aggregation on `users`, which reads the account the email names as well, so a login
costs the attempt's insert, that aggregation and, on success, the refresh token's insert:
3 commands, 2 for a wrong password, 3 for a refusal, whether the email exists or not.

A TTL index deletes attempts after the window, and every count also filters by time, so the
TTL monitor's lag changes nothing. All of it is in MongoDB: every API process counts the
same attempts.
"""

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from beanie import PydanticObjectId
from bson import ObjectId

from service.config import Settings
from service.models.base import utc_now
from service.models.session import LoginAttempt, PasswordCheck, RefreshToken
from service.models.user import User

ADDRESS_MAX = 64
# Successes are read this much further back than the window: one that lists an attempt is
# recorded after it, but the attempt's time may come from another process's clock, ahead.
CLOCK_LEEWAY = timedelta(minutes=5)


class TooManyAttempts(Exception):
    """Refused before checking the password; retry after `retry_after` seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"too many failed login attempts; retry after {retry_after} s")
        self.retry_after = retry_after


def email_key(email: str) -> str:
    """The key of an email's counter: a digest, so whatever was typed is stored at fixed size."""
    normalized = email.strip().lower().encode("utf-8", errors="surrogatepass")
    return f"email:{hashlib.sha256(normalized).hexdigest()}"


def address_key(host: str | None) -> str:
    """The key of a client address's counter.

    IPv6 clients are counted per /64, the block one subscriber is usually given; otherwise a
    single client could take a fresh address for every attempt.
    """
    try:
        address = ipaddress.ip_address(host or "")
    except ValueError:
        return f"address:{(host or 'unknown')[:ADDRESS_MAX]}"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return f"address:{address.ipv4_mapped}"
        return f"address:{ipaddress.IPv6Network((address, 64), strict=False)}"
    return f"address:{address}"


@dataclass(frozen=True, slots=True)
class Attempt:
    """A password check admitted by the throttle, and the account its email names."""

    # What the session this check begins records if it succeeds (accounts.start_session).
    check: PasswordCheck
    # The `users` document of the email, read in the same round trip as the count; None if
    # no account has that email.
    account: dict[str, Any] | None


async def begin_attempt(
    email: str, host: str | None, settings: Settings, *, account_email: str | None
) -> Attempt:
    """Count a password check against its email and address, or raise TooManyAttempts.

    `email` is what was typed; `account_email` its stored form (models.user.normalize_email),
    whose account is read in the same round trip, or None for text that cannot be an
    account's email (then nothing matches, and the commands are the same).
    """
    now = utc_now()
    window = timedelta(seconds=settings.login_failure_window_seconds)
    keys = (email_key(email), address_key(host))
    limits = {
        keys[0]: settings.login_max_failures_per_email,
        keys[1]: settings.login_max_failures_per_address,
    }
    attempts = LoginAttempt.get_pymongo_collection()
    written = await attempts.insert_many(
        [{"key": key, "at": now, "expires_at": now + window} for key in keys]
    )
    ids = [PydanticObjectId(inserted) for inserted in written.inserted_ids]
    pipeline = _count_pipeline(account_email, *keys, since=now - window)
    rows = await (await User.get_pymongo_collection().aggregate(pipeline)).to_list()
    account, counted = _counted(rows, ids)
    waits = [
        _wait(sorted(at for _, at in others), limits[key], now, window)
        for key, others in counted.items()
        if len(others) + 1 > limits[key]
    ]
    if waits:
        await attempts.delete_many({"_id": {"$in": ids}})
        raise TooManyAttempts(max(1, math.ceil(max(waits))))
    # Should the password be right, the success discounts this attempt and the email's
    # failures counted here: by their ids, not by time, so no two clocks are compared.
    reset = [PydanticObjectId(attempt_id) for attempt_id, _ in counted.get(keys[0], [])]
    check = PasswordCheck(email_key=keys[0], address_key=keys[1], attempt_ids=[*ids, *reset])
    return Attempt(check=check, account=account)


def _count_pipeline(
    email: str | None, email_key: str, address_key: str, *, since: datetime
) -> list[dict[str, Any]]:
    """The account, the keys' attempts and the successes that discount them, in one round trip.

    Based on `users` with its unique email index: the embedded store (mongoeco) reads the
    whole collection that a `$unionWith` names, so the large collection is the one matched
    by index and the unions name the smaller ones (see the README). A None email matches no
    account: every stored one is a string (the collection's validator requires it).
    """
    return [
        {"$match": {"email": email}},
        {
            "$unionWith": {
                "coll": LoginAttempt.Settings.name,
                "pipeline": [
                    {"$match": {"key": {"$in": [email_key, address_key]}, "at": {"$gt": since}}},
                    {"$group": {"_id": "$key", "attempts": {"$push": {"id": "$_id", "at": "$at"}}}},
                    {"$project": {"_id": 0, "attempts_of": "$_id", "attempts": 1}},
                ],
            }
        },
        {
            "$unionWith": {
                "coll": RefreshToken.Settings.name,
                "pipeline": [
                    {
                        "$match": {
                            "$or": [
                                {
                                    "password_check.email_key": email_key,
                                    "issued_at": {"$gt": since - CLOCK_LEEWAY},
                                },
                                {
                                    "password_check.address_key": address_key,
                                    "issued_at": {"$gt": since - CLOCK_LEEWAY},
                                },
                            ]
                        }
                    },
                    {"$project": {"_id": 0, "success": "$password_check"}},
                ],
            }
        },
    ]


def _counted(
    rows: list[dict[str, Any]], own: list[PydanticObjectId]
) -> tuple[dict[str, Any] | None, dict[str, list[tuple[ObjectId, datetime]]]]:
    """The account, and for each key the attempts that count (id and time), this one's aside.

    An attempt counts unless a success lists it: a success lists its own attempts and the
    failures of its email that it counted, which is how the email's counter resets.
    """
    account = next((row for row in rows if "attempts_of" not in row and "success" not in row), None)
    excused = {
        ObjectId(i) for row in rows if "success" in row for i in row["success"]["attempt_ids"]
    }
    excused.update(own)
    counted = {
        row["attempts_of"]: [
            (attempt["id"], attempt["at"])
            for attempt in row["attempts"]
            if attempt["id"] not in excused
        ]
        for row in rows
        if "attempts_of" in row
    }
    return account, counted


def _wait(others: list[datetime], limit: int, now: datetime, window: timedelta) -> float:
    """Seconds until an attempt at this key would be admitted.

    `others` are the times of the key's counted attempts in the window, oldest first, not
    this refused one. Once this one is taken back, the next attempt is admitted when no more
    than `limit - 1` others remain, that is once the oldest `len(others) - limit + 1` have
    left the window.
    """
    leaving = others[len(others) - limit]
    return max(0.0, (leaving + window - now).total_seconds())
