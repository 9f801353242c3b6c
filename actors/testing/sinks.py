"""Both counting sinks together: hosted on a thread for synchronous code, or as a standalone process.

    with SinkThread(SmtpSink(), HttpSink()) as (smtp, http): ...        # from synchronous code
    python -m actors.testing.sinks --smtp-port 2525 --http-port 8025    # standalone; GET /_stats
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys

from actors.testing.http_sink import STATS_PATH, HttpSink
from actors.testing.loop_thread import LoopThread
from actors.testing.smtp_sink import DEFAULT_HOST, SmtpSink


class SinkThread:
    """Runs sinks on an event loop in a daemon thread, for synchronous tests and tools."""

    def __init__(self, *sinks: SmtpSink | HttpSink) -> None:
        self.sinks = sinks
        self._thread = LoopThread("docent-sinks")

    def __enter__(self) -> tuple[SmtpSink | HttpSink, ...]:
        self._thread.start()
        try:
            for sink in self.sinks:
                self._thread.run(sink.start)
        except BaseException:
            self.__exit__()
            raise
        return self.sinks

    def __exit__(self, *exc: object) -> None:
        for sink in reversed(self.sinks):
            self._thread.run(sink.stop)  # stopping a sink that never started is a no-op
        self._thread.stop()


async def serve(host: str, smtp_port: int, http_port: int) -> None:
    """Run both sinks until SIGINT/SIGTERM; print their ports as one JSON line first."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with SmtpSink(host, smtp_port) as smtp, HttpSink(host, http_port, smtp=smtp) as http:
        print(
            json.dumps({"smtp_port": smtp.port, "http_port": http.port, "stats": f"{http.url}{STATS_PATH}"})
        )
        sys.stdout.flush()
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m actors.testing.sinks", description="Counting SMTP and HTTP sinks."
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--smtp-port", type=int, default=2525)
    parser.add_argument("--http-port", type=int, default=8025)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.smtp_port, args.http_port))


if __name__ == "__main__":
    main()
