"""Python clients of a node's HTTP API (`dsm.api.http`): `Client` (blocking) and `AsyncClient` (asyncio), one
stack on httpx. Both speak the same calls:

    client = Client("http://127.0.0.1:7480")          # token="..." if the node requires one
    client = Client(["http://n1:7480", "http://n2:7480"])   # endpoints: fails over from one to the next
    ack = client.put("k", b"v")                       # -> WriteResult (.key, .timestamp, .context)
    got = client.get("k")                             # -> ReadResult (.value, .siblings, .context) or None
    client.put("k", b"v2", context=got.context)       # supersedes what that read returned
    client.put("session/1", b"v", ttl_ms=30_000)      # reads as absent 30 s after the write
    client.delete("k", context=got.context)
    client.list(prefix="user/", limit=100)            # -> Page(keys, next)
    client.members(); client.topology(); client.health()
    client.remove_member("n7")                        # an operator removes a member for good
    async for change in async_client.watch("user/"): ...   # AsyncClient: committed changes, as they come
    watch = async_client.watch("user/", since=cursor, endpoints=[...])  # resumes by itself; watch.cursor

What is sent and how answers are read lives once, without I/O, in `dsm.clientcore`; the two classes here only
move its requests over httpx (`httpx.Client`, `httpx.AsyncClient`, each with its pool of keep-alive
connections) and sleep between its rounds. Results are the library's own `dsm.types.ReadResult` and
`WriteResult`, as `EpidemicStorage` returns them (`Value` and `Ack`, their names in v0.1.0, still work).

**Endpoints, retries, failover** (`dsm.clientcore` has the rules): the client takes one URL or several. An
attempt that gets no answer, or an answer that the node cannot serve now (closing, at its connection cap, not
yet joined), moves on to the next endpoint; after a round over all of them the next starts after an
exponential backoff with full jitter (`retries` rounds after the first, `backoff_s` doubling up to
`backoff_max_s`). Reads, plain writes and plain deletes may be sent twice (a plain write sent again
supersedes the same versions with the same value: what one write at the retry's moment would do).
Conditional writes (`if_absent`, `if_match`) and `consistency="linearizable"` writes are never sent twice:
they move on only when nothing was sent, and a connection that breaks once the request may have gone raises
`AnswerLostError` (an `OutcomeUnknownError` and an `UnreachableError`): read the key linearizably before
retrying. `extra_attempts` counts the attempts made after a failed one. Proxies from the environment are not
used.

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

import builtins
import contextlib
import json
import random
import ssl
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Generator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import httpx

from dsm.clientcore import (
    CONTEXT_HEADER,
    EXPIRES_HEADER,
    TIMESTAMP_HEADER,
    WRITER_HEADER,
    Ack,
    Answer,
    AnswerLostError,
    Call,
    ClientError,
    ConditionFailedError,
    ConsistencyUnmetError,
    Failure,
    NotDSMError,
    Outcome,
    OutcomeUnknownError,
    Page,
    Random,
    ReadResult,
    RetryPolicy,
    Send,
    Sibling,
    Step,
    TLSError,
    UnreachableError,
    Value,
    Wait,
    WriteResult,
    delete_call,
    endpoint_url,
    exchange,
    get_call,
    health_call,
    list_call,
    members_call,
    put_call,
    query,
    raise_error,
    remove_member_call,
    topology_call,
)

if TYPE_CHECKING:
    import asyncio

__all__ = [
    "CONTEXT_HEADER",
    "EXPIRES_HEADER",
    "TIMESTAMP_HEADER",
    "WRITER_HEADER",
    "Ack",
    "AnswerLostError",
    "AsyncClient",
    "Client",
    "ClientError",
    "ConditionFailedError",
    "ConsistencyUnmetError",
    "NotDSMError",
    "OutcomeUnknownError",
    "Page",
    "ReadResult",
    "RetryPolicy",
    "Sibling",
    "TLSError",
    "UnreachableError",
    "Value",
    "WatchStream",
    "WriteResult",
    "client_ssl_context",
]

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:7480"


def client_ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """The context the clients use for https:// URLs: TLS 1.2+, the node's certificate verified against
    `ca_file` (a PEM CA bundle; empty: the system's CAs) and the URL's host name."""
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _ssl_cause(exc: BaseException) -> ssl.SSLError | None:
    """The `ssl.SSLError` under an httpx error, if any (httpx wraps httpcore's, which wraps the socket's)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ssl.SSLError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _failure(where: str, exc: httpx.RequestError) -> Failure:
    """What an httpx error says about an attempt: was the request possibly sent, was it TLS's handshake."""
    connecting = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
    cause = _ssl_cause(exc) if connecting else None
    if cause is not None:
        return Failure(where, str(cause), sent=False, tls=True)
    return Failure(where, str(exc) or type(exc).__name__, sent=not connecting)


class _Setup:
    """What both clients hold: the endpoints, the headers, TLS, the timeout and the retry policy, and which
    endpoint the next call starts at (the one that answered last)."""

    def __init__(
        self,
        url: str | Sequence[str],
        token: str,
        timeout: float,
        ca_file: str,
        ssl_context: ssl.SSLContext | None,
        retries: int,
        backoff_s: float,
        backoff_max_s: float,
        rng: random.Random | None,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls:
            raise ValueError("a client needs at least one endpoint URL")
        endpoints: list[str] = []
        for each in urls:
            checked = endpoint_url(each)
            if checked not in endpoints:
                endpoints.append(checked)
        #: The endpoints' base URLs, in the order they are tried.
        self.endpoints: tuple[str, ...] = tuple(endpoints)
        self.policy = RetryPolicy(retries, backoff_s, backoff_max_s)
        #: Attempts made after a failed one (another endpoint, or another round), over the client's life.
        self.extra_attempts = 0
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        https = any(e.startswith("https:") for e in endpoints)
        # Without an https endpoint no TLS is ever made (redirects are not followed): a context that trusts
        # nothing spares loading the system's CAs (about 70 ms of CPU, a large part of `dsm get`).
        self._verify = (
            (ssl_context or client_ssl_context(ca_file)) if https else ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        )
        self._timeout = httpx.Timeout(timeout)
        self._rng = rng or random.Random()
        self._current = 0

    @property
    def url(self) -> str:
        """The endpoint the next call is sent to first."""
        return self.endpoints[self._current]

    def _steps(self, call: Call[T]) -> tuple[Generator[Step, Outcome, T], list[int]]:
        """The steps of one call, from the current endpoint, and its count of attempts (for `_sending`)."""
        return exchange(call, len(self.endpoints), self._current, self.policy, self._rng), [0]

    def _sending(self, step: Send, sent: list[int]) -> str:
        """Bookkeeping before an attempt: the endpoint's URL."""
        if sent[0]:
            self.extra_attempts += 1
        sent[0] += 1
        self._current = step.index
        return self.endpoints[step.index]

    @staticmethod
    def _answer(url: str, response: httpx.Response) -> Answer:
        return Answer(response.status_code, response.content, response.headers, url)


class Client(_Setup):
    """Blocking client over an `httpx.Client` (a pool of keep-alive connections).

    Args:
        url: an endpoint's URL (`http://host:port` or `https://...`), or several, tried in order.
        token: the node's API token (sent as `Authorization: Bearer`).
        timeout: seconds for connecting, and between two reads or writes of an answer.
        ca_file, ssl_context: TLS settings for https endpoints (see the module docstring).
        retries: rounds over the endpoints after the first (see the module docstring).
        backoff_s, backoff_max_s: the first pause between rounds (doubling) and the longest.
        rng: the randomness of the jitter (default: a new `random.Random`).

    Raises:
        ValueError: a URL is not an http(s) URL, or none is given.
    """

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        token: str = "",
        timeout: float = 10.0,
        *,
        ca_file: str = "",
        ssl_context: ssl.SSLContext | None = None,
        retries: int = 2,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(url, token, timeout, ca_file, ssl_context, retries, backoff_s, backoff_max_s, rng)
        self._client: httpx.Client | None = None

    def _http(self) -> httpx.Client:
        if self._client is None:
            self._client = httpx.Client(
                headers=self._headers, timeout=self._timeout, verify=self._verify, trust_env=False
            )
        return self._client

    def _run(self, call: Call[T]) -> T:
        steps, sent = self._steps(call)
        outcome: Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Wait):
                time.sleep(step.seconds)
                outcome = None
                continue
            url = self._sending(step, sent)
            try:
                response = self._http().request(call.method, url + call.path, content=call.body, headers=call.headers)
            except httpx.RequestError as exc:
                outcome = _failure(url, exc)
            else:
                outcome = self._answer(url, response)

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
    ) -> WriteResult:
        """Writes a value; `if_absent` / `if_match` (a read's context) make it conditional (linearizable;
        `ConditionFailedError` when the condition is false; never sent twice)."""
        return self._run(
            put_call(
                key, value, context=context, consistency=consistency, ttl_ms=ttl_ms, if_absent=if_absent,
                if_match=if_match,
            )
        )  # fmt: skip

    def get(self, key: str, *, consistency: str | None = None) -> ReadResult | None:
        """Reads a key: its `ReadResult`, or None when it holds none."""
        return self._run(get_call(key, consistency=consistency))

    def delete(
        self, key: str, *, context: str | None = None, consistency: str | None = None, if_match: str | None = None
    ) -> WriteResult:
        """Deletes a key (a tombstone superseding `context`); `if_match` makes it conditional."""
        return self._run(delete_call(key, context=context, consistency=consistency, if_match=if_match))

    def list(self, prefix: str = "", *, limit: int = 100, after: str = "") -> Page:
        """A page of the keys under `prefix`, after `after`."""
        return self._run(list_call(prefix, limit=limit, after=after))

    def members(self) -> builtins.list[dict[str, Any]]:
        return self._run(members_call())

    def remove_member(self, node_id: str) -> dict[str, Any]:
        """Removes a member for good (it stops counting for consistency levels; see docs/consistency.md)."""
        return self._run(remove_member_call(node_id))

    def topology(self) -> dict[str, Any]:
        return self._run(topology_call())

    def health(self) -> dict[str, Any]:
        return self._run(health_call())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_Setup):
    """asyncio client over an `httpx.AsyncClient` (a connection pool); safe for concurrent tasks. Takes the
    arguments of `Client`."""

    def __init__(
        self,
        url: str | Sequence[str] = DEFAULT_URL,
        token: str = "",
        timeout: float = 10.0,
        *,
        ca_file: str = "",
        ssl_context: ssl.SSLContext | None = None,
        retries: int = 2,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(url, token, timeout, ca_file, ssl_context, retries, backoff_s, backoff_max_s, rng)
        self._client: httpx.AsyncClient | None = None

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                headers=self._headers, timeout=self._timeout, verify=self._verify, trust_env=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=100),
            )  # fmt: skip
        return self._client

    async def _run(self, call: Call[T]) -> T:
        import asyncio  # here, not at the top: `dsm get` and the blocking client never load it

        steps, sent = self._steps(call)
        outcome: Outcome = None
        while True:
            try:
                step = steps.send(outcome)
            except StopIteration as done:
                result: T = done.value
                return result
            if isinstance(step, Wait):
                await asyncio.sleep(step.seconds)
                outcome = None
                continue
            url = self._sending(step, sent)
            try:
                response = await self._http().request(
                    call.method, url + call.path, content=call.body, headers=call.headers
                )
            except httpx.RequestError as exc:
                outcome = _failure(url, exc)
            else:
                outcome = self._answer(url, response)

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
    ) -> WriteResult:
        """As `Client.put`."""
        return await self._run(
            put_call(
                key, value, context=context, consistency=consistency, ttl_ms=ttl_ms, if_absent=if_absent,
                if_match=if_match,
            )
        )  # fmt: skip

    async def get(self, key: str, *, consistency: str | None = None) -> ReadResult | None:
        return await self._run(get_call(key, consistency=consistency))

    async def delete(
        self, key: str, *, context: str | None = None, consistency: str | None = None, if_match: str | None = None
    ) -> WriteResult:
        return await self._run(delete_call(key, context=context, consistency=consistency, if_match=if_match))

    async def list(self, prefix: str = "", *, limit: int = 100, after: str = "") -> Page:
        return await self._run(list_call(prefix, limit=limit, after=after))

    async def members(self) -> builtins.list[dict[str, Any]]:
        return await self._run(members_call())

    async def remove_member(self, node_id: str) -> dict[str, Any]:
        """Removes a member for good (it stops counting for consistency levels; see docs/consistency.md)."""
        return await self._run(remove_member_call(node_id))

    async def topology(self) -> dict[str, Any]:
        return await self._run(topology_call())

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
        first on the node that served it, then on the client's other endpoints and on `endpoints` (this
        client's current endpoint first). Exact repeats of a key's state (same writer, timestamp and
        deletion, which a resume may bring) are dropped. The returned `WatchStream`'s `cursor` is always
        where the caller stands.

        Args:
            since: a cursor to resume from.
            values: events carry the key's value.
            endpoints: more nodes' URLs to fail over to (same token and TLS settings).
            retry_s: how long without any node accepting the watch before `UnreachableError` (None: forever).
            idle_timeout_s: a stream silent this long is taken as broken (nodes send a progress line every
                15 s).

        Raises (while iterating):
            ClientError: a node refused the watch (a bad prefix or cursor).
            UnreachableError: no node accepted it for `retry_s`.
        """
        urls = [self.url]
        for each in [*self.endpoints, *(endpoint_url(u) for u in endpoints)]:
            if each not in urls:
                urls.append(each)
        return WatchStream(self._http, self._rng, prefix, since, bool(values), urls, retry_s, idle_timeout_s)

    async def health(self) -> dict[str, Any]:
        return await self._run(health_call())

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()


#: Most keys whose last delivered state a `WatchStream` remembers to drop exact repeats.
WATCH_SEEN_MAX = 100_000
#: Longest pause between two attempts of a `WatchStream` to resume, s.
WATCH_BACKOFF_MAX_S = 5.0
#: The pause before a watch resumes after its `failures`-th failure in a row: full jitter up to 50 ms, doubling
#: up to WATCH_BACKOFF_MAX_S (the calls' own rule, `RetryPolicy.pause_s`).
WATCH_BACKOFF = RetryPolicy(retries=0, backoff_s=0.05, backoff_max_s=WATCH_BACKOFF_MAX_S)
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
        http: Callable[[], httpx.AsyncClient],
        rng: Random,
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
        self._http = http  # the client's pool of connections (made on first use)
        self._rng = rng  # the client's random source, for the jitter of resumes
        self._retry_s = retry_s
        self._idle_timeout_s = idle_timeout_s
        self._resume_from = since  # the reader's position: where a new stream starts
        self._seen: OrderedDict[str, tuple[Any, ...]] = OrderedDict()
        import asyncio  # here, not at the top: `dsm get` and the blocking client never load it

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
        import asyncio  # here, not at the top: `dsm get` and the blocking client never load it

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
        import asyncio  # here, not at the top: `dsm get` and the blocking client never load it

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
        import asyncio  # here, not at the top: `dsm get` and the blocking client never load it

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
                await asyncio.sleep(WATCH_BACKOFF.pause_s(failures + 1, self._rng))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # handed to the caller: a refused watch, or no node for retry_s
            await self._queue.put(_Failure(exc))

    async def _stream(self, url: str) -> AsyncIterator[dict[str, Any] | _Progress]:
        """One stream from the node at `url`, until it breaks (`UnreachableError`) or the node ends it."""
        http = self._http()
        path = "/v1/watch" + query(prefix=self.prefix, since=self._resume_from, values=1 if self.values else None)
        # No total deadline: a stream lives as long as it is read; only a silence that long ends it.
        timeout = httpx.Timeout(10.0, read=self._idle_timeout_s)
        try:
            async with http.stream("GET", url + path, timeout=timeout) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    if response.status_code in (408, 429) or response.status_code >= 500:
                        raise UnreachableError(f"{url}: watch answered {response.status_code}")
                    raise_error(Answer(response.status_code, body, response.headers, url))
                self.serving = url
                async for line in response.aiter_lines():
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
        except httpx.RequestError as exc:
            failure = _failure(url, exc)
            if failure.tls:
                raise TLSError(f"{url}: TLS handshake failed: {failure.message}") from None
            raise UnreachableError(f"{url}: {failure.message}") from None
