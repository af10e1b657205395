"""The OpenAPI 3.0 document of the node's HTTP API (`dsm.api.http`), served at /openapi.json.

It is the contract a client can test against: every route, the bearer token (declared once, lifted on the
health routes), the `X-DSM-*` headers each way, and every status each route can answer with, errors
included. Statuses that any route can give: 400 (a request aiohttp cannot parse, bad percent-encoding, or
a query parameter the route does not take or given twice), 401 (with `http_token`, except on the health
routes), 417 (an `Expect` other than `100-continue`) and 503 (the connection cap reached with every
connection busy; `Retry-After`). tests/net/test_openapi_conformance.py runs schemathesis against a real node
with this document.
"""

from __future__ import annotations

from typing import Any

from dsm.core.consistency import LEVEL_NAMES

CONTEXT_HEADER = "X-DSM-Context"
TIMESTAMP_HEADER = "X-DSM-Timestamp"
WRITER_HEADER = "X-DSM-Writer"
EXPIRES_HEADER = "X-DSM-Expires"


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _error(description: str, retry: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": _ref("schemas", "Error")}},
    }
    if retry:
        response["headers"] = {"Retry-After": _ref("headers", "RetryAfter")}
    return response


_LEVEL = {
    "name": "consistency",
    "in": "query",
    "required": False,
    "description": "default: the node's region's write_consistency / read_consistency",
    "schema": {"type": "string", "enum": [*LEVEL_NAMES, "linearizable"]},
}
_IF_MATCH = {
    "name": "If-Match",
    "in": "header",
    "required": False,
    "description": "the X-DSM-Context of a read (quoted or bare): write only if the key is still exactly what that "
    "read returned (linearizable; 412 precondition_failed otherwise)",
    "schema": {"type": "string"},
}
_IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "description": "'*': write only if the key holds no value (linearizable; 412 precondition_failed otherwise)",
    "schema": {"type": "string", "enum": ["*"]},
}
_KEY = {
    "name": "key",
    "in": "path",
    "required": True,
    "description": "any non-empty Unicode string without NUL, at most max_key_bytes in UTF-8, percent-encoded "
    "as UTF-8 (a '/' may stay literal); a malformed escape or bytes that are not UTF-8 are a 400",
    "schema": {"type": "string", "minLength": 1},
}
_CONTEXT_IN = {
    "name": CONTEXT_HEADER,
    "in": "header",
    "required": False,
    "description": "the context of an earlier read: this write supersedes what that read returned",
    "schema": {"type": "string"},
}
_CONTEXT_OUT = {CONTEXT_HEADER: _ref("headers", "Context")}
_TTL = {
    "name": "ttl_ms",
    "in": "query",
    "required": False,
    "description": "the value expires this many ms after the write (1 to max_ttl_ms): then the key reads as "
    "absent on every node, within the clocks' offset; a later write with a read's context renews (with ttl_ms) "
    "or removes (without) the expiry; refused on DELETE (400 invalid_input)",
    "schema": {"type": "integer", "minimum": 1},
}
_OPAQUE = {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}
_JSON_OBJECT = {"application/json": {"schema": {"type": "object"}}}

# The statuses every route can answer with (see the module docstring), and those of the guarded routes.
_ANY = {
    "400": _ref("responses", "BadRequest"),
    "417": _ref("responses", "ExpectationFailed"),
    "503": _ref("responses", "Unavailable"),
}
_GUARDED = {**_ANY, "401": _ref("responses", "Unauthorized")}


def _write(summary: str, *, body: bool) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [_CONTEXT_IN, _IF_MATCH],
        "responses": {
            "200": {
                "description": "durable on this node and on the members the level asks for",
                "headers": _CONTEXT_OUT,
                "content": {"application/json": {"schema": _ref("schemas", "Write")}},
            },
            "412": {
                **_error(
                    "precondition_failed: the If-Match or If-None-Match condition was false; nothing was written. "
                    "The body's error has the key's current `context` (null if the key holds nothing) and `exists`"
                ),
                "headers": _CONTEXT_OUT,
            },
            **_GUARDED,
        },
    }
    if body:
        operation["parameters"].append(_IF_NONE_MATCH)
        operation["parameters"].append(_TTL)
        operation["responses"]["409"] = _error(
            "feature_unavailable: ttl_ms while a member that has not left does not support expiry yet (a rolling "
            "upgrade); the error names them in `members`"
        )
        operation["requestBody"] = {"required": False, "content": _OPAQUE}
        operation["responses"]["408"] = _error("the body did not arrive within http_body_timeout_ms")
        operation["responses"]["413"] = _error(
            "the body is larger than max_value_bytes (refused on its Content-Length before it is read)"
        )
    return operation


