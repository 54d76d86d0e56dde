"""`make bench`: throughput, latency, database commands and event-loop lag of the service,
measured on loopback, written to BENCHMARKS.md and bench/results.json.

In order:

1. The database. With MONGODB_URL set, that server, database MONGODB_DB (`bench` by
   default), which must be empty; the benchmark drops it at the end (unless --keep).
   Otherwise the embedded store, memory engine, in a process of its own (bench/store.py): a
   database server separate from the API, as PostgreSQL is for the reference.
2. The data: the service's own `social-api seed --users 1000 --posts 10000 --votes 50000
   --random-seed 1` (every demo user's password is `demo-password`). Then 1% of the posts,
   picked with a fixed seed, get the word `zephyrine`, which appears nowhere else, appended
   to their titles with PyMongo (one `bulk_write`: an `update_many` over an `$in` of their
   ids takes the embedded store 4 s): the search looks for it, as the reference searched for
   "a word in 1% of titles".
3. The servers, each a process of its own on 127.0.0.1 with one worker: the API with
   `social-api serve` at the service's defaults (bcrypt cost 12; at LOG_LEVEL=INFO one JSON
   log line per request, into a file, part of each request's cost); the bare FastAPI
   ceiling (bench/bare_app.py); and both again wrapped by bench/instrumented.py. Every
   service setting is given explicitly and they run in a temporary directory, so neither
   the environment nor a .env file changes what is measured. The two servers that need no
   database start while the seed runs.
4. Throughput and latency: `wrk -t1 -c16 -d10s --latency` per endpoint, the reference's
   method (one API worker, median of 3 runs), plus `--timeout 10s`: wrk's default of 2 s
   would leave slower answers out of its latency distribution, and the service's own
   deadline (MONGODB_TIMEOUT_MS) is 5 s. The median run by throughput gives p50 and p99.
   Every request carries demo1's bearer token from POST /login (tokens last 30 minutes, the
   default, longer than a run). Each vote is on a post its user has not voted on: users
   registered for the benchmark (POST /users/, POST /login) walk the published posts, one
   (user, post) pair per request and none twice, in a Lua script. Each run starts once the
   API has finished the requests the previous run left in flight. Answers are counted by
   status code; any answer but a 2xx, or a socket error, is a harness failure (reported,
   and exit status 1).
5. The ceiling: the bare app, measured with the same wrk command; each endpoint's
   throughput is given as a share of it.
6. Database commands and server time, one request at a time (httpx) on the instrumented
   servers: commands per request, server time, time in the database and outside it.
   Targets: reads (the GETs) at most 2 commands, writes at most 3, and the feed's time
   outside the database at most twice the bare app's time per request.
7. Event-loop lag: GET /posts/{id} with `wrk -t1 -c4 -d5s` on the instrumented API, alone,
   then while 8 clients log in continuously (each as its own demo user), with the lag the
   server saw meanwhile. Targets: a p99 at most 3x the one alone; lag under 10 ms.
8. BENCHMARKS.md is written from the results (bench/report.py), keeping the hand-written
   block between `<!-- notes -->` and `<!-- /notes -->` of the previous file, and
   bench/results.json holds the raw numbers. Nothing is written when the harness fails
   before the measurements end.

POST /login runs once by default and the bare app once, to fit the time budget (five
minutes for `make bench` on a fresh clone of this 2-core machine); the six endpoints that
are compared with the reference always get --runs. The login run logs in as demo5 to demo36
in turn: as one user, every attempt in flight would count against that email's throttle
limit of 5 (service/throttle.py) and most would answer 429, which measures the throttle, not
logins; the reference had no throttle, and each login costs the same whoever logs in.

Exit status 0 when everything was measured and every answer was a 2xx, whether or not the
targets were met (the report says which were missed); 1 on a harness failure; 130 when
interrupted. Every process it started is stopped on the way out, whichever way that is.

    .venv/bin/python -m bench.run [--runs 3] [--duration 10] [--users 1000] [--keep] ...
"""

