"""The HTML pages (chat, reviewer console, admin console): one template loader, one set of headers.

Each page gets a fresh CSP nonce for its one inline bootstrap script; everything else is same-origin, and
the page may connect (fetch, WebSocket) to its own origin and the configured `DOCENT_ALLOWED_ORIGINS` only
(a `*` there is not copied into the CSP). The URL may carry a token (`?token=`), so no page sends a
Referer.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response
from starlette.templating import Jinja2Templates

import web

WEB_DIR = Path(web.__file__).resolve().parent
NONCE_BYTES = 16
WS_SCHEMES = {"http": "ws", "https": "wss"}

templates = Jinja2Templates(directory=str(WEB_DIR / "templates"))


def connect_sources(allowed_origins: frozenset[str]) -> str:
    """`'self'` and each listed origin, with its WebSocket twin (ws: for http:, wss: for https:)."""
    sources = ["'self'"]
    for origin in sorted(allowed_origins - {"*"}):
        scheme, sep, rest = origin.partition("://")
        sources.append(origin)
        if sep and scheme in WS_SCHEMES:
            sources.append(f"{WS_SCHEMES[scheme]}://{rest}")
    return " ".join(sources)


def render_page(request: Request, template: str, *, framable: bool = True) -> Response:
    """`template` with a nonce; `framable=False` (the admin console) also forbids framing, form posts
    and caching."""
    nonce = secrets.token_urlsafe(NONCE_BYTES)
    response = templates.TemplateResponse(request, template, {"nonce": nonce})
    csp = (
        f"default-src 'self'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; "
        f"connect-src {connect_sources(request.app.state.services.allowed_origins)}; img-src 'self' data:; "
        "base-uri 'none'; "
    )
    csp += "frame-ancestors 'self'" if framable else "frame-ancestors 'none'; form-action 'none'"
    response.headers["Content-Security-Policy"] = csp
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Content-Type-Options"] = "nosniff"
    if not framable:
        response.headers["Cache-Control"] = "no-store"
    return response
