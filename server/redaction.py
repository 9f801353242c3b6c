"""A reader's view of a conversation's events: what the reader's own document ACL forbids is redacted.

Every read of event content goes through `EventView`: `GET /api/conversations/{id}/events`, `/ws/chat`
(replay and live frames) and the admin trace. Every reader, the conversation's owner too, reads it under
its ACL of now: an owner who lost access to a document since (`PUT /api/documents/{id}/readers`) no longer
reads it in the replay. Each reader gets each event with

- structured references to a document the reader may not read replaced: a `retrieval_done` chunk id by
  REDACTED, a citation, source or tool hit by `{"n": n, "redacted": true}`, tool arguments naming it by
  `{"redacted": true}`;
- every text (prompts, tool results, answers) cleared of those documents' passages: a run of at least
  SHINGLE_WORDS words that occurs in such a document (and in no document of the conversation the reader
  may read) becomes REDACTED, and so do the document's id and title;
- `"redacted": <count>` on the event when anything was removed.

Token deltas are not sent to readers other than the owner (a stream of fragments cannot be checked); the
completed answer, redacted, is. The owner's deltas are its own turn's, retrieved under its ACL of now.
Chunks and documents are looked up in the catalog (SQLite: no index is loaded); a document the catalog
never had, or a chunk id it no longer has, has nothing to protect and is left as it is (a deleted document
keeps its row: references to it are redacted for every reader).
"""

from __future__ import annotations

import enum
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import msgspec
import redis.asyncio as aredis

from index.types import Principal as Reader
from server.auth import Principal
from store.blocking import run_blocking
from store.catalog import Catalog
from store.catalog_types import CatalogDocument
from store.conversations import ConversationMeta
from store.log import conv_keys

REDACTED = "[redacted]"
SHINGLE_WORDS = 8
MIN_NAME_CHARS = 6  # shorter document ids and titles are too common a string to redact as text
# Fields that name the event's own structure, never document content: left as they are.
STRUCTURAL_FIELDS = frozenset(
    {"type", "role", "tool", "name", "model", "prompt_hash", "idempotency_key", "call_id", "approval_id",
     "index_version", "code", "mode", "route", "user", "tenant", "id", "tool_call_id"}
)  # fmt: skip
LOG_PAGE = 500
DOCUMENT_SHINGLE_CACHE = 64  # documents whose fingerprints the web process keeps (a 100 KB page: ~1 MB)
_WORD = re.compile(r"\w+")
_CHUNK_REF = re.compile(r"chunk_id=([0-9a-f]{32})")
_DOC_REF = re.compile(r"doc_id=([^\s)'\"]+)")
_TEXT_REF_MARK = "_id="  # in every match of _CHUNK_REF and _DOC_REF
_ID_MARK = b"_id"  # in every structured reference's key and in every text reference
_UNICODE_ESCAPE = b"\\u"
_SEQUENCES = (list, tuple)
_CONTAINERS = (dict, list, tuple)

Json = Any


@lru_cache(maxsize=8)
def catalog_for(data_path: Path) -> Catalog:
    return Catalog.for_data_dir(data_path)


def _shingles(text: str) -> set[int]:
    words = [w.lower() for w in _WORD.findall(text)]
    return {hash("\x1f".join(words[i : i + SHINGLE_WORDS])) for i in range(len(words) - SHINGLE_WORDS + 1)}


@lru_cache(maxsize=DOCUMENT_SHINGLE_CACHE)
def _document_shingles(
    catalog: Catalog, doc_id: str, content_hash: str, updated_at_ms: int
) -> frozenset[int]:
    """A stored document's text fingerprints, once per process for each version of it (the catalog's
    text changes only with its content hash or update time, which are part of the key)."""
    return frozenset(_shingles(catalog.document_text(doc_id) or ""))


