"""The HTTP status of each typed error, one map for every route (REST's `{code, message}` and the
OpenAI-compatible API's error shape alike); anything else Docent raises on purpose is 503."""

from __future__ import annotations

from store.exceptions import (
    AuthError,
    BodyTooLarge,
    DocentError,
    DocumentTooLarge,
    ForbiddenError,
    InputError,
    NotFound,
    RateLimited,
    UnsupportedFormat,
)

STATUS_BY_ERROR: list[tuple[type[DocentError], int]] = [
    (AuthError, 401),
    (ForbiddenError, 403),
    (NotFound, 404),
    (RateLimited, 429),
    (DocumentTooLarge, 413),
    (BodyTooLarge, 413),
    (UnsupportedFormat, 415),
    (InputError, 400),
]


def status_for(exc: DocentError) -> int:
    return next((status for kind, status in STATUS_BY_ERROR if isinstance(exc, kind)), 503)
