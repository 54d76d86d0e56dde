"""The admin API (issue 16), the audit log: one document and one log line per admin action,
done or refused; the log newest first and paged by cursor; no way to write or delete it.
"""

import logging
from datetime import UTC, datetime

import pytest
from bson import ObjectId

from tests.factories import (
    MISSING_ID,
    NOT_YOURSELF,
    REASON,
    act,
    audit_count,
    audit_rows,
    comment,
    create_admin,
    create_post,
    create_user,
    done,
    pages,
)


def now_ms() -> datetime:
    """Now, cut to the millisecond as stored times are."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


@pytest.mark.parametrize("reason", [None, REASON], ids=["no-reason", "reason"])
async def test_each_admin_action_leaves_one_audit_document_and_one_log_line(client, caplog, reason):
    caplog.set_level(logging.INFO, logger="service.audit")
    admin, target = await create_admin(client), await create_user(client)
    post = await create_post(client, target, title="Audited")
    made = await comment(client, target, post["id"])
    missing = f"User with id: {MISSING_ID} does not exist"
    steps = [
        ("deactivate_user", "user", target.id, {}, 200, "done", "active: true -> false"),
        ("deactivate_user", "user", target.id, {}, 200, "done", "active: already false"),
        ("activate_user", "user", target.id, {}, 200, "done", "active: false -> true"),
        ("activate_user", "user", target.id, {}, 200, "done", "active: already true"),
        ("set_role", "user", target.id, {"role": "admin"}, 200, "done", "role: user -> admin"),
        ("set_role", "user", target.id, {"role": "user"}, 200, "done", "role: admin -> user"),
        ("set_role", "user", admin.id, {"role": "admin"}, 200, "done", "role: already admin"),
        (
            "delete_comment",
            "comment",
            made["id"],
            {},
            204,
            "done",
            f"author {target.id} on post {post['id']}",
        ),
        ("delete_post", "post", post["id"], {}, 204, "done", f"owner {target.id}: 'Audited'"),
        (
            "delete_post",
            "post",
            post["id"],
            {},
            404,
            "refused",
            f"post with id: {post['id']} does not exist",
        ),
        (
            "delete_comment",
            "comment",
            made["id"],
            {},
            404,
            "refused",
            f"comment with id: {made['id']} does not exist",
        ),
        ("deactivate_user", "user", admin.id, {}, 409, "refused", NOT_YOURSELF),
        ("set_role", "user", admin.id, {"role": "user"}, 409, "refused", NOT_YOURSELF),
        ("deactivate_user", "user", MISSING_ID, {}, 404, "refused", missing),
        ("activate_user", "user", MISSING_ID, {}, 404, "refused", missing),
        ("set_role", "user", MISSING_ID, {"role": "admin"}, 404, "refused", missing),
    ]
    for action, kind, target_id, fields, status, outcome, detail in steps:
        body = {**fields, "reason": reason} if reason else fields or None
        known = {row["_id"] for row in await audit_rows()}
        caplog.clear()
        start = now_ms()
        response = await act(client, admin, action, target_id, body)
        end = datetime.now(UTC)
        assert response.status_code == status, (action, response.text)
        if outcome == "refused":
            assert response.json() == {"detail": detail}
        new = [row for row in await audit_rows() if row["_id"] not in known]
        assert len(new) == 1, (action, new)
        row = new[0]
        assert start <= row["created_at"] <= end
        assert row == {
            "_id": row["_id"],
            "created_at": row["created_at"],
            "via": "api",
            "actor_id": ObjectId(admin.id),
            "actor_email": admin.email,
            "action": action,
            "target_kind": kind,
            "target_id": ObjectId(target_id),
            "reason": reason,
            "outcome": outcome,
            "detail": detail,
        }
        # The log shows it, newest first, as stored.
        listed = await client.get("/admin/audit", params={"limit": 1}, headers=admin.headers)
        assert listed.status_code == 200
        [shown] = listed.json()
        assert datetime.fromisoformat(shown.pop("created_at")) == row["created_at"]
        assert shown == {
            "id": str(row["_id"]),
            "via": "api",
            "actor": {"id": admin.id, "email": admin.email},
            "action": action,
            "target": {"kind": kind, "id": target_id},
            "reason": reason,
            "outcome": outcome,
            "detail": detail,
        }
        [line] = [record for record in caplog.records if record.name == "service.audit"]
        assert line.levelno == logging.INFO
        message = line.getMessage()
        assert message.startswith(
            f"Admin action {action} {outcome} on {kind} {target_id} by {admin.email}: {detail}"
        ), message
        assert (f"(reason: {reason!r})" in message) == (reason is not None), message
        assert getattr(line, "audit_id", None) == str(row["_id"])


async def test_the_audit_log_is_newest_first_and_paged_by_cursor(client):
    admin = await create_admin(client)
    targets = [str(ObjectId()) for _ in range(5)]
    for target_id in targets:
        assert (await act(client, admin, "delete_post", target_id)).status_code == 404
    rows = await audit_rows()
    assert [str(row["target_id"]) for row in rows] == targets
    newest_first = [str(row["_id"]) for row in reversed(rows)]
    walked = await pages(client, admin, "/admin/audit?limit=2")
    assert walked == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    whole = await pages(client, admin, "/admin/audit")
    assert whole == [newest_first]

    first = await client.get("/admin/audit", params={"limit": 2}, headers=admin.headers)
    cursor = first.headers["x-next-cursor"]
    tampered = cursor[:-3] + ("AAA" if not cursor.endswith("AAA") else "BBB")
    users_cursor = (
        await client.get("/admin/users", params={"limit": 1}, headers=admin.headers)
    ).headers.get("x-next-cursor")
    for bad in ("garbage", tampered, cursor[:20], users_cursor):
        response = await client.get("/admin/audit", params={"cursor": bad}, headers=admin.headers)
        assert (response.status_code, response.json()) == (400, {"detail": "Invalid cursor"}), bad
    # Reading the log writes nothing to it.
    assert await audit_count() == 5


async def test_the_audit_log_cannot_be_written_or_deleted_through_the_api(client):
    admin, user = await create_admin(client), await create_user(client)
    await done(client, admin, "deactivate_user", user.id, {"reason": REASON})
    [before] = await audit_rows()
    entry = {
        "via": "api",
        "action": "delete_post",
        "target": {"kind": "post", "id": MISSING_ID},
        "outcome": "done",
    }
    for path in ("/admin/audit", "/admin/audit/", f"/admin/audit/{before['_id']}"):
        for method in ("POST", "PUT", "PATCH", "DELETE"):
            # (/admin/audit/ redirects to /admin/audit, which refuses the method.)
            response = await client.request(
                method, path, json=entry, headers=admin.headers, follow_redirects=True
            )
            assert response.status_code in {404, 405}, (method, path, response.text)
    assert await audit_rows() == [before]
