"""The embedded development store, the signing key, and what refuses to start."""

import logging
import os
import socket
import stat
import subprocess
import sys
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from bson import ObjectId
from pydantic import SecretStr
from pymongo import MongoClient
from pymongo.errors import BulkWriteError, DuplicateKeyError

from devstore import DB_FILE as EMBEDDED_DB_FILE
from devstore import LOCK_FILE as EMBEDDED_LOCK_FILE
from devstore import EmbeddedStore, StoreError
from service.config import ConfigurationError, Settings
from service.main import create_app
from tests.conftest import running_server
from tests.factories import DEFAULT_PASSWORD, create_user, login


def embedded_settings(data_dir, **overrides) -> Settings:
    values = {
        "mongodb_url": None,
        "embedded_store_url": None,
        "secret_key": None,
        "data_dir": data_dir,
        "embedded_storage": "sqlite",
        "embedded_port": 0,
        "bcrypt_rounds": 4,
        "log_level": "WARNING",
    }
    return Settings(_env_file=None, **{**values, **overrides})


def test_real_mongodb_without_secret_key_refuses_to_start():
    settings = Settings(_env_file=None, mongodb_url="mongodb://db:27017", secret_key=None)
    with pytest.raises(ConfigurationError, match="SECRET_KEY is not set"):
        settings.with_secret_key()


@pytest.mark.parametrize("key", ["changeme", "secret", "CHANGETHIS", "short-key"])
def test_real_mongodb_with_placeholder_secret_key_refuses_to_start(key):
    settings = Settings(_env_file=None, mongodb_url="mongodb://db:27017", secret_key=key)
    with pytest.raises(ConfigurationError, match="placeholder"):
        settings.with_secret_key()


def test_real_mongodb_with_a_strong_key_starts():
    key = "k" * 48
    settings = Settings(_env_file=None, mongodb_url="mongodb://db:27017", secret_key=SecretStr(key))
    resolved = settings.with_secret_key()
    assert resolved.secret_key is not None
    assert resolved.secret_key.get_secret_value() == key


def test_empty_mongodb_url_means_embedded():
    assert Settings(_env_file=None, mongodb_url="").embedded


def test_embedded_key_is_generated_once_and_kept_private(data_dir):
    first = embedded_settings(data_dir).with_secret_key()
    second = embedded_settings(data_dir).with_secret_key()
    assert first.secret_key is not None and second.secret_key is not None
    assert first.secret_key.get_secret_value() == second.secret_key.get_secret_value()
    assert len(first.secret_key.get_secret_value()) >= 32
    mode = stat.S_IMODE((data_dir / "secret_key").stat().st_mode)
    assert mode == 0o600


def test_embedded_store_accepts_a_weak_key_for_development(data_dir):
    resolved = embedded_settings(data_dir, secret_key="dev").with_secret_key()
    assert resolved.secret_key is not None
    assert resolved.secret_key.get_secret_value() == "dev"


async def _serve(settings: Settings) -> tuple[LifespanManager, httpx.AsyncClient]:
    app = create_app(settings)
    manager = LifespanManager(app, startup_timeout=60)
    await manager.__aenter__()
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
    return manager, client


async def test_data_and_tokens_survive_a_restart(data_dir, restore_beanie, caplog):
    caplog.set_level(logging.WARNING, logger="service.db")
    manager, client = await _serve(embedded_settings(data_dir))
    try:
        user = await create_user(client)
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)
    assert "EMBEDDED DEVELOPMENT STORE" in caplog.text
    assert str((data_dir / EMBEDDED_DB_FILE).resolve()) in caplog.text
    assert (data_dir / EMBEDDED_DB_FILE).exists()

    manager, client = await _serve(embedded_settings(data_dir))
    try:
        assert await login(client, user.email, DEFAULT_PASSWORD)
        me = await client.get("/users/me", headers=user.headers)  # a token from before
        assert me.status_code == 200
        assert me.json()["email"] == user.email
        ready = await client.get("/readyz")
        assert ready.status_code == 200
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)


async def test_memory_storage_keeps_nothing_on_disk(data_dir, restore_beanie, caplog):
    caplog.set_level(logging.WARNING, logger="service.db")
    manager, client = await _serve(embedded_settings(data_dir, embedded_storage="memory"))
    try:
        await create_user(client)
    finally:
        await client.aclose()
        await manager.__aexit__(None, None, None)
    assert "memory only" in caplog.text
    assert not (data_dir / EMBEDDED_DB_FILE).exists()


@pytest.mark.parametrize("storage", ["sqlite", "memory"])
def test_a_second_process_cannot_open_the_same_store(data_dir, storage):
    first = EmbeddedStore(storage, data_dir)
    first.start()
    try:
        with pytest.raises(StoreError, match="already open in another process"):
            EmbeddedStore(storage, data_dir).start()
    finally:
        first.stop()
    again = EmbeddedStore(storage, data_dir)  # the lock goes with the store
    again.start()
    again.stop()


