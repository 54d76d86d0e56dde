"""BENCHMARKS.md from the benchmark's results (bench/run.py), and the machine they ran on.

The file is generated whole, except the hand-written block between `<!-- notes -->` and
`<!-- /notes -->`, which is carried over from the previous file. `python -m bench.report`
renders it again from bench/results.json, without measuring anything.
"""

import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
NOTES_START = "<!-- notes -->"
NOTES_END = "<!-- /notes -->"
DEFAULT_NOTES = (
    "_Hand-written: what limits each number. `make bench` keeps whatever is between the two "
    "`notes` comment markers of this section when it regenerates the file._"
)
PACKAGES = ("fastapi", "starlette", "uvicorn", "pydantic", "pymongo", "beanie", "mongoeco")


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _first(path: str, pattern: str) -> str | None:
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    match = re.search(pattern, text, re.MULTILINE)
    return match[1].strip() if match else None


def machine() -> dict[str, Any]:
    """CPU, memory, OS, Python, wrk and the versions of the packages that serve requests."""
    memory_kb = _first("/proc/meminfo", r"^MemTotal:\s+(\d+) kB")
    try:
        wrk_version = subprocess.run(
            ["wrk", "-v"], capture_output=True, text=True, check=False
        ).stdout.split(" [")[0]
    except OSError:
        wrk_version = "not installed"
    return {
        "cpu": _first("/proc/cpuinfo", r"^model name\s*:\s*(.+)$") or platform.processor(),
        "cores": os.cpu_count(),
        "memory_gib": round(int(memory_kb) / 1024**2, 1) if memory_kb else None,
        "os": _first("/etc/os-release", r'^PRETTY_NAME="?([^"\n]+)') or platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "wrk": wrk_version,
        "packages": {name: package_version(name) for name in PACKAGES},
    }


def ms(value: float | None) -> str:
    """Milliseconds, with the precision that matters at their size."""
    if value is None:
        return "n/a"
    if value >= 10_000:
        return f"{value / 1000:.1f} s"
    if value >= 100:
        return f"{value:.0f} ms"
    if value >= 10:
        return f"{value:.1f} ms"
    return f"{value:.2f} ms"


def rps(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.1f}"


def runs(count: int) -> str:
    return f"{count} run" if count == 1 else f"{count} runs"


def percent(part: float, whole: float | None) -> str:
    if not whole:
        return "n/a"
    share = 100 * part / whole
    return f"{share:.0f}%" if share >= 10 else f"{share:.1f}%" if share >= 1 else f"{share:.2g}%"


def statuses(counts: Mapping[str, int] | Mapping[int, int]) -> str:
    return ", ".join(f"{code}: {n:,}" for code, n in counts.items()) or "none"


def answers(row: dict[str, Any]) -> str:
    """A wrk row's answers by status, and its socket errors if any."""
    errors = {name: n for name, n in row["socket_errors"].items() if n}
    text = statuses(row["statuses"])
    return text + (f"; socket errors {statuses(errors)}" if errors else "")


def sequential_line(row: dict[str, Any]) -> str:
    """One line of the one-at-a-time results, for the console."""
    return (
        f"{row['label']:<42} {row['requests']:>4} requests, commands "
        f"{row['commands_min']}-{row['commands_max']} ({', '.join(row['command_names'])}), "
        f"server {ms(row['server_ms'])}, database {ms(row['db_ms'])}, "
        f"outside {ms(row['outside_ms'])}, statuses {statuses(row['statuses'])}"
    )


def verdict(row: dict[str, Any]) -> str:
    """Whether an endpoint beats the reference: higher throughput, and a lower p99 where the
    reference gives one; an endpoint with failed answers does not."""
    reference = row["reference"]
    if row["kind"] == "login":
        return "not compared (bounded by bcrypt by design)"
    if reference is None:
        return ""
    if row["failures"]:
        return f"**no**: {row['failures']:,} failed answers"
    faster = row["rps"] > reference["rps"]
    if reference["p99_ms"] is None:
        return "yes" if faster else "**no**"
    tighter = row["p99_ms"] is not None and row["p99_ms"] < reference["p99_ms"]
    if faster and tighter:
        return "yes"
    missed = [what for what, ok in (("throughput", faster), ("p99", tighter)) if not ok]
    return f"**no** ({' and '.join(missed)})"


