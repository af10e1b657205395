"""Python clients of a node's HTTP API (`dsm.api.http`): `Client` (blocking, stdlib `http.client`) and
`AsyncClient` (asyncio, aiohttp). Both speak the same calls:

    client = Client("http://127.0.0.1:7480")          # token="..." if the node requires one
    ack = client.put("k", b"v")                       # -> Ack(key, timestamp, context)
    got = client.get("k")                             # -> Value(key, siblings, context) or None
    client.put("k", b"v2", context=got.context)       # supersedes what that read returned
    client.put("session/1", b"v", ttl_ms=30_000)      # reads as absent 30 s after the write
    client.delete("k", context=got.context)
    client.list(prefix="user/", limit=100)            # -> Page(keys, next)
    client.members(); client.topology(); client.health()
    client.remove_member("n7")                        # an operator removes a member for good
    async for change in async_client.watch("user/"): ...   # AsyncClient: committed changes, as they come
    watch = async_client.watch("user/", since=cursor, endpoints=[...])  # resumes by itself; watch.cursor

Any key the node accepts works: it is sent percent-encoded as UTF-8 (every byte but letters, digits and
`-._~`, a `/` included), and a key that is not a non-empty str raises `InvalidKeyError` before anything
is sent. A failed request raises `ClientError` (status, code and message from the node's JSON error); a
node that cannot be reached raises `UnreachableError`, and `TLSError` (one of those) when the TLS
handshake fails. An answer no DSM node gives (an error without DSM's JSON error body, such as another
server's 404 page, or a read without its `X-DSM-Context`) raises `NotDSMError` (a `ClientError`, code
`not_dsm`): another HTTP server listens at that address, and its 404 is not taken for an absent key.
`consistency=` is passed through as `?consistency=` (default: the node's for its region); a level the node
could not meet in time raises `ConsistencyUnmetError` (a `ClientError` with `level`, `acknowledged` and
`required`): a write is then durable where it landed and keeps spreading, and retrying it is safe.

HTTPS (a node with `http_tls`): `Client("https://node1:7480", ca_file="ca.pem")` verifies the node's
certificate against that CA bundle (default: the system's CAs) and the URL's host name, which the
certificate must carry (a DNS name or IP address in its subjectAltName); `ssl_context=` replaces all of
that with your own `ssl.SSLContext`. Both are ignored for `http://` URLs.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import http.client
import json
import random
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

import aiohttp
from yarl import URL

from dsm.errors import DSMError, InvalidKeyError

CONTEXT_HEADER = "X-DSM-Context"
TIMESTAMP_HEADER = "X-DSM-Timestamp"
WRITER_HEADER = "X-DSM-Writer"
EXPIRES_HEADER = "X-DSM-Expires"


class ClientError(DSMError):
    """The node answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class NotDSMError(ClientError):
    """The server at the node's address answered, but not as any DSM node does (an error without DSM's JSON
    error body, a read without its headers): another HTTP server listens there (code `not_dsm`)."""

    def __init__(self, where: str, status: int, why: str) -> None:
        message = f"the server at {where} is not a DSM node's HTTP API: {why}; check the node's HTTP address"
        super().__init__(status, "not_dsm", message)
        self.args = (message,)
        self.where = where


class ConsistencyUnmetError(ClientError):
    """The node could not meet the consistency level in time (HTTP 503, code `consistency_unmet`)."""

    def __init__(self, status: int, message: str, error: Mapping[str, Any]) -> None:
        super().__init__(status, "consistency_unmet", message)
        self.level = str(error.get("level", ""))
        self.operation = str(error.get("operation", ""))
        self.acknowledged = int(error.get("acknowledged", 0))
        self.required = int(error.get("required", 0))


class ConditionFailedError(ClientError):
    """A conditional write's condition was false (HTTP 412, code `precondition_failed`); nothing was written.
    `context` is the key's current context (None when it holds nothing), to retry with as `if_match`."""

    def __init__(self, status: int, message: str, error: Mapping[str, Any]) -> None:
        super().__init__(status, "precondition_failed", message)
        context = error.get("context")
        self.context: str | None = context if isinstance(context, str) else None
        self.exists = bool(error.get("exists", False))


