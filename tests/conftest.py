"""Fixtures: one database server per run, one app per run, an empty database per test.

The server is the embedded store's own mongoeco wire server (memory engine) on a free
loopback port, reached by the real PyMongo driver. Set TEST_MONGODB_URL to run the same suite
against a real MongoDB instead; it then uses a throwaway database that it drops at the end.
"""

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from beanie import init_beanie
from fastapi import FastAPI

from devstore import EmbeddedStore
from service.config import Settings
from service.main import create_app
from service.models import DOCUMENTS
from service.models.post import COUNTERS
from tests.factories import assert_no_secrets
from tests.smtp import SMTPServer

# Every setting is given here, so nothing in the environment or a .env file reaches a test.
TEST_SECRET_KEY = secrets.token_urlsafe(48)
# The suite's SMTP server (a real one, aiosmtpd): every app of the suite mails through it.
SMTP = SMTPServer()
SMTP_ENV = {"SMTP_HOST": "127.0.0.1", "SMTP_PORT": str(SMTP.port), "SMTP_SECURITY": "none"}


def make_settings(mongodb_url: str, mongodb_db: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "mongodb_url": mongodb_url,
        "mongodb_db": mongodb_db,
        "mongodb_timeout_ms": 5_000,
        "embedded_store_url": None,
        "secret_key": TEST_SECRET_KEY,
        "algorithm": "HS256",
        "access_token_expire_minutes": 30,
        "bcrypt_rounds": 4,  # the lowest bcrypt allows: the suite tests logic, not cost
        "log_level": "WARNING",
        "smtp_host": "127.0.0.1",
        "smtp_port": SMTP.port,
        "smtp_security": "none",
        "mail_from": "Social API <no-reply@example.test>",
        "public_base_url": "http://app.example.test",
    }
    return Settings(_env_file=None, **{**values, **overrides})


@pytest.fixture(scope="session")
def mongodb_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    url = os.environ.get("TEST_MONGODB_URL")
    if url:
        yield url
        return
    store = EmbeddedStore("memory", tmp_path_factory.mktemp("store"))
    yield store.start()
    store.stop()


@pytest.fixture(scope="session")
def smtp_server() -> Iterator[SMTPServer]:
    SMTP.start()
    yield SMTP
    SMTP.stop()


@pytest.fixture(scope="session")
def settings(mongodb_url: str, smtp_server: SMTPServer) -> Settings:
    return make_settings(mongodb_url, f"test_social_{uuid.uuid4().hex[:12]}")


@pytest.fixture(scope="session")
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with LifespanManager(application):
        yield application
        await application.state.database.client.drop_database(settings.mongodb_db)


@pytest.fixture(autouse=True)
async def clean_database(app: FastAPI) -> None:
    """Each test starts empty: documents go, indexes stay."""
    # Through the suite app's own client: Beanie's documents may be bound to another app's
    # (tests/test_schema.py runs one on schemathesis's event loop).
    for name in [*(document.Settings.name for document in DOCUMENTS), COUNTERS]:
        await app.state.database[name].delete_many({})


@asynccontextmanager
async def app_client(settings: Settings, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client of an app of its own, on the suite's database, with settings overridden
    (use it with the `restore_beanie` fixture)."""
    app = create_app(make_settings(settings.mongodb_url or "", settings.mongodb_db, **overrides))
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
            yield http


async def check_for_leaks(response: httpx.Response) -> None:
    await response.aread()
    if response.content:
        assert_no_secrets(response.json())


def checked_client(app: FastAPI) -> httpx.AsyncClient:
    """An HTTP client for an app that checks every response it receives for leaks."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://testserver",
        event_hooks={"response": [check_for_leaks]},
    )


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for the app; it checks every response it receives for leaks."""
    async with checked_client(app) as http:
        yield http


@pytest.fixture
async def own_app(settings: Settings, restore_beanie: None) -> AsyncIterator[FastAPI]:
    """An app on a database of its own, dropped afterwards: for a test whose counts must hold
    only its own documents (the count of active admins, which the suite's database shares
    with whatever ran before)."""
    name = f"test_own_{uuid.uuid4().hex[:12]}"
    application = create_app(make_settings(settings.mongodb_url or "", name))
    async with LifespanManager(application):
        try:
            yield application
        finally:
            await application.state.database.client.drop_database(name)


@pytest.fixture
async def own_client(own_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """`checked_client` of `own_app`."""
    async with checked_client(own_app) as http:
        yield http


async def stop_sender(app: FastAPI) -> None:
    """Stop an app's outbox sender (service/mail.py) until `start_sender`."""
    running: asyncio.Task[None] = app.state.mail_sending
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


