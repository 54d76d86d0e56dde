"""The admin API (issue 16), accounts: deactivation and activation, the safety rules (no
admin deactivates or demotes themselves; the last admin stays, through races and account
deletion), roles, and the users list.
"""

import asyncio

import httpx
import pytest
from beanie import PydanticObjectId
from bson import ObjectId

from service import moderation
from service.models import User
from service.models.user import ADMINS_COUNTER
from service.tallies import counters
from tests.factories import (
    ADMIN_ONLY,
    NOT_YOURSELF,
    LoggedInUser,
    act,
    audit_rows,
    comment,
    create_admin,
    create_post,
    create_user,
    done,
    login_pair,
    pages,
)

LAST_ADMIN = "The last admin cannot be removed: make another admin first"
LAST_ADMIN_DELETION = "The last admin cannot delete their account: make another admin first"
PUBLIC_USER_KEYS = {"id", "email", "created_at", "email_verified"}
AUTHOR_KEYS = {"id", "email", "created_at"}


async def admins_count() -> int:
    row = await counters().find_one({"_id": ADMINS_COUNTER})
    assert row is not None
    value: int = row["value"]
    return value


async def active_admin_ids() -> set[str]:
    rows = await User.get_pymongo_collection().find({"role": "admin", "active": True}).to_list()
    return {str(row["_id"]) for row in rows}


async def delete_me(client: httpx.AsyncClient, user: LoggedInUser) -> httpx.Response:
    return await client.request(
        "DELETE", "/users/me", json={"password": user.password}, headers=user.headers
    )


# Deactivation