def references(value: Json, chunks: set[str], docs: set[str]) -> None:
    """Collect the chunk and document ids `value` names, structured or in text."""
    if isinstance(value, str):
        if _TEXT_REF_MARK in value:  # both text references contain it; most texts (prompts) have neither
            chunks.update(_CHUNK_REF.findall(value))
            docs.update(_DOC_REF.findall(value))
    elif isinstance(value, dict):
        for key, item in value.items():
            if key == "doc_id" and isinstance(item, str):
                docs.add(item)
            elif key == "chunk_id" and isinstance(item, str):
                chunks.add(item)
            elif key == "chunk_ids" and isinstance(item, _SEQUENCES):
                chunks.update(c for c in item if isinstance(c, str))
            if isinstance(item, _CONTAINERS) or (isinstance(item, str) and _TEXT_REF_MARK in item):
                references(item, chunks, docs)  # (numbers, booleans and plain texts: nothing to walk)
    elif isinstance(value, _SEQUENCES):
        for item in value:
            references(item, chunks, docs)


class Redactor:
    """One reader's knowledge of one conversation: which referenced documents it may read, and the
    fingerprints of those it may not. Blocking (catalog reads)."""

    def __init__(self, catalog: Catalog, reader: Reader) -> None:
        self.catalog = catalog
        self.reader = reader
        self.pending_chunks: set[str] = set()
        self.pending_docs: set[str] = set()
        self.chunk_doc: dict[str, str] = {}
        self.readable: dict[str, bool] = {}
        # Fingerprints, one set per document (shared, never copied): a reader who may read every document
        # referenced has no secret, and its texts are never scanned.
        self.secret: list[frozenset[int]] = []
        self.allowed: list[frozenset[int]] = []
        self._unscanned: list[tuple[str, CatalogDocument | None, list[str]]] = []  # readable, not yet scanned
        self.exact: set[str] = set()

    def learn(self, event: Json) -> None:
        references(event, self.pending_chunks, self.pending_docs)

    def shown_as_is(self, event: Json) -> bool:
        """Learn `event`'s references; True when the reader sees it unchanged with no catalog read: it has
        no secret yet and every document the event names is known and readable (`redact` would copy it
        as it is). False: `redact` it (blocking)."""
        self.learn(event)
        if self.secret or self.exact or not self.pending_chunks <= self.chunk_doc.keys():
            return False
        docs = self.pending_docs | {self.chunk_doc[c] for c in self.pending_chunks}
        if not all(self.readable.get(d, False) for d in docs):
            return False
        self.pending_chunks, self.pending_docs = set(), set()
        return True

    def names_nothing(self, encoded: bytes) -> bool:
        """True when the JSON `encoded` event would be shown unchanged, read from its bytes alone: the
        reader has no secret yet, nothing is pending, and the bytes hold no `_id` (every reference does:
        the keys doc_id, chunk_id, chunk_ids and both text forms) and no `\\u` escape (the one way JSON
        can spell a letter or `_` otherwise). False says nothing: decode it and ask `shown_as_is`."""
        if self.secret or self.exact or self.pending_chunks or self.pending_docs:
            return False
        return _ID_MARK not in encoded and _UNICODE_ESCAPE not in encoded

    def redact(self, event: dict[str, Any]) -> dict[str, Any]:
        self.learn(event)
        self._resolve()
        counter = [0]
        out: dict[str, Any] = self._value(event, counter)
        if counter[0]:
            out["redacted"] = counter[0]
        return out

    # -- what the reader may read ------------------------------------------------------------------

    def _resolve(self) -> None:
        chunks = self.pending_chunks - self.chunk_doc.keys()
        rows = self.catalog.chunks_by_id(sorted(chunks)) if chunks else []
        self.chunk_doc.update((r.chunk_id, r.doc_id) for r in rows)
        docs = (self.pending_docs | {r.doc_id for r in rows}) - self.readable.keys()
        self.pending_chunks, self.pending_docs = set(), set()
        for doc_id in sorted(docs):
            self._judge(doc_id, [r.text for r in rows if r.doc_id == doc_id])

    def _judge(self, doc_id: str, chunk_texts: list[str]) -> None:
        document = self.catalog.get_document(doc_id)  # None: never in this catalog, nothing to protect
        ok = document is None or (
            not document.deleted and self.reader.can_read(document.tenant, document.readers)
        )
        self.readable[doc_id] = ok
        if ok:  # fingerprinted only once there is a secret to exempt them from (most readers never have one)
            self._unscanned.append((doc_id, document, chunk_texts))
            return
        self.secret += self._fingerprints(doc_id, document, chunk_texts)
        names = (doc_id, document.title if document is not None else "")
        self.exact.update(n for n in names if len(n) >= MIN_NAME_CHARS)

    def _fingerprints(
        self, doc_id: str, document: CatalogDocument | None, chunk_texts: list[str]
    ) -> list[frozenset[int]]:
        if document is None:
            text = "\n".join([self.catalog.document_text(doc_id) or "", *chunk_texts])
            return [frozenset(_shingles(text))]
        stored = _document_shingles(self.catalog, doc_id, document.content_hash, document.updated_at_ms)
        return [stored, frozenset(_shingles("\n".join(chunk_texts)))]

    def _allowed(self) -> list[frozenset[int]]:
        """The fingerprints of the readable documents (what a secret passage that also occurs in one of
        them is not redacted for)."""
        pending, self._unscanned = self._unscanned, []
        for doc_id, document, chunk_texts in pending:
            self.allowed += self._fingerprints(doc_id, document, chunk_texts)
        return self.allowed

    def _doc_ok(self, doc_id: str) -> bool:
        return self.readable.get(doc_id, False)

    def _chunk_ok(self, chunk_id: str) -> bool:
        doc_id = self.chunk_doc.get(chunk_id)  # None: an id the catalog no longer has (an opaque hash)
        return doc_id is None or self._doc_ok(doc_id)

    # -- the redacted copy --------------------------------------------------------------------------

    def _value(self, value: Json, counter: list[int]) -> Json:
        if isinstance(value, dict):
            return self._dict(value, counter)
        if isinstance(value, list | tuple):
            return [self._value(item, counter) for item in value]
        if isinstance(value, str):
            return self._text(value, counter)
        return value

    def _dict(self, value: dict[str, Any], counter: list[int]) -> dict[str, Any]:
        doc_id = value.get("doc_id")
        if isinstance(doc_id, str) and not self._doc_ok(doc_id):
            counter[0] += 1
            return {"n": value["n"], "redacted": True} if "n" in value else {"redacted": True}
        out = {}
        for key, item in value.items():
            if key == "chunk_ids":
                out[key] = self._ids(item, counter)
            else:
                out[key] = item if key in STRUCTURAL_FIELDS else self._value(item, counter)
        return out

    def _ids(self, chunk_ids: Json, counter: list[int]) -> Json:
        if not isinstance(chunk_ids, list | tuple):
            return chunk_ids
        kept = [c if self._chunk_ok(c) else REDACTED for c in chunk_ids]
        counter[0] += kept.count(REDACTED)
        return kept

    def _text(self, text: str, counter: list[int]) -> str:
        text = self._passages(text, counter)
        for secret in sorted((e for e in self.exact if e in text), key=len, reverse=True):
            text, found = re.subn(rf"(?<![\w/.-]){re.escape(secret)}(?![\w/-])", REDACTED, text)
            counter[0] += found
        return text

    def _passages(self, text: str, counter: list[int]) -> str:
        if not self.secret:
            return text
        spans = self._secret_spans(list(_WORD.finditer(text)))
        for start, end in reversed(spans):
            text = text[:start] + REDACTED + text[end:]
        counter[0] += len(spans)
        return text

    def _secret_spans(self, words: list[re.Match[str]]) -> list[tuple[int, int]]:
        """Character spans covered by secret shingles, merged across gaps shorter than a shingle."""
        if not self.secret or len(words) < SHINGLE_WORDS:
            return []
        lowered = [w.group().lower() for w in words]
        allowed = self._allowed()
        spans: list[tuple[int, int]] = []
        last = -SHINGLE_WORDS  # index of the last word covered
        for i in range(len(words) - SHINGLE_WORDS + 1):
            shingle = hash("\x1f".join(lowered[i : i + SHINGLE_WORDS]))
            if not _in_any(shingle, self.secret) or _in_any(shingle, allowed):
                continue
            end = words[i + SHINGLE_WORDS - 1].end()
            if spans and i - last <= SHINGLE_WORDS:
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((words[i].start(), end))
            last = i + SHINGLE_WORDS - 1
        return spans


