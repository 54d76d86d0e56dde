"""Request ids and the one log line each request leaves."""

import json
import logging
import re

import httpx
import pytest

from service import logs
from service.main import create_app
from tests.factories import create_admin, create_user


def access_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "service.access"]


async def test_a_given_request_id_comes_back(client):
    response = await client.get("/healthz", headers={"X-Request-ID": "trace-42.a:b_c"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "trace-42.a:b_c"


async def test_a_request_id_is_made_when_none_is_given(client):
    first = await client.get("/healthz")
    second = await client.get("/healthz")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("given", ["has space", "x" * 129, "<script>", "a\tb"])
async def test_an_unsafe_request_id_is_replaced(client, given):
    response = await client.get("/healthz", headers={"X-Request-ID": given})
    assert response.headers["x-request-id"] != given
    assert len(response.headers["x-request-id"]) == 32


async def test_every_request_leaves_one_json_line_with_its_id(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    response = await client.get("/posts/", headers={"X-Request-ID": "req-1"})
    assert response.status_code == 401
    [record] = access_records(caplog)
    line = json.loads(logs.JSONFormatter().format(record))
    assert line["request_id"] == "req-1"
    assert line["method"] == "GET"
    assert line["path"] == "/posts/"
    assert line["status"] == 401
    assert line["latency_ms"] >= 0
    assert line["level"] == "INFO" and line["logger"] == "service.access"
    assert line["time"].endswith("+00:00")


async def test_text_format_carries_the_same_fields(client, caplog):
    caplog.set_level(logging.INFO, logger="service.access")
    await client.get("/healthz", headers={"X-Request-ID": "req-2"})
    [record] = access_records(caplog)
    text = logs.TextFormatter().format(record)
    assert re.match(r"\d\d:\d\d:\d\d INFO service.access: GET /healthz 200 request_id=req-2 ", text)
    assert "latency_ms=" in text


async def test_an_unhandled_error_logs_its_request_id(settings, caplog):
    app = create_app(settings)
    caplog.set_level(logging.INFO, logger="service.access")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/boom", headers={"X-Request-ID": "req-err"})
    assert response.status_code == 500
    assert response.headers["x-request-id"] == "req-err"
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    formatted = json.loads(logs.JSONFormatter().format(error))
    assert formatted["request_id"] == "req-err"
    assert "RuntimeError: boom" in formatted["exception"]
    [access] = access_records(caplog)
    assert access.__dict__["status"] == 500  # an `extra=` field


class Lines(logging.Handler):
    """The lines a handler of the service's own writes: request ids stamped as they are
    logged, in the JSON format."""

    def __init__(self) -> None:
        super().__init__()
        self.addFilter(logs.RequestIdFilter())
        self.setFormatter(logs.JSONFormatter())
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_an_admin_action_leaves_one_audit_line_with_its_request_id(client, caplog):
    """Done or refused, an admin action's line names its audit document and carries the id
    of the request, which ties it to the request's access line."""
    caplog.set_level(logging.INFO, logger="service")
    admin, user = await create_admin(client), await create_user(client)
    handler = Lines()
    logging.getLogger("service.audit").addHandler(handler)
    try:
        done = await client.post(
            f"/admin/users/{user.id}/deactivate",
            json={"reason": "spam"},
            headers={**admin.headers, "X-Request-ID": "audit-1"},
        )
        refused = await client.post(
            f"/admin/users/{'0' * 24}/activate",
            headers={**admin.headers, "X-Request-ID": "audit-2"},
        )
    finally:
        logging.getLogger("service.audit").removeHandler(handler)
    assert (done.status_code, refused.status_code) == (200, 404)
    log = (await client.get("/admin/audit", headers=admin.headers)).json()
    assert [entry["outcome"] for entry in log] == ["refused", "done"]  # newest first
    for line in handler.lines:
        assert str(line.pop("time")).endswith("+00:00")
        assert str(line.pop("message")).startswith("Admin action ")
    assert handler.lines == [
        {
            "level": "INFO",
            "logger": "service.audit",
            "request_id": request_id,
            "audit_id": entry["id"],
            "action": entry["action"],
            "outcome": entry["outcome"],
            "target": f"user:{entry['target']['id']}",
            "actor": admin.id,
        }
        for request_id, entry in zip(["audit-1", "audit-2"], reversed(log), strict=True)
    ]


def test_text_lines_cannot_be_forged_through_a_path():
    record = logging.makeLogRecord(
        {
            "name": "service.access",
            "levelname": "INFO",
            "msg": "GET %s 404",
            "args": ("/posts/\nINFO service.access: GET /fake 200",),
            "path": "/x\r\ny",
        }
    )
    text = logs.TextFormatter().format(record)
    assert "\n" not in text and "\r" not in text
    assert "/posts/\\nINFO" in text and "path=/x\\r\\ny" in text
