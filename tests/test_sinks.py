"""The counting sinks over real sockets: SMTP via smtplib, HTTP via aiohttp, threaded and standalone."""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import socket
import subprocess
import sys
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import aiohttp
import pytest

from actors.testing import HttpSink, SinkThread, SmtpSink

REPO = Path(__file__).resolve().parent.parent
STANDALONE_START_TIMEOUT_S = 60


def mail(message_id: str, body: str = "hello\n") -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "docent@localhost"
    msg["To"] = "ann@example.com, bob@example.com"
    msg["Subject"] = "report"
    msg["Message-ID"] = message_id
    msg.set_content(body)
    return msg


def send(port: int, msg: EmailMessage) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=5) as smtp:
        smtp.send_message(msg)


def smtp_dialogue(port: int, lines: list[bytes]) -> list[bytes]:
    """Send raw command lines and collect the first reply line to each."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        stream = sock.makefile("rb")
        replies = [stream.readline()]
        for line in lines:
            sock.sendall(line + b"\r\n")
            replies.append(stream.readline())
        return replies


async def test_smtp_sink_counts_deliveries_per_message_id() -> None:
    async with SmtpSink() as sink:
        await asyncio.to_thread(send, sink.port, mail("<k1@docent>", "line one\n.starts with a dot\n"))
        await asyncio.to_thread(send, sink.port, mail("<k1@docent>"))
        await asyncio.to_thread(send, sink.port, mail("<k2@docent>"))
        assert sink.deliveries_by_id == {"<k1@docent>": 2, "<k2@docent>": 1}
        assert sink.duplicates == 1
        first = sink.messages[0]
        assert first.rcpt_to == ("ann@example.com", "bob@example.com")
        assert first.mail_from == "docent@localhost"
        assert first.subject == "report"
        assert b"\n.starts with a dot" in first.data  # dot-stuffing undone
        stats = sink.stats()
        assert (stats["deliveries"], stats["unique_ids"], stats["duplicates"]) == (3, 2, 1)


async def test_smtp_sink_rejects_bad_sequences_and_changes_nothing() -> None:
    async with SmtpSink() as sink:
        replies = await asyncio.to_thread(
            smtp_dialogue,
            sink.port,
            [b"HELO me", b"RCPT TO:<a@b.c>", b"DATA", b"MAIL nonsense", b"BOGUS", b"NOOP", b"RSET", b"QUIT"],
        )
        codes = [r[:3] for r in replies]
        assert codes == [b"220", b"250", b"503", b"503", b"501", b"500", b"250", b"250", b"221"]
        assert sink.messages == []


async def test_smtp_fault_drop_after_data_stores_then_hangs_up() -> None:
    async with SmtpSink() as sink:
        sink.faults.smtp_drop_after_data = 1
        with pytest.raises(smtplib.SMTPServerDisconnected):
            await asyncio.to_thread(send, sink.port, mail("<k@docent>"))
        await asyncio.to_thread(send, sink.port, mail("<k@docent>"))  # the sender's retry
        assert sink.deliveries_by_id == {"<k@docent>": 2}
        assert sink.duplicates == 1


async def test_smtp_fault_fail_data_stores_nothing() -> None:
    async with SmtpSink() as sink:
        sink.faults.smtp_fail_data = 1
        with pytest.raises(smtplib.SMTPDataError):
            await asyncio.to_thread(send, sink.port, mail("<k@docent>"))
        assert sink.messages == []


async def test_http_sink_one_effect_per_idempotency_key() -> None:
    async with HttpSink() as sink, aiohttp.ClientSession() as client:
        bodies = []
        for _ in range(2):
            async with client.post(
                f"{sink.url}/orders", data=b'{"n":1}', headers={"Idempotency-Key": "k1"}
            ) as r:
                bodies.append((r.status, await r.read(), r.headers.get("Idempotent-Replayed")))
        assert bodies[0][:2] == bodies[1][:2]
        assert bodies[0][0] == 201
        assert (bodies[0][2], bodies[1][2]) == (None, "true")
        async with client.post(f"{sink.url}/orders", data=b'{"n":2}', headers={"Idempotency-Key": "k1"}) as r:
            assert r.status == 422  # same key, different request
        for _ in range(2):
            async with client.delete(f"{sink.url}/orders/7") as r:
                assert r.status == 200
        stats = sink.stats()["http"]
        assert stats["requests"] == 5
        assert stats["effects"] == 3  # k1 once, and each keyless DELETE
        assert stats["requests_by_key"] == {"k1": 3}
        assert stats["without_key"] == 2


async def test_http_sink_fault_after_effect_then_retry_gets_stored_response() -> None:
    async with HttpSink() as sink, aiohttp.ClientSession() as client:
        async with client.post(f"{sink.url}/_faults", json={"http_fail_after_effect": 1}) as r:
            assert r.status == 200
        async with client.post(f"{sink.url}/x", data=b"a", headers={"Idempotency-Key": "k"}) as r:
            assert r.status == 503
        async with client.post(f"{sink.url}/x", data=b"a", headers={"Idempotency-Key": "k"}) as r:
            assert r.status == 201
            assert json.loads(await r.read())["effect"] == 1
        async with client.post(f"{sink.url}/_faults", json={"no_such_fault": 1}) as r:
            assert r.status == 400
        assert sink.stats()["http"]["effects"] == 1


def test_threaded_sinks_and_combined_stats_endpoint() -> None:
    smtp = SmtpSink()
    with SinkThread(smtp, HttpSink(smtp=smtp)) as (_, http):
        send(smtp.port, mail("<t1@docent>"))
        send(smtp.port, mail("<t1@docent>"))
        with urllib.request.urlopen(f"{http.url}/_stats", timeout=5) as response:  # type: ignore[union-attr]
            stats = json.loads(response.read())
        assert stats["smtp"]["deliveries_by_id"] == {"<t1@docent>": 2}
        assert stats["smtp"]["duplicates"] == 1
        assert stats["http"]["requests"] == 0


def test_standalone_sinks_process() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "actors.testing.sinks", "--smtp-port", "0", "--http-port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        ports = json.loads(process.stdout.readline())
        send(ports["smtp_port"], mail("<s1@docent>"))
        with urllib.request.urlopen(ports["stats"], timeout=5) as response:
            stats = json.loads(response.read())
        assert stats["smtp"]["deliveries_by_id"] == {"<s1@docent>": 1}
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(STANDALONE_START_TIMEOUT_S) == 0
