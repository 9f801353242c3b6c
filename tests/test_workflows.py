"""Workflows on the conversation actor: a real Redis, a real index of the demo license texts (hash
embedder), the real SMTP sink, the actor's own activation function, and no model that can call tools
(`DOCENT_LLM_BACKEND=none`). Plus the pure parts: inputs, title matching, routing, definition files."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dramatiq
import msgspec
import pytest

from actors.broker import use_stub_broker

if dramatiq.broker.global_broker is None:  # before the actor module declares its actor
    use_stub_broker()

from actors.conversation import activate
from actors.plan import StartTurn
from actors.runtime import Runtime
from actors.testing import SinkThread, SmtpSink
from actors.tools.titles import match_name
from actors.workflows import workflows_for
from actors.workflows.inputs import extract
from actors.workflows.library import definitions, read
from store.events import (
    AnswerCompleted,
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Event,
    LLMRequested,
    ToolIntent,
    ToolResult,
    TurnStarted,
    UserMessage,
)
from store.exceptions import ConfigError
from store.settings import Settings
from store.tool_payloads import ComparisonTable
from tests.test_approvals_e2e import build_index

TENANT = "default"
LICENSES = ("license/mit", "license/bsd-3-clause", "license/apache-2.0", "license/gpl-2.0", "license/gpl-3.0")
ALICE = {"tenant": TENANT, "user": "alice", "groups": ("legal",)}
TENANT_FLOW = """
[[workflows]]
name = "contract_review"
title = "Contract review of {documents}"
triggers = ['\\breview\\b']
priority = 30
steps = [
  { kind = "find_documents", min_docs = 2 },
  { kind = "compare", fields = ["warranty", "liability"] },
  { kind = "http_write", url = "SINK/reviews" },
]
"""
HEADLINE = (
    "Compare the MIT, BSD-3-Clause and Apache-2.0 licenses in a table and email it to legal@example.com"
)


class Crash(BaseException):
    """Escapes the actor's step guard the way a SIGKILL would: nothing after the effect is recorded."""


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    with SinkThread(sink):
        yield sink


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory, redis_server: Any, smtp: SmtpSink) -> Settings:
    root = tmp_path_factory.mktemp("workflows")
    env = {"DOCENT_DATA_DIR": str(root / "data"), "DOCENT_ALLOWED_ROOTS": str(root),
           "DOCENT_REDIS_URL": redis_server.url, "DOCENT_EMBED_MODEL": "hash", "DOCENT_LLM_BACKEND": "none",
           "DOCENT_SMTP_PORT": str(smtp.port), "DOCENT_TOP_K": "3"}  # fmt: skip
    built = Settings.from_env(env)
    build_index(built, root / "demo-src", LICENSES)
    return built


@pytest.fixture
def rt(settings: Settings) -> Iterator[Runtime]:
    runtime = Runtime.from_settings(settings)
    yield runtime
    runtime.close()


def ask(rt: Runtime, conv: str, text: str, mode: str = "auto") -> list[Event]:
    rt.log.post_inbox(conv, UserMessage(text=text, mode=mode, **ALICE))  # type: ignore[arg-type]
    activate(conv, rt)
    return events(rt, conv)


def events(rt: Runtime, conv: str) -> list[Event]:
    return [e for _, e in rt.log.read(conv)]


def of(items: list[Event], kind: type) -> list[Any]:
    return [e for e in items if isinstance(e, kind)]


def decide(rt: Runtime, conv: str, decision: str) -> list[Event]:
    (request,) = of(events(rt, conv), ApprovalRequested)
    item: Event = (
        ApprovalExpired(approval_id=request.approval_id)
        if decision == "expired"
        else ApprovalDecided(approval_id=request.approval_id, decision=decision, reviewer="rita")  # type: ignore[arg-type]
    )
    rt.log.post_inbox(conv, item)
    activate(conv, rt)
    return events(rt, conv)


# ---- the pure parts -------------------------------------------------------------------------------------