async def test_deactivation_ends_every_token_and_login_says_account_disabled(client):
    admin, alice = await create_admin(client), await create_user(client)
    deactivated = await act(client, admin, "deactivate_user", alice.id)
    assert deactivated.status_code == 200 and deactivated.json()["active"] is False

    async def old_tokens_refused() -> None:
        me = await client.get("/users/me", headers=alice.headers)
        assert (me.status_code, me.json()) == (401, {"detail": "Could not validate credentials"})
        refreshed = await client.post("/auth/refresh", json={"refresh_token": alice.refresh_token})
        assert refreshed.status_code == 401, refreshed.text
        assert refreshed.headers["www-authenticate"] == "Bearer"

    await old_tokens_refused()
    right = await client.post("/login", data={"username": alice.email, "password": alice.password})
    assert (right.status_code, right.json()) == (403, {"detail": "Account disabled"})
    wrong = await client.post("/login", data={"username": alice.email, "password": "not hers!"})
    assert (wrong.status_code, wrong.json()) == (403, {"detail": "Invalid Credentials"})

    assert (await act(client, admin, "activate_user", alice.id)).json()["active"] is True
    await old_tokens_refused()
    pair = await login_pair(client, alice.email)
    me = await client.get("/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"})
    assert (me.status_code, me.json()["id"]) == (200, alice.id)
    refreshed = await client.post("/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refreshed.status_code == 200, refreshed.text


# Safety


async def test_an_admin_cannot_deactivate_or_demote_themselves(client):
    admin = await create_admin(client)
    await create_admin(client)  # not the last: the rule holds anyway
    for action, body in (("deactivate_user", None), ("set_role", {"role": "user"})):
        response = await act(client, admin, action, admin.id, body)
        assert (response.status_code, response.json()) == (409, {"detail": NOT_YOURSELF})
    me = await client.get("/users/me", headers=admin.headers)
    assert (me.status_code, me.json()["role"]) == (200, "admin")
    assert (await client.get("/admin/users", headers=admin.headers)).status_code == 200
    # What removes nothing is allowed on oneself.
    for action, body in (("activate_user", None), ("set_role", {"role": "admin"})):
        response = await act(client, admin, action, admin.id, body)
        assert response.status_code == 200, response.text
        assert (response.json()["role"], response.json()["active"]) == ("admin", True)


async def test_the_last_admin_cannot_be_removed(own_client):
    only, user = await create_admin(own_client), await create_user(own_client)
    assert await admins_count() == 1
    # Through the API an admin acts on nobody else who is an admin: the self rule says no
    # first. The CLI's way (moderation in-process) meets the count.
    for change in ({"active": False}, {"role": "user"}):
        with pytest.raises(moderation.LastAdmin):
            await moderation.change_account(PydanticObjectId(only.id), **change)
    deletion = await delete_me(own_client, only)
    assert (deletion.status_code, deletion.json()) == (409, {"detail": LAST_ADMIN_DELETION})
    me = await own_client.get("/users/me", headers=only.headers)
    assert (me.status_code, me.json()["role"]) == (200, "admin")
    assert (await own_client.get("/admin/users", headers=only.headers)).status_code == 200
    assert await login_pair(own_client, only.email)
    # Ordinary users come and go without touching the count.
    await done(own_client, only, "deactivate_user", user.id)
    await done(own_client, only, "activate_user", user.id)
    assert await admins_count() == 1
    assert await active_admin_ids() == {only.id}


async def test_two_admins_deactivating_each_other_at_once_leave_exactly_one(own_client):
    survivor = await create_admin(own_client)
    for _ in range(4):
        first, second = await create_admin(own_client), await create_admin(own_client)
        # The last round's survivor goes: these two are the only active admins.
        await done(own_client, first, "deactivate_user", survivor.id)
        assert await admins_count() == 2
        answers = await asyncio.gather(
            act(own_client, first, "deactivate_user", second.id),
            act(own_client, second, "deactivate_user", first.id),
        )
        assert sorted(answer.status_code for answer in answers) == [200, 409], [
            answer.text for answer in answers
        ]
        won = 0 if answers[0].status_code == 200 else 1
        winner, loser = (first, second) if won == 0 else (second, first)
        assert answers[1 - won].json() == {"detail": LAST_ADMIN}
        assert answers[won].json()["id"] == loser.id and answers[won].json()["active"] is False
        assert await admins_count() == 1
        assert await active_admin_ids() == {winner.id}
        assert (await own_client.get("/admin/users", headers=winner.headers)).status_code == 200
        assert (await own_client.get("/users/me", headers=loser.headers)).status_code == 401
        [refused] = await audit_rows(target_id=ObjectId(winner.id))
        [made] = await audit_rows(target_id=ObjectId(loser.id))
        assert (refused["outcome"], refused["detail"]) == ("refused", LAST_ADMIN)
        assert (made["outcome"], made["detail"]) == ("done", "active: true -> false")
        survivor = winner


async def test_with_two_admins_one_may_delete_their_account_and_the_other_is_last(own_client):
    first, second = await create_admin(own_client), await create_admin(own_client)
    assert await admins_count() == 2
    gone = await delete_me(own_client, first)
    assert gone.status_code == 204, gone.text
    assert (await own_client.get("/users/me", headers=first.headers)).status_code == 401
    assert await admins_count() == 1
    refused = await delete_me(own_client, second)
    assert (refused.status_code, refused.json()) == (409, {"detail": LAST_ADMIN_DELETION})
    assert (await own_client.get("/admin/audit", headers=second.headers)).status_code == 200


async def test_the_admins_count_follows_every_change(own_client):
    admin = await create_admin(own_client)
    bea, cal = await create_user(own_client), await create_user(own_client)
    steps = [
        ("set_role", bea, {"role": "admin"}, 2),
        ("deactivate_user", bea, None, 1),
        ("set_role", cal, {"role": "admin"}, 2),
        ("deactivate_user", cal, None, 1),
        ("set_role", cal, {"role": "user"}, 1),  # an inactive admin was not counted
        ("set_role", bea, {"role": "admin"}, 1),  # already an admin, still inactive
        ("activate_user", bea, None, 2),
        ("activate_user", cal, None, 2),
        ("set_role", bea, {"role": "user"}, 1),
    ]
    for action, user, body, expected in steps:
        await done(own_client, admin, action, user.id, body)
        assert await admins_count() == expected == len(await active_admin_ids()), action


# Roles


async def test_only_the_user_sees_their_role(client):
    admin, user = await create_admin(client), await create_user(client)
    for who, role in ((admin, "admin"), (user, "user")):
        me = await client.get("/users/me", headers=who.headers)
        assert me.json().keys() == {*PUBLIC_USER_KEYS, "role"}
        assert me.json()["role"] == role
    post = await create_post(client, admin)
    made = await comment(client, admin, post["id"])
    assert made["author"].keys() == AUTHOR_KEYS
    assert post["owner"].keys() == AUTHOR_KEYS
    for viewer in (admin, user):
        profile = await client.get(f"/users/{admin.id}", headers=viewer.headers)
        assert profile.json().keys() == PUBLIC_USER_KEYS
        read = await client.get(f"/posts/{post['id']}", headers=viewer.headers)
        assert read.json()["Post"]["owner"].keys() == AUTHOR_KEYS
        listed = await client.get("/posts/", headers=viewer.headers)
        assert listed.json()[0]["Post"]["owner"].keys() == AUTHOR_KEYS
        comments = await client.get(f"/posts/{post['id']}/comments", headers=viewer.headers)
        assert comments.json()[0]["author"].keys() == AUTHOR_KEYS


async def test_a_role_change_holds_from_the_next_request_with_the_same_token(client):
    admin, user = await create_admin(client), await create_user(client)
    assert (await client.get("/admin/users", headers=user.headers)).status_code == 403
    promoted = await act(client, admin, "set_role", user.id, {"role": "admin"})
    assert (promoted.status_code, promoted.json()["role"]) == (200, "admin")
    assert (await client.get("/admin/users", headers=user.headers)).status_code == 200
    assert (await client.get("/users/me", headers=user.headers)).json()["role"] == "admin"
    # And may act as one.
    assert (await act(client, user, "activate_user", admin.id)).status_code == 200
    demoted = await act(client, admin, "set_role", user.id, {"role": "user"})
    assert (demoted.status_code, demoted.json()["role"]) == (200, "user")
    refused = await client.get("/admin/users", headers=user.headers)
    assert (refused.status_code, refused.json()) == (403, ADMIN_ONLY)
    assert (await act(client, user, "activate_user", admin.id)).status_code == 403


async def test_the_users_list_is_newest_first_and_paged_by_cursor(client):
    admin = await create_admin(client)
    users = [await create_user(client) for _ in range(4)]
    newest_first = [user.id for user in reversed([admin, *users])]
    walked = await pages(client, admin, "/admin/users?limit=2")
    assert walked == [newest_first[:2], newest_first[2:4], newest_first[4:]]
    assert await pages(client, admin, "/admin/users") == [newest_first]
    await done(client, admin, "deactivate_user", users[0].id)
    listed = await client.get("/admin/users", headers=admin.headers)
    assert [(a["id"], a["active"]) for a in listed.json()][-2:] == [
        (users[0].id, False),
        (admin.id, True),
    ]


async def test_the_users_search_is_a_literal_case_insensitive_part_of_the_email(client):
    admin = await create_admin(client)
    emails = [
        "lit.*eral@example.com",
        "literal@example.com",
        "lit.xyz.eral@example.com",
        "a+b@example.com",
        "aab@example.com",
        "w^z@example.com",
    ]
    for email in emails:
        await create_user(client, email)

    async def found(search: str) -> list[str]:
        response = await client.get(
            "/admin/users", params={"search": search}, headers=admin.headers
        )
        assert response.status_code == 200, (search, response.text)
        return sorted(account["email"] for account in response.json())

    assert await found(".*") == ["lit.*eral@example.com"]
    assert await found("LIT.*ERAL") == ["lit.*eral@example.com"]
    assert await found("A+B") == ["a+b@example.com"]
    assert await found("^z") == ["w^z@example.com"]
    assert await found("LITERAL@") == ["literal@example.com"]
    for pattern in ("(", "[", "\\", "a{2}", "$", "|"):
        assert await found(pattern) == [], pattern
    assert await found("EXAMPLE.COM") == sorted([*emails, admin.email])

    first = await client.get(
        "/admin/users", params={"search": "lit", "limit": 1}, headers=admin.headers
    )
    cursor = first.headers["x-next-cursor"]
    same = await client.get(
        "/admin/users", params={"search": "lit", "cursor": cursor}, headers=admin.headers
    )
    assert same.status_code == 200 and len(same.json()) == 2
    for other in ("", "LIT", "li"):
        refused = await client.get(
            "/admin/users", params={"search": other, "cursor": cursor}, headers=admin.headers
        )
        assert (refused.status_code, refused.json()) == (400, {"detail": "Invalid cursor"}), other
