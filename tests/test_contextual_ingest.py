"""The LLM contextual prefix at ingest: Anthropic's prompt sent to a scripted OpenAI-compatible LLM."""

from __future__ import annotations

from pathlib import Path

import msgspec

from actors.contextualize import make_contextualizer
from actors.testing import ScriptedLLMThread
from index.context import LLM_CONTEXT_VERSION
from index.embed import load_embedder
from index.ingest import Ingestor
from index.versions import read_manifest
from store.settings import Settings

SITUATING = "This passage states the deadline for expense receipts in the travel policy."
SCRIPTS = {"scripts": {"ctx": {"steps": [{"text": SITUATING}]}}}
POLICY = "# Travel policy\n\n## Receipts\n\nReceipts go to finance within thirty days. [script:ctx]\n"


def test_chunks_get_the_llms_context_once(settings: Settings, tmp_path: Path) -> None:
    source = tmp_path / "data" / "travel.md"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(POLICY)
    with ScriptedLLMThread(SCRIPTS) as llm:
        configured = msgspec.structs.replace(
            settings, embed_model="hash", context_llm=True, llm_backend="openai", llm_url=llm.url
        )
        embedder = load_embedder(configured, "hash", purpose="offline")
        contextualizer = make_contextualizer(configured)
        assert contextualizer is not None
        with Ingestor(configured, embedder, contextualizer=contextualizer) as ingestor:
            first = ingestor.ingest_document("travel", path=source)
            rows = ingestor.catalog.visible_chunks(ingestor.version, "travel")
            manifest = read_manifest(configured, ingestor.version)
            requests_after_first = llm.stats()["total"]
            again = ingestor.ingest_document("travel", path=source)

        assert first.status == "indexed" and again.status == "unchanged"
        assert manifest.context_version == LLM_CONTEXT_VERSION
        assert rows and all(SITUATING in row.context for row in rows)
        assert all(row.context.startswith("Document: Travel policy") for row in rows)  # title kept first
        assert all(SITUATING not in row.text for row in rows)  # indexed, never shown as the chunk's text
        assert requests_after_first == len(rows)
        assert llm.stats()["total"] == requests_after_first  # an unchanged document costs no LLM call


def test_no_contextualizer_without_the_setting(settings: Settings) -> None:
    assert make_contextualizer(settings) is None
