"""Names of the Redis key families whose records are written above store/, so that every process reads
them by one name: the reindex jobs (index/reindex writes, the web process and the reindex actor read),
the query-embedding cache (index/embed.py), the web process's hub wake-up streams (server/hub.py) and
the replies of `POST /api/search` (actors/search_rpc.py).

The families store/ reads and writes itself are named by their own modules: `conv:{id}:*`
(store/log.py `conv_keys`), `convmeta:` / `convs:` (store/conversations.py), `appr:` / `room:` /
`appr_audit:` (store/approvals.py), `idem:` (store/idempotency.py), `rl:` (store/ratelimit.py),
`docent:identity` (store/redis_identity.py).
docs/architecture.md lists them all with their owners.

    reindex:job:<id>        the job record (msgspec JSON)           index/reindex/jobs.py
    reindex:cancel:<id>     a cancel request                        index/reindex/jobs.py
    reindex:lease:<id>      the worker lease on a job               index/reindex/lease.py
    reindex:current         the job that runs (at most one)         index/reindex/jobs.py
    reindex:jobs            sorted set: job ids by creation time    index/reindex/jobs.py
    reindex:events          stream: each job update, field `job`    index/reindex/jobs.py -> /ws/admin
    reindex:audit           stream: the admin audit log             index/reindex/audit.py
    emb:<weights>:<model>:<sha1>   a cached query vector            index/embed.py
    fanout:{<process>}:wake:<n>    a hub shard's wake-up stream     server/hub.py
    fanout:{<tag>}:wake:<process>:<n>   the same on a Redis Cluster, in the slot of the keys it reads

Hash tags (Redis Cluster keeps the keys of one tag in one slot; a Lua script or MULTI may only touch
one slot): every key of one conversation carries `{<conversation id>}` (conv:, convmeta:), of one approval
`{<approval id>}`, of one tenant's reviewer rooms and audit `{<tenant>}` (room:, appr_audit:), of one
user's list `{<tenant>}` (convs:). A new family puts `{<owner id>}` (conversation, tenant, ...) as its
first braces and keeps every multi-key command and script within one tag; commands over several tags
go on a non-transactional pipeline (redis-py splits it by node).
    search:reply:<request id>      a search worker's reply (list)   actors/search_job.py -> the web process
    sync:events             stream: folder-sync progress, field `progress`   store/sync_progress.py
"""

from __future__ import annotations

REINDEX_CURRENT = "reindex:current"
REINDEX_JOBS = "reindex:jobs"
REINDEX_EVENTS = "reindex:events"
REINDEX_AUDIT = "reindex:audit"
REINDEX_EVENT_FIELD = "job"
SYNC_EVENTS = "sync:events"
SYNC_EVENT_FIELD = "progress"
WEIGHTS_PREFIX_CHARS = 16


def reindex_job(job_id: str) -> str:
    return f"reindex:job:{job_id}"


def reindex_cancel(job_id: str) -> str:
    return f"reindex:cancel:{job_id}"


def reindex_lease(job_id: str) -> str:
    return f"reindex:lease:{job_id}"


def embedding(weights_sha256: str, model: str, digest: str) -> str:
    return f"emb:{weights_sha256[:WEIGHTS_PREFIX_CHARS]}:{model}:{digest}"


def hub_wake(process_id: str, shard: int, slot_of: str | None = None) -> str:
    """A hub shard's wake stream; on a cluster (`slot_of` = a key the shard reads) in that key's slot, so
    one XREAD reads both: `fanout:{<slot_of's hash tag>}:wake:<process>:<n>`."""
    if slot_of is None:
        return f"fanout:{{{process_id}}}:wake:{shard}"
    return f"fanout:{{{hash_tag(slot_of)}}}:wake:{process_id}:{shard}"


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of `key`: the text between its first `{` and the next `}` when not empty,
    else the whole key (so `{<hash_tag(k)>}` puts another key in k's slot)."""
    start = key.find("{")
    if start >= 0:
        end = key.find("}", start + 1)
        if end > start + 1:
            return key[start + 1 : end]
    return key


def sync_due(source_digest: str) -> str:
    """A scheduled folder sync's slot (actors.sync_job): held from a run until its next one is due."""
    return f"sync:due:{source_digest}"


def search_reply(request_id: str) -> str:
    return f"search:reply:{request_id}"
