"""Schema fuzzing: every operation of the OpenAPI document, authenticated as an admin, with
every check.

schemathesis generates requests from the document (valid ones, and invalid ones that must be
refused) and checks each response against it: no server errors, documented status codes,
bodies and headers that match their schemas, content types, authentication not ignored,
valid data accepted and invalid data refused. It runs the app in-process (ASGI) on an event
loop of its own, so the app here is one of its own, on a database of its own. The account
it calls with is an admin, so the admin routes answer what an admin gets, not 403.

SCHEMA_EXAMPLES sets the examples per operation (`make fuzz` runs 500).
"""

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import schemathesis
from beanie import init_beanie
from bson import ObjectId
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from pymongo import MongoClient
from schemathesis.config import SchemathesisConfig
from schemathesis.python.asgi import ASGIApp, ASGIClient, get_client

from service.config import Settings
from service.main import create_app
from service.models import (
    DOCUMENTS,
    AccountDeletion,
    LogoutRequest,
    PasswordChange,
    PostCreate,
    PostUpdate,
    RefreshRequest,
    UserCreate,
    VoteCreate,
)
from service.models.post import COUNTERS
from service.models.user import ADMIN, ADMINS_COUNTER, AdminAction, RoleChange
from tests.conftest import make_settings, start_sender, stop_sender

EXAMPLES = int(os.environ.get("SCHEMA_EXAMPLES", "25"))
EMAIL = "fuzz@example.com"
PASSWORD = "fuzzing password"


def fuzz_settings(mongodb_url: str) -> Settings:
    return make_settings(
        mongodb_url,
        f"test_schema_{uuid.uuid4().hex[:12]}",
        # Fuzzed logins fail by the thousand from one address; the throttle has its own tests.
        login_max_failures_per_email=1_000_000,
        login_max_failures_per_address=1_000_000,
    )


# Built at import, as schemathesis's pytest integration needs its schema then; its settings
# (the suite's MongoDB) are set by `fuzz_app` before its first request starts its lifespan.
FUZZ_APP = create_app(fuzz_settings("mongodb://127.0.0.1:9/?directConnection=true"))
# The project's schemathesis.toml (what the token operations may answer), whatever the cwd.
CONFIG = SchemathesisConfig.from_path(Path(__file__).parent.parent / "schemathesis.toml")
schema = schemathesis.openapi.from_dict(FUZZ_APP.openapi(), config=CONFIG)
schema.app = FUZZ_APP


def asgi_client(app: FastAPI) -> ASGIClient:
    """schemathesis's in-process client. Its `ASGIApp` type has `send` take a dict where ASGI
    (and Starlette) pass any mutable mapping; the app is a real ASGI app all the same."""
    return get_client(cast(ASGIApp, app))


@pytest.fixture(scope="module")
def fuzz_app(mongodb_url: str) -> FastAPI:
    settings = fuzz_settings(mongodb_url)
    FUZZ_APP.state.settings = settings
    with asgi_client(FUZZ_APP) as client:
        created = client.post("/users/", json={"email": EMAIL, "password": PASSWORD})
        assert created.status_code == 201, created.text
        make_admin(mongodb_url, settings.mongodb_db, created.json()["id"])
    token = fresh_token(FUZZ_APP)  # the role holds from the account's next request
    with asgi_client(FUZZ_APP) as client:
        me = client.get("/users/me", headers={"Authorization": f"Bearer {token}"})
    assert me.status_code == 200 and me.json()["role"] == ADMIN, me.text
    return FUZZ_APP


def make_admin(mongodb_url: str, database: str, user_id: str) -> None:
    """Make the fuzzing account an admin, as service/moderation.py makes one: its role, then
    one more in the count of active admins. By a client of its own, and synchronous: the app's
    client, and Beanie's documents with it, belong to schemathesis's event loop."""
    mongo: MongoClient[dict[str, Any]] = MongoClient(mongodb_url)
    with mongo:
        db = mongo[database]
        made = db["users"].update_one({"_id": ObjectId(user_id)}, {"$set": {"role": ADMIN}})
        assert made.modified_count == 1
        db[COUNTERS].update_one({"_id": ADMINS_COUNTER}, {"$inc": {"value": 1}}, upsert=True)


@pytest.fixture(scope="module", autouse=True)
async def rebind_beanie(app: FastAPI) -> AsyncIterator[None]:
    """Afterwards, Beanie's documents go back to the suite app's database; meanwhile the
    suite app's outbox sender stops, as it would work through the fuzzed app's client."""
    await stop_sender(app)
    yield
    await init_beanie(database=app.state.database, document_models=list(DOCUMENTS))
    start_sender(app)


def fresh_token(fuzz_app: FastAPI) -> str:
    # A session per case: a fuzzed POST /logout or /logout/all must not end the next case's.
    with asgi_client(fuzz_app) as client:
        response = client.post("/login", data={"username": EMAIL, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_every_operation_conforms_to_the_schema(case, fuzz_app):
    case.call_and_validate(headers={"Authorization": f"Bearer {fresh_token(fuzz_app)}"})


@pytest.mark.parametrize(
    "model",
    [
        UserCreate,
        PostCreate,
        PostUpdate,
        VoteCreate,
        RefreshRequest,
        LogoutRequest,
        PasswordChange,
        AccountDeletion,
        AdminAction,
        RoleChange,
    ],
)
def test_every_request_example_is_valid(model):
    """The examples Swagger UI offers validate against the document and the model alike."""
    document = FUZZ_APP.openapi()
    component = document["components"]["schemas"][model.__name__]
    examples = component["examples"]
    assert examples
    validator = jsonschema.Draft202012Validator(
        {**component, "components": document["components"]},
        format_checker=jsonschema.FormatChecker(),
    )
    for example in examples:
        validator.validate(example)
        model.model_validate(example)
