"""Who is calling: signed expiring tokens for users, and the admin API key.

A token is `<payload>.<signature>`, both base64url without padding: the payload is the msgspec JSON of
`TokenPayload` {tenant, user, groups, roles, exp}, the signature HMAC-SHA256 over the payload's base64
text with the server secret. The secret and the admin key come from settings, or are generated once and
kept under the data dir with mode 0600 so every process of one machine agrees on them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path
from typing import Literal

import msgspec

from store.conversations import identifier
from store.exceptions import AuthError, ConfigError, ForbiddenError, InputError
from store.settings import Settings

Role = Literal["user", "reviewer", "admin"]
ROLES: tuple[Role, ...] = ("user", "reviewer", "admin")
SECRET_FILE = "secret"
ADMIN_KEY_FILE = "admin_api_key"
SECRET_BYTES = 32
MAX_TOKEN_CHARS = 4096
MAX_GROUPS = 64
ADMIN_KEY_USER = "admin-key"


class TokenPayload(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    tenant: str
    user: str
    groups: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ("user",)
    exp: int  # unix seconds


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller."""

    tenant: str
    user: str
    groups: tuple[str, ...] = ()
    roles: tuple[Role, ...] = ("user",)

    def has_role(self, role: Role) -> bool:
        return role in self.roles

    @property
    def is_admin(self) -> bool:
        return "admin" in self.roles


_payload_encoder = msgspec.json.Encoder()
_payload_decoder = msgspec.json.Decoder(TokenPayload)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _unb64(text: str) -> bytes:
    """Canonical unpadded base64url only: any other character, padding or unused bits is refused, so one
    token has exactly one spelling (the stdlib decoder silently skips junk characters)."""
    if not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise ValueError("not canonical base64url")
    data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(data) != text:
        raise ValueError("not canonical base64url")
    return data


def _signature(secret: bytes, payload_b64: str) -> bytes:
    return hmac.new(secret, payload_b64.encode(), hashlib.sha256).digest()


def _stored_value(path: Path, make: str) -> str:
    """The value kept at `path`, written once with mode 0600 (atomically: concurrent starters agree)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        temp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(make)
        try:
            os.link(temp, path)  # fails if another process got there first: then theirs wins
        except FileExistsError:
            pass
        finally:
            temp.unlink()
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    value = path.read_text().strip()
    if not value:
        raise ConfigError(f"{path} is empty: delete it to generate a new one")
    return value


def ensure_secret(settings: Settings) -> bytes:
    """The HMAC secret: settings.secret, else the one stored under the data dir (created on first use)."""
    if settings.secret:
        return settings.secret.encode()
    return _stored_value(settings.data_path / SECRET_FILE, secrets.token_urlsafe(SECRET_BYTES)).encode()


def ensure_admin_key(settings: Settings) -> str:
    """The admin API key: settings.admin_api_key, else the one stored under the data dir."""
    if settings.admin_api_key:
        return settings.admin_api_key
    return _stored_value(settings.data_path / ADMIN_KEY_FILE, secrets.token_urlsafe(SECRET_BYTES))


def sign_token(secret: bytes, payload: TokenPayload) -> str:
    payload_b64 = _b64(_payload_encoder.encode(payload))
    return f"{payload_b64}.{_b64(_signature(secret, payload_b64))}"


def verify_token(secret: bytes, token: str, now_s: float | None = None) -> Principal:
    """The principal a token names, or AuthError (malformed, bad signature, expired)."""
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_CHARS:
        raise AuthError("missing or oversized token")
    payload_b64, dot, signature_b64 = token.partition(".")
    if not dot:
        raise AuthError("malformed token")
    try:
        signature = _unb64(signature_b64)
    except (binascii.Error, ValueError):
        raise AuthError("malformed token") from None
    if not hmac.compare_digest(signature, _signature(secret, payload_b64)):
        raise AuthError("bad token signature")
    try:
        payload = _payload_decoder.decode(_unb64(payload_b64))
    except (binascii.Error, ValueError, msgspec.DecodeError):
        raise AuthError("malformed token payload") from None
    if payload.exp <= (time.time() if now_s is None else now_s):
        raise AuthError("token expired")
    return Principal(tenant=payload.tenant, user=payload.user, groups=payload.groups, roles=payload.roles)


def mint_token(
    settings: Settings,
    tenant: str,
    user: str,
    groups: tuple[str, ...] = (),
    roles: tuple[str, ...] = ("user",),
    ttl: int | None = None,
) -> str:
    """A signed token for `user` of `tenant`, valid `ttl` seconds (default settings.token_ttl_s)."""
    ttl_s = settings.token_ttl_s if ttl is None else ttl
    if ttl_s <= 0:
        raise InputError("ttl must be positive", field="ttl")
    bad_roles = [r for r in roles if r not in ROLES]
    if bad_roles or not roles:
        raise InputError(f"roles must be a non-empty subset of {ROLES}", field="roles")
    if len(groups) > MAX_GROUPS:
        raise InputError(f"at most {MAX_GROUPS} groups", field="groups")
    payload = TokenPayload(
        tenant=identifier(tenant, "tenant"),
        user=identifier(user, "user"),
        groups=tuple(identifier(g, "group") for g in groups),
        roles=tuple(r for r in ROLES if r in roles),
        exp=int(time.time()) + ttl_s,
    )
    return sign_token(ensure_secret(settings), payload)


class Authenticator:
    """Checks credentials against this process's secret and admin key."""

    def __init__(self, secret: bytes, admin_key: str) -> None:
        self.secret = secret
        self.admin_key = admin_key

    @classmethod
    def from_settings(cls, settings: Settings) -> Authenticator:
        return cls(ensure_secret(settings), ensure_admin_key(settings))

    def principal(self, token: str | None) -> Principal:
        if not token:
            raise AuthError("no token")
        return verify_token(self.secret, token)

    def is_admin_key(self, key: str | None) -> bool:
        return bool(key) and hmac.compare_digest(str(key).encode(), self.admin_key.encode())

    def admin(self, token: str | None, admin_key: str | None, tenant: str | None) -> Principal:
        """An admin principal: the admin key (acting on `tenant`) or an admin token (on its own tenant)."""
        if admin_key is not None:
            if not self.is_admin_key(admin_key):
                raise AuthError("bad admin key")
            return Principal(tenant=identifier(tenant, "tenant"), user=ADMIN_KEY_USER, roles=("admin",))
        principal = self.principal(token)
        if not principal.is_admin:
            raise ForbiddenError("admin role required")
        if tenant is not None and tenant != principal.tenant:
            raise ForbiddenError("an admin token acts on its own tenant only")
        return principal
