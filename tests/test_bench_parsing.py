"""The benchmark's pure helpers (bench/wrk.py, bench/report.py, bench/endpoints.py,
bench/default_store.py): wrk's report as wrk 4.1 prints it, the Lua literals, a process's CPU time
from /proc, the development store's targets, and the notes block that regeneration keeps."""

from pathlib import Path

import pytest

from bench import default_store, endpoints, report, wrk

# wrk 4.1.0 with --latency and the benchmark's tally, against a fast endpoint.
FAST = """\
Running 10s test @ http://127.0.0.1:41234/posts/?limit=10
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.21ms  850.31us  21.62ms   91.73%
    Req/Sec     3.79k    85.41     3.89k    80.00%
  Latency Distribution
     50%    4.04ms
     75%    4.38ms
     90%  850.00us
     99%    8.83ms
  37553 requests in 10.00s, 52.23MB read
Requests/sec:   3755.21
Transfer/sec:      5.22MB
status 200 37553
"""

# Slow answers (seconds are printed with a trailing space), socket errors and failed answers.
SLOW = """\
Running 10s test @ http://127.0.0.1:41234/posts/?limit=100
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     4.52s   310.21ms   5.01s    70.00%
    Req/Sec     3.10      2.00     8.00     70.00%
  Latency Distribution
     50%    4.60s \n\
     75%    4.90s \n\
     90%    5.00s \n\
     99%    5.01s \n\
  32 requests in 10.02s, 1.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 3
  Non-2xx or 3xx responses: 20
Requests/sec:      3.19
Transfer/sec:    102.18KB
status 200 12
status 503 20
"""

VOTES = """\
Running 10s test @ http://127.0.0.1:41234/vote/
  1 threads and 16 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency    40.00ms   10.00ms 100.00ms   70.00%
    Req/Sec   400.00     20.00   450.00     70.00%
  Latency Distribution
     50%   38.00ms
     75%   45.00ms
     90%   55.00ms
     99%   90.00ms
  4000 requests in 10.00s, 1.00MB read
Requests/sec:    399.90
Transfer/sec:    102.18KB
status 201 4000
pairs used 4017 of 8000
"""


def test_parse_time_units() -> None:
    assert wrk.parse_time_ms("850.00us") == pytest.approx(0.85)
    assert wrk.parse_time_ms("4.04ms") == pytest.approx(4.04)
    assert wrk.parse_time_ms("1.50s ") == pytest.approx(1500)
    assert wrk.parse_time_ms("1.00m") == pytest.approx(60_000)
    with pytest.raises(ValueError):
        wrk.parse_time_ms("-nan%")


def test_parse_fast_run() -> None:
    result = wrk.parse_wrk(FAST)
    assert result.requests == 37553
    assert result.seconds == pytest.approx(10.0)
    assert result.rps == pytest.approx(3755.21)
    assert result.latency_ms == pytest.approx({50: 4.04, 75: 4.38, 90: 0.85, 99: 8.83})
    assert (result.p50, result.p99) == pytest.approx((4.04, 8.83))
    assert result.non_2xx == 0
    assert result.socket_errors == {"connect": 0, "read": 0, "write": 0, "timeout": 0}
    assert result.statuses == {200: 37553}
    assert result.failures == 0
    assert result.pairs_used is None and result.pairs_total is None


def test_parse_slow_run_with_errors() -> None:
    result = wrk.parse_wrk(SLOW)
    assert result.requests == 32
    assert result.rps == pytest.approx(3.19)
    assert result.p50 == pytest.approx(4600)
    assert result.p99 == pytest.approx(5010)
    assert result.non_2xx == 20
    assert result.socket_errors == {"connect": 0, "read": 2, "write": 0, "timeout": 3}
    assert result.errors == 5
    assert result.statuses == {200: 12, 503: 20}
    assert result.failures == 25  # 20 answers of 503 and 5 socket errors


def test_failures_without_a_tally_come_from_wrk_count() -> None:
    untallied = "\n".join(line for line in SLOW.splitlines() if not line.startswith("status"))
    result = wrk.parse_wrk(untallied)
    assert result.statuses == {}
    assert result.failures == 20 + 5


