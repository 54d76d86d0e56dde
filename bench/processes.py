"""The processes the benchmark starts (store, servers), and waiting for them to answer.

Every process is started through `Processes`, which stops them all on the way out, latest
first: SIGTERM, then SIGKILL after 15 s. Each writes its output to `<name>.log` in the run's
directory, which is also its working directory (so no .env file of the checkout is read).
"""

import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

READY_TIMEOUT_S = 60.0
SERVER_GRACE_S = 1.0
DATABASE_GRACE_S = 15.0


class HarnessError(Exception):
    """The benchmark cannot go on; the message says why."""


class Processes:
    """Every process the benchmark starts, stopped on the way out: the servers first, then
    the database they are still using (so that requests in flight can end), then whatever
    was registered in `after_stop`."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.servers: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.databases: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.after_stop: list[Callable[[], None]] = []  # e.g. drop MONGODB_URL's database

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str],
        *,
        database: bool = False,
        pipe_stdout: bool = False,
    ) -> subprocess.Popen[bytes]:
        """Start `command` in the run's directory, its output in `<name>.log` there."""
        with open(self.directory / f"{name}.log", "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=self.directory,
                env=env,
                stdout=subprocess.PIPE if pipe_stdout else log,
                stderr=log,
            )
        (self.databases if database else self.servers).append((name, process))
        return process

    def check(self) -> None:
        """A process that exited on its own is a harness failure."""
        for name, process in self.databases + self.servers:
            if process.poll() is not None:
                raise HarnessError(
                    f"{name} exited with {process.returncode}; see {self.directory / name}.log"
                )

    def stop_servers(self) -> None:
        """Stop the servers alone (SIGTERM, then SIGKILL after DATABASE_GRACE_S): a
        `social-api serve` on the embedded store closes its store on the way out."""
        _stop([process for _, process in self.servers], DATABASE_GRACE_S)
        self.servers = []

    def stop_all(self) -> None:
        """SIGTERM to every server, SIGKILL to those still running after SERVER_GRACE_S
        (requests the measurements left in flight are not worth waiting for); then the
        database, which gets DATABASE_GRACE_S to close."""
        _stop([process for _, process in self.servers], SERVER_GRACE_S)
        _stop([process for _, process in self.databases], DATABASE_GRACE_S)
        self.servers, self.databases = [], []
        for action in self.after_stop:
            action()
        self.after_stop = []


def _stop(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()


def run_child(
    command: list[str], *, timeout: float | None = None, **options: Any
) -> tuple[int, str, str]:
    """Run a command to its end: exit status, stdout and stderr (when piped). The child is
    killed and reaped however this returns, an interrupt included, so none outlives the run."""
    with subprocess.Popen(command, text=True, **options) as process:
        try:
            out, err = process.communicate(timeout=timeout)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    return process.returncode, out or "", err or ""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def read_line(process: subprocess.Popen[bytes], timeout: float) -> str:
    """The first line the process prints, within `timeout` seconds."""
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            raise HarnessError(f"no output within {timeout:g} s")
    return process.stdout.readline().decode().strip()


def wait_until_up(base: str, path: str, status: int, processes: Processes) -> None:
    """Wait until `GET path` answers `status` (a server that exits meanwhile is an error)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        processes.check()
        try:
            if httpx.get(base + path, timeout=5, trust_env=False).status_code == status:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise HarnessError(f"{base}{path} did not answer {status} within {READY_TIMEOUT_S:g} s")


def uvicorn_command(app: str, port: int) -> list[str]:
    """uvicorn as `social-api serve` runs it: an app factory, one worker, loopback, no access
    log (the service logs each request itself), no proxy headers."""
    return [
        sys.executable,
        *("-m", "uvicorn", app, "--factory", "--host", "127.0.0.1", "--port", str(port)),
        *("--no-access-log", "--no-proxy-headers", "--log-level", "warning"),
    ]
