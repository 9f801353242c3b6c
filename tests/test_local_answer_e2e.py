"""A question answered by the embedded model, end to end, in headless Chromium.

Everything real: Redis, the web process, a dramatiq worker process with the local SmolLM2 (CTranslate2) and
the MiniLM query embedder, an index of two standard-library pages built with MiniLM, the chat widget.
The widget must show the sources before the first answer token, a finished sentence must carry its mark (a
marker or an unsupported mark) while the answer still streams, and the finished answer must carry `[n]`
markers. Both ways the local model answers run: extractive (the default: the passages' own sentences, each
citing its passage, `actors/extractive.py`) and the model's own answer (`DOCENT_LOCAL_ANSWER=model`), whose
sentences post-hoc attribution marks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from index.demo import build_demo_corpus
from index.embed import load_embedder
from index.ingest import Ingestor
from server.auth import mint_token
from store.redis import EmbeddedRedis
from store.settings import Settings
from tests import test_browser
from tests.conftest import MODEL_CACHE
from tests.server_proc import ServerProcess, server_env
from tests.test_approvals_e2e import CHROMIUM, Worker

WAIT_MS = 240_000  # a model load and a prefill on a busy 2-core machine
QUESTION = "What does token_urlsafe return?"
# Records, in the page, when the sources panel first showed and when the first answer text did.
ORDER_PROBE = """() => {
  window.__seen = {};
  const mark = (key) => { if (!(key in window.__seen)) window.__seen[key] = performance.now(); };
  new MutationObserver(() => {
    const panel = document.querySelector(".docent-turn .docent-sources");
    if (panel && !panel.hidden) mark("sources");
    const answer = document.querySelector(".docent-turn .docent-answer");
    if (answer && answer.textContent.trim()) mark("token");
    const streaming = answer && answer.getAttribute("data-done") === "0";
    if (streaming && answer.querySelector(".docent-cite, .docent-unsupported")) mark("attributed");
  }).observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)"),
]


def build_index(settings: Settings, source: Path) -> None:
    embedder = load_embedder(settings, "minilm", purpose="offline")
    with Ingestor(settings, embedder) as ingestor:
        for doc in build_demo_corpus(source, modules=("shlex", "secrets"), common_licenses=source / "none"):
            if doc.doc_id.startswith("pydoc/"):
                path = Path(doc.path) if Path(doc.path).is_absolute() else source / doc.path
                ingestor.ingest_document(doc.doc_id, path=path, title=doc.title, access=doc.access)


@pytest.fixture(scope="module", params=["extractive", "model"])
def web(
    request: pytest.FixtureRequest, redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("local-e2e")
    env = server_env(redis_server.url, data, llm_backend="local", model_dir=str(MODEL_CACHE),
                     local_max_tokens="64", allowed_roots=str(data), local_answer=request.param)  # fmt: skip
    build_index(Settings.from_env(env), data / "src")
    worker = Worker(env)
    worker.start()
    server = ServerProcess(env, app="server.app:create_app")
    try:  # a web process that does not start leaves no worker behind
        yield server.start()
    finally:
        server.stop()
        worker.stop()


browser = test_browser.browser  # the same headless Chromium fixture


async def test_the_local_model_answers_with_sources_first_and_attributed_citations(
    browser: Any, web: ServerProcess
) -> None:
    token = mint_token(web.settings, "default", "alice", ttl=600)
    page = await browser.new_page(viewport={"width": 900, "height": 800})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    await page.goto(f"{web.http_url}/?token={token}")
    await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=30_000)
    await page.evaluate(ORDER_PROBE)
    await page.fill(".docent-input", QUESTION)
    await page.click(".docent-send")

    await page.wait_for_selector(".docent-answer[data-done='1']", timeout=WAIT_MS)
    seen = await page.evaluate("() => window.__seen")
    assert "sources" in seen and "token" in seen and seen["sources"] < seen["token"], json.dumps(seen)
    assert "attributed" in seen and seen["token"] <= seen["attributed"], json.dumps(seen)
    titles = await page.locator(".docent-sources .docent-source-open").all_text_contents()
    assert any(t.startswith("secrets") for t in titles)
    markers = await page.locator(".docent-answer .docent-cite").all_text_contents()
    answer = await page.locator(".docent-answer").text_content()
    assert markers, answer  # the extractive answer's own, or attribution's (the model writes none)
    assert await page.locator(".docent-sources .docent-source-cited").count() >= 1
    shots = MODEL_CACHE.parent / "screenshots"
    shots.mkdir(parents=True, exist_ok=True)
    await page.screenshot(path=str(shots / f"local-answer-{web.settings.local_answer}.png"))
    assert errors == []
