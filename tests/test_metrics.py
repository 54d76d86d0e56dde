"""/metrics: Prometheus' text format, with the request, MongoDB command, login throttle and
password-hash series; summed over workers; absent when METRICS_ENABLED is false."""

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pymongo.errors import OperationFailure
from typer.testing import CliRunner

from service import metrics, security
from service.cli import app as cli
from service.config import Settings
from service.main import create_app
from tests.conftest import SMTP_ENV, TEST_SECRET_KEY, make_settings, running_server
from tests.factories import DEFAULT_PASSWORD, bearer, create_user, login, unique_email

type Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> Samples:
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return samples(response.text)


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """The suite's app, through a client that takes text answers as well as JSON ones."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


async def test_metrics_count_requests_commands_and_throttle_refusals(client):
    user = await create_user(client)
    token = await login(client, user.email)
    before = await scrape(client)

    for _ in range(3):
        assert (await client.get("/posts/", headers=bearer(token))).status_code == 200
    missing = await client.get("/posts/0123456789abcdef01234567", headers=bearer(token))
    assert missing.status_code == 404
    assert (await client.get("/no/such/path")).status_code == 404
    email = unique_email()
    form = {"username": email, "password": "wrong password"}
    answers = [(await client.post("/login", data=form)).status_code for _ in range(6)]
    assert answers == [403] * 5 + [429]
    after = await scrape(client)

    def grew(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    feed = {"method": "GET", "route": "/posts/"}
    assert grew("http_requests_total", **feed, status="200") == 3
    assert grew("http_request_duration_seconds_count", **feed) == 3
    assert grew("http_request_duration_seconds_bucket", **feed, le="+Inf") == 3
    one_post = {"method": "GET", "route": "/posts/{post_id}", "status": "404"}
    assert grew("http_requests_total", **one_post) == 1
    # A path no route has is counted under one label, whatever the path.
    assert grew("http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert grew("http_requests_total", method="POST", route="/login", status="429") == 1
    assert grew("http_requests_total", method="POST", route="/login", status="403") == 5
    # Each page of the feed is a find (the caller) and an aggregate (the page and its count).
    assert grew("mongodb_command_duration_seconds_count", command="aggregate") >= 3 + 6
    assert grew("mongodb_command_duration_seconds_count", command="find") >= 3 + 1
    assert grew("mongodb_command_duration_seconds_sum", command="find") > 0
    assert grew("login_throttle_refusals_total") == 1
    assert value(after, "password_hashes_in_flight") == 0  # five were checked, none is left


async def test_routes_outside_the_api_and_odd_methods_get_bounded_labels(client):
    """`/openapi.json` and `/metrics` are counted by their own path; a method outside HTTP's
    usual ones, and a path no route has, each share one label."""
    before = await scrape(client)
    assert (await client.get("/openapi.json")).status_code == 200
    assert (await client.request("BREW", "/posts/")).status_code == 405
    assert (await client.get("/wp-admin/setup.php")).status_code == 404
    after = await scrape(client)

    def grew(**labels: str) -> float:
        return value(after, "http_requests_total", **labels) - value(
            before, "http_requests_total", **labels
        )

    assert grew(method="GET", route="/openapi.json", status="200") == 1
    assert grew(method="GET", route="/metrics", status="200") == 1  # the first scrape
    assert grew(method="OTHER", route="/posts/", status="405") == 1
    assert grew(method="GET", route="<unmatched>", status="404") == 1
    assert not [key for key in after if ("method", "BREW") in key[1]]


async def test_hashes_in_flight_are_counted_while_they_run(client, monkeypatch):
    """A login's password check holds the gauge at 1 until it is done."""
    user = await create_user(client)
    started, release = threading.Event(), threading.Event()
    verify = security.verify_password_sync

    def held(*args: Any, **kwargs: Any) -> bool:
        started.set()
        release.wait(10)
        return verify(*args, **kwargs)

    monkeypatch.setattr(security, "verify_password_sync", held)
    form = {"username": user.email, "password": DEFAULT_PASSWORD}
    attempt = asyncio.create_task(client.post("/login", data=form))
    assert await asyncio.to_thread(started.wait, 10)
    during = await scrape(client)
    release.set()
    assert (await attempt).status_code == 200
    assert value(during, "password_hashes_in_flight") == 1
    assert value(await scrape(client), "password_hashes_in_flight") == 0


