"""One typed settings object, read once from `DOCENT_*` environment variables, failing loudly.

Every field `foo_bar` is read from `DOCENT_FOO_BAR`; `REDIS_URL` is also honoured for `redis_url`.
An unknown `DOCENT_*` variable or a value of the wrong type or range is a `ConfigError` at start.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from store.exceptions import ConfigError

PREFIX = "DOCENT_"
Positive = Annotated[int, msgspec.Meta(ge=1)]
NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Fraction = Annotated[float, msgspec.Meta(gt=0.0, le=1.0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    # Where state lives.
    data_dir: str = "var"
    model_dir: str = ""  # default: {data_dir}/models (converted models, keyed by weights hash)
    redis_url: str = ""  # empty: start an embedded Redis under {data_dir}/redis
    redis_port: Port = 0  # the embedded Redis's port; 0 = a free one, recorded under {data_dir}/redis
    redis_fsync: Literal["always", "everysec"] = "everysec"  # the embedded Redis's appendfsync
    redis_wait_replicas: NonNegative = 0  # an ask is acknowledged once this many replicas have it (WAIT)
    redis_wait_timeout_ms: Positive = 500  # longer: the ask is refused `unavailable` (retries are deduped)
    redis_identity: str = ""  # set by `docent run` for its children: the identity their Redis must hold
    broker_url: str = ""  # dramatiq's queues: empty = the Redis of redis_url; redis:// or amqp:// (RabbitMQ)
    demo: bool = True  # `docent run` builds and ingests the demo knowledge base
    # The demo's pydoc pages: `core` = index.demo.PYDOC_MODULES (49), `all` = the whole standard library
    # (`docent run`: the core pages before the stack is up, the rest by the ingest worker, actors/demo_job).
    demo_modules: Literal["core", "all"] = "all"
    demo_slice_s: Positive = 20  # a background demo-ingest message works this long, then re-enqueues itself
    demo_slice_docs: Positive = 16  # pages per commit (and progress update) of the background demo ingest
    demo_lease_ms: Positive = 10_000  # a killed ingest worker's demo run is taken over after this
    host: str = "127.0.0.1"
    port: Port = 8000

    # Embedding and indexes.
    device: Literal["auto", "cpu", "cuda"] = "auto"
    embed_model: str = "minilm"  # a registered embedder name (index.embed)
    embed_threads: NonNegative = 1  # intra-op threads per online embedder; 0 = all cores (1 measured fastest)
    bulk_embed_threads: Positive = 2  # ingest embedding threads (bench/embed.py: 57 vs 30 chunks/s for 1)
    reindex_embed_threads: Positive = 1  # a rebuild shares the machine with queries: capped
    bulk_batch_size: Positive = 4  # bench/embed.py: batch 4 beats 8 and 64 on 256-token chunks
    embed_cache_size: Positive = 4096
    vector_dtype: Literal["f16", "i8", "f32"] = "f16"
    chunk_tokens: Positive = 256
    chunk_overlap: NonNegative = 32
    max_document_bytes: Positive = 20 * 1024 * 1024
    max_document_chars: Positive = 1_000_000  # extracted text per document (a small PDF can expand 150x)
    max_document_chunks: Positive = 2_000  # chunks per document
    allowed_roots: str = ""  # os.pathsep-separated; empty = the data dir and the demo sources
    rerank_model: str = ""  # directory of a CTranslate2 cross-encoder; empty = no rerank
    rerank_depth: Positive = 50
    retrieve_k: Positive = 100
    top_k: Positive = 8
    context_window_tokens: NonNegative = 0  # >0: the model reads each hit's section (index.sections)
    fusion: Literal["zscore", "rrf"] = "zscore"  # index.fusion; bench/retrieval_quality.py chose it
    fusion_dense_weight: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.6  # z-score: bm25 gets 1 - this
    rrf_k: Positive = 60
    bm25_k1: Annotated[float, msgspec.Meta(gt=0.0, le=10.0)] = 1.6  # leave-one-collection-out (README)
    bm25_b: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.75  # used only with bm25_length_spread 0
    bm25_doc_weight: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.5  # index.lexical_docs (README)
    # > 0: b = min(1, this / CV of the chunk lengths), bm25_b unused (index.lexical_postings.spread_b, README)
    bm25_length_spread: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.35
    # RM3 expansion of BM25's query from its first pass's top chunks (index.lexical_feedback); 0 = off
    bm25_prf_docs: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    bm25_prf_terms: Annotated[int, msgspec.Meta(ge=1, le=100)] = 10
    bm25_prf_original: Annotated[float, msgspec.Meta(gt=0.0, le=1.0)] = 0.5  # the query's own share
    context_llm: bool = False  # generate contextual prefixes with the configured LLM at ingest

    # LLM backends.
    llm_backend: Literal["local", "openai", "none"] = "local"
    llm_url: str = ""
    llm_model: str = ""
    llm_api_key: str = ""
    llm_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 60.0
    llm_max_retries: NonNegative = 3
    llm_max_tokens: Positive = 512
    # The least time between two streamed deltas of an answer (the first goes at once): what a fast model
    # sends meanwhile joins the next delta, one append and one frame (actors.model_step.DeltaPacer); 0 =
    # a delta per network read.
    delta_interval_ms: NonNegative = 20
    # The embedded model (bench/llm_ab.py): fewer passages (prefill is most of the first-token time), a
    # shorter answer cap, int8 compute on CPU.
    local_top_k: Positive = 4
    local_max_tokens: Positive = 200
    local_compute_type: Literal["auto", "int8", "int8_float32", "float32", "float16"] = "auto"
    # The embedded model's Q&A answers (actors/extractive.py): the passages' own sentences, each cited to its
    # passage ("extractive"; the model answers when they hold no prose), or the model's own ("model");
    # "glued": extractive, opened by a sentence the model writes (actors/extractive_glue.py).
    local_answer: Literal["extractive", "model", "glued"] = "extractive"
    # Follow-up questions rewritten by the model before retrieval (actors.plan.REWRITE_STEP): auto = with an
    # external (OpenAI-compatible) model only; "rules" = index.followup's deterministic rule alone.
    followup_rewrite: Literal["auto", "llm", "rules"] = "auto"
    # Post-hoc citation attribution (actors/attribution.py): auto = on for the local model.
    attribution: Literal["auto", "on", "off"] = "auto"
    llm_price_in_per_mtok: Annotated[float, msgspec.Meta(ge=0)] = 0.0
    llm_price_out_per_mtok: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    # Agent run caps.
    max_steps: Positive = 12
    max_run_tokens: Positive = 200_000
    max_run_cost_usd: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    max_run_seconds: Positive = 600
    lease_ms: Positive = 30_000
    snapshot_every_events: Positive = 200
    warm_start: bool = False  # a conversation worker loads its models at boot, not at the first question
    # `docent run`'s conversation worker: dramatiq processes (each loads the index and models) and threads.
    worker_processes: Positive = 1
    worker_threads: Positive = 8  # an activation mostly waits (Redis, the model): 8 beat 4 (README load)
    broker_heartbeat_timeout_ms: Positive = 15_000  # a silent worker's messages are redelivered after this
    broker_maintenance_chance: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 10_000  # per million

    # Tools.
    smtp_host: str = "127.0.0.1"
    smtp_port: Port = 2525
    smtp_from: str = "docent@localhost"
    http_allow_hosts: str = ""  # comma-separated host allowlist for http_request
    http_allow_private: bool = False

    # Approvals.
    approval_ttl_s: Positive = 3 * 24 * 3600
    approval_reminder_s: NonNegative = 24 * 3600
    approval_clock_offset_ms: int = 0  # test hook: added to the wall clock of the approval timers

    # Server.
    secret: str = ""  # HMAC secret for tokens; empty = generated once under the data dir
    admin_api_key: str = ""  # empty = generated once under the data dir
    allowed_origins: str = ""  # comma-separated; empty = same origin only
    metrics_allow: str = ""  # comma-separated addresses / networks that may scrape /metrics without the key
    token_ttl_s: Positive = 24 * 3600
    user_rate_per_s: Annotated[float, msgspec.Meta(gt=0)] = 2.0
    user_burst: Positive = 10
    tenant_rate_per_s: Annotated[float, msgspec.Meta(gt=0)] = 200.0
    tenant_burst: Positive = 1000
    max_frame_bytes: Positive = 64 * 1024
    max_question_chars: Positive = 8000
    max_upload_bytes: Positive = 20 * 1024 * 1024
    ws_idle_timeout_s: Positive = 300
    ws_send_buffer: Positive = 1024
    ws_max_sockets_per_user: Positive = 32  # open sockets (chat + review) one user may hold per web process
    ws_max_sockets_per_tenant: Positive = 10_000  # and one tenant
    max_json_body_bytes: Positive = 64 * 1024  # any JSON request body (refused with 413 before it is read)
    web_gc_thresholds: str = ""  # the web process's gc thresholds "gen0,gen1,gen2"; empty: server.collector's
    web_gc_log_path: str = ""  # a diagnostic: the web process appends a JSON line per garbage collection here

    # Reindex (index.reindex): rebuilds into a new index version, gated by golden sets.
    reindex_slice_s: Positive = 20  # a reindex message works this long, then re-enqueues itself
    reindex_lease_ms: Positive = 10_000  # a killed reindex worker's job is taken over after this
    gate_tolerance: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.02  # max drop of nDCG@10 / recall@20
    golden_demo: bool = True  # gate with index/golden/demo (documents absent from the catalog are skipped)
    golden_dirs: str = ""  # os.pathsep-separated extra BEIR-layout golden sets (queries.jsonl, qrels/)
    golden_tenant: str = "default"  # the tenant the golden queries run as (reader token "*")
    # The active index's golden-set recall, re-measured (actors.golden_recall_job): every this many
    # seconds (0 = never on a schedule) and after this many documents ingested (0 = never after ingest).
    golden_recall_interval_s: Annotated[int, msgspec.Meta(ge=0)] = 6 * 3600
    golden_recall_after_docs: Annotated[int, msgspec.Meta(ge=0)] = 1_000

    # Semantic answer cache (index.answer_cache, actors.answer_policy): off unless turned on; per-tenant
    # on/off, thresholds and the sensitive-question classifiers come from answer_cache_policy_path.
    answer_cache: bool = False
    # The questions' cosine: bench/answer_cache.py quality (README "Answer cache").
    answer_cache_threshold: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.87
    answer_cache_guard: bool = True  # the lexical exactness guard (index.exactness)
    answer_cache_ttl_s: Annotated[int, msgspec.Meta(ge=1, le=7 * 24 * 3600)] = 24 * 3600
    answer_cache_max_entries: Positive = 10_000  # per tenant; the least recently used go first
    answer_cache_policy_path: str = ""  # a .json or .toml file; empty = the built-in classifiers

    # Tool risk policy (actors.tools.policy): a .json or .toml file; empty = built-in defaults.
    tool_policy_path: str = ""
    # Tenant workflows (actors.workflows): a .json or .toml file of definitions; empty = the shipped ones.
    workflows_path: str = ""
    # Scheduled folder syncs (actors.sync_job): a .json or .toml file of sources; empty = none.
    sync_sources_path: str = ""
    # Daily token / cost budgets per tenant and per user (store.budgets): .json or .toml; empty = none.
    budgets_path: str = ""
    # MCP servers whose tools the agent is offered (actors.tools.mcp_config): .json or .toml; empty = none.
    mcp_servers_path: str = ""

    def __post_init__(self) -> None:
        if self.chunk_overlap >= self.chunk_tokens:
            raise ConfigError("DOCENT_CHUNK_OVERLAP must be smaller than DOCENT_CHUNK_TOKENS")
        if self.llm_backend == "openai" and not self.llm_url:
            raise ConfigError("DOCENT_LLM_BACKEND=openai needs DOCENT_LLM_URL")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).resolve()

    @property
    def qa_top_k(self) -> int:
        """Passages a Q&A answer is given: fewer for the embedded model."""
        return self.local_top_k if self.llm_backend == "local" else self.top_k

    @property
    def model_path(self) -> Path:
        return Path(self.model_dir).resolve() if self.model_dir else self.data_path / "models"

    @property
    def index_root(self) -> Path:
        return self.data_path / "indexes"

    @property
    def allowed_root_paths(self) -> tuple[Path, ...]:
        return tuple(Path(p).resolve() for p in self.allowed_roots.split(os.pathsep) if p)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        fields = set(cls.__struct_fields__)
        raw: dict[str, str] = {}
        for key, value in env.items():
            if not key.startswith(PREFIX):
                continue
            name = key[len(PREFIX) :].lower()
            if name not in fields:
                raise ConfigError(f"unknown setting {key}", setting=key)
            raw[name] = value
        if "redis_url" not in raw and env.get("REDIS_URL"):
            raw["redis_url"] = env["REDIS_URL"]
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"bad setting: {exc}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings, read once."""
    return Settings.from_env()
