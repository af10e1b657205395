"""The client's protocol, without I/O: what each call of `dsm.client.Client` and `AsyncClient` sends, how a
node's answer becomes the library's types (`dsm.types.ReadResult`, `WriteResult`) or errors, and when a
failed attempt is tried again and where.

How it works: a call is a `Call` (the request's method, path, body and headers, whether it may be sent
twice, and the function that decodes the answer). `exchange` drives one call over a list of endpoints as a
generator: it yields `Send(index)` (send the request to that endpoint, and send back an `Answer` or a
`Failure`) and `Wait(seconds)` (pause before the next round), and returns the decoded result or raises the
call's error. The two clients are thin transports around it (httpx's `Client` and `AsyncClient`), so the
protocol, the retry rules and the failover rules exist once.

The rules it keeps:
- **Failover.** An attempt that fails without an answer moves to the next endpoint at once, and so does an
  answer saying that the node cannot serve (503 `closed`, `too_many_connections`, or a level refused because
  the node has not joined its cluster yet). After every endpoint was tried, the next round starts after a
  backoff (exponential, with full jitter: `RetryPolicy`), up to `1 + retries` rounds. The endpoint that
  answered is where the next call starts.
- **What may be sent twice.** Reads, plain writes and plain deletes (`Call.resend`). A plain write sent again
  after its first copy was applied makes a new version that supersedes the same versions (its context) with
  the same value: the state is what one write taking effect at the retry's moment would make, a moment
  inside the call, so the caller cannot tell (a watcher sees two events; in `siblings` mode the two copies
  are siblings of one value until the next write with a read's context). Both copies are the caller's.
- **What is never sent twice**: conditional writes (`if_absent`, `if_match`) and `consistency=linearizable`
  writes (issue 19). The first copy may have been applied and the second would then fail its condition (a
  412 after success) or apply twice. Such a call moves to another endpoint only when nothing was sent (the
  connection could not be made) or the node refused it before doing anything (`too_many_connections`, not
  joined: "nothing was written"); when the connection breaks after the request may have been sent, the
  call raises `AnswerLostError`, an `OutcomeUnknownError` (and an `UnreachableError`): read the key
  linearizably before retrying.
- A TLS handshake that fails is a configuration error, not a transient one: `TLSError` at once.

No I/O, clock or randomness here: the transports send and sleep, and `RetryPolicy.backoff_s` takes the
caller's `random.Random`-like source.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, NoReturn, Protocol, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from dsm.errors import DSMError, InvalidKeyError
from dsm.types import ReadResult, Sibling, WriteResult

__all__ = [
    "CONTEXT_HEADER",
    "EXPIRES_HEADER",
    "TIMESTAMP_HEADER",
    "WRITER_HEADER",
    "Ack",
    "Answer",
    "AnswerLostError",
    "Call",
    "ClientError",
    "ConditionFailedError",
    "ConsistencyUnmetError",
    "Failure",
    "NotDSMError",
    "OutcomeUnknownError",
    "Page",
    "ReadResult",
    "RetryPolicy",
    "Send",
    "Sibling",
    "TLSError",
    "UnreachableError",
    "Value",
    "Wait",
    "WriteResult",
    "exchange",
]

CONTEXT_HEADER = "X-DSM-Context"
TIMESTAMP_HEADER = "X-DSM-Timestamp"
WRITER_HEADER = "X-DSM-Writer"
EXPIRES_HEADER = "X-DSM-Expires"

#: Longest plain-text answer of a server that is not a DSM node's API quoted in `NotDSMError`.
NOTE_MAX_BYTES = 300

T = TypeVar("T")


# -- errors ---------------------------------------------------------------------------------------------------


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
        #: "not_joined": the node refused because it has not joined its cluster (nothing done); "": too few
        #: members answered in time.
        self.cause = str(error.get("cause", ""))


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


class UnreachableError(DSMError):
    """The node could not be reached (connection refused, timed out, reset)."""


class TLSError(UnreachableError):
    """The TLS handshake with the node failed: its certificate did not verify against the CA (or its host
    name did not match), or it does not speak TLS."""


class AnswerLostError(OutcomeUnknownError, UnreachableError):
    """The connection broke after a write that is never sent twice (a conditional or linearizable one) may
    have been sent: it may or may not have taken effect. Both an `OutcomeUnknownError` (status 0, code
    `outcome_unknown`) and an `UnreachableError`."""

    def __init__(self, where: str, why: str) -> None:
        message = (
            f"{where}: the connection broke before the answer ({why}); the write may or may not have taken "
            "effect and is not sent again: read the key linearizably before retrying"
        )
        super().__init__(0, message, {"level": "linearizable", "operation": "write"})
        self.code = "outcome_unknown"
        self.args = (message,)


# -- results --------------------------------------------------------------------------------------------------


#: The names the results had in v0.1.0's client, kept: they are the library's own types now.
Value = ReadResult
Ack = WriteResult


@dataclass(frozen=True)
class Page:
    keys: list[str]
    next: str | None


# -- requests -------------------------------------------------------------------------------------------------


def endpoint_url(url: str) -> str:
    """An endpoint's base URL, checked (`ValueError` when it is not an http(s) URL) and without its final /."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {url!r}")
    return url.rstrip("/")


