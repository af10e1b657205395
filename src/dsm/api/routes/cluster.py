"""The cluster routes: `GET /v1/members` (every member this node knows of, with its metadata), `DELETE
/v1/members/{id}` (an operator removes a member for good) and `GET /v1/topology` (this node's overlay
links). They read the node's status snapshot (`dsm.net.status`), never the core's tables; the removal is
the runtime's command (`Runtime.remove_member`), and the metadata the store's (`member_metadata`).

A node without a network (standalone, or not started) lists no members, has no links and refuses a removal
with a 404.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from dsm.api import parsing
from dsm.api.errors import ApiError
from dsm.core.ring import State
from dsm.net.status import Member, StatusReader
from dsm.node import EpidemicStorage

#: Each state as `/v1/members` names it.
STATE_NAMES = {state: state.name.lower() for state in State}


def member_json(member: Member) -> dict[str, Any]:
    """A member as `/v1/members` lists it (before its metadata)."""
    return {
        "id": member.node_id,
        "addr": member.addr,
        "region": member.region,
        "state": STATE_NAMES[member.state],
        "incarnation": member.incarnation,
        "heard_ms_ago": member.heard_ms_ago,
    }


class ClusterRoutes:
    """The handlers of the cluster routes.

    Args:
        storage: the node's store (its id, the members' metadata).
        status: the node's status snapshots.
        remove: removes a member for good (`Runtime.remove_member`; ValueError for an unknown member or
            this node); None for a node without a runtime.
    """

    def __init__(
        self, storage: EpidemicStorage, status: StatusReader, remove: Callable[[str], None] | None = None
    ) -> None:
        self.storage, self.status, self.remove = storage, status, remove

    async def members(self, request: web.Request) -> web.Response:
        network = self.status(members=True).network
        listed = [member_json(m) for m in network.members or ()] if network is not None else []
        metadata = await self.storage.member_metadata([m["id"] for m in listed]) if listed else {}
        for member in listed:
            member["metadata"] = metadata.get(member["id"], {})
        return web.json_response({"members": listed})

    async def remove_member(self, request: web.Request) -> web.Response:
        node_id = parsing.decode(parsing.tail(request), "the member id")
        if self.remove is None or self.status(members=False).network is None:
            raise ApiError(404, "not_found", "this node runs standalone: it has no other members")
        try:
            self.remove(node_id)
        except ValueError as exc:
            status = 400 if node_id == self.storage.node_id else 404
            raise ApiError(status, "not_found" if status == 404 else "bad_member", str(exc)) from None
        return web.json_response({"id": node_id, "state": "left"})

    async def topology(self, request: web.Request) -> web.Response:
        network = self.status(members=False).network
        if network is None:
            return web.json_response({"near": [], "long_out": [], "long_in": []})
        links = network.links
        body = {
            "node_id": network.node_id,
            "near": list(links.near),
            "long_out": list(links.long_out),
            "long_in": list(links.long_in),
        }
        return web.json_response(body)