def test_a_taken_port_is_one_line_that_says_how_to_choose_another(data_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy_port = taken.getsockname()[1]
        with pytest.raises(StoreError) as refused:
            EmbeddedStore("sqlite", data_dir, port=busy_port).start()
    message = str(refused.value)
    assert "\n" not in message
    assert f"127.0.0.1:{busy_port}: the port is taken" in message
    assert "EMBEDDED_PORT=" in message
    store = EmbeddedStore("sqlite", data_dir)  # the lock was released
    store.start()
    store.stop()


def test_data_dir_is_private(data_dir):
    data_dir.mkdir(mode=0o755)  # made before, by hand or an older version
    data_dir.chmod(0o755)
    store = EmbeddedStore("sqlite", data_dir)
    store.start()
    store.stop()
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700


def test_workers_share_one_embedded_store(tmp_path):
    """`serve --workers 2`: the supervisor runs the store, both workers use it."""
    with running_server(tmp_path, "--workers", "2") as (base, pid):
        lock_owner = (tmp_path / "data" / EMBEDDED_LOCK_FILE).read_text().strip()
        assert lock_owner == str(pid)  # the supervisor, not a worker, owns the store
        email = "shared@example.com"
        created = httpx.post(f"{base}/users/", json={"email": email, "password": DEFAULT_PASSWORD})
        assert created.status_code == 201
        for _ in range(12):  # fresh connections, so both workers get some
            with httpx.Client(base_url=base) as http:
                response = http.post(
                    "/login", data={"username": email, "password": DEFAULT_PASSWORD}
                )
                assert response.status_code == 200, response.text
                token = response.json()["access_token"]
                me = http.get("/users/me", headers={"Authorization": f"Bearer {token}"})
                assert me.status_code == 200
        workers = subprocess.run(
            ["pgrep", "-P", str(pid), "-f", "spawn_main"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        assert len(workers) == 2


@pytest.mark.parametrize("storage", ["memory", "sqlite"])
def test_the_embedded_store_still_refuses_duplicate_ids(data_dir, storage):
    """The store's fixes (devstore/fixes.py) skip mongoeco's by-value scan of every _id for
    ObjectIds and check compound unique indexes by lookup; a duplicate must still be refused,
    and other ids still get the full check."""
    store = EmbeddedStore(storage, data_dir)
    url = store.start()
    try:
        with MongoClient[dict[str, Any]](url) as client:
            things = client["dup"]["things"]
            oid = ObjectId()
            things.insert_one({"_id": oid})
            with pytest.raises(DuplicateKeyError):
                things.insert_one({"_id": oid})
            with pytest.raises(BulkWriteError):
                things.insert_many([{"_id": ObjectId()}, {"_id": oid}])
            things.insert_one({"_id": 1})
            with pytest.raises(DuplicateKeyError):
                things.insert_one({"_id": 1.0})  # equal as a number: the scan still runs
            assert things.count_documents({}) == 3
            # A compound unique index (as votes have) is checked by lookup: still unique.
            pairs = client["dup"]["pairs"]
            pairs.create_index([("a", 1), ("b", 1)], unique=True)
            a, b = ObjectId(), ObjectId()
            first = pairs.insert_one({"a": a, "b": b}).inserted_id
            pairs.insert_one({"a": a, "b": ObjectId()})
            with pytest.raises(DuplicateKeyError):
                pairs.insert_one({"a": a, "b": b})
            with pytest.raises(BulkWriteError):
                pairs.insert_many([{"a": ObjectId(), "b": b}, {"a": a, "b": b}])
            other = pairs.insert_one({"a": ObjectId(), "b": ObjectId()}).inserted_id
            with pytest.raises(DuplicateKeyError):
                pairs.update_one({"_id": other}, {"$set": {"a": a, "b": b}})
            pairs.update_one({"_id": first}, {"$set": {"a": a, "b": b, "c": 1}})  # itself
            pairs.delete_one({"_id": first})
            pairs.insert_one({"a": a, "b": b})  # free again once deleted
            assert pairs.count_documents({"a": a}) == 2
    finally:
        store.stop()


def serve_without(tmp_path, blocked: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`social-api serve` with no MONGODB_URL, in a process where `blocked` cannot be
    imported (as in an install without the devstore extra)."""
    program = "\n".join(
        [
            "import sys",
            "class Missing:  # as Python answers for a package that is not installed",
            "    def find_spec(self, name, path=None, target=None):",
            f"        if name.partition('.')[0] == {blocked!r}:",
            "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)",
            "sys.meta_path.insert(0, Missing())",
            "sys.argv = ['social-api', 'serve', '--port', '0']",
            "from service.cli import main",
            "main()",
        ]
    )
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in {"MONGODB_URL", "EMBEDDED_STORE_URL", "SECRET_KEY"}
    }
    environment.update({"DATA_DIR": str(tmp_path / "data"), **env})
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("blocked", ["mongoeco", "devstore"])
def test_without_the_devstore_extra_serve_says_how_to_get_it_in_one_line(tmp_path, blocked):
    done = serve_without(tmp_path, blocked)
    assert done.returncode == 1
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: MONGODB_URL is not set")
    assert "pip install 'social-api[devstore]'" in line
    assert "set MONGODB_URL=" in line


def test_serve_on_a_taken_port_says_so_in_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = serve_without(tmp_path, "nothing.blocked", EMBEDDED_PORT=str(port))
    assert done.returncode == 1
    [line] = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert f"127.0.0.1:{port}: the port is taken" in line
    assert "EMBEDDED_PORT=" in line
    assert "Traceback" not in done.stderr


def test_the_store_listens_on_27018_by_default():
    assert Settings(_env_file=None).embedded_port == 27018
