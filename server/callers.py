"""Who is calling an HTTP route or a socket: the one place routes resolve their caller.

    principal(request)          a token (Authorization: Bearer, or ?token=)
    require_admin(conn, scope)  an admin: scope "tenant" takes the admin key (X-Admin-Key, acting on
                                ?tenant=) or an admin token (acting on its own tenant); scope "operator"
                                (the shared index, every tenant's traces) takes the admin key only. A
                                WebSocket may carry the key as ?admin_key= (browsers cannot set headers).

Routes resolve the caller before they read anything of the request's body.
"""

from __future__ import annotations

from typing import Literal

from starlette.requests import HTTPConnection, Request
from starlette.websockets import WebSocket

from server.auth import Principal
from server.services import services
from store.exceptions import AuthError

ADMIN_KEY_HEADER = "x-admin-key"
ADMIN_KEY_QUERY = "admin_key"
OPERATOR_TENANT = "default"  # what an operator's principal names when no ?tenant= is given

Scope = Literal["tenant", "operator"]


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.query_params.get("token")


def principal(request: Request) -> Principal:
    return services(request).auth.principal(bearer_token(request))


def _admin_key(conn: HTTPConnection) -> str | None:
    key = conn.headers.get(ADMIN_KEY_HEADER)
    if key is None and isinstance(conn, WebSocket):
        key = conn.query_params.get(ADMIN_KEY_QUERY)
    return key


def require_admin(conn: HTTPConnection, scope: Scope = "tenant") -> Principal:
    key = _admin_key(conn)
    tenant = conn.query_params.get("tenant")
    if scope == "operator":
        if key is None:
            raise AuthError("admin key required (X-Admin-Key)")
        tenant = tenant or OPERATOR_TENANT
    token = bearer_token(conn) if isinstance(conn, Request) and scope == "tenant" else None
    return services(conn).auth.admin(token, key, tenant)
