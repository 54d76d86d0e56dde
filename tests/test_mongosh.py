"""MongoDB's own shell against the development store, as a developer would open it.

`social-api serve` runs on the default store (SQLite), and `mongosh` connects with the very
command its start-up banner prints. Needs mongosh from npm (`.ci/install-mongosh`, or one on
PATH, or MONGOSH naming it); without it the test is skipped, unless REQUIRE_MONGOSH is set (as
CI does), when it fails instead.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from tests.conftest import running_server

ROOT = Path(__file__).resolve().parent.parent
POSTS = 300  # more than a batch of 100, so that reading them all needs getMore
BANNER_COMMAND = re.compile(r'mongosh:\s+(mongosh "mongodb://[^"\\]+")')


def find_mongosh() -> str | None:
    named = os.environ.get("MONGOSH")
    local = ROOT / ".tools" / "mongosh" / "node_modules" / ".bin" / "mongosh"
    return named or (str(local) if local.exists() else shutil.which("mongosh"))


MONGOSH = find_mongosh()
if MONGOSH is None:
    reason = "mongosh is missing (run .ci/install-mongosh)"
    if os.environ.get("REQUIRE_MONGOSH"):
        pytest.fail(f"REQUIRE_MONGOSH is set, but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)

SCRIPT = """
const out = {};
const posts = db.posts.find().sort({_id: 1}).batchSize(100);
out.found = posts.toArray().map((post) => post._id.toHexString());
out.published = db.posts.countDocuments({published: true});
out.owners = db.posts.aggregate([
  {$group: {_id: "$owner_id", posts: {$sum: 1}}},
  {$sort: {posts: -1, _id: 1}},
]).toArray().map((group) => [group._id.toHexString(), group.posts]);
try {
  db.posts.insertOne({title: 5, content: "a title must be a string"});
  out.refused = null;
} catch (error) {
  out.refused = error.code;
}
const viewer = db.users.findOne()._id;
const feed = db.posts.find({$or: [{published: true}, {owner_id: viewer}]})
  .sort({created_at: -1, _id: -1}).limit(10);
out.explained = Object.keys(feed.explain()).length > 0;
print(EJSON.stringify(out));
"""


@pytest.fixture(autouse=True)
def clean_database() -> None:
    """Replaces the suite's: this test has a server and store of its own."""


def banner_command(log: Path) -> list[str]:
    """The `mongosh "<url>"` command of the banner in the server's log."""
    for line in log.read_text().splitlines():
        try:
            text = json.loads(line).get("message", "")
        except ValueError:
            text = line
        found = BANNER_COMMAND.search(text.replace('\\"', '"'))
        if found:
            return shlex.split(found.group(1))
    raise AssertionError(f"no mongosh command in the banner:\n{log.read_text()[-3000:]}")


def shell(command: list[str], *args: str) -> str:
    assert MONGOSH is not None
    done = subprocess.run(
        [MONGOSH, *command[1:], "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_mongosh_reads_and_writes_the_default_store(tmp_path):
    # The default store: SQLite in DATA_DIR (running_server sets only its port to a free one).
    with running_server(tmp_path, EMBEDDED_STORAGE="sqlite"):
        command = banner_command(tmp_path / "server.log")
        url = command[1]
        seeded = subprocess.run(
            [str(Path(sys.executable).parent / "social-api"), "seed", "--users", "7",
             "--posts", str(POSTS), "--votes", "20", "--random-seed", "3"],
            env={**os.environ, "MONGODB_URL": url, "BCRYPT_ROUNDS": "4"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr

        collections = shell(command, "--eval", "show collections").split()
        assert {"users", "posts", "votes", "refresh_tokens", "login_attempts"} <= set(collections)

        out: dict[str, Any] = json.loads(shell(command, "--eval", SCRIPT).strip().splitlines()[-1])
        with MongoClient[dict[str, Any]](url) as client:
            posts = client.get_default_database("social_api")["posts"]
            ids = [str(row["_id"]) for row in posts.find({}, {"_id": 1}).sort("_id", 1)]
            published = posts.count_documents({"published": True})
            pipeline: list[dict[str, Any]] = [
                {"$group": {"_id": "$owner_id", "posts": {"$sum": 1}}},
                {"$sort": {"posts": -1, "_id": 1}},
            ]
            owners = [[str(group["_id"]), group["posts"]] for group in posts.aggregate(pipeline)]
            assert posts.count_documents({"title": 5}) == 0  # the refused insert left nothing
        assert len(out["found"]) == POSTS and out["found"] == ids
        assert out["published"] == published
        assert out["owners"] == owners and sum(n for _, n in owners) == POSTS
        assert out["refused"] == 121  # DocumentValidationFailure
        assert out["explained"] is True