class OutcomeUnknownError(ConsistencyUnmetError):
    """A conditional write may or may not have taken effect (HTTP 503, code `outcome_unknown`)."""


class _BrokenBeforeAnswer(aiohttp.ClientConnectionError):
    """A request's connection broke before its answer (not an error aiohttp resends after)."""


async def _not_resent(request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
    """Client middleware: the connection errors after which aiohttp would send the request again become
    `_BrokenBeforeAnswer`, which it does not resend (the caller sees `UnreachableError`: an unknown outcome)."""
    try:
        return await handler(request)
    except aiohttp.ClientConnectorError:
        raise  # not connected: nothing was sent (and aiohttp does not resend these)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        raise _BrokenBeforeAnswer(str(exc)) from exc


class UnreachableError(DSMError):
    """The node could not be reached (connection refused, timed out, reset)."""


class TLSError(UnreachableError):
    """The TLS handshake with the node failed: its certificate did not verify against the CA (or its host
    name did not match), or it does not speak TLS."""


def client_ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """The context the clients use for https:// URLs: TLS 1.2+, the node's certificate verified against
    `ca_file` (a PEM CA bundle; empty: the system's CAs) and the URL's host name."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@dataclass(frozen=True)
class Sibling:
    value: bytes
    timestamp: int
    writer: str
    #: Unix ms from which the value reads as absent (0: it never expires).
    expires_ms: int = 0


@dataclass(frozen=True)
class Value:
    """A read: the concurrent values (one, unless the node keeps siblings), newest first."""

    key: str
    siblings: tuple[Sibling, ...]
    context: str

    @property
    def value(self) -> bytes:
        """The newest value (the last-writer-wins choice)."""
        return self.siblings[0].value


@dataclass(frozen=True)
class Ack:
    key: str
    timestamp: int
    context: str


@dataclass(frozen=True)
class Page:
    keys: list[str]
    next: str | None


def _path(key: str) -> str:
    """The key's path: every byte of its UTF-8 but letters, digits and `-._~` percent-encoded, `/` too (so
    that no client or proxy on the way merges `//` or resolves `..`), and a key of dots spelled as escapes.

    Raises:
        InvalidKeyError: the key is not a non-empty str (the node checks the rest: NUL, size).
    """
    if not isinstance(key, str) or not key:
        raise InvalidKeyError(f"a key is a non-empty str, not {key!r}")
    try:
        quoted = quote(key, safe="")
    except UnicodeEncodeError:
        raise InvalidKeyError("a key must be valid Unicode (no lone surrogates)") from None
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")  # a path segment '.' or '..' would be resolved away
    return "/v1/kv/" + quoted


def _conditions(if_absent: bool, if_match: str | None) -> dict[str, str]:
    """The headers of a conditional write (`If-None-Match: *`, `If-Match: <context>`)."""
    if if_absent and if_match is not None:
        raise ValueError("if_absent and if_match cannot be combined")
    if if_absent:
        return {"If-None-Match": "*"}
    return {"If-Match": if_match} if if_match is not None else {}


def _query(**params: Any) -> str:
    given = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(given) if given else ""


@dataclass(frozen=True, slots=True)
class _Answer:
    """A node's answer to one request, and the address it came from (for the messages of errors)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    where: str


#: Longest plain-text answer of a server that is not a DSM node's API quoted in `NotDSMError`.
NOTE_MAX_BYTES = 300