def test_inputs_are_extracted_by_code() -> None:
    inputs = extract(HEADLINE)
    assert inputs.names == ("MIT", "BSD-3-Clause", "Apache-2.0") and inputs.emails == ("legal@example.com",)
    assert extract("compare these three contracts into a table and email it").names == ()
    assert extract("Compare MIT with Apache-2.0 on warranty and patents").fields == ("warranty", "patents")
    assert extract("Summarise the MIT license and mail it to bob@example.com.").names == ("MIT",)
    assert extract("Find the documents about patent grants, with citations").topic == "patent grants"


def test_names_match_catalog_titles_fuzzily_or_are_reported_ambiguous() -> None:
    docs = [
        ("license/mit", "MIT License"),
        ("license/bsd-3-clause", "BSD 3-Clause License"),
        ("license/apache-2.0", "Apache License 2.0"),
        ("license/gpl-3.0", "GNU General Public License v3.0"),
        ("license/gpl-2.0", "GNU General Public License v2.0"),
    ]
    names = ("MIT", "BSD-3-Clause", "Apache-2.0", "apache", "GNU GPL v3")
    expected = ["license/mit", "license/bsd-3-clause", "license/apache-2.0", "license/apache-2.0"]
    expected.append("license/gpl-3.0")
    assert [match_name(n, docs).doc_id for n in names] == expected
    gpl = match_name("GPL", docs)
    assert gpl.doc_id == "" and len(gpl.candidates) == 2
    assert match_name("three", docs).doc_id == "" and not match_name("three", docs).candidates


def test_routing_picks_a_workflow_first_and_keeps_explicit_choices(settings: Settings) -> None:
    flows = workflows_for(settings)
    qa = StartTurn(route="qa", reason="a question")
    agent = StartTurn(route="agent", reason="task verb 'send'")

    def route(text: str, mode: str = "auto", default: StartTurn = qa) -> StartTurn:
        return flows.route(UserMessage(text=text, mode=mode, **ALICE), default)  # type: ignore[arg-type]

    assert route(HEADLINE, default=agent).workflow == "compare_table"
    assert route("summarise the MIT license").workflow == "summarise_document"
    assert route("which documents are about patents?").workflow == "find_documents"
    assert route(HEADLINE, mode="qa") == qa
    assert route(HEADLINE, mode="agent").workflow == "compare_table"  # this model cannot run the agent loop
    assert route("How long is parental leave?") == qa
    refused = route("send the quarterly report to finance", default=agent)
    assert refused.route == "agent" and "cannot call tools" in refused.reason


def test_a_tenant_file_adds_and_overrides_workflows(tmp_path: Path) -> None:
    own = tmp_path / "flows.toml"
    own.write_text(
        '[[workflows]]\nname = "compare_table"\ntitle = "Contract review of {documents}"\n'
        'tenants = ["acme"]\ntriggers = ["\\\\bcompare\\\\b"]\n'
        'steps = [{kind = "find_documents", min_docs = 2}, {kind = "compare", fields = ["term", "price"]}]\n'
    )
    loaded = definitions(str(own))
    acme = next(d for d in loaded if d.name == "compare_table" and d.serves("acme"))
    assert acme.title.startswith("Contract review") and len(loaded) == 4
    other = next(d for d in loaded if d.name == "compare_table" and d.serves("other"))
    assert other.title.startswith("Comparison")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    example = readme.split("# /etc/docent/workflows.toml")[1].split("\n", 1)[1].split("```")[0]
    (tmp_path / "readme.toml").write_text(example)
    (review,) = read(tmp_path / "readme.toml").workflows  # the README's example is a valid definition
    assert review.name == "contract_review" and review.serves("acme") and not review.serves("other")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"workflows": [{"name": "x", "title": "x", "triggers": ["("], "steps": []}]}))
    with pytest.raises(ConfigError):
        read(bad)


# ---- on the actor ---------------------------------------------------------------------------------------


