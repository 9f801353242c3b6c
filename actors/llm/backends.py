"""Which backend runs: `load_backend(settings)` by `settings.llm_backend`, and the refusing `none` backend.

Kept apart from `actors/llm/types.py` because the backends import the types: here the choice imports
the backends, and nothing imports back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from actors.llm.types import ChatMessage, Completion, LLMBackend
from store.exceptions import LLMUnavailable
from store.settings import Settings


class UnavailableBackend:
    """`llm_backend=none`: constructed fine, refuses every request."""

    model_name = "none"

    async def complete(self, messages: Sequence[ChatMessage], **options: Any) -> Completion:
        """`LLMBackend.complete`; refuses whatever the options."""
        raise LLMUnavailable("no LLM backend is configured (DOCENT_LLM_BACKEND=none)", retryable=False)

    def price(self, tokens_in: int, tokens_out: int) -> float:
        return 0.0

    async def aclose(self) -> None:
        return None


def load_backend(settings: Settings) -> LLMBackend:
    """The backend `settings.llm_backend` names. Nothing heavy happens here: models load on first use."""
    match settings.llm_backend:
        case "openai":
            from actors.llm.openai import OpenAIBackend

            return OpenAIBackend(settings)
        case "local":
            from actors.llm.local import LocalBackend

            return LocalBackend(settings)
        case "none":
            return UnavailableBackend()
