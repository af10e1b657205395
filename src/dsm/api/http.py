"""The HTTP API of a node (aiohttp), described by the OpenAPI document it serves at /openapi.json
(`dsm.api.openapi`); served with bounded connections by `dsm.api.connections`.

    PUT    /v1/kv/{key}      body: the value's bytes; header X-DSM-Context (optional): a read's context
    GET    /v1/kv/{key}      200 + the value's bytes; 404 when absent or deleted; 300 + JSON (below) when
                             several concurrent values (siblings) are held
    DELETE /v1/kv/{key}
    GET    /v1/kv?prefix=&limit=&after=    keys holding a value, in order
    GET    /v1/watch?prefix=&since=&values=  a stream (NDJSON) of committed changes, local or replicated:
                             a first {"cursor"} line, then per change {"key", "timestamp", "writer",
                             "deleted", "expired", "local", "digest", "cursor"[, "value" (base64)]}, the
                             key's current state; from the moment the response headers arrive, or after
                             `since` (a cursor, of any node: replayed on its node, else a resync in the
                             stream: {"resync": "begin"}, every key under the prefix, {"resync": "end",
                             "cursor"}); a {"cursor"} progress line after 15 s without a change; a last
                             {"end": "overflow"|"shutdown", "cursor"} line when the node ends the stream
                             (a reader more than `limit` changes behind, the node stopping)
    GET    /v1/members  /v1/topology  /v1/overlay  /health (= /health/live)  /health/ready  /metrics
           /openapi.json
    GET    /ui               the dashboard (its page, script and style: open, like the health routes)
    GET    /v1/snapshot      a consistent snapshot of the store (`dsm.node.snapshot`), streamed
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

How it is built: this module is the factory (`create_app`) and the routing (the route table, the token
check, 404 and 405 for paths and methods it does not serve, the `Expect` handler). The handlers are
grouped in `dsm.api.routes` (`keys`, `cluster`, `health`); what a request asks is decoded by
`dsm.api.parsing`; every failure becomes its answer in `dsm.api.errors`; the metrics are
`dsm.api.metrics`; the OpenAPI document is `dsm.api.openapi`; the connection bounds `dsm.api.connections`.
What the routes and the metrics show of the node's membership, links and counters comes from its status
snapshot (`dsm.net.status`), never from the core's tables.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http import HttpVersion11
from aiohttp.typedefs import Middleware
from aiohttp.web_protocol import RequestPayloadError
from prometheus_client import CollectorRegistry

from dsm.api import parsing
from dsm.api.connections import BoundedRequestHandler, ConnectionPool, HttpLimits, quiet_bad_requests
from dsm.api.errors import ApiError, error_code, error_response, json_error
from dsm.api.metrics import Metrics
from dsm.api.openapi import CONTEXT_HEADER, OPENAPI, TIMESTAMP_HEADER, WRITER_HEADER
from dsm.api.routes.cluster import ClusterRoutes
from dsm.api.routes.health import HealthRoutes
from dsm.api.routes.keys import WATCH_HEARTBEAT_S, KeyRoutes
from dsm.api.routes.snapshot import SnapshotRoutes
from dsm.api.routes.ui import ASSETS, UiRoutes
from dsm.errors import DSMError
from dsm.net.runtime import Runtime
from dsm.net.status import reader
from dsm.node import EpidemicStorage

__all__ = [
    "CONNECTIONS",
    "CONTEXT_HEADER",
    "METRICS",
    "OPENAPI",
    "TIMESTAMP_HEADER",
    "WATCH_HEARTBEAT_S",
    "WRITER_HEADER",
    "create_app",
    "error_code",
]

#: Paths open without the bearer token (probes).
OPEN_PATHS = frozenset({"/health", "/health/live", "/health/ready", *ASSETS})
#: The app's connection bounds and counters (`dsm.api.connections.BoundedSite` serves with them).
CONNECTIONS = web.AppKey("dsm_connections", ConnectionPool)
#: The app's metrics (`dsm node run` attaches the Redis-protocol front door's counters to them).
METRICS = web.AppKey("dsm_metrics", Metrics)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ExpectHandler = Callable[[web.Request], Awaitable[web.StreamResponse | None]]


def create_app(
    storage: EpidemicStorage,
    runtime: Runtime | None = None,
    *,
    token: str = "",
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The node's HTTP application. Serve it with `dsm.api.connections.BoundedSite` and `app[CONNECTIONS]`
    (as `dsm node run` does) for the connection bounds; aiohttp's own runner and sites work without them.

    Args:
        storage: the node's store.
        runtime: its network runtime; None for a node that runs standalone (no other members).
        token: the bearer token every path but the health routes needs; "" for none.
        registry: where the metrics go (a new registry when None).
    """
    quiet_bad_requests()
    pool = ConnectionPool(HttpLimits.from_config(storage.config))
    status = reader(storage, runtime)
    metrics = Metrics(status, pool, registry)
    # The heartbeat is read here, at each call, so that a test may shorten it on this module.
    keys = KeyRoutes(storage, pool, heartbeat_s=WATCH_HEARTBEAT_S)
    cluster = ClusterRoutes(storage, status, runtime.remove_member if runtime is not None else None)
    health = HealthRoutes(status)
    ui = UiRoutes()
    snapshots = SnapshotRoutes(storage, pool.limits.body_timeout_s)
    timed = metrics.timed
    # [\s\S]: a key may hold any character, a newline included ('.' would stop at one and answer 404).
    table: dict[str, dict[str, Handler]] = {
        r"/v1/kv/{key:[\s\S]*}": {
            "PUT": timed("put", keys.put),
            "GET": timed("get", keys.get),
            "DELETE": timed("delete", keys.delete),
        },
        "/v1/kv": {"GET": timed("list", keys.listing), "DELETE": keys.delete_prefix},
        "/v1/store": {"GET": strict(keys.store)},
        "/v1/watch": {"GET": keys.watch},
        "/v1/members": {"GET": strict(cluster.members)},
        r"/v1/members/{node_id:[\s\S]*}": {"DELETE": strict(cluster.remove_member)},
        "/v1/topology": {"GET": strict(cluster.topology)},
        "/v1/overlay": {"GET": strict(cluster.overlay)},
        "/v1/snapshot": {"GET": strict(snapshots.get)},
        **{path: {"GET": strict(ui.serve)} for path in ASSETS},
        "/health": {"GET": strict(health.live)},
        "/health/live": {"GET": strict(health.live)},
        "/health/ready": {"GET": strict(health.ready)},
        "/metrics": {"GET": strict(metrics.serve)},
        "/openapi.json": {"GET": strict(openapi)},
    }
    body_max = max(1, storage.config.max_value_bytes)
    app = web.Application(middlewares=[guard(token)], client_max_size=body_max)
    app[CONNECTIONS] = pool
    app[METRICS] = metrics
    app.add_routes(routes(table, expect_handler(body_max, pool)))
    app.on_shutdown.append(keys.end_watches)
    return app


