"""Conditional requests on posts: ETag, If-None-Match (304) and If-Match (412)."""

import asyncio

import httpx
import pytest

from tests.factories import LoggedInUser, create_post, create_user, vote

EDIT = {"title": "Edited", "content": "New content", "published": True}
STALE = {"detail": "Precondition failed: the post changed since you read it (If-Match)"}


async def etag_of(client: httpx.AsyncClient, user: LoggedInUser, post_id: str) -> str:
    response = await client.get(f"/posts/{post_id}", headers=user.headers)
    assert response.status_code == 200, response.text
    return response.headers["etag"]


async def test_the_etag_changes_with_the_post_and_not_with_its_counts(client):
    owner, reader = await create_user(client), await create_user(client)
    post = await create_post(client, owner)
    first = await etag_of(client, owner, post["id"])
    assert first.startswith('"') and first.endswith('"') and len(first) == 34
    assert await etag_of(client, reader, post["id"]) == first  # the same for every reader
    assert (await vote(client, reader, post["id"], 1)).status_code == 201
    comment = {"content": "Nice"}
    made = await client.post(f"/posts/{post['id']}/comments", json=comment, headers=reader.headers)
    assert made.status_code == 201
    assert await etag_of(client, owner, post["id"]) == first  # counts are not versioned
    for change in ({"title": "Other"}, {"content": "Other"}, {"published": False}):
        body = {"title": post["title"], "content": post["content"], "published": True} | change
        edited = await client.put(f"/posts/{post['id']}", json=body, headers=owner.headers)
        assert edited.status_code == 200, edited.text
        now = await etag_of(client, owner, post["id"])
        assert edited.headers["etag"] == now != first, change
        back = {"title": post["title"], "content": post["content"], "published": True}
        restored = await client.put(f"/posts/{post['id']}", json=back, headers=owner.headers)
        assert restored.headers["etag"] == first  # the same version, the same tag


async def test_if_none_match_answers_304_for_the_current_version(client):
    owner = await create_user(client)
    post = await create_post(client, owner)
    etag = await etag_of(client, owner, post["id"])
    weak = f"W/{etag}"
    for header in (etag, weak, f'"other", {etag}', "*"):
        response = await client.get(
            f"/posts/{post['id']}", headers={**owner.headers, "If-None-Match": header}
        )
        assert (response.status_code, response.content) == (304, b""), header
        assert response.headers["etag"] == etag
    other = await client.get(
        f"/posts/{post['id']}", headers={**owner.headers, "If-None-Match": '"other"'}
    )
    assert other.status_code == 200 and other.json()["Post"]["id"] == post["id"]


async def test_if_match_refuses_a_stale_edit_or_delete_with_412(client):
    owner = await create_user(client)
    post = await create_post(client, owner)
    read = await etag_of(client, owner, post["id"])
    # Someone else (another tab) edits it meanwhile.
    assert (
        await client.put(f"/posts/{post['id']}", json=EDIT, headers=owner.headers)
    ).status_code == 200
    for method, body in (("PUT", {**EDIT, "title": "Lost update"}), ("DELETE", None)):
        refused = await client.request(
            method,
            f"/posts/{post['id']}",
            json=body,
            headers={**owner.headers, "If-Match": read},
        )
        assert (refused.status_code, refused.json()) == (412, STALE), method
    kept = await client.get(f"/posts/{post['id']}", headers=owner.headers)
    assert kept.json()["Post"]["title"] == "Edited"
    current = kept.headers["etag"]
    # A weak tag never matches If-Match; the current one and * do.
    weak = await client.put(
        f"/posts/{post['id']}", json=EDIT, headers={**owner.headers, "If-Match": f"W/{current}"}
    )
    assert weak.status_code == 412
    for header in (current, "*"):
        body = {**EDIT, "title": f"With {header}"}
        done = await client.put(
            f"/posts/{post['id']}", json=body, headers={**owner.headers, "If-Match": header}
        )
        assert done.status_code == 200, done.text
    latest = await etag_of(client, owner, post["id"])
    gone = await client.delete(
        f"/posts/{post['id']}", headers={**owner.headers, "If-Match": latest}
    )
    assert gone.status_code == 204


async def test_of_simultaneous_edits_with_one_etag_exactly_one_wins(client):
    owner = await create_user(client)
    post = await create_post(client, owner)
    etag = await etag_of(client, owner, post["id"])
    headers = {**owner.headers, "If-Match": etag}
    answers = await asyncio.gather(
        *(
            client.put(
                f"/posts/{post['id']}", json={**EDIT, "title": f"Editor {n}"}, headers=headers
            )
            for n in range(4)
        )
    )
    assert sorted(answer.status_code for answer in answers) == [200, 412, 412, 412]
    [winner] = [answer for answer in answers if answer.status_code == 200]
    kept = await client.get(f"/posts/{post['id']}", headers=owner.headers)
    assert kept.json()["Post"]["title"] == winner.json()["title"]


async def test_without_if_match_the_courses_last_write_wins(client):
    owner = await create_user(client)
    post = await create_post(client, owner)
    for title in ("First", "Second"):
        done = await client.put(
            f"/posts/{post['id']}", json={**EDIT, "title": title}, headers=owner.headers
        )
        assert done.status_code == 200


@pytest.mark.parametrize(
    "header", ["abc", '"unterminated', "W/", '"a" "b"', '"a",,x', 'W/"x" junk', '"a\x7f"']
)
async def test_a_malformed_condition_is_422_and_changes_nothing(client, header):
    owner = await create_user(client)
    post = await create_post(client, owner)
    for method, name in (("GET", "If-None-Match"), ("PUT", "If-Match"), ("DELETE", "If-Match")):
        response = await client.request(
            method,
            f"/posts/{post['id']}",
            json=EDIT if method == "PUT" else None,
            headers={**owner.headers, name: header},
        )
        assert response.status_code == 422, (method, header, response.text)
        assert response.json()["detail"][0]["loc"] == ["header", name.lower()]
    kept = await client.get(f"/posts/{post['id']}", headers=owner.headers)
    assert kept.json()["Post"]["title"] == post["title"]
    too_long = await client.get(
        f"/posts/{post['id']}", headers={**owner.headers, "If-None-Match": '"a"' * 1000}
    )
    assert too_long.status_code == 422
