"""Logging: plain text for a person at a terminal, one JSON line per record for everything
else (containers, CI, files), and request ids."""

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, Literal

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.asgi import HTTPMiddleware

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's id is kept only if it is short and plain, so it cannot forge log lines or
# smuggle markup into whatever reads the logs; anything else gets a fresh id.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_logger = logging.getLogger("service.access")

# Attributes every LogRecord has; anything else was passed in `extra=` and is logged as a field.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "request_id",
    "color_message",  # uvicorn's copy of the message with terminal colours
    "block",
}

# `extra=BLOCK`: a message of several lines, written by the service itself (the start-up
# banner), that plain text shows as lines rather than escaped.
BLOCK = {"block": True}


class RequestIdFilter(logging.Filter):
    """Stamp every record with the id of the request being handled, if any."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        return True


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = getattr(record, "request_id", None)
        if rid:
            entry["request_id"] = rid
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _escaped(value: object) -> str:
    # A path can hold a decoded %0A: escaped, it cannot start a forged line of its own.
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode(), str(value))


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        message = record.getMessage()
        if getattr(record, "block", False):
            text = "\n".join(f"    {_escaped(part)}" for part in message.strip("\n").split("\n"))
            line = f"{stamp} {record.levelname} {record.name}:\n{text}"
        else:
            line = f"{stamp} {record.levelname} {record.name}: {_escaped(message)}"
        fields = {k: v for k, v in record.__dict__.items() if k not in _STANDARD}
        rid = getattr(record, "request_id", None)
        if rid:
            fields = {"request_id": rid, **fields}
        if fields:
            line += " " + " ".join(f"{k}={_escaped(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def resolved_format(fmt: Literal["auto", "json", "text"]) -> Literal["json", "text"]:
    """`auto`: plain text when stderr is a terminal, JSON lines otherwise."""
    if fmt != "auto":
        return fmt
    return "text" if sys.stderr.isatty() else "json"


def configure(level: str, fmt: Literal["auto", "json", "text"]) -> None:
    """Send every logger, uvicorn's included, through one handler on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    text = resolved_format(fmt) == "text"
    handler.setFormatter(TextFormatter() if text else JSONFormatter())
    handler.set_name("service")
    root = logging.getLogger()
    # Replace only our own handler, so that calling this again (each app, each worker) keeps
    # one line per record and leaves others' handlers (pytest's capture, say) in place.
    for old in [h for h in root.handlers if h.get_name() == "service"]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    # This middleware logs every request with its id; uvicorn's own access line would repeat it.
    logging.getLogger("uvicorn.access").disabled = True


# What else a request's end is reported to: its scope, status and duration in seconds.
type RequestObserver = Callable[[Scope, int, float], None]


class RequestLogMiddleware(HTTPMiddleware):
    """Give each request an id (the caller's `X-Request-ID` or a new one), return it in the
    response header, and log one line when the request ends; `observe` (the metrics) is told
    of the end too, from the same status and clock."""

    def __init__(self, app: ASGIApp, observe: RequestObserver | None = None) -> None:
        super().__init__(app)
        self.observe = observe

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        incoming = (
            dict(scope["headers"]).get(REQUEST_ID_HEADER.lower().encode(), b"").decode("latin-1")
        )
        rid = incoming if _VALID_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        # Not reset afterwards: the error handler that runs outside this middleware, in the
        # same task, still needs it; each request runs in a task of its own.
        request_id.set(rid)
        status_code = 500  # what the client gets if the app raises before it answers
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, rid)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            seconds = time.perf_counter() - started
            if self.observe is not None:
                self.observe(scope, status_code, seconds)
            access_logger.info(
                "%s %s %s",
                scope["method"],
                scope["path"],
                status_code,
                extra={
                    "method": scope["method"],
                    "path": scope["path"],
                    "status": status_code,
                    "latency_ms": round(seconds * 1000, 2),
                },
            )
