"""Soak test: mixed traffic from many simulated users, then a consistency check of the data.

By default it starts `social-api serve` on a free loopback port, as `make run` does (embedded
store, SQLite in a temporary DATA_DIR, bcrypt cost 12), with the store's wire server on a free
port of its own (EMBEDDED_PORT) so that the check can read the collections with PyMongo.
`--url` targets a server that is already running instead; the check then needs
`--mongodb-url` (its database), or is skipped with `--no-db-check`.

Each simulated user registers, logs in, then loops until the time is up: lists posts (with
and without search), reads one, creates, updates and deletes its own posts, votes and takes
back votes on posts it has seen in lists (others' mostly, now and then its own), and now and
then logs in again or tries to register its email again (409). Every user sends one request
at a time; requests carry an `X-Request-ID` (soak-N) that the server log repeats. Users
arrive spread over the first third of the run (at most 20 s; `--ramp`), so that their bcrypt-priced
registrations and logins do not all queue at once.

After the last in-flight request, it checks: each post's vote count as the API reports it
(GET /posts/{id}, as its owner) equals its documents in `votes`; no vote whose post or user is
gone; no duplicate vote; each post the script created (201) and did not delete (204) exists;
no post it deleted exists; each user's votes are those its answers said it has.

Exit 0 only with no 5xx, no transport error (a timeout is one), no unexpected answer (e.g. a
201 where the user had already voted) and a passing check.

    .venv/bin/python bench/soak.py [--duration 60] [--users 32] [--seed N]
    .venv/bin/python bench/soak.py --url http://127.0.0.1:8000 --mongodb-url mongodb://...
"""

import argparse
import asyncio
import base64
import itertools
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pymongo
from bson import ObjectId

PASSWORD = "soak test password"
WORDS = [
    *("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india"),
    *("juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo"),
    *("sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu"),
]
# Searches: words in any case, and text that would be a pattern if it were not escaped.
SEARCHES = [*WORDS[:12], "ALPHA", "Delta", "no-such-word-xyz", ".*(", "post #1"]

# Endpoint labels, in the order of the report.
REGISTER = "POST /users/"
LOGIN = "POST /login"
LIST = "GET /posts/"
SEARCH = "GET /posts/?search="
READ = "GET /posts/{id}"
CREATE = "POST /posts/"
UPDATE = "PUT /posts/{id}"
DELETE = "DELETE /posts/{id}"
VOTE = "POST /vote/ dir=1"
UNVOTE = "POST /vote/ dir=0"
ENDPOINTS = [REGISTER, LOGIN, LIST, SEARCH, READ, CREATE, UPDATE, DELETE, VOTE, UNVOTE]

