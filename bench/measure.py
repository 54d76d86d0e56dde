"""The measurements with load: wrk runs per endpoint (throughput, for information), and GET
/posts/{id} under logins with the event-loop lag. Requests one at a time are bench/endpoints.py.
"""

import asyncio
import itertools
import json
import statistics
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlencode

import httpx

from bench import report, wrk
from bench.dataset import DEMO_PASSWORD, Say, Voters, client
from bench.processes import HarnessError, Processes

HTTP_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 60.0
LOGIN_USERS = range(5, 37)  # demo5 ... demo36, in turn (see bench/run.py)
LAG_USERS = range(101, 109)  # one per login loop of the lag measurement
LAG_CONNECTIONS = 4

# Endpoint labels, in the order of the report.
LIST10 = "GET /posts/?limit=10"
LIST100 = "GET /posts/?limit=100"
READ = "GET /posts/{id}"
CREATE = "POST /posts/"
VOTE = "POST /vote/"
LOGIN = "POST /login"

JSON = {"Content-Type": "application/json"}
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@dataclass(frozen=True)
class Endpoint:
    """One request as the measurements send it (votes and logins vary per request)."""

    label: str
    kind: Literal["read", "write", "login"]
    script: str  # the name of its wrk script
    method: str
    path: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str | None = None


def login_form(number: int) -> str:
    return urlencode({"username": f"demo{number}@example.com", "password": DEMO_PASSWORD})


def endpoints(token: str, post_id: str) -> list[Endpoint]:
    """The API's measured endpoints, as demo1 (whose token this is) sends them."""
    bearer = {"Authorization": f"Bearer {token}"}
    post = json.dumps({"title": "Benchmark post", "content": "Written by wrk.", "published": True})
    return [
        Endpoint(LIST10, "read", "list-10", "GET", "/posts/?limit=10", bearer),
        Endpoint(LIST100, "read", "list-100", "GET", "/posts/?limit=100", bearer),
        Endpoint(READ, "read", "read", "GET", f"/posts/{post_id}", bearer),
        Endpoint(CREATE, "write", "create", "POST", "/posts/", {**bearer, **JSON}, post),
        Endpoint(VOTE, "write", "vote", "POST", "/vote/", JSON),
        Endpoint(LOGIN, "login", "login", "POST", "/login", FORM, login_form(LOGIN_USERS[0])),
    ]


def login_script() -> str:
    """Logins as LOGIN_USERS in turn, each with the OAuth2 form."""
    forms = ", ".join(wrk.lua_string(login_form(n)) for n in LOGIN_USERS)
    rotation = f"""
local forms = {{{forms}}}
local turn = 0
function request()
   turn = turn % #forms + 1
   return wrk.format("POST", "/login", nil, forms[turn])
end
"""
    return wrk.request_script("POST", FORM) + rotation