def _error_of(body: bytes) -> dict[str, Any] | None:
    """The `error` object of a DSM error body (`{"error": {"code": str, "message": str, ...}}`), or None when
    the body is not one: every error a DSM node answers carries it (`dsm.api.errors`)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), str)
        or not isinstance(error.get("message"), str)
    ):
        return None
    return error


def _foreign(answer: _Answer, what: str) -> NotDSMError:
    """The error of an answer no DSM node gives: the server at that address is another one."""
    kind = answer.headers.get("Content-Type") or answer.headers.get("content-type") or "no Content-Type"
    why = f"it answered HTTP {answer.status} ({kind}) {what}"
    if kind.startswith("text/plain") and len(answer.body) <= NOTE_MAX_BYTES:
        # A short plain-text note is meant for a person (a DSM peer port says where the HTTP API is).
        note = answer.body.decode("utf-8", "replace").strip().splitlines()
        if note:
            why += f', saying "{note[0]}"'
    return NotDSMError(answer.where, answer.status, why)


def _raise(answer: _Answer) -> NoReturn:
    error = _error_of(answer.body)
    if error is None:
        raise _foreign(answer, "without the JSON error body every DSM node sends")
    status, code, message = answer.status, str(error["code"]), str(error["message"])
    if code == "precondition_failed":
        raise ConditionFailedError(status, message, error)
    if code in ("consistency_unmet", "outcome_unknown"):
        kind = OutcomeUnknownError if code == "outcome_unknown" else ConsistencyUnmetError
        try:
            failure = kind(status, message, error)
        except (ValueError, TypeError):
            pass  # malformed fields: a plain ClientError below
        else:
            failure.code = code
            raise failure
    raise ClientError(status, code, message)


def _value(key: str, answer: _Answer) -> Value | None:
    status, body, headers = answer.status, answer.body, answer.headers
    if status == 404:
        # Absent only when a DSM node says so: another server's 404 (any path is one there) is not an answer.
        error = _error_of(body)
        if error is not None and error["code"] == "not_found":
            return None
        _raise(answer)
    context = headers.get(CONTEXT_HEADER)
    if status == 300:
        try:
            doc = json.loads(body)
            siblings = tuple(
                Sibling(
                    base64.b64decode(s["value"]), int(s["timestamp"]), str(s["writer"]), int(s.get("expires_ms", 0))
                )
                for s in doc["siblings"]
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise _foreign(answer, "that is not DSM's list of siblings") from None
        return Value(key, siblings, context or str(doc.get("context", "")))
    if status != 200:
        _raise(answer)
    if context is None:  # a DSM node's read always carries its context
        raise _foreign(answer, f"without the {CONTEXT_HEADER} header of a DSM read")
    expires_ms = int(headers.get(EXPIRES_HEADER, "0"))
    sibling = Sibling(body, int(headers.get(TIMESTAMP_HEADER, "0")), headers.get(WRITER_HEADER, ""), expires_ms)
    return Value(key, (sibling,), context)


def _ack(answer: _Answer) -> Ack:
    doc = _json(answer, "key", "timestamp")
    try:
        return Ack(str(doc["key"]), int(doc["timestamp"]), answer.headers.get(CONTEXT_HEADER, ""))
    except (ValueError, TypeError):
        raise _foreign(answer, "that is not DSM's acknowledgement of a write") from None


def _json(answer: _Answer, *fields: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """The JSON object of an answer whose status is one of `ok`, holding `fields`; else the error raised."""
    if answer.status not in ok:
        _raise(answer)
    try:
        doc = json.loads(answer.body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or any(name not in doc for name in fields):
        raise _foreign(answer, "that is not the JSON a DSM node answers there")
    return doc


class Client:
    """Blocking client; one keep-alive connection, not thread-safe (use one per thread)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:7480",
        token: str = "",
        timeout: float = 10.0,
        *,
        ca_file: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._https = parts.scheme == "https"
        self._ssl = (ssl_context or client_ssl_context(ca_file)) if self._https else None
        self._host, self._port = parts.hostname, parts.port or (443 if self._https else 80)
        self._where = url.rstrip("/")
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None

    def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        context: str | None = None,
        conditions: Mapping[str, str] | None = None,
    ) -> _Answer:
        headers = dict(self._headers)
        if context:
            headers[CONTEXT_HEADER] = context
        if conditions:
            headers.update(conditions)
        # A kept-alive connection the node closed is retried once on a new one; a conditional write is never
        # sent twice (the first may have been applied, and its retry would then fail its condition): it goes
        # on a new connection, once, and a broken one is `UnreachableError` (outcome unknown).
        attempts: tuple[int, ...] = (0, 1)
        if conditions:
            self.close()
            attempts = (1,)
        for attempt in attempts:
            if self._conn is None:
                if self._ssl is not None:
                    self._conn = http.client.HTTPSConnection(
                        self._host, self._port, timeout=self._timeout, context=self._ssl
                    )
                else:
                    self._conn = http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)
            try:
                self._conn.request(method, path, body=body, headers=headers)
                response = self._conn.getresponse()
                data = response.read()
                return _Answer(response.status, data, {k: v for k, v in response.getheaders()}, self._where)
            except (
                http.client.RemoteDisconnected,
                BrokenPipeError,
                ConnectionResetError,
                ssl.SSLEOFError,  # a TLS connection closed without its closing message
                ssl.SSLZeroReturnError,
            ) as exc:
                self.close()
                if attempt:
                    raise UnreachableError(f"{self._host}:{self._port}: {exc}") from None
            except ssl.SSLError as exc:  # before OSError, which it is
                self.close()
                raise TLSError(f"{self._host}:{self._port}: TLS handshake failed: {exc}") from None
            except (TimeoutError, OSError, http.client.HTTPException) as exc:
                self.close()
                raise UnreachableError(f"{self._host}:{self._port}: {exc}") from None
        raise AssertionError("unreachable")

    def put(
        self,
        key: str,
        value: bytes,
        *,
        context: str | None = None,
        consistency: str | None = None,
        ttl_ms: int | None = None,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> Ack:
        """Writes a value; `if_absent` / `if_match` (a read's context) make it conditional (linearizable;
        `ConditionFailedError` when the condition is false)."""
        query = _query(consistency=consistency, ttl_ms=ttl_ms)
        conditions = _conditions(if_absent, if_match)
        return _ack(self._request("PUT", _path(key) + query, bytes(value), context, conditions))

    def get(self, key: str, *, consistency: str | None = None) -> Value | None:
        return _value(key, self._request("GET", _path(key) + _query(consistency=consistency)))

    def delete(
        self, key: str, *, context: str | None = None, consistency: str | None = None, if_match: str | None = None
    ) -> Ack:
        path = _path(key) + _query(consistency=consistency)
        return _ack(self._request("DELETE", path, None, context, _conditions(False, if_match)))

    def list(self, prefix: str = "", *, limit: int = 100, after: str = "") -> Page:
        doc = _json(self._request("GET", "/v1/kv" + _query(prefix=prefix, limit=limit, after=after)), "keys", "next")
        return Page(doc["keys"], doc["next"])

    def members(self) -> builtins.list[dict[str, Any]]:
        return list(_json(self._request("GET", "/v1/members"), "members")["members"])

    def remove_member(self, node_id: str) -> dict[str, Any]:
        """Removes a member for good (it stops counting for consistency levels; see docs/consistency.md)."""
        return _json(self._request("DELETE", "/v1/members/" + quote(node_id, safe="")))

    def topology(self) -> dict[str, Any]:
        return _json(self._request("GET", "/v1/topology"))

    def health(self) -> dict[str, Any]:
        return _json(self._request("GET", "/health"), ok=(200, 503))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient:
    """asyncio client over one aiohttp session (connection pool); safe for concurrent tasks."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:7480",
        token: str = "",
        timeout: float = 10.0,
        *,
        ca_file: str = "",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self._ssl = (ssl_context or client_ssl_context(ca_file)) if parts.scheme == "https" else None
        self._url = url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._session: aiohttp.ClientSession | None = None
        self._once: aiohttp.ClientSession | None = None

    def _connector(self) -> aiohttp.TCPConnector | None:
        return aiohttp.TCPConnector(ssl=self._ssl) if self._ssl is not None else None

    def session(self, once: bool = False) -> aiohttp.ClientSession:
        """The client's aiohttp session (made on first use); `once`: the one for requests never sent twice."""
        if once:
            # Conditional writes: aiohttp sends a PUT or DELETE again when the connection breaks before the
            # answer (RFC 9112 lets it: they are idempotent), but a conditional write is not: its first copy
            # may have been applied and the second would fail its condition. aiohttp resends only after the
            # two errors `_not_resent` turns into another (tests/net/test_client.py checks it).
            if self._once is None:
                self._once = aiohttp.ClientSession(
                    timeout=self._timeout, headers=self._headers, connector=self._connector(),
                    middlewares=(_not_resent,),
                )  # fmt: skip
            return self._once
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, headers=self._headers, connector=self._connector()
            )
        return self._session

    async def _request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        context: str | None = None,
        conditions: Mapping[str, str] | None = None,
    ) -> _Answer:
        session = self.session(once=bool(conditions))
        headers = {CONTEXT_HEADER: context} if context else None
        if conditions:
            headers = {**(headers or {}), **conditions}
        try:
            # encoded=True: the path is sent as quoted here, not re-quoted (or its escapes decoded) by yarl.
            url = URL(self._url + path, encoded=True)
            async with session.request(method, url, data=body, headers=headers) as response:
                return _Answer(response.status, await response.read(), response.headers, self._url)
        except aiohttp.ClientSSLError as exc:
            raise TLSError(f"{self._url}: TLS handshake failed: {exc}") from None
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UnreachableError(f"{self._url}: {exc}") from None

    async def put(
        self,
        key: str,
        value: bytes,
        *,
        context: str | None = None,
        consistency: str | None = None,
        ttl_ms: int | None = None,
        if_absent: bool = False,
        if_match: str | None = None,
    ) -> Ack:
        """As `Client.put`."""
        query = _query(consistency=consistency, ttl_ms=ttl_ms)
        conditions = _conditions(if_absent, if_match)
        return _ack(await self._request("PUT", _path(key) + query, bytes(value), context, conditions))

    async def get(self, key: str, *, consistency: str | None = None) -> Value | None:
        return _value(key, await self._request("GET", _path(key) + _query(consistency=consistency)))

    async def delete(
        self, key: str, *, context: str | None = None, consistency: str | None = None, if_match: str | None = None
    ) -> Ack:
        path = _path(key) + _query(consistency=consistency)
        return _ack(await self._request("DELETE", path, None, context, _conditions(False, if_match)))

    async def list(self, prefix: str = "", *, limit: int = 100, after: str = "") -> Page:
        doc = _json(
            await self._request("GET", "/v1/kv" + _query(prefix=prefix, limit=limit, after=after)), "keys", "next"
        )
        return Page(doc["keys"], doc["next"])

    async def members(self) -> builtins.list[dict[str, Any]]:
        return list(_json(await self._request("GET", "/v1/members"), "members")["members"])

    async def remove_member(self, node_id: str) -> dict[str, Any]:
        """Removes a member for good (it stops counting for consistency levels; see docs/consistency.md)."""
        return _json(await self._request("DELETE", "/v1/members/" + quote(node_id, safe="")))

    def watch(
        self,
        prefix: str = "",
        *,
        since: str | None = None,
        values: bool = False,
        endpoints: Sequence[str] = (),
        retry_s: float | None = 60.0,
        idle_timeout_s: float = 45.0,
    ) -> WatchStream:
        """Every committed change (local and replicated) of keys under `prefix`: after `since` (a cursor of
        an earlier watch, from any node), else from the moment the stream is open. Resumes by itself.

        Each item is an event `{"key", "timestamp", "writer", "deleted", "expired", "local", "digest",
        "cursor"}` (with `"value"`, base64, when `values`), or a resync bound `{"resync": "begin"}` /
        `{"resync": "end", "cursor"}`: a node that cannot replay from the cursor sends the current state of
        every key under the prefix between the two; a key the caller holds that was not listed is gone.

        When the stream breaks or the node ends it (`{"end": ..., "cursor"}`: a reader too far behind, the
        node stopping), the watch resumes from its last cursor, after a backoff (with jitter, up to 5 s),
        first on the node that served it, then on the others of `endpoints` (this client's URL first).
        Exact repeats of a key's state (same writer, timestamp and deletion, which a resume may bring) are
        dropped. The returned `WatchStream`'s `cursor` is always where the caller stands.

        Args:
            since: a cursor to resume from.
            values: events carry the key's value.
            endpoints: other nodes' URLs to fail over to (same token and TLS settings).
            retry_s: how long without any node accepting the watch before `UnreachableError` (None: forever).
            idle_timeout_s: a stream silent this long is taken as broken (nodes send a progress line every
                15 s).

        Raises (while iterating):
            ClientError: a node refused the watch (a bad prefix or cursor).
            UnreachableError: no node accepted it for `retry_s`.
        """
        urls = [self._url, *(u.rstrip("/") for u in endpoints if u.rstrip("/") != self._url)]
        return WatchStream(self, prefix, since, bool(values), urls, retry_s, idle_timeout_s)

    async def health(self) -> dict[str, Any]:
        return _json(await self._request("GET", "/health"), ok=(200, 503))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._once is not None:
            await self._once.close()
            self._once = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


