"""Login throttling: failed password checks counted per email and per client address.

A password check (a login, or the password of a password change or account deletion) goes
in four steps, all of its state in MongoDB so that every API process counts the same:

1. Its attempt is written under the email's key: one `login_attempts` document.
2. It takes one of the process's check slots (one per hashing thread) and, holding it, counts
   in one aggregation on `users`, which also reads the account the email names:
   - the email's attempts within the window, but those a success lists (step 4);
   - the client address's failures within the window.
   Past either limit the attempt is taken back and refused (TooManyAttempts), unchecked.
3. The password is checked, in the hashing pool.
4. A failure is recorded before the slot is let go: the email's attempt is marked failed and
   a failure is written under the address's key, one `update` command for both. A success
   writes nothing here. It is recorded on the first refresh token of the session it begins
   (`RefreshToken.password_check`), a write the success makes anyway, with the ids of the
   attempts it discounts: its own, and the failures of its email that it counted, which is
   how the email's counter resets. By id, not by time, so no two processes' clocks are
   compared.

So every outcome costs 3 commands: the attempt's insert, the aggregation, then the refresh
token's insert (success), the failure's update (wrong password or unknown email) or the
attempt's delete (refused).

Why the two keys are counted differently. The email's attempt is written before its count
so that the email's limit holds under any concurrency: of N simultaneous attempts, each
counts at least those written before it, so no more than the limit get checked, however many
processes take them (a burst may refuse a few more than it strictly had to: the limit errs
on the closed side). An address, though, may be a NAT or a proxy that many people log in
through: it is counted by its failures alone, so successes leave nothing under it and what a
login reads stays small however busy the address (an earlier design wrote every attempt
under the address too, and each login read every login of the window from its address).
Its bound under concurrency comes from the slots: the count, the check and the failure's
record of one attempt all happen while it holds its slot, so each count sees every failure
of the attempts that held a slot before it. Only checks in other slots at that very moment
(other hashing threads, other processes) can be missed: a simultaneous burst from one
address gets at most the limit plus one per other slot checked.

A TTL index deletes attempts after the window, and every count also filters by time, so the
TTL monitor's lag changes nothing.
"""

import asyncio
import hashlib
import ipaddress
import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from weakref import WeakKeyDictionary

from beanie import BulkWriter, PydanticObjectId
from bson import ObjectId

from service.config import Settings
from service.models.base import id_of, new_id, utc_now
from service.models.session import LoginAttempt, PasswordCheck, RefreshToken
from service.models.user import User
from service.security import HASH_WORKERS, verify_password

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
class CheckedPassword:
    """A password check the throttle admitted, and what it found."""

    valid: bool
    # The `users` document of the email, read with the count; None if no account has it.
    account: dict[str, Any] | None
    # What the session a valid check begins records (accounts.start_session).
    check: PasswordCheck


# One semaphore per event loop (an asyncio primitive belongs to the loop it first waits on).
_slots: "WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore]" = WeakKeyDictionary()


@asynccontextmanager
async def _check_slot() -> AsyncIterator[None]:
    """One of this process's HASH_WORKERS check slots, for as long as the block runs."""
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(HASH_WORKERS)
    async with slots:
        yield


