"""Local delivery sinks that count what arrives: an SMTP server and an HTTP endpoint.

They stand in for a mail relay and an external API in tests and in `docent chaos`, and answer one
question: did a side effect happen once, even when the sender retried? The SMTP sink counts deliveries
per Message-ID; the HTTP sink counts requests per Idempotency-Key and answers a repeated key with the
stored response (one effect, several attempts). Faults can be injected to make senders retry.

    async with SmtpSink() as smtp, HttpSink(smtp=smtp) as http: ...    # in a test's event loop
    with SinkThread(SmtpSink(), HttpSink()) as (smtp, http): ...        # from synchronous code
    python -m actors.sinks --smtp-port 2525 --http-port 8025            # standalone; GET /_stats

Both are for local use: they bind to 127.0.0.1 by default and keep everything in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import re
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from email import message_from_bytes, policy
from typing import Any

import msgspec
from aiohttp import web

DEFAULT_HOST = "127.0.0.1"
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
MAX_LINE_BYTES = 64 * 1024
SMTP_IDLE_TIMEOUT_S = 60.0
THREAD_START_TIMEOUT_S = 10.0
STATS_PATH = "/_stats"

MAIL_FROM = re.compile(rb"^MAIL FROM:\s*<([^>]*)>", re.IGNORECASE)
RCPT_TO = re.compile(rb"^RCPT TO:\s*<([^>]+)>", re.IGNORECASE)


def _now_ms() -> int:
    return int(time.time() * 1000)


class ReceivedMail(msgspec.Struct, frozen=True, kw_only=True):
    mail_from: str
    rcpt_to: tuple[str, ...]
    message_id: str  # "" when the message had none
    subject: str
    data: bytes
    at_ms: int


class Faults(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Injected failures, each consumed once per affected delivery."""

    smtp_drop_after_data: int = 0  # store the message, then hang up before the 250: the sender must retry
    smtp_fail_data: int = 0  # answer DATA with 451 and store nothing
    http_fail_after_effect: int = 0  # do the effect and store its response, but answer 503 this time
    http_fail_before_effect: int = 0  # answer 503 with no effect


