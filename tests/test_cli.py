"""The `social-api` admin commands, run in-process against the suite's MongoDB."""

import os
import stat
import subprocess
import sys
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from bson import ObjectId, json_util
from pymongo import MongoClient
from typer.testing import CliRunner

from devstore import EmbeddedStore
from service.cli import app as cli
from service.security import verify_password_sync
from tests.conftest import TEST_SECRET_KEY, free_port

runner = CliRunner()
COLLECTIONS = ("users", "posts", "votes", "comments")


@pytest.fixture
def use_db(monkeypatch, tmp_path, mongodb_url, restore_beanie):
    """Point the commands at a database of the suite's server; returns a function that does."""
    monkeypatch.chdir(tmp_path)  # no .env of the checkout
    monkeypatch.setenv("MONGODB_URL", mongodb_url)
    monkeypatch.setenv("SECRET_KEY", TEST_SECRET_KEY)
    monkeypatch.setenv("BCRYPT_ROUNDS", "4")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    created = []

    def point_at(name: str | None = None) -> str:
        """The named database, or a new one that is dropped afterwards."""
        if name is None:
            name = f"cli_{uuid.uuid4().hex[:10]}"
            created.append(name)
        monkeypatch.setenv("MONGODB_DB", name)
        return name

    yield point_at
    with MongoClient[dict[str, Any]](mongodb_url) as client:
        for name in created:
            client.drop_database(name)


def raw(mongodb_url: str, name: str) -> dict[str, list[dict[str, Any]]]:
    with MongoClient[dict[str, Any]](mongodb_url, tz_aware=True) as client:
        return {c: list(client[name][c].find().sort("_id", 1)) for c in COLLECTIONS}


def found(document: dict[str, Any] | None) -> dict[str, Any]:
    """The document a `find_one` must have found."""
    assert document is not None
    return document


def test_create_user_registers_with_the_api_rules(use_db, mongodb_url, settings):
    use_db(settings.mongodb_db)
    result = runner.invoke(cli, ["create-user", "  Ops@Example.com "], input="s3cret-pass\n" * 2)
    assert result.exit_code == 0, result.output
    assert "<ops@example.com>" in result.output
    [user] = raw(mongodb_url, settings.mongodb_db)["users"]
    assert user["email"] == "ops@example.com"
    assert user["hashed_password"].startswith("$2b$04$")
    assert verify_password_sync("s3cret-pass", user["hashed_password"], rounds=4)  # can log in


def test_create_user_refuses_a_taken_email_and_a_bad_password(use_db):
    use_db()
    first = runner.invoke(cli, ["create-user", "a@example.com", "--password", "password1"])
    again = runner.invoke(cli, ["create-user", "A@example.com", "--password", "password1"])
    short = runner.invoke(cli, ["create-user", "b@example.com", "--password", "short"])
    assert first.exit_code == 0, first.output
    assert again.exit_code == 1
    assert "a@example.com is already registered" in again.output
    assert short.exit_code == 1
    assert "at least 8 characters" in short.output


def test_seed_makes_what_it_is_asked_for(use_db, mongodb_url):
    name = use_db()
    args = ["seed", "--users", "5", "--posts", "20", "--votes", "30", "--random-seed", "7"]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "seeded 5 users, 20 posts and 30 votes" in result.output
    data = raw(mongodb_url, name)
    assert [len(data[c]) for c in COLLECTIONS] == [5, 20, 30, 0]
    pairs = {(v["post_id"], v["user_id"]) for v in data["votes"]}
    assert len(pairs) == 30  # distinct user and post each
    users = {u["_id"] for u in data["users"]}
    assert {p["owner_id"] for p in data["posts"]} <= users
    assert all(u["email_verified"] is True for u in data["users"])  # they can write at once
    again = runner.invoke(cli, args)
    assert again.exit_code == 1
    assert "already has demo users" in again.output


def test_seed_writes_each_post_with_its_owner_and_vote_count(use_db, mongodb_url):
    name = use_db()
    result = runner.invoke(cli, ["seed", "--users", "6", "--posts", "25", "--votes", "60"])
    assert result.exit_code == 0, result.output
    data = raw(mongodb_url, name)
    users = {u["_id"]: u for u in data["users"]}
    counts = Counter(v["post_id"] for v in data["votes"])
    for post in data["posts"]:
        owner = users[post["owner_id"]]
        assert post["owner"] == {"email": owner["email"], "created_at": owner["created_at"]}
        assert post["votes"] == counts[post["_id"]]