def kept_notes(path: Path) -> str:
    """The hand-written block of the previous file, or the placeholder."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return DEFAULT_NOTES
    match = re.search(re.escape(NOTES_START) + r"\n?(.*?)\n?" + re.escape(NOTES_END), text, re.S)
    return match[1] if match and match[1].strip() else DEFAULT_NOTES


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


SCRIPTS = (
    "Each Lua script (written by bench/wrk.py) sets the method, the headers (demo1's bearer "
    "token, the content type) and the body, and counts the answers by status code; "
    "`vote.lua` takes a new (user, post) pair per request and `login.lua` a demo user in turn."
)


def _machine_section(results: dict[str, Any]) -> list[str]:
    m, data, settings = results["machine"], results["dataset"], results["settings"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    return [
        "## Machine, data and method",
        "",
        f"- **Machine**: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['os']} "
        f"(Linux {m['kernel']}); Python {m['python']}; {m['wrk']}. Everything runs on "
        "loopback (127.0.0.1): wrk, the API and the store share the cores.",
        f"- **Packages**: {packages}.",
        f"- **Store**: {results['store']}.",
        f"- **Data**: `{data['seed_command']}` (seeded in {data['seed_seconds']} s); every "
        f"demo user's password is `demo-password`. Search word: `{data['marker']}`, which "
        f"appears nowhere else, appended to the titles of {data['marked_posts']} posts (1%, a "
        "fixed random sample) after the seed, as the reference searched for a word in 1% of "
        "titles: one PyMongo `bulk_write` of one update per post (an `update_many` over an "
        "`$in` of their ids does the same, but takes the embedded store 4 s).",
        "- **API**: `social-api serve --host 127.0.0.1 --port PORT`: one worker, the service's "
        "defaults (BCRYPT_ROUNDS=12, MONGODB_TIMEOUT_MS=5000, LOG_LEVEL=INFO, LOG_FORMAT=json). "
        "At INFO the service writes one JSON log line per request (into a file here), which "
        "is part of every request's cost.",
        f"- **Runs**: {settings['runs']} x {settings['duration_s']:g} s per endpoint, the "
        "median run by throughput, with its p50 and p99; POST /login gets "
        f"{runs(settings['login_runs'])} and the bare app {runs(settings['bare_runs'])}, to "
        "fit the five-minute budget. Each run starts once the API has finished the requests the "
        f"previous one left in flight. `--timeout {settings['wrk_timeout_s']:g}s` is added to "
        "the reference's command: with wrk's default of 2 s, slower answers would be left out "
        "of its latency distribution. Every request carries a bearer token from POST /login. "
        f"Each vote is by one of {data['voters']} users registered for the benchmark, on a "
        f"published post it has not voted on ({data['votes_cast']:,} votes in all). POST "
        f"/login logs in as {settings['login_users']} in turn: as one user, every attempt in "
        "flight would count against that email's throttle limit of 5 and most would answer "
        "429; the reference had no throttle.",
        "",
        "```sh",
        *(f"{row['command']}  # {row['label']}" for row in results["endpoints"]),
        f"{results['bare']['command']}  # the bare app",
        "```",
        "",
        SCRIPTS,
        "",
    ]


def _throughput_section(results: dict[str, Any]) -> list[str]:
    bare = results["bare"]["rps"]
    rows = []
    for row in results["endpoints"]:
        reference = row["reference"] or {}
        rows.append(
            [
                f"`{row['label']}`",
                rps(row["rps"]),
                ms(row["p50_ms"]),
                ms(row["p99_ms"]),
                answers(row),
                f"{reference['rps']:g}" if reference else "",
                ms(reference.get("p99_ms")) if reference.get("p99_ms") else "",
                verdict(row),
                percent(row["rps"], bare),
            ]
        )
    header = [
        "endpoint", "req/s", "p50", "p99", "answers (all runs)", "reference req/s",
        "reference p99", "beats the reference", "share of the bare ceiling",
    ]  # fmt: skip
    return [
        "## Throughput and latency",
        "",
        "Reference: the course's PostgreSQL version on the same machine, same data set, one "
        "uvicorn worker, `wrk -t1 -c16 -d10s`, median of 3. A row beats it with a higher "
        "throughput and, where the reference gives a p99, a lower p99. Login is not compared: "
        "its cost is bcrypt at cost 12 by design (the reference's 9.1 req/s used both cores).",
        "",
        *_table(header, rows),
        "",
    ]


def _ceiling_section(results: dict[str, Any]) -> list[str]:
    bare = results["bare"]
    return [
        "## Ceiling: a bare FastAPI app",
        "",
        "`bench/bare_app.py`: one route, `GET /posts/`, that answers the page the API gave "
        f"(source: {results['feed_page_source']}), validated into the service's `PostOut` "
        "and serialized through the same response model on every request; no database, token, "
        "middleware or log line. Served the same way (uvicorn, one worker, loopback) and "
        f"measured with the same wrk command: **{rps(bare['rps'])} req/s**, p50 "
        f"{ms(bare['p50_ms'])}, p99 {ms(bare['p99_ms'])} (answers: {statuses(bare['statuses'])})."
        " The last column above is each endpoint's throughput as a share of it.",
        "",
    ]


def _commands_section(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    rows = [
        [
            f"`{row['label']}`",
            str(row["requests"]),
            statuses(row["statuses"]),
            f"{row['commands_min']}-{row['commands_max']}",
            ", ".join(row["command_names"]) or "none",
            ms(row["server_ms"]),
            ms(row["db_ms"]),
            ms(row["outside_ms"]),
        ]
        for row in results["sequential"]
    ]
    header = [
        "endpoint", "requests", "answers", "commands per request", "one request's commands",
        "server time", "in the database", "outside the database",
    ]  # fmt: skip
    return [
        "## Database commands and time per request",
        "",
        "`bench/instrumented.py`: the service built by `create_app(settings, "
        "command_listeners=[recorder])` and wrapped in a pure-ASGI layer that times each "
        "request (from its arrival to the last body chunk sent) and adds up the PyMongo "
        "commands it caused (a `ContextVar` set per request, read in the listener; commands "
        "outside any request are counted and reported as a problem), served like the API on "
        f"its own port. Requests one at a time (up to {settings['seq_requests']} or "
        f"{settings['seq_seconds']:g} s per endpoint); times are medians. Time in the "
        "database is the commands' `duration_micros` as PyMongo measures them (round trip "
        "included); outside the database is server time minus that. The bare app is timed "
        "through the same wrapper, and so is the bare app with the feed's database commands "
        "(`bench/bare_app.py`, `create_driver_app`: demo1's user document and first page read "
        "with the service's own code, over its client, and nothing else), the floor under the "
        "service's time outside the database.",
        "",
        *_table(header, rows),
        "",
    ]


def _lag_section(results: dict[str, Any]) -> list[str]:
    lag = results["lag"]
    rows = [
        [
            what,
            rps(run["rps"]),
            ms(run["p50_ms"]),
            ms(run["p99_ms"]),
            ms(run["lag"]["max_ms"]),
            ms(run["lag"]["p99_ms"]),
            str(run["logins"]) if run["logins"] else "",
        ]
        for what, run in (
            ("alone", lag["alone"]),
            (f"while {lag['clients']} clients log in", lag["with_logins"]),
        )
    ]
    header = ["GET /posts/{id}", "req/s", "p50", "p99", "lag max", "lag p99", "logins"]
    return [
        "## Event-loop lag under logins",
        "",
        f"`{lag['alone']['command']}` on the instrumented API, alone and then while "
        f"{lag['clients']} clients log in continuously (each as its own demo user, bcrypt "
        "cost 12). Lag: how late a task that sleeps 5 ms in a loop wakes up in the server.",
        "",
        *_table(header, rows),
        "",
    ]


def _targets_section(results: dict[str, Any]) -> list[str]:
    rows = [
        [target["target"], target["value"], "PASS" if target["holds"] else "**FAIL**"]
        for target in results["targets"]
    ]
    lines = ["## Targets", "", *_table(["target", "measured", ""], rows), ""]
    if results["problems"]:
        lines += ["## Problems in this run", ""]
        lines += [f"- {problem}" for problem in results["problems"]]
        lines.append("")
    return lines


def render(results: dict[str, Any], notes: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/run.py`) on {results['started_at']}, in "
        f"{results['elapsed_s']:g} s; raw results in `bench/results.json`. Do not edit by hand, "
        "except the notes section at the end, which regeneration keeps.",
        "",
        *_throughput_section(results),
        *_ceiling_section(results),
        *_commands_section(results),
        *_lag_section(results),
        *_targets_section(results),
        *_machine_section(results),
        "## Notes",
        "",
        NOTES_START,
        notes,
        NOTES_END,
        "",
    ]
    return "\n".join(lines)


def write(results: dict[str, Any], output: Path, results_path: Path) -> None:
    notes = kept_notes(output)
    results_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    output.write_text(render(results, notes), encoding="utf-8")


def main() -> int:
    results_path = ROOT / "bench" / "results.json"
    output = ROOT / "BENCHMARKS.md"
    results = json.loads(results_path.read_text(encoding="utf-8"))
    output.write_text(render(results, kept_notes(output)), encoding="utf-8")
    print(f"rendered {output} from {results_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
