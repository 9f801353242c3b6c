"""match_documents: names from a request against the titles of the documents the principal may read.

Low risk, read-only, logged like any tool call (intent, result with the typed `DocumentMatches`), so a
replayed workflow reuses the recorded matches. Offered to workflows only, never to the agent's model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Protocol, runtime_checkable

import msgspec

from actors.tools.knowledge import knowledge_of
from actors.tools.registry import Tool, ToolArgs, ToolContext, ToolOutput
from actors.tools.titles import match_name
from index.types import Principal
from store.exceptions import ToolError
from store.tool_payloads import DocumentMatches, TitleMatch

MAX_NAMES = 5
MAX_NAME_CHARS = 120

NameArg = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_NAME_CHARS, pattern=r"^[^\x00-\x1f]+$")]


class MatchArgs(ToolArgs, frozen=True):
    names: Annotated[list[NameArg], msgspec.Meta(min_length=1, max_length=MAX_NAMES)]


@runtime_checkable
class TitleCatalog(Protocol):
    async def titles(self, principal: Principal) -> Sequence[tuple[str, str]]:
        """(doc_id, title) of every document this principal may read."""
        ...


def describe(match: TitleMatch) -> str:
    if match.doc_id:
        return f"{match.name!r} → {match.title} (doc_id={match.doc_id})"
    if match.candidates:
        return f"{match.name!r} is ambiguous: {'; '.join(c.title for c in match.candidates)}"
    return f"{match.name!r} matches no document you may read"


async def match_documents(args: MatchArgs, ctx: ToolContext) -> ToolOutput:
    knowledge = knowledge_of(ctx)
    if not isinstance(knowledge, TitleCatalog):
        raise ToolError("this knowledge base cannot list document titles")
    documents = list(await knowledge.titles(ctx.principal))
    matches = tuple(match_name(name, documents) for name in args.names)
    return ToolOutput(text="\n".join(describe(m) for m in matches), data=DocumentMatches(matches=matches))


MATCH_TOOL: Tool[MatchArgs] = Tool(
    name="match_documents",
    description="Match document names against the titles of the documents the user may read.",
    args_type=MatchArgs,
    run=match_documents,
    needs_knowledge_base=True,
)