def key_path(key: str) -> str:
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


def query(**params: Any) -> str:
    """`?a=1&b=2` of the parameters given (None and "" left out), or ""."""
    given = {k: v for k, v in params.items() if v not in (None, "")}
    return "?" + urlencode(given) if given else ""


def _conditions(if_absent: bool, if_match: str | None) -> dict[str, str]:
    """The headers of a conditional write (`If-None-Match: *`, `If-Match: <context>`)."""
    if if_absent and if_match is not None:
        raise ValueError("if_absent and if_match cannot be combined")
    if if_absent:
        return {"If-None-Match": "*"}
    return {"If-Match": if_match} if if_match is not None else {}


@dataclass(frozen=True, slots=True)
class Answer:
    """A node's answer to one request, and the endpoint it came from (for the messages of errors)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    where: str


@dataclass(frozen=True, slots=True)
class Failure:
    """An attempt that got no answer. `sent`: the request may have reached the node (the connection was
    made); `tls`: the TLS handshake failed."""

    where: str
    message: str
    sent: bool
    tls: bool = False


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request and how its answer is read. `resend`: it may be sent twice (see the module docstring)."""

    method: str
    path: str
    decode: Callable[[Answer], T]
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    resend: bool = True


def put_call(
    key: str,
    value: bytes,
    *,
    context: str | None,
    consistency: str | None,
    ttl_ms: int | None,
    if_absent: bool,
    if_match: str | None,
) -> Call[WriteResult]:
    headers = _conditions(if_absent, if_match)
    if context:
        headers[CONTEXT_HEADER] = context
    path = key_path(key) + query(consistency=consistency, ttl_ms=ttl_ms)
    once = if_absent or if_match is not None or consistency == "linearizable"
    return Call("PUT", path, _ack, bytes(value), headers, resend=not once)


def get_call(key: str, *, consistency: str | None) -> Call[ReadResult | None]:
    path = key_path(key)
    return Call("GET", path + query(consistency=consistency), lambda answer: _value(key, answer))


def delete_call(key: str, *, context: str | None, consistency: str | None, if_match: str | None) -> Call[WriteResult]:
    headers = _conditions(False, if_match)
    if context:
        headers[CONTEXT_HEADER] = context
    once = if_match is not None or consistency == "linearizable"
    return Call("DELETE", key_path(key) + query(consistency=consistency), _ack, None, headers, resend=not once)


def list_call(prefix: str, *, limit: int, after: str) -> Call[Page]:
    return Call("GET", "/v1/kv" + query(prefix=prefix, limit=limit, after=after), _page)


def members_call() -> Call[list[dict[str, Any]]]:
    return Call("GET", "/v1/members", lambda answer: list(_json(answer, "members")["members"]))


def remove_member_call(node_id: str) -> Call[dict[str, Any]]:
    # Not sent twice: the second copy of a removal that was applied would answer that no such member exists.
    return Call("DELETE", "/v1/members/" + quote(node_id, safe=""), _json, resend=False)


def topology_call() -> Call[dict[str, Any]]:
    return Call("GET", "/v1/topology", _json)


def health_call() -> Call[dict[str, Any]]:
    return Call("GET", "/health", lambda answer: _json(answer, ok=(200, 503)))


# -- answers --------------------------------------------------------------------------------------------------


def error_of(body: bytes) -> dict[str, Any] | None:
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


def foreign(answer: Answer, what: str) -> NotDSMError:
    """The error of an answer no DSM node gives: the server at that address is another one."""
    kind = answer.headers.get("Content-Type") or answer.headers.get("content-type") or "no Content-Type"
    why = f"it answered HTTP {answer.status} ({kind}) {what}"
    if kind.startswith("text/plain") and len(answer.body) <= NOTE_MAX_BYTES:
        # A short plain-text note is meant for a person (a DSM peer port says where the HTTP API is).
        note = answer.body.decode("utf-8", "replace").strip().splitlines()
        if note:
            why += f', saying "{note[0]}"'
    return NotDSMError(answer.where, answer.status, why)


def raise_error(answer: Answer) -> NoReturn:
    """Raises the error a node's error answer stands for."""
    error = error_of(answer.body)
    if error is None:
        raise foreign(answer, "without the JSON error body every DSM node sends")
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


