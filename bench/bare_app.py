"""The ceiling: a bare FastAPI app that answers `GET /posts/` with a fixed page of ten posts.

It serves the JSON body the real service gave for `GET /posts/?limit=10`, read from the file
named by BENCH_FEED_FILE, and per request does what the service's handler does with rows
from the database: validates them into `PostOut` (the service's own model) and lets FastAPI
serialize them through the same response model. Nothing else: no database, no token check,
no middleware, no log line. Served like the service (uvicorn, one worker, loopback), its
throughput is what FastAPI and uvicorn can give this page on this machine, the ceiling that
each endpoint's throughput is compared with.

The file is read at the first request, not at start-up, so that the benchmark can start this
server while it is still seeding the database that the page comes from.

    BENCH_FEED_FILE=feed.json .venv/bin/python -m uvicorn bench.bare_app:create_app --factory
"""

import json
import os
from functools import cache
from pathlib import Path
from typing import Any

from fastapi import FastAPI

from service.models import PostOut

FEED_FILE_ENV = "BENCH_FEED_FILE"


def create_app() -> FastAPI:
    path = Path(os.environ[FEED_FILE_ENV])

    @cache
    def rows() -> list[dict[str, Any]]:
        loaded: list[dict[str, Any]] = json.loads(path.read_text(encoding="utf-8"))
        return loaded

    app = FastAPI(title="Bare FastAPI ceiling", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/posts/")
    async def read_posts() -> list[PostOut]:
        """The same page every time, validated and serialized as the service does it."""
        return [PostOut.model_validate(row) for row in rows()]

    return app
