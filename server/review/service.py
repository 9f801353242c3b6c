"""The web process's review services: the approvals ledger, the tool policy, what a reviewer sees of an
approval, and the decision (a compare-and-set: the winner gets `Decided`, the loser `AlreadyDecided`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from actors import approvals
from server.auth import Principal
from server.protocol import ApprovalView
from server.review.context import ContextCache
from server.review.rooms import may_see_room, require_reviewer
from store.approvals import MAX_REASON_CHARS, AlreadyDecided, ApprovalRecord, AsyncApprovalLedger, Decided
from store.events import Decision
from store.exceptions import ForbiddenError, InputError, NotFound

if TYPE_CHECKING:
    from server.services import Services

MAX_APPROVAL_ID_CHARS = 200


def normalise_decision(word: str) -> Decision:
    match word:
        case "approved" | "approve":
            return "approved"
        case "denied" | "deny":
            return "denied"
    raise InputError("decision must be approve or deny", field="decision")


class Reviews:
    """Created on first use inside the running loop (`reviews(app)`)."""

    def __init__(self, services: Services) -> None:
        self.services = services
        # Imported here, not at module level: actors.tools pulls in numpy (index.types), which the web
        # process must not load at import (tests/test_server_ws.py); a reviewer's first request does.
        from actors.tools.policy import RiskPolicy

        self.ledger = AsyncApprovalLedger(services.redis)
        self.policy = RiskPolicy.from_settings(services.settings)
        self.contexts = ContextCache(services.redis)

    async def view(self, record: ApprovalRecord) -> ApprovalView:
        return ApprovalView(
            approval_id=record.approval_id,
            conv_id=record.conv_id,
            room=record.room,
            tool=record.tool,
            args=msgspec.Raw(record.args.encode()),
            args_hash=record.args_hash,
            requested_by=record.requested_by,
            reason=record.reason,
            context=await self.contexts.last_user_message(record.approval_id, record.conv_id),
            created_ms=record.created_ms,
            expires_ms=record.expires_ms,
            state=record.state,
            reviewer=record.reviewer,
            decision_reason=record.decision_reason,
            decided_ms=record.decided_ms,
            self_approval_allowed=self.policy.self_approval_allowed(record.tenant, record.tool),
        )

    async def pending(self, tenant: str, room: str, limit: int) -> list[ApprovalView]:
        return [await self.view(record) for record in await self.ledger.list_pending(tenant, room, limit)]

    async def visible(self, principal: Principal, approval_id: str) -> ApprovalRecord:
        """The approval if this principal may review it; NotFound for another tenant's (not revealed)."""
        require_reviewer(principal)
        if not approval_id or len(approval_id) > MAX_APPROVAL_ID_CHARS:
            raise NotFound("no such approval")
        record = await self.ledger.get(approval_id)
        if record is None or record.tenant != principal.tenant:
            raise NotFound(f"no approval {approval_id}")
        if not may_see_room(principal, record.room):
            raise ForbiddenError(f"you are not a reviewer of room {record.room}")
        return record

    async def decide(
        self, principal: Principal, approval_id: str, decision: Decision, reason: str
    ) -> Decided | AlreadyDecided:
        record = await self.visible(principal, approval_id)
        if len(reason) > MAX_REASON_CHARS:
            raise InputError(f"reason exceeds {MAX_REASON_CHARS} characters", field="reason")
        own = record.requested_by == principal.user
        allowed = self.policy.self_approval_allowed(record.tenant, record.tool)
        if own and decision == "approved" and not allowed:
            raise ForbiddenError("you cannot approve your own request")
        return await approvals.decide(
            self.ledger,
            self.services.dispatcher,
            approval_id,
            decision,
            principal.user,
            reason,
            tenant=principal.tenant,
        )


def reviews(app: Any) -> Reviews:
    state: Reviews | None = getattr(app.state, "reviews", None)
    if state is None:
        state = app.state.reviews = Reviews(app.state.services)
    return state
