"""`make bench`: the development store on its defaults, and the API's own costs, measured on
loopback and written to BENCHMARKS.md and bench/results.json.

In order:

1. The development store on its defaults (bench/default_store.py): `social-api seed` into a
   stopped store and into a running `social-api serve`, timed; every endpoint's p50 with one
   client at the demo size (100 users, 1,000 posts, 5,000 votes); the p50 of the two writes
   again at 1,000 users, 10,000 posts and 50,000 votes. Targets: each seed within 30 s; each
   write's p50 at the large size at most 1.5x the demo size's; every endpoint's p50 at most
   25 ms, search's at most 100 ms (login, and the other endpoints that hash a password, are
   bound by bcrypt at cost 12 by design).
2. The large store, served from a process of its own (bench/store.py, SQLite), or MONGODB_URL's
   server (seeded with the same data; its database, MONGODB_DB or `bench`, must be empty and
   is dropped at the end unless --keep). Two API servers on it, each a process with one worker:
   `social-api serve` at the service's defaults, and the same app wrapped by
   bench/instrumented.py (commands per request, event-loop lag).
3. Database commands per request, every endpoint, one request at a time, on the instrumented
   server. Targets: the reads (the feed, a page of 100, a search, one post) at most 2, the
   writes (create, vote) at most 3.
4. The API process's CPU time per request, every endpoint, one request at a time on the plain
   server: its user and system time (/proc/<pid>/stat) over the requests, divided by their
   number. The database runs in another process, so this is the API's own work. Beside it,
   the course's figures from the same kind of measurement; target: at most half of them.
5. Event-loop lag: GET /posts/{id} with `wrk -t1 -c4 -d5s` on the instrumented API, alone,
   then while 8 clients log in (each as its own demo user); the lag the server saw.
6. Throughput with wrk (`-t1 -c16`, one run per endpoint), for information: on an emulator it
   measures the emulator more than the service (BENCHMARKS.md says why).

Exit status 0 when everything was measured and every answer was the expected one, whether or
not the targets were met (the report says which were missed); 1 on a harness failure; 130
when interrupted. Every process it started is stopped on the way out, whichever way that is.

    .venv/bin/python -m bench.run [--duration 5] [--keep] ...
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
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import httpx
import pymongo
from aiosmtpd.controller import Controller

from bench import dataset, default_store, endpoints, measure, report
from bench.measure import Harness
from bench.processes import HarnessError, Processes, free_port, uvicorn_command, wait_until_up

ROOT = Path(__file__).resolve().parent.parent

# The course's API process CPU time per request (the same kind of measurement), in ms.
COURSE_CPU_MS = {
    endpoints.VOTE: 3.2,
    endpoints.READ: 3.4,
    endpoints.CREATE: 4.2,
    endpoints.FEED: 9.6,
}
COMMAND_TARGETS = {
    endpoints.FEED: 2,
    endpoints.FEED_100: 2,
    endpoints.DEEP_SKIP: 2,
    endpoints.DEEP_CURSOR: 2,
    endpoints.SEARCH: 2,
    endpoints.READ: 2,
    endpoints.CREATE: 3,
    endpoints.VOTE: 3,
}


class Clock:
    """Console lines stamped with the seconds since the start."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def say(self, line: str) -> None:
        print(f"[{self.elapsed():5.0f} s] {line}", flush=True)


def start_api_servers(processes: Processes, env: dict[str, str]) -> tuple[str, int, str]:
    """`social-api serve` and the instrumented app: their base URLs and the plain one's pid."""
    api, instrumented = free_port(), free_port()
    serve = [str(dataset.BIN / "social-api"), "serve", "--host", "127.0.0.1", "--port", str(api)]
    plain = processes.start("api", serve, env)
    app = "bench.instrumented:create_service_app"
    processes.start("instrumented", uvicorn_command(app, instrumented), env)
    bases = f"http://127.0.0.1:{api}", f"http://127.0.0.1:{instrumented}"
    for base in bases:
        wait_until_up(base, "/readyz", 200, processes)
    return bases[0], plain.pid, bases[1]


