"""The widget marks an answer from the cache, in a real headless Chromium (the test plays the worker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from store.events import AnswerCompleted, CacheHit, UserMessage
from store.redis import EmbeddedRedis
from tests.server_proc import ServerProcess, StreamWriter, server_env
from tests.test_browser import (
    SOURCES,
    WAIT_MS,
    browser,
    open_chat,
    pytestmark,
    wait_for_answer_text,
    wait_for_ask,
)

__all__ = ["browser", "pytestmark"]  # the browser fixture and its skip marks


async def test_a_cached_answer_is_marked_and_lists_its_sources(
    browser: Any, redis_server: EmbeddedRedis, redis_url: str, tmp_path: Path
) -> None:
    r = redis.Redis.from_url(redis_url)
    with ServerProcess(server_env(redis_server.url, tmp_path)) as web:
        page, conv, errors = await open_chat(browser, web)
        await page.fill(".docent-input", "how do i split a shell command line")
        await page.click(".docent-send")
        asked = await wait_for_ask(r, conv)
        worker = StreamWriter(r, conv)
        worker.event(UserMessage(turn=1, text=asked.text, user="alice", tenant="acme",
                                 client_message_id=asked.client_message_id))  # fmt: skip
        text = "Use shlex.split [1]."
        worker.event(CacheHit(turn=1, entry_id="e1", similarity=0.97, text=text, sources=SOURCES,
                              cached_question="How can I split a shell command line?", index_version="v1",
                              chunk_ids=("c1", "c2")))  # fmt: skip
        worker.delta(text, 1)
        worker.event(AnswerCompleted(turn=1, text=text, citations=SOURCES[:1], sources=SOURCES))
        await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
        await wait_for_answer_text(page, "Use shlex.split [1].")
        note = page.locator(".docent-turn[data-turn='1'] .docent-cache-note")
        assert await note.text_content() == "answered from a recent identical question"
        steps = await page.locator(".docent-step-cache_hit").all_text_contents()
        assert len(steps) == 1 and "How can I split a shell command line?" in steps[0] and "0.97" in steps[0]
        titles = await page.locator(".docent-sources .docent-source-open").all_text_contents()
        assert titles == [SOURCES[0].title, SOURCES[1].title]
        assert errors == []