def test_recount_repairs_counts_and_owners_and_reports_them(use_db, mongodb_url):
    name = use_db()
    seeded = runner.invoke(cli, ["seed", "--users", "4", "--posts", "10", "--votes", "20"])
    assert seeded.exit_code == 0, seeded.output
    before = raw(mongodb_url, name)["posts"]
    voted = [post["_id"] for post in before if post["votes"]]
    with MongoClient[dict[str, Any]](mongodb_url) as client:
        posts = client[name]["posts"]
        # As a crash between a vote's two writes would leave them.
        posts.update_one({"_id": voted[0]}, {"$inc": {"votes": 1}})
        posts.update_one({"_id": voted[1]}, {"$set": {"votes": 0}})
        # As a process of an older version writes it: the migration on connecting derives it.
        posts.update_one({"_id": voted[2]}, {"$unset": {"owner": "", "votes": ""}})
    result = runner.invoke(cli, ["recount"])
    assert result.exit_code == 0, result.output
    assert "posts: 2 corrected, tallies: 0 corrected" in result.output
    assert raw(mongodb_url, name)["posts"] == before
    again = runner.invoke(cli, ["recount"])
    assert "posts: 0 corrected, tallies: 0 corrected" in again.output


def test_recount_repairs_the_feeds_tallies(use_db, mongodb_url):
    name = use_db()
    seeded = runner.invoke(cli, ["seed", "--users", "4", "--posts", "30", "--votes", "0"])
    assert seeded.exit_code == 0, seeded.output
    with MongoClient[dict[str, Any]](mongodb_url) as client:
        data = client[name]
        published = data["posts"].count_documents({"published": True})
        assert found(data["counters"].find_one({"_id": "published_posts"}))["value"] == published
        drafts = {u["_id"]: u["drafts"] for u in data["users"].find()}
        assert sum(drafts.values()) == 30 - published
        data["counters"].update_one({"_id": "published_posts"}, {"$inc": {"value": 3}})
        user_id = next(iter(drafts))
        data["users"].update_one({"_id": user_id}, {"$inc": {"drafts": -1}})
        result = runner.invoke(cli, ["recount"])
        assert result.exit_code == 0, result.output
        assert "posts: 0 corrected, tallies: 2 corrected" in result.output
        assert found(data["counters"].find_one({"_id": "published_posts"}))["value"] == published
        assert found(data["users"].find_one({"_id": user_id}))["drafts"] == drafts[user_id]


def test_import_derives_owners_and_counts_from_the_imported_files(use_db, mongodb_url, tmp_path):
    source = use_db()
    seeded = runner.invoke(cli, ["seed", "--users", "3", "--posts", "8", "--votes", "12"])
    assert seeded.exit_code == 0, seeded.output
    assert runner.invoke(cli, ["export", str(tmp_path / "dump")]).exit_code == 0
    expected = raw(mongodb_url, source)["posts"]
    # An export from before posts carried them, or edited by hand: neither is trusted.
    posts = tmp_path / "dump" / "posts.json"
    rows = [json_util.loads(line) for line in posts.read_text().splitlines()]
    for row in rows[:4]:
        del row["owner"], row["votes"]
    rows[4]["votes"] = 99
    posts.write_text("".join(json_util.dumps(row) + "\n" for row in rows))
    target = use_db()
    imported = runner.invoke(cli, ["import", str(tmp_path / "dump")])
    assert imported.exit_code == 0, imported.output
    assert "posts: 5 owners or counts derived" in imported.output
    assert raw(mongodb_url, target)["posts"] == expected


def test_seed_refuses_more_votes_than_pairs(use_db):
    use_db()
    result = runner.invoke(cli, ["seed", "--users", "2", "--posts", "3", "--votes", "7"])
    assert result.exit_code == 1
    assert "at most 6 distinct votes" in result.output


def test_export_then_import_round_trips_every_document(use_db, mongodb_url, tmp_path):
    source = use_db()
    seeded = runner.invoke(cli, ["seed", "--users", "4", "--posts", "15", "--votes", "25"])
    assert seeded.exit_code == 0, seeded.output
    with MongoClient[dict[str, Any]](mongodb_url, tz_aware=True) as client:
        post = found(client[source]["posts"].find_one({"published": True}))
        author = found(client[source]["users"].find_one())
        for text in ("first", "second"):
            client[source]["comments"].insert_one(
                {
                    "post_id": post["_id"],
                    "author_id": author["_id"],
                    "author": {"email": author["email"], "created_at": author["created_at"]},
                    "content": text,
                    "created_at": datetime.now(UTC),
                }
            )
        client[source]["posts"].update_one({"_id": post["_id"]}, {"$set": {"comments": 2}})
    exported = runner.invoke(cli, ["export", str(tmp_path / "dump")])
    assert exported.exit_code == 0, exported.output
    # Sessions and login attempts are state of the moment, not data: they are not exported.
    dump = sorted(os.listdir(tmp_path / "dump"))
    assert dump == ["audit.json", "comments.json", "posts.json", "users.json", "votes.json"]
    lines = (tmp_path / "dump" / "posts.json").read_text().splitlines()
    assert len(lines) == 15 and '"_id": {"$oid": "' in lines[0] and '{"$date": "' in lines[0]

    target = use_db()
    imported = runner.invoke(cli, ["import", str(tmp_path / "dump")])
    assert imported.exit_code == 0, imported.output
    before, after = raw(mongodb_url, source), raw(mongodb_url, target)
    assert after == before  # ids, dates, booleans and strings, exactly
    assert all(isinstance(p["published"], bool) for p in after["posts"])

    refused = runner.invoke(cli, ["import", str(tmp_path / "dump")])
    assert refused.exit_code == 1
    assert "is not empty" in refused.output
    replaced = runner.invoke(cli, ["import", str(tmp_path / "dump"), "--drop"])
    assert replaced.exit_code == 0, replaced.output
    assert raw(mongodb_url, target) == before