#: Most keys whose last delivered state a `WatchStream` remembers to drop exact repeats.
WATCH_SEEN_MAX = 100_000
#: Longest pause between two attempts of a `WatchStream` to resume, s.
WATCH_BACKOFF_MAX_S = 5.0
#: Most items a `WatchStream` reads ahead of its caller (then it stops reading: the node's queue fills).
WATCH_BUFFER = 1000


@dataclass(frozen=True, slots=True)
class _Progress:
    """A position the stream reached without an item for the caller (a progress or end line)."""

    cursor: str


@dataclass(frozen=True, slots=True)
class _Failure:
    """How the stream's reader stopped for good (raised to the caller)."""

    error: BaseException


class WatchStream:
    """A watch that resumes by itself (see `AsyncClient.watch`): an async iterator of event and resync
    dicts. `cursor` is where the caller stands: after the last item it was given (or a progress line since),
    so a new watch from it misses nothing the caller has not seen. `resumes` counts the streams opened after
    the first, `ends` the streams nodes ended (by reason), `serving` is the URL of the node reading to it.

    A task owned by the stream reads the node's lines (up to `WATCH_BUFFER` ahead of the caller), so a
    caller's timeout around `anext` loses nothing; `aclose()` stops that task.
    """

    def __init__(
        self,
        client: AsyncClient,
        prefix: str,
        since: str | None,
        values: bool,
        urls: builtins.list[str],
        retry_s: float | None,
        idle_timeout_s: float,
    ) -> None:
        self.prefix = prefix
        self.cursor = since
        self.values = values
        self.urls = urls
        self.resumes = 0
        self.ends: dict[str, int] = {}
        self.serving = urls[0]
        self._client = client
        self._retry_s = retry_s
        self._idle_timeout_s = idle_timeout_s
        self._resume_from = since  # the reader's position: where a new stream starts
        self._seen: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        self._queue: asyncio.Queue[dict[str, Any] | _Progress | _Failure] = asyncio.Queue(WATCH_BUFFER)
        self._held: deque[dict[str, Any]] = deque()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None

    def __aiter__(self) -> WatchStream:
        return self

    async def __anext__(self) -> dict[str, Any]:
        if self._held:
            return self._held.popleft()
        while True:
            item = await self._next()
            if isinstance(item, dict):
                return item

    async def _next(self) -> dict[str, Any] | _Progress:
        """The reader's next item or position, taken in order (the caller's cursor follows it)."""
        if self._failure is not None:
            raise self._failure
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump(), name="dsm-watch")
        item = await self._queue.get()
        if isinstance(item, _Failure):
            self._failure = item.error
            raise item.error
        if isinstance(item, _Progress):
            self.cursor = item.cursor
        elif "cursor" in item:
            self.cursor = item["cursor"]
        return item

    async def start(self) -> str:
        """Opens the stream, when the caller has not started reading, and returns its cursor: every change
        after it will be delivered. (Without `since`, a watch starts when it is first read or started.)"""
        while True:
            item = await self._next()
            if isinstance(item, dict):
                self._held.append(item)
            if self.cursor is not None and (isinstance(item, _Progress) or self._held):
                return self.cursor

    async def aclose(self) -> None:
        """Stops reading (idempotent)."""
        task, self._task = self._task, None
        self._failure = self._failure or StopAsyncIteration()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _fresh(self, event: dict[str, Any]) -> bool:
        """Whether an event is not an exact repeat of the key's last delivered state (and remembers it)."""
        key = event.get("key")
        if not isinstance(key, str):
            return True
        state = (event.get("writer"), event.get("timestamp"), event.get("deleted"), event.get("expired"))
        seen = self._seen
        if seen.get(key) == state:
            seen.move_to_end(key)
            return False
        seen[key] = state
        seen.move_to_end(key)
        if len(seen) > WATCH_SEEN_MAX:
            seen.popitem(last=False)
        return True

    async def _pump(self) -> None:
        """Reads streams, resuming and failing over, into the queue, until stopped or out of retries."""
        failures = 0
        unreachable_since: float | None = None
        order = list(self.urls)
        try:
            while True:
                url = order[0]
                try:
                    async for item in self._stream(url):
                        failures, unreachable_since = 0, None
                        await self._queue.put(item)
                    order = [url] + [u for u in self.urls if u != url]  # ended by the node: resume there first
                except UnreachableError:
                    now = time.monotonic()
                    unreachable_since = unreachable_since or now
                    if self._retry_s is not None and now - unreachable_since > self._retry_s:
                        raise
                    order = order[1:] + order[:1]  # the next node
                    failures += 1
                self.resumes += 1
                # Full jitter: resuming clients spread out instead of arriving together.
                await asyncio.sleep(random.uniform(0, min(WATCH_BACKOFF_MAX_S, 0.05 * 2 ** min(failures, 10))))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the caller: a refused watch, or no node for retry_s
            await self._queue.put(_Failure(exc))

    async def _stream(self, url: str) -> AsyncIterator[dict[str, Any] | _Progress]:
        """One stream from the node at `url`, until it breaks (`UnreachableError`) or the node ends it."""
        session = self._client.session()
        query = _query(prefix=self.prefix, since=self._resume_from, values=1 if self.values else None)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=self._idle_timeout_s)
        try:
            async with session.get(URL(url + "/v1/watch" + query, encoded=True), timeout=timeout) as response:
                if response.status != 200:
                    body = await response.read()
                    if response.status in (408, 429) or response.status >= 500:
                        raise UnreachableError(f"{url}: watch answered {response.status}")
                    _raise(_Answer(response.status, body, response.headers, url))
                self.serving = url
                async for line in response.content:
                    if not line.strip():
                        continue
                    try:
                        doc = json.loads(line)
                    except ValueError as exc:
                        raise UnreachableError(f"{url}: a watch line is not JSON: {exc}") from None
                    cursor = doc.get("cursor")
                    if isinstance(cursor, str):
                        self._resume_from = cursor
                    if "end" in doc:  # the node ended the stream: resume from its cursor
                        reason = str(doc["end"])
                        self.ends[reason] = self.ends.get(reason, 0) + 1
                        if isinstance(cursor, str):
                            yield _Progress(cursor)
                        return
                    if "key" not in doc and "resync" not in doc:  # a progress line
                        if isinstance(cursor, str):
                            yield _Progress(cursor)
                        continue
                    if "key" not in doc or self._fresh(doc):
                        yield doc
                    elif isinstance(cursor, str):
                        yield _Progress(cursor)  # a repeat: dropped, but the caller's position moves
                raise UnreachableError(f"{url}: the watch stream ended without a final line")
        except aiohttp.ClientSSLError as exc:
            raise TLSError(f"{url}: TLS handshake failed: {exc}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as exc:
            raise UnreachableError(f"{url}: {exc}") from None
