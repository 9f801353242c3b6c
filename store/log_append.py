"""The fenced append, with what it saw of the inbox: `append_seen(log, lease, items, ...)` is
`ConversationLog.append` (the same script call, `store.log.append_call`) and also returns the inbox's newest
entry as the append left it. Consumed entries are trimmed by the append that moves the cursor, so an entry
newer than the cursor means something waits: an activation reads the inbox between its steps only then
(one read fewer per Q&A turn: the one after the model's completion).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from store.events import LiveItem
from store.log import ConversationLog, Lease, LogOptions, append_call
from store.scripts import Plan, text


class Appended(NamedTuple):
    ids: list[str]  # the items' new ids, in order
    inbox_last: str  # the inbox's newest entry after the append ("0-0": empty; "": nothing was written)


def appended_plan(
    lease: Lease, items: Sequence[LiveItem], expected: str | None, cursor: str | None, options: LogOptions
) -> Plan[Appended]:
    call = append_call(lease, items, expected, cursor, options)
    if call is None:
        return Appended([], "")
    *ids, inbox_last = yield call
    return Appended([text(i) for i in ids], text(inbox_last))


def append_seen(
    log: ConversationLog,
    lease: Lease,
    items: Sequence[LiveItem],
    *,
    expected_last_id: str | None = None,
    inbox_cursor: str | None = None,
) -> Appended:
    """`log.append(...)` (StaleEpoch as it), and the inbox's newest entry as it left it."""
    return log.run(appended_plan(lease, items, expected_last_id, inbox_cursor, log.options))
