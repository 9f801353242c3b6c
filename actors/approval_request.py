"""What the conversation actor writes when a high-risk call needs a human: the ledger record, the
`ApprovalRequested` event built from the stored record, and the start of its timers.

The approval id is derived from the call (conversation, turn, step, call id), so a replay asks for the
same approval and the ledger's idempotent create returns the first record.
"""

from __future__ import annotations

import logging

from actors.plan import RequestApproval
from actors.tools.policy import RiskPolicy
from actors.tools.registry import args_hash, canonical_args
from index.types import Principal
from store.approvals import ApprovalRecord
from store.events import ApprovalRequested
from store.settings import Settings

log = logging.getLogger(__name__)

MS_PER_S = 1000


def approval_record(
    approval_id: str, conv_id: str, principal: Principal, policy: RiskPolicy, action: RequestApproval,
    *, reason: str, now_ms: int,
) -> ApprovalRecord:  # fmt: skip
    tool = action.call.name
    return ApprovalRecord(
        approval_id=approval_id,
        conv_id=conv_id,
        tenant=principal.tenant,
        room=policy.room_for(principal.tenant, tool),
        tool=tool,
        args=canonical_args(action.check.args).decode(),
        args_hash=args_hash(tool, action.check.args),
        requested_by=principal.user,
        reason=reason,
        created_ms=now_ms,
        expires_ms=now_ms + policy.approval_ttl_s(principal.tenant, tool) * MS_PER_S,
    )


def approval_requested(action: RequestApproval, stored: ApprovalRecord) -> ApprovalRequested:
    """The log event for the record the ledger holds (the first one, on a replay)."""
    return ApprovalRequested(
        approval_id=stored.approval_id,
        step=action.step,
        call_id=action.call.id,
        tool=action.call.name,
        args=dict(action.check.args),
        args_hash=stored.args_hash,
        risk=action.check.risk,
        reason=stored.reason,
        room=stored.room,
        requested_by=stored.requested_by,
        expires_at_ms=stored.expires_ms,
    )


def schedule_expiry(approval_id: str, conv_id: str, expires_at_ms: int, settings: Settings) -> None:
    """Start the approval's reminder and expiry timers (delayed messages on the approvals queue)."""
    from actors.approvals import schedule_expiry as schedule  # declares the timer actors: only when needed

    try:
        schedule(approval_id, conv_id, expires_at_ms, settings=settings)
    except Exception:  # the approval stands and the room shows it; only its timer is missing
        log.exception("could not schedule the expiry of approval %s", approval_id)
