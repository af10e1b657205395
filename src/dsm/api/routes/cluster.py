"""The cluster routes: `GET /v1/members` (every member this node knows of, with its metadata), `DELETE
/v1/members/{id}` (an operator removes a member for good), `GET /v1/topology` (this node's overlay
links) and `GET /v1/overlay` (every alive member's links, asked of each member: the dashboard's graph).
They read the node's status snapshot (`dsm.net.status`), never the core's tables; the removal is the
runtime's command (`Runtime.remove_member`), and the metadata the store's (`member_metadata`).

A node without a network (standalone, or not started) lists no members, has no links and refuses a removal
with a 404.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import aiohttp
from aiohttp import web

from dsm.api import parsing
from dsm.api.errors import ApiError
from dsm.core.ring import RING, State, position
from dsm.net.status import Member, StatusReader
from dsm.node import EpidemicStorage
from dsm.node.storage import HTTP_METADATA
from dsm.urls import url_on_host

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

    async def overlay(self, request: web.Request) -> web.Response:
        """The overlay assembled from the members' topologies, for the dashboard: this node's links, and each
        alive member's own `/v1/topology`, fetched from the HTTP address it advertises (`advertise_http`),
        with the caller's bearer token, all at once, within OVERLAY_TIMEOUT_S. The token goes only to an
        address on the member's own peer host (a member's metadata cannot send it elsewhere); a member that
        does not answer in time, or has no such address, is listed as unreachable."""
        network = self.status(members=True).network
        if network is None:
            return web.json_response({"nodes": [], "unreachable": []})
        members = {m.node_id: m for m in network.members or ()}
        metadata = await self.storage.member_metadata(list(members))
        links = network.links
        nodes = [_overlay_node(members.get(network.node_id), network.node_id, links.near, links.long_out)]
        targets = [
            (member, metadata.get(member.node_id, {}).get(HTTP_METADATA, ""))
            for member in members.values()
            if member.node_id != network.node_id and member.state == State.ALIVE
        ][:OVERLAY_MEMBERS_MAX]
        headers = {"Authorization": request.headers["Authorization"]} if "Authorization" in request.headers else {}
        unreachable: list[str] = []
        gate = asyncio.Semaphore(OVERLAY_CONCURRENCY)
        timeout = aiohttp.ClientTimeout(total=OVERLAY_TIMEOUT_S)

        async def fetch(session: aiohttp.ClientSession, member: Member, url: str) -> None:
            if not url_on_host(url, member.addr):
                unreachable.append(member.node_id)
                return
            try:
                async with gate, session.get(url.rstrip("/") + "/v1/topology", headers=headers) as response:
                    body = await response.content.read(OVERLAY_BODY_MAX)
                    topology = json.loads(body) if response.status == 200 else None
                near, long_out = topology["near"], topology["long_out"]  # type: ignore[index]
                if not all(isinstance(x, list) and all(isinstance(i, str) for i in x) for x in (near, long_out)):
                    raise ValueError("not a topology")
                nodes.append(_overlay_node(member, member.node_id, near, long_out))
            except (aiohttp.ClientError, TimeoutError, ValueError, TypeError, KeyError):
                unreachable.append(member.node_id)

        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(ssl=self._ssl())) as session:
            await asyncio.gather(*(fetch(session, member, url) for member, url in targets))
        nodes.sort(key=lambda node: node["position"])
        return web.json_response({"nodes": nodes, "unreachable": sorted(unreachable)})

    def _ssl(self) -> ssl.SSLContext | bool:
        """How HTTPS addresses of other members are checked: against the cluster's CA when there is one
        (the CA model of `dsm.net.tls`), else the system's."""
        config = self.storage.config
        if not config.tls_ca_file:
            return True
        context = ssl.create_default_context(cafile=config.tls_ca_file)
        context.check_hostname = False  # the cluster CA names nodes, not hosts (dsm.net.tls)
        return context


#: At most this many members are asked for their topology per request, this many at once, for this long,
#: reading at most this many bytes of each answer.
OVERLAY_MEMBERS_MAX = 256
OVERLAY_CONCURRENCY = 16
OVERLAY_TIMEOUT_S = 2.0
OVERLAY_BODY_MAX = 1 << 20


def _overlay_node(member: Member | None, node_id: str, near: Sequence[str], long_out: Sequence[str]) -> dict[str, Any]:
    return {
        "id": node_id,
        "region": member.region if member is not None else "",
        "state": STATE_NAMES[member.state] if member is not None else "alive",
        "position": position(node_id) / RING,
        "near": list(near),
        "long_out": list(long_out),
    }
