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

`create_driver_app` is the same bare app plus what the service asks of the database for that
page, and nothing else: its route reads demo1's user document and the page with the
service's own code (`User` by id with PyMongo, `Post.read_feed`), over the service's client
(`service.db.connect`, settings from the environment), then answers as the bare app does.
No token, no middleware, no log line. Timed one request at a time, its time outside the
database is what FastAPI, PyMongo and the models cost for that page: the floor under the
service's own time outside the database.
"""

import json
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import cache
from pathlib import Path
from typing import Any

from beanie import init_beanie
from fastapi import FastAPI, Request
from pymongo.monitoring import CommandListener

from service import db
from service.config import Settings
from service.models import DOCUMENTS, Post, PostOut, User, id_of

VIEWER_EMAIL = "demo1@example.com"

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


def create_driver_app(command_listeners: Sequence[CommandListener] = ()) -> FastAPI:
    settings = Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with db.connect(settings, command_listeners, bounded=True) as database:
            await init_beanie(database=database, document_models=list(DOCUMENTS))
            viewer = await User.find_one(User.email == VIEWER_EMAIL)
            if viewer is None:
                raise RuntimeError(f"no {VIEWER_EMAIL}: seed the database first")
            app.state.viewer_id = id_of(viewer)
            yield

    app = FastAPI(
        title="Bare FastAPI with the feed's database commands",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=lifespan,
    )

    @app.get("/posts/")
    async def read_posts(request: Request) -> list[PostOut]:
        """demo1's user document and first page, read as the service reads them."""
        row = await User.get_pymongo_collection().find_one({"_id": request.app.state.viewer_id})
        viewer = User.model_validate(row)
        _, posts = await Post.read_feed(id_of(viewer), viewer.drafts, search="", skip=0, limit=10)
        return posts

    return app
