"""Does a failed login tell an unknown email from a wrong password by its timing?

Starts `social-api serve` on loopback (embedded store in memory, in a temporary directory,
the configured BCRYPT_ROUNDS, 12 by default), registers one user, then sends logins with an
unknown email and with that user's email and a wrong password, alternating, N of each, one at
a time. Prints the median, p10 and p90 of each kind and the relative difference of the
medians; exits 1 if it is 25% or more.

    .venv/bin/python bench/login_timing.py [--count 20] [--rounds 12]

The throttle's limits are raised for this server only (the point is to time password checks,
not 429s); everything else is the service as `make run` runs it.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

PASSWORD = "correct horse battery"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_ready(base: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit("the server did not become ready within 60 s")


def timed_login(http: httpx.Client, email: str) -> float:
    started = time.perf_counter()
    response = http.post("/login", data={"username": email, "password": "wrong password"})
    elapsed = time.perf_counter() - started
    if response.status_code != 403:
        sys.exit(f"expected 403, got {response.status_code}: {response.text}")
    return elapsed * 1000


def summary(samples: list[float]) -> str:
    deciles = statistics.quantiles(samples, n=10)
    return (
        f"median {statistics.median(samples):7.1f} ms   p10 {deciles[0]:7.1f} ms   "
        f"p90 {deciles[-1]:7.1f} ms"
    )


@contextmanager
def serving(directory: str, log: Path, **settings: str) -> Iterator[tuple[httpx.Client, str]]:
    """`social-api serve` on a free loopback port, on an embedded store of its own in
    `directory` (this environment, without what would point it elsewhere, and `settings`),
    its output in `log`; a client of it, and the email of the one user registered there."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MONGODB_URL", "SECRET_KEY", "EMBEDDED_STORE_URL"}
        and not key.startswith("SMTP_")
    }
    env.update(
        DATA_DIR=str(Path(directory) / "data"),
        EMBEDDED_PORT="0",  # any free port: a developer's own store may hold 27018
        **settings,
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, cwd=directory, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_ready(base, process)
        with httpx.Client(base_url=base, timeout=30) as http:
            email = f"timing-{uuid.uuid4().hex[:8]}@example.com"
            created = http.post("/users/", json={"email": email, "password": PASSWORD})
            created.raise_for_status()
            yield http, email
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20, help="logins of each kind")
    parser.add_argument("--rounds", type=int, default=12, help="BCRYPT_ROUNDS of the server")
    args = parser.parse_args()

    with (
        tempfile.TemporaryDirectory() as directory,
        serving(
            directory,
            Path(directory) / "server.log",
            EMBEDDED_STORAGE="memory",
            BCRYPT_ROUNDS=str(args.rounds),
            LOGIN_MAX_FAILURES_PER_EMAIL="1000000",
            LOGIN_MAX_FAILURES_PER_ADDRESS="1000000",
            LOG_LEVEL="WARNING",
        ) as (http, email),
    ):
        for _ in range(3):  # warm up both paths
            timed_login(http, email)
            timed_login(http, f"nobody-{uuid.uuid4().hex}@example.com")
        unknown: list[float] = []
        wrong: list[float] = []
        for _ in range(args.count):
            unknown.append(timed_login(http, f"nobody-{uuid.uuid4().hex}@example.com"))
            wrong.append(timed_login(http, email))

    a, b = statistics.median(unknown), statistics.median(wrong)
    difference = abs(a - b) / min(a, b)
    print(f"server: social-api serve, embedded memory store, BCRYPT_ROUNDS={args.rounds}")
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"unknown email  ({args.count}): {summary(unknown)}")
    print(f"wrong password ({args.count}): {summary(wrong)}")
    print(f"difference of the medians: {difference:.1%} (limit 25%)")
    return 0 if difference < 0.25 else 1


if __name__ == "__main__":
    sys.exit(main())
