"""What the Redis-backed stores share: Lua script loading, key checks, and one sans-IO runner.

Each store operation is written once as a *plan*: a generator that yields Redis operations and
receives their results. `SyncRunner` (dramatiq actor threads) and `AsyncRunner` (the web process)
drive the same plan, so the sync and async APIs cannot drift apart. Errors raised by our Lua
scripts (`redis.error_reply("CODE message")`) and Redis failures are translated here, at the edge.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, TypeVar

import redis
import redis.asyncio as aredis

from store import metrics
from store.exceptions import (
    CorruptLog,
    DocentError,
    ForbiddenError,
    InputError,
    LeaseHeld,
    LogError,
    StaleEpoch,
)
from store.redis import REDIS_ERRORS, UNAVAILABLE_MESSAGE, is_cluster_client

NoScriptError = redis.exceptions.NoScriptError

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_KEY_PART_CHARS = 200
# Braces would move a key's Redis Cluster hash tag; whitespace and control characters have no business in ids.
_KEY_PART = re.compile(rf"[^{{}}\s\x00-\x1f]{{1,{MAX_KEY_PART_CHARS}}}")
_STREAM_ID = re.compile(r"\d{1,20}(-\d{1,20})?")

# Error codes our Lua scripts raise, and what they become in Python.
LUA_ERRORS: dict[str, type[DocentError]] = {
    "STALE_EPOCH": StaleEpoch,
    "LEASE_EXPIRED": StaleEpoch,
    "LOG_MOVED": StaleEpoch,
    "LEASE_HELD": LeaseHeld,
    "BAD_INPUT": InputError,
    "NOT_FOUND": InputError,
    "FORBIDDEN": ForbiddenError,
    "CORRUPT": CorruptLog,
}


def key_part(value: str, what: str) -> str:
    """`value` if it may be embedded in a key name, else InputError."""
    if not isinstance(value, str) or not _KEY_PART.fullmatch(value):
        raise InputError(
            f"{what} must be 1-{MAX_KEY_PART_CHARS} characters without braces, spaces or control characters",
            field=what,
        )
    return value


def stream_id(value: str, what: str = "after_id") -> str:
    """A full `ms-seq` stream id from `ms-seq` or `ms`, else InputError."""
    if not isinstance(value, str) or not _STREAM_ID.fullmatch(value):
        raise InputError(f"{what} must be a stream id like 1700000000000-0", field=what)
    return value if "-" in value else f"{value}-0"


def id_tuple(value: str) -> tuple[int, int]:
    ms, _, seq = value.partition("-")
    return int(ms), int(seq or 0)


def text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read_start(after_id: str) -> str:
    """An XREAD start: '$' (only what arrives from now on) or a stream id."""
    return after_id if after_id == "$" else stream_id(after_id)


def block_ms_arg(block_ms: int | None) -> int | None:
    if block_ms is not None and (not isinstance(block_ms, int) or isinstance(block_ms, bool) or block_ms < 1):
        raise InputError("block_ms must be a positive integer, or None not to block", field="block_ms")
    return block_ms


def xread_entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """The entries of a one-stream XREAD reply (RESP2 list or RESP3 map)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [entry for entries in reply.values() for entry in entries[0]]
    return [entry for _, entries in reply for entry in entries]


def range_entries(reply: Any) -> list[tuple[Any, dict[Any, Any]]]:
    """XRANGE entries as (id, fields). redis-py applies no response callbacks to the replies of a cluster
    client's MULTI/EXEC pipeline, so there an entry's fields arrive as a flat [name, value, ...] list."""
    return [
        (i, f if isinstance(f, dict) else dict(zip(f[::2], f[1::2], strict=True))) for i, f in reply or ()
    ]


def payload(fields: dict[Any, Any]) -> Any:
    """The `e` field of a stream entry, whether the client decodes responses or not."""
    return fields[b"e"] if b"e" in fields else fields["e"]


@dataclass(frozen=True)
class LuaScript:
    """A script assembled from .lua files shipped in the `store` package (a shared prelude first)."""

    name: str
    files: tuple[str, ...]
    source: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        package = resources.files("store")
        source = "\n".join(package.joinpath(f).read_text(encoding="utf-8") for f in self.files)
        object.__setattr__(self, "source", source)


def lua(*files: str) -> LuaScript:
    return LuaScript(files[-1].removesuffix(".lua"), files)


Arg = str | bytes | int | float


@dataclass(frozen=True)
class Eval:
    script: LuaScript
    keys: Sequence[str]
    args: Sequence[Arg]


@dataclass(frozen=True)
class Call:
    """One client method call, e.g. `Call(lambda r: r.xlen(key))`; the same lambda serves both clients."""

    fn: Callable[[Any], Any]


@dataclass(frozen=True)
class Batch:
    """Commands queued on one pipeline; `transaction=True` makes them one MULTI/EXEC snapshot."""

    fn: Callable[[Any], None]
    transaction: bool = True


