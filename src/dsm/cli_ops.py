"""Operations of the `dsm` command that span several requests or nodes, beyond one client call:

- `delete_prefix`: `dsm delete --prefix P`, page after page of `DELETE /v1/kv?prefix=P&after=K` (each page
  bounded by the node, which answers how many it deleted, whether more remain and where to continue), over
  the endpoints in order (a node that cannot be reached is passed over for the next; a page deleted twice
  deletes nothing more, so continuing elsewhere is safe);
- `member_rows`: `dsm status`'s row per member: its state and tags from `/v1/members`, and its own numbers
  (`GET /v1/store`: key count, store size; `/metrics`: gossip period, replication delay) asked of the member
  itself at the HTTP address it advertises in its metadata (`http`), all at once, each within
  `MEMBER_TIMEOUT_S`. The bearer token goes only to an address on the member's own peer host, as the
  node's `/v1/overlay` does, so a member's metadata cannot send it elsewhere.

Both use httpx, the client's HTTP stack (`dsm.client`): the prefix delete a blocking `httpx.Client`, the
status an `httpx.AsyncClient` on one event loop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from typing import Any

import httpx

from dsm.client import ClientError, UnreachableError, client_ssl_context
from dsm.urls import url_on_host

#: Seconds each member has to answer `dsm status`'s two requests.
MEMBER_TIMEOUT_S = 3.0
#: Members asked at once, and most bytes read of each answer.
MEMBER_CONCURRENCY = 16
MEMBER_BODY_MAX = 1 << 20
#: Seconds a page of a prefix delete may take (the node deletes at most one page per request).
PAGE_TIMEOUT_S = 60.0


def _options(token: str, ca_file: str | None, timeout_s: float) -> dict[str, Any]:
    """The settings of an httpx client of these commands: the token, the CA, the timeout."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"headers": headers, "verify": client_ssl_context(ca_file or ""), "timeout": timeout_s}


def _error(status: int, body: bytes, where: str) -> ClientError:
    try:
        error = json.loads(body)["error"]
        return ClientError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return ClientError(status, "not_dsm", f"the server at {where} is not a DSM node's HTTP API")


def delete_prefix(urls: Sequence[str], token: str, ca_file: str | None, prefix: str, consistency: str | None) -> int:
    """Deletes every key under `prefix` that holds a value, a page per request, and returns how many.

    Raises:
        ClientError: a node refused (its error); UnreachableError: no endpoint could be reached.
    """

    deleted, after = 0, ""
    order = list(urls)
    with httpx.Client(**_options(token, ca_file, PAGE_TIMEOUT_S)) as http:
        while True:
            params = {"prefix": prefix, **({"after": after} if after else {})}
            if consistency:
                params["consistency"] = consistency
            failures: list[str] = []
            for url in list(order):
                try:
                    response = http.delete(url.rstrip("/") + "/v1/kv", params=params)
                except httpx.TransportError as exc:
                    failures.append(f"{url}: {exc or type(exc).__name__}")
                    order.remove(url)
                    order.append(url)  # tried last from now on
                    continue
                if response.status_code != 200:
                    raise _error(response.status_code, response.content, url)
                page = response.json()
                break
            else:
                raise UnreachableError("no endpoint could be reached: " + "; ".join(failures))
            deleted += int(page["deleted"])
            if not page["more"]:
                return deleted
            after = str(page["next"])


def member_rows(members: Sequence[Mapping[str, Any]], token: str, ca_file: str | None) -> list[dict[str, Any]]:
    """`dsm status`'s rows: per member id, addr, region, state, incarnation, heard_ms_ago, tags (its
    metadata), http, and what the member says of itself: keys, store_bytes, gossip_interval_s,
    replication_delay_p50_s (None where it did not answer, or has no HTTP address)."""
    rows: list[dict[str, Any]] = []
    for m in members:
        metadata = dict(m.get("metadata") or {})
        rows.append(
            {
                "id": m["id"],
                "addr": m["addr"],
                "region": m["region"],
                "state": m["state"],
                "incarnation": m["incarnation"],
                "heard_ms_ago": m.get("heard_ms_ago"),
                "tags": metadata,
                "http": metadata.get("http"),
                "keys": None,
                "store_bytes": None,
                "gossip_interval_s": None,
                "replication_delay_p50_s": None,
            }
        )

    async def run() -> None:
        gate = asyncio.Semaphore(MEMBER_CONCURRENCY)
        async with httpx.AsyncClient(**_options(token, ca_file, MEMBER_TIMEOUT_S)) as http:
            await asyncio.gather(*(_fill(http, gate, row) for row in rows if row["state"] == "alive"))

    asyncio.run(run())
    return rows


async def _fill(http: httpx.AsyncClient, gate: asyncio.Semaphore, row: dict[str, Any]) -> None:
    url = row["http"]
    if not isinstance(url, str) or not url_on_host(url, row["addr"]):
        return
    base = url.rstrip("/")
    try:
        async with gate:
            answer = await http.get(base + "/v1/store")
            store = answer.json() if answer.status_code == 200 and len(answer.content) <= MEMBER_BODY_MAX else {}
            answer = await http.get(base + "/metrics")
            metrics = answer.text if answer.status_code == 200 and len(answer.content) <= MEMBER_BODY_MAX else ""
    except (httpx.HTTPError, ValueError):
        return
    if isinstance(store, dict):
        row["keys"] = store.get("keys")
        row["store_bytes"] = store.get("store_bytes")
    samples = parse_metrics(metrics)
    row["gossip_interval_s"] = samples.get(("dsm_gossip_interval_seconds", ""))
    row["replication_delay_p50_s"] = histogram_median(samples, "dsm_replication_delay_seconds")


def parse_metrics(text: str) -> dict[tuple[str, str], float]:
    """The samples of a Prometheus text exposition: (name, labels as written) -> value."""
    samples: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, brace, labels = head.partition("{")
        try:
            samples[(name, "{" + labels if brace else "")] = float(value)
        except ValueError:
            continue
    return samples


def histogram_median(samples: Mapping[tuple[str, str], float], name: str) -> float | None:
    """The upper bound of the bucket that holds a histogram's median (None without readings)."""
    buckets = sorted(
        (float(labels.split('le="', 1)[1].split('"', 1)[0]), count)
        for (sample, labels), count in samples.items()
        if sample == name + "_bucket" and 'le="' in labels
    )
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return None
    for bound, cumulative in buckets:
        if cumulative >= total / 2:
            # Beyond the largest bound: the largest bound is what can be said (JSON has no infinity).
            return bound if bound != float("inf") else max((b for b, _ in buckets if b != float("inf")), default=None)
    return None