import argparse
import os
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import pymongo

from bench import dataset, measure, report
from bench.bare_app import FEED_FILE_ENV
from bench.measure import BARE, DRIVER, LIST10, LOGIN, READ, Harness, Measured
from bench.processes import HarnessError, Processes, free_port, uvicorn_command, wait_until_up

ROOT = Path(__file__).resolve().parent.parent

# The reference: the course's PostgreSQL version on this machine, same data set, one uvicorn
# worker, wrk -t1 -c16 -d10s, median of 3 runs. Requests per second, and p99 in ms where known.
REFERENCE: dict[str, tuple[float, float | None]] = {
    measure.LIST10: (37, 595),
    measure.LIST100: (15, None),
    measure.SEARCH: (97, None),
    measure.READ: (246, 113),
    measure.CREATE: (240, None),
    measure.VOTE: (310, None),
    measure.LOGIN: (9.1, None),
}
COMMAND_TARGETS = {"read": 2, "write": 3}
SERVERS = ("api", "bare", "instrumented", "instrumented_bare", "instrumented_driver")


class Clock:
    """Console lines stamped with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, line: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {line}", flush=True)


def start_bare_servers(processes: Processes, env: dict[str, str], ports: dict[str, int]) -> Path:
    """The two servers without a database; the file they will serve the page from."""
    feed_file = processes.directory / "feed.json"
    bare_env = {**env, FEED_FILE_ENV: str(feed_file)}
    app = "bench.bare_app:create_app"
    processes.start("bare", uvicorn_command(app, ports["bare"]), bare_env)
    app = "bench.instrumented:create_bare_app"
    processes.start("instrumented-bare", uvicorn_command(app, ports["instrumented_bare"]), bare_env)
    return feed_file


def start_api_servers(processes: Processes, env: dict[str, str], ports: dict[str, int]) -> None:
    serve = [str(dataset.BIN / "social-api"), "serve", "--host", "127.0.0.1"]
    processes.start("api", [*serve, "--port", str(ports["api"])], env)
    app = "bench.instrumented:create_service_app"
    processes.start("instrumented", uvicorn_command(app, ports["instrumented"]), env)
    app = "bench.instrumented:create_driver_app"
    processes.start("instrumented-driver", uvicorn_command(app, ports["instrumented_driver"]), env)


def prepare_data(database: dataset.Database, random_seed: int) -> tuple[int, list[str]]:
    """The search word in 1% of titles, and the published posts (newest first)."""
    with pymongo.MongoClient[dict[str, Any]](database.url, tz_aware=True) as client:
        db = client[database.name]
        return dataset.mark_titles(db, random_seed), dataset.published_posts(db)


def throughput(
    harness: Harness, args: argparse.Namespace, listed: list[measure.Endpoint]
) -> tuple[Measured, list[Measured]]:
    """The bare app, then each endpoint, with wrk."""
    harness.say(f"wrk: {args.connections} connections, {args.duration:g} s per run")
    bare = measure.measure(harness, measure.BARE_ENDPOINT, harness.bare, args.bare_runs)
    measured = []
    for endpoint in listed:
        runs = args.login_runs if endpoint.label == LOGIN else args.runs
        measured.append(measure.measure(harness, endpoint, harness.api, runs))
        if endpoint.kind == "write":
            harness.write_rps = max(harness.write_rps, measured[-1].median.rps)
    return bare, measured


def one_at_a_time(
    harness: Harness, args: argparse.Namespace, listed: list[measure.Endpoint]
) -> list[dict[str, Any]]:
    """Each endpoint's requests one at a time on the instrumented servers."""
    harness.say(
        f"one request at a time on the instrumented servers: up to {args.seq_requests} "
        f"requests or {args.seq_seconds:g} s per endpoint"
    )
    harness.voters.ensure(args.seq_requests)
    targets = [(harness.instrumented, endpoint) for endpoint in listed]
    targets.append((harness.instrumented_bare, measure.BARE_ENDPOINT))
    targets.append((harness.instrumented_driver, measure.DRIVER_ENDPOINT))
    rows = []
    for base, endpoint in targets:
        make = measure.requests_of(harness, endpoint)
        row = measure.sequential(base, endpoint.label, make, args.seq_requests, args.seq_seconds)
        harness.say(f"  {report.sequential_line(row)}")
        if set(row["statuses"]) - {"200", "201"}:
            harness.problems.append(
                f"{row['label']} one at a time: answers {report.statuses(row['statuses'])}"
            )
        if row["commands_unattributed"]:
            harness.problems.append(
                f"{row['label']}: {row['commands_unattributed']} database commands ran outside "
                "any request's context, so commands per request are undercounted"
            )
        rows.append(row)
    return rows


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, with the measured value and whether it holds."""
    found = []
    kinds = {row["label"]: row["kind"] for row in results["endpoints"]}
    for row in results["sequential"]:
        limit = COMMAND_TARGETS.get(kinds.get(row["label"], ""))
        if limit is None:
            continue
        clean = set(row["statuses"]) <= {"200", "201"}
        found.append(
            {
                "target": f"{row['label']}: at most {limit} database commands per request",
                "value": f"{row['commands_min']}-{row['commands_max']}"
                + ("" if clean else " (not every answer was a 2xx)"),
                "holds": clean and row["commands_max"] <= limit,
            }
        )
    by_label = {row["label"]: row for row in results["sequential"]}
    feed, bare = by_label[LIST10], by_label[BARE]
    if feed["outside_ms"] is not None and bare["server_ms"]:
        ratio = feed["outside_ms"] / bare["server_ms"]
        found.append(
            {
                "target": f"{LIST10}: time outside the database at most 2x the bare app's time",
                "value": f"{ratio:.1f}x ({report.ms(feed['outside_ms'])} against "
                f"{report.ms(bare['server_ms'])}){floor_note(by_label.get(DRIVER), bare)}",
                "holds": ratio <= 2 and set(feed["statuses"]) == {"200"},
            }
        )
    lag = results["lag"]
    alone, busy = lag["alone"]["p99_ms"], lag["with_logins"]["p99_ms"]
    if alone and busy:
        found.append(
            {
                "target": f"{READ} p99 while {lag['clients']} clients log in: at most 3x alone",
                "value": f"{busy / alone:.1f}x ({report.ms(busy)} against {report.ms(alone)})",
                "holds": busy / alone <= 3,
            }
        )
    for stat in ("max", "p99"):
        value = lag["with_logins"]["lag"][f"{stat}_ms"]
        if value is not None:
            found.append(
                {
                    "target": f"event-loop lag during the logins ({stat}): under 10 ms",
                    "value": report.ms(value),
                    "holds": value < 10,
                }
            )
    return found


def floor_note(driver: dict[str, Any] | None, bare: dict[str, Any]) -> str:
    """What the bare app with the feed's database commands spends outside the database, as
    a multiple of the bare app: how much of the target the driver and models leave."""
    if driver is None or driver["outside_ms"] is None or not bare["server_ms"]:
        return ""
    floor = driver["outside_ms"] / bare["server_ms"]
    outside = report.ms(driver["outside_ms"])
    return f"; the bare app with the feed's 2 commands: {outside}, {floor:.1f}x"


@dataclass
class Setup:
    """What the measurements start from."""

    database: dataset.Database
    harness: Harness
    seed_command: list[str]
    seed_seconds: float
    marked: int
    post_ids: list[str]  # published, newest first
    page_source: str


def prepare(args: argparse.Namespace, processes: Processes, say: dataset.Say) -> Setup:
    """The store, the data, the servers and the users: everything but the measurements."""
    database = dataset.open_database(processes)
    if database.external and not args.keep:
        processes.after_stop.append(lambda: dataset.drop(database))
    where = "" if database.external else f" at {database.url}"  # MONGODB_URL may hold a password
    say(f"store: {database.description}{where}, database {database.name!r}")
    env = dataset.service_env(database, secrets.token_hex(32))
    ports = {name: free_port() for name in SERVERS}
    base = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    feed_file = start_bare_servers(processes, env, ports)
    seed_command = dataset.seed_command(args.users, args.posts, args.votes, args.random_seed)
    seed_seconds = dataset.seed(seed_command, env, processes.directory, say)

    start_api_servers(processes, env, ports)
    marked, post_ids = prepare_data(database, args.random_seed)
    say(f"search: {dataset.MARKER!r} appended to {marked} titles; {len(post_ids)} published")
    if len(post_ids) < 10:
        raise HarnessError("fewer than 10 published posts: seed more")
    wait_until_up(base["api"], "/readyz", 200, processes)
    wait_until_up(base["instrumented"], "/readyz", 200, processes)
    harness = Harness(
        directory=processes.directory,
        processes=processes,
        say=say,
        api=base["api"],
        bare=base["bare"],
        instrumented=base["instrumented"],
        instrumented_bare=base["instrumented_bare"],
        instrumented_driver=base["instrumented_driver"],
        voters=dataset.Voters([base["api"], base["instrumented"]], post_ids),
        token=dataset.demo_token(base["api"], 1),
        connections=args.connections,
        duration=args.duration,
        wrk_timeout=args.wrk_timeout,
        idle_probe_s=min(measure.probe(base["api"]) for _ in range(3)),
    )
    page, page_source = dataset.feed_page(base["api"], harness.token, post_ids, say)
    feed_file.write_bytes(page)
    wait_until_up(base["bare"], "/posts/", 200, processes)
    wait_until_up(base["instrumented_bare"], "/posts/", 200, processes)
    wait_until_up(base["instrumented_driver"], "/posts/", 200, processes)
    harness.voters.ensure(2 * len(post_ids))
    say(f"ready: servers up, {len(harness.voters.tokens)} voters registered")
    return Setup(database, harness, seed_command, seed_seconds, marked, post_ids, page_source)


def run(args: argparse.Namespace, processes: Processes, clock: Clock) -> dict[str, Any]:
    """Everything from the database to the results (not yet written)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    setup = prepare(args, processes, clock.say)
    harness = setup.harness
    listed = measure.endpoints(harness.token, setup.post_ids[0])
    bare, measured = throughput(harness, args, listed)
    passes = one_at_a_time(harness, args, listed)
    clock.say(f"event-loop lag: wrk -c{measure.LAG_CONNECTIONS} -d{args.lag_duration:g}s")
    lag = measure.measure_lag(harness, setup.post_ids[0], args.lag_duration)

    results: dict[str, Any] = {
        "started_at": started_at,
        "machine": report.machine(),
        "store": setup.database.description,
        "dataset": {
            "seed_command": "social-api " + " ".join(setup.seed_command[1:]),
            "seed_seconds": round(setup.seed_seconds, 1),
            "marker": dataset.MARKER,
            "marked_posts": setup.marked,
            "published_posts": len(setup.post_ids),
            "voters": len(harness.voters.tokens),
            "votes_cast": harness.voters.used,
        },
        "settings": settings_of(args),
        "feed_page_source": setup.page_source,
        "endpoints": [
            {**m.as_dict(), "kind": e.kind, "reference": reference(e.label)}
            for e, m in zip(listed, measured, strict=True)
        ],
        "bare": bare.as_dict(),
        "sequential": passes,
        "lag": lag,
    }
    results["targets"] = targets(results)
    results["problems"] = harness.problems
    return results


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "runs": args.runs,
        "login_runs": args.login_runs,
        "bare_runs": args.bare_runs,
        "duration_s": args.duration,
        "connections": args.connections,
        "wrk_timeout_s": args.wrk_timeout,
        "seq_requests": args.seq_requests,
        "seq_seconds": args.seq_seconds,
        "lag_duration_s": args.lag_duration,
        "login_users": f"demo{measure.LOGIN_USERS[0]}..demo{measure.LOGIN_USERS[-1]}",
    }


