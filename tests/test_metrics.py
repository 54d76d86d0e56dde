"""/metrics: Prometheus' text format, with the request, MongoDB command, login throttle and
password-hash series; summed over workers; absent when METRICS_ENABLED is false."""

import shutil
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from pymongo.errors import OperationFailure

from service.config import Settings
from service.main import create_app
from tests.conftest import make_settings, running_server
from tests.factories import bearer, create_user, login, unique_email

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
