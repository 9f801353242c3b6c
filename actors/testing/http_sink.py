"""A counting HTTP sink: an endpoint that applies each Idempotency-Key once, as a payments API would.

It stands in for an external API in tests and in `docent chaos`: it counts requests per Idempotency-Key and
answers a repeated key with the stored response (one effect, several attempts). It binds to 127.0.0.1 by
default and keeps everything in memory; faults (`actors.testing.sink_faults`) make senders retry.

    async with HttpSink(smtp=smtp) as http: http.url, http.requests_by_key, http.stats()
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from typing import Any

import msgspec
from aiohttp import web

from actors.testing.sink_faults import FaultBudget, Faults
from actors.testing.smtp_sink import DEFAULT_HOST, MAX_MESSAGE_BYTES, SmtpSink
from store.clock import now_ms

STATS_PATH = "/_stats"


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
        self.budget = FaultBudget()
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
    def faults(self) -> Faults:
        """The faults left to inject; set a field to arm one."""
        return self.budget.faults

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
        self.budget.set(Faults())
        if self.smtp is not None:
            self.smtp.reset()

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
        self.budget.set(faults)
        if self.smtp is not None:
            self.smtp.budget.set(faults)
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
            method=request.method, path=request.path, key=key, body_sha256=digest, at_ms=now_ms()
        )
        fingerprint = (request.method, request.path, digest)
        with self._lock:
            self._attempts.append(attempt)
        if self.budget.consume("http_fail_before_effect"):
            return web.json_response({"error": "injected failure before the effect"}, status=503)
        stored, replayed = self._effect_once(key, fingerprint, len(body))
        if stored.fingerprint != fingerprint:
            return web.json_response({"error": "Idempotency-Key reused with a different request"}, status=422)
        if not replayed and self.budget.consume("http_fail_after_effect"):
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
