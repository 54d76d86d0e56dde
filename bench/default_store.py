"""The development store on its defaults (SQLite, durable), as a new user meets it.

1. `social-api seed` with its defaults into a stopped store (no MONGODB_URL: the command
   opens the store itself), timed from start to exit.
2. `social-api serve` as `make run` starts it (the store inside the server's process), then
   `social-api seed` with its defaults through the wire URL the banner prints, timed.
3. Every endpoint, one client, one request at a time (bench/endpoints.py), on that demo-size
   store: each one's p50 as the client sees it.
4. The writes' cost against the collections' size: a store seeded with 1,000 users, 10,000
   posts and 50,000 votes (into a stopped store, timed for information), served the same
   way; the p50 of `POST /vote/` and `POST /posts/` there, against the demo size's.

Every setting is the service's default but the ports (free ones, so that a developer's own
`make run` on 27018 is left alone) and DATA_DIR (a directory of the run). The big store is
kept for the rest of the benchmark (bench/run.py), which serves it from a process of its own.
"""

import os
import sys
import time
from pathlib import Path
from typing import Any

from bench import endpoints
from bench.processes import HarnessError, Processes, free_port, run_child, wait_until_up
from service.config import Settings

BIN = Path(sys.executable).parent
DEMO = ["--users", "100", "--posts", "1000", "--votes", "5000"]  # the seed's defaults
BIG = ["--users", "1000", "--posts", "10000", "--votes", "50000"]
SEED_TARGET_S = 30.0
GROWTH_TARGET = 1.5
LATENCY_TARGETS_MS = {"read": 25.0, "write": 25.0, "search": 100.0}

type Say = Any  # Callable[[str], None]


def default_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment with no service setting but DATA_DIR and those given: the defaults."""
    settings = {name.upper() for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k.upper() not in settings | {"HOST", "PORT"}}
    return {**env, "DATA_DIR": str(data_dir), **extra}


def seed(args: list[str], env: dict[str, str], directory: Path, log: str) -> float:
    """`social-api seed ARGS --random-seed 1`, timed; its output goes to `log`."""
    command = [str(BIN / "social-api"), "seed", *args, "--random-seed", "1"]
    started = time.perf_counter()
    with open(directory / log, "wb") as out:
        status, _, _ = run_child(command, cwd=directory, env=env, stdout=out, stderr=out)
    seconds = time.perf_counter() - started
    if status != 0:
        text = (directory / log).read_text(errors="replace")[-3000:]
        raise HarnessError(f"the seed failed ({status}):\n{text}")
    return seconds


def serve(processes: Processes, name: str, data_dir: Path) -> tuple[str, int, str]:
    """`social-api serve` on the embedded store in `data_dir`: its base URL, process id and
    the store's wire URL."""
    port, store_port = free_port(), free_port()
    env = default_env(data_dir, EMBEDDED_PORT=str(store_port))
    command = [str(BIN / "social-api"), "serve", "--port", str(port)]
    process = processes.start(name, command, env)
    base = f"http://127.0.0.1:{port}"
    wait_until_up(base, "/readyz", 200, processes)
    return base, process.pid, f"mongodb://127.0.0.1:{store_port}/?directConnection=true"


def one_client(base: str, cases: list[endpoints.Case], say: Say) -> list[dict[str, Any]]:
    """Each case's requests, one at a time, from one client: the results as dicts."""
    client = endpoints.Client(base)
    try:
        rows = [endpoints.run_case(client, case) for case in cases]
    finally:
        client.close()
    for row in rows:
        say(f"  {row.label:<42} p50 {row.p50_ms:8.1f} ms  {dict(row.statuses)}")
    return [row.as_dict() for row in rows]


def measure(processes: Processes, say: Say) -> dict[str, Any]:
    """Everything above; the results, and the big store's directory as `big_data_dir`."""
    directory = processes.directory
    results: dict[str, Any] = {"demo_seed_args": DEMO, "big_seed_args": BIG}

    say("default store: seed into a stopped store")
    stopped = directory / "stopped"
    results["seed_stopped_s"] = seed(DEMO, default_env(stopped / "data"), directory, "seed-1.log")
    say(f"  {results['seed_stopped_s']:.1f} s")

    say("default store: seed into a running `social-api serve`, through its wire URL")
    base, _, wire = serve(processes, "demo", directory / "running" / "data")
    env = default_env(directory / "seeder", MONGODB_URL=wire)
    results["seed_running_s"] = seed(DEMO, env, directory, "seed-2.log")
    say(f"  {results['seed_running_s']:.1f} s")

    say("default store: every endpoint, one client, at the demo size")
    results["demo"] = one_client(base, endpoints.catalogue(), say)
    processes.stop_servers()

    say("default store: seed 10,000 posts and 50,000 votes into a stopped store")
    big = directory / "big" / "data"
    results["seed_big_s"] = seed(BIG, default_env(big), directory, "seed-3.log")
    say(f"  {results['seed_big_s']:.1f} s")
    base, _, _ = serve(processes, "big", big)
    writes = [c for c in endpoints.catalogue() if c.label in (endpoints.VOTE, endpoints.CREATE)]
    results["big"] = one_client(base, writes, say)
    processes.stop_servers()
    results["big_data_dir"] = str(big)
    return results


def targets(store: dict[str, Any]) -> list[dict[str, Any]]:
    """Point by point: the seeds' time, the writes' growth, the p50 of every endpoint."""
    found = [
        {
            "target": f"`social-api seed` (defaults) into a {where}: at most {SEED_TARGET_S:g} s",
            "value": f"{store[key]:.1f} s",
            "holds": store[key] <= SEED_TARGET_S,
        }
        for key, where in (("seed_stopped_s", "stopped store"), ("seed_running_s", "running one"))
    ]
    demo = {row["label"]: row for row in store["demo"]}
    for row in store["big"]:
        small = demo[row["label"]]["p50_ms"]
        ratio = row["p50_ms"] / small
        found.append(
            {
                "target": f"{row['label']} p50 at 10,000 posts and 50,000 votes: at most "
                f"{GROWTH_TARGET:g}x its p50 at the demo size",
                "value": f"{ratio:.2f}x ({row['p50_ms']:.1f} ms against {small:.1f} ms)",
                "holds": ratio <= GROWTH_TARGET,
            }
        )
    for row in store["demo"]:
        limit = LATENCY_TARGETS_MS.get(row["kind"])
        if limit is None:  # a password hashed or checked: bcrypt's time, by design
            found.append(
                {
                    "target": f"{row['label']} p50 at the demo size (login excepted: bcrypt)",
                    "value": f"{row['p50_ms']:.1f} ms, of which bcrypt at cost 12 is most",
                    "holds": None,
                }
            )
            continue
        found.append(
            {
                "target": f"{row['label']} p50 at the demo size: at most {limit:g} ms",
                "value": f"{row['p50_ms']:.1f} ms",
                "holds": row["p50_ms"] <= limit,
            }
        )
    return found
