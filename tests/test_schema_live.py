"""Schemathesis from outside, as a client would meet the service: its command line against
`social-api serve` (the embedded store), with a bearer token, its default checks and 40
examples per operation. Only the operations that end the token's session are left out.

The token is an admin's (made one by `social-api set-role` on the running store), so the
admin routes are fuzzed past their 403. Nothing in the run can take the account away from
itself: the service refuses (409) an admin's deactivation or demotion of themselves, and any
other id it tries is another account's or nobody's (404).

LIVE_FUZZ_SEED picks another seed (the default makes CI's run repeatable); the run's report
is printed when it finds anything.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.conftest import running_server
from tests.test_cli_roles import command, wire_url

SESSION_ENDING = ("logout", "logout_all", "delete_user_me", "update_password")
EXAMPLES = 40


def test_schemathesis_finds_nothing_from_outside(tmp_path: Path) -> None:
    with running_server(tmp_path) as (base, _):
        account = {"email": "fuzz@example.com", "password": "fuzz-password-1"}
        assert httpx.post(f"{base}/users/", json=account).status_code == 201
        form = {"username": account["email"], "password": account["password"]}
        token = httpx.post(f"{base}/login", data=form).json()["access_token"]
        promoted = command(
            tmp_path, wire_url(tmp_path / "server.log"), "set-role", account["email"], "admin"
        )
        assert promoted.stdout == "fuzz@example.com: role user -> admin\n", promoted.stderr
        headers = {"Authorization": f"Bearer {token}"}
        fuzz = [
            str(Path(sys.executable).parent / "schemathesis"),
            *("--config-file", str(Path(__file__).parent.parent / "schemathesis.toml")),
            "run",
            f"{base}/openapi.json",
            *("--header", f"Authorization: Bearer {token}"),
            *("--max-examples", str(EXAMPLES)),
            *("--seed", os.environ.get("LIVE_FUZZ_SEED", "20261207")),
            *(option for name in SESSION_ENDING for option in ("--exclude-operation-id", name)),
        ]
        run = subprocess.run(fuzz, capture_output=True, text=True, timeout=600, cwd=tmp_path)
        me = httpx.get(f"{base}/users/me", headers=headers)
        audit = httpx.get(f"{base}/admin/audit", headers=headers, params={"limit": 100})
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    counted = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    assert counted and counted[1] == counted[2] and int(counted[1]) > 100, run.stdout[-5_000:]
    # Still an active admin, on the same session, after the run; and it did act as one: a
    # request that is not an admin's is refused before anything is audited.
    assert (me.status_code, me.json()["role"]) == (200, "admin"), me.text
    assert audit.status_code == 200, audit.text
    actors = {(entry["actor"] or {}).get("email") for entry in audit.json()}
    assert "fuzz@example.com" in actors, audit.text