def reference(label: str) -> dict[str, float | None] | None:
    if label not in REFERENCE:
        return None
    rps, p99 = REFERENCE[label]
    return {"rps": rps, "p99_ms": p99}


@contextmanager
def interrupted_by_sigterm() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does: through the cleanup."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--runs", type=int, default=3, help="wrk runs per endpoint; the median counts (3)")
    add("--duration", type=float, default=10, help="seconds per wrk run (10)")
    add("--login-runs", type=int, default=1, help="wrk runs of POST /login (1)")
    add("--bare-runs", type=int, default=1, help="wrk runs of the bare app (1)")
    add("--connections", type=int, default=16, help="wrk connections (16)")
    add("--wrk-timeout", type=float, default=10, help="wrk --timeout in seconds (10)")
    add("--users", type=int, default=1000, help="demo users to seed (1000)")
    add("--posts", type=int, default=10_000, help="posts to seed (10000)")
    add("--votes", type=int, default=50_000, help="votes to seed (50000)")
    add("--random-seed", type=int, default=1, help="seed of the data and the marked posts (1)")
    add("--seq-requests", type=int, default=200, help="one-at-a-time requests per endpoint")
    add("--seq-seconds", type=float, default=1.0, help="...or seconds per endpoint (1)")
    add("--lag-duration", type=float, default=5, help="seconds of each lag measurement (5)")
    add("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="the report")
    add("--results", type=Path, default=ROOT / "bench" / "results.json", help="raw results")
    add("--keep", action="store_true", help="keep the run's directory (and MONGODB_URL's db)")
    args = parser.parse_args()
    if args.users < max(measure.LAG_USERS) or args.posts < 100:
        parser.error(f"--users must be at least {max(measure.LAG_USERS)}, --posts at least 100")
    if min(args.runs, args.login_runs, args.bare_runs) < 1 or args.duration < 1:
        parser.error("runs must be at least 1, --duration at least 1 s")
    return args


def finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the report; print the targets and problems; the exit status."""
    report.write(results, args.output, args.results)
    print(f"\nwrote {args.output} and {args.results}")
    for target in results["targets"]:
        verdict = "PASS" if target["holds"] else "FAIL"
        print(f"  {verdict:<7} {target['target']}: {target['value']}")
    for problem in results["problems"]:
        print(f"  PROBLEM {problem}")
    return 1 if results["problems"] else 0


def main() -> int:
    args = parse_args()
    clock = Clock()
    if shutil.which("wrk") is None:
        print("error: wrk is not installed (`make bench` installs it)", file=sys.stderr)
        return 1
    processes = Processes(Path(tempfile.mkdtemp(prefix="bench-")))
    status = 1
    try:
        with interrupted_by_sigterm():
            results = run(args, processes, clock)
            results["elapsed_s"] = round(clock.elapsed(), 1)
            status = finish(results, args)
    except HarnessError as error:
        print(f"\nerror: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        status = 130
    finally:
        processes.stop_all()
        if (status == 0 and not args.keep) or not any(processes.directory.iterdir()):
            shutil.rmtree(processes.directory, ignore_errors=True)
        else:
            print(f"logs and scripts kept in {processes.directory}")
    print(f"harness: {clock.elapsed():.0f} s", end="")
    if make_started := os.environ.get("BENCH_STARTED"):
        print(f"; make bench: {time.time() - float(make_started):.0f} s (venv included)", end="")
    print()
    return status


if __name__ == "__main__":
    sys.exit(main())
