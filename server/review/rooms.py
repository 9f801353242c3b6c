"""Who may review what, and which rooms may be joined.

A reviewer is a principal with the `reviewer` or `admin` role, in its own tenant only. A reviewer whose
groups include `review.<room>` entries is limited to those rooms; one without any sees every room of its
tenant. The rooms that exist are the ones the tool policy can route the tenant's approvals to; any other
name is refused (UnknownRoom), so a client cannot make the process follow streams nobody writes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from server.auth import Principal
from server.protocol import MAX_ROOMS_PER_SOCKET
from store.exceptions import ForbiddenError, FrameError, UnknownRoom

if TYPE_CHECKING:
    from actors.tools.policy import RiskPolicy

REVIEW_ROOM_GROUP_PREFIX = "review."


def is_reviewer(principal: Principal) -> bool:
    return principal.has_role("reviewer") or principal.is_admin


def require_reviewer(principal: Principal) -> Principal:
    if not is_reviewer(principal):
        raise ForbiddenError("the reviewer role is required")
    return principal


def reviewer_rooms(principal: Principal) -> frozenset[str] | None:
    """The rooms a reviewer is limited to (`review.<room>` groups); None = every room of the tenant."""
    if principal.is_admin:
        return None
    prefix = REVIEW_ROOM_GROUP_PREFIX
    rooms = frozenset(g[len(prefix) :] for g in principal.groups if g.startswith(prefix))
    return rooms or None


def may_see_room(principal: Principal, room: str) -> bool:
    allowed = reviewer_rooms(principal)
    return is_reviewer(principal) and (allowed is None or room in allowed)


def known_rooms(policy: RiskPolicy, tenant: str) -> list[str]:
    """Every room the policy can route a tenant's approvals to."""
    from actors.tools.policy import BUILTIN_RULES, DEFAULT_ROOM

    rules = [*BUILTIN_RULES.values(), *policy.config.tools.values()]
    tenant_policy = policy.config.tenants.get(tenant)
    if tenant_policy is not None:
        rules += list(tenant_policy.tools.values())
    return sorted({DEFAULT_ROOM, *(r.room for r in rules if r.room)})


def check_room(policy: RiskPolicy, principal: Principal, room: str) -> str:
    """`room` if the policy names it for the caller's tenant and the caller reviews it."""
    if room not in known_rooms(policy, principal.tenant):
        raise UnknownRoom(f"no reviewer room {room!r}: the tool policy names no such room", room=room)
    if not may_see_room(principal, room):
        raise ForbiddenError(f"you are not a reviewer of room {room}")
    return room


def rooms_to_join(policy: RiskPolicy, principal: Principal, asked: Iterable[str] | None) -> list[str]:
    """The rooms a socket follows: the ones asked for (each checked), else every room the caller sees."""
    require_reviewer(principal)
    if asked is None:
        return [r for r in known_rooms(policy, principal.tenant) if may_see_room(principal, r)]
    rooms = list(dict.fromkeys(asked))
    if len(rooms) > MAX_ROOMS_PER_SOCKET:
        raise FrameError(f"at most {MAX_ROOMS_PER_SOCKET} rooms per socket")
    return [check_room(policy, principal, room) for room in rooms]
