"""A workflow's definition: named, typed steps over the existing tools (msgspec tagged union `kind`).

Steps run in order; each is a tool call (or a model call that only writes text) recorded in the
conversation log with the same events the agent loop writes. Which step runs next is decided by
`actors.workflows.steps` from the folded state alone.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Pattern = Annotated[str, msgspec.Meta(min_length=1, max_length=500)]


class _Step(msgspec.Struct, frozen=True, kw_only=True, tag_field="kind", forbid_unknown_fields=True):
    pass


class FindDocuments(_Step, frozen=True, kw_only=True, tag="find_documents"):
    """Match the document names in the request against the catalog's titles (tool `match_documents`)."""

    min_docs: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    max_docs: Annotated[int, msgspec.Meta(ge=1, le=5)] = 5


class Search(_Step, frozen=True, kw_only=True, tag="search"):
    """Search the knowledge base for the request's topic (tool `search_knowledge_base`)."""

    k: Annotated[int, msgspec.Meta(ge=1, le=10)] = 8


class ReadDocument(_Step, frozen=True, kw_only=True, tag="read"):
    """Read the first document found (tool `read_document`)."""

    max_chars: Annotated[int, msgspec.Meta(ge=100, le=50_000)] = 20_000


class Compare(_Step, frozen=True, kw_only=True, tag="compare"):
    """Compare the documents found into a table (tool `compare_documents`); fields named in the request
    ("on warranty and patents") replace the defaults."""

    fields: tuple[str, ...] = ("redistribution", "attribution", "patent", "warranty", "liability")


class Summarise(_Step, frozen=True, kw_only=True, tag="summarise"):
    """Summarise the document read: the configured model writes the text (it is offered no tools); a model
    that cannot (the local one, none) gets a deterministic extractive summary, labelled as such."""

    sentences: Annotated[int, msgspec.Meta(ge=1, le=12)] = 5


class ListDocuments(_Step, frozen=True, kw_only=True, tag="list"):
    """List the documents the search found, one line each with its citation."""


class SendEmail(_Step, frozen=True, kw_only=True, tag="email"):
    """Email what the run produced (tool `send_email`: high risk, so a reviewer approves it first).
    Optional: runs only when the request names an address; required: asks for one when it does not."""

    subject: str = "{title}"
    required: bool = False


class HttpWrite(_Step, frozen=True, kw_only=True, tag="http_write"):
    """POST (or PUT) what the run produced as JSON to a fixed URL (tool `http_request`: a write, so high
    risk). The URL comes from the definition, never from the request."""

    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"


Step = FindDocuments | Search | ReadDocument | Compare | Summarise | ListDocuments | SendEmail | HttpWrite


class Definition(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A workflow: when it applies (regexes over the request, any one matching), and its steps."""

    name: Name
    title: str  # what the answer and the email subject call it
    description: str = ""
    triggers: tuple[Pattern, ...]
    steps: tuple[Step, ...]
    tenants: tuple[str, ...] = ("*",)  # the tenants it serves ("*": every tenant)
    priority: int = 0  # when several match, the highest wins (then the file order)

    def serves(self, tenant: str) -> bool:
        return "*" in self.tenants or tenant in self.tenants


class Library(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A workflow file: the shipped one (`shipped.toml`) or a tenant's (`DOCENT_WORKFLOWS_PATH`)."""

    workflows: tuple[Definition, ...] = ()