# Relative weights of the actions in a user's loop (after its own register and login).
MIX = {
    "list": 22,
    "search": 10,
    "read": 15,
    "create": 12,
    "update": 8,
    "vote": 16,
    "unvote": 8,
    "delete": 5,
    "login": 0.5,
    "register": 0.25,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(sorted_values: list[float], p: float) -> float:
    """Nearest-rank percentile of already sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, round(p / 100 * len(sorted_values) + 0.5 - 1e-9))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    transport: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    problems: list[str] = field(default_factory=list)  # 5xx, transport errors, unexpected
    unexpected: int = 0
    server_errors: int = 0
    transport_errors: int = 0

    def problem(self, text: str) -> None:
        if len(self.problems) < 40:
            self.problems.append(text)


@dataclass
class Shared:
    """What every simulated user's answers said, for the check."""

    stats: Stats
    client: httpx.AsyncClient
    deadline: float
    think: float
    ids: "itertools.count[int]" = field(default_factory=lambda: itertools.count(1))
    created: dict[str, str] = field(default_factory=dict)  # post id -> owner's email
    deleted: set[str] = field(default_factory=set)
    uncertain_posts: set[str] = field(default_factory=set)  # a write whose answer was lost
    lost_creates: int = 0  # creates without an answer: a post may exist that nobody knows


class SimUser:
    def __init__(self, shared: Shared, number: int, rng: random.Random) -> None:
        self.shared = shared
        self.rng = rng
        self.email = f"soak-{number}-{uuid.uuid4().hex[:8]}@example.com"
        self.token: str | None = None
        self.user_id: str | None = None
        self.own: dict[str, bool] = {}  # live own post id -> published
        self.seen: deque[str] = deque(maxlen=200)  # others' post ids seen in lists
        self.voted: set[str] = set()
        self.vote_unknown: set[str] = set()  # a vote whose answer was lost

    async def call(
        self, endpoint: str, method: str, url: str, expect: set[int], **kwargs: Any
    ) -> httpx.Response | None:
        shared, stats = self.shared, self.shared.stats
        rid = f"soak-{next(shared.ids)}"
        headers = {"X-Request-ID": rid}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        started = time.perf_counter()
        try:
            response = await shared.client.request(method, url, headers=headers, **kwargs)
        except httpx.TransportError as error:
            elapsed = (time.perf_counter() - started) * 1000
            stats.transport_errors += 1
            stats.transport[endpoint][type(error).__name__] += 1
            stats.problem(
                f"transport error {type(error).__name__} after {elapsed:.0f} ms: {endpoint} "
                f"{url} request id {rid}"
            )
            return None
        elapsed = (time.perf_counter() - started) * 1000
        stats.latencies[endpoint].append(elapsed)
        stats.statuses[endpoint][response.status_code] += 1
        if response.status_code >= 500:
            stats.server_errors += 1
            stats.problem(
                f"{response.status_code} on {endpoint} {url} request id {rid}: "
                f"{response.text[:200]}"
            )
        elif response.status_code not in expect:
            self.unexpected(
                f"{response.status_code} (expected {sorted(expect)}) on {endpoint} {url} "
                f"request id {rid}: {response.text[:200]}"
            )
        return response

    def unexpected(self, text: str) -> None:
        self.shared.stats.unexpected += 1
        self.shared.stats.problem(f"unexpected: {text}")

    async def start(self) -> bool:
        """Register and log in, retrying failures until the deadline."""
        expect = {201}
        while time.monotonic() < self.shared.deadline:
            response = await self.call(
                REGISTER,
                "POST",
                "/users/",
                expect,
                json={"email": self.email, "password": PASSWORD},
            )
            if response is not None and response.status_code in (201, 409):
                break
            expect = {201, 409}  # the lost attempt may have registered it
            await asyncio.sleep(1)
        while time.monotonic() < self.shared.deadline:
            if await self.login():
                return True
            await asyncio.sleep(1)
        return False

    async def login(self) -> bool:
        response = await self.call(
            LOGIN, "POST", "/login", {200}, data={"username": self.email, "password": PASSWORD}
        )
        if response is None or response.status_code != 200:
            return False
        self.token = response.json()["access_token"]
        # The user's id is the token's `sub` claim (no request needed to learn it).
        claims = self.token.split(".")[1]
        self.user_id = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))[
            "sub"
        ]
        return True

    async def run(self) -> None:
        if not await self.start():
            return
        actions = list(MIX)
        weights = list(MIX.values())
        while time.monotonic() < self.shared.deadline:
            action = self.rng.choices(actions, weights)[0]
            await getattr(self, f"do_{action}")()
            if self.shared.think:
                await asyncio.sleep(self.rng.uniform(0, self.shared.think))

    async def do_login(self) -> None:
        await self.login()

    async def do_register(self) -> None:
        await self.call(
            REGISTER, "POST", "/users/", {409}, json={"email": self.email, "password": PASSWORD}
        )

    def _remember(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            post = item["Post"]
            if post["owner_id"] != self.user_id and post["id"] not in self.seen:
                self.seen.append(post["id"])

    async def do_list(self) -> None:
        limit = self.rng.choice([5, 10, 10, 20, 50])
        skip = self.rng.choice([0, 0, 0, 0, 5, 10, 30])
        response = await self.call(
            LIST, "GET", "/posts/", {200}, params=f"limit={limit}&skip={skip}"
        )
        if response is None or response.status_code != 200:
            return
        items = response.json()
        if len(items) > limit or "x-total-count" not in response.headers:
            self.unexpected(f"list of {len(items)} for limit {limit}, headers {response.headers}")
        self._remember(items)

    async def do_search(self) -> None:
        term = self.rng.choice(SEARCHES)
        response = await self.call(
            SEARCH, "GET", "/posts/", {200}, params={"search": term, "limit": 20}
        )
        if response is None or response.status_code != 200:
            return
        items = response.json()
        for item in items:
            post = item["Post"]
            if term.lower() not in (post["title"] + "\n" + post["content"]).lower():
                self.unexpected(f"search {term!r} answered post {post['id']} {post['title']!r}")
        self._remember(items)

    async def do_read(self) -> None:
        candidates = [*self.own, *self.seen]
        if not candidates:
            return await self.do_list()
        post_id = self.rng.choice(candidates)
        mine = post_id in self.own
        response = await self.call(READ, "GET", f"/posts/{post_id}", {200} if mine else {200, 404})
        if response is None:
            return
        if response.status_code == 200:
            body = response.json()
            if body["Post"]["id"] != post_id or body["votes"] < 0:
                self.unexpected(f"read {post_id} answered {body}")
        elif response.status_code == 404 and not mine:
            self.forget(post_id)

    def forget(self, post_id: str) -> None:
        """Stop picking a post that answered 404: deleted, or made a draft by its owner. A
        draft keeps its votes (and may be published again), so our vote on it is remembered."""
        if post_id in self.seen:
            self.seen.remove(post_id)

    def _text(self) -> tuple[str, str]:
        a, b = self.rng.sample(WORDS, 2)
        n = self.rng.randrange(1000)
        return f"{a.title()} {b} post #{n}", f"{self.email} writes about {a} and {b}. " * 3

    async def do_create(self) -> None:
        title, content = self._text()
        published = self.rng.random() < 0.85
        response = await self.call(
            CREATE,
            "POST",
            "/posts/",
            {201},
            json={"title": title, "content": content, "published": published},
        )
        if response is None:
            self.shared.lost_creates += 1
            return
        if response.status_code == 201:
            post_id = response.json()["id"]
            self.own[post_id] = published
            self.shared.created[post_id] = self.email

    async def do_update(self) -> None:
        if not self.own:
            return await self.do_create()
        post_id = self.rng.choice(list(self.own))
        title, content = self._text()
        published = self.rng.random() < 0.85
        response = await self.call(
            UPDATE,
            "PUT",
            f"/posts/{post_id}",
            {200},
            json={"title": title, "content": content, "published": published},
        )
        if response is None:
            self.shared.uncertain_posts.add(post_id)
        elif response.status_code == 200:
            body = response.json()
            if (body["title"], body["published"]) != (title, published):
                self.unexpected(f"update of {post_id} answered {body}")
            self.own[post_id] = published

    async def do_delete(self) -> None:
        if len(self.own) < 2:
            return await self.do_create()
        post_id = self.rng.choice(list(self.own))
        response = await self.call(DELETE, "DELETE", f"/posts/{post_id}", {204})
        if response is None:
            self.shared.uncertain_posts.add(post_id)
            del self.own[post_id]
        elif response.status_code == 204:
            self.shared.deleted.add(post_id)
            del self.own[post_id]
            self.voted.discard(post_id)
            self.vote_unknown.discard(post_id)

    async def vote(self, post_id: str, direction: int) -> None:
        endpoint = VOTE if direction else UNVOTE
        if post_id in self.vote_unknown:
            expect = {201, 404, 409}
        elif direction == 1:
            expect = {409} if post_id in self.voted else {201}
        else:
            expect = {201} if post_id in self.voted else {404}
        if post_id not in self.own:
            expect.add(404)  # deleted (or made a draft) by its owner meanwhile
        response = await self.call(
            endpoint, "POST", "/vote/", expect, json={"post_id": post_id, "dir": direction}
        )
        if response is None:
            self.vote_unknown.add(post_id)
            return
        status = response.status_code
        if status == 201 or (status == 409 and direction == 1):
            self.vote_unknown.discard(post_id)
            (self.voted.add if direction else self.voted.discard)(post_id)
        elif status == 404 and direction == 0:
            detail = response.json().get("detail", "")
            if detail == "Vote does not exist":
                self.vote_unknown.discard(post_id)
                self.voted.discard(post_id)
            else:
                self.forget(post_id)
        elif status == 404:
            self.forget(post_id)

    async def do_vote(self) -> None:
        roll = self.rng.random()
        if roll < 0.15 and self.voted:  # again: 409
            post_id = self.rng.choice(sorted(self.voted))
        elif roll < 0.25 and self.own:  # one's own post
            post_id = self.rng.choice(list(self.own))
        else:
            fresh = [p for p in self.seen if p not in self.voted]
            if not fresh:
                return await self.do_list()
            post_id = self.rng.choice(fresh)
        await self.vote(post_id, 1)

    async def do_unvote(self) -> None:
        if self.voted and self.rng.random() < 0.8:
            post_id = self.rng.choice(sorted(self.voted))
        elif self.seen:  # never voted, or not any more: 404
            post_id = self.rng.choice(list(self.seen))
        else:
            return await self.do_list()
        await self.vote(post_id, 0)


async def run_traffic(
    base: str,
    users: int,
    duration: float,
    ramp: float,
    think: float,
    request_timeout: float,
    seed: int,
) -> tuple[Shared, list[SimUser], float, bool]:
    limits = httpx.Limits(max_connections=users + 8, max_keepalive_connections=users + 8)
    async with httpx.AsyncClient(
        base_url=base, timeout=request_timeout, limits=limits, trust_env=False
    ) as client:
        started = time.monotonic()
        shared = Shared(Stats(), client, started + duration, think)
        sims = [SimUser(shared, n, random.Random(seed * 1000 + n)) for n in range(users)]

        # Arrivals spread over `ramp` seconds: each costs two bcrypt hashes (~0.25 s each at
        # cost 12, on the server's one bcrypt thread on a 2-core machine), so all at once would
        # be a login storm rather than a mix.
        async def arrive(sim: SimUser, delay: float) -> None:
            await asyncio.sleep(delay)
            await sim.run()

        tasks = [asyncio.create_task(arrive(sim, ramp * n / users)) for n, sim in enumerate(sims)]
        # Bounded: after the deadline each user finishes its request in flight, at most one
        # timeout (plus margin) later.
        done, pending = await asyncio.wait(tasks, timeout=duration + request_timeout + 15)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        crashed = False
        for task in done:
            if task.exception() is not None:
                crashed = True
                error = task.exception()
                shared.stats.problem(f"simulated user crashed: {type(error).__name__}: {error}")
        if pending:
            shared.stats.problem(f"{len(pending)} users still busy after the bound; cancelled")
        elapsed = time.monotonic() - started
        return shared, sims, elapsed, bool(pending) or crashed


def report_traffic(stats: Stats, elapsed: float) -> None:
    total = sum(sum(c.values()) for c in stats.statuses.values()) + stats.transport_errors
    everything = sorted(v for values in stats.latencies.values() for v in values)
    by_status: Counter[int] = Counter()
    for counter in stats.statuses.values():
        by_status.update(counter)
    print(f"\nrequests: {total} in {elapsed:.1f} s = {total / elapsed:.1f} requests/s")
    print("responses by status: " + ", ".join(f"{s}: {n}" for s, n in sorted(by_status.items())))
    print(f"transport errors: {stats.transport_errors}")
    print(
        f"latency overall: p50 {percentile(everything, 50):.1f} ms, "
        f"p99 {percentile(everything, 99):.1f} ms, max {max(everything, default=0):.1f} ms"
    )
    print(f"\n{'endpoint':<22}{'count':>7}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for endpoint in ENDPOINTS:
        values = sorted(stats.latencies.get(endpoint, []))
        statuses = stats.statuses.get(endpoint, Counter())
        errors = stats.transport.get(endpoint, Counter())
        count = len(values) + sum(errors.values())
        if not count:
            continue
        parts = [f"{s}: {n}" for s, n in sorted(statuses.items())]
        parts += [f"{name}: {n}" for name, n in sorted(errors.items())]
        print(
            f"{endpoint:<22}{count:>7}{percentile(values, 50):>9.1f}{percentile(values, 99):>9.1f}"
            f"  {', '.join(parts)}"
        )


async def api_vote_counts(
    base: str,
    request_timeout: float,
    tokens: dict[str, str],
    any_token: str,
    posts: list[dict[str, Any]],
) -> tuple[dict[str, int], list[str]]:
    """Each post's vote count as GET /posts/{id} answers it, read as its owner if known."""
    counts: dict[str, int] = {}
    problems: list[str] = []
    limit = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base, timeout=request_timeout, trust_env=False) as client:

        async def read(post: dict[str, Any]) -> None:
            post_id = str(post["_id"])
            owner_token = tokens.get(str(post.get("owner_id")))
            token = owner_token or any_token
            async with limit:
                try:
                    response = await client.get(
                        f"/posts/{post_id}",
                        headers={
                            "Authorization": f"Bearer {token}",
                            "X-Request-ID": f"soak-check-{post_id}",
                        },
                    )
                except httpx.TransportError as error:
                    problems.append(f"GET /posts/{post_id}: {type(error).__name__}")
                    return
            if response.status_code == 200:
                counts[post_id] = response.json()["votes"]
            elif not (response.status_code == 404 and owner_token is None):  # others' drafts
                problems.append(f"GET /posts/{post_id}: {response.status_code} {response.text}")

        await asyncio.gather(*(read(post) for post in posts))
    return counts, problems


def check_consistency(
    base: str, mongodb_url: str, database: str, timeout: float, shared: Shared, sims: list[SimUser]
) -> list[str]:
    failures: list[str] = []
    client: pymongo.MongoClient[dict[str, Any]] = pymongo.MongoClient(
        mongodb_url, tz_aware=True, serverSelectionTimeoutMS=10_000
    )
    try:
        db = client[database]
        users = {doc["_id"] for doc in db.users.find({}, {"_id": 1})}
        posts = list(db.posts.find({}, {"_id": 1, "owner_id": 1, "published": 1}))
        votes = list(db.votes.find({}, {"post_id": 1, "user_id": 1}))
    finally:
        client.close()
    post_ids = {doc["_id"] for doc in posts}
    print(f"\ndatabase: {len(users)} users, {len(posts)} posts, {len(votes)} votes")

    # Votes: no orphans, no duplicates.
    per_post: Counter[ObjectId] = Counter()
    pairs: Counter[tuple[ObjectId, ObjectId]] = Counter()
    orphans = []
    for vote in votes:
        per_post[vote["post_id"]] += 1
        pairs[(vote["post_id"], vote["user_id"])] += 1
        if vote["post_id"] not in post_ids or vote["user_id"] not in users:
            orphans.append(vote)
    for vote in orphans[:10]:
        gone = "post" if vote["post_id"] not in post_ids else "user"
        failures.append(
            f"orphan vote {vote['_id']}: post {vote['post_id']} user {vote['user_id']} "
            f"({gone} missing)"
        )
    if orphans:
        failures.append(f"{len(orphans)} orphan votes in all")
    duplicates = [pair for pair, n in pairs.items() if n > 1]
    if duplicates:
        failures.append(f"{len(duplicates)} (post, user) pairs voted more than once")
    orphan_posts = [doc["_id"] for doc in posts if doc.get("owner_id") not in users]
    if orphan_posts:
        failures.append(f"{len(orphan_posts)} posts whose owner does not exist: {orphan_posts[:5]}")

    # Posts the script created and deleted.
    present = {str(i) for i in post_ids}
    uncertain = shared.uncertain_posts
    missing = [p for p in shared.created if p not in shared.deleted and p not in uncertain]
    missing = [p for p in missing if p not in present]
    if missing:
        failures.append(f"{len(missing)} posts created and not deleted are missing: {missing[:5]}")
    resurrected = [p for p in shared.deleted if p in present]
    if resurrected:
        failures.append(f"{len(resurrected)} deleted posts are present: {resurrected[:5]}")
    ours = {sim.user_id for sim in sims if sim.user_id}
    unknown = [
        p for p in posts if str(p.get("owner_id")) in ours and str(p["_id"]) not in shared.created
    ]
    if len(unknown) > shared.lost_creates:
        failures.append(
            f"{len(unknown)} posts of the script's users it never saw created "
            f"(only {shared.lost_creates} creates went unanswered)"
        )
    print(
        f"script: {len(shared.created)} posts created, {len(shared.deleted)} deleted, "
        f"{len(uncertain)} with a lost answer (not checked)"
    )

    # Vote counts as the API answers them.
    tokens = {sim.user_id: sim.token for sim in sims if sim.user_id and sim.token}
    if not tokens:
        failures.append("no logged-in user to read the posts with")
        return failures
    any_token = next(iter(tokens.values()))
    counts, problems = asyncio.run(api_vote_counts(base, timeout, tokens, any_token, posts))
    failures += problems[:10]
    wrong = [
        (post_id, n, per_post[ObjectId(post_id)])
        for post_id, n in counts.items()
        if n != per_post[ObjectId(post_id)]
    ]
    for post_id, api, held in wrong[:10]:
        failures.append(f"post {post_id}: the API says {api} votes, votes holds {held}")
    if wrong:
        failures.append(f"{len(wrong)} posts with a wrong vote count in all")
    hidden = len(posts) - len(counts) - len(problems)
    print(
        f"vote counts compared through the API: {len(counts)} posts, {len(wrong)} differ"
        + (f" ({hidden} drafts of users not the script's, not readable)" if hidden else "")
    )

    # Each user's votes, as its own answers said (on posts that still exist).
    by_user: dict[str, set[str]] = defaultdict(set)
    for vote in votes:
        by_user[str(vote["user_id"])].add(str(vote["post_id"]))
    mismatched = 0
    for sim in sims:
        if not sim.user_id:
            continue
        stored = {p for p in by_user.get(sim.user_id, set()) if p in present}
        expected = {p for p in sim.voted if p in present}
        differ = (stored ^ expected) - sim.vote_unknown
        if differ:
            mismatched += 1
            if mismatched <= 5:
                failures.append(
                    f"user {sim.email}: votes stored {len(stored)}, answered {len(expected)}, "
                    f"differing posts {sorted(differ)[:5]}"
                )
    if mismatched:
        failures.append(f"{mismatched} users whose stored votes differ from their answers")
    return failures


def start_server(
    directory: Path, port: int, store_port: int, storage: str, rounds: int
) -> subprocess.Popen[bytes]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MONGODB_URL", "SECRET_KEY", "EMBEDDED_STORE_URL"}
    }
    env.update(
        DATA_DIR=str(directory / "data"),
        EMBEDDED_STORAGE=storage,
        EMBEDDED_PORT=str(store_port),
        BCRYPT_ROUNDS=str(rounds),
        LOG_LEVEL="INFO",
        LOG_FORMAT="json",
    )
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port)]
    with open(directory / "server.log", "wb") as log:
        return subprocess.Popen(
            command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT
        )