def _health(summary: str, ready: bool) -> dict[str, Any]:
    schema = _ref("schemas", "Ready" if ready else "Health")
    content = {"application/json": {"schema": schema}}
    return {
        "get": {
            "summary": summary,
            "security": [],
            "responses": {
                "200": {"description": "ready" if ready else "alive", "content": content},
                "400": _ANY["400"],
                "417": _ANY["417"],
                "503": {
                    "description": "not joined (reason, targets tried) or closing" if ready else "closing",
                    "headers": {"Retry-After": _ref("headers", "RetryAfter")},
                    "content": content,
                },
            },
        }
    }


OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "DSM node API",
        "version": "1",
        "description": "Errors are JSON {error: {code, message}} with a snake_case code; every 503 carries "
        "Retry-After. With http_token set, every route but the health routes needs "
        "'Authorization: Bearer <token>'.",
    },
    "security": [{"bearer": []}],
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "headers": {
            "Context": {
                "description": "the version context of what was read or written; send it back with a write",
                "schema": {"type": "string"},
            },
            "Timestamp": {"description": "the value's HLC timestamp", "schema": {"type": "string"}},
            "Writer": {"description": "the node that accepted the value", "schema": {"type": "string"}},
            "Expires": {
                "description": "Unix ms from which the value reads as absent (only for a value written with ttl_ms)",
                "schema": {"type": "string"},
            },
            "RetryAfter": {"description": "seconds to wait before retrying", "schema": {"type": "string"}},
        },
        "responses": {
            "BadRequest": _error(
                "bad input: a malformed request, key, escape, parameter or context; a query parameter the route "
                "does not take (unknown_parameter) or given twice (duplicate_parameter)"
            ),
            "Unauthorized": {
                **_error("no valid 'Authorization: Bearer <token>'"),
                "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            },
            "NotFound": _error("no such key or member"),
            "ExpectationFailed": _error("an Expect header other than 100-continue"),
            "Unavailable": _error(
                "a level not met in time, a failing store, a closing node, or every connection busy", retry=True
            ),
        },
        "schemas": {
            "Error": {
                "type": "object",
                "required": ["error"],
                "properties": {
                    "error": {
                        "type": "object",
                        "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
                            "message": {"type": "string"},
                        },
                    }
                },
            },
            "Write": {
                "type": "object",
                "required": ["key", "timestamp"],
                "properties": {"key": {"type": "string"}, "timestamp": {"type": "integer"}},
            },
            "Siblings": {
                "type": "object",
                "required": ["key", "context", "siblings"],
                "properties": {
                    "key": {"type": "string"},
                    "context": {"type": "string"},
                    "siblings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["value", "timestamp", "writer"],
                            "properties": {
                                "value": {"type": "string", "format": "byte"},
                                "timestamp": {"type": "integer"},
                                "writer": {"type": "string"},
                                "expires_ms": {"type": "integer", "description": "only for a value that expires"},
                            },
                        },
                    },
                },
            },
            "Page": {
                "type": "object",
                "required": ["keys", "next"],
                "properties": {
                    "keys": {"type": "array", "items": {"type": "string"}},
                    "next": {"type": "string", "nullable": True},
                },
            },
            "Members": {
                "type": "object",
                "required": ["members"],
                "properties": {
                    "members": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["id", "addr", "region", "state", "incarnation"],
                            "properties": {
                                "id": {"type": "string"},
                                "addr": {"type": "string"},
                                "region": {"type": "string"},
                                "state": {"type": "string", "enum": ["alive", "suspect", "dead", "left"]},
                                "incarnation": {"type": "integer"},
                                "heard_ms_ago": {
                                    "type": "integer",
                                    "nullable": True,
                                    "description": "ms since this node last received a message from the "
                                    "member; null: not since it started (and for itself)",
                                },
                                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                            },
                        },
                    }
                },
            },
            "Health": {
                "type": "object",
                "required": ["status", "node_id"],
                "properties": {
                    "status": {"type": "string", "enum": ["ok", "closing"]},
                    "node_id": {"type": "string"},
                    "members_alive": {"type": "integer"},
                },
            },
            "Ready": {
                "type": "object",
                "required": ["status", "node_id"],
                "properties": {
                    "status": {"type": "string", "enum": ["ready", "not_ready"]},
                    "node_id": {"type": "string"},
                    "joined": {"type": "boolean"},
                    "reason": {"type": "string"},
                    "targets": {"type": "object", "additionalProperties": {"type": "string"}},
                },
            },
        },
    },
    "paths": {
        "/v1/kv/{key}": {
            "parameters": [_KEY, _LEVEL],
            "put": _write("Write a value (body: its bytes)", body=True),
            "get": {
                "summary": "Read a value",
                "responses": {
                    "200": {
                        "description": "the value's bytes",
                        "headers": {
                            **_CONTEXT_OUT,
                            TIMESTAMP_HEADER: _ref("headers", "Timestamp"),
                            WRITER_HEADER: _ref("headers", "Writer"),
                            EXPIRES_HEADER: _ref("headers", "Expires"),
                        },
                        "content": _OPAQUE,
                    },
                    "300": {
                        "description": "several concurrent values (siblings), newest first",
                        "headers": _CONTEXT_OUT,
                        "content": {"application/json": {"schema": _ref("schemas", "Siblings")}},
                    },
                    "404": _ref("responses", "NotFound"),
                    **_GUARDED,
                },
            },
            "delete": _write("Delete (a tombstone)", body=False),
        },
        "/v1/kv": {
            "get": {
                "summary": "Keys holding a value, in order",
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                ],
                "responses": {
                    "200": {
                        "description": "a page of keys; next: the key to pass as `after` for the next page",
                        "content": {"application/json": {"schema": _ref("schemas", "Page")}},
                    },
                    **_GUARDED,
                },
            },
            "delete": {
                "summary": "Delete the keys under a prefix that hold a value, a bounded page per request (each an "
                "ordinary delete: a tombstone); continue with after=next while more is true",
                "parameters": [
                    {"name": "prefix", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
                    {"name": "after", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                    {**_LEVEL, "schema": {"type": "string", "enum": list(LEVEL_NAMES)}},
                ],
                "responses": {
                    "200": {
                        "description": "deleted: how many keys this request deleted; more: whether keys may remain; "
                        "next: the key to pass as `after` to continue",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["prefix", "deleted", "more", "next"],
                                    "properties": {
                                        "prefix": {"type": "string"},
                                        "deleted": {"type": "integer", "minimum": 0},
                                        "more": {"type": "boolean"},
                                        "next": {"type": "string", "nullable": True},
                                    },
                                }
                            }
                        },
                    },
                    **_GUARDED,
                },
            },
        },
        "/v1/store": {
            "get": {
                "summary": "This node's store: {node_id, keys (client keys stored, tombstones included), "
                "store_bytes (on disk; null for a store that is not a local file)}",
                "responses": {"200": {"description": "the store's numbers", "content": _JSON_OBJECT}, **_GUARDED},
            }
        },
        "/v1/watch": {
            "get": {
                "summary": "A stream of committed changes (local and replicated) of keys under a prefix, "
                "resumable on any node from a cursor",
                "parameters": [
                    {"name": "prefix", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000}},
                    {
                        "name": "since",
                        "in": "query",
                        "description": "a cursor of an earlier watch (any node): deliver every change after it",
                        "schema": {"type": "string", "maxLength": 512},
                    },
                    {
                        "name": "values",
                        "in": "query",
                        "description": "1: events carry the value (base64)",
                        "schema": {"type": "string", "enum": ["0", "1", "false", "true"]},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "NDJSON lines: first {cursor}; events {key, timestamp, writer, deleted, "
                        "expired, local, digest, cursor[, value]}, each the key's current state; with `since` on "
                        "another node, {resync: begin}, every key's state, {resync: end, cursor}; a progress "
                        "line {cursor} after 15 s without an event; a last {end: overflow|shutdown, cursor} "
                        "line when the node ends the stream (resume from its cursor)",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_GUARDED,
                },
            }
        },
        "/v1/members": {
            "get": {
                "summary": "Every member: id, addr, region, state, incarnation, when last heard from, metadata",
                "responses": {
                    "200": {
                        "description": "members",
                        "content": {"application/json": {"schema": _ref("schemas", "Members")}},
                    },
                    **_GUARDED,
                },
            }
        },
        "/v1/members/{node_id}": {
            "delete": {
                "summary": "Remove a member for good (it stops counting for consistency levels)",
                "parameters": [{"name": "node_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "200": {"description": "removed", "content": _JSON_OBJECT},
                    "404": _ref("responses", "NotFound"),
                    **_GUARDED,
                },
            }
        },
        "/v1/topology": {
            "get": {
                "summary": "This node's near and long links",
                "responses": {"200": {"description": "links", "content": _JSON_OBJECT}, **_GUARDED},
            }
        },
        "/v1/overlay": {
            "get": {
                "summary": "The overlay: this node's links and every alive member's, asked of each member at the "
                "HTTP address it advertises (metadata `http`) with the caller's token: {nodes: [{id, region, "
                "state, position (0-1 on the ring), near, long_out}], unreachable: [ids]}",
                "responses": {"200": {"description": "the overlay", "content": _JSON_OBJECT}, **_GUARDED},
            }
        },
        "/v1/snapshot": {
            "get": {
                "summary": "An online, consistent snapshot of this node's store (dsm.node.snapshot: magic, JSON "
                "header, msgpack rows, BLAKE2b-256 checksum), for `dsm snapshot restore`",
                "responses": {
                    "200": {
                        "description": "the snapshot file",
                        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                    },
                    **_GUARDED,
                },
            }
        },
        "/health": _health("Liveness", ready=False),
        "/health/live": _health("Liveness (the same as /health)", ready=False),
        "/health/ready": _health(
            "Readiness: serving and joined to its cluster (levels above local count real members)", ready=True
        ),
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "responses": {
                    "200": {"description": "text format", "content": {"text/plain": {"schema": {"type": "string"}}}},
                    **_GUARDED,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.0", "content": _JSON_OBJECT}, **_GUARDED},
            }
        },
    },
}
