"""Errors of the HTTP API: how every failure becomes an HTTP answer, and the JSON body it carries.

Every error answer is `{"error": {"code": "...", "message": "..."}}`, the code in snake_case (an error
class's name without `Error`: `InvalidKeyError` -> `invalid_key`), and every 503 carries `Retry-After`.
`error_response` is the one mapping from an exception to its answer:

    ApiError                   its own status and code (raised by the routes for bad input: 400, 404, 408, 413)
    InvalidInputError          400
    FeatureUnavailableError    409 feature_unavailable, with feature and members (those that block it)
    ClosedError                503 closed
    PreconditionFailedError    412 precondition_failed, with the key's current context (also as X-DSM-Context)
                               and whether it holds a value (`exists`)
    OutcomeUnknownError        503 outcome_unknown (a conditional write that may or may not have happened)
    ConsistencyError           503 consistency_unmet, with level, operation, acknowledged, required, shortfall, cause
    StorageError               503 (the store failed: the client may retry)
    any other DSMError         400
    RequestPayloadError        400 bad_body (a body aiohttp cannot decode: bad chunking, gzip, ...)
    HTTPRequestEntityTooLarge  413 (a chunked body that grew past the limit)
    another HTTPException      its status, when an error (aiohttp's own 4xx/5xx, as JSON)

Nothing a client sends ends in a 500: what is not mapped here is a bug. A 408 or 413 closes the connection
(the rest of the body may still be on its way).

Requests aiohttp cannot parse never reach a handler: `dsm.api.connections` answers, counts and (rarely)
logs them, with the body built here (`error_body`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from http import HTTPStatus

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from dsm.api.openapi import CONTEXT_HEADER
from dsm.errors import (
    ClosedError,
    ConsistencyError,
    DSMError,
    FeatureUnavailableError,
    InvalidInputError,
    OutcomeUnknownError,
    PreconditionFailedError,
    StorageError,
)

__all__ = [
    "RETRY_AFTER_S",
    "ApiError",
    "error_body",
    "error_code",
    "error_response",
    "json_error",
    "one_line",
    "reason_code",
    "status_phrase",
]

#: Seconds a client is told to wait before retrying, on every 503.
RETRY_AFTER_S = 1


class ApiError(Exception):
    """A request the API refuses itself (bad input the store never sees): `status` and `code` are the
    answer's; the message is its text."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code


def error_body(code: str, message: str) -> bytes:
    """The JSON body of an error answer, as bytes (for an answer written without aiohttp's help)."""
    return json.dumps({"error": {"code": code, "message": message}}).encode()


def json_error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """An error answer: the JSON body, `headers`, and `Retry-After` on a 503."""
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def error_code(exc: BaseException) -> str:
    """The snake_case code of an error class: `InvalidKeyError` -> `invalid_key`."""
    name = type(exc).__name__.removesuffix("Error") or type(exc).__name__
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def one_line(exc: BaseException) -> str:
    """aiohttp's HTTP errors print as '400, message:\n  <what>': their text on one line."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return text.removeprefix("400, message: ").removeprefix("400, message:") or type(exc).__name__


def status_phrase(status: int) -> str:
    """The reason phrase of an HTTP status (`Bad Request`); "error" for a status HTTP does not define."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "error"


def reason_code(reason: str) -> str:
    """An HTTP reason phrase as a code: `Method Not Allowed` -> `method_not_allowed`."""
    return re.sub(r"[^a-z0-9]+", "_", reason.lower()).strip("_") or "error"


def error_response(exc: BaseException) -> web.Response | None:
    """The answer to a request whose handler raised `exc` (see the module docstring); None when `exc` is not
    an error to answer (an HTTPException below 400, or a bug), to be raised again."""
    if isinstance(exc, ApiError):
        response = json_error(exc.status, exc.code, str(exc))
        if exc.status in (408, 413):
            response.force_close()  # the rest of the body may still be on its way
        return response
    if isinstance(exc, DSMError):
        return _store_error(exc)
    if isinstance(exc, RequestPayloadError):  # a body that cannot be decoded (bad chunking, gzip, ...)
        return json_error(400, "bad_body", one_line(exc))
    if isinstance(exc, web.HTTPRequestEntityTooLarge):  # a chunked body that grew past the limit
        response = json_error(413, "too_large", exc.text or "request body too large")
        response.force_close()
        return response
    if isinstance(exc, web.HTTPException) and exc.status >= 400:
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return json_error(exc.status, reason_code(exc.reason), exc.text or exc.reason, headers)
    return None


def _store_error(exc: DSMError) -> web.Response:
    if isinstance(exc, InvalidInputError):
        return json_error(400, error_code(exc), str(exc))
    if isinstance(exc, ClosedError):
        return json_error(503, "closed", str(exc))
    if isinstance(exc, FeatureUnavailableError):
        error = {"code": "feature_unavailable", "message": str(exc), "feature": exc.feature, "members": exc.members}
        return web.json_response({"error": error}, status=409)
    if isinstance(exc, PreconditionFailedError):
        failed = {"code": "precondition_failed", "message": str(exc), "context": exc.context, "exists": exc.exists}
        headers = {CONTEXT_HEADER: exc.context} if exc.context else None
        return web.json_response({"error": failed}, status=412, headers=headers)
    if isinstance(exc, ConsistencyError):
        body = {
            "error": {
                "code": "outcome_unknown" if isinstance(exc, OutcomeUnknownError) else "consistency_unmet",
                "message": str(exc),
                "level": exc.level,
                "operation": exc.operation,
                "acknowledged": exc.received,
                "required": exc.required,
                "shortfall": {name: list(pair) for name, pair in exc.shortfall.items()},
                "cause": exc.cause,
            }
        }
        return web.json_response(body, status=503, headers={"Retry-After": str(RETRY_AFTER_S)})
    if isinstance(exc, StorageError):
        return json_error(503, error_code(exc), str(exc))
    return json_error(400, error_code(exc), str(exc))
