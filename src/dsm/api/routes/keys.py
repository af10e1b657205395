"""The key routes: `PUT`, `GET` and `DELETE /v1/kv/{key}`, `GET /v1/kv` (listing) and `GET /v1/watch` (a stream
of committed changes). They call the store's public operations (`EpidemicStorage.put`, `get`, `delete`,
`list_keys`, `watch`) and render the answers; the formats are in `dsm.api.http`'s docstring and the OpenAPI
document. `DELETE /v1/kv?prefix=P` deletes the keys under P that hold a value, at most `limit` (up to
PREFIX_DELETE_MAX) per request, each an ordinary delete (a tombstone through the write path, at the level
asked for), and answers how many, whether more remain and the `next` key to pass as `after` to continue.
`GET /v1/store` is this node's own numbers for `dsm status`: keys stored and the store's size on disk.

Bounds kept here: a `PUT` body must arrive within the HTTP body timeout (408 `body_timeout` otherwise) and
is refused on its declared length above `max_value_bytes` (413) before any of it is read; a watch stream's
every write must be taken by the client within the same timeout (else it ends and its connection is
closed, counted as `send_timeout`); a quiet watch sends a progress line (`{"cursor": ...}`) every
`heartbeat_s`. Every watch is ended when the app shuts down (`end_watches`), with a final
`{"end": "shutdown", "cursor": ...}` line, so a graceful stop does not wait for the streams and the readers
know where to resume.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
from collections.abc import Awaitable, Callable

from aiohttp import web

from dsm.api import parsing
from dsm.api.connections import ConnectionPool
from dsm.api.errors import ApiError
from dsm.api.openapi import CONTEXT_HEADER, EXPIRES_HEADER, TIMESTAMP_HEADER, WRITER_HEADER
from dsm.node import EpidemicStorage, Watch
from dsm.node.conditional import LINEARIZABLE
from dsm.node.watches import End, Event, Item, Resync

#: Most keys one listing returns.
LIST_MAX = 1000
#: Most keys one prefix delete deletes per request (and how many without a `limit`).
PREFIX_DELETE_MAX = 1000
PREFIX_DELETE_DEFAULT = 100
#: The query parameters of a prefix delete.
PREFIX_DELETE_PARAMS = frozenset({"prefix", "after", "limit", "consistency"})
#: Most changes a watch stream holds for a slow reader before it ends with an {"end": "overflow"} line.
WATCH_QUEUE = 10_000
#: Seconds without a change after which a watch stream sends a progress line (a heartbeat with the cursor).
WATCH_HEARTBEAT_S = 15.0


def watch_line(item: Item) -> dict[str, object]:
    """The NDJSON line of a watch item (the formats are in `dsm.api.http`'s docstring)."""
    if isinstance(item, Event):
        line: dict[str, object] = {
            "key": item.key,
            "timestamp": item.timestamp,
            "writer": item.writer,
            "deleted": item.deleted,
            "expired": item.expired,
            "local": item.local,
            "digest": item.digest,
            "cursor": item.cursor,
        }
        if item.value is not None:
            line["value"] = base64.b64encode(item.value).decode("ascii")
        return line
    if isinstance(item, Resync):
        return {"resync": "begin"} if item.begin else {"resync": "end", "cursor": item.cursor}
    assert isinstance(item, End)
    return {"end": item.reason, "cursor": item.cursor}


def store_bytes(storage: EpidemicStorage) -> int | None:
    """The size on disk of a SQLite store (the database, its WAL and shared-memory files); None for another."""
    url = storage.config.resolved_storage_url()
    if not url.startswith("sqlite:"):
        return None
    path = url[len("sqlite://") :] if url.startswith("sqlite://") else url[len("sqlite:") :]
    total = 0
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(OSError):  # no WAL (yet): nothing to count
            total += os.stat(path + suffix).st_size
    return total


class KeyRoutes:
    """The handlers of the key routes over one store."""

    def __init__(
        self, storage: EpidemicStorage, pool: ConnectionPool, *, heartbeat_s: float = WATCH_HEARTBEAT_S
    ) -> None:
        self.storage, self.pool = storage, pool
        self.body_timeout_s = pool.limits.body_timeout_s
        self.body_max = max(1, storage.config.max_value_bytes)
        self.heartbeat_s = heartbeat_s
        self.watches: set[Watch] = set()

    def key_of(self, request: web.Request) -> str:
        return parsing.decode(parsing.tail(request), "the key")

    async def put(self, request: web.Request) -> web.StreamResponse:
        refused = parsing.too_large(request, self.body_max)  # first: whatever else is wrong, no wait for it
        if refused is not None:
            return refused
        consistency = parsing.level(request, parsing.WRITE_PARAMS)
        ttl_ms = parsing.ttl(request)
        key = self.key_of(request)
        value = await self._body(request)
        if_absent, if_match = parsing.conditions(request)
        result = await self.storage.put(
            key, value, context=request.headers.get(CONTEXT_HEADER), consistency=consistency, ttl_ms=ttl_ms,
            if_absent=if_absent, if_match=if_match,
        )  # fmt: skip
        return web.json_response({"key": key, "timestamp": result.timestamp}, headers={CONTEXT_HEADER: result.context})

    async def _body(self, request: web.Request) -> bytes:
        if request.content.is_eof():
            return await request.read()  # it came whole with the headers (the usual small body): no wait, no timer
        try:
            async with asyncio.timeout(self.body_timeout_s):
                return await request.read()
        except TimeoutError:
            self.pool.closed["body_timeout"] += 1
            raise ApiError(408, "body_timeout", f"the body did not arrive within {self.body_timeout_s:g} s") from None
        except ConnectionResetError:
            # The client closed its connection before its whole body arrived: nothing to write and nobody to
            # answer. The answer goes nowhere (aiohttp drops it quietly), rather than a traceback.
            self.pool.closed["client_gone"] += 1
            raise ApiError(400, "client_gone", "the connection closed before the whole body arrived") from None

    async def get(self, request: web.Request) -> web.Response:
        consistency = parsing.level(request)
        key = self.key_of(request)
        result = await self.storage.get(key, consistency=consistency)
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
            if newest.expires_ms:
                headers[EXPIRES_HEADER] = str(newest.expires_ms)
            return web.Response(body=newest.value, headers=headers)
        headers = {CONTEXT_HEADER: result.context}
        siblings: list[dict[str, object]] = []
        for s in result.siblings:
            sibling: dict[str, object] = {"value": base64.b64encode(s.value).decode(), "timestamp": s.timestamp}
            sibling["writer"] = s.writer
            if s.expires_ms:
                sibling["expires_ms"] = s.expires_ms
            siblings.append(sibling)
        body = {"key": key, "context": result.context, "siblings": siblings}
        return web.json_response(body, status=300, headers=headers)

    async def delete(self, request: web.Request) -> web.Response:
        consistency = parsing.level(request, parsing.WRITE_PARAMS)
        if parsing.ttl(request) is not None:
            raise ApiError(400, "invalid_input", "a delete cannot expire: ttl_ms is a parameter of PUT")
        key = self.key_of(request)
        _, if_match = parsing.conditions(request, delete=True)
        context = request.headers.get(CONTEXT_HEADER)
        result = await self.storage.delete(key, context=context, consistency=consistency, if_match=if_match)
        return web.json_response({"key": key, "timestamp": result.timestamp}, headers={CONTEXT_HEADER: result.context})

    async def listing(self, request: web.Request) -> web.Response:
        given = parsing.params(request, parsing.LIST_PARAMS)
        limit = parsing.limit(given, 100, LIST_MAX)
        keys, more = await self.storage.list_keys(given.get("prefix", ""), given.get("after", ""), limit)
        return web.json_response({"keys": keys, "next": keys[-1] if more and keys else None})

    async def delete_prefix(self, request: web.Request) -> web.Response:
        """`DELETE /v1/kv?prefix=P[&after=K][&limit=N][&consistency=L]`: one bounded page of a prefix delete."""
        given = parsing.params(request, PREFIX_DELETE_PARAMS)
        prefix = given.get("prefix", "")
        if not prefix:
            raise ApiError(400, "invalid_input", "a prefix delete needs a non-empty prefix: DELETE /v1/kv?prefix=P")
        limit = parsing.limit(given, PREFIX_DELETE_DEFAULT, PREFIX_DELETE_MAX)
        consistency = parsing.level(request, PREFIX_DELETE_PARAMS)
        if consistency == LINEARIZABLE:
            raise ApiError(400, "bad_consistency", "a prefix delete is not conditional: linearizable is refused")
        keys, more = await self.storage.list_keys(prefix, given.get("after", ""), limit)
        async with asyncio.TaskGroup() as group:  # at most `limit` deletes at once: the page is the bound
            for key in keys:
                group.create_task(self._delete_read(key, consistency))
        more = more and bool(keys)
        body = {"prefix": prefix, "deleted": len(keys), "more": more, "next": keys[-1] if more else None}
        return web.json_response(body)

    async def _delete_read(self, key: str, consistency: str | None) -> None:
        """Deletes what this node holds of `key`: the delete carries the context of a local read, so that it
        supersedes every version read (a blind delete would stand beside them as a sibling)."""
        found = await self.storage.get(key, consistency="local")
        if found is not None:
            await self.storage.delete(key, context=found.context, consistency=consistency)

    async def store(self, request: web.Request) -> web.Response:
        """`GET /v1/store`: this node's id, client keys stored (tombstones included) and the store's size on disk
        in bytes (the SQLite database with its WAL; null for a store that is not a local file)."""
        keys = await self.storage.count()
        body = {"node_id": self.storage.node_id, "keys": keys, "store_bytes": store_bytes(self.storage)}
        return web.json_response(body)

    async def watch(self, request: web.Request) -> web.StreamResponse:
        given = parsing.params(request, parsing.WATCH_PARAMS)
        limit = parsing.limit(given, WATCH_QUEUE, WATCH_QUEUE)
        values = parsing.flag(given, "values")
        changes = self.storage.watch(given.get("prefix", ""), limit, since=given.get("since"), values=values)
        self.watches.add(changes)
        response = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})

        async def send(data: bytes) -> None:
            async with asyncio.timeout(self.body_timeout_s):  # a client that stops reading holds no connection
                await response.write(data)

        try:
            await response.prepare(request)  # the headers tell the client its watch is in place
            await self._stream(changes, send)
        except (ConnectionError, RuntimeError):  # the client went away: the watch ends with it
            pass
        except TimeoutError:  # the client stopped reading: the stream ends, its connection is closed
            self.pool.closed["send_timeout"] += 1
            if request.transport is not None:
                request.transport.close()
        finally:
            changes.close()
            self.watches.discard(changes)
        return response

    async def _stream(self, changes: Watch, send: Callable[[bytes], Awaitable[None]]) -> None:
        """Sends a first progress line (the cursor of the watch's start), one JSON line per event and resync
        bound, a progress line after `heartbeat_s` without one, and the final {"end", "cursor"} line when the
        node ends the watch (a reader too far behind, the node closing)."""
        await send(json.dumps({"cursor": changes.cursor}).encode() + b"\n")
        while True:
            try:
                async with asyncio.timeout(self.heartbeat_s):  # no task per change, unlike wait_for
                    item = await anext(changes)
            except TimeoutError:
                # A progress line now and then: a client whose machine vanished (no FIN ever comes) is
                # noticed by a failing write even when nothing changes, a client can tell a quiet node from
                # a dead one, and a quiet watch's cursor stays fresh (a resume replays less).
                await send(json.dumps({"cursor": changes.cursor}).encode() + b"\n")
                continue
            except StopAsyncIteration:
                break
            await send(json.dumps(watch_line(item)).encode() + b"\n")

    async def end_watches(self, app: web.Application) -> None:
        """Ends every open watch (on the app's shutdown): streams would otherwise hold a graceful stop for
        aiohttp's whole shutdown timeout; each gets its final line with the cursor."""
        for changes in list(self.watches):
            changes.finish("shutdown")