async def check_password(
    email: str,
    password: str,
    host: str | None,
    settings: Settings,
    *,
    account_email: str | None,
    hashed_password: str | None = None,
) -> CheckedPassword:
    """Check a password against the throttle's limits, or raise TooManyAttempts unchecked.

    `email` is what was typed; `account_email` its stored form (models.user.normalize_email),
    whose account is read with the count, or None for text that cannot be an account's email
    (then nothing matches, and the commands are the same). The password is checked against
    `hashed_password`, or else the account's (a dummy hash without one: see security.py).
    """
    window = timedelta(seconds=settings.login_failure_window_seconds)
    keys = (email_key(email), address_key(host))
    started = utc_now()
    attempt = LoginAttempt(id=new_id(), key=keys[0], at=started, expires_at=started + window)
    await attempt.insert()
    own = id_of(attempt)
    async with _check_slot():
        now = utc_now()
        pipeline = _count_pipeline(account_email, *keys, since=now - window)
        rows = await User.aggregate(pipeline).to_list()
        account, counted = _counted(rows, own)
        limits = {
            keys[0]: settings.login_max_failures_per_email,
            keys[1]: settings.login_max_failures_per_address,
        }
        waits = [
            _wait(sorted(at for _, at in others), limits[key], now, window)
            for key, others in counted.items()
            if len(others) + 1 > limits[key]
        ]
        if waits:
            await attempt.delete()
            raise TooManyAttempts(max(1, math.ceil(max(waits))))
        stored = hashed_password if hashed_password is not None else _hash_of(account)
        valid = await verify_password(password, stored, settings)
        if not valid:
            # Both records in one `update` command: the address's is an upsert of a new id.
            failed = utc_now()
            record = {"key": keys[1], "at": failed, "expires_at": failed + window, "failed": True}
            async with BulkWriter(object_class=LoginAttempt) as bulk:
                await LoginAttempt.find_one(LoginAttempt.id == own).update(
                    {"$set": {"failed": True}}, bulk_writer=bulk
                )
                await LoginAttempt.find_one(LoginAttempt.id == ObjectId()).update(
                    {"$setOnInsert": record}, bulk_writer=bulk, upsert=True
                )
    # Should the password be right, the success discounts this attempt and the email's
    # failures counted here: by their ids, not by time, so no two clocks are compared.
    reset = [PydanticObjectId(attempt_id) for attempt_id, _ in counted.get(keys[0], [])]
    check = PasswordCheck(email_key=keys[0], address_key=keys[1], attempt_ids=[own, *reset])
    return CheckedPassword(valid=valid, account=account, check=check)


def _hash_of(account: dict[str, Any] | None) -> str | None:
    stored = account.get("hashed_password") if account is not None else None
    return stored if isinstance(stored, str) else None


def _count_pipeline(
    email: str | None, email_key: str, address_key: str, *, since: datetime
) -> list[dict[str, Any]]:
    """The account, the email's attempts, the address's failures and the email's successes
    that discount its attempts, in one round trip.

    Based on `users` with its unique email index, and each union opening with its filter:
    the development store reads a union's collection through that filter (see
    docs/development-store.md), as MongoDB reads it through its index. A None email matches
    no account: every stored one is a string (the collection's validator requires it).
    """
    return [
        {"$match": {"email": email}},
        {
            "$unionWith": {
                "coll": LoginAttempt.Settings.name,
                "pipeline": [
                    {
                        "$match": {
                            "$or": [
                                {"key": email_key, "at": {"$gt": since}},
                                # Only failures: an earlier version wrote every attempt here.
                                {"key": address_key, "at": {"$gt": since}, "failed": True},
                            ]
                        }
                    },
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
                            "password_check.email_key": email_key,
                            "issued_at": {"$gt": since - CLOCK_LEEWAY},
                        }
                    },
                    {"$project": {"_id": 0, "success": "$password_check"}},
                ],
            }
        },
    ]


def _counted(
    rows: list[dict[str, Any]], own: PydanticObjectId
) -> tuple[dict[str, Any] | None, dict[str, list[tuple[ObjectId, datetime]]]]:
    """The account, and for each key the attempts that count (id and time), this one's aside.

    An attempt counts unless a success lists it: a success lists its own attempt and the
    failures of its email that it counted, which is how the email's counter resets.
    """
    account = next((row for row in rows if "attempts_of" not in row and "success" not in row), None)
    excused = {
        ObjectId(i) for row in rows if "success" in row for i in row["success"]["attempt_ids"]
    }
    excused.add(own)
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


async def count_request(limits: dict[str, int], settings: Settings) -> None:
    """Count a request against each key's limit within the window (a request that sends
    mail), or raise TooManyAttempts and take it back.

    Every request counts, whatever its outcome: its records are written first, so that under
    any concurrency each counts at least those written before it, as an email's login
    attempts are. Three commands either way: the insert, the count and, when refused, the
    delete.
    """
    window = timedelta(seconds=settings.login_failure_window_seconds)
    now = utc_now()
    mine = [LoginAttempt(id=new_id(), key=key, at=now, expires_at=now + window) for key in limits]
    await LoginAttempt.insert_many(mine)
    own = {id_of(attempt) for attempt in mine}
    found = await LoginAttempt.find(
        {"key": {"$in": list(limits)}, "at": {"$gt": now - window}}
    ).to_list()
    waits = []
    for key, limit in limits.items():
        others = sorted(a.at for a in found if a.key == key and id_of(a) not in own)
        if len(others) + 1 > limit:
            waits.append(_wait(others, limit, now, window))
    if waits:
        await LoginAttempt.find({"_id": {"$in": list(own)}}).delete()
        raise TooManyAttempts(max(1, math.ceil(max(waits))))
