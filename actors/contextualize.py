"""The ingest side's LLM contextualizer: Anthropic's contextual-retrieval prompt sent to the configured LLM.

`index.ingest.Ingestor` calls it synchronously from ingest threads; the LLM backends are async, so one
event loop runs in a daemon thread per process and each call is submitted to it. A failure or timeout
falls back to the deterministic context (index.context.llm_context), so ingest never stops for an LLM.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from actors.llm.backends import load_backend
from actors.llm.types import ChatMessage, LLMBackend
from index.context import llm_context
from index.ingest import Contextualizer
from store.settings import Settings

CONTEXT_MAX_TOKENS = 96
CONTEXT_TIMEOUT_S = 60.0

_T = TypeVar("_T")


class _LoopThread:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name="contextualizer", daemon=True).start()

    def run(self, coroutine: Coroutine[Any, Any, _T], timeout_s: float) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)


class LLMContextualizer:
    def __init__(self, backend: LLMBackend) -> None:
        self.backend = backend
        self._loop = _LoopThread()

    async def _complete(self, prompt: str) -> str:
        reply = await self.backend.complete(
            [ChatMessage(role="user", content=prompt)], max_tokens=CONTEXT_MAX_TOKENS
        )
        return reply.text

    def __call__(self, doc_text: str, chunk_text: str, fallback: str) -> str:
        coroutine = llm_context(self._complete, doc_text, chunk_text, fallback)
        try:
            return self._loop.run(coroutine, CONTEXT_TIMEOUT_S)
        except TimeoutError:
            return fallback


def make_contextualizer(settings: Settings) -> Contextualizer | None:
    """None unless `DOCENT_CONTEXT_LLM` is on and an LLM backend is configured."""
    if not settings.context_llm or settings.llm_backend == "none":
        return None
    return LLMContextualizer(load_backend(settings))
