"""The `docent` command: run, serve, ingest, sync, search, eval, demo, token, chaos."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

from store.exceptions import DocentError, InputError
from store.permissions import private_umask
from store.redis import CLUSTER_NODE_TIMEOUT_MS
from store.settings import Settings, get_settings


def _cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from server.runner import run

    return run(settings, cluster=args.cluster)


def _cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import os

    from server.runner import procfile_commands

    command = procfile_commands(settings)["web"]
    os.execv(command[0], command)


def _cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from actors.bootstrap import ingest_paths
    from store.metadata import metadata_from_pairs

    metadata = metadata_from_pairs(args.meta)  # InputError before anything is read
    paths = [Path(p) for p in args.paths]
    report = ingest_paths(settings, paths, tenant=args.tenant, readers=args.readers, metadata=metadata)
    print(json.dumps(report, indent=2))
    return 0 if not report.get("errors") else 2


def _cmd_sync(args: argparse.Namespace, settings: Settings) -> int:
    import msgspec

    from actors.folder_sync import SyncProgress, sync_folder

    def show(p: SyncProgress) -> None:
        eta = "" if p.eta_s is None else f", ETA {p.eta_s:.0f} s"
        print(f"sync: {p.done}/{p.total} documents, {p.rate_per_s:.1f}/s{eta}", file=sys.stderr, flush=True)

    report = sync_folder(
        settings, Path(args.dir), tenant=args.tenant, readers=args.readers, force=args.force,
        max_delete_share=args.max_delete_share, progress=None if args.quiet else show,
    )  # fmt: skip
    print(msgspec.json.format(msgspec.json.encode(report)).decode())
    return 0 if not report.failed else 2


def _cmd_search(args: argparse.Namespace, settings: Settings) -> int:
    from actors.bootstrap import search_once

    result = asyncio.run(
        search_once(settings, args.query, tenant=args.tenant, user=args.user, groups=args.group, k=args.k,
                    mode=args.mode)
    )  # fmt: skip
    for n, hit in enumerate(result.hits, 1):
        ranks = f"dense={hit.dense_rank} bm25={hit.bm25_rank}"
        print(f"[{n}] {hit.score:.4f} {hit.doc_id} :: {hit.heading or hit.title} ({ranks})")
        print("    " + hit.text[:200].replace("\n", " "))
    print(json.dumps({"index_version": result.index_version, "timings_ms": result.timings_ms}))
    return 0


def _cmd_eval(args: argparse.Namespace, settings: Settings) -> int:
    from index.evalrun import evaluate_collection, format_summary, format_table

    if args.corpus is not None and len(args.directories) > 1:
        raise InputError("--corpus takes one collection directory")
    reports = [evaluate_collection(settings, Path(d), corpus=args.corpus) for d in args.directories]
    for report in reports:
        print(format_table(report), end="\n\n")
    if len(reports) > 1:
        print(format_summary(reports))
    if args.json:
        for report in reports:
            print(json.dumps(report, separators=(",", ":")))
    return 0


def _cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from actors.bootstrap import ensure_demo

    print(json.dumps(ensure_demo(settings, force=args.force), indent=2))
    return 0


def _cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    from server.auth import mint_token

    roles = tuple(args.role or ["user"])
    print(mint_token(settings, tenant=args.tenant, user=args.user, groups=tuple(args.group), roles=roles))
    return 0


def _cmd_chaos(args: argparse.Namespace, settings: Settings) -> int:
    if args.topology == "cluster":
        from server.chaos import Plan
        from server.chaos import main as cluster_chaos

        plan = Plan(runs=args.runs, turns=args.turns, seed=args.seed, wait_replicas=args.wait_replicas,
                    replica_lag_ms=args.replica_lag_ms, node_timeout_ms=args.node_timeout_ms,
                    failover=args.failover, kill_at=args.kill_at)  # fmt: skip
        return cluster_chaos(plan, as_json=args.json)
    from actors.chaos import main as chaos_main

    return chaos_main(runs=args.runs, as_json=args.json, seed=args.seed)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="docent", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="embedded Redis, web, workers and the demo knowledge base")
    run.add_argument(
        "--cluster", action="store_true",
        help="the data on an embedded 3+3 Redis Cluster, the queues on the embedded single Redis",
    )  # fmt: skip
    run.set_defaults(fn=_cmd_run)
    sub.add_parser("serve", help="the web process only").set_defaults(fn=_cmd_serve)

    ingest = sub.add_parser("ingest", help="ingest files or directories into the active index")
    ingest.add_argument("paths", nargs="+")
    ingest.add_argument("--tenant", default="default")
    ingest.add_argument("--readers", nargs="*", default=["*"])
    ingest.add_argument(
        "--meta", action="append", default=[], metavar="KEY=VALUE",
        help="document metadata, repeatable: author, path, tags (comma-separated), created / modified (ISO "
        "8601) or created_ms / modified_ms, any other key a field",
    )  # fmt: skip
    ingest.set_defaults(fn=_cmd_ingest)

    sync = sub.add_parser("sync", help="sync a directory: ingest new and changed files, delete vanished ones")
    sync.add_argument("dir")
    sync.add_argument("--tenant", default="default")
    sync.add_argument("--readers", nargs="*", default=["*"], help="where no .docent-readers file applies")
    sync.add_argument("--force", action="store_true", help="allow deleting over --max-delete-share")
    sync.add_argument("--max-delete-share", type=float, default=0.2)
    sync.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    sync.set_defaults(fn=_cmd_sync)

    search = sub.add_parser("search", help="hybrid search as a principal")
    search.add_argument("query")
    search.add_argument("--tenant", default="default")
    search.add_argument("--user", default="cli")
    search.add_argument("--group", action="append", default=[])
    search.add_argument("-k", type=int, default=8)
    search.add_argument("--mode", choices=["hybrid", "dense", "bm25"], default="hybrid")
    search.set_defaults(fn=_cmd_search)

    ev = sub.add_parser("eval", help="evaluate bm25, dense and hybrid on BEIR-layout collections")
    ev.add_argument("directories", nargs="+", metavar="DIR")
    ev.add_argument("--corpus", type=Path, default=None, help="corpus.jsonl instead of DIR's")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(fn=_cmd_eval)

    demo = sub.add_parser("demo", help="build and ingest the demo knowledge base")
    demo.add_argument("--force", action="store_true")
    demo.set_defaults(fn=_cmd_demo)

    token = sub.add_parser("token", help="mint a signed token")
    token.add_argument("--tenant", default="default")
    token.add_argument("--user", default="demo")
    token.add_argument("--group", action="append", default=[])
    token.add_argument("--role", action="append", choices=["user", "reviewer", "admin"])
    token.set_defaults(fn=_cmd_token)

    chaos = sub.add_parser("chaos", help="kill workers at random points and check no effect is duplicated")
    chaos.add_argument("--runs", type=int, default=20)
    chaos.add_argument("--seed", type=int, default=0)
    chaos.add_argument("--json", action="store_true")
    chaos.add_argument(
        "--topology", choices=("single", "cluster"), default="single",
        help="cluster: 2 web + 3 worker processes on a 3+3 Redis Cluster, WebSocket clients, a primary kill",
    )  # fmt: skip
    chaos.add_argument("--turns", type=int, default=3, help="(cluster) asks per conversation")
    chaos.add_argument("--wait-replicas", type=int, default=0, help="(cluster) DOCENT_REDIS_WAIT_REPLICAS")
    chaos.add_argument(
        "--replica-lag-ms", type=int, default=0,
        help="(cluster) cut the killed primary's replication link this long before its SIGKILL",
    )  # fmt: skip
    chaos.add_argument(
        "--node-timeout-ms", type=int, default=CLUSTER_NODE_TIMEOUT_MS,
        help="(cluster) the cluster's cluster-node-timeout (how soon a silent primary is failed over)",
    )  # fmt: skip
    chaos.add_argument(
        "--failover", choices=("supervisor", "cluster"), default="supervisor",
        help="(cluster) who promotes the killed primary's replica: its supervisor at once, or the cluster",
    )  # fmt: skip
    chaos.add_argument(
        "--kill-at", choices=("ask", "model"), default="ask",
        help="(cluster) the primary kill's aim: an ask on its way to it, or an agent's model call in flight "
        "there (the link is cut as the request arrives, the kill follows --replica-lag-ms later)",
    )  # fmt: skip
    chaos.set_defaults(fn=_cmd_chaos)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    private_umask()
    try:
        return int(args.fn(args, get_settings()) or 0)
    except DocentError as exc:
        print(f"docent: {exc.code}: {exc.message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
