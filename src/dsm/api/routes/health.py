"""The health routes, open without the bearer token (probes): `GET /health` (= `/health/live`, liveness) and
`GET /health/ready` (readiness). Both read the node's status snapshot (`dsm.net.status`, without the member
list).

Liveness: 200 `ok` while the node serves, 503 `closing` (with `Retry-After`) once it stops. Readiness (an
orchestrator's "send it traffic"): serving *and* joined to its cluster, so that levels above `local` count
the real members; a node that reaches no member is alive but not ready (503, with the reason and the join
targets it tries and how each last failed).
"""

from __future__ import annotations

from aiohttp import web

from dsm.api.errors import RETRY_AFTER_S
from dsm.net.status import StatusReader


class HealthRoutes:
    """The handlers of the health routes, over the node's status snapshots."""

    def __init__(self, status: StatusReader) -> None:
        self.status = status

    async def live(self, request: web.Request) -> web.Response:
        status = self.status(members=False)
        body = {
            "status": "closing" if status.closed else "ok",
            "node_id": status.node_id,
            "members_alive": status.members_alive,
        }
        headers = {"Retry-After": str(RETRY_AFTER_S)} if status.closed else None
        return web.json_response(body, status=503 if status.closed else 200, headers=headers)

    async def ready(self, request: web.Request) -> web.Response:
        status = self.status(members=False)
        join = status.join
        ok = join.joined and not status.closed
        body = {
            "status": "ready" if ok else "not_ready",
            "node_id": status.node_id,
            "joined": join.joined,
            "reason": "closing" if status.closed else join.reason,
            "targets": dict(join.targets),
        }
        headers = {} if ok else {"Retry-After": str(RETRY_AFTER_S)}
        return web.json_response(body, status=200 if ok else 503, headers=headers)
