"""What a request asks for, strictly decoded: the key (or member id) in its path, its query parameters, the
consistency level and list limits, and whether its declared body is too large to wait for.

Decoding works on the raw (still percent-encoded) path and query, as UTF-8: a `%` not followed by two hex
digits, or bytes that are not UTF-8 once decoded, are a 400 (`bad_encoding`), never kept literally. In a
query `+` is a space. A parameter the path does not take is a 400 (`unknown_parameter`: a typo such as
`?consistancy=quorum` would otherwise pass for a request at the default level), and so is one given twice
(`duplicate_parameter`: it has no single meaning). Every refusal raises `ApiError`, which
`dsm.api.errors.error_response` answers.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import unquote_to_bytes

from aiohttp import web

from dsm.api.errors import ApiError, json_error
from dsm.core.consistency import LEVEL_NAMES
from dsm.node.conditional import LINEARIZABLE

#: The query parameters each route takes.
KEY_PARAMS = frozenset({"consistency"})
#: A `PUT` (and, to refuse it with a clear message, a `DELETE`) also takes `ttl_ms`.
WRITE_PARAMS = KEY_PARAMS | {"ttl_ms"}
LIST_PARAMS = frozenset({"prefix", "after", "limit"})
WATCH_PARAMS = frozenset({"prefix", "limit", "since", "values"})

_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")


def decode(raw: str, what: str, plus_is_space: bool = False) -> str:
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


def tail(request: web.Request) -> str:
    """The raw (still percent-encoded) path after its first two segments: `/v1/kv/<this>`."""
    parts = request.rel_url.raw_path.split("/", 3)
    return parts[3] if len(parts) == 4 else ""


def params(request: web.Request, known: frozenset[str] = frozenset()) -> dict[str, str]:
    """The query's parameters, strictly decoded.

    Raises:
        ApiError: (400 bad_encoding) see `decode`; (400 unknown_parameter) a name not in `known`;
            (400 duplicate_parameter) a name given twice.
    """
    out: dict[str, str] = {}
    for part in request.rel_url.raw_query_string.split("&"):
        if part:
            raw_name, _, raw_value = part.partition("=")
            name = decode(raw_name, "a query parameter name", plus_is_space=True)
            if name not in known:
                allowed = ", ".join(sorted(known)) or "none"
                raise ApiError(
                    400, "unknown_parameter", f"unknown query parameter {name!r}; this path takes: {allowed}"
                )
            if name in out:
                raise ApiError(400, "duplicate_parameter", f"query parameter {name!r} given more than once")
            out[name] = decode(raw_value, f"query parameter {name!r}", plus_is_space=True)
    return out


def level(request: web.Request, known: frozenset[str] = KEY_PARAMS) -> str | None:
    """The consistency level a key's request asks for; None: the node's default for its region (`known`:
    the query parameters the route takes).

    Raises:
        ApiError: (400 bad_consistency) an unknown level; see `params`.
    """
    query = request.rel_url.raw_query_string
    if not query:
        return None
    if query == "consistency=local":
        return "local"  # the common request, without parsing a query
    name = params(request, known).get("consistency")
    if name is None:
        return None
    if name not in LEVEL_NAMES and name != LINEARIZABLE:
        names = ", ".join((*LEVEL_NAMES, LINEARIZABLE))
        raise ApiError(400, "bad_consistency", f"unknown consistency level {name!r}; one of {names}")
    return name


def conditions(request: web.Request, delete: bool = False) -> tuple[bool, str | None]:
    """A conditional write's condition: (`If-None-Match: *`, the `If-Match` context token, unquoted).

    Raises:
        ApiError: (400 bad_precondition) another `If-None-Match` than `*`, an `If-Match` of `*` or a list,
            both headers, or `If-None-Match` on a delete.
    """
    headers = request.headers
    none_match, match = headers.get("If-None-Match"), headers.get("If-Match")
    if none_match is None and match is None:
        return False, None
    if none_match is not None and match is not None:
        raise ApiError(400, "bad_precondition", "If-None-Match and If-Match cannot be combined")
    if none_match is not None:
        if delete:
            raise ApiError(400, "bad_precondition", "a delete takes If-Match, not If-None-Match")
        if none_match.strip() != "*":
            raise ApiError(
                400, "bad_precondition", "If-None-Match takes only '*' (write only if the key holds no value)"
            )
        return True, None
    assert match is not None
    token = match.strip()
    if token.startswith("W/"):
        token = token[2:]
    if len(token) >= 2 and token[0] == token[-1] == '"':
        token = token[1:-1]
    if not token or token == "*" or "," in token:
        raise ApiError(400, "bad_precondition", "If-Match takes the X-DSM-Context of one read")
    return False, token


def ttl(request: web.Request) -> int | None:
    """The `ttl_ms` parameter of a write (None: absent); its range is the store's to check (`max_ttl_ms`).

    Raises:
        ApiError: (400 invalid_input) not a decimal integer; see `params`.
    """
    if not request.rel_url.raw_query_string:
        return None
    raw = params(request, WRITE_PARAMS).get("ttl_ms")
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise ApiError(400, "invalid_input", f"ttl_ms must be a number of milliseconds, not {raw[:40]!r}")
    return int(raw)


def flag(given: Mapping[str, str], name: str) -> bool:
    """A yes/no parameter: `1` or `true` for yes, `0` or `false` (or absent) for no.

    Raises:
        ApiError: (400 invalid_input) any other value.
    """
    raw = given.get(name, "0")
    if raw not in ("0", "1", "false", "true"):
        raise ApiError(400, "invalid_input", f"{name} must be 1 or 0 (true or false), not {raw[:40]!r}")
    return raw in ("1", "true")


def limit(given: Mapping[str, str], default: int, most: int) -> int:
    """The `limit` parameter, from 1 to `most` (`default` when absent).

    Raises:
        ApiError: (400 bad_limit) not an integer in that range.
    """
    raw = given.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit()):
        raise ApiError(400, "bad_limit", f"limit must be an integer from 1 to {most}")
    value = int(raw)
    if not 1 <= value <= most:
        raise ApiError(400, "bad_limit", f"limit must be from 1 to {most}")
    return value


def too_large(request: web.Request, body_max: int) -> web.Response | None:
    """A 413 (closing the connection) for a request whose declared body is larger than `body_max`, else None:
    refused on its `Content-Length`, before a byte of the body is read or waited for."""
    declared = request.content_length
    if declared is None or declared <= body_max:
        return None
    response = json_error(413, "too_large", f"a body of {declared} bytes is larger than max_value_bytes ({body_max})")
    response.force_close()  # the body is not read: the connection cannot carry another request
    return response
