"""JSON request bodies, read only up to a size limit and decoded into a typed struct.

A body declared (Content-Length) over the limit is refused before a byte of it is read; one that streams
past the limit is refused when it does, with what was read so far dropped: never buffered whole. Both
are `BodyTooLarge` (413). Call this after the route has resolved its caller.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec
from starlette.requests import Request

from store.exceptions import BodyTooLarge, InputError

T = TypeVar("T")


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"request body over {limit} bytes", limit=limit)


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    received = bytearray()
    async for chunk in request.stream():
        received += chunk
        if len(received) > limit:
            raise _too_large(limit)
    return bytes(received)


async def read_json(request: Request, kind: type[T], limit: int, empty: bytes = b"") -> T:
    """The body as `kind`; InputError when it is not valid JSON of that shape."""
    raw = await read_body(request, limit)
    try:
        return msgspec.json.decode(raw or empty, type=kind)
    except msgspec.DecodeError as exc:
        raise InputError(f"bad request body: {exc}", field="body") from None
