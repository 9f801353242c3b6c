"""Issue 14, Feedback and quality signals: a rating (thumbs up / down, optional comment) from `/ws/chat`,
REST or the widget goes to the actor's inbox, becomes a `feedback` event in the durable log on the rated turn,
and is counted with the answer-quality counters (`docent_feedback_total`, `docent_answers_total{cited}`, ...).
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from prometheus_client import REGISTRY

from tests.test_conversation import TENANT, build_index, make_settings  # isort: skip (stub broker first)
from actors import runtime
from actors.conversation import activate
from actors.runtime import Runtime
from actors.testing import ScriptedLLMThread
from index.reindex.gate import golden_dirs, load_golden
from server.auth import mint_token
from store.events import AnswerCompleted, Citation, Feedback, UserMessage
from store.golden_candidates import Candidate, CandidateStore, golden_dir
from store.latency import LatencyLedger, hour_of
from store.settings import Settings
from store.usage import UsageLedger, day_of
from tests.server_proc import TEST_ADMIN_KEY, ServerProcess, StreamWriter, server_env
from tests.test_browser import CHROMIUM, SCREENSHOTS, WAIT_MS
from tests.test_browser import browser as browser  # the headless Chromium fixture
from tests.test_server_ws import ask, inbox, open_chat, recv, token


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# -- the web process: frame and REST to the inbox -----------------------------------------------------------


@pytest.fixture
def web(redis_url: str, tmp_path: Path) -> Iterator[ServerProcess]:
    with ServerProcess(server_env(redis_url, tmp_path / "web")) as process:
        yield process


def _post(web: ServerProcess, path: str, body: Any, tok: str) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{web.http_url}{path}", data=json.dumps(body).encode(), method="POST",
        headers={"Authorization": f"Bearer {tok}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


async def test_a_rating_frame_and_the_rest_endpoint_post_to_the_inbox(
    web: ServerProcess, r: redis.Redis
) -> None:
    user = f"erin-{uuid.uuid4().hex[:6]}"
    ws, ready = await open_chat(web, token(web, user))
    conv = ready["conversation_id"]
    await ws.send(ask("what is the leave policy?", "q1"))
    assert (await recv(ws))["type"] == "accepted"
    rating = {
        "type": "feedback",
        "turn": 1,
        "rating": "down",
        "comment": " wrong policy ",
        "client_message_id": "f1",
    }
    await ws.send(json.dumps(rating))
    assert await recv(ws) == {"type": "accepted", "client_message_id": "f1"}
    await ws.send(json.dumps(rating))  # a retry with the same id is taken once
    assert (await recv(ws))["type"] == "accepted"
    for bad in ({"rating": "meh"}, {"turn": 0}, {"comment": "x" * 2_001}):
        await ws.send(json.dumps({**rating, **bad}))
        assert (await recv(ws))["code"] == "bad_frame", bad
    await ws.close()

    status, body = _post(
        web, f"/api/conversations/{conv}/feedback", {"turn": 1, "rating": "up"}, token(web, user)
    )
    assert (status, body) == (202, {"accepted": True})
    assert (
        _post(
            web, f"/api/conversations/{conv}/feedback", {"turn": 1, "rating": "sideways"}, token(web, user)
        )[0]
        == 400
    )
    other = token(web, "mallory")
    assert _post(web, f"/api/conversations/{conv}/feedback", {"turn": 1, "rating": "down"}, other)[0] == 403

    items = inbox(r, conv)
    ratings = [i for i in items if isinstance(i, Feedback)]
    assert [(f.turn, f.rating, f.comment, f.user) for f in ratings] == [
        (1, "down", "wrong policy", user), (1, "up", "", user)
    ]  # fmt: skip


async def test_a_rating_after_the_answer_leaves_no_turn_to_cancel(web: ServerProcess, r: redis.Redis) -> None:
    ws, ready = await open_chat(web, token(web, "fay"))
    conv = ready["conversation_id"]
    writer = StreamWriter(r, conv)
    writer.event(UserMessage(turn=1, text="q", user="fay", tenant="acme"))
    writer.event(AnswerCompleted(turn=1, text="a"))
    writer.event(Feedback(turn=1, rating="up", user="fay"))  # the last event: a turn that has ended
    await ws.send(json.dumps({"type": "cancel"}))
    await ws.send(json.dumps({"type": "ping"}))
    while (await recv(ws))["type"] != "pong":
        pass
    assert inbox(r, conv) == []  # nothing to cancel: nothing posted
    writer.event(UserMessage(turn=2, text="q2", user="fay", tenant="acme"))
    writer.event(Feedback(turn=1, rating="down", user="fay"))  # rating the first answer while turn 2 runs
    await ws.send(json.dumps({"type": "cancel"}))
    await ws.send(json.dumps({"type": "ping"}))
    while (await recv(ws))["type"] != "pong":
        pass
    assert [type(i).__name__ for i in inbox(r, conv)] == ["TurnCancelled"]
    await ws.close()


# -- the actor: into the log on the rated turn, counted -----------------------------------------------------


@pytest.fixture
def worker(tmp_path: Path, redis_url: str) -> Iterator[Runtime]:
    with ScriptedLLMThread() as llm:
        settings = make_settings(tmp_path, redis_url, llm.url, 1)
        build_index(settings)
        rt = Runtime.from_settings(settings)
        previous = runtime.configure(rt)
        yield rt
        runtime.configure(previous)
        rt.close()


def test_the_actor_logs_a_rating_on_its_turn_and_counts_it(worker: Runtime) -> None:
    conv = f"rated-{uuid.uuid4().hex[:8]}"
    alice = {"tenant": TENANT, "user": "alice", "mode": "qa"}
    answers_before = sum(_sample("docent_answers_total", route="qa", cited=c) for c in ("true", "false"))
    worker.log.post_inbox(conv, UserMessage(text="How long is parental leave?", **alice))  # type: ignore[arg-type]
    assert activate(conv, worker) == "done"
    down_before = _sample("docent_feedback_total", rating="down")
    worker.log.post_inbox(conv, Feedback(turn=1, rating="down", comment="too vague", user="alice"), "f1")
    worker.log.post_inbox(conv, Feedback(turn=7, rating="up", user="alice"), "f2")  # no such turn: dropped
    assert activate(conv, worker) == "done"
    events = [e for _, e in worker.log.read(conv)]
    assert isinstance(events[-2], AnswerCompleted)
    rated = events[-1]
    assert isinstance(rated, Feedback) and (rated.turn, rated.rating, rated.comment) == (
        1,
        "down",
        "too vague",
    )
    assert _sample("docent_feedback_total", rating="down") == down_before + 1
    answers = sum(_sample("docent_answers_total", route="qa", cited=c) for c in ("true", "false"))
    assert answers == answers_before + 1
    assert _sample("docent_retrievals_total", outcome="passages") >= 1
    tenant_day, _ = UsageLedger(worker.log.client).totals(TENANT, "alice", day_of(rated.at_ms))
    assert tenant_day.answers >= 1 and tenant_day.feedback_down >= 1  # the tenant's quality signals
    assert tenant_day.retrievals >= 1  # the no-passages rate's denominator
    answered = events[-2]
    hour = LatencyLedger(worker.log.client).series([hour_of(answered.at_ms)], TENANT).points[0]
    assert hour.answers >= 1 and hour.answer_p50_ms is not None  # the console's latency chart (store.latency)


# -- the widget ---------------------------------------------------------------------------------------------

SOURCE = Citation(n=1, chunk_id="c1", doc_id="handbook", title="Handbook", snippet="Sixteen weeks.")


@pytest.mark.browser
@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (make browser)")
async def test_the_widget_rates_an_answer_and_shows_the_logged_rating(
    browser: Any, redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    with ServerProcess(server_env(redis_url, tmp_path)) as web:
        page = await browser.new_page(viewport={"width": 900, "height": 600})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(f"{web.http_url}/?token={mint_token(web.settings, 'acme', 'alice', ttl=600)}")
        await page.wait_for_selector('.docent-status[data-state="connected"]', timeout=WAIT_MS)
        conv = str(await page.get_attribute(".docent", "data-conversation"))
        await page.fill(".docent-input", "How long is parental leave?")
        await page.click(".docent-send")
        asked = await _first_inbox(r, conv)
        writer = StreamWriter(r, conv)
        writer.event(UserMessage(turn=1, text=asked.text, user="alice", tenant="acme",
                                 client_message_id=asked.client_message_id))  # fmt: skip
        writer.event(AnswerCompleted(turn=1, text="Sixteen weeks [1].", citations=(SOURCE,)))
        bar = page.locator(".docent-turn[data-turn='1'] .docent-feedback")
        await bar.wait_for(state="visible", timeout=WAIT_MS)
        await bar.locator(".docent-feedback-comment").fill("cite the policy itself")
        await bar.locator(".docent-feedback-down").click()
        rating = await _inbox_feedback(r, conv)
        assert (rating.turn, rating.rating, rating.comment, rating.user) == (
            1, "down", "cite the policy itself", "alice"
        )  # fmt: skip
        writer.event(Feedback(turn=1, rating="down", comment=rating.comment, user="alice"))  # the actor's
        await page.wait_for_selector(".docent-feedback[data-chosen='down']", timeout=WAIT_MS)
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        await page.screenshot(path=str(SCREENSHOTS / "feedback.png"))
        await page.reload()  # replayed from the log: the rating is still shown
        await page.wait_for_selector(".docent-feedback[data-chosen='down']", timeout=WAIT_MS)
        assert errors == []


async def _first_inbox(r: redis.Redis, conv: str) -> UserMessage:
    items = await _wait_inbox(r, conv, UserMessage)
    assert isinstance(items, UserMessage)
    return items


async def _inbox_feedback(r: redis.Redis, conv: str) -> Feedback:
    item = await _wait_inbox(r, conv, Feedback)
    assert isinstance(item, Feedback)
    return item


async def _wait_inbox(r: redis.Redis, conv: str, kind: type) -> object:
    for _ in range(200):
        found = [i for i in inbox(r, conv) if isinstance(i, kind)]
        if found:
            return found[0]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {kind.__name__} reached the inbox")


# -- a down-voted answer: a golden-set candidate, accepted into the gate's golden set -----------------------


def test_a_down_voted_answer_becomes_one_golden_set_candidate(worker: Runtime, r: redis.Redis) -> None:
    conv = f"golden-{uuid.uuid4().hex[:8]}"
    alice = {"tenant": TENANT, "user": "alice", "mode": "qa"}
    worker.log.post_inbox(conv, UserMessage(text="How long is parental leave?", **alice))  # type: ignore[arg-type]
    assert activate(conv, worker) == "done"
    worker.log.post_inbox(conv, Feedback(turn=1, rating="up", user="alice"), "g0")  # not a candidate
    worker.log.post_inbox(conv, Feedback(turn=1, rating="down", comment="wrong doc", user="alice"), "g1")
    worker.log.post_inbox(conv, Feedback(turn=1, rating="down", user="alice"), "g2")  # the same turn again
    assert activate(conv, worker) == "done"
    mine = [c for c in CandidateStore(r).listed(TENANT) if c.conversation_id == conv]
    assert len(mine) == 1
    (candidate,) = mine
    assert (candidate.turn, candidate.question, candidate.comment, candidate.status) == (
        1, "How long is parental leave?", "wrong doc", "open"
    )  # fmt: skip
    assert candidate.answer and candidate.passages  # what the model said, and was given


async def test_an_admin_accepts_a_candidate_into_the_gates_golden_set(
    redis_url: str, r: redis.Redis, tmp_path: Path
) -> None:
    tenant = f"gold-{uuid.uuid4().hex[:6]}"
    store = CandidateStore(r)
    candidate = Candidate(id=uuid.uuid4().hex[:24], tenant=tenant, conversation_id="c", turn=1,
                          question="how many weeks of parental leave?", created_ms=1)  # fmt: skip
    assert store.propose(candidate) and not store.propose(candidate)
    data_dir = tmp_path / "web"
    with ServerProcess(server_env(redis_url, data_dir)) as web:
        base = f"{web.http_url}/admin/golden/candidates"
        status, listed = await asyncio.to_thread(_admin, f"{base}?tenant={tenant}&status=open")
        assert status == 200 and [c["id"] for c in listed["candidates"]] == [candidate.id]
        path = f"{base}/{candidate.id}?tenant={tenant}"
        assert (await asyncio.to_thread(_admin, path, {"doc_id": "x", "dismiss": True}))[0] == 400
        assert (await asyncio.to_thread(_admin, f"{base}/nope?tenant={tenant}", {"dismiss": True}))[0] == 404
        status, decided = await asyncio.to_thread(_admin, path, {"doc_id": "leave-policy"})
        assert status == 200 and (decided["status"], decided["doc_id"]) == ("accepted", "leave-policy")
    settings = Settings.from_env({"DOCENT_DATA_DIR": str(data_dir)})
    directory = golden_dir(settings.data_path)
    assert directory in golden_dirs(settings)  # the reindex gate checks it now
    golden = load_golden(directory, {"leave-policy"})
    assert golden is not None and (candidate.id, candidate.question) in golden.queries
    assert golden.qrels[candidate.id] == {"leave-policy": 1}


def _admin(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    request.add_header("X-Admin-Key", TEST_ADMIN_KEY)
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())
