"""The embedded SmolLM2 backend (GGUF → CTranslate2 without torch) and the strict tool-call parser.

The model tests convert once into the shared MODEL_CACHE (about 10 s the first time) and keep generations
to a few tokens: the machine has 2 cores.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from actors.llm.backends import load_backend
from actors.llm.gguf_convert import (
    MANIFEST_NAME,
    cache_dir_for,
    convert,
    ensure_converted,
    is_converted,
    read_manifest,
    shipped_gguf_path,
    unpermute_rotary,
)
from actors.llm.local import LocalBackend, render_chatml
from actors.llm.toolparse import ToolCallFilter, parse_tool_calls, validate_call
from actors.llm.types import ChatMessage, ToolSpec
from store.events import ToolCall
from store.exceptions import LLMError, MalformedToolCall, ModelError
from store.settings import Settings
from tests.conftest import MODEL_CACHE

TOOLS = {"search", "send_email"}
SEARCH = ToolSpec(name="search", description="Search the knowledge base")
CACHED_WITHIN_S = 30.0  # a cache hit (a conversion takes minutes); 1 s was a timing bet on a loaded machine


# --- toolparse (no model) ----------------------------------------------------------------------------


def test_parses_calls_and_keeps_the_prose() -> None:
    text = (
        'Let me check. <tool_call>{"name": "search", "arguments": {"query": "leave", "k": 2}}</tool_call>\n'
        '<tool_call> {"arguments": {}, "name": "send_email"} </tool_call>'
    )
    prose, calls = parse_tool_calls(text, TOOLS, id_prefix="call_r1")
    assert prose == "Let me check."
    assert calls == (
        ToolCall(id="call_r1_0", name="search", arguments='{"k":2,"query":"leave"}'),
        ToolCall(id="call_r1_1", name="send_email", arguments="{}"),
    )
    assert parse_tool_calls("Just an answer.", TOOLS) == ("Just an answer.", ())


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('<tool_call>{"name": "search", "arguments": {"q": 1}', "never closed"),
        ('<tool_call>{"name": "search", "arguments": {"q": 1}</tool_call>', "not valid JSON"),
        ('<tool_call>["search", {}]</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "rm", "arguments": {}}</tool_call>', "unknown tool 'rm'"),
        ('<tool_call>{"name": "", "arguments": {}}</tool_call>', "non-empty string name"),
        ('<tool_call>{"name": 7, "arguments": {}}</tool_call>', "non-empty string name"),
        ('<tool_call>{"name": "search"}</tool_call>', "has no arguments"),
        ('<tool_call>{"name": "search", "arguments": "q=1"}</tool_call>', "must be a JSON object"),
        ('<tool_call>{"name": "search", "arguments": {}, "why": "x"}</tool_call>', "unexpected keys"),
        ('{"name": "search", "arguments": {}}</tool_call>', "without <tool_call>"),
        ("<tool_call><tool_call>{}</tool_call>", "nested"),
    ],
)
def test_anything_else_is_a_malformed_tool_call(text: str, reason: str) -> None:
    with pytest.raises(MalformedToolCall, match=reason) as raised:
        parse_tool_calls(text, TOOLS)
    assert raised.value.code == "malformed_tool_call" and "raw" in raised.value.details


def test_validate_call_applies_the_same_rules_to_structured_calls() -> None:
    assert validate_call(ToolCall(id="a", name="search", arguments=""), TOOLS).arguments == "{}"
    with pytest.raises(MalformedToolCall):
        validate_call(ToolCall(id="a", name="search", arguments="[1]"), TOOLS)
    with pytest.raises(MalformedToolCall):
        validate_call(ToolCall(id="a", name="other", arguments="{}"), TOOLS)


def test_filter_streams_prose_and_withholds_the_markup() -> None:
    pieces = ["Sure", ", <", "tool", "_c", "all>{", '"name"', "</tool_call>", " trailing"]
    shown_filter = ToolCallFilter()
    shown = "".join(shown_filter.feed(p) for p in pieces) + shown_filter.flush()
    assert shown == "Sure, "
    looks_like_a_tag = ToolCallFilter()
    assert looks_like_a_tag.feed("a <tool") == "a "
    assert looks_like_a_tag.feed("s> b") == "<tools> b"
    assert looks_like_a_tag.feed(" <t") == " " and looks_like_a_tag.flush() == "<t"


def test_chatml_rendering() -> None:
    call = ToolCall(id="c0", name="search", arguments='{"query":"x"}')
    prompt = render_chatml(
        [
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="user", content="Hi"),
            ChatMessage(role="assistant", tool_calls=(call,)),
            ChatMessage(role="tool", content="result", tool_call_id="c0", name="search"),
        ],
        [SEARCH],
    )
    assert prompt.startswith("<|im_start|>system\nBe brief.\n\nYou can call these tools:")
    call_text = '<tool_call>{"name": "search", "arguments": {"query":"x"}}</tool_call>'
    assert f"<|im_start|>assistant\n{call_text}<|im_end|>" in prompt
    assert "<|im_start|>user\n<tool_response>\nresult\n</tool_response><|im_end|>\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    default = render_chatml([ChatMessage(role="user", content="Hi")])
    assert default == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


# --- conversion --------------------------------------------------------------------------------------


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's `permute`, the operation the converter must undo."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


@pytest.mark.parametrize("n_heads", [9, 3])
def test_unpermute_inverts_llama_cpp_rotary_permutation(n_heads: int) -> None:
    original = np.arange(n_heads * 64 * 5, dtype=np.float32).reshape(n_heads * 64, 5)
    assert np.array_equal(unpermute_rotary(llama_cpp_permute(original, n_heads), n_heads), original)
    with pytest.raises(ModelError):
        unpermute_rotary(np.zeros((10, 4), dtype=np.float32), 3)


def test_a_broken_gguf_is_a_model_error_and_leaves_no_cache(tmp_path: Path) -> None:
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    cache = tmp_path / "cache"
    with pytest.raises(ModelError, match="cannot read GGUF"):
        ensure_converted(cache, bad)
    assert list(cache.iterdir()) == []
    with pytest.raises(ModelError):
        convert(tmp_path / "missing.gguf", tmp_path)


@pytest.fixture(scope="module")
def converted() -> Path:
    return ensure_converted(MODEL_CACHE)


@pytest.mark.slow
def test_conversion_is_cached(converted: Path) -> None:
    source = shipped_gguf_path()
    assert converted == cache_dir_for(source, MODEL_CACHE) and converted.name.startswith("smollm2-")
    manifest = read_manifest(converted)
    assert manifest.eos_token == "<|im_end|>" and manifest.bos_token == "<|im_start|>"
    assert manifest.vocab_size == 49152 and "<|im_start|>" in manifest.special_tokens
    weights = converted / "model.bin"
    before = weights.stat().st_mtime_ns
    started = time.monotonic()
    assert ensure_converted(MODEL_CACHE) == converted
    assert time.monotonic() - started < CACHED_WITHIN_S
    assert weights.stat().st_mtime_ns == before
    assert not [p for p in MODEL_CACHE.iterdir() if p.name.startswith(".")]  # no staging dirs left behind


@pytest.mark.slow
def test_a_cache_dir_without_a_matching_manifest_is_not_trusted(converted: Path, tmp_path: Path) -> None:
    assert is_converted(converted, read_manifest(converted).source_sha256)
    assert not is_converted(converted, "0" * 64)
    half = tmp_path / "half"
    half.mkdir()
    (half / "model.bin").write_bytes(b"")
    assert not is_converted(half, read_manifest(converted).source_sha256)
    assert (converted / MANIFEST_NAME).is_file()


@pytest.mark.slow
def test_rebuilt_tokenizer_round_trips_and_streams_whole_characters(converted: Path) -> None:
    from tokenizers import Tokenizer
    from tokenizers.decoders import DecodeStream

    tokenizer = Tokenizer.from_file(str(converted / "tokenizer.json"))
    text = "Price 12345 euros, café naïve 日本語 🙂"
    encoding = tokenizer.encode(text)
    assert [t for t in encoding.tokens if t.isdigit()] == ["1", "2", "3", "4", "5"]  # SmolLM2 splits digits
    assert tokenizer.decode(encoding.ids) == text
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>").ids[0] == 1  # specials are single tokens
    stream = DecodeStream(skip_special_tokens=True)
    pieces = [piece for i in encoding.ids if (piece := stream.step(tokenizer, i))]
    assert "".join(pieces) == text and all("\ufffd" not in p for p in pieces)


# --- generation --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local_settings(converted: Path) -> Settings:
    return Settings.from_env({"DOCENT_MODEL_DIR": str(MODEL_CACHE), "DOCENT_LLM_BACKEND": "local"})


@pytest.fixture(scope="module")
def backend(local_settings: Settings) -> Iterator[LocalBackend]:
    llm = load_backend(local_settings)
    assert isinstance(llm, LocalBackend)
    llm.load()
    yield llm


@pytest.mark.slow
async def test_answers_the_capital_of_france_streaming(backend: LocalBackend) -> None:
    deltas: list[str] = []

    async def collect(text: str) -> None:
        deltas.append(text)

    question = [ChatMessage(role="user", content="What is the capital of France?")]
    completion = await backend.complete(question, max_tokens=12, on_delta=collect)
    assert "Paris" in completion.text
    assert "".join(deltas) == completion.text and len(deltas) > 1
    assert completion.finish_reason in ("stop", "length") and 0 < completion.tokens_out <= 12
    assert completion.tokens_in > 10 and not completion.usage_estimated
    assert completion.model == "smollm2-135m-instruct"
    assert 0 < completion.first_token_ms <= completion.latency_ms


@pytest.mark.slow
async def test_max_tokens_ends_with_length(backend: LocalBackend) -> None:
    story = [ChatMessage(role="user", content="Tell me a long story about a dragon.")]
    completion = await backend.complete(story, max_tokens=4)
    assert completion.tokens_out == 4 and completion.finish_reason == "length"


@pytest.mark.slow
async def test_a_failing_on_delta_stops_generation_and_the_backend_stays_usable(
    backend: LocalBackend,
) -> None:
    class Gone(Exception):
        pass

    async def explode(text: str) -> None:
        raise Gone()

    generations: list[int] = []
    generate = backend._generate

    def counted(*args: object) -> object:
        result = generate(*args)  # type: ignore[arg-type]
        generations.append(result.tokens_out)
        return result

    backend._generate = counted  # type: ignore[method-assign]
    story = [ChatMessage(role="user", content="Tell me a long story about a dragon.")]
    try:
        with pytest.raises(Gone):
            await backend.complete(story, max_tokens=400, on_delta=explode)
        after_failure = await backend.complete(story, max_tokens=3)
    finally:
        backend._generate = generate  # type: ignore[method-assign]
    assert after_failure.tokens_out == 3
    assert generations[0] < 40  # the abandoned generation stopped within a few tokens, not at 400


@pytest.mark.slow
async def test_a_prompt_longer_than_the_context_is_refused(backend: LocalBackend) -> None:
    huge = [ChatMessage(role="user", content="word " * 9000)]
    with pytest.raises(LLMError, match="does not fit"):
        await backend.complete(huge, max_tokens=1)
