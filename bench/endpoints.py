"""Every endpoint of the API as one client calls it, one request at a time.

`catalogue()` lists the API's operations in the report's order. Each `Case` prepares, through
the API itself, what its requests need (posts to change, votes to take back, sessions to end,
accounts to delete), then hands out its requests one by one; a request may depend on the
answer to the one before (a refresh token is used up by the refresh that follows it).

`run_case` sends a case's requests to a server and records each one's latency (as the client
sees it) and status, and, given the server's process id, the CPU time that process spent on
them (`/proc/<pid>/stat`: every thread of the process, user and system time, in clock ticks).
Preparation is done before the CPU clock starts, so it counts nowhere.
"""

import itertools
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import httpx

from bench.processes import HarnessError

HTTP_TIMEOUT_S = 30.0
DEMO_PASSWORD = "demo-password"
BENCH_PASSWORD = "bench user password"
SEARCH_WORD = "mongo"  # in the seed's vocabulary: found in most posts
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}

type Kind = Literal["read", "search", "write", "password"]
type Request = tuple[str, str, dict[str, str], Any]  # method, path, headers, json/form body
type Next = Callable[[httpx.Response | None], Request]  # the last answer -> the next request

_numbers = itertools.count(1)


@dataclass(frozen=True)
class Case:
    """One endpoint: its label, kind, expected status, how many requests one pass sends, and
    `prepare(client, count)`, which makes what they need and returns the request maker."""

    label: str
    kind: Kind
    status: int
    count: int
    prepare: Callable[["Client", int], Next]


@dataclass
class Result:
    """What one pass of a case measured."""

    label: str
    kind: Kind
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    cpu_ms: float | None = None  # the server process's CPU time for all the requests

    @property
    def p50_ms(self) -> float | None:
        return statistics.median(self.latencies_ms) if self.latencies_ms else None

    @property
    def cpu_per_request_ms(self) -> float | None:
        if self.cpu_ms is None or not self.latencies_ms:
            return None
        return self.cpu_ms / len(self.latencies_ms)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "requests": len(self.latencies_ms),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "p50_ms": _round(self.p50_ms),
            "max_ms": _round(max(self.latencies_ms, default=0.0)),
            "cpu_ms_per_request": _round(self.cpu_per_request_ms),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Client:
    """A synchronous HTTP client of one server, with the helpers the preparations share."""

    def __init__(self, base: str) -> None:
        self.http = httpx.Client(base_url=base, timeout=HTTP_TIMEOUT_S, trust_env=False)
        self.demo_token = self.log_in("demo1@example.com", DEMO_PASSWORD)["access_token"]

    def close(self) -> None:
        self.http.close()

    def call(self, method: str, path: str, status: int, **options: Any) -> httpx.Response:
        response = self.http.request(method, path, **options)
        if response.status_code != status:
            raise HarnessError(
                f"{method} {path}: {response.status_code} {response.text[:300]} (wanted {status})"
            )
        return response

    def log_in(self, email: str, password: str) -> dict[str, Any]:
        form = {"username": email, "password": password}
        answer: dict[str, Any] = self.call("POST", "/login", 200, data=form).json()
        return answer

    def new_user(self) -> tuple[str, dict[str, Any]]:
        """A new account (POST /users/), logged in: its email and token pair."""
        email = f"bench-{os.getpid()}-{next(_numbers)}@example.com"
        self.call("POST", "/users/", 201, json={"email": email, "password": BENCH_PASSWORD})
        return email, self.log_in(email, BENCH_PASSWORD)

    def bearer(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.demo_token}"}

    def others_posts(self, token: str, count: int) -> list[str]:
        """Ids of `count` published posts that the token's user does not own."""
        me = self.call("GET", "/users/me", 200, headers=self.bearer(token)).json()["id"]
        found: list[str] = []
        for skip in itertools.count(0, 100):
            page = self.call(
                "GET", "/posts/", 200, params={"limit": 100, "skip": skip},
                headers=self.bearer(token),
            ).json()  # fmt: skip
            found += [p["Post"]["id"] for p in page if p["Post"]["owner_id"] != me]
            if len(found) >= count or len(page) < 100:
                break
        if len(found) < count:
            raise HarnessError(f"only {len(found)} published posts of others; seed more")
        return found[:count]

    def new_posts(self, token: str, count: int) -> list[str]:
        body = {"title": "Bench post", "content": "Written to be changed.", "published": True}
        headers = self.bearer(token)
        return [self.call("POST", "/posts/", 201, json=body, headers=headers).json()["id"]
                for _ in range(count)]  # fmt: skip


def each(requests: list[Request]) -> Next:
    """Hand out prepared requests in order."""
    pending = iter(requests)
    return lambda _last: next(pending)


def same(request: Request) -> Next:
    return lambda _last: request


