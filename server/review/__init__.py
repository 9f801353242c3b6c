"""Reviewer rooms: human approval of high-risk tool calls (docs/protocol.md, "Reviewer rooms").

    rooms.py      who may review which room, and which rooms exist (the tool policy names them)
    context.py    the last user message shown beside an approval, read once per approval
    service.py    the process's review services: the ledger, the policy, views, decisions
    feed.py       room streams on the shared hub, each entry rendered as an `item` frame once
    socket.py     /ws/review
    decisions.py  GET /api/approvals, GET /api/approvals/{id}, POST /api/approvals/{id}/decision
    audit.py      GET /admin/decisions
    routes.py     the routes, and the /review console page
"""