def _in_any(shingle: int, sets: list[frozenset[int]]) -> bool:
    return any(shingle in one for one in sets)


class EventView:
    """What one reader is shown of one conversation: redacted under its ACL; deltas for the owner only."""

    def __init__(self, redactor: Redactor | None, *, deltas: bool = False) -> None:
        self.redactor = redactor
        self.deltas = deltas

    async def events(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        redactor = self.redactor
        if redactor is None or all([redactor.shown_as_is(e) for e in events]):
            return events  # nothing to redact and nothing to look up: no trip to the blocking pool
        return await run_blocking(lambda: [redactor.redact(e) for e in events])

    async def frame(self, data: bytes) -> bytes | None:
        """A /ws/chat server frame as this reader may see it; None for a delta another reader may not."""
        shown = self.frame_now(data)
        if shown is not Pending.REDACTION:
            return shown
        assert self.redactor is not None  # frame_now redacts nothing without one
        frame = msgspec.json.decode(data)
        frame["event"] = await run_blocking(self.redactor.redact, frame["event"])
        return msgspec.json.encode(frame)

    def frame_now(self, data: bytes) -> bytes | Pending | None:
        """`frame`'s answer when it needs no redaction work (`data` itself, or None), without waiting;
        Pending.REDACTION when the event must be redacted (in the blocking pool: `frame` does it)."""
        if self.redactor is None:
            return data
        head = _frame_head.decode(data)  # the frame's type, its event left undecoded
        if head.type == "delta":
            return data if self.deltas else None
        if head.type == "event" and self.redactor.names_nothing(bytes(head.event)):
            return data  # not even decoded: a model request's prompt, a completion, a turn's start
        event = msgspec.json.decode(head.event) if head.type == "event" else None
        if not isinstance(event, dict) or self.redactor.shown_as_is(event):
            return data  # the frame as it came: not decoded again, not encoded again
        return Pending.REDACTION


class Pending(enum.Enum):
    """What `EventView.frame_now` cannot do at once."""

    REDACTION = "redaction"


class _FrameHead(msgspec.Struct):
    """What `EventView.frame` reads of a server frame first: a delta is never decoded further."""

    type: str = ""
    event: msgspec.Raw = msgspec.Raw(b"null")


_frame_head = msgspec.json.Decoder(_FrameHead)


def reader_of(principal: Principal, tenant: str) -> Reader:
    return Reader(tenant=tenant, user=principal.user, groups=principal.groups)


async def event_view(
    client: aredis.Redis, data_path: Path, meta: ConversationMeta, principal: Principal
) -> EventView:
    """What `principal` is shown of `meta`'s conversation (the log's references read first)."""
    redactor = Redactor(catalog_for(data_path), reader_of(principal, principal.tenant))
    await learn_log(client, meta.id, redactor)
    return EventView(redactor, deltas=principal.tenant == meta.tenant and principal.user == meta.user)


async def learn_log(client: aredis.Redis, conv_id: str, redactor: Redactor) -> None:
    """Every reference of the durable log, so that a page or a resumed socket knows its earlier turns."""
    cursor = "-"
    while True:
        entries: Any = await client.xrange(conv_keys(conv_id).log, cursor, "+", count=LOG_PAGE)
        for _entry_id, fields in entries:
            redactor.learn(msgspec.json.decode(fields[b"e"]))
        if len(entries) < LOG_PAGE:
            return
        last = entries[-1][0]
        cursor = "(" + (last.decode() if isinstance(last, bytes) else last)
