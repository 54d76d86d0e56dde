"""The `social-api` command."""

import argparse
import logging
import os
import sys

import uvicorn

from service import logs
from service.config import ConfigurationError, get_settings
from service.db import EmbeddedStore, embedded_banner

logger = logging.getLogger("service.cli")


def serve(host: str, port: int, workers: int) -> None:
    """Serve the API; with several workers on the embedded store, run the store once here."""
    settings = get_settings()
    # Refuse a missing or placeholder SECRET_KEY here, with a plain message, rather than
    # in a worker's startup traceback; on the embedded store this creates the key file.
    settings.with_secret_key()
    store: EmbeddedStore | None = None
    if settings.embedded and settings.embedded_store_url is None and workers > 1:
        # Each worker is its own process; they must share one store, so the supervisor owns
        # it and hands its URL to the workers through their environment.
        store = EmbeddedStore(settings.embedded_storage, settings.data_dir, settings.embedded_port)
        os.environ["EMBEDDED_STORE_URL"] = store.start()
        logger.warning("\n%s", embedded_banner(store))
    try:
        uvicorn.run(
            "service.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_config=None,  # the app configures logging (JSON lines or text) itself
            access_log=False,  # one line per request comes from the app, with its request id
        )
    finally:
        if store is not None:
            store.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="social-api", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="serve the HTTP API")
    serve_cmd.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    serve_cmd.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    serve_cmd.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WEB_CONCURRENCY", "1")),
        help="worker processes (default: WEB_CONCURRENCY or 1)",
    )
    args = parser.parse_args(argv)
    settings = get_settings()
    logs.configure(settings.log_level, settings.log_format)
    try:
        serve(args.host, args.port, max(1, args.workers))
    except ConfigurationError as error:
        print(f"social-api: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