def _read(path: str, **params: Any) -> Callable[[Client, int], Next]:
    def prepare(client: Client, count: int) -> Next:
        query = ("?" + "&".join(f"{k}={v}" for k, v in params.items())) if params else ""
        return same(("GET", path + query, client.bearer(), None))

    return prepare


def _read_post(client: Client, count: int) -> Next:
    [post_id] = client.others_posts(client.demo_token, 1)
    return same(("GET", f"/posts/{post_id}", client.bearer(), None))


def _read_user(client: Client, count: int) -> Next:
    [post_id] = client.others_posts(client.demo_token, 1)
    post = client.call("GET", f"/posts/{post_id}", 200, headers=client.bearer()).json()
    return same(("GET", f"/users/{post['Post']['owner_id']}", client.bearer(), None))


def _create_post(client: Client, count: int) -> Next:
    body = {"title": "Bench post", "content": "Written by the benchmark.", "published": True}
    return same(("POST", "/posts/", {**client.bearer(), **JSON}, body))


def _update_post(client: Client, count: int) -> Next:
    _, tokens = client.new_user()
    ids = client.new_posts(tokens["access_token"], count)
    body = {"title": "Bench post, changed", "content": "Changed.", "published": True}
    headers = {**client.bearer(tokens["access_token"]), **JSON}
    return each([("PUT", f"/posts/{post_id}", headers, body) for post_id in ids])


def _delete_post(client: Client, count: int) -> Next:
    _, tokens = client.new_user()
    ids = client.new_posts(tokens["access_token"], count)
    headers = client.bearer(tokens["access_token"])
    return each([("DELETE", f"/posts/{post_id}", headers, None) for post_id in ids])


class Voting:
    """One voter's votes, cast by one case and taken back by the next."""

    def __init__(self) -> None:
        self.token = ""
        self.post_ids: list[str] = []

    def cast(self, client: Client, count: int) -> Next:
        _, tokens = client.new_user()
        self.token = tokens["access_token"]
        self.post_ids = client.others_posts(self.token, count)
        return self._votes(1)

    def take_back(self, client: Client, count: int) -> Next:
        if len(self.post_ids) < count:
            raise HarnessError("take back runs after the votes it takes back")
        return self._votes(0)

    def _votes(self, direction: int) -> Next:
        headers = {**{"Authorization": f"Bearer {self.token}"}, **JSON}
        return each(
            [("POST", "/vote/", headers, {"post_id": p, "dir": direction}) for p in self.post_ids]
        )


def _register(client: Client, count: int) -> Next:
    emails = [f"bench-new-{os.getpid()}-{next(_numbers)}@example.com" for _ in range(count)]
    body = [{"email": email, "password": BENCH_PASSWORD} for email in emails]
    return each([("POST", "/users/", JSON, one) for one in body])


def _login(client: Client, count: int) -> Next:
    # Demo users in turn from demo5: each its own email, so no attempt counts against another.
    forms = [{"username": f"demo{5 + n}@example.com", "password": DEMO_PASSWORD} for n in
             range(count)]  # fmt: skip
    return each([("POST", "/login", FORM, form) for form in forms])


def _refresh(client: Client, count: int) -> Next:
    first = client.log_in("demo2@example.com", DEMO_PASSWORD)["refresh_token"]

    def next_request(last: httpx.Response | None) -> Request:
        token = first if last is None else last.json()["refresh_token"]
        return ("POST", "/auth/refresh", JSON, {"refresh_token": token})

    return next_request


def _logout(client: Client, count: int) -> Next:
    email, _ = client.new_user()
    sessions = [client.log_in(email, BENCH_PASSWORD) for _ in range(count)]
    return each([("POST", "/logout", client.bearer(s["access_token"]), None) for s in sessions])


def _sessions_of_new_users(client: Client, count: int) -> list[dict[str, Any]]:
    return [client.new_user()[1] for _ in range(count)]


def _logout_all(client: Client, count: int) -> Next:
    sessions = _sessions_of_new_users(client, count)
    return each([("POST", "/logout/all", client.bearer(s["access_token"]), None) for s in sessions])


def _change_password(client: Client, count: int) -> Next:
    sessions = _sessions_of_new_users(client, count)
    body = {"current_password": BENCH_PASSWORD, "new_password": BENCH_PASSWORD + " 2"}
    headers = [{**client.bearer(s["access_token"]), **JSON} for s in sessions]
    return each([("PUT", "/users/me/password", h, body) for h in headers])


def _delete_account(client: Client, count: int) -> Next:
    sessions = _sessions_of_new_users(client, count)
    headers = [{**client.bearer(s["access_token"]), **JSON} for s in sessions]
    return each([("DELETE", "/users/me", h, {"password": BENCH_PASSWORD}) for h in headers])


