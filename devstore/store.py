"""The embedded store: a mongoeco wire server on loopback, its lock and its banner."""

import asyncio
import contextlib
import errno
import fcntl
import logging
import os
import threading
from pathlib import Path
from typing import IO, Literal

from devstore import fixes

logger = logging.getLogger(__name__)

DB_FILE = "embedded.sqlite"
LOCK_FILE = "embedded.lock"
HOST = "127.0.0.1"

type Storage = Literal["sqlite", "memory"]


class StoreError(RuntimeError):
    """The store cannot start; the message says why and what to change."""


def private_dir(path: Path) -> Path:
    """Create a directory only its owner can enter (it holds the data and a signing key)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)  # mkdir leaves an existing directory as it was
    return path


class EmbeddedStore:
    """A mongoeco wire server on 127.0.0.1, run on its own thread and event loop.

    Its own loop keeps the store independent of the loop (or loops) of whoever connects to it:
    the app in this process, or the worker processes of `social-api serve --workers N`.
    `port` 0 takes any free port.
    """

    def __init__(self, storage: Storage, data_dir: Path, port: int = 0) -> None:
        self.storage = storage
        self.data_dir = data_dir
        self.port = port
        self.url: str | None = None
        self._lock_file: IO[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-store", daemon=True)

    @property
    def path(self) -> Path | None:
        """The SQLite file holding the data, or None in memory."""
        return self.data_dir / DB_FILE if self.storage == "sqlite" else None

    def start(self, timeout: float = 30.0) -> str:
        """Start serving and return the URL to connect to."""
        self._lock()
        self._thread.start()
        if not self._started.wait(timeout) or self._error is not None:
            self.stop()
            if isinstance(self._error, StoreError):
                raise self._error
            reason = self._error or f"it did not start within {timeout} s"
            raise StoreError(f"the embedded store failed to start: {reason}")
        assert self.url is not None
        return self.url

    def stop(self) -> None:
        """Stop serving (the SQLite engine flushes and closes its file) and release the lock."""
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                loop.call_soon_threadsafe(stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=30)
        if not self._thread.is_alive():  # a store still closing keeps its lock
            self._unlock()

    def _lock(self) -> None:
        # Two stores on one DATA_DIR would corrupt one SQLite file (caches, index catalogue)
        # or, in memory, silently split the data between processes; the lock makes a second
        # process fail loudly instead.
        private_dir(self.data_dir)
        handle = (self.data_dir / LOCK_FILE).open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if not isinstance(error, BlockingIOError):
                raise
            raise StoreError(
                f"the embedded store of {self.data_dir.resolve()} is already open in another "
                "process. Run several workers with `social-api serve --workers N` (they share "
                "one store), give this process another DATA_DIR, or set MONGODB_URL."
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock_file = handle

    def _unlock(self) -> None:
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as error:
            self._error = error
            if self._stop is not None and self._stop.is_set():
                # Asked to stop, and the engine failed while closing (seen: SQLite "database is
                # locked" from its heartbeat after a long seed, every write already committed):
                # worth a line, not an alarm.
                logger.warning("The embedded store closed with an error: %r", error)
            elif self._started.is_set():  # it had been serving: requests now fail with 503
                logger.critical("The embedded store stopped: %r", error, exc_info=error)
            self._started.set()  # before start-up, start() raises it in the caller

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = fixes.wire_server(self.path, HOST, self.port)
        try:
            address = await server.start()
        except OSError as error:
            await server.close()
            if error.errno != errno.EADDRINUSE:
                raise
            raise StoreError(
                f"the embedded store cannot listen on {HOST}:{self.port}: the port is taken "
                "(another social-api, or a mongod?). Choose another with EMBEDDED_PORT=<port>, "
                "or EMBEDDED_PORT=0 for any free one."
            ) from None
        try:
            self.url = address.uri
            self._started.set()
            await self._stop.wait()
        finally:
            await server.close()


def banner(store: EmbeddedStore, database: str) -> str:
    """What the service prints when it runs on the embedded store."""
    where = (
        f"the SQLite file {store.path.resolve()} (kept across restarts)"
        if store.path is not None
        else "memory only (lost when the process stops)"
    )
    assert store.url is not None
    shell_url = store.url.replace("/?", f"/{database}?", 1)
    return "\n".join(
        [
            "EMBEDDED DEVELOPMENT STORE: MONGODB_URL is not set, so this process runs a",
            "MongoDB emulator (mongoeco) for development, not a production database.",
            f"  data:        {where}",
            f"  wire URL:    {store.url}",
            f'  mongosh:     mongosh "{shell_url}"',
            "  switch with: EMBEDDED_STORAGE=memory | sqlite, EMBEDDED_PORT=<port>",
            "  production:  set MONGODB_URL=mongodb://user:pass@host:27017/ and SECRET_KEY",
        ]
    )
