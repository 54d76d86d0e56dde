"""The service wrapped for measurement: database commands and server time per request, and
event-loop lag.

`create_service_app` builds the service with `service.main.create_app(settings,
command_listeners=[recorder])`, settings from the environment as `social-api serve` reads
them, wrapped in `BenchMiddleware`, a pure-ASGI layer outside everything else, which per HTTP
request:

- sets a `ContextVar` to a fresh `RequestRecord`; PyMongo calls the recorder's
  `CommandListener` callbacks in the task that awaits the command, which is the request's
  task (or a task started from it, which gets a copy of its context), so each command's
  name and `duration_micros` (CommandSucceeded or CommandFailed) is added to the request
  that caused it. Commands seen with no record set are counted as unattributed; the
  benchmark sends its requests one at a time and reports that count, so a missed
  attribution shows;
- times the request with `time.perf_counter`, from the moment the server hands it over
  to the moment the last body chunk is sent.

A background task sleeps 5 ms in a loop and records how late it wakes up: the event loop's
lag, which is what every other request waits when a handler blocks the loop.

The wrapper itself answers, outside the app:

- `GET /__bench__/stats`: every request recorded since the last reset (method, path,
  status, server time, database time, command names), the command counts, and the lag (max
  and p99, milliseconds) since the last reset;
- `POST /__bench__/reset`: forget all of that.

    .venv/bin/python -m uvicorn bench.instrumented:create_service_app --factory
"""

import asyncio
import math
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from pymongo import monitoring
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings
from service.main import create_app

STATS_PATH = "/__bench__/stats"
RESET_PATH = "/__bench__/reset"
LAG_INTERVAL_S = 0.005


@dataclass
class RequestRecord:
    """What one request cost: filled in while it runs."""

    method: str
    path: str
    status: int = 0
    server_ms: float = 0.0
    db_ms: float = 0.0
    commands: list[str] = field(default_factory=list)
    failed_commands: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "server_ms": round(self.server_ms, 4),
            "db_ms": round(self.db_ms, 4),
            "commands": self.commands,
            "failed_commands": self.failed_commands,
        }


current_request: ContextVar[RequestRecord | None] = ContextVar("bench_request", default=None)


class CommandRecorder(monitoring.CommandListener):
    """Adds each finished command to the request whose context it runs in."""

    def __init__(self) -> None:
        self.total = 0
        self.unattributed = 0
        # An aggregation's stages, by request id, from its start to its end: the report names
        # them, so that a page by skip and one by cursor show how they differ.
        self.pipelines: dict[int, str] = {}

    def reset(self) -> None:
        self.total = self.unattributed = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "aggregate":
            stages = [
                f"$skip {stage['$skip']}" if "$skip" in stage else next(iter(stage), "?")
                for stage in event.command.get("pipeline", [])
            ]
            self.pipelines[event.request_id] = f"aggregate({', '.join(stages)})"

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        name = self.pipelines.pop(event.request_id, event.command_name)
        self._add(name, event.duration_micros, failed=False)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        name = self.pipelines.pop(event.request_id, event.command_name)
        self._add(name, event.duration_micros, failed=True)

    def _add(self, name: str, micros: int, *, failed: bool) -> None:
        self.total += 1
        record = current_request.get()
        if record is None:
            self.unattributed += 1
            return
        record.commands.append(name)
        record.db_ms += micros / 1000
        record.failed_commands += failed


class LagMonitor:
    """How late a task that sleeps LAG_INTERVAL_S in a loop wakes up."""

    def __init__(self) -> None:
        self.samples: list[float] = []  # seconds late, since the last reset
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL_S)
            self.samples.append(max(0.0, time.perf_counter() - before - LAG_INTERVAL_S))

    def summary(self) -> dict[str, float | int | None]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"samples": 0, "max_ms": None, "p99_ms": None}
        rank = max(1, math.ceil(0.99 * len(ordered)))
        return {
            "samples": len(ordered),
            "max_ms": round(ordered[-1] * 1000, 3),
            "p99_ms": round(ordered[rank - 1] * 1000, 3),
        }


class BenchMiddleware:
    """Records every HTTP request's cost; answers the /__bench__ paths itself."""

    def __init__(self, app: ASGIApp, recorder: CommandRecorder) -> None:
        self.app = app
        self.recorder = recorder
        self.lag = LagMonitor()
        self.records: list[RequestRecord] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.lag.start()  # the first call (the lifespan's) runs on the server's loop
        if scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope["path"] == STATS_PATH and scope["method"] == "GET":
            await JSONResponse(self.stats())(scope, receive, send)
        elif scope["path"] == RESET_PATH and scope["method"] == "POST":
            self.reset()
            await JSONResponse({"message": "reset"})(scope, receive, send)
        else:
            await self.measure(scope, receive, send)

    async def measure(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        record = RequestRecord(method=scope["method"], path=scope["path"])
        token = current_request.set(record)
        finished: float | None = None

        async def timed_send(message: Message) -> None:
            nonlocal finished
            if message["type"] == "http.response.start":
                record.status = message["status"]
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                finished = time.perf_counter()

        try:
            await self.app(scope, receive, timed_send)
        finally:
            current_request.reset(token)
            record.server_ms = ((finished or time.perf_counter()) - started) * 1000
            self.records.append(record)

    def reset(self) -> None:
        self.records = []
        self.recorder.reset()
        self.lag.samples = []

    def stats(self) -> dict[str, Any]:
        return {
            "requests": [record.as_dict() for record in self.records],
            "commands_total": self.recorder.total,
            "commands_unattributed": self.recorder.unattributed,
            "lag": self.lag.summary(),
        }


def create_service_app() -> BenchMiddleware:
    """The service, as `social-api serve` builds it from the environment, wrapped."""
    recorder = CommandRecorder()
    return BenchMiddleware(create_app(Settings(), command_listeners=[recorder]), recorder)
