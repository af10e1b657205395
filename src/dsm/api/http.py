"""The HTTP API of a node (aiohttp), described by the OpenAPI document it serves at /openapi.json.

    PUT    /v1/kv/{key}      body: the value's bytes; header X-DSM-Context (optional): a read's context
    GET    /v1/kv/{key}      200 + the value's bytes; 404 when absent or deleted; 300 + JSON (below) when
                             several concurrent values (siblings) are held
    DELETE /v1/kv/{key}
    GET    /v1/kv?prefix=&limit=&after=    keys holding a value, in order
    GET    /v1/watch?prefix=  a stream (NDJSON, one line per committed change, local or replicated) of
                             {"key", "timestamp", "writer", "deleted", "local"}, from the moment the
                             response headers arrive; a reader more than `limit` changes behind gets a
                             last {"error": {"code": "watch_overflow", ...}} line; an empty line after
                             15 s without a change (a heartbeat)
    GET    /v1/members  /v1/topology  /health  /metrics (Prometheus)  /openapi.json
    DELETE /v1/members/{id}  an operator removes a member for good (recorded and spread as its leave: it
                             no longer counts for consistency levels); 404 unknown, 400 this node

Every response about a key carries its version context in the `X-DSM-Context` header; a `PUT` or
`DELETE` that sends it back supersedes what that read returned. Siblings (HTTP 300) come as
`{"key": ..., "context": ..., "siblings": [{"value": <base64>, "timestamp": <int>, "writer": <node id>}]}`,
newest first. `?consistency=` takes a level (`local`, `region_quorum`, `quorum`, `each_region_quorum`,
`all`; default: the node's region's `write_consistency` / `read_consistency`); a level not met within
`consistency_timeout_ms` is a 503 whose error also carries `level`, `operation`, `acknowledged` (members
that answered, this one included), `required` and `shortfall` (per region or "all": [answers, needed]).

Errors are JSON, `{"error": {"code": "...", "message": "..."}}`: bad input is a 4xx (400, 401, 404, 405,
413), a store that fails or a level not met is 503; nothing a client sends produces a 500. With a bearer
token configured, every path but /health needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dsm.core.consistency import LEVEL_NAMES
from dsm.core.ring import State
from dsm.errors import (
    ClosedError,
    ConsistencyError,
    DSMError,
    InvalidInputError,
    StorageError,
    WatchOverflowError,
)
from dsm.net.looplag import BUCKETS_S
from dsm.net.runtime import Runtime
from dsm.node import EpidemicStorage, Watch

log = logging.getLogger("dsm.api")

CONTEXT_HEADER = "X-DSM-Context"
#: With a single value: its timestamp and the node that accepted it.
TIMESTAMP_HEADER = "X-DSM-Timestamp"
WRITER_HEADER = "X-DSM-Writer"
LEVELS = LEVEL_NAMES
LIST_MAX = 1000
#: Most changes a watch stream holds for a slow reader before it ends with a watch_overflow line.
WATCH_QUEUE = 10_000
#: Seconds without a change after which a watch stream sends an empty line (a heartbeat).
WATCH_HEARTBEAT_S = 15.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


#: Requests aiohttp refused before a handler saw them (unparseable HTTP), by exception name; process-wide.
BAD_REQUESTS: Counter[str] = Counter()


class _BadRequestFilter(logging.Filter):
    """aiohttp logs every unparseable request as an ERROR with a traceback: the client's mistake, yet anyone
    who reaches the port could fill the node's log with them. Such a request is answered with a 400 as
    before; here it is counted (`dsm_http_bad_requests`) and logged in one line at INFO instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            BAD_REQUESTS[type(exc).__name__] += 1
            log.info("refused an unparseable HTTP request: %s", str(exc).splitlines()[0] if str(exc) else exc)
            return False
        return True


