"""Prometheus metrics at /metrics: requests, MongoDB commands, login throttle refusals and
password hashes in flight, through prometheus-client.

One worker keeps its figures in its own memory. With several (`social-api serve --workers N`)
each writes them to files in one directory, PROMETHEUS_MULTIPROC_DIR, which `serve` creates
for them (prometheus-client's multiprocess mode), and /metrics sums every worker's, whichever
worker answers. The mode is chosen once per process, when prometheus-client is first imported:
the variable must be set before then (see `use_directory`).
"""

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from pymongo import monitoring
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Requests that matched no route share one label, and methods outside HTTP's usual ones
# another, so that scanning for paths or methods cannot create a series per guess.
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "OTHER"

requests_total = Counter(
    "http_requests_total",
    "HTTP requests answered, by method, route template and status code.",
    ["method", "route", "status"],
)
request_seconds = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to the end of its response, by method and route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
command_seconds = Histogram(
    "mongodb_command_duration_seconds",
    "MongoDB commands sent by the API (each attempt), by command name, as PyMongo timed them.",
    ["command"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
)
command_failures_total = Counter(
    "mongodb_command_failures_total",
    "MongoDB commands that failed (an error reply or a network error), by command name.",
    ["command"],
)
throttle_refusals_total = Counter(
    "login_throttle_refusals_total",
    "Password checks refused with 429 by the login throttle (login, password change, "
    "account deletion), before any hash was computed.",
)
hashes_in_flight = Gauge(
    "password_hashes_in_flight",
    "bcrypt hashes being computed or waiting for a hashing thread, summed over workers.",
    multiprocess_mode="livesum",
)


def use_directory(directory: Path) -> None:
    """Have the worker processes started from now on (which import prometheus-client afresh)
    write their figures to `directory`, which must be empty, for /metrics to sum."""
    os.environ[MULTIPROCESS_DIR] = str(directory)


def exposition() -> bytes:
    """Every metric in Prometheus' text format: this process's, or every worker's."""
    # Multiprocess mode is on when the variable is set at all, as prometheus-client decides.
    if MULTIPROCESS_DIR in os.environ:
        forget_dead_workers(Path(os.environ[MULTIPROCESS_DIR]))
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]  # its __init__ is unannotated
        return generate_latest(registry)
    return generate_latest(REGISTRY)


def forget_dead_workers(directory: Path) -> None:
    """Drop the live gauges (hashes in flight) of workers that are gone: one that died in the
    middle of a hash (killed, out of memory) would otherwise count it for ever. Counters and
    histograms keep what the dead counted, as Prometheus expects of them."""
    for file in directory.glob("gauge_live*_*.db"):
        pid = file.stem.rpartition("_")[2]
        if pid.isdigit() and not _alive(int(pid)):
            mark_process_dead(int(pid), str(directory))  # type: ignore[no-untyped-call]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


async def metrics_endpoint(request: Request) -> Response:
    return Response(exposition(), media_type=CONTENT_TYPE_LATEST)


def observe_request(scope: Scope, status: int, seconds: float) -> None:
    """Count a request that has been answered and time it, by the route template it matched
    (called by the request log's middleware, which already has its status and duration)."""
    route = route_template(scope)
    method = scope["method"] if scope["method"] in METHODS else OTHER_METHOD
    requests_total.labels(method, route, str(status)).inc()
    request_seconds.labels(method, route).observe(seconds)


def route_template(scope: Scope) -> str:
    """The template of the route that answered: FastAPI's routes name themselves; the others
    (`/openapi.json`, `/metrics`, a mount) are found by the endpoint the router chose."""
    path = getattr(scope.get("route"), "path", None)
    if isinstance(path, str):
        return path
    endpoint = scope.get("endpoint")
    app = scope.get("app")
    if endpoint is not None and app is not None:
        for route in getattr(app, "routes", ()):
            if endpoint is getattr(route, "endpoint", None) or endpoint is getattr(
                route, "app", None
            ):
                return str(route.path)
    return UNMATCHED


class CommandMetrics(monitoring.CommandListener):
    """Each MongoDB command's duration and failures, from PyMongo's command monitoring."""

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        pass

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        command_seconds.labels(event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        command_seconds.labels(event.command_name).observe(event.duration_micros / 1e6)
        command_failures_total.labels(event.command_name).inc()
