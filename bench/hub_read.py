"""The hub's read call alone: client CPU per XREAD of K keys with one entry waiting, four ways.

    .venv/bin/python -m bench.hub_read [--keys 40] [--calls 500] [--blocks 6]

`xread()`: redis-py's wrapper, given a dict of str keys and ids per call (what server.hub did before).
`execute_command`: XREAD's arguments as the hub passes them through a cluster client (keys encoded once,
the raw ids the last reads returned). `own connection`: what a single-node hub's shard does, its command
bytes built from a kept head and the cursors (server.hub.xread_head) and sent on a connection it holds,
the raw reply's fields made dicts as redis-py's callback would; `written at once`: the same command written
to the connection's stream without redis-py's `wait_for` around the write (server.hub.write_command).
Blocks of `--calls` calls alternate between the ways; the best block's CPU per call (this process's CPU
time: the embedded Redis server is another process) is printed for each, so a loaded machine distorts it
less than wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio as aredis

from server.hub import bulk, with_field_dicts, write_command, xread_head
from store.redis import EmbeddedRedis, async_client


async def _setup(client: aredis.Redis, count: int) -> tuple[list[str], list[bytes]]:
    """`count` streams; the first has one entry after its cursor, the others none."""
    keys = [f"conv:{{bench{i}}}:live" for i in range(count)]
    cursors: list[bytes] = []
    for key in keys:
        entry_id: Any = await client.xadd(key, {"e": "x" * 60})  # bytes: the client does not decode
        cursors.append(entry_id)
    await client.xadd(keys[0], {"e": "y" * 60})
    return keys, cursors


async def measure(url: str, count: int, calls: int, blocks: int) -> dict[str, float]:
    client = async_client(url, max_connections=4)
    keys, cursors = await _setup(client, count)
    raw_keys = [key.encode() for key in keys]

    async def wrapper() -> Any:
        streams = {key: cursor.decode() for key, cursor in zip(keys, cursors, strict=True)}
        return await client.xread(streams, count=256, block=2000)  # type: ignore[arg-type]

    async def direct() -> Any:
        arguments = [*raw_keys, *cursors]
        return await client.execute_command(
            "XREAD", b"COUNT", 256, b"BLOCK", 2000, b"STREAMS", *arguments, keys=arguments[:count]
        )

    connection = await client.connection_pool.get_connection()
    head = xread_head(raw_keys)

    async def own() -> Any:
        command = b"".join([head, *(bulk(cursor) for cursor in cursors)])
        await connection.send_packed_command(command, check_health=False)
        reply: Any = await connection.read_response()
        return {key: with_field_dicts(entries) for key, entries in reply.items()}

    async def own_written() -> Any:  # what server.hub does now: the command written to the stream at once
        await write_command(connection, b"".join([head, *(bulk(cursor) for cursor in cursors)]))
        reply: Any = await connection.read_response()
        return {key: with_field_dicts(entries) for key, entries in reply.items()}

    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "xread()": wrapper, "execute_command": direct, "own connection": own,
        "own connection, written at once": own_written,
    }  # fmt: skip
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(blocks):
        for name, call in ways.items():
            started = time.process_time()
            for _ in range(calls):
                await call()
            best[name] = min(best[name], (time.process_time() - started) / calls)
    await client.connection_pool.release(connection)
    await client.aclose()
    return best


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keys", type=int, default=40)
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--blocks", type=int, default=6)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedRedis(Path(tmp) / "redis").start()
        try:
            best = asyncio.run(measure(embedded.url, args.keys, args.calls, args.blocks))
        finally:
            embedded.stop()
    cells = ", ".join(f"{name} {seconds * 1e6:.0f} us" for name, seconds in best.items())
    print(f"XREAD of {args.keys} keys, one entry waiting: client CPU a call (best block) {cells}")


if __name__ == "__main__":
    main()