def test_a_dead_workers_hash_in_flight_is_forgotten(tmp_path: Path, monkeypatch):
    """A worker killed in the middle of a hash leaves its gauge file; /metrics drops it, and
    keeps what the dead worker counted."""
    script = (
        "import os\n"
        "from service import metrics\n"
        "metrics.hashes_in_flight.inc()\n"
        "metrics.throttle_refusals_total.inc()\n"
        "os._exit(0)\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=60)
    assert list(tmp_path.glob("gauge_livesum_*.db"))
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    found = samples(metrics.exposition().decode())
    assert value(found, "password_hashes_in_flight") == 0
    assert value(found, "login_throttle_refusals_total") == 1
    assert not list(tmp_path.glob("gauge_livesum_*.db"))


async def test_a_failed_command_is_counted_and_timed(app: FastAPI, client):
    """A command MongoDB answers with an error (ok: 0), sent by the app's own client."""
    before = await scrape(client)
    with pytest.raises(OperationFailure):
        await app.state.database.command("noSuchCommand")
    after = await scrape(client)
    for name in ("mongodb_command_failures_total", "mongodb_command_duration_seconds_count"):
        grown = value(after, name, command="noSuchCommand") - value(
            before, name, command="noSuchCommand"
        )
        assert grown == 1, name


async def test_metrics_enabled_false_removes_the_endpoint(settings: Settings, restore_beanie):
    off = make_settings(settings.mongodb_url or "", settings.mongodb_db, metrics_enabled=False)
    app = create_app(off)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            response = await http.get("/metrics")
            assert response.status_code == 404
            assert response.json() == {"detail": "Not Found"}
            assert (await http.get("/healthz")).status_code == 200


def per_worker(directory: Path, tmp_path: Path) -> dict[str, float]:
    """Each worker's count of `GET /healthz` 200, read from its own files alone."""
    counts: dict[str, float] = {}
    for file in directory.glob("counter_*.db"):
        pid = file.stem.removeprefix("counter_")
        alone = tmp_path / f"alone-{pid}"
        alone.mkdir()
        shutil.copy(file, alone / file.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))  # type: ignore[no-untyped-call]
        found = samples(generate_latest(registry).decode())
        route = {"method": "GET", "route": "/healthz", "status": "200"}
        counts[pid] = value(found, "http_requests_total", **route)
    return counts


@pytest.mark.parametrize("given", [False, True], ids=["serve's-own-directory", "operator's"])
def test_two_workers_answer_with_the_sum_of_both(tmp_path: Path, given: bool):
    """`serve --workers 2`: whichever worker answers /metrics counts every worker's requests,
    in the directory `serve` makes for them or in one the operator names (whose files show
    what each worker counted)."""
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)} if given else {}
    sent = 60
    route = {"method": "GET", "route": "/healthz", "status": "200"}
    made = set(Path(tempfile.gettempdir()).glob("social-api-metrics-*"))
    with running_server(tmp_path, "--workers", "2", **env) as (base, _):
        # New connections, eight at a time, so that both workers take some.
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.get(f"{base}/healthz").status_code, range(sent)))
        assert codes == [200] * sent
        for _ in range(6):  # each scrape, a new connection: either worker may answer
            answer = httpx.get(f"{base}/metrics")
            assert answer.status_code == 200
            assert value(samples(answer.text), "http_requests_total", **route) == sent
        workers = per_worker(shared, tmp_path)
    if given:
        # The files of `serve` itself (which starts the workers, answers nothing) count none.
        served = [count for count in workers.values() if count > 0]
        assert len(served) == 2 and sum(served) == sent, workers
    else:
        assert workers == {}
        # The directory `serve` made is gone with it.
        assert set(Path(tempfile.gettempdir()).glob("social-api-metrics-*")) == made


@pytest.mark.parametrize("given", [False, True])
def test_serve_with_one_worker_keeps_its_figures_in_memory(tmp_path: Path, given: bool):
    """One worker needs no directory; an operator's own directory is used as it is."""
    env = {"PROMETHEUS_MULTIPROC_DIR": str(tmp_path)} if given else {}
    with running_server(tmp_path, **env) as (base, _):
        assert httpx.get(f"{base}/healthz").status_code == 200
        found = samples(httpx.get(f"{base}/metrics").text)
    route = {"method": "GET", "route": "/healthz", "status": "200"}
    assert value(found, "http_requests_total", **route) == 1
    assert bool(list(tmp_path.glob("counter_*.db"))) == given


@pytest.fixture
def serve_without_serving(monkeypatch, tmp_path):
    """`social-api serve` up to the point where it would start uvicorn, which it does not:
    what it would have run uvicorn with, and the metrics directory it would hand over."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("MONGODB_URL", "mongodb://127.0.0.1:9/")
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    for name, value in SMTP_ENV.items():  # a real MongoDB's mail needs an SMTP server
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: dict[str, Any] = {}

    def run(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs, directory=os.environ.get("PROMETHEUS_MULTIPROC_DIR"))

    monkeypatch.setattr(uvicorn, "run", run)
    monkeypatch.setattr(signal, "signal", lambda *args: None)  # keep pytest's own handlers
    return seen


def test_serve_gives_no_directory_when_metrics_are_off(serve_without_serving, monkeypatch):
    def no_directory(*args: Any, **kwargs: Any) -> str:
        raise AssertionError("no directory should be made")

    monkeypatch.setattr(tempfile, "mkdtemp", no_directory)
    monkeypatch.setenv("METRICS_ENABLED", "false")
    result = CliRunner().invoke(cli, ["serve", "--workers", "2"])
    assert result.exit_code == 0, result.output
    assert serve_without_serving["workers"] == 2
    assert serve_without_serving["directory"] is None


def test_serve_says_in_one_line_when_it_cannot_make_the_directory(
    serve_without_serving, monkeypatch
):
    def read_only(*args: Any, **kwargs: Any) -> str:
        raise OSError(30, "Read-only file system", "/tmp/social-api-metrics-x")

    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    result = CliRunner().invoke(cli, ["serve", "--workers", "2"])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: no directory for the workers' metrics")
    assert "METRICS_ENABLED=false" in result.output
    assert serve_without_serving == {}  # uvicorn never started
