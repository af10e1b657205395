"""A lock holder in its own process, for tests that pause it (SIGSTOP): takes `lock/<name>` through the node
at URL with a TTL, prints `token <n>`, waits for a line on standard input (it may be paused meanwhile), then
writes VALUE to the fenced RESOURCE with its token and prints `ok` or `fenced <stored token>`.

    python lock_holder.py URL NAME TTL_MS RESOURCE VALUE
"""

from __future__ import annotations

import sys

from dsm.client import Client
from dsm.lock import FencedError, Lock, fenced_put


def main() -> None:
    url, name, ttl_ms, resource, value = sys.argv[1:6]
    with Client(url) as client:
        lock = Lock(client, name, holder="paused-holder", ttl_ms=int(ttl_ms))
        token = lock.acquire(timeout_s=10)
        print(f"token {token}", flush=True)
        sys.stdin.readline()
        try:
            fenced_put(client, resource, value.encode(), token)
            print("ok", flush=True)
        except FencedError as exc:
            print(f"fenced {exc.current}", flush=True)


if __name__ == "__main__":
    main()
