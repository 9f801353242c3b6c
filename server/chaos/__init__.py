"""`docent chaos --topology cluster`: the chaos run on the multi-process topology (2 web processes, 3 workers,
a 3 + 3 Redis Cluster), through real WebSocket clients. `actors.chaos` is the single-Redis mode; this one
lives in `server` because it runs web processes and mints their tokens.

What it kills: worker process groups and web processes at random moments (each restarted at once; the
workers' crash hook exits hard after effects and model responses as in `actors.chaos`), and once one Redis
primary (`server.chaos.stack`). The clients (`server.chaos.clients`) reconnect to the other web process
and resume from the last id they saw, and send an unacknowledged ask again under the same client id.

Report: `actors.chaos`'s counts (completed turns, duplicate effects, repeated LLM calls, lost turns,
invalid logs) and `lost_acknowledged_asks`: asks a client saw `accepted` for that are not in the durable
log at the end. Replication is asynchronous, so a primary that dies before its replica has an ask loses
it; `--wait-replicas 1` (DOCENT_REDIS_WAIT_REPLICAS) acknowledges an ask, and runs each step of a turn, only
once the replica has everything before it, and `--replica-lag-ms N` cuts the dying primary's replication
link N ms before the kill (the window in which a lagging replica misses writes). The killed primary's
replica takes over at once (`--failover supervisor`, the default: the runner is the supervisor that saw the
exit) or when the cluster's own failure detection decides (`--failover cluster`).
"""

from server.chaos.run import Plan, main

__all__ = ["Plan", "main"]
