"""`social-api create-user --admin` and `social-api set-role`: in-process on a database of the
suite's server, then as the real command against a running development store (its wire URL),
with the effect seen over HTTP.

Each test of the first kind has a database of its own: the count of active admins is one
document per database, and these tests are about the last admin.
"""

import logging
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pymongo import MongoClient
from typer.testing import CliRunner, Result

from service.cli import app as cli
from tests.conftest import TEST_SECRET_KEY, running_server

runner = CliRunner()
PASSWORD = "admin-password-1"
LAST_ADMIN = "error: The last admin cannot be removed: make another admin first\n"
SOCIAL_API = str(Path(sys.executable).parent / "social-api")
WIRE_URL = re.compile(r"wire URL: +(mongodb://[^\s\"\\]+)")


@pytest.fixture
def data(monkeypatch, tmp_path, mongodb_url, restore_beanie, caplog) -> Iterator[Any]:
    """The commands pointed at a new database of the suite's server; the database, read
    through a client of this test's own (dropped afterwards). The audit's log lines go to
    `caplog` only: the handler an app of an earlier test installed (service/logs.py) may
    write to the stream of an earlier in-process command, closed since."""
    root = logging.getLogger()
    ours = [handler for handler in root.handlers if handler.get_name() == "service"]
    for handler in ours:
        root.removeHandler(handler)
    caplog.set_level(logging.INFO, logger="service.audit")
    name = f"cli_roles_{uuid.uuid4().hex[:10]}"
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("MONGODB_URL", mongodb_url)
    monkeypatch.setenv("MONGODB_DB", name)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    with MongoClient[dict[str, Any]](mongodb_url) as client:
        yield client[name]
        client.drop_database(name)
    for handler in ours:
        root.addHandler(handler)


def invoke(*args: str) -> Result:
    return runner.invoke(cli, list(args))


def create(email: str, *flags: str) -> Result:
    created = invoke("create-user", email, "--password", PASSWORD, *flags)
    assert created.exit_code == 0, created.output
    return created


def admins(data: Any) -> int:
    """The count of active admins (each command's start-up derives it if it is missing)."""
    counter = data["counters"].find_one({"_id": "active_admins"})
    assert counter is not None
    return int(counter["value"])


def role_of(data: Any, email: str) -> str:
    user = data["users"].find_one({"email": email})
    assert user is not None
    return str(user["role"])


def audit(data: Any) -> list[dict[str, Any]]:
    """The audit log, oldest first, each entry as who, what, on whom, how it ended."""
    emails = {user["_id"]: user["email"] for user in data["users"].find()}
    return [
        {
            "via": entry["via"],
            "actor": entry["actor_id"],
            "action": entry["action"],
            "target": emails.get(entry["target_id"], entry["target_id"]),
            "outcome": entry["outcome"],
            "detail": entry["detail"],
        }
        for entry in data["audit"].find().sort([("created_at", 1), ("_id", 1)])
    ]


def logged(caplog) -> list[str]:
    """The audit's log lines, one per action."""
    return [r.getMessage() for r in caplog.records if r.name == "service.audit"]


def by_cli(action: str, target: str, outcome: str, detail: str) -> dict[str, Any]:
    return {
        "via": "cli",
        "actor": None,
        "action": action,
        "target": target,
        "outcome": outcome,
        "detail": detail,
    }


def test_create_user_admin_makes_a_counted_and_audited_admin(data):
    created = create("  Ops@Example.com ", "--admin")
    assert re.fullmatch(r"created admin [0-9a-f]{24} <ops@example\.com>\n", created.stdout)
    assert role_of(data, "ops@example.com") == "admin"
    assert admins(data) == 1
    assert audit(data) == [by_cli("create_user", "ops@example.com", "done", "role: admin")]


def test_create_user_without_admin_makes_an_ordinary_user_not_audited(data):
    created = create("plain@example.com")
    assert re.fullmatch(r"created user [0-9a-f]{24} <plain@example\.com>\n", created.stdout)
    assert role_of(data, "plain@example.com") == "user"
    assert admins(data) == 0
    assert audit(data) == []  # as a registration through the API


def test_a_taken_email_is_one_line_counts_nothing_and_is_audited_as_refused(data):
    create("ops@example.com", "--admin")
    again = invoke("create-user", "OPS@example.com", "--password", PASSWORD, "--admin")
    assert again.exit_code == 1
    assert again.stderr == "error: ops@example.com is already registered\n"
    assert data["users"].count_documents({}) == 1
    assert admins(data) == 1
    [created, refused] = audit(data)
    assert created["outcome"] == "done"
    # On the id the new account would have had: nobody's.
    assert refused == by_cli(
        "create_user", refused["target"], "refused", "ops@example.com is already registered"
    )


def test_set_role_promotes_and_demotes_with_one_audit_document_each(data, caplog):
    create("ops@example.com", "--admin")
    create("bob@example.com")
    promoted = invoke("set-role", " Bob@Example.COM", "admin")
    assert promoted.exit_code == 0, promoted.output
    assert promoted.stdout == "bob@example.com: role user -> admin\n"
    assert (role_of(data, "bob@example.com"), admins(data)) == ("admin", 2)
    again = invoke("set-role", "bob@example.com", "admin")
    assert again.stdout == "bob@example.com: role already admin\n"
    assert admins(data) == 2
    demoted = invoke("set-role", "ops@example.com", "user")
    assert demoted.exit_code == 0, demoted.output
    assert demoted.stdout == "ops@example.com: role admin -> user\n"
    assert (role_of(data, "ops@example.com"), admins(data)) == ("user", 1)
    assert audit(data) == [
        by_cli("create_user", "ops@example.com", "done", "role: admin"),
        by_cli("set_role", "bob@example.com", "done", "role: user -> admin"),
        by_cli("set_role", "bob@example.com", "done", "role: already admin"),
        by_cli("set_role", "ops@example.com", "done", "role: admin -> user"),
    ]
    ops = data["users"].find_one({"email": "ops@example.com"})
    assert len(logged(caplog)) == 4  # one line each
    assert logged(caplog)[-1] == (
        f"Admin action set_role done on user {ops['_id']} by the CLI: role: admin -> user"
    )