_BAD_REQUEST_FILTER = _BadRequestFilter()


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def create_app(
    storage: EpidemicStorage,
    runtime: Runtime | None = None,
    *,
    token: str = "",
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The node's HTTP application (serve it with aiohttp's runner)."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_FILTER not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_FILTER)
    registry = registry if registry is not None else CollectorRegistry()
    latency = Histogram(
        "dsm_operation_seconds", "Latency of client operations", ["op"], registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    )  # fmt: skip
    registry.register(_NodeCollector(storage, runtime))

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        if token and request.path not in ("/health", "/health/live", "/health/ready"):
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                return _error(401, "unauthorized", "a valid 'Authorization: Bearer <token>' header is required")
        try:
            return await handler(request)
        except ApiError as exc:
            return _error(exc.status, exc.code, str(exc))
        except InvalidInputError as exc:
            return _error(400, type(exc).__name__, str(exc))
        except ClosedError as exc:
            return _error(503, "closed", str(exc))
        except ConsistencyError as exc:
            body = {
                "error": {
                    "code": "consistency_unmet",
                    "message": str(exc),
                    "level": exc.level,
                    "operation": exc.operation,
                    "acknowledged": exc.received,
                    "required": exc.required,
                    "shortfall": {name: list(pair) for name, pair in exc.shortfall.items()},
                }
            }
            return web.json_response(body, status=503)
        except StorageError as exc:
            return _error(503, type(exc).__name__, str(exc))
        except DSMError as exc:
            return _error(400, type(exc).__name__, str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            return _error(413, "too_large", exc.text or "request body too large")
        except web.HTTPException as exc:
            if exc.status >= 400:
                return _error(exc.status, exc.reason.lower().replace(" ", "_"), exc.text or exc.reason)
            raise

    def timed(op: str, handler: Handler) -> Handler:
        observe = latency.labels(op).observe  # the labelled child once, not a lookup per request

        async def run(request: web.Request) -> web.StreamResponse:
            start = time.perf_counter()
            try:
                return await handler(request)
            finally:
                observe(time.perf_counter() - start)

        return run

    def level(request: web.Request) -> str | None:
        """The level asked for; None: the node's default for its region."""
        query = request.query_string
        if not query:
            return None
        if query == "consistency=local":
            return "local"  # the common request, without parsing a query
        name = request.query.get("consistency")
        if name is None:
            return None
        if name not in LEVELS:
            raise ApiError(400, "bad_consistency", f"unknown consistency level {name!r}; one of {', '.join(LEVELS)}")
        return name

    async def put(request: web.Request) -> web.Response:
        consistency = level(request)
        key = request.match_info["key"]
        value = await request.read()
        result = await storage.put(key, value, context=request.headers.get(CONTEXT_HEADER), consistency=consistency)
        return web.json_response({"key": key, "timestamp": result.timestamp}, headers={CONTEXT_HEADER: result.context})

    async def get(request: web.Request) -> web.Response:
        consistency = level(request)
        key = request.match_info["key"]
        result = await storage.get(key, consistency=consistency)
        if result is None:
            raise ApiError(404, "not_found", f"no value for key {key!r}")
        if not result.conflict:
            newest = result.newest
            headers = {
                CONTEXT_HEADER: result.context,
                TIMESTAMP_HEADER: str(newest.timestamp),
                WRITER_HEADER: newest.writer,
                "Content-Type": "application/octet-stream",
            }
            return web.Response(body=newest.value, headers=headers)
        headers = {CONTEXT_HEADER: result.context}
        siblings = [
            {"value": base64.b64encode(s.value).decode(), "timestamp": s.timestamp, "writer": s.writer}
            for s in result.siblings
        ]
        body = {"key": key, "context": result.context, "siblings": siblings}
        return web.json_response(body, status=300, headers=headers)

    async def delete(request: web.Request) -> web.Response:
        consistency = level(request)
        key = request.match_info["key"]
        result = await storage.delete(key, context=request.headers.get(CONTEXT_HEADER), consistency=consistency)
        return web.json_response({"key": key, "timestamp": result.timestamp}, headers={CONTEXT_HEADER: result.context})

    async def listing(request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        after = request.query.get("after", "")
        try:
            limit = int(request.query.get("limit", "100"))
        except ValueError:
            raise ApiError(400, "bad_limit", "limit must be an integer") from None
        if not 1 <= limit <= LIST_MAX:
            raise ApiError(400, "bad_limit", f"limit must be from 1 to {LIST_MAX}")
        keys, more = await storage.list_keys(prefix, after, limit)
        return web.json_response({"keys": keys, "next": keys[-1] if more and keys else None})

    watches: set[Watch] = set()

    async def watch(request: web.Request) -> web.StreamResponse:
        try:
            limit = int(request.query.get("limit", str(WATCH_QUEUE)))
        except ValueError:
            raise ApiError(400, "bad_limit", "limit must be an integer") from None
        if not 1 <= limit <= WATCH_QUEUE:
            raise ApiError(400, "bad_limit", f"limit must be from 1 to {WATCH_QUEUE}")
        changes = storage.watch(request.query.get("prefix", ""), limit)
        watches.add(changes)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        try:
            await response.prepare(request)  # the headers tell the client its watch is in place
            try:
                while True:
                    try:
                        async with asyncio.timeout(WATCH_HEARTBEAT_S):  # no task per change, unlike wait_for
                            change = await anext(changes)
                    except TimeoutError:
                        # An empty line now and then: a client whose machine vanished (no FIN ever comes) is
                        # noticed by a failing write even when nothing changes, and a client can tell a quiet
                        # node from a dead one.
                        await response.write(b"\n")
                        continue
                    except StopAsyncIteration:
                        break
                    line = {
                        "key": change.key,
                        "timestamp": change.timestamp,
                        "writer": change.writer,
                        "deleted": change.deleted,
                        "local": change.local,
                    }
                    await response.write(json.dumps(line).encode() + b"\n")
            except WatchOverflowError as exc:
                end = {"error": {"code": "watch_overflow", "message": str(exc)}}
                await response.write(json.dumps(end).encode() + b"\n")
        except (ConnectionError, RuntimeError):  # the client went away: the watch ends with it
            pass
        finally:
            changes.close()
            watches.discard(changes)
        return response

    async def end_watches(app: web.Application) -> None:
        # Streams would otherwise hold a graceful stop for aiohttp's whole shutdown timeout.
        for changes in list(watches):
            changes.close()

    async def members(request: web.Request) -> web.Response:
        listed = _members(runtime)
        metadata = await storage.member_metadata([m["id"] for m in listed]) if listed else {}
        for member in listed:
            member["metadata"] = metadata.get(member["id"], {})
        return web.json_response({"members": listed})

    async def remove_member(request: web.Request) -> web.Response:
        node_id = request.match_info["node_id"]
        if runtime is None or runtime.peer is None:
            raise ApiError(404, "not_found", "this node runs standalone: it has no other members")
        try:
            runtime.remove_member(node_id)
        except ValueError as exc:
            status = 400 if node_id == storage.node_id else 404
            raise ApiError(status, "not_found" if status == 404 else "bad_member", str(exc)) from None
        return web.json_response({"id": node_id, "state": "left"})

    async def topology(request: web.Request) -> web.Response:
        return web.json_response(_topology(runtime))

    async def health(request: web.Request) -> web.Response:
        peer = runtime.peer if runtime is not None else None
        body = {
            "status": "closing" if storage.closed else "ok",
            "node_id": storage.node_id,
            "members_alive": peer.live_count() if peer is not None else 1,
        }
        return web.json_response(body, status=503 if storage.closed else 200)

    async def ready(request: web.Request) -> web.Response:
        # Readiness (an orchestrator's "send it traffic"): serving, and joined to its cluster, so that levels
        # above `local` count the real members. A node that reaches no member is alive but not ready.
        status = runtime.join_status() if runtime is not None else {"joined": True, "reason": "", "targets": {}}
        ok = bool(status["joined"]) and not storage.closed
        body = {
            "status": "ready" if ok else "not_ready",
            "node_id": storage.node_id,
            "joined": bool(status["joined"]),
            "reason": "closing" if storage.closed else status["reason"],
            "targets": status["targets"],
        }
        headers = {} if ok else {"Retry-After": "1"}
        return web.json_response(body, status=200 if ok else 503, headers=headers)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    app = web.Application(middlewares=[guard], client_max_size=max(1, storage.config.max_value_bytes))
    app.add_routes(
        [
            web.put("/v1/kv/{key:.+}", timed("put", put)),
            web.get("/v1/kv/{key:.+}", timed("get", get)),
            web.delete("/v1/kv/{key:.+}", timed("delete", delete)),
            web.get("/v1/kv", timed("list", listing)),
            web.get("/v1/watch", watch),
            web.get("/v1/members", members),
            web.delete("/v1/members/{node_id}", remove_member),
            web.get("/v1/topology", topology),
            web.get("/health", health),
            web.get("/health/live", health),
            web.get("/health/ready", ready),
            web.get("/metrics", metrics),
            web.get("/openapi.json", openapi),
        ]
    )
    app.on_shutdown.append(end_watches)
    return app


def _members(runtime: Runtime | None) -> list[dict[str, Any]]:
    if runtime is None or runtime.peer is None:
        return []
    peer = runtime.peer
    out = []
    for slot, raw in enumerate(peer.table.states):
        if not raw:
            continue
        info = peer.directory.infos[slot]
        out.append(
            {
                "id": info.node_id,
                "addr": info.addr,
                "region": info.region,
                "state": State(raw).name.lower(),
                "incarnation": peer.table.incarnations[slot],
            }
        )
    return sorted(out, key=lambda m: m["id"])


def _topology(runtime: Runtime | None) -> dict[str, Any]:
    if runtime is None or runtime.peer is None:
        return {"near": [], "long_out": [], "long_in": []}
    peer = runtime.peer
    overlay, infos = peer.overlay, peer.directory.infos
    return {
        "node_id": peer.id,
        "near": sorted(infos[s].node_id for s in overlay.near),
        "long_out": sorted(infos[s].node_id for s in overlay.long_out),
        "long_in": sorted(infos[s].node_id for s in overlay.long_in),
    }


class _NodeCollector(Collector):
    """Reads the node's counters at scrape time (no second bookkeeping)."""

    def __init__(self, storage: EpidemicStorage, runtime: Runtime | None) -> None:
        self.storage, self.runtime = storage, runtime

    def collect(self) -> Any:
        merges = self.storage.merge_stats
        merged = CounterMetricFamily("dsm_merge_items", "Replicated items merged, by outcome", labels=["outcome"])
        merged.add_metric(["changed"], merges.keys_changed)
        merged.add_metric(
            ["unchanged"],
            merges.items - merges.keys_changed - merges.refused_skew - merges.refused_corrupt - merges.refused_expired,
        )
        merged.add_metric(["refused_skew"], merges.refused_skew)
        merged.add_metric(["refused_corrupt"], merges.refused_corrupt)
        merged.add_metric(["refused_expired"], merges.refused_expired)
        yield merged
        yield CounterMetricFamily(
            "dsm_tombstones_purged",
            "Deleted keys whose tombstones the sweep purged (older than tombstone_grace_ms)",
            value=self.storage.tombstones_purged,
        )
        bad = CounterMetricFamily(
            "dsm_http_bad_requests", "Unparseable HTTP requests refused with a 400, by kind", labels=["kind"]
        )
        for kind, count in sorted(BAD_REQUESTS.items()):
            bad.add_metric([kind], count)
        yield bad
        levels = CounterMetricFamily(
            "dsm_consistency_requests",
            "Reads and writes above the local level, by operation, level and outcome (ok, unmet)",
            labels=["op", "level", "outcome"],
        )
        for (op, name, outcome), count in sorted(self.storage.level_stats.items()):
            levels.add_metric([op, name, outcome], count)
        yield levels
        yield CounterMetricFamily(
            "dsm_read_repairs",
            "Members (this node included) a read above the local level found stale and sent the merge to",
            value=self.storage.read_repairs,
        )
        runtime = self.runtime
        if runtime is None or runtime.peer is None:
            return
        stats = runtime.transport.stats
        for name, doc, counter in (
            ("dsm_messages_sent", "Messages sent, by type", stats.frames_out),
            ("dsm_messages_received", "Messages received, by type", stats.frames_in),
            ("dsm_bytes_sent", "Bytes sent, by message type", stats.bytes_out),
            ("dsm_bytes_received", "Bytes received, by message type", stats.bytes_in),
            ("dsm_messages_dropped", "Messages not sent, by reason", stats.dropped),
            ("dsm_connections_rejected", "Incoming connections closed for bad input, by reason", stats.rejected),
        ):
            family = CounterMetricFamily(name, doc, labels=["type" if "reason" not in doc else "reason"])
            for label, value in sorted(counter.items()):
                family.add_metric([label], value)
            yield family
        peer = runtime.peer
        states = GaugeMetricFamily("dsm_members", "Members by state, as this node sees them", labels=["state"])
        for state in (State.ALIVE, State.SUSPECT, State.DEAD, State.LEFT):
            states.add_metric([state.name.lower()], peer.table.counts[int(state)])
        yield states
        data = peer.data
        yield GaugeMetricFamily("dsm_gossip_interval_seconds", "The current gossip period", value=data.period / 1000)
        yield CounterMetricFamily("dsm_gossip_rounds", "Gossip rounds run", value=data.stats.gossip_rounds)
        yield CounterMetricFamily(
            "dsm_anti_entropy_sessions", "Anti-entropy exchanges opened", value=runtime.anti_entropy_sessions
        )
        yield CounterMetricFamily(
            "dsm_anti_entropy_answers", "Anti-entropy steps answered", value=runtime.anti_entropy_answers
        )
        yield CounterMetricFamily(
            "dsm_anti_entropy_entries",
            "Entries anti-entropy exchanges brought to this node (differences found)",
            value=runtime.anti_entropy_entries,
        )
        yield CounterMetricFamily(
            "dsm_anti_entropy_repaired_keys",
            "Keys anti-entropy changed here: writes the direct pushes and gossip had not delivered",
            value=runtime.anti_entropy_repaired,
        )
        lag = runtime.loop_lag
        cumulative = list(itertools.accumulate(lag.counts))
        yield HistogramMetricFamily(
            "dsm_event_loop_lag_seconds",
            "How late the event loop ran a timer: the length of stalls (sampled every 50 ms)",
            buckets=[*((str(b), c) for b, c in zip(BUCKETS_S, cumulative, strict=False)), ("+Inf", cumulative[-1])],
            sum_value=lag.total_s,
        )
        yield GaugeMetricFamily(
            "dsm_event_loop_lag_max_seconds", "The longest event-loop stall seen since start", value=lag.max_s
        )
        connections = GaugeMetricFamily("dsm_connections", "Open connections", labels=["direction"])
        outgoing, incoming = runtime.transport.connections()
        connections.add_metric(["outgoing"], outgoing)
        connections.add_metric(["incoming"], incoming)
        yield connections


def _key_param() -> dict[str, Any]:
    return {"name": "key", "in": "path", "required": True, "schema": {"type": "string"}}


_LEVEL = {
    "name": "consistency",
    "in": "query",
    "required": False,
    "description": "default: the node's region's write_consistency / read_consistency",
    "schema": {"type": "string", "enum": list(LEVELS)},
}
_ERROR = {"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "DSM node API", "version": "1"},
    "components": {
        "schemas": {
            "Error": {
                "type": "object",
                "properties": {
                    "error": {
                        "type": "object",
                        "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
                    }
                },
            },
            "Write": {"type": "object", "properties": {"key": {"type": "string"}, "timestamp": {"type": "integer"}}},
            "Siblings": {
                "type": "object",
                "properties": {
                    "key": {"type": "string"},
                    "context": {"type": "string"},
                    "siblings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "properties": {
                                "value": {"type": "string", "format": "byte"},
                                "timestamp": {"type": "integer"},
                                "writer": {"type": "string"},
                            },
                        },
                    },
                },
            },
        }
    },
    "paths": {
        "/v1/kv/{key}": {
            "parameters": [_key_param(), _LEVEL],
            "put": {
                "summary": "Write a value (body: its bytes); X-DSM-Context supersedes what that read returned",
                "requestBody": {
                    "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
                },
                "responses": {
                    "200": {"description": "durable on this node and on the members the level asks for"},
                    "400": _ERROR,
                    "413": _ERROR,
                    "503": _ERROR,
                },
            },
            "get": {
                "summary": "Read a value",
                "responses": {
                    "200": {"description": "the value's bytes"},
                    "300": {
                        "description": "several concurrent values",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Siblings"}}},
                    },
                    "404": _ERROR,
                    "503": _ERROR,
                },
            },
            "delete": {
                "summary": "Delete (a tombstone)",
                "responses": {"200": {"description": "deleted"}, "400": _ERROR, "503": _ERROR},
            },
        },
        "/v1/kv": {
            "get": {
                "summary": "Keys holding a value, in order",
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": LIST_MAX}},
                ],
                "responses": {"200": {"description": "{keys, next}"}, "400": _ERROR},
            }
        },
        "/v1/watch": {
            "get": {
                "summary": "A stream of committed changes (local and replicated) of keys under a prefix",
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": WATCH_QUEUE},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "NDJSON lines {key, timestamp, writer, deleted, local}",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    "400": _ERROR,
                },
            }
        },
        "/v1/members": {
            "get": {
                "summary": "Every member: id, addr, region, state, incarnation, metadata",
                "responses": {"200": {"description": "members"}},
            }
        },
        "/v1/members/{node_id}": {
            "delete": {
                "summary": "Remove a member for good (it stops counting for consistency levels)",
                "parameters": [{"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "removed"}, "400": _ERROR, "404": _ERROR},
            }
        },
        "/v1/topology": {
            "get": {"summary": "This node's near and long links", "responses": {"200": {"description": "links"}}}
        },
        "/health": {
            "get": {
                "summary": "Liveness",
                "responses": {"200": {"description": "ok"}, "503": {"description": "closing"}},
            }
        },
        "/health/live": {
            "get": {
                "summary": "Liveness (the same as /health)",
                "responses": {"200": {"description": "ok"}, "503": {"description": "closing"}},
            }
        },
        "/health/ready": {
            "get": {
                "summary": "Readiness: serving and joined to its cluster (levels above local count real members)",
                "responses": {
                    "200": {"description": "ready"},
                    "503": {"description": "not joined (reason, targets tried) or closing"},
                },
            }
        },
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {"description": "text format"}}}},
    },
}
