"""`docent chaos --runs N [--json] [--seed S]`: kill workers while agents work; prove no effect is duplicated.

It starts everything it needs, on free ports, in a temporary directory: an embedded Redis, the scripted
OpenAI-compatible LLM, a counting SMTP sink and HTTP sink (all from `actors.testing`), and `WORKERS`
dramatiq worker processes (`python -m dramatiq actors.testing.chaos_worker --queues conversation`). Each
run is one conversation whose agent task takes four model steps and three side effects (an HTTP POST, an
email, an HTTP PUT). As soon as any run has logged its first step, the runner SIGKILLs every worker (a
chosen point, so even a fast machine sees a mid-run kill); then it SIGKILLs a random worker's whole process
group at random moments and restarts it; independently, every worker's runtime carries a crash hook
(`actors.testing.crash.RandomExit`) that exits hard (`os._exit`, no cleanup) with probability `CRASH_RATE`
right after a tool's effect or an LLM response and before its record is written —
the narrowest windows there are. A short broker heartbeat timeout and lease make the broker redeliver a
dead worker's messages within seconds.

The tools' risk: `send_email` and non-GET `http_request` are high risk by default and would wait for a
human. The runner therefore writes a tool policy file (`DOCENT_TOOL_POLICY_PATH`) that marks both tools
low risk for the `chaos` tenant only, so the runs complete unattended.

Checks, from the durable logs and the sinks' own counters:
  completed           runs whose turn ended with an answer
  duplicate_effects   effects beyond one per logical tool call: an HTTP effect or an email whose
                      idempotency key / Message-ID no log intent accounts for (a call re-issued under a new
                      key), requests without a key, or a key applied twice at the idempotent HTTP sink
  repeated_llm_calls  model requests the logs do not account for: per conversation and step, requests at
                      the scripted server beyond the `LLMRequested` records (every request is recorded before
                      it is sent), plus any request recorded after that step's `LLMCompleted`
  lost_turns          runs that never reached a terminal event
  invalid_logs        logs that do not decode, or break the replay rules (a result without an intent, two
                      results or completions for one call or step, an intent key that is not the hash of
                      its conversation, turn, step, tool and arguments, events after the terminal one)

The one window where a receiver can see a duplicate: a worker dies after a tool's effect happened and before
its `ToolResult` was appended. The next activation finds the `ToolIntent` without a result and re-issues
the call with the SAME idempotency key. An idempotent receiver (the HTTP sink, like a payments API, keys
on `Idempotency-Key`) applies it once and replays its stored answer. SMTP has no such contract: the mail
is delivered twice — but with the same `Message-ID: <key@docent>`, so the receiving mail system (or the
reader's client) can collapse the copies. The runner reports these as `smtp_redeliveries` on the line
before the final JSON; they are not duplicate effects.
"""

from actors.chaos.run import main

__all__ = ["main"]
