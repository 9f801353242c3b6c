"""actors.delta_pacer: an answer's reads joined into at most one delta per interval, in order, none lost."""

from __future__ import annotations

import asyncio

import pytest

from actors.delta_pacer import DeltaPacer

INTERVAL_MS = 30


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def recorder() -> tuple[list[str], DeltaPacer, Clock]:
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    clock = Clock()
    return sent, DeltaPacer(send, INTERVAL_MS, clock), clock


async def test_the_first_read_goes_at_once_and_quick_ones_join_the_next_delta() -> None:
    sent, pacer, _clock = recorder()
    await pacer.feed("Hel")
    assert sent == ["Hel"]
    for piece in ("lo", " wor", "ld"):
        await pacer.feed(piece)  # within the interval: held
    assert sent == ["Hel"]
    await pacer.close()
    assert sent == ["Hel", "lo world"]


async def test_a_read_past_the_interval_goes_at_once() -> None:
    sent, pacer, clock = recorder()
    await pacer.feed("a")
    clock.now += INTERVAL_MS / 1000
    await pacer.feed("b")
    await pacer.close()
    assert sent == ["a", "b"]


async def test_held_text_goes_out_when_the_stream_goes_quiet() -> None:
    sent, pacer, clock = recorder()
    await pacer.feed("a")
    await pacer.feed("b")  # held, and a timer set for the rest of the interval
    clock.now += INTERVAL_MS / 1000
    for _ in range(100):  # the timer's real sleep is INTERVAL_MS
        if len(sent) == 2:
            break
        await asyncio.sleep(INTERVAL_MS / 1000)
    assert sent == ["a", "b"]
    await pacer.close()
    assert sent == ["a", "b"]  # nothing twice


async def test_no_interval_sends_every_read() -> None:
    sent: list[str] = []

    async def send(text: str) -> None:
        sent.append(text)

    pacer = DeltaPacer(send, 0)
    for piece in "abc":
        await pacer.feed(piece)
    await pacer.close()
    assert sent == ["a", "b", "c"]


async def test_a_failed_delta_of_the_timer_is_raised_by_close() -> None:
    async def send(text: str) -> None:
        if text == "b":
            raise RuntimeError("lease lost")

    clock = Clock()
    pacer = DeltaPacer(send, INTERVAL_MS, clock)
    await pacer.feed("a")
    await pacer.feed("b")
    await asyncio.sleep(3 * INTERVAL_MS / 1000)
    with pytest.raises(RuntimeError, match="lease lost"):
        await pacer.close()


async def test_rest_hands_back_what_is_held_instead_of_sending_it() -> None:
    sent, pacer, _clock = recorder()
    await pacer.feed("Hel")
    await pacer.feed("lo")  # held, a timer set
    await pacer.feed(" world")
    assert await pacer.rest() == "lo world"  # to go out with the completion's record, in one append
    assert sent == ["Hel"]
    assert await pacer.rest() == ""  # nothing held twice