def test_a_tenant_workflow_files_the_table_over_http_after_approval(
    settings: Settings, tmp_path: Path
) -> None:
    from actors.testing import HttpSink

    http = HttpSink()
    with SinkThread(http):
        own = tmp_path / "flows.toml"
        own.write_text(TENANT_FLOW.replace("SINK", http.url))
        extra = {"workflows_path": str(own), "http_allow_hosts": "127.0.0.1", "http_allow_private": True}
        rt = Runtime.from_settings(msgspec.structs.replace(settings, **extra))
        logged = ask(rt, "wf-http", "Please review the MIT and BSD-3-Clause contracts")
        (started,) = of(logged, TurnStarted)
        (request,) = of(logged, ApprovalRequested)
        assert started.workflow == "contract_review" and request.tool == "http_request"
        assert request.room == "external-writes" and http.stats()["http"]["effects"] == 0
        done = decide(rt, "wf-http", "approved")
        assert "Sent to " in of(done, AnswerCompleted)[0].text
        assert http.stats()["http"]["effects"] == 1 and http.stats()["http"]["without_key"] == 0
        rt.close()


def test_compare_table_then_approved_email_sends_once(rt: Runtime, smtp: SmtpSink) -> None:
    smtp.reset()
    logged = ask(rt, "wf-compare", HEADLINE)
    (started,) = of(logged, TurnStarted)
    assert (started.route, started.workflow) == ("workflow", "compare_table")
    assert "MIT, BSD-3-Clause, Apache-2.0" in started.reason and "legal@example.com" in started.reason
    assert [i.tool for i in of(logged, ToolIntent)] == ["match_documents", "compare_documents"]
    assert all(i.idempotency_key for i in of(logged, ToolIntent)) and not of(logged, LLMRequested)
    table = next(r.data for r in of(logged, ToolResult) if isinstance(r.data, ComparisonTable))
    assert [row.doc_id for row in table.rows] == ["license/mit", "license/bsd-3-clause", "license/apache-2.0"]
    (request,) = of(logged, ApprovalRequested)
    assert (
        request.tool == "send_email"
        and request.room == "email"
        and "Workflow compare_table" in request.reason
    )
    assert request.args["to"] == ["legal@example.com"] and "| MIT License [1] |" in request.args["body"]
    assert smtp.messages == []

    done = decide(rt, "wf-compare", "approved")
    (answer,) = of(done, AnswerCompleted)
    assert "| Document |" in answer.text and "Emailed to legal@example.com." in answer.text
    assert [c.doc_id for c in answer.citations] == [
        "license/mit",
        "license/bsd-3-clause",
        "license/apache-2.0",
    ]
    (mail,) = smtp.messages
    assert mail.rcpt_to == ("legal@example.com",) and "BSD 3-Clause License [2]" in mail.data.decode()
    activate("wf-compare", rt)
    assert events(rt, "wf-compare") == done  # replay: nothing new, nothing sent again


def test_denied_and_expired_emails_are_reported_not_sent(rt: Runtime, smtp: SmtpSink) -> None:
    smtp.reset()
    for conv, outcome in (("wf-deny", "denied"), ("wf-expire", "expired")):
        ask(rt, conv, HEADLINE)
        done = decide(rt, conv, outcome)
        (answer,) = of(done, AnswerCompleted)
        assert "| Document |" in answer.text and "Not emailed to legal@example.com" in answer.text
        assert not [i for i in of(done, ToolIntent) if i.tool == "send_email"]
    assert smtp.messages == []


