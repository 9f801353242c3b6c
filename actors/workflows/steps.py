"""A workflow's next step, decided from the folded state alone (pure, like `actors.plan.next_action`).

Steps run in definition order; a step is done when its tool result (or its model reply) is recorded. Each
tool step is a `ToolCall` whose id and arguments follow from the definition, the request and earlier
results, so a replay rebuilds the same call: an intent without a result is re-issued with the same
idempotency key, and an approval is never asked twice (`actors.plan.next_for_call`, the agent's rule).
"""

from __future__ import annotations

from typing import Any

import msgspec

from actors.plan import (
    MAX_LLM_FAILURES_PER_STEP,
    Action,
    CallLLM,
    CheckCall,
    Finish,
    RequestApproval,
    next_for_call,
)
from actors.workflows import progress, questions
from actors.workflows.answer import answer, body, title
from actors.workflows.definitions import (
    Compare,
    FindDocuments,
    HttpWrite,
    ListDocuments,
    ReadDocument,
    Search,
    SendEmail,
    Step,
    Summarise,
)
from actors.workflows.run import Run, call_id
from store.events import ToolCall

MAX_SUBJECT_CHARS = 200


def next_step(run: Run, check: CheckCall) -> Action:
    for index, step in enumerate(run.definition.steps):
        action = step_action(run, index, step, check)
        if action is not None:
            return action
    return Finish(text=answer(run))


def step_action(run: Run, index: int, step: Step, check: CheckCall) -> Action | None:
    match step:
        case FindDocuments():
            return find(run, index, step, check)
        case Search(k=k):
            if not run.inputs.topic:
                return Finish(text=questions.topic_missing(run.definition))
            return tool(run, index, "search_knowledge_base", {"query": run.inputs.topic, "k": k}, check)
        case ReadDocument(max_chars=max_chars):
            doc_id = progress.documents(run)[0].doc_id
            return tool(run, index, "read_document", {"doc_id": doc_id, "max_chars": max_chars}, check)
        case Compare(fields=fields):
            doc_ids = [m.doc_id for m in progress.documents(run)]
            args = {"doc_ids": doc_ids, "fields": list(run.inputs.fields or fields)}
            return tool(run, index, "compare_documents", args, check)
        case Summarise():
            return summarise(run, index)
        case ListDocuments():
            return None
        case SendEmail():
            return email(run, index, step, check)
        case HttpWrite():
            return http_write(run, index, step, check)


def tool(
    run: Run, index: int, name: str, args: dict[str, Any], check: CheckCall, effect: bool = False
) -> Action | None:
    """None when the step is done; else the call's next action. A read step that failed ends the run with
    its error; an effect that failed or was denied is reported in the answer, and the run goes on."""
    call = ToolCall(id=call_id(index, run.definition.steps[index]), name=name,
                    arguments=msgspec.json.encode(args).decode())  # fmt: skip
    result = run.turn.results.get(call.id)
    if result is not None:
        if result.error is None or effect:
            return None
        return Finish(text=f"**{title(run)}**\n\nI could not finish: {name} failed ({result.error}).")
    action = next_for_call(run.turn, index, call, check)
    if isinstance(action, RequestApproval):
        return msgspec.structs.replace(action, reason=approval_reason(run, index, name))
    return action


def approval_reason(run: Run, index: int, name: str) -> str:
    steps = len(run.definition.steps)
    return (f"Workflow {run.definition.name}, step {index + 1} of {steps}: {name} with “{title(run)}”, "
            "as the user's request says.")  # fmt: skip


def find(run: Run, index: int, step: FindDocuments, check: CheckCall) -> Action | None:
    names = run.inputs.names
    if len(names) < step.min_docs:
        return Finish(text=questions.names_missing(run.definition, step, names))
    if len(names) > step.max_docs:
        return Finish(text=questions.too_many(step, names))
    action = tool(run, index, "match_documents", {"names": list(names)}, check)
    if action is not None:
        return action
    if (question := questions.unresolved(progress.matches(run))) is not None:
        return Finish(text=question)
    found = len(progress.documents(run))
    return Finish(text=questions.too_few(step, found)) if found < step.min_docs else None


def summarise(run: Run, index: int) -> Action | None:
    """The configured model writes the summary (offered no tools); after repeated failures, or with a model
    that does not write (local, none), the answer carries an extractive summary instead."""
    turn = run.turn
    if not run.writer or index in turn.llm_completed:
        return None
    if turn.llm_failures.get(index, 0) >= MAX_LLM_FAILURES_PER_STEP:
        return None
    return CallLLM(step=index)


def email(run: Run, index: int, step: SendEmail, check: CheckCall) -> Action | None:
    if not run.inputs.emails:
        return Finish(text=questions.address_missing()) if step.required else None
    subject = step.subject.replace("{title}", title(run))[:MAX_SUBJECT_CHARS]
    args = {"to": list(run.inputs.emails), "subject": subject, "body": body(run)}
    return tool(run, index, "send_email", args, check, effect=True)


def http_write(run: Run, index: int, step: HttpWrite, check: CheckCall) -> Action | None:
    payload = msgspec.json.encode({"workflow": run.definition.name, "title": title(run), "body": body(run)})
    args = {"url": step.url, "method": step.method, "headers": {"Content-Type": "application/json"},
            "body": payload.decode()}  # fmt: skip
    return tool(run, index, "http_request", args, check, effect=True)