def wait_ready(base: str, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            sys.exit(f"the server exited with {process.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2, trust_env=False).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    sys.exit(f"the server at {base} was not ready within 60 s")


def server_log_summary(path: Path) -> None:
    """Error lines and the slowest requests of the server's log."""
    lines = path.read_text(errors="replace").splitlines()
    errors = [line for line in lines if '"level": "ERROR"' in line or '"status": 5' in line]
    print(f"\nserver log {path}: {len(lines)} lines, {len(errors)} errors or 5xx")
    for line in errors[:5]:
        print("  " + line[:400])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60, help="seconds of traffic (60)")
    parser.add_argument("--users", type=int, default=32, help="simulated users (32)")
    parser.add_argument(
        "--think", type=float, default=0.05, help="each user pauses 0 to THINK s between requests"
    )
    parser.add_argument(
        "--ramp",
        type=float,
        default=None,
        help="users arrive spread over RAMP s (default: a third of the duration, at most 20)",
    )
    parser.add_argument("--timeout", type=float, default=30, help="per request, seconds (30)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (random)")
    parser.add_argument("--url", help="target this running server instead of starting one")
    parser.add_argument("--mongodb-url", help="with --url: its MongoDB, for the check")
    parser.add_argument("--database", default="social_api", help="MongoDB database (social_api)")
    parser.add_argument("--no-db-check", action="store_true", help="with --url: skip the check")
    parser.add_argument(
        "--storage", choices=["sqlite", "memory"], default="sqlite", help="embedded store (sqlite)"
    )
    parser.add_argument("--rounds", type=int, default=12, help="BCRYPT_ROUNDS of the server (12)")
    parser.add_argument("--keep", action="store_true", help="keep the server's directory")
    args = parser.parse_args()
    if not 1 <= args.users <= 500 or not 1 <= args.duration <= 3600:
        parser.error("--users must be 1 to 500 and --duration 1 to 3600 s")
    if args.url and not args.mongodb_url and not args.no_db_check:
        parser.error("--url needs --mongodb-url for the check, or --no-db-check to skip it")
    ramp = args.ramp if args.ramp is not None else min(20.0, args.duration / 3)
    if not 0 <= ramp <= args.duration:
        parser.error("--ramp must be 0 to the duration")
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)

    directory: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    if args.url:
        base, mongodb_url = args.url.rstrip("/"), args.mongodb_url
        print(f"server: {base} (already running)")
    else:
        directory = Path(tempfile.mkdtemp(prefix="soak-"))
        port, store_port = free_port(), free_port()
        base = f"http://127.0.0.1:{port}"
        mongodb_url = f"mongodb://127.0.0.1:{store_port}/?directConnection=true"
        process = start_server(directory, port, store_port, args.storage, args.rounds)
        print(
            f"server: social-api serve on {base}, embedded {args.storage} store on port "
            f"{store_port}, BCRYPT_ROUNDS={args.rounds}, log {directory / 'server.log'}"
        )
    passed = False
    try:
        wait_ready(base, process)
        print(
            f"traffic: {args.users} users for {args.duration:g} s (arriving over {ramp:g} s), "
            f"think 0-{args.think:g} s, timeout {args.timeout:g} s, seed {seed}; "
            f"machine {os.cpu_count()} cores"
        )
        shared, sims, elapsed, stuck = asyncio.run(
            run_traffic(base, args.users, args.duration, ramp, args.think, args.timeout, seed)
        )
        stats = shared.stats
        report_traffic(stats, elapsed)
        failures: list[str] = []
        if stuck:
            failures.append("some users did not finish within the bound (see problems)")
        if args.no_db_check:
            print("\nconsistency check SKIPPED (--no-db-check): no database to read")
        elif stuck:
            print("\nconsistency check SKIPPED: requests may still be running on the server")
        else:
            failures += check_consistency(
                base, mongodb_url, args.database, args.timeout, shared, sims
            )
        if stats.problems:
            print("\nproblems (first 40):")
            for problem in stats.problems:
                print("  " + problem)
        if failures:
            print("\nconsistency failures:")
            for failure in failures:
                print("  " + failure)
        if directory is not None and (stats.server_errors or stats.transport_errors):
            server_log_summary(directory / "server.log")
        passed = not (stats.server_errors or stats.transport_errors or stats.unexpected or failures)
        check = "skipped" if args.no_db_check else ("failed" if failures else "passed")
        verdict = "PASS" if passed else "FAIL"
        if passed and args.no_db_check:
            verdict = "PASS (traffic only)"
        print(
            f"\n{verdict}: {stats.server_errors} 5xx, "
            f"{stats.transport_errors} transport errors, {stats.unexpected} unexpected answers, "
            f"consistency check {check}"
        )
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if directory is not None:
            if passed and not args.keep:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                print(f"server directory kept: {directory}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
