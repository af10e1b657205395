"""The HTTP API of a node (aiohttp), described by the OpenAPI document it serves at /openapi.json
(`dsm.api.openapi`); served with bounded connections by `dsm.api.connections`.

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
    GET    /v1/members  /v1/topology  /health (= /health/live)  /health/ready  /metrics  /openapi.json
    DELETE /v1/members/{id}  an operator removes a member for good (recorded and spread as its leave: it
                             no longer counts for consistency levels); 404 unknown, 400 this node

Keys: any key the library accepts works, percent-encoded as UTF-8 in the path (`/` may stay literal). The
key is decoded here from the raw path, strictly: a `%` not followed by two hex digits, or bytes that are not
UTF-8 once decoded, are a 400 (`bad_encoding`), never kept literally; so `a%25ffb` names the key `a%ffb`
and `a%ffb` names none. Query parameters are decoded the same way (`+` is a space there); on every path a
parameter the path does not take is a 400 (`unknown_parameter`), and so is one given twice
(`duplicate_parameter`: `?consistency=local&consistency=quorum` has no single meaning).

Every response about a key carries its version context in the `X-DSM-Context` header; a `PUT` or
`DELETE` that sends it back supersedes what that read returned. Siblings (HTTP 300) come as
`{"key": ..., "context": ..., "siblings": [{"value": <base64>, "timestamp": <int>, "writer": <node id>}]}`,
newest first. `?consistency=` takes a level (`local`, `region_quorum`, `quorum`, `each_region_quorum`,
`all`; default: the node's region's `write_consistency` / `read_consistency`); a level not met within
`consistency_timeout_ms` is a 503 whose error also carries `level`, `operation`, `acknowledged` (members
that answered, this one included), `required` and `shortfall` (per region or "all": [answers, needed]).
A `PUT` whose `Content-Length` is above `max_value_bytes` is a 413 at once, before any of the body is read
(and before a `100 Continue`), and its connection is closed; a client that closes its connection before its
body arrived is counted (`dsm_http_connections_closed_total{reason="client_gone"}`), not logged.

Errors are JSON, `{"error": {"code": "...", "message": "..."}}`, the code in snake_case (`invalid_key`,
`not_found`, `consistency_unmet`, ...): bad input is a 4xx (400, 401 with `WWW-Authenticate: Bearer`, 404,
405 with `Allow`, 408, 413, 417), a store that fails, a level not met or a closing node is a 503 with
`Retry-After`; nothing a client sends produces a 500 (a header that is not UTF-8 included). With a bearer
token configured, every path but the health routes needs `Authorization: Bearer <token>`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import itertools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from dsm.api.connections import (
    BAD_REQUESTS,
    CLOSE_REASONS,
    RETRY_AFTER_S,
    BoundedRequestHandler,
    ConnectionPool,
    HttpLimits,
    bad_request,
    one_line,
)
from dsm.api.openapi import CONTEXT_HEADER, OPENAPI, TIMESTAMP_HEADER, WRITER_HEADER
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

__all__ = ["CONNECTIONS", "CONTEXT_HEADER", "OPENAPI", "TIMESTAMP_HEADER", "WRITER_HEADER", "create_app"]

LEVELS = LEVEL_NAMES
LIST_MAX = 1000
#: Most changes a watch stream holds for a slow reader before it ends with a watch_overflow line.
WATCH_QUEUE = 10_000
#: Seconds without a change after which a watch stream sends an empty line (a heartbeat).
WATCH_HEARTBEAT_S = 15.0
#: Paths open without the bearer token (probes).
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready"})
#: The app's connection bounds and counters (`dsm.api.connections.BoundedSite` serves with them).
CONNECTIONS = web.AppKey("dsm_connections", ConnectionPool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class _BadRequestFilter(logging.Filter):
    """aiohttp logs every unparseable request as an ERROR with a traceback: the client's mistake, yet anyone
    who reaches the port could fill the node's log with them. `BoundedRequestHandler` counts them without
    that log (`dsm.api.connections.bad_request`); this filter does the same for what aiohttp still logs: a
    body that cannot be decoded, raised again as aiohttp drains it after our 400, and every unparseable
    request when the app is served by aiohttp's own sites."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError | RequestPayloadError):
            bad_request(exc)
            return False
        return True