def guard(token: str) -> Middleware:
    """The middleware every request goes through: the bearer token checked (with `token`; the health routes
    are open), and whatever the handler raises answered as an error (`dsm.api.errors.error_response`)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def run(request: web.Request, handler: Handler) -> web.StreamResponse:
        protocol = request.protocol
        if isinstance(protocol, BoundedRequestHandler):
            protocol.request_started()  # its headers are complete: the header deadline no longer applies
        if token and request.path not in OPEN_PATHS:
            refused = unauthorized(request, expected)
            if refused is not None:
                return refused
        try:
            return await handler(request)
        except (ApiError, DSMError, RequestPayloadError, web.HTTPException) as exc:
            response = error_response(exc)
            if response is None:
                raise
            return response

    return run


def unauthorized(request: web.Request, expected: bytes) -> web.Response | None:
    """A 401 for a request without the `Authorization` header `expected`, else None."""
    given = request.headers.get("Authorization")
    # surrogatepass: a header that is not UTF-8 arrives with surrogate escapes; it is compared (and refused)
    # as the bytes it was, not turned into an exception.
    if given is not None and hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected):
        return None
    challenge = 'Bearer realm="dsm"' + ("" if given is None else ', error="invalid_token"')
    return json_error(
        401,
        "unauthorized",
        "a valid 'Authorization: Bearer <token>' header is required",
        {"WWW-Authenticate": challenge},
    )


def routes(table: dict[str, dict[str, Handler]], expect: ExpectHandler) -> list[web.RouteDef]:
    """The app's routes: each path's methods, then every other method on it (405) and every other path
    (404) answered here rather than by aiohttp's own routes, so that those answers are JSON with `Allow`,
    and an odd `Expect` header on them is a 417 too."""
    out = []
    for path, methods in table.items():
        for method, handler in methods.items():
            out.append(web.route(method, path, handler, expect_handler=expect))
        allow = ", ".join(sorted({*methods, *(["HEAD"] if "GET" in methods else [])}))
        out.append(web.route("*", path, not_allowed(allow), expect_handler=expect))
    out.append(web.route("*", r"/{path:[\s\S]*}", not_found, expect_handler=expect))
    return out


def expect_handler(body_max: int, pool: ConnectionPool) -> ExpectHandler:
    """`Expect: 100-continue` as aiohttp does it, unless the body declared is too large (413, not 100);
    anything else is a 417 (aiohttp's own handler fails with a 500 on a value that is not UTF-8)."""

    async def expect(request: web.Request) -> web.StreamResponse | None:
        if request.version != HttpVersion11:
            return None
        if request.headers.get("Expect", "").lower() != "100-continue":
            return json_error(417, "expectation_failed", "only 'Expect: 100-continue' is understood")
        refused = parsing.too_large(request, body_max)
        if refused is not None:
            return refused
        try:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except ConnectionError:  # the client is gone: its answer goes nowhere (aiohttp drops it quietly)
            pool.closed["client_gone"] += 1
            response = json_error(400, "client_gone", "the client closed the connection")
            response.force_close()
            return response
        return None

    return expect


def strict(handler: Handler) -> Handler:
    """`handler` for a path that takes no query parameter: any is a 400, as on the paths that take some
    (a probe's or a scraper's typo is noticed, not ignored)."""

    async def run(request: web.Request) -> web.StreamResponse:
        if request.rel_url.raw_query_string:
            parsing.params(request)
        return await handler(request)

    return run


def not_allowed(allow: str) -> Handler:
    """The 405 of a path's other methods, with `Allow`."""

    async def answer(request: web.Request) -> web.Response:
        message = f"{request.method} is not allowed on this path; allowed: {allow}"
        return json_error(405, "method_not_allowed", message, {"Allow": allow})

    return answer


async def not_found(request: web.Request) -> web.Response:
    raise ApiError(404, "not_found", f"no route {request.path!r}; see /openapi.json")


async def openapi(request: web.Request) -> web.Response:
    """`GET /openapi.json`: the API's OpenAPI document (`dsm.api.openapi`)."""
    return web.json_response(OPENAPI)
