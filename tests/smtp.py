"""A real SMTP server on loopback (aiosmtpd) that keeps the messages it accepts."""

import asyncio
import logging
import re
import socket
import threading
import time
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller

TOKEN = re.compile(r"[?&]token=([A-Za-z0-9_-]+)")
# aiosmtpd logs every connection at INFO from its own thread; a test that sets the root
# logger to INFO would get its chatter, after pytest has closed that test's captured stream.
logging.getLogger("mail.log").setLevel(logging.WARNING)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class SMTPServer:
    """aiosmtpd in a thread of its own; `stop()` and `start()` again keep the port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or _free_port()
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()
        self._controller: Controller | None = None

    def start(self) -> "SMTPServer":
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [m for m in self.messages if m["To"] == address]

    async def received(self, address: str, count: int = 1) -> EmailMessage:
        """The `count`-th message to `address`, once it has arrived (waiting on the caller's
        loop, where the app's sender runs too), within 15 s."""
        for _ in range(750):
            arrived = self.to(address)
            if len(arrived) >= count:
                return arrived[count - 1]
            await asyncio.sleep(0.02)
        raise AssertionError(f"no message {count} to {address} within 15 s")

    def wait_sync(self, address: str, count: int = 1, timeout: float = 30) -> EmailMessage:
        """`received`, for tests whose server runs in another process."""
        deadline = time.monotonic() + timeout
        while len(self.to(address)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no message {count} to {address} within {timeout} s")
            time.sleep(0.05)
        return self.to(address)[count - 1]


def text_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, "no plain-text part"
    return str(part.get_content())


def html_of(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("html",))
    assert part is not None, "no HTML part"
    return str(part.get_content())


def token_in(message: EmailMessage) -> str:
    found = TOKEN.search(text_of(message))
    assert found, f"no link with a token in: {text_of(message)!r}"
    return found.group(1)
