"""Down-voted answers as golden-set candidates, and the golden set admins build from them.

    golden:cand:{<tenant>}          hash: candidate id -> Candidate (JSON)
    golden:cand:{<tenant>}:order    sorted set: candidate ids by creation time (the newest MAX_CANDIDATES)
    golden:cand:tenants             set: tenants with candidates (what the export walks)

The conversation actor proposes a candidate when a user rates an answer `down` (`actors.golden_feedback`):
the question, the start of the answer, the passages the model was given. An admin of the tenant marks the
document that answers the question, or dismisses it (`POST /admin/golden/candidates/{id}`). Accepted
candidates are written as a BEIR-layout golden set, `{data dir}/golden/feedback/queries.jsonl` and
`qrels/test.tsv`, which the reindex gate reads beside the others (`index.reindex.gate.golden_dirs`).

    store = CandidateStore(client)
    store.propose(candidate)                      idempotent: a candidate id is proposed once
    store.listed(tenant, status=None)             newest first
    store.decide(tenant, id, doc_id=..., by=...)  accept (doc_id) or dismiss (doc_id None)
    export_golden(store, directory)               rewrite the golden set from every accepted candidate
"""

from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import msgspec
import redis

from store.events import Citation
from store.exceptions import InputError, NotFound
from store.redis import sync_client
from store.scripts import key_part, text

Status = Literal["open", "accepted", "dismissed"]
MAX_CANDIDATES = 1_000  # per tenant; older ones are dropped
MAX_LISTED = 200
ANSWER_CHARS = 2_000
TENANTS_KEY = "golden:cand:tenants"
GOLDEN_SUBDIR = Path("golden") / "feedback"


class Candidate(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    tenant: str
    conversation_id: str
    turn: int
    question: str
    answer: str = ""
    passages: tuple[Citation, ...] = ()  # what the model was given (numbered as given)
    comment: str = ""
    rated_by: str = ""
    created_ms: int = 0
    status: Status = "open"
    doc_id: str = ""  # the document an admin marked as the answer (accepted)
    decided_by: str = ""


_decoder = msgspec.json.Decoder(Candidate)


def candidates_key(tenant: str) -> str:
    return f"golden:cand:{{{key_part(tenant, 'tenant')}}}"


def order_key(tenant: str) -> str:
    return f"{candidates_key(tenant)}:order"


def golden_dir(data_path: Path) -> Path:
    return data_path / GOLDEN_SUBDIR


class CandidateStore:
    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def propose(self, candidate: Candidate) -> bool:
        """False when this candidate was proposed before (nothing changes)."""
        key = candidates_key(candidate.tenant)
        if not self.client.hsetnx(key, candidate.id, msgspec.json.encode(candidate)):
            return False
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(order_key(candidate.tenant), {candidate.id: candidate.created_ms})
        pipe.zrange(order_key(candidate.tenant), 0, -MAX_CANDIDATES - 1)
        pipe.zremrangebyrank(order_key(candidate.tenant), 0, -MAX_CANDIDATES - 1)
        _, dropped, _ = pipe.execute()
        if dropped:
            self.client.hdel(key, *dropped)
        self.client.sadd(TENANTS_KEY, candidate.tenant)
        return True

    def listed(self, tenant: str, status: Status | None = None, limit: int = MAX_LISTED) -> list[Candidate]:
        ids: Any = self.client.zrevrange(order_key(tenant), 0, MAX_CANDIDATES - 1)
        raw: Any = self.client.hmget(candidates_key(tenant), ids) if ids else []
        found = [_decoder.decode(r) for r in raw if r is not None]
        return [c for c in found if status is None or c.status == status][:limit]

    def get(self, tenant: str, candidate_id: str) -> Candidate:
        raw = self.client.hget(candidates_key(tenant), key_part(candidate_id, "candidate id"))
        if raw is None:
            raise NotFound("no such golden-set candidate")
        return _decoder.decode(raw)

    def decide(self, tenant: str, candidate_id: str, *, doc_id: str | None, by: str) -> Candidate:
        """Accept with the answering document, or dismiss (doc_id None); a decision may be changed."""
        candidate = self.get(tenant, candidate_id)
        if doc_id is not None and not doc_id.strip():
            raise InputError("doc_id is empty", field="doc_id")
        status: Status = "accepted" if doc_id is not None else "dismissed"
        decided = msgspec.structs.replace(candidate, status=status, doc_id=doc_id or "", decided_by=by)
        self.client.hset(candidates_key(tenant), candidate.id, msgspec.json.encode(decided))
        return decided

    def accepted(self) -> list[Candidate]:
        tenants = sorted(text(t) for t in self.client.smembers(TENANTS_KEY))  # type: ignore[union-attr]
        return [c for t in tenants for c in self.listed(t, "accepted", MAX_CANDIDATES)]


def export_golden(store: CandidateStore, directory: Path) -> int:
    """Rewrite the BEIR-layout golden set from every accepted candidate; the number of queries written."""
    accepted = store.accepted()
    queries = b"".join(msgspec.json.encode({"_id": c.id, "text": c.question}) + b"\n" for c in accepted)
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"{c.id}\t{c.doc_id}\t1\n" for c in accepted)
    (directory / "qrels").mkdir(parents=True, exist_ok=True, mode=0o700)
    _replace(directory / "qrels" / "test.tsv", qrels.encode())
    _replace(directory / "queries.jsonl", queries)  # last: the gate reads a set once queries.jsonl exists
    return len(accepted)


def _replace(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


@lru_cache(maxsize=4)
def candidate_store(redis_url: str) -> CandidateStore:
    """The process's store of `redis_url` (one client per URL, shared by the actor and the admin API)."""
    return CandidateStore(sync_client(redis_url))
