"""`social-api serve`: the HTTP API under uvicorn, with the embedded store when there is no
MONGODB_URL."""

import os
import shutil
import signal
import tempfile
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
import uvicorn

from service import db, logs, metrics
from service.cli import fail, load_settings
from service.config import ConfigurationError

if TYPE_CHECKING:
    from devstore import EmbeddedStore


def serve(
    host: Annotated[str, typer.Option(envvar="HOST")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="PORT")] = 8000,
    workers: Annotated[
        int, typer.Option(envvar="WEB_CONCURRENCY", min=1, help="Worker processes.")
    ] = 1,
) -> None:
    """Serve the HTTP API (what `make run` runs)."""
    settings = load_settings()
    logs.configure(settings.log_level, settings.log_format)
    store: EmbeddedStore | None = None
    try:
        if settings.embedded and settings.embedded_store_url is None:
            # This process owns the store and hands its URL to the app through the
            # environment: with several workers they all share it, and a store that cannot
            # open (not installed, another process has it, its port is taken) is one line
            # here, not a startup traceback.
            store = db.start_embedded_store(settings)
            assert store.url is not None
            os.environ["EMBEDDED_STORE_URL"] = store.url
        # Refuse a missing or placeholder SECRET_KEY, or mail with nowhere to go, here, with a
        # plain message, rather than in a worker's startup traceback; on the embedded store
        # this creates the key file.
        settings.with_secret_key().check_mail()
    except (ConfigurationError, OSError) as error:
        if store is not None:
            store.stop()
        fail(str(error))
    # Several workers write their metrics to one directory, which /metrics sums; it must start
    # empty, so each run has its own (unless the operator names one).
    figures: Path | None = None
    if workers > 1 and settings.metrics_enabled and metrics.MULTIPROCESS_DIR not in os.environ:
        try:
            figures = Path(tempfile.mkdtemp(prefix="social-api-metrics-"))
        except OSError as error:
            if store is not None:
                store.stop()
            fail(
                f"no directory for the workers' metrics ({error}): give the temporary "
                f"directory a writable mount, set {metrics.MULTIPROCESS_DIR} to an empty "
                "writable directory, or set METRICS_ENABLED=false"
            )
        metrics.use_directory(figures)
    # uvicorn shuts down gracefully on SIGTERM (in-flight requests finish), then sends the
    # signal to itself again; by default that would kill this process before the `finally`
    # below closes the embedded store. Here it ends the process normally instead.
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # the app configures logging (JSON lines or text) itself
            access_log=False,  # one line per request comes from the app, with its request id
            # The app reads X-Forwarded-For itself, from TRUSTED_PROXIES only; uvicorn's own
            # handling would trust 127.0.0.1 by default.
            proxy_headers=False,
        )
    finally:
        if store is not None:
            store.stop()
        if figures is not None:
            shutil.rmtree(figures, ignore_errors=True)


def _exit_quietly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