@dataclass
class Measured:
    """An endpoint's wrk runs and what the report takes from them."""

    label: str
    command: str
    runs: list[wrk.WrkResult]

    @property
    def median(self) -> wrk.WrkResult:
        """The median run by throughput (the lower middle one of an even count)."""
        return sorted(self.runs, key=lambda run: run.rps)[(len(self.runs) - 1) // 2]

    @property
    def failures(self) -> int:
        return sum(run.failures for run in self.runs)

    def statuses(self) -> dict[str, int]:
        total: Counter[int] = Counter()
        for run in self.runs:
            total.update(run.statuses)
        return {str(code): n for code, n in sorted(total.items())}

    def socket_errors(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for run in self.runs:
            total.update(run.socket_errors)
        return dict(total)

    def as_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "command": self.command,
            "rps": self.median.rps,
            "p50_ms": self.median.p50,
            "p99_ms": self.median.p99,
            "failures": self.failures,
            "statuses": self.statuses(),
            "socket_errors": self.socket_errors(),
            "runs": [_run_dict(run) for run in self.runs],
        }


def _run_dict(run: wrk.WrkResult) -> dict[str, Any]:
    return {
        "rps": run.rps,
        "requests": run.requests,
        "seconds": run.seconds,
        "latency_ms": {str(p): ms for p, ms in run.latency_ms.items()},
        "non_2xx": run.non_2xx,
        "socket_errors": run.socket_errors,
        "statuses": {str(code): n for code, n in run.statuses.items()},
    }


@dataclass
class Harness:
    """What the measurements share."""

    directory: Path
    processes: Processes
    say: Say
    api: str
    instrumented: str
    voters: Voters
    token: str  # demo1's
    connections: int
    duration: float
    wrk_timeout: float
    idle_probe_s: float = 0.0  # GET /readyz when the API is idle
    write_rps: float = 500.0  # the fastest write so far, to size the vote pairs
    problems: list[str] = field(default_factory=list)
    numbers: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def file(self, name: str, text: str) -> Path:
        """A new file of the run's directory: `<name>-<n>.lua` (or .txt for data)."""
        suffix = ".txt" if name == "pairs" else ".lua"
        path = self.directory / f"{name}-{next(self.numbers)}{suffix}"
        path.write_text(text)
        return path


# --- wrk ---------------------------------------------------------------------------------


def measure(harness: Harness, endpoint: Endpoint, base: str, runs: int) -> Measured:
    """`runs` wrk runs of one endpoint, each started once the API is idle."""
    results: list[wrk.WrkResult] = []
    command = ""
    for number in range(1, runs + 1):
        script, script_args = wrk_script(harness, endpoint)
        argv = wrk.wrk_command(
            base + endpoint.path,
            script,
            connections=harness.connections,
            duration=harness.duration,
            timeout=harness.wrk_timeout,
            script_args=script_args,
        )
        harness.processes.check()
        if base == harness.api:
            settle(harness)
        result, _ = wrk.run_wrk(argv, harness.duration)
        if endpoint.label == VOTE:
            count_votes(harness, result, number)
        results.append(result)
        command = display_command(argv, base, endpoint)
        harness.say(f"  {endpoint.label:<40} run {number}/{runs}: {describe(result)}")
    measured = Measured(endpoint.label, command, results)
    if measured.failures:
        harness.problems.append(
            f"{endpoint.label}: {measured.failures:,} answers other than 2xx or socket errors "
            f"in its wrk runs (answers {report.statuses(measured.statuses())}; socket errors "
            f"{report.statuses(measured.socket_errors())})"
        )
    return measured


def wrk_script(harness: Harness, endpoint: Endpoint) -> tuple[Path, list[str]]:
    """The Lua script of one run, and its arguments (the vote run's pairs file)."""
    if endpoint.label == VOTE:
        # Twice the pairs the fastest write so far would use, and at least 2,000: a vote
        # run that used them up would vote on a missing post (404), a reported failure.
        wanted = int(max(2000, 2 * harness.write_rps * harness.duration))
        harness.voters.ensure(wanted)
        pairs = harness.file("pairs", "")
        harness.voters.write_pairs(pairs, wanted)
        return harness.file("vote", wrk.vote_script(harness.voters.tokens)), [str(pairs)]
    if endpoint.label == LOGIN:
        return harness.file("login", login_script()), []
    text = wrk.request_script(endpoint.method, endpoint.headers, endpoint.body)
    return harness.file(endpoint.script, text), []


def count_votes(harness: Harness, result: wrk.WrkResult, number: int) -> None:
    """Mark the pairs the run used (sent or not) as used; a run past its last is a failure."""
    if result.pairs_used is None or result.pairs_total is None:
        raise HarnessError("the vote script printed no pair count")
    harness.voters.used += min(result.pairs_used, result.pairs_total)
    harness.write_rps = max(harness.write_rps, result.rps)
    if result.pairs_used > result.pairs_total:
        harness.problems.append(
            f"{VOTE} run {number}: the vote pairs ran out "
            f"({result.pairs_used:,} requests for {result.pairs_total:,} pairs)"
        )


def probe(base: str) -> float:
    """Seconds that `GET /readyz` (a ping and the index checks: database round trips) takes."""
    started = time.perf_counter()
    httpx.get(base + "/readyz", timeout=HTTP_TIMEOUT_S, trust_env=False)
    return time.perf_counter() - started


def settle(harness: Harness) -> None:
    """Wait until the API is idle before a run.

    When wrk stops, the requests it leaves in flight go on running in the API and the store
    (up to MONGODB_TIMEOUT_MS each): a run that started meanwhile would measure the previous
    one's leftovers. Idle: a readiness probe about as fast as at the start (or under 0.25 s).
    """
    started = time.monotonic()
    while probe(harness.api) > max(0.25, 2 * harness.idle_probe_s):
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            harness.problems.append(f"the API was still busy {SETTLE_TIMEOUT_S:g} s after a run")
            return
        time.sleep(0.2)
    waited = time.monotonic() - started
    if waited > 1:
        harness.say(f"  (waited {waited:.1f} s for the API to finish the last run's requests)")


def display_command(argv: list[str], base: str, endpoint: Endpoint) -> str:
    """The wrk command as the report shows it: the script by its kind, the server as $API."""
    shown = [*argv[: argv.index("-s")], "-s", f"{endpoint.script}.lua"]
    url = argv[argv.index("-s") + 2].replace(base, "$API")
    return " ".join(shown) + f' "{url}"'


def describe(result: wrk.WrkResult) -> str:
    errors = f", socket errors {result.errors}" if result.errors else ""
    return (
        f"{result.rps:8.1f} req/s  p50 {report.ms(result.p50):>9}  p99 {report.ms(result.p99):>9}"
        f"  answers {report.statuses(result.statuses)}{errors}"
    )


# --- commands per request, from the instrumented server ----------------------------------


def summarize(label: str, stats: dict[str, Any]) -> dict[str, Any]:
    """Medians and command counts of the requests the instrumented server recorded."""
    records = stats["requests"]
    counts = [len(record["commands"]) for record in records]
    names = Counter(tuple(record["commands"]) for record in records)
    statuses = Counter(record["status"] for record in records)
    return {
        "label": label,
        "requests": len(records),
        "statuses": {str(code): n for code, n in sorted(statuses.items())},
        "commands_min": min(counts, default=0),
        "commands_max": max(counts, default=0),
        "command_names": list(names.most_common(1)[0][0]) if names else [],
        "server_ms": _median(record["server_ms"] for record in records),
        "db_ms": _median(record["db_ms"] for record in records),
        "outside_ms": _median(record["server_ms"] - record["db_ms"] for record in records),
        "commands_total": stats["commands_total"],
        "commands_unattributed": stats["commands_unattributed"],
    }


def _median(values: Iterable[float]) -> float | None:
    listed = list(values)
    return statistics.median(listed) if listed else None


# --- event-loop lag under logins ---------------------------------------------------------


async def login_loop(http: httpx.AsyncClient, email: str, statuses: Counter[int]) -> None:
    """Log in as `email` again and again until cancelled."""
    form = {"username": email, "password": DEMO_PASSWORD}
    while True:
        try:
            response = await http.post("/login", data=form)
            statuses[response.status_code] += 1
        except httpx.TransportError:
            statuses[0] += 1  # counted as a failure; do not spin on a dead server
            await asyncio.sleep(0.1)


async def wrk_async(argv: list[str]) -> wrk.WrkResult:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    try:
        out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    if process.returncode != 0:
        raise HarnessError(f"wrk exited with {process.returncode}: {err.decode()}")
    return wrk.parse_wrk(out.decode())


async def lag_pass(harness: Harness, url: str, duration: float, logins: bool) -> dict[str, Any]:
    """GET /posts/{id} with wrk on the instrumented API, alone or while clients log in."""
    bearer = {"Authorization": f"Bearer {harness.token}"}
    script = harness.file("lag-read", wrk.request_script("GET", bearer))
    argv = wrk.wrk_command(
        url, script, connections=LAG_CONNECTIONS, duration=duration, timeout=harness.wrk_timeout
    )
    statuses: Counter[int] = Counter()
    async with client(harness.instrumented) as http:
        (await http.post("/__bench__/reset")).raise_for_status()
        loops = [
            asyncio.create_task(login_loop(http, f"demo{n}@example.com", statuses))
            for n in (LAG_USERS if logins else ())
        ]
        try:
            result = await wrk_async(argv)
        finally:
            for task in loops:
                task.cancel()
            await asyncio.gather(*loops, return_exceptions=True)
        stats = (await http.get("/__bench__/stats")).json()
    if result.failures:
        harness.problems.append(
            f"lag measurement: GET /posts/{{id}} answers {report.statuses(result.statuses)}"
        )
    if set(statuses) - {200}:
        harness.problems.append(f"lag measurement: login answers {dict(statuses)}")
    return {
        "command": " ".join(argv[: argv.index("-s")]) + f' "{READ}"',
        "rps": result.rps,
        "p50_ms": result.p50,
        "p99_ms": result.p99,
        "statuses": {str(code): n for code, n in result.statuses.items()},
        "logins": sum(statuses.values()),
        "login_statuses": {str(code): n for code, n in statuses.items()},
        "lag": stats["lag"],
    }


def measure_lag(harness: Harness, post_id: str, duration: float) -> dict[str, Any]:
    url = f"{harness.instrumented}/posts/{post_id}"
    runs = {}
    for name, logins in (("alone", False), ("with_logins", True)):
        run = asyncio.run(lag_pass(harness, url, duration, logins))
        lag = run["lag"]
        harness.say(
            f"  {READ} {name.replace('_', ' ')}: p99 {report.ms(run['p99_ms'])}, "
            f"{run['logins']} logins, lag max {report.ms(lag['max_ms'])} "
            f"p99 {report.ms(lag['p99_ms'])}"
        )
        runs[name] = run
    return {"clients": len(LAG_USERS), "connections": LAG_CONNECTIONS, **runs}