def start_sender(app: FastAPI) -> None:
    app.state.mail_sending = asyncio.create_task(app.state.mail_sender.run(app.state.initialised))


@pytest.fixture
async def quiet_outbox(app: FastAPI) -> AsyncIterator[None]:
    """The suite app's outbox sender stopped for the test: the messages queued stay pending,
    and no background command mixes with the ones a test counts, or with a sender of its own.
    (Beanie binds its documents to one client per process, so a sender works through
    whichever app initialised Beanie last.)"""
    await stop_sender(app)
    yield
    start_sender(app)


@pytest.fixture
async def restore_beanie(app: FastAPI) -> AsyncIterator[None]:
    """For tests that start apps of their own: Beanie binds its documents to one database per
    process, so afterwards they are bound back to the suite's. The suite app's outbox sender
    stops meanwhile: it would work through the other app's client."""
    await stop_sender(app)
    yield
    await init_beanie(database=app.state.database, document_models=list(DOCUMENTS))
    start_sender(app)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def running_server(
    directory: Path, *args: str, ready_path: str = "/readyz", **env: str
) -> AbstractContextManager[tuple[str, int]]:
    """Run `social-api serve` on a free loopback port with the embedded store in `directory`
    (unless `env` names a MONGODB_URL); yield its base URL and process id once `ready_path`
    answers 200."""
    return serving(directory, args, env, ready_path=ready_path)


@contextmanager
def serving(
    directory: Path,
    args: Sequence[str],
    env: dict[str, str],
    *,
    ready_path: str = "/readyz",
    terminal: int | None = None,
) -> Iterator[tuple[str, int]]:
    """`running_server`; `terminal`, a pseudo-terminal's file descriptor, takes the server's
    output instead of the log file, as when a person runs it."""
    port = free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MONGODB_URL", "SECRET_KEY", "EMBEDDED_STORE_URL", "DATA_DIR"}
        and not key.startswith("SMTP_")
    }
    environment.update(
        {"DATA_DIR": str(directory / "data"), "EMBEDDED_PORT": "0", "BCRYPT_ROUNDS": "4", **env}
    )
    if "MONGODB_URL" in env and "SMTP_HOST" not in env:
        environment.update(SMTP_ENV)  # a real MongoDB needs an SMTP server
    command = [sys.executable, "-m", "service.cli", "serve", "--port", str(port), *args]
    # Its working directory is `directory`, so no .env file of the checkout is read. Its output
    # goes to a file (a pipe nobody reads would fill up and block it) and ends up in the report
    # of a test that fails.
    log_path = directory / "server.log"
    with log_path.open("wb") as log:
        streams: dict[str, Any] = {"stdout": log, "stderr": subprocess.STDOUT}
        if terminal is not None:
            streams = {"stdin": terminal, "stdout": terminal, "stderr": terminal}
        process = subprocess.Popen(command, cwd=directory, env=environment, **streams)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode}")
            try:
                if httpx.get(f"{base}{ready_path}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("server did not become ready within 60 s")
            time.sleep(0.2)
        yield base, process.pid
    except BaseException:
        print(f"--- {log_path}:\n{log_path.read_text(errors='replace')[-20_000:]}")
        raise
    finally:
        process.terminate()
        process.wait(timeout=30)
