"""What `social-api serve` prints: plain text for a person at a terminal, JSON lines into a
file (a container's log collector, CI), and either one when LOG_FORMAT forces it."""

import json
import os
import pty
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import running_server, serving

REQUEST_ID = "log-format-check"
ACCESS_TEXT = re.compile(
    rf"^\d\d:\d\d:\d\d INFO service\.access: GET /healthz 200 request_id={REQUEST_ID} "
)


def serve_in_terminal(directory: Path, **env: str) -> str:
    """Run `social-api serve` with its output on a pseudo-terminal (as `make run` in a
    terminal), send one request, stop it; everything it printed."""
    leader, follower = pty.openpty()
    output = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's last writer has gone
                return
            if not chunk:
                return
            output.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    held = [follower]  # closed once the server holds its own copy
    try:
        with serving(directory, (), env, terminal=follower) as (base, _):
            os.close(held.pop())
            response = httpx.get(f"{base}/healthz", headers={"X-Request-ID": REQUEST_ID})
            assert response.status_code == 200
            deadline = time.monotonic() + 10
            while REQUEST_ID.encode() not in output and time.monotonic() < deadline:
                time.sleep(0.05)
    finally:
        for fd in held:
            os.close(fd)
        reader.join(timeout=10)
        os.close(leader)
    return output.decode(errors="replace")


def serve_into_file(directory: Path, **env: str) -> str:
    """Run `social-api serve` with its output in a file, send one request, stop it."""
    with running_server(directory, LOG_FORMAT=env.pop("LOG_FORMAT", "auto"), **env) as (base, _):
        response = httpx.get(f"{base}/healthz", headers={"X-Request-ID": REQUEST_ID})
        assert response.status_code == 200
    return (directory / "server.log").read_text()


def assert_plain_text(output: str) -> None:
    lines = output.splitlines()
    assert not [line for line in lines if line.startswith("{")], output
    # The banner: a block of plain lines, the exact mongosh command on one of them.
    [heading] = [i for i, line in enumerate(lines) if "EMBEDDED DEVELOPMENT STORE" in line]
    assert re.match(r"\d\d:\d\d:\d\d WARNING service\.db:$", lines[heading - 1]), output
    assert any(re.fullmatch(r' +mongosh: +mongosh "mongodb://127\.0\.0\.1:\d+/\S+"', line)
               for line in lines[heading:heading + 8]), output  # fmt: skip
    assert "\\n" not in output
    assert [line for line in lines if ACCESS_TEXT.match(line)], output


def json_lines(output: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in output.splitlines() if line.strip()]


def assert_json_lines(output: str) -> None:
    records = json_lines(output)  # every line is one JSON object
    [banner] = [r for r in records if "EMBEDDED DEVELOPMENT STORE" in r["message"]]
    assert banner["level"] == "WARNING" and banner["logger"] == "service.db"
    assert re.search(r'mongosh: +mongosh "mongodb://127\.0\.0\.1:\d+/\S+"\n', banner["message"])
    [access] = [r for r in records if r.get("request_id") == REQUEST_ID]
    assert (access["method"], access["path"], access["status"]) == ("GET", "/healthz", 200)


@pytest.mark.parametrize(
    ("where", "log_format", "check"),
    [
        pytest.param(serve_in_terminal, "auto", assert_plain_text, id="terminal-auto-text"),
        pytest.param(serve_into_file, "auto", assert_json_lines, id="file-auto-json"),
        pytest.param(serve_in_terminal, "json", assert_json_lines, id="terminal-forced-json"),
        pytest.param(serve_into_file, "text", assert_plain_text, id="file-forced-text"),
    ],
)
def test_serve_prints_text_at_a_terminal_and_json_elsewhere(tmp_path, where, log_format, check):
    check(where(tmp_path, LOG_FORMAT=log_format))


def test_a_fresh_store_warns_only_that_it_is_an_emulator(tmp_path):
    """Nothing to migrate on an empty store: the banner is the one warning at start."""
    records = json_lines(serve_into_file(tmp_path, LOG_FORMAT="json"))
    warnings = [r["message"] for r in records if r["level"] in {"WARNING", "ERROR"}]
    assert len(warnings) == 1 and "EMBEDDED DEVELOPMENT STORE" in warnings[0], warnings