def test_set_role_refuses_to_demote_the_last_admin_in_one_line(data):
    create("ops@example.com", "--admin")
    create("bob@example.com")
    refused = invoke("set-role", "ops@example.com", "user")
    assert refused.exit_code == 1
    assert refused.stderr == LAST_ADMIN
    assert refused.stdout == ""
    assert (role_of(data, "ops@example.com"), admins(data)) == ("admin", 1)
    assert audit(data)[1:] == [
        by_cli(
            "set_role",
            "ops@example.com",
            "refused",
            "The last admin cannot be removed: make another admin first",
        )
    ]


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (" Nobody@Example.com", "nobody@example.com"),
        ("not an\nemail", "not an email"),  # still one line
    ],
    ids=["unknown", "not-an-email"],
)
def test_set_role_of_an_unknown_email_is_one_line_and_writes_nothing(data, given, named):
    create("ops@example.com", "--admin")
    result = invoke("set-role", given, "user")
    assert result.exit_code == 1
    assert result.stderr == f"error: no user has the email {named}\n"
    assert result.stdout == ""
    assert len(audit(data)) == 1  # only the creation
    assert (role_of(data, "ops@example.com"), admins(data)) == ("admin", 1)


def test_set_role_takes_only_admin_or_user(data):
    create("ops@example.com")
    result = invoke("set-role", "ops@example.com", "owner")
    assert result.exit_code == 2  # a usage error, before any database work
    said = " ".join(re.sub("[─│╭╮╰╯]", " ", result.stderr).split())  # out of its box
    assert "Invalid value for 'role'" in said
    assert re.search(r"'owner' is not one of '(admin|user)', '(admin|user)'", said), said
    assert role_of(data, "ops@example.com") == "user"
    assert audit(data) == []


def command(directory: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The installed `social-api`, pointed at `url`, run in `directory` (no .env file)."""
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MONGODB_", "EMBEDDED_", "SMTP_"))
        and key not in {"SECRET_KEY", "DATA_DIR"}
    }
    environment.update({"MONGODB_URL": url, "BCRYPT_ROUNDS": "4", "SOCIAL_API_PASSWORD": PASSWORD})
    return subprocess.run(
        [SOCIAL_API, *args],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def wire_url(log: Path) -> str:
    """The running store's wire URL, from the banner in the server's log."""
    found = WIRE_URL.search(log.read_text())
    assert found, log.read_text()[-3_000:]
    return found[1]


def test_the_commands_work_on_a_running_development_store(tmp_path):
    with running_server(tmp_path) as (base, _):
        store = wire_url(tmp_path / "server.log")
        created = command(tmp_path, store, "create-user", "ops@example.com", "--admin")
        assert created.returncode == 0, created.stderr
        assert created.stdout.startswith("created admin ")

        with httpx.Client(base_url=base) as http:

            def login(email: str) -> dict[str, str]:
                form = {"username": email, "password": PASSWORD}
                answer = http.post("/login", data=form)
                assert answer.status_code == 200, answer.text
                return {"Authorization": f"Bearer {answer.json()['access_token']}"}

            ops = login("ops@example.com")
            me = http.get("/users/me", headers=ops)
            assert (me.status_code, me.json()["role"]) == (200, "admin")
            assert http.get("/admin/audit", headers=ops).status_code == 200

            # An account registered through the API, made an admin by the command.
            registered = http.post(
                "/users/", json={"email": "eve@example.com", "password": PASSWORD}
            )
            assert registered.status_code == 201, registered.text
            promoted = command(tmp_path, store, "set-role", "eve@example.com", "admin")
            assert promoted.stdout == "eve@example.com: role user -> admin\n", promoted.stderr
            demoted = command(tmp_path, store, "set-role", "OPS@example.com", "user")
            assert demoted.stdout == "ops@example.com: role admin -> user\n", demoted.stderr
            # The same token: the role is read at each request.
            assert http.get("/admin/users", headers=ops).status_code == 403
            me = http.get("/users/me", headers=ops)
            assert (me.status_code, me.json()["role"]) == (200, "user")

            unknown = command(tmp_path, store, "set-role", "nobody@example.com", "admin")
            assert unknown.returncode == 1
            assert unknown.stderr == "error: no user has the email nobody@example.com\n"
            last = command(tmp_path, store, "set-role", "eve@example.com", "user")
            assert (last.returncode, last.stderr) == (1, LAST_ADMIN)

            eve = login("eve@example.com")
            log = http.get("/admin/audit", headers=eve)
            assert log.status_code == 200, log.text
            entries = [
                (e["via"], e["actor"], e["action"], e["outcome"], e["detail"])
                for e in reversed(log.json())
            ]
    assert entries == [
        ("cli", None, "create_user", "done", "role: admin"),
        ("cli", None, "set_role", "done", "role: user -> admin"),
        ("cli", None, "set_role", "done", "role: admin -> user"),
        (
            "cli",
            None,
            "set_role",
            "refused",
            "The last admin cannot be removed: make another admin first",
        ),
    ]