_BAD_REQUEST_FILTER = _BadRequestFilter()


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def error_code(exc: BaseException) -> str:
    """The snake_case code of an error class: `InvalidKeyError` -> `invalid_key`."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def _reason_code(reason: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _decode(raw: str, what: str, plus_is_space: bool = False) -> str:
    """Strict percent-decoding of a raw path segment or query part, as UTF-8.

    Raises:
        ApiError: (400 bad_encoding) a `%` that does not start an escape, or bytes that are not UTF-8.
    """
    if plus_is_space:
        raw = raw.replace("+", " ")
    if "%" not in raw and raw.isascii():
        return raw
    if _BAD_ESCAPE.search(raw):
        raise ApiError(400, "bad_encoding", f"{what}: '%' must start a %XX escape (write '%' itself as %25)")
    try:
        # A parser that lets raw bytes >= 0x80 through hands them over as surrogate escapes.
        return unquote_to_bytes(raw.encode("utf-8", "surrogateescape")).decode("utf-8")
    except UnicodeError:
        raise ApiError(400, "bad_encoding", f"{what} is not UTF-8 once percent-decoded") from None


def _tail(request: web.Request) -> str:
    """The raw (still percent-encoded) path after its first two segments: `/v1/kv/<this>`."""
    parts = request.rel_url.raw_path.split("/", 3)
    return parts[3] if len(parts) == 4 else ""


def _params(request: web.Request, known: frozenset[str] = frozenset()) -> dict[str, str]:
    """The query's parameters, strictly decoded.

    Raises:
        ApiError: (400 bad_encoding) see `_decode`; (400 unknown_parameter) a name not in `known`: a typo
            such as `?consistancy=quorum` would otherwise pass for a request at the default level;
            (400 duplicate_parameter) a name given twice, which has no single meaning.
    """
    out: dict[str, str] = {}
    for part in request.rel_url.raw_query_string.split("&"):
        if part:
            raw_name, _, raw_value = part.partition("=")
            name = _decode(raw_name, "a query parameter name", plus_is_space=True)
            if name not in known:
                allowed = ", ".join(sorted(known)) or "none"
                raise ApiError(
                    400, "unknown_parameter", f"unknown query parameter {name!r}; this path takes: {allowed}"
                )
            if name in out:
                raise ApiError(400, "duplicate_parameter", f"query parameter {name!r} given more than once")
            out[name] = _decode(raw_value, f"query parameter {name!r}", plus_is_space=True)
    return out


_KEY_PARAMS = frozenset({"consistency"})
_LIST_PARAMS = frozenset({"prefix", "after", "limit"})
_WATCH_PARAMS = frozenset({"prefix", "limit"})


def _too_large(request: web.Request, body_max: int) -> web.Response | None:
    """A 413 (closing the connection) for a request whose declared body is larger than `body_max`, else None:
    refused on its `Content-Length`, before a byte of the body is read or waited for."""
    declared = request.content_length
    if declared is None or declared <= body_max:
        return None
    response = _error(413, "too_large", f"a body of {declared} bytes is larger than max_value_bytes ({body_max})")
    response.force_close()  # the body is not read: the connection cannot carry another request
    return response


def _expect_handler(
    body_max: int, pool: ConnectionPool
) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    async def expect(request: web.Request) -> web.StreamResponse | None:
        """`Expect: 100-continue` as aiohttp does it, unless the body declared is too large (413, not 100);
        anything else is a 417 (aiohttp's own handler fails with a 500 on a value that is not UTF-8)."""
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return _error(417, "expectation_failed", "only 'Expect: 100-continue' is understood")
        refused = _too_large(request, body_max)
        if refused is not None:
            return refused
        try:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except ConnectionError:  # the client is gone: its answer goes nowhere (aiohttp drops it quietly)
            pool.closed["client_gone"] += 1
            response = _error(400, "client_gone", "the client closed the connection")
            response.force_close()
            return response
        return None

    return expect


def create_app(
    storage: EpidemicStorage,
    runtime: Runtime | None = None,
    *,
    token: str = "",
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The node's HTTP application. Serve it with `dsm.api.connections.BoundedSite` and `app[CONNECTIONS]`
    (as `dsm node run` does) for the connection bounds; aiohttp's own runner and sites work without them."""
    server_log = logging.getLogger("aiohttp.server")
    if _BAD_REQUEST_FILTER not in server_log.filters:
        server_log.addFilter(_BAD_REQUEST_FILTER)
    registry = registry if registry is not None else CollectorRegistry()
    latency = Histogram(
        "dsm_operation_seconds", "Latency of client operations", ["op"], registry=registry,
        buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5),
    )  # fmt: skip
    pool = ConnectionPool(HttpLimits.from_config(storage.config))
    registry.register(_NodeCollector(storage, runtime, pool))
    expected = f"Bearer {token}".encode()
    body_timeout_s = pool.limits.body_timeout_s
    body_max = max(1, storage.config.max_value_bytes)
    expect = _expect_handler(body_max, pool)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, BoundedRequestHandler):
            protocol.request_started()  # its headers are complete: the header deadline no longer applies
        if token and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization")
            # surrogatepass: a header that is not UTF-8 arrives with surrogate escapes; it is compared (and
            # refused) as the bytes it was, not turned into an exception.
            if given is None or not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected):
                challenge = 'Bearer realm="dsm"' + ("" if given is None else ', error="invalid_token"')
                return _error(
                    401,
                    "unauthorized",
                    "a valid 'Authorization: Bearer <token>' header is required",
                    {"WWW-Authenticate": challenge},
                )
        try:
            return await handler(request)
        except ApiError as exc:
            response = _error(exc.status, exc.code, str(exc))
            if exc.status in (408, 413):
                response.force_close()  # the rest of the body may still be on its way
            return response
        except InvalidInputError as exc:
            return _error(400, error_code(exc), str(exc))
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
            return web.json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
        except StorageError as exc:
            return _error(503, error_code(exc), str(exc))
        except DSMError as exc:
            return _error(400, error_code(exc), str(exc))
        except RequestPayloadError as exc:  # a body that cannot be decoded (bad chunking, gzip, ...)
            return _error(400, "bad_body", one_line(exc))
        except web.HTTPRequestEntityTooLarge as exc:  # a chunked body that grew past the limit
            response = _error(413, "too_large", exc.text or "request body too large")
            response.force_close()
            return response
        except web.HTTPException as exc:
            if exc.status >= 400:
                headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
                return _error(exc.status, _reason_code(exc.reason), exc.text or exc.reason, headers)
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
        query = request.rel_url.raw_query_string
        if not query:
            return None
        if query == "consistency=local":
            return "local"  # the common request, without parsing a query
        name = _params(request, _KEY_PARAMS).get("consistency")
        if name is None:
            return None
        if name not in LEVELS:
            raise ApiError(400, "bad_consistency", f"unknown consistency level {name!r}; one of {', '.join(LEVELS)}")
        return name

    def key_of(request: web.Request) -> str:
        return _decode(_tail(request), "the key")

    async def put(request: web.Request) -> web.StreamResponse:
        refused = _too_large(request, body_max)  # first: whatever else is wrong, this body is not waited for
        if refused is not None:
            return refused
        consistency = level(request)
        key = key_of(request)
        try:
            async with asyncio.timeout(body_timeout_s):
                value = await request.read()
        except TimeoutError:
            pool.closed["body_timeout"] += 1
            raise ApiError(408, "body_timeout", f"the body did not arrive within {body_timeout_s:g} s") from None
        except ConnectionResetError:
            # The client closed its connection before its whole body arrived: nothing to write and nobody to
            # answer. The answer below goes nowhere (aiohttp drops it quietly), rather than a traceback.
            pool.closed["client_gone"] += 1
            raise ApiError(400, "client_gone", "the connection closed before the whole body arrived") from None
        result = await storage.put(key, value, context=request.headers.get(CONTEXT_HEADER), consistency=consistency)
        return web.json_response({"key": key, "timestamp": result.timestamp}, headers={CONTEXT_HEADER: result.context})

    async def get(request: web.Request) -> web.Response:
        consistency = level(request)
        key = key_of(request)
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
        key = key_of(request)
        result = await storage.delete(key, context=request.headers.get(CONTEXT_HEADER), consistency=consistency)
        return web.json_response({"key": key, "timestamp": result.timestamp}, headers={CONTEXT_HEADER: result.context})

    def limit_of(params: Mapping[str, str], default: int, most: int) -> int:
        raw = params.get("limit", str(default))
        if not (raw.isascii() and raw.isdigit()):
            raise ApiError(400, "bad_limit", f"limit must be an integer from 1 to {most}")
        limit = int(raw)
        if not 1 <= limit <= most:
            raise ApiError(400, "bad_limit", f"limit must be from 1 to {most}")
        return limit

    async def listing(request: web.Request) -> web.Response:
        params = _params(request, _LIST_PARAMS)
        limit = limit_of(params, 100, LIST_MAX)
        keys, more = await storage.list_keys(params.get("prefix", ""), params.get("after", ""), limit)
        return web.json_response({"keys": keys, "next": keys[-1] if more and keys else None})

    watches: set[Watch] = set()

    async def watch(request: web.Request) -> web.StreamResponse:
        params = _params(request, _WATCH_PARAMS)
        limit = limit_of(params, WATCH_QUEUE, WATCH_QUEUE)
        changes = storage.watch(params.get("prefix", ""), limit)
        watches.add(changes)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})

        async def send(data: bytes) -> None:
            async with asyncio.timeout(body_timeout_s):  # a client that stops reading holds no connection
                await response.write(data)

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
                        await send(b"\n")
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
                    await send(json.dumps(line).encode() + b"\n")
            except WatchOverflowError as exc:
                end = {"error": {"code": "watch_overflow", "message": str(exc)}}
                await send(json.dumps(end).encode() + b"\n")
        except (ConnectionError, RuntimeError):  # the client went away: the watch ends with it
            pass
        except TimeoutError:  # the client stopped reading: the stream ends, its connection is closed
            pool.closed["send_timeout"] += 1
            if request.transport is not None:
                request.transport.close()
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
        node_id = _decode(_tail(request), "the member id")
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
        headers = {"Retry-After": str(RETRY_AFTER_S)} if storage.closed else None
        return web.json_response(body, status=503 if storage.closed else 200, headers=headers)

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
        headers = {} if ok else {"Retry-After": str(RETRY_AFTER_S)}
        return web.json_response(body, status=200 if ok else 503, headers=headers)

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), content_type="text/plain", charset="utf-8")

    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)

    async def not_found(request: web.Request) -> web.Response:
        raise ApiError(404, "not_found", f"no route {request.path!r}; see /openapi.json")

    def not_allowed(allow: str) -> Handler:
        async def answer(request: web.Request) -> web.Response:
            message = f"{request.method} is not allowed on this path; allowed: {allow}"
            return _error(405, "method_not_allowed", message, {"Allow": allow})

        return answer

    def strict(handler: Handler) -> Handler:
        """`handler` for a path that takes no query parameter: any is a 400, as on the paths that take some
        (a probe's or a scraper's typo is noticed, not ignored)."""

        async def run(request: web.Request) -> web.StreamResponse:
            if request.rel_url.raw_query_string:
                _params(request)
            return await handler(request)

        return run

    # [\s\S]: a key may hold any character, a newline included ('.' would stop at one and answer 404).
    table: dict[str, dict[str, Handler]] = {
        r"/v1/kv/{key:[\s\S]*}": {
            "PUT": timed("put", put),
            "GET": timed("get", get),
            "DELETE": timed("delete", delete),
        },
        "/v1/kv": {"GET": timed("list", listing)},
        "/v1/watch": {"GET": watch},
        "/v1/members": {"GET": strict(members)},
        r"/v1/members/{node_id:[\s\S]*}": {"DELETE": strict(remove_member)},
        "/v1/topology": {"GET": strict(topology)},
        "/health": {"GET": strict(health)},
        "/health/live": {"GET": strict(health)},
        "/health/ready": {"GET": strict(ready)},
        "/metrics": {"GET": strict(metrics)},
        "/openapi.json": {"GET": strict(openapi)},
    }
    routes = []
    for path, methods in table.items():
        for method, handler in methods.items():
            routes.append(web.route(method, path, handler, expect_handler=expect))
        # Every other method, and every other path below, answered here rather than by aiohttp's own routes,
        # so that those answers are JSON with Allow, and an odd Expect header on them is a 417 too.
        allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
        routes.append(web.route("*", path, not_allowed(allow), expect_handler=expect))
    routes.append(web.route("*", r"/{path:[\s\S]*}", not_found, expect_handler=expect))
    app = web.Application(middlewares=[guard], client_max_size=max(1, storage.config.max_value_bytes))
    app[CONNECTIONS] = pool
    app.add_routes(routes)
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

    def __init__(self, storage: EpidemicStorage, runtime: Runtime | None, pool: ConnectionPool) -> None:
        self.storage, self.runtime, self.pool = storage, runtime, pool

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
        http_open = GaugeMetricFamily(
            "dsm_http_connections",
            "Open HTTP connections (served with the bounds), by phase: headers (a request arriving), busy, idle",
            labels=["phase"],
        )
        for phase, count in self.pool.phases().items():
            http_open.add_metric([phase], count)
        yield http_open
        http_closed = CounterMetricFamily(
            "dsm_http_connections_closed",
            "HTTP connections closed by a bound: header_timeout, body_timeout, send_timeout (a client not "
            "reading its answer), idle_timeout, evicted (the oldest "
            "idle or half-sent one, for a new connection at http_max_connections), refused (503, all busy); "
            "and client_gone: closed by the client before its request body arrived",
            labels=["reason"],
        )
        for reason in CLOSE_REASONS:
            http_closed.add_metric([reason], self.pool.closed[reason])
        yield http_closed
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
            (
                "dsm_peer_connect_failures",
                "Outgoing node connections that failed, by reason",
                stats.connect_failure_reasons,
            ),
        ):
            family = CounterMetricFamily(name, doc, labels=["type" if "reason" not in doc else "reason"])
            for label, value in sorted(counter.items()):
                family.add_metric([label], value)
            yield family
        peer = runtime.peer
        yield GaugeMetricFamily(
            "dsm_joined", "1 once this node has joined its cluster (levels above local need it), else 0",
            value=1 if runtime.ready else 0,
        )  # fmt: skip
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