def test_a_crash_after_the_send_replays_with_the_same_message_id(settings: Settings, smtp: SmtpSink) -> None:
    smtp.reset()
    crashes: list[str] = []

    def crash_once(point: str) -> None:
        if point == "tool_effect" and not crashes and smtp.messages:
            crashes.append(point)
            raise Crash()

    crashing = Runtime.from_settings(settings, crash=crash_once)
    ask(crashing, "wf-crash", HEADLINE)
    with pytest.raises(Crash):
        decide(crashing, "wf-crash", "approved")
    crashing.close()
    healthy = Runtime.from_settings(settings)
    activate("wf-crash", healthy)
    logged = events(healthy, "wf-crash")
    (intent,) = [i for i in of(logged, ToolIntent) if i.tool == "send_email"]
    assert len([r for r in of(logged, ToolResult) if r.tool == "send_email"]) == 1
    # Redelivered once with the same Message-ID (the receiver collapses it): one effect.
    assert smtp.deliveries_by_id == {f"<{intent.idempotency_key}@docent>": 2} and smtp.duplicates == 1
    assert isinstance(logged[-1], AnswerCompleted)
    healthy.close()


def test_missing_and_ambiguous_inputs_get_a_question_back(rt: Runtime) -> None:
    one = ask(rt, "wf-q1", "compare these three contracts into a table")
    assert "which documents should I use" in of(one, AnswerCompleted)[0].text and not of(one, ToolIntent)
    gpl = ask(rt, "wf-q2", "Compare GPL and MIT in a table")
    text = of(gpl, AnswerCompleted)[0].text
    assert "GNU General Public License v2.0" in text and "v3.0" in text and "Which one?" in text
    assert [i.tool for i in of(gpl, ToolIntent)] == ["match_documents"]


def test_summarise_is_extractive_and_labelled_without_a_writing_model(rt: Runtime) -> None:
    logged = ask(rt, "wf-sum", "Summarise the BSD-3-Clause license")
    (answer,) = of(logged, AnswerCompleted)
    assert (
        "Extractive summary of BSD 3-Clause License [1]" in answer.text
        and "no model wrote this" in answer.text
    )
    assert "Redistribution" in answer.text and answer.citations[0].doc_id == "license/bsd-3-clause"
    assert not of(logged, LLMRequested) and not of(logged, ApprovalRequested)


def test_a_model_that_writes_gets_the_summary_to_write_and_no_tools(settings: Settings) -> None:
    from actors.testing import ScriptedLLMThread

    script = {"steps": [{"text": "Redistribution is allowed if the notice is kept [1]."}]}
    with ScriptedLLMThread({"sum": script}) as llm:
        extra = {"llm_backend": "openai", "llm_url": llm.url, "llm_max_retries": 0}
        rt = Runtime.from_settings(msgspec.structs.replace(settings, **extra))
        logged = ask(rt, "wf-llm", "[script:sum@wf-llm] Summarise the BSD-3-Clause license")
        rt.close()
    (started,) = of(logged, TurnStarted)
    (requested,) = of(logged, LLMRequested)
    assert started.workflow == "summarise_document" and requested.tools == ()
    assert "Redistribution and use in source and binary forms" in requested.messages[-1]["content"]
    (answer,) = of(logged, AnswerCompleted)
    assert (
        "written by" in answer.text and "Redistribution is allowed if the notice is kept [1]." in answer.text
    )
    assert "Extractive" not in answer.text and answer.citations[0].doc_id == "license/bsd-3-clause"


def test_find_lists_documents_with_citations(rt: Runtime) -> None:
    logged = ask(rt, "wf-find", "Find the documents about patent licenses")
    (answer,) = of(logged, AnswerCompleted)
    assert answer.text.startswith("**Documents about patent licenses**") and answer.citations
    assert {c.doc_id for c in answer.citations} <= set(LICENSES)


def test_an_agent_request_the_model_cannot_run_is_refused_honestly(rt: Runtime) -> None:
    logged = ask(rt, "wf-agent", "send the quarterly numbers to finance@example.com", mode="agent")
    (started,) = of(logged, TurnStarted)
    assert started.route == "agent" and "cannot call tools" in started.reason
    (answer,) = of(logged, AnswerCompleted)
    assert "cannot call tools" in answer.text and "Nothing was searched, sent or changed" in answer.text
    assert not of(logged, LLMRequested) and not of(logged, ToolIntent)
