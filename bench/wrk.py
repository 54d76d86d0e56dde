"""wrk for the benchmark: the Lua scripts it is driven with, running it, and reading its report.

Every script ends with the same tally: a `response()` callback counts the answers by status
code and `done()` prints one `status CODE COUNT` line per code after wrk's own report, so a
run can tell a 201 from a 200 (wrk itself only counts answers above 399, in its
"Non-2xx or 3xx responses" line). The vote script also prints `pairs used N of M`: it walks a
file of (voter, post) pairs, one per request, so that no vote repeats.

The parsing functions are pure; `tests/test_bench_parsing.py` checks them on wrk's real output.
"""

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.processes import HarnessError, run_child

# wrk prints durations with these units (src/units.c).
_TIME_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_TIME = re.compile(r"([0-9.]+)(us|ms|s|m|h)")

_TALLY = """
-- Answers by status code, printed by done() after wrk's own report.
statuses = {}
local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   for _, thread in ipairs(threads) do
      for code, count in pairs(thread:get("statuses")) do
         io.write(string.format("status %d %d\\n", code, count))
      end
      local used = thread:get("pairs_used")
      if used then
         io.write(string.format("pairs used %d of %d\\n", used, thread:get("pairs_total")))
      end
   end
end
"""

_VOTES = """
-- One vote per request, on the next (voter, post) pair of the file named after `--`, whose
-- lines are "<voter number> <post id>". Past the last pair it votes on a post that does not
-- exist: a 404 that the harness reports as a failure, never a vote cast twice.
local tokens = {TOKENS}
local voters, posts = {}, {}
pairs_used, pairs_total = 0, 0

function init(args)
   for line in io.lines(args[1]) do
      local voter, post = line:match("^(%d+) (%x+)$")
      table.insert(voters, tonumber(voter))
      table.insert(posts, post)
   end
   pairs_total = #posts
end

function request()
   pairs_used = pairs_used + 1
   local voter, post = voters[pairs_used], posts[pairs_used]
   if post == nil then
      voter, post = 1, "000000000000000000000000"
   end
   local headers = {
      ["Authorization"] = "Bearer " .. tokens[voter],
      ["Content-Type"] = "application/json",
   }
   return wrk.format("POST", "/vote/", headers, '{"post_id": "' .. post .. '", "dir": 1}')
end
"""


@dataclass(frozen=True)
class WrkResult:
    """One wrk run, as its report (and the scripts' tally) tells it."""

    requests: int
    seconds: float
    rps: float
    latency_ms: dict[int, float]  # percentile (50, 75, 90, 99) -> milliseconds
    non_2xx: int  # wrk's "Non-2xx or 3xx responses": it counts statuses above 399
    socket_errors: dict[str, int]  # connect, read, write, timeout
    statuses: dict[int, int] = field(default_factory=dict)
    pairs_used: int | None = None
    pairs_total: int | None = None

    @property
    def errors(self) -> int:
        return sum(self.socket_errors.values())

    @property
    def failures(self) -> int:
        """Answers other than 2xx (by the tally when there is one) plus socket errors."""
        if self.statuses:
            bad = sum(n for code, n in self.statuses.items() if not 200 <= code < 300)
        else:
            bad = self.non_2xx
        return bad + self.errors

    @property
    def p50(self) -> float | None:
        return self.latency_ms.get(50)

    @property
    def p99(self) -> float | None:
        return self.latency_ms.get(99)


def parse_time_ms(text: str) -> float:
    """A wrk duration ("850.00us", "1.20ms", "2.01s", "1.00m") in milliseconds."""
    match = _TIME.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match[1]) * _TIME_UNITS_MS[match[2]]


def parse_wrk(output: str) -> WrkResult:
    """Read wrk's report (run with --latency) and the tally lines the scripts add."""
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.MULTILINE)
    total = re.search(r"^\s*(\d+) requests in ([0-9.]+(?:us|ms|s|m|h)),", output, re.MULTILINE)
    if rps is None or total is None:
        raise ValueError(f"not a wrk report:\n{output}")
    latency: dict[int, float] = {}
    distribution = output.split("Latency Distribution", 1)
    if len(distribution) == 2:
        for percent, value in re.findall(
            r"^\s+(\d+)%\s+(\S+)[ \t]*$", distribution[1], re.MULTILINE
        ):
            latency[int(percent)] = parse_time_ms(value)
    socket_errors = dict.fromkeys(("connect", "read", "write", "timeout"), 0)
    errors = re.search(r"Socket errors: (.*)$", output, re.MULTILINE)
    if errors is not None:
        for name, count in re.findall(r"(\w+) (\d+)", errors[1]):
            socket_errors[name] = int(count)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    statuses = {
        int(code): int(count)
        for code, count in re.findall(r"^status (\d+) (\d+)$", output, re.MULTILINE)
    }
    pairs = re.search(r"^pairs used (\d+) of (\d+)$", output, re.MULTILINE)
    return WrkResult(
        requests=int(total[1]),
        seconds=parse_time_ms(total[2]) / 1000,
        rps=float(rps[1]),
        latency_ms=latency,
        non_2xx=int(non_2xx[1]) if non_2xx else 0,
        socket_errors=socket_errors,
        statuses=dict(sorted(statuses.items())),
        pairs_used=int(pairs[1]) if pairs else None,
        pairs_total=int(pairs[2]) if pairs else None,
    )


def lua_string(text: str) -> str:
    """`text` as a Lua string literal."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def request_script(method: str, headers: dict[str, str], body: str | None = None) -> str:
    """A script that sends the same request every time (the URL's path and query)."""
    lines = [f"wrk.method = {lua_string(method)}"]
    lines += [f"wrk.headers[{lua_string(k)}] = {lua_string(v)}" for k, v in headers.items()]
    if body is not None:
        lines.append(f"wrk.body = {lua_string(body)}")
    return "\n".join(lines) + "\n" + _TALLY


def vote_script(tokens: Sequence[str]) -> str:
    """The vote script: the voters' access tokens, numbered from 1 in the pairs file."""
    listed = ", ".join(lua_string(token) for token in tokens)
    return _VOTES.replace("{TOKENS}", "{" + listed + "}") + _TALLY


def wrk_command(
    url: str,
    script: Path,
    *,
    connections: int,
    duration: float,
    timeout: float,
    script_args: Sequence[str] = (),
) -> list[str]:
    command = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{duration:g}s",
        "--latency",
        "--timeout",
        f"{timeout:g}s",
        "-s",
        str(script),
        url,
    ]
    if script_args:
        command += ["--", *script_args]
    return command


def run_wrk(command: Sequence[str], duration: float) -> tuple[WrkResult, str]:
    """Run wrk; its parsed report and its raw output. A wrk that fails is an error."""
    try:
        status, out, err = run_child(
            list(command), timeout=duration + 60, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
    except subprocess.TimeoutExpired:
        raise HarnessError(f"wrk ran past its {duration:g} s by a minute: {command}") from None
    if status != 0:
        raise HarnessError(f"wrk exited with {status}: {err or out}")
    return parse_wrk(out), out