FEED = "GET /posts/?limit=10"
FEED_100 = "GET /posts/?limit=100"
SEARCH = f"GET /posts/?limit=10&search={SEARCH_WORD}"
READ = "GET /posts/{id}"
CREATE = "POST /posts/"
VOTE = "POST /vote/"
UNVOTE = "POST /vote/ (dir 0)"
LOGIN = "POST /login"


# A page 9,000 posts deep, by skip and by cursor (the large store has 10,000 posts).
DEPTH = 9_000
DEEP_SKIP = f"GET /posts/?limit=10&skip={DEPTH}"
DEEP_CURSOR = f"GET /posts/?limit=10&cursor= (at depth {DEPTH:,})"


def _deep_cursor(client: Client, count: int) -> Next:
    """The cursor of the page after the first DEPTH posts, from the page before it."""
    before = client.call("GET", f"/posts/?limit=10&skip={DEPTH - 10}", 200, headers=client.bearer())
    cursor = before.headers["X-Next-Cursor"]
    return same(("GET", f"/posts/?limit=10&cursor={cursor}", client.bearer(), None))


def deep_pages(reads: int) -> list[Case]:
    """The feed 9,000 posts deep: by skip, which walks and drops every skipped entry, and by
    cursor, a range read after the last post seen (only on the large store)."""
    return [
        Case(DEEP_SKIP, "read", 200, reads, _read("/posts/", limit=10, skip=DEPTH)),
        Case(DEEP_CURSOR, "read", 200, reads, _deep_cursor),
    ]


def catalogue(reads: int = 50, writes: int = 50, passwords: int = 5) -> list[Case]:
    """Every operation of the API, in the report's order (a vote before its take-back)."""
    voting = Voting()
    return [
        Case(FEED, "read", 200, reads, _read("/posts/", limit=10)),
        Case(FEED_100, "read", 200, reads, _read("/posts/", limit=100)),
        Case(SEARCH, "search", 200, reads, _read("/posts/", limit=10, search=SEARCH_WORD)),
        Case(READ, "read", 200, reads, _read_post),
        Case("GET /users/me", "read", 200, reads, _read("/users/me")),
        Case("GET /users/{id}", "read", 200, reads, _read_user),
        Case("GET /readyz", "read", 200, reads, _read("/readyz")),
        Case("GET /healthz", "read", 200, reads, _read("/healthz")),
        Case("GET /", "read", 200, reads, _read("/")),
        Case(CREATE, "write", 201, writes, _create_post),
        Case("PUT /posts/{id}", "write", 200, writes, _update_post),
        Case("DELETE /posts/{id}", "write", 204, writes, _delete_post),
        Case(VOTE, "write", 201, writes, voting.cast),
        Case(UNVOTE, "write", 201, writes, voting.take_back),
        Case("POST /auth/refresh", "write", 200, writes, _refresh),
        Case("POST /logout", "write", 204, passwords * 2, _logout),
        Case("POST /logout/all", "write", 204, passwords, _logout_all),
        Case("POST /users/", "password", 201, passwords, _register),
        Case(LOGIN, "password", 200, passwords, _login),
        Case("PUT /users/me/password", "password", 200, passwords, _change_password),
        Case("DELETE /users/me", "password", 204, passwords, _delete_account),
    ]


def process_cpu_ms(pid: int) -> float:
    """CPU time (user and system, every thread) the process has used, in milliseconds."""
    return cpu_ms_of_stat(Path(f"/proc/{pid}/stat").read_text())


def cpu_ms_of_stat(stat: str) -> float:
    """utime + stime of a `/proc/<pid>/stat` line, in milliseconds. The command name (field
    2) is in parentheses and may hold spaces, so fields are counted after its closing one."""
    fields = stat[stat.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of the whole line
    return (utime + stime) * 1000 / CLOCK_TICKS


def run_case(
    client: Client,
    case: Case,
    pid: int | None = None,
    before: Callable[[], None] | None = None,
) -> Result:
    """Prepare, call `before`, then send the case's requests one at a time; a wrong status is
    an error."""
    make = case.prepare(client, case.count)
    if before is not None:
        before()
    result = Result(case.label, case.kind)
    last: httpx.Response | None = None
    cpu_before = process_cpu_ms(pid) if pid is not None else 0.0
    for _ in range(case.count):
        method, path, headers, body = make(last)
        form = headers.get("Content-Type") == FORM["Content-Type"]
        started = time.perf_counter()
        last = client.http.request(
            method, path, headers=headers, data=body if form else None,
            json=None if form else body,
        )  # fmt: skip
        result.latencies_ms.append((time.perf_counter() - started) * 1000)
        result.statuses[last.status_code] += 1
        if last.status_code != case.status:
            raise HarnessError(f"{case.label}: {last.status_code} {last.text[:300]}")
    if pid is not None:
        result.cpu_ms = process_cpu_ms(pid) - cpu_before
    return result
