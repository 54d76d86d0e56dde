"""Fault injection: the database goes away (or stalls) under a running app, and SIGTERM arrives
while a request is in flight.

test_health.py and test_live_server.py cover an app that starts without MongoDB and one
outage on one route; these take the database away from an app that was serving, on every kind
of route, bring it back without restarting the app, and check what the outage left behind.
"""

import asyncio
import os
import secrets
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from pymongo import MongoClient

from devstore import EmbeddedStore
from service.main import create_app
from tests.conftest import check_for_leaks, free_port, make_settings, running_server
from tests.factories import DEFAULT_PASSWORD, LoggedInUser, create_post, create_user, unique_email

TIMEOUT_MS = 500  # MONGODB_TIMEOUT_MS of the apps started here
# "No hang": an answer within the configured timeout plus a generous margin.
NO_HANG_S = TIMEOUT_MS / 1000 + 3
UNAVAILABLE = {"detail": "Database unavailable, try again shortly"}


def assert_unavailable(response: httpx.Response, elapsed: float, what: str) -> None:
    """The service's answer to a database outage: a JSON 503 with Retry-After, in time."""
    assert response.status_code == 503, f"{what}: {response.status_code} {response.text}"
    assert response.headers["content-type"] == "application/json", what
    assert response.json() == UNAVAILABLE, what
    assert int(response.headers["retry-after"]) > 0, what
    assert elapsed < NO_HANG_S, f"{what} took {elapsed:.1f} s"


