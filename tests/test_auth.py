"""Tokens, the stored secret and admin key, and the REST API's access rules (real server, real Redis)."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from server.auth import (
    Authenticator,
    TokenPayload,
    ensure_admin_key,
    ensure_secret,
    mint_token,
    sign_token,
    verify_token,
)
from server.rest import sanitize_filename
from store.events import AnswerCompleted, UserMessage
from store.exceptions import AuthError, ForbiddenError, InputError, UnsupportedFormat
from store.redis import EmbeddedRedis, sync_client
from store.settings import Settings
from tests.server_proc import INGESTS_KEY, TEST_ADMIN_KEY, ServerProcess, StreamWriter, server_env

MAX_UPLOAD_BYTES = 10_000


# ---- tokens ----------------------------------------------------------------------------------------------


def test_token_round_trip_and_tampering(settings: Settings) -> None:
    token = mint_token(settings, "acme", "alice", groups=("legal",), roles=("user", "reviewer"), ttl=60)
    secret = ensure_secret(settings)
    principal = verify_token(secret, token)
    assert (principal.tenant, principal.user, principal.groups) == ("acme", "alice", ("legal",))
    assert principal.roles == ("user", "reviewer") and not principal.is_admin

    payload, _, signature = token.partition(".")
    forged_payload = sign_token(
        b"other", TokenPayload(tenant="acme", user="alice", roles=("admin",), exp=2**40)
    )
    for bad in [
        f"{forged_payload.partition('.')[0]}.{signature}",  # someone else's payload, our signature
        f"{payload}.{signature[:-1]}A" if not signature.endswith("A") else f"{payload}.{signature[:-1]}B",
        forged_payload,  # signed with another secret
        payload,
        "",
        "a.b.c",
        "x" * 5000,
    ]:
        with pytest.raises(AuthError):
            verify_token(secret, bad)


def test_expired_token_and_bad_mint_arguments(settings: Settings) -> None:
    secret = ensure_secret(settings)
    # Whole seconds: `int(time.time()) + 1` can be a millisecond away, so the clock is the test's own.
    exp = int(time.time()) + 60
    token = sign_token(secret, TokenPayload(tenant="acme", user="alice", exp=exp))
    assert verify_token(secret, token).user == "alice"
    assert verify_token(secret, token, now_s=exp - 0.001).user == "alice"
    with pytest.raises(AuthError, match="expired"):
        verify_token(secret, token, now_s=exp)
    with pytest.raises(InputError):
        mint_token(settings, "acme", "alice", roles=("root",))
    with pytest.raises(InputError):
        mint_token(settings, "ac/me", "alice")
    with pytest.raises(InputError):
        mint_token(settings, "acme", "{alice}")
    # The payload is strict: an unknown field (say, a smuggled claim) does not verify.
    import base64
    import hashlib
    import hmac

    body = (
        base64.urlsafe_b64encode(b'{"tenant":"a","user":"b","exp":9999999999,"sudo":true}')
        .rstrip(b"=")
        .decode()
    )
    sig = (
        base64.urlsafe_b64encode(hmac.new(secret, body.encode(), hashlib.sha256).digest())
        .rstrip(b"=")
        .decode()
    )
    with pytest.raises(AuthError, match="malformed"):
        verify_token(secret, f"{body}.{sig}")


def test_generated_secret_and_admin_key_are_stored_once_with_mode_0600(tmp_path: Path) -> None:
    settings = Settings.from_env({"DOCENT_DATA_DIR": str(tmp_path / "data")})
    secret, key = ensure_secret(settings), ensure_admin_key(settings)
    assert len(secret) >= 32 and len(key) >= 32 and secret.decode() != key
    for name in ("secret", "admin_api_key"):
        assert stat.S_IMODE(os.stat(tmp_path / "data" / name).st_mode) == 0o600
    assert ensure_secret(settings) == secret and ensure_admin_key(settings) == key  # stable
    token = mint_token(settings, "acme", "alice")
    assert Authenticator.from_settings(settings).principal(token).user == "alice"
    explicit = Settings.from_env({"DOCENT_DATA_DIR": str(tmp_path / "d2"), "DOCENT_SECRET": "s3"})
    assert ensure_secret(explicit) == b"s3" and not (tmp_path / "d2" / "secret").exists()


def test_admin_principal_rules(settings: Settings) -> None:
    auth = Authenticator.from_settings(settings)
    assert auth.admin(None, ensure_admin_key(settings), "acme").tenant == "acme"
    with pytest.raises(AuthError):
        auth.admin(None, "wrong", "acme")
    admin = mint_token(settings, "acme", "root", roles=("admin",))
    assert auth.admin(admin, None, None).tenant == "acme"
    with pytest.raises(ForbiddenError):
        auth.admin(admin, None, "other")  # an admin token stays in its tenant
    with pytest.raises(ForbiddenError):
        auth.admin(mint_token(settings, "acme", "alice"), None, None)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("report.pdf", "report.pdf"),
        ("../../etc/passwd.txt", "passwd.txt"),
        ("..\\..\\windows\\system.ini.md", "system.ini.md"),
        ("/abs/path/Notes Q3 (final).MD", "Notes_Q3_final.md"),
        (".hidden.txt", "hidden.txt"),
        ("....txt", "document.txt"),
        ("ｆｕｌｌ.txt", "full.txt"),
        ("a\x00b.txt", "a_b.txt"),
    ],
)
def test_upload_names_are_sanitised(name: str, expected: str) -> None:
    assert sanitize_filename(name) == expected


@pytest.mark.parametrize("name", ["run.sh", "x.exe", "noext", "../.bashrc", "doc.pdf.exe", "a.txt/"])
def test_upload_extensions_are_allowlisted(name: str) -> None:
    with pytest.raises(UnsupportedFormat):
        sanitize_filename(name)


# ---- REST over a real server -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def web(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    env = server_env(
        redis_server.url,
        tmp_path_factory.mktemp("web"),
        max_upload_bytes=str(MAX_UPLOAD_BYTES),
        allowed_origins="http://widget.example",
    )
    with ServerProcess(env) as process:
        yield process


@pytest.fixture
async def http(redis_url: str) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def bearer(
    web: ServerProcess, user: str, tenant: str = "acme", roles: tuple[str, ...] = ("user",)
) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint_token(web.settings, tenant, user, roles=roles, ttl=600)}"}


async def get(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    async with http.get(url, headers=headers or {}) as response:
        return response.status, await response.json()


async def new_conversation(web: ServerProcess, user: str, tenant: str = "acme", ask: bool = True) -> str:
    from websockets.asyncio.client import connect

    token = mint_token(web.settings, tenant, user, ttl=600)
    async with connect(f"{web.ws_url}?token={token}") as ws:
        await ws.send(json.dumps({"type": "hello"}))
        ready = json.loads(await ws.recv())
        if ask:
            await ws.send(
                json.dumps({"type": "ask", "text": f"{user}'s question", "client_message_id": "m1"})
            )
            assert json.loads(await ws.recv())["type"] == "accepted"
    return str(ready["conversation_id"])


async def test_health_and_readiness(web: ServerProcess, http: aiohttp.ClientSession) -> None:
    assert await get(http, f"{web.http_url}/healthz") == (200, {"ok": True})
    assert await get(http, f"{web.http_url}/readyz") == (200, {"ok": True, "redis": "ok"})


async def test_conversation_list_and_history_are_tenant_isolated(
    web: ServerProcess, http: aiohttp.ClientSession, redis_url: str
) -> None:
    alice = await new_conversation(web, "alice")
    await new_conversation(web, "bob")
    await new_conversation(web, "alice", tenant="evil")
    worker = StreamWriter(sync_client(redis_url), alice)
    ids = [
        worker.event(UserMessage(turn=1, text="q", user="alice", tenant="acme")),
        worker.delta("partial", 1),
    ]
    ids.append(worker.event(AnswerCompleted(turn=1, text="answer")))

    unused = await new_conversation(web, "alice", ask=False)
    status, body = await get(http, f"{web.http_url}/api/conversations", bearer(web, "alice"))
    assert status == 200
    assert [(c["id"], c["title"]) for c in body["conversations"]] == [(alice, "alice's question")]
    client = sync_client(redis_url)
    # A greeting writes nothing: only the conversation somebody asked in exists (and does not expire).
    assert client.exists(f"convmeta:{{{unused}}}") == 0 and client.ttl(f"convmeta:{{{alice}}}") == -1

    url = f"{web.http_url}/api/conversations/{alice}/events"
    status, page = await get(http, url, bearer(web, "alice"))
    assert status == 200 and [e["id"] for e in page["events"]] == [ids[0], ids[2]]  # no deltas in history
    assert page["events"][1]["event"]["text"] == "answer" and page["next_after"] == ids[2]
    status, page = await get(http, f"{url}?after={ids[0]}", bearer(web, "alice"))
    assert [e["id"] for e in page["events"]] == [ids[2]]
    assert (await get(http, f"{url}?token={mint_token(web.settings, 'acme', 'alice')}"))[0] == 200

    for headers, code in [
        (bearer(web, "bob"), 403),  # same tenant, other user
        (bearer(web, "alice", tenant="evil"), 403),  # same name, other tenant
        (bearer(web, "rev", tenant="evil", roles=("reviewer",)), 403),  # a reviewer of another tenant
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
    ]:
        status, body = await get(http, url, headers)
        assert status == code and body["code"] in ("forbidden", "unauthorized"), (headers, body)
    assert (await get(http, url, bearer(web, "rev", roles=("reviewer",))))[0] == 200
    assert (await get(http, f"{url}?after=../x", bearer(web, "alice")))[0] == 400
    assert (await get(http, f"{web.http_url}/api/conversations/{{x}}/events", bearer(web, "alice")))[0] == 403


async def upload(
    http: aiohttp.ClientSession,
    web: ServerProcess,
    filename: str,
    data: bytes,
    headers: dict[str, str],
    query: str = "",
) -> tuple[int, Any]:
    """POST a multipart body built by hand: the file name arrives exactly as written, unescaped."""
    boundary = "docentboundary7f3a"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    headers = {**headers, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    async with http.post(f"{web.http_url}/api/documents{query}", data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_uploads_need_an_admin_and_stay_inside_the_tenant_dir(
    web: ServerProcess, http: aiohttp.ClientSession, redis_url: str
) -> None:
    uploads = web.settings.data_path / "uploads"
    admin_key = {"X-Admin-Key": TEST_ADMIN_KEY}
    status, body = await upload(http, web, "../../../evil.txt", b"hello", admin_key, "?tenant=acme")
    assert status == 202, body
    assert body["document"] == "evil.txt" and body["bytes"] == 5
    assert (uploads / "acme" / "evil.txt").read_bytes() == b"hello"
    assert not (web.settings.data_path.parent / "evil.txt").exists()
    # The same name again does not overwrite.
    status, body = await upload(http, web, "evil.txt", b"other", bearer(web, "root", roles=("admin",)))
    assert status == 202 and body["document"] != "evil.txt" and body["document"].startswith("evil-")
    assert (uploads / "acme" / "evil.txt").read_bytes() == b"hello"
    ingests: Any = sync_client(redis_url).lrange(INGESTS_KEY, 0, -1)
    assert [i.decode().split(":", 1)[0] for i in ingests] == ["acme", "acme"]

    refused = [
        ("x.txt", b"a", bearer(web, "alice"), "", 403),  # not an admin
        ("x.txt", b"a", {}, "", 401),
        ("x.txt", b"a", {"X-Admin-Key": "wrong"}, "?tenant=acme", 401),
        ("x.txt", b"a", admin_key, "?tenant=../etc", 400),  # a tenant is an identifier, not a path
        ("x.txt", b"a", bearer(web, "root", roles=("admin",)), "?tenant=evil", 403),
        ("x.sh", b"a", admin_key, "?tenant=acme", 415),
        ("big.txt", b"a" * (MAX_UPLOAD_BYTES + 1), admin_key, "?tenant=acme", 413),
        ("huge.txt", b"a" * (MAX_UPLOAD_BYTES * 10), admin_key, "?tenant=acme", 413),
    ]
    for name, data, headers, query, code in refused:
        status, body = await upload(http, web, name, data, headers, query)
        assert status == code, (name, query, body)
    assert sorted(p.name for p in uploads.rglob("*") if p.is_file()) == sorted(
        ["evil.txt", body_name(uploads)]
    )
    assert not (uploads / "etc").exists() and not (uploads / "evil").exists()


def body_name(uploads: Path) -> str:
    return next(p.name for p in (uploads / "acme").iterdir() if p.name.startswith("evil-"))


async def test_cors_allows_listed_origins_only(web: ServerProcess, http: aiohttp.ClientSession) -> None:
    headers = {"Origin": "http://widget.example", "Access-Control-Request-Method": "GET",
               "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    async with http.options(f"{web.http_url}/api/conversations", headers=headers) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == "http://widget.example"
    async with http.options(
        f"{web.http_url}/api/conversations", headers={**headers, "Origin": "http://x.example"}
    ) as r:
        assert r.status == 400 and "Access-Control-Allow-Origin" not in r.headers


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:5] + "!" + s[5:],  # a junk character the stdlib decoder skips
        lambda s: s + "%%",
        lambda s: s[:8] + "\n" + s[8:],
        lambda s: s + "==",  # padding
        lambda s: s.replace("-", "+").replace("_", "/") if ("-" in s or "_" in s) else s + "+",  # base64
        lambda s: (
            s[:-1]
            + "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[
                "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_".index(s[-1]) ^ 1
            ]
        ),  # unused low bits of the last character flipped: same bytes, another spelling
    ],
)
def test_a_token_with_junk_or_non_canonical_characters_is_refused(settings: Settings, mangle: Any) -> None:
    secret = ensure_secret(settings)
    token = sign_token(secret, TokenPayload(tenant="acme", user="alice", exp=int(time.time()) + 60))
    payload, _, signature = token.partition(".")
    forged = f"{payload}.{mangle(signature)}"
    assert forged != token
    with pytest.raises(AuthError):
        verify_token(secret, forged)
    with pytest.raises(AuthError):
        verify_token(secret, f"{mangle(payload)}.{signature}")
