"""Login throttling: failed password checks counted per email and per client address.

Each password check writes one `login_attempts` document per key before the password is
checked, then counts the key's documents within the window. Writing first makes the limit
hold under concurrency: of N simultaneous attempts each one counts at least the attempts
written before it, so no more than the limit get through, however many run at once (a burst
may refuse a few more than it strictly had to: the limit errs on the closed side). A refused
attempt takes its documents back, so waiting out a refusal is enough; a success removes its
own documents and every one of its email (the counter resets); a failure leaves them to be
counted. A TTL index deletes them after the window, and every count also filters by time, so
the TTL monitor's lag changes nothing. All of it is in MongoDB: every API process counts the
same attempts.
"""

import hashlib
import ipaddress
import math
from dataclasses import dataclass
from datetime import datetime, timedelta

from bson import ObjectId

from service.config import Settings
from service.models.base import utc_now
from service.models.session import LoginAttempt

ADDRESS_MAX = 64


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
    """A password check admitted by the throttle; report how it went."""

    email_key: str
    ids: list[ObjectId]

    async def succeeded(self) -> None:
        """Reset the email's counter and take back this attempt's address record."""
        await LoginAttempt.get_pymongo_collection().delete_many(
            {"$or": [{"key": self.email_key}, {"_id": {"$in": self.ids}}]}
        )


async def begin_attempt(email: str, host: str | None, settings: Settings) -> Attempt:
    """Count a password check against its email and address, or raise TooManyAttempts."""
    now = utc_now()
    window = timedelta(seconds=settings.login_failure_window_seconds)
    limits = {
        email_key(email): settings.login_max_failures_per_email,
        address_key(host): settings.login_max_failures_per_address,
    }
    collection = LoginAttempt.get_pymongo_collection()
    written = await collection.insert_many(
        [{"key": key, "at": now, "expires_at": now + window} for key in limits]
    )
    ids = list(written.inserted_ids)
    rows = await (
        await collection.aggregate(
            [
                {"$match": {"key": {"$in": list(limits)}, "at": {"$gt": now - window}}},
                {"$group": {"_id": "$key", "at": {"$push": "$at"}}},
            ]
        )
    ).to_list()
    waits = [
        _wait(sorted(row["at"]), limits[row["_id"]], now, window)
        for row in rows
        if len(row["at"]) > limits[row["_id"]]
    ]
    if waits:
        await collection.delete_many({"_id": {"$in": ids}})
        raise TooManyAttempts(max(1, math.ceil(max(waits))))
    return Attempt(email_key=next(iter(limits)), ids=ids)


def _wait(times: list[datetime], limit: int, now: datetime, window: timedelta) -> float:
    """Seconds until an attempt at this key would be admitted.

    `times` are the key's attempts in the window, this refused one (at `now`) included. Once
    this one is taken back, the next attempt is admitted when no more than `limit - 1` others
    remain, that is once the oldest `len(others) - limit + 1` have left the window.
    """
    others = list(times)
    if now in others:
        others.remove(now)
    leaving = others[len(others) - limit]
    return max(0.0, (leaving + window - now).total_seconds())