def _value(key: str, answer: Answer) -> ReadResult | None:
    status, body, headers = answer.status, answer.body, answer.headers
    if status == 404:
        # Absent only when a DSM node says so: another server's 404 (any path is one there) is not an answer.
        error = error_of(body)
        if error is not None and error["code"] == "not_found":
            return None
        raise_error(answer)
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
            raise foreign(answer, "that is not DSM's list of siblings") from None
        if not siblings:
            raise foreign(answer, "with an empty list of siblings")
        return ReadResult.received(key, siblings, context or str(doc.get("context", "")))
    if status != 200:
        raise_error(answer)
    if context is None:  # a DSM node's read always carries its context
        raise foreign(answer, f"without the {CONTEXT_HEADER} header of a DSM read")
    try:
        expires_ms = int(headers.get(EXPIRES_HEADER, "0"))
        sibling = Sibling(body, int(headers.get(TIMESTAMP_HEADER, "0")), headers.get(WRITER_HEADER, ""), expires_ms)
    except ValueError:
        raise foreign(answer, "whose X-DSM-* headers are not numbers") from None
    return ReadResult.received(key, (sibling,), context)


def _ack(answer: Answer) -> WriteResult:
    doc = _json(answer, "key", "timestamp")
    try:
        return WriteResult.received(str(doc["key"]), int(doc["timestamp"]), answer.headers.get(CONTEXT_HEADER, ""))
    except (ValueError, TypeError):
        raise foreign(answer, "that is not DSM's acknowledgement of a write") from None


def _page(answer: Answer) -> Page:
    doc = _json(answer, "keys", "next")
    return Page(doc["keys"], doc["next"])


def _json(answer: Answer, *fields: str, ok: tuple[int, ...] = (200,)) -> dict[str, Any]:
    """The JSON object of an answer whose status is one of `ok`, holding `fields`; else the error raised."""
    if answer.status not in ok:
        raise_error(answer)
    try:
        doc = json.loads(answer.body)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or any(name not in doc for name in fields):
        raise foreign(answer, "that is not the JSON a DSM node answers there")
    return doc


def unavailable(answer: Answer, resend: bool) -> bool:
    """Whether an answer says that this node cannot serve the request now, and another endpoint may (for a
    call never sent twice: only when the node also says it did nothing)."""
    if answer.status != 503:
        return False
    error = error_of(answer.body)
    if error is None:
        return False
    code, message = error["code"], str(error["message"])
    if code == "too_many_connections":
        return True  # refused before the request was read
    if code == "consistency_unmet" and (error.get("cause") == "not_joined" or "not joined" in message):
        # The node refuses every level until it joined (a conditional one: "nothing was written"); a v0.1.0
        # node says so in its message only.
        return True
    return resend and code == "closed"


# -- retries and failover -------------------------------------------------------------------------------------


class Random(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how soon a call is tried again.

    Attributes:
        retries: rounds over every endpoint after the first (0: each endpoint once).
        backoff_s: the pause before the second round is up to this (doubling each round after).
        backoff_max_s: the longest pause between two rounds.
    """

    retries: int = 2
    backoff_s: float = 0.1
    backoff_max_s: float = 2.0

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff_s < 0 or self.backoff_max_s < self.backoff_s:
            raise ValueError(f"a retry policy needs retries >= 0 and 0 <= backoff_s <= backoff_max_s: {self}")

    def pause_s(self, round_: int, rng: Random) -> float:
        """The pause before round `round_` (1: the second): full jitter over an exponential bound, so that
        clients that failed together do not come back together."""
        return rng.uniform(0.0, min(self.backoff_max_s, self.backoff_s * 2 ** min(round_ - 1, 30)))


@dataclass(frozen=True, slots=True)
class Send:
    """Send the call's request to endpoint `index`; send back its `Answer` or `Failure`."""

    index: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Pause this long before the next attempt."""

    seconds: float


Step = Send | Wait
Outcome = Answer | Failure | None


def exchange(
    call: Call[T], endpoints: int, start: int, policy: RetryPolicy, rng: Random
) -> Generator[Step, Outcome, T]:
    """Drives one call (see the module docstring): yields `Send` and `Wait` steps, returns the decoded
    result, or raises its error (`ClientError`s, `UnreachableError`, `TLSError`, `AnswerLostError`)."""
    assert endpoints > 0
    last: Answer | Failure | None = None
    for round_ in range(1 + policy.retries):
        if round_:
            yield Wait(policy.pause_s(round_, rng))
        for offset in range(endpoints):
            outcome = yield Send((start + offset) % endpoints)
            if isinstance(outcome, Answer):
                if not unavailable(outcome, call.resend):
                    return call.decode(outcome)
            elif isinstance(outcome, Failure):
                if outcome.tls:
                    raise TLSError(f"{outcome.where}: TLS handshake failed: {outcome.message}")
                if outcome.sent and not call.resend:
                    raise AnswerLostError(outcome.where, outcome.message)
            else:
                raise AssertionError("a Send step takes an Answer or a Failure")
            last = outcome
    if isinstance(last, Answer):
        return call.decode(last)  # the node's error (its 503)
    assert last is not None
    raise UnreachableError(f"{last.where}: {last.message}")