async def wait_until_ready(client: httpx.AsyncClient, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while (ready := await client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, f"not ready after {seconds} s: {ready.json()}"
        await asyncio.sleep(0.1)
    assert ready.json() == {"message": "ready"}


def wait_for(condition: Callable[[], bool], seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {seconds} s"
        time.sleep(0.01)


def wait_for_exit(pid: int, seconds: float) -> int:
    """Reap the server process (a child of this one) and return its exit code, negative for
    the signal that ended it. running_server's own clean-up then finds it gone."""
    deadline = time.monotonic() + seconds
    while True:
        reaped, status = os.waitpid(pid, os.WNOHANG)
        if reaped:
            return os.waitstatus_to_exitcode(status)
        assert time.monotonic() < deadline, f"the server did not exit within {seconds} s"
        time.sleep(0.05)


@asynccontextmanager
async def serving(url: str) -> AsyncIterator[httpx.AsyncClient]:
    """An app of its own on `url`, with a leak-checking client."""
    settings = make_settings(url, f"faults_{uuid.uuid4().hex[:8]}", mongodb_timeout_ms=TIMEOUT_MS)
    app: FastAPI = create_app(settings)
    async with (
        LifespanManager(app, startup_timeout=30) as manager,
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app),
            base_url="http://t",
            event_hooks={"response": [check_for_leaks]},
        ) as client,
    ):
        yield client


async def test_every_route_answers_503_json_while_the_database_is_down_and_recovers(
    tmp_path, restore_beanie
):
    data_dir, port = tmp_path / "db", free_port()
    store = EmbeddedStore("sqlite", data_dir, port=port)
    url = store.start()
    try:
        async with serving(url) as client:
            alice = await create_user(client)
            bob = await create_user(client)
            post = await create_post(client, alice, title="before the outage")
            post_id = post["id"]

            store.stop()
            a, b = {"headers": alice.headers}, {"headers": bob.headers}
            post_body = {"title": "lost", "content": "c"}
            new_account = {"email": unique_email(), "password": DEFAULT_PASSWORD}
            form = {"username": bob.email, "password": DEFAULT_PASSWORD}
            refresh = {"refresh_token": alice.refresh_token}
            attempts: list[tuple[str, str, dict[str, Any]]] = [
                ("GET", "/posts/", a),
                ("GET", f"/posts/{post_id}", b),
                ("POST", "/posts/", {"json": post_body, **b}),
                ("PUT", f"/posts/{post_id}", {"json": post_body, **a}),
                ("DELETE", f"/posts/{post_id}", a),
                ("POST", "/vote/", {"json": {"post_id": post_id, "dir": 1}, **b}),
                ("GET", "/users/me", a),
                ("GET", f"/users/{bob.id}", a),
                ("POST", "/users/", {"json": new_account}),
                ("POST", "/login", {"data": form}),
                ("POST", "/auth/refresh", {"json": refresh}),
                ("POST", "/logout", {"json": refresh, **a}),
                ("POST", "/logout/all", b),
            ]

            async def attempt(method: str, path: str, options: dict[str, Any]) -> None:
                started = time.monotonic()
                response = await client.request(method, path, **options)
                assert_unavailable(response, time.monotonic() - started, f"{method} {path}")

            await asyncio.gather(*(attempt(*each) for each in attempts))
            started = time.monotonic()
            ready = await client.get("/readyz")
            assert ready.status_code == 503
            assert ready.headers["content-type"] == "application/json"
            assert ready.json()["detail"][0].startswith("MongoDB")
            assert time.monotonic() - started < NO_HANG_S
            assert (await client.get("/healthz")).status_code == 200

            # The database comes back on the same address and data; the app is not restarted.
            store = EmbeddedStore("sqlite", data_dir, port=port)
            assert store.start() == url
            await wait_until_ready(client)
            # Nothing the refused requests asked for happened: the logout, the refresh, the
            # edit, the delete and the vote did not, so the old tokens and the post are intact.
            me = await client.get("/users/me", headers=alice.headers)
            assert me.status_code == 200
            assert me.json()["id"] == alice.id
            read = await client.get(f"/posts/{post_id}", headers=bob.headers)
            assert read.status_code == 200
            assert read.json()["Post"]["title"] == "before the outage"
            assert read.json()["votes"] == 0
            feed = await client.get("/posts/", headers=bob.headers)
            assert feed.headers["x-total-count"] == "1"
            # Writes work again.
            edited = await client.put(
                f"/posts/{post_id}", json={"title": "after", "content": "c"}, headers=alice.headers
            )
            assert edited.status_code == 200
            voted = await client.post(
                "/vote/", json={"post_id": post_id, "dir": 1}, headers=bob.headers
            )
            assert voted.status_code == 201
            created = await client.post(
                "/posts/", json={"title": "t", "content": "c"}, headers=bob.headers
            )
            assert created.status_code == 201
            refreshed = await client.post(
                "/auth/refresh", json={"refresh_token": alice.refresh_token}
            )
            assert refreshed.status_code == 200
            newcomer = await create_user(client)
            assert (await client.get("/users/me", headers=newcomer.headers)).status_code == 200
    finally:
        store.stop()


class StallingProxy:
    """A TCP relay to a MongoDB server that can stall: every connection stays open, but
    nothing gets through, as with a frozen mongod or a partition that drops packets."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.flowing = asyncio.Event()
        self.flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [writer, up_writer]
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self.flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def stop(self) -> None:
        self.flowing.set()
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            self._server.abort_clients()
            await self._server.wait_closed()


async def test_a_stalled_database_answers_503_within_the_timeout(tmp_path, restore_beanie):
    store_port = free_port()
    store = EmbeddedStore("memory", tmp_path, port=store_port)
    store.start()
    proxy = StallingProxy(store_port)
    url = f"mongodb://127.0.0.1:{await proxy.start()}/?directConnection=true"
    try:
        async with serving(url) as client:
            user: LoggedInUser = await create_user(client)
            proxy.flowing.clear()
            try:
                started = time.monotonic()
                async with asyncio.timeout(NO_HANG_S):
                    ready, feed = await asyncio.gather(
                        client.get("/readyz"), client.get("/posts/", headers=user.headers)
                    )
                assert ready.status_code == 503
                assert ready.json()["detail"][0].startswith("MongoDB")
                assert_unavailable(feed, time.monotonic() - started, "GET /posts/")
            finally:
                proxy.flowing.set()
    finally:
        await proxy.stop()
        store.stop()


def test_a_running_server_answers_503_while_its_database_is_down_and_recovers(
    tmp_path, smtp_server
):
    """The same outage over TCP, against `social-api serve` on a database this test controls:
    the 503 passes through the real server and every middleware, on a kept-alive connection.

    The outage begins once the registration's mail is sent, with the outbox's sender set to
    look again only after an hour: the emulator, stopped in the middle of a write, can leave
    its file locked, and this test is about the requests."""
    data_dir, port = tmp_path / "db", free_port()
    store = EmbeddedStore("sqlite", data_dir, port=port)
    url = store.start()
    env = {
        "MONGODB_URL": url,
        "MONGODB_DB": "faults_live",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "MONGODB_TIMEOUT_MS": str(TIMEOUT_MS),
        "MAIL_POLL_SECONDS": "3600",
    }
    try:
        with (
            running_server(tmp_path, **env) as (base, _),
            httpx.Client(base_url=base, timeout=NO_HANG_S) as http,
        ):
            email = unique_email()
            account = {"email": email, "password": DEFAULT_PASSWORD}
            assert http.post("/users/", json=account).status_code == 201
            login = http.post("/login", data={"username": email, "password": DEFAULT_PASSWORD})
            headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
            post = http.post("/posts/", json={"title": "kept", "content": "c"}, headers=headers)
            assert post.status_code == 201
            smtp_server.wait_sync(email)
            time.sleep(0.2)  # its `sent` recorded

            store.stop()
            # A client timeout of NO_HANG_S: a hang fails here with httpx.ReadTimeout.
            for method, path, body in [
                ("GET", f"/posts/{post.json()['id']}", None),
                ("POST", "/posts/", {"title": "t", "content": "c"}),
            ]:
                started = time.monotonic()
                response = http.request(method, path, json=body, headers=headers)
                assert_unavailable(response, time.monotonic() - started, f"{method} {path}")
                assert response.headers["x-request-id"]
                assert response.headers["x-content-type-options"] == "nosniff"
                assert response.headers["cache-control"] == "no-store"
            assert http.get("/readyz").status_code == 503
            assert http.get("/healthz").status_code == 200

            store = EmbeddedStore("sqlite", data_dir, port=port)
            store.start()
            deadline = time.monotonic() + 20
            while http.get("/readyz").status_code != 200:
                assert time.monotonic() < deadline, "not ready again within 20 s"
                time.sleep(0.1)
            read = http.get(f"/posts/{post.json()['id']}", headers=headers)
            assert read.status_code == 200
            assert read.json()["Post"]["title"] == "kept"
            again = http.post("/posts/", json={"title": "t", "content": "c"}, headers=headers)
            assert again.status_code == 201
        log = (tmp_path / "server.log").read_text(errors="replace")
        assert "Unhandled error" not in log
        assert "MongoDB unavailable on GET /posts/" in log
    finally:
        store.stop()


def test_sigterm_lets_an_in_flight_login_finish_before_the_process_exits(tmp_path):
    """A login at BCRYPT_ROUNDS=14 spends about a second checking the password after its first
    MongoDB command; SIGTERM arrives in that second and the client still gets its tokens."""
    marker = f"in-flight-{uuid.uuid4().hex}"
    log = tmp_path / "server.log"
    env = {"BCRYPT_ROUNDS": "14", "LOG_LEVEL": "DEBUG", "MONGODB_DB": "faults_sigterm"}
    with running_server(tmp_path, **env) as (base, pid):
        email = unique_email()
        account = {"email": email, "password": DEFAULT_PASSWORD}
        created = httpx.post(f"{base}/users/", json=account, timeout=30)
        assert created.status_code == 201
        outcome: dict[str, Any] = {}

        def log_in() -> None:
            try:
                outcome["response"] = httpx.post(
                    f"{base}/login",
                    data={"username": email, "password": DEFAULT_PASSWORD},
                    headers={"X-Request-ID": marker},
                    timeout=30,
                )
            except httpx.HTTPError as error:
                outcome["error"] = error
            outcome["finished"] = time.monotonic()

        thread = threading.Thread(target=log_in)
        thread.start()
        # At DEBUG the driver logs each command with the request id: the app is running the
        # login (its throttle's write), and the password check comes next.
        wait_for(lambda: marker in log.read_text(errors="replace"), 10, "the login started")
        assert thread.is_alive(), "the login finished before the signal"
        signalled = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        thread.join(30)
        assert not thread.is_alive()
        assert "error" not in outcome, f"the in-flight login was cut: {outcome.get('error')!r}"
        response = outcome["response"]
        assert response.status_code == 200, response.text
        assert {"access_token", "refresh_token"} <= response.json().keys()
        assert outcome["finished"] > signalled
        wait_for_exit(pid, 15)
        lines = log.read_text(errors="replace").splitlines()
        [shutdown] = [n for n, line in enumerate(lines) if "Shutting down" in line]
        [answered] = [n for n, line in enumerate(lines) if marker in line and "POST /login" in line]
        assert shutdown < answered, "the login was answered after the shutdown began"
        assert '"status": 200' in lines[answered]

    # What the in-flight login wrote (its session) is in the store after the exit.
    store = EmbeddedStore("sqlite", tmp_path / "data")
    try:
        with MongoClient[dict[str, Any]](store.start(), serverSelectionTimeoutMS=5_000) as mongo:
            database = mongo["faults_sigterm"]
            user = database["users"].find_one({"email": email})
            assert user is not None
            assert database["refresh_tokens"].count_documents({"user_id": user["_id"]}) == 1
    finally:
        store.stop()


def test_sigterm_ends_the_server_with_exit_code_0(tmp_path: Path):
    with running_server(tmp_path) as (_, pid):
        os.kill(pid, signal.SIGTERM)
        code = wait_for_exit(pid, 15)
    assert code == 0
