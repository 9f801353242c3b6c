"""The cluster chaos run's ask timings: ask -> `accepted` in the primary kill's cut window (the link cut,
or the kill, to the old primary's rejoin) and outside it, where web processes are killed and restarted.

Outside the window each ask is also timed from its latest send (a slow web process or Redis, rather than
reconnect rounds), and split by where that send went: a web process restarted by the faults that had
answered `/healthz` again for less than FRESH_WEB_S (or not yet), or any other.
"""

from __future__ import annotations

import statistics
from typing import Any

from server.chaos.clients import Ask, ChaosClient
from server.chaos.stack import PrimaryKill, Topology, in_slots
from store.log import conv_keys

FRESH_WEB_S = 10.0


def acked_in_window(clients: list[ChaosClient], kill: PrimaryKill) -> int:
    """Asks on the killed primary's slots acknowledged between the link cut (or the kill) and the kill."""
    return sum(
        1
        for c in clients
        if c.conversation_id and in_slots(kill.slots, conv_keys(c.conversation_id).inbox)
        for a in c.asks
        if a.ack_ms is not None and kill.cut_at <= a.acked_at <= kill.killed_at
    )


def cut_window_acks(clients: list[ChaosClient], kill: PrimaryKill) -> dict[str, Any]:
    """Ask -> `accepted` of the asks to the killed primary's slots first sent between the link cut (or the
    kill) and the old primary's rejoin: the stall a failover costs (never acknowledged: `unacknowledged`)."""
    end = kill.killed_at + kill.rejoined_s
    asks = [
        a
        for c in clients
        if c.conversation_id and in_slots(kill.slots, conv_keys(c.conversation_id).inbox)
        for a in c.asks
        if a.sends and kill.cut_at <= a.sent_at <= end
    ]
    acks = sorted(a.ack_ms for a in asks if a.ack_ms is not None)
    summary: dict[str, Any] = {"asks": len(asks), "unacknowledged": len(asks) - len(acks)}
    # Each ask's first send and `accepted`, in seconds from the kill, and how often it was sent.
    at = kill.killed_at
    timeline = [[round(a.sent_at - at, 2), round(a.acked_at - at, 2), a.sends] for a in asks]
    return {**summary, **percentiles(acks), "sent_acked_sends": sorted(timeline)}


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 / p95 / max of sorted `values` (None when empty), in the report's rounding."""
    if not values:
        return {"p50": None, "p95": None, "max": None}
    p95 = values[min(len(values) - 1, int(len(values) * 0.95))]
    return {"p50": round(statistics.median(values), 2), "p95": round(p95, 2), "max": round(values[-1], 2)}


def _in_a_cut_window(client: ChaosClient, ask: Ask, kills: list[PrimaryKill]) -> bool:
    return any(
        in_slots(k.slots, conv_keys(client.conversation_id).inbox)
        and k.cut_at <= ask.sent_at <= k.killed_at + k.rejoined_s
        for k in kills
    )


def _since_ready(topology: Topology, url: str, at: float) -> float | None:
    """How long before `at` the web process at `url` answered again after its latest restart (negative:
    not yet; None: not restarted by then, the process of the topology's start)."""
    port = int(url.rsplit(":", 1)[1].split("/", 1)[0])
    restarts = [(start, ready) for p, start, ready in topology.web_ready if p == port and start <= at]
    return at - max(restarts)[1] if restarts else None


def outside_window_acks(clients: list[ChaosClient], topology: Topology) -> dict[str, Any]:
    """Ask -> `accepted` (ms) of the acknowledged asks first sent outside every cut window; the same from the
    latest send; and from the latest send split by the web process it went to (fresh or not)."""
    asks = [
        a
        for c in clients
        for a in c.asks
        if a.ack_ms is not None and not _in_a_cut_window(c, a, topology.primary_kills)
    ]
    from_last = [(a.acked_at - a.last_sent_at) * 1000 for a in asks]
    fresh: list[float] = []
    settled: list[float] = []
    for ask, ms in zip(asks, from_last, strict=True):
        since = _since_ready(topology, ask.last_url, ask.last_sent_at)
        (fresh if since is not None and since < FRESH_WEB_S else settled).append(ms)
    return {
        "asks": len(asks),
        "first_send": percentiles(sorted(a.ack_ms for a in asks if a.ack_ms is not None)),
        "latest_send": percentiles(sorted(from_last)),
        "latest_send_to_a_fresh_web": {"asks": len(fresh), **percentiles(sorted(fresh))},
        "latest_send_to_an_older_web": {"asks": len(settled), **percentiles(sorted(settled))},
    }
