"""The reviewer routes and the console page (`GET /review`)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from server.pages import render_page
from server.review.audit import admin_decisions
from server.review.decisions import get_approval, list_approvals, post_decision
from server.review.socket import review_endpoint


async def review_page(request: Request) -> Response:
    return render_page(request, "review.html")


def routes() -> list[BaseRoute]:
    return [
        Route("/review", review_page, methods=["GET"]),
        WebSocketRoute("/ws/review", review_endpoint),
        Route("/api/approvals", list_approvals, methods=["GET"]),
        Route("/api/approvals/{approval_id}", get_approval, methods=["GET"]),
        Route("/api/approvals/{approval_id}/decision", post_decision, methods=["POST"]),
        Route("/admin/decisions", admin_decisions, methods=["GET"]),
    ]
