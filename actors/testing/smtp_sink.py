"""A counting SMTP sink: a minimal SMTP server that keeps what it receives, per Message-ID.

It stands in for a mail relay in tests and in `docent chaos`, and answers one question: did an email go
out once, even when the sender retried? It binds to 127.0.0.1 by default and keeps everything in memory;
faults (`actors.testing.sink_faults`) make senders retry.

    async with SmtpSink() as smtp: smtp.port, smtp.messages, smtp.deliveries_by_id
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections import Counter
from email import message_from_bytes, policy
from typing import Any

import msgspec

from actors.testing.sink_faults import FaultBudget, Faults
from store.clock import now_ms

DEFAULT_HOST = "127.0.0.1"
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024
SMTP_IDLE_TIMEOUT_S = 60.0

MAIL_FROM = re.compile(rb"^MAIL FROM:\s*<([^>]*)>", re.IGNORECASE)
RCPT_TO = re.compile(rb"^RCPT TO:\s*<([^>]+)>", re.IGNORECASE)


class ReceivedMail(msgspec.Struct, frozen=True, kw_only=True):
    mail_from: str
    rcpt_to: tuple[str, ...]
    message_id: str  # "" when the message had none
    subject: str
    data: bytes
    at_ms: int


class SmtpSink:
    """A minimal SMTP server (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, VRFY, QUIT): enough for smtplib."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *, hostname: str = "docent-sink") -> None:
        self.host = host
        self._requested_port = port
        self.hostname = hostname
        self.budget = FaultBudget()
        self._lock = threading.Lock()
        self._messages: list[ReceivedMail] = []
        self._server: asyncio.Server | None = None
        self._sessions: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the SMTP sink is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def faults(self) -> Faults:
        """The faults left to inject; set a field to arm one (`sink.faults.smtp_fail_data = 1`)."""
        return self.budget.faults

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    @property
    def deliveries_by_id(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(m.message_id for m in self._messages if m.message_id))

    @property
    def duplicates(self) -> int:
        return sum(n - 1 for n in self.deliveries_by_id.values())

    def stats(self) -> dict[str, Any]:
        by_id = self.deliveries_by_id
        with self._lock:
            total, without_id = len(self._messages), sum(1 for m in self._messages if not m.message_id)
        return {
            "deliveries": total,
            "unique_ids": len(by_id),
            "duplicates": sum(n - 1 for n in by_id.values()),
            "without_id": without_id,
            "deliveries_by_id": by_id,
        }

    def reset(self) -> None:
        with self._lock:
            self._messages.clear()
        self.budget.set(Faults())

    def _store(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._messages.append(mail)

    async def start(self) -> SmtpSink:
        self._server = await asyncio.start_server(
            self._serve, self.host, self._requested_port, limit=MAX_LINE_BYTES
        )
        return self

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for task in list(self._sessions):
            task.cancel()
        await asyncio.gather(*self._sessions, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> SmtpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._sessions.add(task)
        try:
            await _SmtpSession(self, reader, writer).run()
        except (
            ConnectionError,
            TimeoutError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # a client that hangs up or misbehaves loses its session, nothing else
        finally:
            writer.close()
            if task is not None:
                self._sessions.discard(task)


class _SmtpSession:
    def __init__(self, sink: SmtpSink, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sink, self.reader, self.writer = sink, reader, writer
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []

    async def reply(self, line: str) -> None:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()

    async def run(self) -> None:
        await self.reply(f"220 {self.sink.hostname} ESMTP docent sink")
        while True:
            line = await asyncio.wait_for(self.reader.readline(), SMTP_IDLE_TIMEOUT_S)
            if not line:
                return
            if not await self.handle(line.rstrip(b"\r\n")):
                return

    async def handle(self, line: bytes) -> bool:
        verb = line.split(b" ", 1)[0].upper()
        match verb:
            case b"EHLO":
                await self.reply(
                    f"250-{self.sink.hostname}\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
                    f"250-SIZE {MAX_MESSAGE_BYTES}\r\n250 HELP"
                )
            case b"HELO":
                await self.reply(f"250 {self.sink.hostname}")
            case b"MAIL":
                await self.mail(line)
            case b"RCPT":
                await self.rcpt(line)
            case b"DATA":
                return await self.data()
            case b"RSET":
                self.mail_from, self.rcpt_to = None, []
                await self.reply("250 OK")
            case b"NOOP":
                await self.reply("250 OK")
            case b"VRFY":
                await self.reply("252 cannot verify, will accept")
            case b"QUIT":
                await self.reply("221 bye")
                return False
            case _:
                await self.reply("500 command not recognized")
        return True

    async def mail(self, line: bytes) -> None:
        match = MAIL_FROM.match(line)
        if match is None:
            await self.reply("501 syntax: MAIL FROM:<address>")
        elif self.mail_from is not None:
            await self.reply("503 nested MAIL command")
        else:
            self.mail_from, self.rcpt_to = match.group(1).decode("utf-8", "replace"), []
            await self.reply("250 OK")

    async def rcpt(self, line: bytes) -> None:
        match = RCPT_TO.match(line)
        if self.mail_from is None:
            await self.reply("503 need MAIL before RCPT")
        elif match is None:
            await self.reply("501 syntax: RCPT TO:<address>")
        else:
            self.rcpt_to.append(match.group(1).decode("utf-8", "replace"))
            await self.reply("250 OK")

    async def data(self) -> bool:
        if self.mail_from is None or not self.rcpt_to:
            await self.reply("503 need MAIL and RCPT before DATA")
            return True
        await self.reply("354 end data with <CR><LF>.<CR><LF>")
        content = await self.read_data()
        mail_from, rcpt_to = self.mail_from, tuple(self.rcpt_to)
        self.mail_from, self.rcpt_to = None, []
        if content is None:
            await self.reply(f"552 message exceeds {MAX_MESSAGE_BYTES} bytes")
            return True
        if self.sink.budget.consume("smtp_fail_data"):
            await self.reply("451 injected temporary failure")
            return True
        self.sink._store(_parse_mail(mail_from, rcpt_to, content))
        if self.sink.budget.consume("smtp_drop_after_data"):
            return False  # delivered, but the sender never hears so: it will retry
        await self.reply("250 OK queued")
        return True

    async def read_data(self) -> bytes | None:
        lines: list[bytes] = []
        size = 0
        while True:
            line = await asyncio.wait_for(self.reader.readline(), SMTP_IDLE_TIMEOUT_S)
            if not line:
                raise ConnectionError("client hung up during DATA")
            if line in (b".\r\n", b".\n"):
                return b"".join(lines) if size <= MAX_MESSAGE_BYTES else None
            if line.startswith(b".."):
                line = line[1:]
            size += len(line)
            if size <= MAX_MESSAGE_BYTES:
                lines.append(line)


def _parse_mail(mail_from: str, rcpt_to: tuple[str, ...], content: bytes) -> ReceivedMail:
    parsed = message_from_bytes(content, policy=policy.default)
    return ReceivedMail(
        mail_from=mail_from,
        rcpt_to=rcpt_to,
        message_id=str(parsed.get("Message-ID", "")).strip(),
        subject=str(parsed.get("Subject", "")),
        data=content,
        at_ms=now_ms(),
    )