def test_a_201_is_not_a_failure_and_a_409_is() -> None:
    result = wrk.parse_wrk(VOTES)
    assert result.statuses == {201: 4000}
    assert result.failures == 0
    assert (result.pairs_used, result.pairs_total) == (4017, 8000)
    conflicted = wrk.parse_wrk(VOTES.replace("status 201 4000", "status 201 3990\nstatus 409 10"))
    assert conflicted.failures == 10


def test_not_a_report() -> None:
    with pytest.raises(ValueError, match="not a wrk report"):
        wrk.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_lua_string_escapes() -> None:
    assert wrk.lua_string('{"title": "a\\\\b"}') == '"{\\"title\\": \\"a\\\\\\\\b\\"}"'
    assert wrk.lua_string("two\nlines") == '"two\\nlines"'


def test_request_script_sets_method_headers_body_and_tally() -> None:
    script = wrk.request_script("POST", {"Content-Type": "application/json"}, '{"a": 1}')
    assert 'wrk.method = "POST"' in script
    assert 'wrk.headers["Content-Type"] = "application/json"' in script
    assert 'wrk.body = "{\\"a\\": 1}"' in script
    assert "function response(status, headers, body)" in script


def test_vote_script_lists_the_tokens() -> None:
    script = wrk.vote_script(["t1", "t2"])
    assert 'local tokens = {"t1", "t2"}' in script
    assert "{TOKENS}" not in script


def test_verdicts() -> None:
    assert report.verdict(True) == "PASS"
    assert report.verdict(False) == "**FAIL**"
    assert report.verdict(None) == "n/a"


def test_cpu_time_comes_from_utime_and_stime() -> None:
    # A command name with spaces and parentheses, as the kernel writes it.
    stat = "4242 (python (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 50 0 0 20 0 9 0 77"
    ticks = endpoints.CLOCK_TICKS
    assert endpoints.cpu_ms_of_stat(stat) == (250 + 50) * 1000 / ticks


def _store(seed_s: float, demo_vote: float, big_vote: float, search: float) -> dict[str, object]:
    demo = [
        {"label": endpoints.VOTE, "kind": "write", "p50_ms": demo_vote},
        {"label": endpoints.SEARCH, "kind": "search", "p50_ms": search},
        {"label": endpoints.LOGIN, "kind": "password", "p50_ms": 250.0},
    ]
    return {
        "seed_stopped_s": seed_s,
        "seed_running_s": seed_s,
        "demo": demo,
        "big": [{"label": endpoints.VOTE, "kind": "write", "p50_ms": big_vote}],
    }


def test_the_development_store_targets() -> None:
    held = [t["holds"] for t in default_store.targets(_store(15, 10, 14.9, 99))]
    assert held == [True, True, True, True, True, None]  # seeds, growth, vote, search, login
    missed = default_store.targets(_store(31, 10, 15.1, 101))
    assert [t["holds"] for t in missed] == [False, False, False, True, False, None]
    assert missed[2]["value"] == "1.51x (15.1 ms against 10.0 ms)"


def test_notes_survive_regeneration(tmp_path: Path) -> None:
    previous = tmp_path / "BENCHMARKS.md"
    assert report.kept_notes(previous) == report.DEFAULT_NOTES  # no file yet
    previous.write_text(
        "# Old\n\n<!-- notes -->\nThe feed is bound by the store.\n<!-- /notes -->\n"
    )
    assert report.kept_notes(previous) == "The feed is bound by the store."
    previous.write_text("# Old, without a notes block\n")
    assert report.kept_notes(previous) == report.DEFAULT_NOTES


def test_milliseconds_are_readable() -> None:
    assert report.ms(None) == "n/a"
    assert report.ms(0.2134) == "0.21 ms"
    assert report.ms(12.34) == "12.3 ms"
    assert report.ms(595.2) == "595 ms"
    assert report.ms(12_345) == "12.3 s"


def test_throughput_and_shares_are_readable() -> None:
    assert report.rps(310.44) == "310.4"
    assert report.rps(4406.7) == "4,407"
    assert report.percent(243, 4407) == "5.5%"
    assert report.percent(2200, 4400) == "50%"
    assert report.percent(3.8, 4407) == "0.086%"
    assert report.percent(1, None) == "n/a"