def test_import_reports_a_document_the_validator_refuses(use_db, tmp_path):
    use_db()
    dump = tmp_path / "dump"
    dump.mkdir()
    good = f'{{"_id": {{"$oid": "{ObjectId()}"}}, "email": "ok@example.com", '
    good += '"hashed_password": "$2b$04$x", "created_at": {"$date": "2026-01-01T00:00:00Z"}}'
    bad = f'{{"_id": {{"$oid": "{ObjectId()}"}}, "email": "no-hash@example.com"}}'
    (dump / "users.json").write_text(good + "\n" + bad + "\n")
    result = runner.invoke(cli, ["import", str(dump)])
    assert result.exit_code == 1
    assert "users: document 2 was refused" in result.output


def test_an_export_made_before_sessions_existed_imports_with_their_defaults(
    use_db, mongodb_url, tmp_path
):
    name = use_db()
    dump = tmp_path / "dump"
    dump.mkdir()
    old = f'{{"_id": {{"$oid": "{ObjectId()}"}}, "email": "old@example.com", '
    old += '"hashed_password": "$2b$04$x", "created_at": {"$date": "2026-01-01T00:00:00Z"}}'
    (dump / "users.json").write_text(old + "\n")
    result = runner.invoke(cli, ["import", str(dump)])
    assert result.exit_code == 0, result.output
    [user] = raw(mongodb_url, name)["users"]
    assert user["session_epoch"] == 0
    assert user["revoked_sessions"] == []


def test_import_of_a_folder_without_exports_fails(use_db, tmp_path):
    use_db()
    result = runner.invoke(cli, ["import", str(tmp_path)])
    assert result.exit_code == 1
    assert "no users.json" in result.output


def test_indexes_compares_declared_and_present(use_db, mongodb_url):
    name = use_db()
    runner.invoke(cli, ["seed", "--users", "1", "--posts", "1", "--votes", "1"])
    ok = runner.invoke(cli, ["indexes"])
    assert ok.exit_code == 0, ok.output
    assert "MISSING" not in ok.output
    with MongoClient[dict[str, Any]](mongodb_url) as client:
        client[name]["votes"].drop_index("post_id_1_user_id_1")
    missing = runner.invoke(cli, ["indexes"])
    assert missing.exit_code == 1
    assert "MISSING" in missing.output
    assert "1 declared index(es) missing" in missing.output


def test_a_bad_setting_is_one_line(use_db, monkeypatch):
    use_db()
    monkeypatch.setenv("LOG_LEVEL", "loud")
    result = runner.invoke(cli, ["indexes"])
    assert result.exit_code == 1
    assert "LOG_LEVEL" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("[1, 2]", "users.json:2: not a document"),
        ('{"_id": {"$oid": "zz"}}', "users.json:2: not Extended JSON"),
        ("{not json", "users.json:2: not Extended JSON"),
    ],
    ids=["array", "bad-object-id", "broken-json"],
)
def test_import_names_the_line_it_cannot_read(use_db, tmp_path, line, message):
    use_db()
    dump = tmp_path / "dump"
    dump.mkdir()
    (dump / "users.json").write_text('{"email": "first@example.com"}\n' + line + "\n")
    result = runner.invoke(cli, ["import", str(dump)])
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output


def test_export_into_a_file_is_one_line(use_db, tmp_path):
    use_db()
    target = tmp_path / "taken"
    target.write_text("")
    result = runner.invoke(cli, ["export", str(target)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output


def test_exported_files_are_private(use_db, tmp_path):
    use_db()
    assert runner.invoke(cli, ["export", str(tmp_path / "dump")]).exit_code == 0
    assert stat.S_IMODE((tmp_path / "dump").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "dump" / "users.json").stat().st_mode) == 0o600


def test_serve_on_a_store_another_process_holds_is_one_line(tmp_path, monkeypatch):
    store = EmbeddedStore("memory", tmp_path / "data")
    store.start()
    try:
        environment = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URL"}}
        environment.update({"DATA_DIR": str(tmp_path / "data"), "EMBEDDED_STORAGE": "memory"})
        finished = subprocess.run(
            [sys.executable, "-m", "service.cli", "serve", "--port", str(free_port())],
            cwd=tmp_path,
            env=environment,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        store.stop()
    assert finished.returncode == 1
    assert "already open in another process" in finished.stderr
    assert "Traceback" not in finished.stderr + finished.stdout
