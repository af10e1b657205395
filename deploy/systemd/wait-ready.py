"""Readiness for systemd (the ExecStartPost of dsm.service): polls the node's `GET /health/ready` until it
answers 200 (serving and joined to its cluster), then exits 0; exits 1 after READY_TIMEOUT_S seconds
(default 120), which fails the unit's start. `dsm node run` does not speak sd_notify, hence this poll.

It reads the same DSM_* environment as the node (the unit's EnvironmentFile): DSM_HTTP_ADDR (a wildcard host
is asked on loopback), and HTTPS when DSM_HTTP_TLS is 'on', or 'auto' (the default) with DSM_TLS_CERT_FILE
set, verified with DSM_TLS_CA_FILE (the certificate names the node id, not 127.0.0.1: no host-name check).
READY_URL overrides the address (e.g. for a node configured through a TOML file)."""

from __future__ import annotations

import os
import ssl
import sys
import time
import urllib.error
import urllib.request

WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def ready_url(env: dict[str, str]) -> str:
    if env.get("READY_URL"):
        return env["READY_URL"]
    host, _, port = env.get("DSM_HTTP_ADDR", "127.0.0.1:7480").rpartition(":")
    if host in WILDCARDS:
        host = "[::1]" if ":" in host else "127.0.0.1"
    tls = env.get("DSM_HTTP_TLS", "auto")
    https = tls == "on" or (tls == "auto" and bool(env.get("DSM_TLS_CERT_FILE")))
    return f"{'https' if https else 'http'}://{host}:{port}/health/ready"


def main() -> int:
    env = dict(os.environ)
    url = ready_url(env)
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=env.get("DSM_TLS_CA_FILE") or None)
        context.check_hostname = False
    deadline = time.monotonic() + float(env.get("READY_TIMEOUT_S", "120"))
    last = "no answer yet"
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                if answer.status == 200:
                    return 0
        except urllib.error.HTTPError as exc:  # 503 until the node has joined: the body says why
            last = f"{exc.code} {exc.read(500).decode(errors='replace')}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    print(f"dsm: {url} not ready after {env.get('READY_TIMEOUT_S', '120')} s: {last}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