class SmtpSink:
    """A minimal SMTP server (EHLO/HELO, MAIL, RCPT, DATA, RSET, NOOP, VRFY, QUIT): enough for smtplib."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *, hostname: str = "docent-sink") -> None:
        self.host = host
        self._requested_port = port
        self.hostname = hostname
        self.faults = Faults()
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
            self.faults = Faults()

    def _store(self, mail: ReceivedMail) -> None:
        with self._lock:
            self._messages.append(mail)

    def consume_fault(self, name: str) -> bool:
        with self._lock:
            left = getattr(self.faults, name)
            if left > 0:
                setattr(self.faults, name, left - 1)
                return True
            return False

    def set_faults(self, faults: Faults) -> None:
        with self._lock:
            self.faults = faults

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
        if self.sink.consume_fault("smtp_fail_data"):
            await self.reply("451 injected temporary failure")
            return True
        self.sink._store(_parse_mail(mail_from, rcpt_to, content))
        if self.sink.consume_fault("smtp_drop_after_data"):
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
        at_ms=_now_ms(),
    )


class HttpAttempt(msgspec.Struct, frozen=True, kw_only=True):
    method: str
    path: str
    key: str  # the Idempotency-Key header, "" when absent
    body_sha256: str
    at_ms: int


class _Stored(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: tuple[str, str, str]
    status: int
    body: bytes


class HttpSink:
    """An HTTP endpoint that answers every path and method, idempotently per Idempotency-Key.

    A new key (or a request without one) is one effect; a repeated key gets the stored response and is
    one more attempt, not another effect; a repeated key with a different request is a 422, as a
    payment API would answer. `GET /_stats` returns the counters (with the SMTP sink's when attached),
    `POST /_reset` clears them, `POST /_faults` sets `Faults` fields. Helpers for tests:
    `/_redirect?to=URL` (302) and `/_bytes?n=N` (N bytes of text).
    """

    def __init__(self, host: str = DEFAULT_HOST, port: int = 0, *, smtp: SmtpSink | None = None) -> None:
        self.host = host
        self._requested_port = port
        self.smtp = smtp
        self.faults = Faults()
        self._lock = threading.Lock()
        self._attempts: list[HttpAttempt] = []
        self._stored: dict[str, _Stored] = {}
        self._effects = 0
        self._runner: web.AppRunner | None = None
        self._port = 0

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the HTTP sink is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def attempts(self) -> list[HttpAttempt]:
        with self._lock:
            return list(self._attempts)

    @property
    def requests_by_key(self) -> dict[str, int]:
        with self._lock:
            return dict(Counter(a.key for a in self._attempts if a.key))

    def stats(self) -> dict[str, Any]:
        by_key = self.requests_by_key
        with self._lock:
            counters: dict[str, Any] = {
                "requests": len(self._attempts),
                "effects": self._effects,
                "unique_keys": len(by_key),
                "duplicates": sum(n - 1 for n in by_key.values()),
                "without_key": sum(1 for a in self._attempts if not a.key),
                "requests_by_key": by_key,
            }
        return {"http": counters, "smtp": self.smtp.stats()} if self.smtp is not None else {"http": counters}

    def reset(self) -> None:
        with self._lock:
            self._attempts.clear()
            self._stored.clear()
            self._effects = 0
            self.faults = Faults()
        if self.smtp is not None:
            self.smtp.reset()

    def consume_fault(self, name: str) -> bool:
        with self._lock:
            left = getattr(self.faults, name)
            if left > 0:
                setattr(self.faults, name, left - 1)
                return True
            return False

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_MESSAGE_BYTES)
        app.router.add_get(STATS_PATH, self._stats)
        app.router.add_post("/_reset", self._reset)
        app.router.add_post("/_faults", self._set_faults)
        app.router.add_get("/_redirect", self._redirect)
        app.router.add_get("/_bytes", self._bytes)
        app.router.add_route("*", "/{tail:.*}", self._effect)
        return app

    async def start(self) -> HttpSink:
        runner = web.AppRunner(self.app(), access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> HttpSink:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    async def _set_faults(self, request: web.Request) -> web.Response:
        try:
            faults = msgspec.json.decode(await request.read(), type=Faults)
        except msgspec.DecodeError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        with self._lock:
            self.faults = faults
        if self.smtp is not None:
            self.smtp.set_faults(msgspec.structs.replace(faults))
        return web.json_response(msgspec.to_builtins(faults))

    async def _redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query.get("to", "/"))

    async def _bytes(self, request: web.Request) -> web.Response:
        raw = request.query.get("n", "0")
        if not raw.isdigit():
            raise web.HTTPBadRequest(text="n must be a non-negative integer")
        n = min(int(raw), MAX_MESSAGE_BYTES)
        return web.Response(body=b"x" * n, content_type="text/plain")

    async def _effect(self, request: web.Request) -> web.Response:
        body = await request.read()
        key = request.headers.get("Idempotency-Key", "")
        digest = hashlib.sha256(body).hexdigest()
        attempt = HttpAttempt(
            method=request.method, path=request.path, key=key, body_sha256=digest, at_ms=_now_ms()
        )
        fingerprint = (request.method, request.path, digest)
        with self._lock:
            self._attempts.append(attempt)
        if self.consume_fault("http_fail_before_effect"):
            return web.json_response({"error": "injected failure before the effect"}, status=503)
        stored, replayed = self._effect_once(key, fingerprint, len(body))
        if stored.fingerprint != fingerprint:
            return web.json_response({"error": "Idempotency-Key reused with a different request"}, status=422)
        if not replayed and self.consume_fault("http_fail_after_effect"):
            return web.json_response({"error": "injected failure after the effect"}, status=503)
        headers = {"Idempotent-Replayed": "true"} if replayed else {}
        return web.Response(
            body=stored.body, status=stored.status, content_type="application/json", headers=headers
        )

    def _effect_once(self, key: str, fingerprint: tuple[str, str, str], size: int) -> tuple[_Stored, bool]:
        with self._lock:
            if key and key in self._stored:
                return self._stored[key], True
            self._effects += 1
            method, path, _ = fingerprint
            payload = {"effect": self._effects, "method": method, "path": path, "key": key, "bytes": size}
            stored = _Stored(
                fingerprint=fingerprint,
                status=201 if method == "POST" else 200,
                body=json.dumps(payload).encode(),
            )
            if key:
                self._stored[key] = stored
            return stored, False


class SinkThread:
    """Runs sinks on an event loop in a daemon thread, for synchronous tests and tools."""

    def __init__(self, *sinks: SmtpSink | HttpSink) -> None:
        self.sinks = sinks
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="docent-sinks", daemon=True)

    def _call(self, factory: Callable[[], Awaitable[Any]]) -> Any:
        async def run() -> Any:
            return await factory()

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(THREAD_START_TIMEOUT_S)

    def __enter__(self) -> tuple[SmtpSink | HttpSink, ...]:
        self._thread.start()
        try:
            for sink in self.sinks:
                self._call(sink.start)
        except BaseException:
            self.__exit__()
            raise
        return self.sinks

    def __exit__(self, *exc: object) -> None:
        for sink in reversed(self.sinks):
            self._call(sink.stop)  # stopping a sink that never started is a no-op
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(THREAD_START_TIMEOUT_S)
        self._loop.close()


async def serve(host: str, smtp_port: int, http_port: int) -> None:
    """Run both sinks until SIGINT/SIGTERM; print their ports as one JSON line first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SmtpSink(host, smtp_port) as smtp, HttpSink(host, http_port, smtp=smtp) as http:
        print(
            json.dumps({"smtp_port": smtp.port, "http_port": http.port, "stats": f"{http.url}{STATS_PATH}"})
        )
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m actors.sinks", description="Counting SMTP and HTTP sinks."
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--http-port", type=int, default=8025)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.smtp_port, args.http_port))


if __name__ == "__main__":
    main()