@dataclass(frozen=True)
class EvalWith:
    """A script call, then plain commands (`fn` queues them), on one pipeline without MULTI: one round trip
    on one node (one per node on a cluster) where an `Eval` and a `Batch` make two. The reply is the list
    of the script's reply, then the commands'. Nothing makes the commands atomic with the script (their keys
    may be in other slots): for writes that need not move with it. A NOSCRIPT (a restarted Redis) loads the
    script and calls it once more, alone; the commands ran once. A cluster client's pipeline refuses
    scripts: there the script is called, then the commands pipelined (two round trips, as before); a
    script's error is raised once the commands ran, on both."""

    script: LuaScript
    keys: Sequence[str]
    args: Sequence[Arg]
    fn: Callable[[Any], None]


Op = Eval | Call | Batch | EvalWith
Plan = Generator[Op, Any, T]


def translate_script_error(exc: redis.ResponseError) -> DocentError | None:
    code, _, message = str(exc).partition(" ")
    error_type = LUA_ERRORS.get(code)
    if error_type is None:
        return None
    return error_type(message or code, reason=code.lower())


def replies_or_raise(replies: list[Any]) -> list[Any]:
    """A pipeline's replies (`execute(raise_on_error=False)`), or its first error raised."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def registered_script(scripts: dict[str, Any], client: Any, script: LuaScript) -> Any:
    """`script` registered on `client` once (a runner's `scripts` keeps it by name)."""
    registered = scripts.get(script.name)
    if registered is None:
        registered = scripts[script.name] = client.register_script(script.source)
    return registered


def script_then(pipe: Any, registered: Any, op: EvalWith) -> Any:
    """`pipe` with `op`'s script call (EVALSHA), then its commands, queued."""
    pipe.evalsha(registered.sha, len(op.keys), *op.keys, *op.args)
    op.fn(pipe)
    return pipe


class _Translate:
    """Our Lua errors become their Docent type; any other Redis failure becomes `unavailable`."""

    def __init__(self, unavailable: type[DocentError]) -> None:
        self.unavailable = unavailable

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if isinstance(exc, redis.ResponseError):
            translated = translate_script_error(exc)
            if translated is not None:
                raise translated from None
        if isinstance(exc, REDIS_ERRORS):
            log.warning("redis failed: %s", exc)  # the cause names addresses: logged, never sent
            metrics.observe_redis_error(exc)
            raise self.unavailable(UNAVAILABLE_MESSAGE, reason="unavailable") from exc


class SyncRunner:
    def __init__(self, client: redis.Redis, unavailable: type[DocentError] = LogError) -> None:
        self.client = client
        self._scripts: dict[str, Any] = {}
        self._translate = _Translate(unavailable)

    def run(self, plan: Plan[T]) -> T:
        try:
            op = next(plan)
            while True:
                try:
                    with self._translate:
                        result = self._execute(op)
                except DocentError as exc:
                    op = plan.throw(exc)  # the plan may catch it and add what it knows
                else:
                    op = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    def _execute(self, op: Op) -> Any:
        match op:
            case Eval(script, keys, args):
                registered = registered_script(self._scripts, self.client, script)
                return registered(keys=list(keys), args=list(args))
            case Call(fn):
                return fn(self.client)
            case Batch(fn, transaction):
                pipe = self.client.pipeline(transaction=transaction)
                fn(pipe)
                return pipe.execute()
            case EvalWith(script, keys, args, fn):
                registered = registered_script(self._scripts, self.client, script)
                if is_cluster_client(self.client):
                    try:
                        first = registered(keys=list(keys), args=list(args))
                    except redis.ResponseError as exc:  # raised once the commands ran, as on one node
                        first = exc
                    return replies_or_raise([first, *self._execute(Batch(fn, transaction=False))])
                pipe = script_then(self.client.pipeline(transaction=False), registered, op)
                replies = pipe.execute(raise_on_error=False)
                if isinstance(replies[0], NoScriptError):
                    replies[0] = registered(keys=list(keys), args=list(args))
                return replies_or_raise(replies)


class AsyncRunner:
    def __init__(self, client: aredis.Redis, unavailable: type[DocentError] = LogError) -> None:
        self.client = client
        self._scripts: dict[str, Any] = {}
        self._translate = _Translate(unavailable)

    async def run(self, plan: Plan[T]) -> T:
        try:
            op = next(plan)
            while True:
                try:
                    with self._translate:
                        result = await self._execute(op)
                except DocentError as exc:
                    op = plan.throw(exc)  # the plan may catch it and add what it knows
                else:
                    op = plan.send(result)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]

    async def _execute(self, op: Op) -> Any:
        match op:
            case Eval(script, keys, args):
                registered = registered_script(self._scripts, self.client, script)
                return await registered(keys=list(keys), args=list(args))
            case Call(fn):
                return await fn(self.client)
            case Batch(fn, transaction):
                pipe = self.client.pipeline(transaction=transaction)
                fn(pipe)
                return await pipe.execute()
            case EvalWith(script, keys, args, fn):
                registered = registered_script(self._scripts, self.client, script)
                if is_cluster_client(self.client):
                    try:
                        first = await registered(keys=list(keys), args=list(args))
                    except redis.ResponseError as exc:  # raised once the commands ran, as on one node
                        first = exc
                    return replies_or_raise([first, *(await self._execute(Batch(fn, transaction=False)))])
                pipe = script_then(self.client.pipeline(transaction=False), registered, op)
                replies = await pipe.execute(raise_on_error=False)
                if isinstance(replies[0], NoScriptError):
                    replies[0] = await registered(keys=list(keys), args=list(args))
                return replies_or_raise(replies)
