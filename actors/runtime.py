"""The process-wide runtime activations share: settings, clients, the knowledge base, LLM backends, hooks.

Models, indexes and clients are created lazily, on the first activation that needs them (or at boot by
`warm_up`). `configure` installs another runtime (tests, benches, the chaos worker).

Crash points: the conversation actor calls `rt.crash(point)` at the two narrowest windows there are, right
after a tool's effect and right after a model's response, before either is recorded; and a third right
after a model's response is recorded, before its usage is counted (`usage_record`: the next activation
counts it, `actors.spend`). The default hook does
nothing; `docent chaos` runs workers whose runtime carries a hook that exits the process there
(`actors.testing.chaos_worker`). No setting reaches it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from actors.answer_policy import AnswerCachePolicy
from actors.kb import ServiceKnowledgeBase
from actors.llm.backends import load_backend
from actors.llm.types import LLMBackend
from actors.plan import Caps
from actors.tools import default_registry
from actors.tools.mcp_tools import McpToolbox
from actors.tools.policy import RiskPolicy
from actors.tools.registry import Registry
from index.answer_cache import AnswerCache
from store.answer_cache import AnswerStore
from store.approvals import ApprovalLedger
from store.clock import now_ms as wall_clock_ms
from store.exceptions import IndexNotFound
from store.log import ConversationLog
from store.settings import Settings, get_settings

log = logging.getLogger(__name__)

CrashPoint = Literal["llm_response", "tool_effect", "usage_record"]


class CrashHook(Protocol):
    def __call__(self, point: CrashPoint) -> None:
        """Called at a crash point; returns to carry on (or never returns)."""
        ...


def no_crash(point: CrashPoint) -> None:
    return None


@dataclass
class Runtime:
    """What activations share in one worker process. Models, indexes and clients are created lazily."""

    settings: Settings
    log: ConversationLog
    ledger: ApprovalLedger
    policy: RiskPolicy
    registry: Registry
    clock: Callable[[], int] = wall_clock_ms
    crash: CrashHook = no_crash
    knowledge_factory: Callable[[], ServiceKnowledgeBase] | None = None
    answer_policy: AnswerCachePolicy | None = None  # from settings when None
    mcp: McpToolbox | None = None  # the configured MCP servers' tools for agent turns (none: no servers)
    _knowledge: ServiceKnowledgeBase | None = None
    _answers: AnswerCache | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    _backends: list[tuple[asyncio.AbstractEventLoop, LLMBackend]] = field(default_factory=list)

    @classmethod
    def from_settings(cls, settings: Settings, **kwargs: Any) -> Runtime:
        return cls(
            settings=settings,
            log=ConversationLog.from_url(settings.redis_url),
            ledger=ApprovalLedger.from_url(settings.redis_url),
            policy=RiskPolicy.from_settings(settings),
            registry=default_registry(),
            mcp=McpToolbox.from_settings(settings),
            **kwargs,
        )

    def knowledge(self) -> ServiceKnowledgeBase:
        with self._lock:
            if self._knowledge is None:
                if self.knowledge_factory is not None:
                    self._knowledge = self.knowledge_factory()
                else:
                    from index.search import SearchService

                    self._knowledge = ServiceKnowledgeBase(SearchService(self.settings))
            return self._knowledge

    def cache_policy(self) -> AnswerCachePolicy:
        with self._lock:
            if self.answer_policy is None:
                self.answer_policy = AnswerCachePolicy.from_settings(self.settings)
            return self.answer_policy

    def answers(self) -> AnswerCache:
        """The semantic answer cache over the knowledge base's search service (index.answer_cache)."""
        knowledge = self.knowledge()
        with self._lock:
            if self._answers is None:
                self._answers = AnswerCache(
                    self.settings, knowledge.service, AnswerStore.from_url(self.settings.redis_url)
                )
            return self._answers

    def llm(self) -> LLMBackend:
        """One backend per worker thread (an HTTP session is bound to its thread's event loop)."""
        backend: LLMBackend | None = getattr(self._local, "llm", None)
        if backend is None:
            backend = load_backend(self.settings)
            self._local.llm = backend
            with self._lock:
                self._backends.append((self.loop(), backend))
        return backend

    def loop(self) -> asyncio.AbstractEventLoop:
        loop: asyncio.AbstractEventLoop | None = getattr(self._local, "loop", None)
        if loop is None or loop.is_closed():
            loop = asyncio.new_event_loop()
            self._local.loop = loop
        return loop

    def owner(self) -> str:
        return f"{socket.gethostname()[:100]}:{os.getpid()}:{threading.get_ident()}"

    @property
    def rewrites(self) -> bool:
        """Whether follow-ups are rewritten by the model (settings.followup_rewrite)."""
        mode = self.settings.followup_rewrite
        return mode == "llm" or (mode == "auto" and self.settings.llm_backend == "openai")

    def caps(self) -> Caps:
        s = self.settings
        return Caps(
            max_steps=s.max_steps,
            max_tokens=s.max_run_tokens,
            max_cost_usd=s.max_run_cost_usd,
            max_seconds=s.max_run_seconds,
        )

    def close(self) -> None:
        for loop, backend in self._backends:
            if not loop.is_closed() and not loop.is_running():
                loop.run_until_complete(backend.aclose())
                loop.close()
        self._backends.clear()
        if self._answers is not None:
            self._answers.close()
        if self._knowledge is not None:
            self._knowledge.close()
        self.log.close()
        self.ledger.close()


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime.from_settings(get_settings())
        return _runtime


def warm_up() -> None:
    """Load what the first question would otherwise wait for: the search side (index, query embedder)
    and a local LLM. Errors are logged: a cold start is slower, not broken."""
    started = time.monotonic()
    try:
        rt = runtime()
        with contextlib.suppress(IndexNotFound):
            rt.knowledge().service.current()
        load = getattr(load_backend(rt.settings), "load", None)
        if callable(load):  # a local model (shared by every worker thread's backend)
            load()
        log.info("warm start done in %.1f s", time.monotonic() - started)
    except Exception:
        log.exception("warm start failed; models load at the first question instead")


def configure(new: Runtime | None) -> Runtime | None:
    """Install the runtime activations use (tests, benches); returns the previous one."""
    global _runtime
    with _runtime_lock:
        previous, _runtime = _runtime, new
        return previous