def service_cases(requests: int) -> list[endpoints.Case]:
    """Every endpoint, and the feed 9,000 posts deep by skip and by cursor; at 10,000 posts a
    search reads them all, so it sends fewer requests."""
    cases = endpoints.catalogue(reads=requests, writes=requests)
    cases[2:2] = endpoints.deep_pages(requests)  # after the first pages, for comparison
    return [
        endpoints.Case(c.label, c.kind, c.status, min(c.count, 10), c.prepare)
        if c.kind == "search"
        else c
        for c in cases
    ]


def commands_pass(base: str, args: argparse.Namespace, say: dataset.Say) -> list[dict[str, Any]]:
    """Each endpoint's requests on the instrumented server, with the commands they caused."""
    say("commands per request: every endpoint, one request at a time, instrumented server")
    rows = []
    client = endpoints.Client(base)
    try:
        for case in service_cases(args.requests):

            def reset() -> None:
                client.call("POST", "/__bench__/reset", 200)

            endpoints.run_case(client, case, before=reset)
            stats = client.call("GET", "/__bench__/stats", 200).json()
            row = measure.summarize(case.label, stats)
            say(f"  {case.label:<42} commands {row['commands_min']}-{row['commands_max']} "
                f"({', '.join(row['command_names'])})")  # fmt: skip
            rows.append(row)
    finally:
        client.close()
    return rows


