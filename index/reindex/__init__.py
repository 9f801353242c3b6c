"""Zero-downtime reindex: build the next index version with another embedding model, gate it, switch.

    job = start_job(settings, client, model="minilm-rot")        # web process: Redis only, no model
    run_slice(settings, client, job.id)                           # worker (actors.reindex): resumable
    rollback(settings, client, by="admin")                        # the same one alias switch, back

The job (Redis `reindex:job:<id>`, one at a time: `reindex:current`) walks these states:

    queued -> building -> validating -> done | rejected | cancelled | failed

building    every live catalog document is embedded into the new version (`builder`), one document per
            commit, checkpointed per document in the version's `ledger`: a killed worker resumes.
validating  the golden sets run against the old and the new version (`gate`); a drop beyond
            `settings.gate_tolerance` rejects the job unless it was forced (audited).
cutover     under the commit guard (`locks`) the new version must hold exactly the catalog's live
            documents (`verify`) or the job builds the difference; then ONE alias write (`alias`) names
            the new pair (version + query embedding model) and remembers the previous pair for rollback.

While versions coexist, ingest goes through `dualwrite.DualWriter` (active, building and previous
version). Progress is the job record itself, published on `reindex:events` (what /ws/admin relays);
admin actions go to the audit log.

The modules, web-safe first (Redis, files and SQLite; importing them loads no numpy, index or model):

    jobs        job records in Redis, start / cancel / finish, the gate report they carry
    audit       the audit log (audit.jsonl and the `reindex:audit` stream)
    alias       the pair alias (active.json): read, the one switch, dropped versions
    ledger      the per-version build ledger (reindex.sqlite)
    verify      does a version hold exactly the catalog's live documents
    locks       the dual-write lock and the commit guard
    admin       admin actions on versions: list, rollback, retire

and the worker side (numpy, embedders, indexes), imported from their modules:

    lease       the job lease a worker holds while it works (Redis only, but only workers take it)
    embedders   which embedder matches a version; the precomputing wrapper a build embeds through
    gate        the golden-set gate (the demo set ships as package data: index/golden/demo)
    builder     one slice's build, gate and cutover work on the new version
    run         run_slice (the actor's unit of work) and run_until_done
    dualwrite   DualWriter, the ingest path while versions coexist

This package's root re-exports the web-safe API the admin endpoints use.
"""

from index.reindex.admin import VersionInfo, retire, rollback, versions_info
from index.reindex.alias import PairAlias, read_alias
from index.reindex.audit import read_audit
from index.reindex.jobs import (
    RUN_ACTOR_NAME,
    GateReport,
    ReindexJob,
    cancel_job,
    current_job,
    get_job,
    list_jobs,
    start_job,
)

__all__ = [
    "RUN_ACTOR_NAME",
    "GateReport",
    "PairAlias",
    "ReindexJob",
    "VersionInfo",
    "cancel_job",
    "current_job",
    "get_job",
    "list_jobs",
    "read_alias",
    "read_audit",
    "retire",
    "rollback",
    "start_job",
    "versions_info",
]
