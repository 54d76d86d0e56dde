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


def verdict(holds: bool | None) -> str:
    return "n/a" if holds is None else "PASS" if holds else "**FAIL**"


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


EMULATOR = (
    "**Throughput here measures the emulator, not the service.** The development store is "
    "mongoeco, a MongoDB emulator written in Python: it runs every query in one process, "
    "mostly in Python, on a single SQLite file, and shares the machine's two cores with the "
    "API and wrk. A real MongoDB answers these commands from its indexes in C++ on cores of "
    "its own, and scales out with replica sets and sharding behind several API processes. So "
    "the numbers below say how the development store feels, not what the service does in "
    "production: production throughput needs a real MongoDB (`MONGODB_URL`, e.g. the compose "
    "file's `mongo`), measured with `MONGODB_URL=... make bench`. What the service itself "
    "costs is measured above: its database commands per request and its own CPU time."
)


def _store_section(results: dict[str, Any]) -> list[str]:
    store = results["store"]
    demo_args, big_args = " ".join(store["demo_seed_args"]), " ".join(store["big_seed_args"])
    big = {row["label"]: row for row in store["big"]}
    rows = [
        [
            f"`{row['label']}`",
            str(row["requests"]),
            statuses(row["statuses"]),
            ms(row["p50_ms"]),
            ms(row["max_ms"]),
            ms(big[row["label"]]["p50_ms"]) if row["label"] in big else "",
        ]
        for row in store["demo"]
    ]
    header = ["endpoint", "requests", "answers", "p50", "max", "p50 at the large size"]
    return [
        "## The development store on its defaults",
        "",
        "`bench/default_store.py`, on the default engine (SQLite, durable) and every other setting "
        "at its default (bcrypt at cost 12 among them):",
        "",
        f"- `social-api seed {demo_args}` (the defaults) into a stopped store: "
        f"**{store['seed_stopped_s']:.1f} s**; into a running `social-api serve` through its "
        f"wire URL: **{store['seed_running_s']:.1f} s**.",
        f"- `social-api seed {big_args}` into a stopped store: {store['seed_big_s']:.1f} s "
        "(for information).",
        "- Every endpoint, one client sending one request at a time to `social-api serve` (the "
        "store inside its process, as `make run` has it), at the demo size; the last column "
        "is the same measurement on the large store, for the two writes whose cost must not "
        "grow with the collections. Latency as the client sees it, loopback included.",
        "",
        *_table(header, rows),
        "",
        "Login, registration, the password change and account deletion each hash or check a "
        "password with bcrypt at cost 12 (about 250 ms on one core here), by design.",
        "",
    ]


def _cpu_section(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{row['label']}`",
            str(row["requests"]),
            ms(row["cpu_ms_per_request"]),
            ms(row["course_cpu_ms"]) if row["course_cpu_ms"] else "",
            percent(row["cpu_ms_per_request"], row["course_cpu_ms"])
            if row["course_cpu_ms"]
            else "",
        ]
        for row in results["cpu"]
    ]
    header = ["endpoint", "requests", "API CPU per request", "the course's", "share of it"]
    return [
        "## The API's CPU time per request",
        "",
        "`social-api serve` (one worker, the service's defaults) on the large data set: "
        f"{results['service_store']}. One request at a time; the "
        "API process's user and system time (`/proc/<pid>/stat`, every thread) over an "
        "endpoint's requests, divided by their number: the service's own work per request "
        "(routing, validation, tokens, the driver, the log line), without the database's. "
        "The course's figures come from the same kind of measurement of its API process; the "
        "target is at most half of each. The hashing endpoints' time is bcrypt's.",
        "",
        *_table(header, rows),
        "",
    ]


def _commands_section(results: dict[str, Any]) -> list[str]:
    rows = [
        [
            f"`{row['label']}`",
            str(row["requests"]),
            statuses(row["statuses"]),
            f"{row['commands_min']}-{row['commands_max']}",
            ", ".join(row["command_names"]) or "none",
        ]
        for row in results["commands"]
    ]
    header = ["endpoint", "requests", "answers", "commands per request", "one request's"]
    return [
        "## Database commands per request",
        "",
        "`bench/instrumented.py`: the service built by `create_app(settings, "
        "command_listeners=[recorder])` and wrapped in a pure-ASGI layer that adds up the "
        "PyMongo commands each request caused (a `ContextVar` set per request, read in the "
        "listener). One request at a time on the large store; what an endpoint's requests "
        "needed first (posts to change, sessions to end) is made before counting starts.",
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


def _throughput_section(results: dict[str, Any]) -> list[str]:
    settings = results["settings"]
    rows = [
        [f"`{row['label']}`", rps(row["rps"]), ms(row["p50_ms"]), ms(row["p99_ms"]), answers(row)]
        for row in results["throughput"]
    ]
    return [
        "## Throughput on the development store (information)",
        "",
        EMULATOR,
        "",
        f"`wrk -t1 -c{settings['connections']} -d{settings['duration_s']:g}s --latency "
        f"--timeout {settings['wrk_timeout_s']:g}s` per endpoint on `social-api serve`, one "
        "run each, every request with a bearer token; each vote on a new (voter, post) pair, "
        f"{results['votes_cast']:,} in all; logins as demo5 to demo36 in turn.",
        "",
        *_table(["endpoint", "req/s", "p50", "p99", "answers"], rows),
        "",
    ]


def _targets_section(results: dict[str, Any]) -> list[str]:
    rows = [
        [target["target"], target["value"], verdict(target["holds"])]
        for target in results["targets"]
    ]
    lines = ["## Targets", "", *_table(["target", "measured", ""], rows), ""]
    if results["problems"]:
        lines += ["## Problems in this run", ""]
        lines += [f"- {problem}" for problem in results["problems"]]
        lines.append("")
    return lines


def _machine_section(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in m["packages"].items())
    return [
        "## Machine",
        "",
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['os']} (Linux "
        f"{m['kernel']}); Python {m['python']}; {m['wrk']}. Everything runs on loopback "
        f"(127.0.0.1) and shares the two cores. Packages: {packages}.",
        "",
    ]


def render(results: dict[str, Any], notes: str) -> str:
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`bench/run.py`) on {results['started_at']}, in "
        f"{results['elapsed_s']:g} s; raw results in `bench/results.json`. Do not edit by hand, "
        "except the notes section at the end, which regeneration keeps.",
        "",
        *_targets_section(results),
        *_store_section(results),
        *_cpu_section(results),
        *_commands_section(results),
        *_lag_section(results),
        *_throughput_section(results),
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