def cpu_pass(
    base: str, pid: int, args: argparse.Namespace, say: dataset.Say
) -> list[dict[str, Any]]:
    """Each endpoint's requests on the plain server, with that process's CPU time."""
    say("API CPU time per request: every endpoint, one request at a time, `social-api serve`")
    rows = []
    client = endpoints.Client(base)
    try:
        for case in service_cases(args.cpu_requests):
            result = endpoints.run_case(client, case, pid=pid)
            row = result.as_dict()
            row["course_cpu_ms"] = COURSE_CPU_MS.get(case.label)
            say(f"  {case.label:<42} {report.ms(row['cpu_ms_per_request'])} of CPU")
            rows.append(row)
    finally:
        client.close()
    return rows


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every target, with the measured value and whether it holds (None: not applicable)."""
    found = default_store.targets(results["store"])
    for row in results["commands"]:
        limit = COMMAND_TARGETS.get(row["label"])
        if limit is None:
            continue
        found.append(
            {
                "target": f"{row['label']}: at most {limit} database commands per request",
                "value": f"{row['commands_min']}-{row['commands_max']}",
                "holds": row["commands_max"] <= limit,
            }
        )
    for row in results["cpu"]:
        course = row["course_cpu_ms"]
        if course is None:
            continue
        mine = row["cpu_ms_per_request"]
        found.append(
            {
                "target": f"{row['label']}: API CPU per request at most half the course's "
                f"({course / 2:g} ms)",
                "value": f"{report.ms(mine)} ({mine / course:.0%} of {course:g} ms)",
                "holds": mine <= course / 2,
            }
        )
    lag = results["lag"]
    alone, busy = lag["alone"]["p99_ms"], lag["with_logins"]["p99_ms"]
    if alone and busy:
        found.append(
            {
                "target": f"{measure.READ} p99 while {lag['clients']} clients log in: at most "
                "3x alone",
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


def serve_large_store(
    args: argparse.Namespace, processes: Processes, store: dict[str, Any], say: dataset.Say
) -> tuple[dataset.Database, Harness, int]:
    """The large data set behind two API servers; the harness for the load measurements."""
    database = dataset.open_database(processes, Path(store["big_data_dir"]))
    if database.external:
        if not args.keep:
            processes.after_stop.append(lambda: dataset.drop(database))
        env = {**default_store.default_env(processes.directory / "seeder")}
        env.update(MONGODB_URL=database.url, MONGODB_DB=database.name)
        say("seeding MONGODB_URL's database with the large data set")
        default_store.seed(default_store.BIG, env, processes.directory, "seed-external.log")
    where = "" if database.external else f" at {database.url}"  # MONGODB_URL may hold a password
    say(f"store: {database.description}{where}, database {database.name!r}")
    smtp = Controller(dataset.MailSink(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    processes.after_stop.append(smtp.stop)
    env = dataset.service_env(database, secrets.token_hex(32), smtp.port)
    api, pid, instrumented = start_api_servers(processes, env)
    with pymongo.MongoClient[dict[str, Any]](database.url, tz_aware=True) as client:
        post_ids = dataset.published_posts(client[database.name])
    harness = Harness(
        directory=processes.directory,
        processes=processes,
        say=say,
        api=api,
        instrumented=instrumented,
        voters=dataset.Voters([api, instrumented], post_ids),
        token=dataset.demo_token(api, 1),
        connections=args.connections,
        duration=args.duration,
        wrk_timeout=args.wrk_timeout,
        idle_probe_s=min(measure.probe(api) for _ in range(3)),
    )
    return database, harness, pid


def run(args: argparse.Namespace, processes: Processes, clock: Clock) -> dict[str, Any]:
    """Everything from the stores to the results (not yet written)."""
    started_at = datetime.now(UTC).isoformat(timespec="seconds")
    store = default_store.measure(processes, clock.say)
    database, harness, pid = serve_large_store(args, processes, store, clock.say)
    commands = commands_pass(harness.instrumented, args, clock.say)
    cpu = cpu_pass(harness.api, pid, args, clock.say)
    post_id = harness.voters.post_ids[0]
    clock.say(f"event-loop lag: wrk -c{measure.LAG_CONNECTIONS} -d{args.lag_duration:g}s")
    lag = measure.measure_lag(harness, post_id, args.lag_duration)
    listed = measure.endpoints(harness.token, post_id)
    clock.say(f"throughput (information): wrk -c{args.connections}, {args.duration:g} s each")
    throughput = []
    for endpoint in listed:
        measured = measure.measure(harness, endpoint, harness.api, 1)
        if endpoint.kind == "write":
            harness.write_rps = max(harness.write_rps, measured.median.rps)
        throughput.append(measured.as_dict())
    results: dict[str, Any] = {
        "started_at": started_at,
        "machine": report.machine(),
        "store": store,
        "service_store": database.description,
        "settings": settings_of(args),
        "commands": commands,
        "cpu": cpu,
        "lag": lag,
        "throughput": throughput,
        "votes_cast": harness.voters.used,
    }
    results["targets"] = targets(results)
    results["problems"] = harness.problems
    return results


def settings_of(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "requests": args.requests,
        "cpu_requests": args.cpu_requests,
        "duration_s": args.duration,
        "connections": args.connections,
        "wrk_timeout_s": args.wrk_timeout,
        "lag_duration_s": args.lag_duration,
    }


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
    add("--requests", type=int, default=50, help="one-at-a-time requests per endpoint (50)")
    add(
        "--cpu-requests",
        type=int,
        default=300,
        help="...of the CPU pass: the process's CPU "
        "time is counted in ticks of 10 ms, so many requests keep the error small (300)",
    )
    add("--duration", type=float, default=5, help="seconds per wrk run (5)")
    add("--connections", type=int, default=16, help="wrk connections (16)")
    add("--wrk-timeout", type=float, default=10, help="wrk --timeout in seconds (10)")
    add("--lag-duration", type=float, default=5, help="seconds of each lag measurement (5)")
    add("--output", type=Path, default=ROOT / "BENCHMARKS.md", help="the report")
    add("--results", type=Path, default=ROOT / "bench" / "results.json", help="raw results")
    add("--keep", action="store_true", help="keep the run's directory (and MONGODB_URL's db)")
    args = parser.parse_args()
    if min(args.requests, args.cpu_requests) < 5 or args.duration < 1:
        parser.error("--requests must be at least 5, --duration at least 1 s")
    return args


def finish(results: dict[str, Any], args: argparse.Namespace) -> int:
    """Write the report; print the targets and problems; the exit status."""
    report.write(results, args.output, args.results)
    print(f"\nwrote {args.output} and {args.results}")
    for target in results["targets"]:
        verdict = report.verdict(target["holds"])
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
    except (HarnessError, httpx.HTTPError) as error:
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
