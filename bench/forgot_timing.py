"""Does POST /auth/forgot-password tell an existing account from a missing one?

Starts `social-api serve` on loopback (the default embedded store, SQLite, in a temporary
directory; no SMTP_HOST, so the mails are written as .eml files under DATA_DIR/outbox/),
registers one user, then asks for a password reset for that user's email and for one email
that has no account, alternating, N of each, one at a time. Prints whether the two kinds'
answers are byte-identical (status, body, and every header but the ones each response has
its own: X-Request-ID and Date), the median, p10 and p90 of each kind and the relative
difference of the medians; exits 1 if the answers differ or the difference is 10% or more.

    .venv/bin/python -m bench.forgot_timing [--count 20] [--server-log server.log]

The limits of mail requests per email and per client address (MAIL_REQUESTS_PER_EMAIL,
MAIL_REQUESTS_PER_ADDRESS, 3 and 20 by default) are raised for this server only: the point is
to time the two paths, not 429s. Everything else is the service as `make run` runs it.

The missing email is the same throughout, as the existing one is: each kind then counts
against a throttle record that exists after its first request, and the two differ only in
whether an account has the email. Run as a module (from the checkout) to reuse
bench/login_timing.py's helpers.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx

from bench.login_timing import serving, summary

# Headers each response has its own; every other one must be the same for both kinds.
PER_REQUEST = frozenset({"x-request-id", "date"})
LIMIT = 0.10
RESET_SUBJECT = b"Subject: Reset your Social API password"

Answer = tuple[int, bytes, tuple[tuple[str, str], ...]]


def timed_forgot(http: httpx.Client, email: str) -> tuple[float, Answer]:
    """The time of one request in ms, and what of its answer must not depend on the email."""
    started = time.perf_counter()
    response = http.post("/auth/forgot-password", json={"email": email})
    elapsed = time.perf_counter() - started
    if response.status_code != 202:
        sys.exit(f"expected 202, got {response.status_code}: {response.text}")
    headers = tuple(
        sorted((name, value) for name, value in response.headers.items() if name not in PER_REQUEST)
    )
    return elapsed * 1000, (response.status_code, response.content, headers)


def count_resets(directory: Path) -> int:
    """The reset mails the server has written (registering wrote a verification mail too)."""
    return sum(
        RESET_SUBJECT in path.read_bytes() for path in (directory / "data" / "outbox").glob("*.eml")
    )


def describe(answer: Answer) -> str:
    status, body, headers = answer
    return f"{status}, {len(body)}-byte body, headers {', '.join(name for name, _ in headers)}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="requests of each kind")
    parser.add_argument("--server-log", type=Path, help="keep the server's log there")
    args = parser.parse_args()
    if args.count < 2:
        parser.error("--count must be at least 2 (for the deciles)")

    with tempfile.TemporaryDirectory() as directory:
        log_path = Path(directory) / "server.log"
        try:
            with serving(
                directory,
                log_path,
                MAIL_REQUESTS_PER_EMAIL="1000000",
                MAIL_REQUESTS_PER_ADDRESS="1000000",
            ) as (http, email):
                missing = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
                for _ in range(3):  # warm up both paths
                    timed_forgot(http, email)
                    timed_forgot(http, missing)
                existing: list[float] = []
                absent: list[float] = []
                answers: dict[str, set[Answer]] = {"existing": set(), "missing": set()}
                for _ in range(args.count):
                    elapsed, answer = timed_forgot(http, email)
                    existing.append(elapsed)
                    answers["existing"].add(answer)
                    elapsed, answer = timed_forgot(http, missing)
                    absent.append(elapsed)
                    answers["missing"].add(answer)
                # The sender writes them after the answers: wait for the last ones.
                expected = args.count + 3
                deadline = time.monotonic() + 10
                while (mails := count_resets(Path(directory))) < expected:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.1)
        finally:
            if args.server_log is not None:
                shutil.copyfile(log_path, args.server_log)

    a, b = statistics.median(existing), statistics.median(absent)
    difference = abs(a - b) / min(a, b)
    identical = answers["existing"] == answers["missing"] and len(answers["existing"]) == 1
    print("server: social-api serve, embedded store (SQLite), mail to .eml files")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"reset mails written: {mails} of {expected} (one per request for the existing account)")
    if identical:
        print(f"answers: byte-identical ({describe(next(iter(answers['existing'])))})")
    else:
        print("answers: DIFFERENT")
        for kind, seen in answers.items():
            for answer in seen:
                print(f"  {kind}: {answer}")
    print(f"existing account ({args.count}): {summary(existing)}")
    print(f"missing account  ({args.count}): {summary(absent)}")
    print(f"difference of the medians: {difference:.1%} (limit {LIMIT:.0%})")
    return 0 if identical and difference < LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())
