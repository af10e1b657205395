"""`dsm node run`: one node as a process: the store, the networked core and the HTTP API, until SIGTERM.

Start-up prints one JSON line on standard output once the node serves and has joined its cluster, e.g.
`{"event": "ready", "node_id": "n1", "listen": "127.0.0.1:7401", "http": "127.0.0.1:7481", "pid": 123}`
(ports chosen by the system when 0 was asked; with `resp_addr`, also `"resp": host:port`, the
Redis-protocol front door), which `dsm cluster up` and the tests wait for. A node that
serves but has not reached any member of its cluster yet (saved members or bootstrap addresses, none
answering) first prints a `waiting` line with the same fields plus `reason` and `targets` (the addresses it
tries), then the `ready` line once it joins; meanwhile it serves `local` reads and writes, refuses higher
levels and answers 503 on `/health/ready` (see `dsm.net.runtime`).

SIGTERM or SIGINT: graceful stop. The HTTP API stops taking requests, the member table is saved, every
queued write is committed, the store is closed. The node stays a member of its cluster (the others see it
fail and still count it for consistency levels until it is back or removed); with `leave_on_terminate` it
first announces a leave for good to its links. After `kill -9` nothing of
this runs; a restarted node rejoins with its id and its data (see `dsm.net.runtime`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import resource
import signal
import sys

from aiohttp import web

from dsm.api.connections import BoundedSite
from dsm.api.http import CONNECTIONS, METRICS, create_app
from dsm.api.resp import RespServer
from dsm.api.resp_commands import start_resp
from dsm.config import StorageConfig
from dsm.errors import ConfigError
from dsm.factory import StorageFactory
from dsm.net.runtime import Runtime
from dsm.net.status import snapshot
from dsm.net.tls import contexts
from dsm.net.transport import split_addr

log = logging.getLogger("dsm.server")


async def serve(config: StorageConfig, stop: asyncio.Event | None = None) -> None:
    """Runs a node until `stop` is set or SIGTERM/SIGINT arrives."""
    stop = stop if stop is not None else asyncio.Event()
    raise_open_files_limit()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        # Not the main thread, or no signals on this platform: the caller's `stop` is the only way out.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    if not config.listen_addr:
        raise ConfigError("listen_addr", "", "a host:port: a node run as a process serves other nodes")
    tls = contexts(config)  # a TLS file that cannot be loaded stops the start here, before the store opens
    storage = await StorageFactory(config).create_epidemic_storage()
    runtime = storage.network
    assert isinstance(runtime, Runtime)
    runner: web.AppRunner | None = None
    resp: RespServer | None = None
    try:
        app = create_app(storage, runtime, token=config.http_token)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        host, port = split_addr(config.http_addr)
        # Not aiohttp's TCPSite: a site whose connections have header and idle deadlines and a cap.
        await BoundedSite(runner, host, port, pool=app[CONNECTIONS], ssl_context=tls.http_server).start()
        http_port = runner.addresses[0][1]
        scheme = "https" if tls.http_server is not None else "http"
        await storage.advertise_http(f"{scheme}://{join_addr(advertised_host(host, runtime.addr), http_port)}")
        ready = {
            "event": "ready",
            "node_id": config.node_id,
            "listen": runtime.addr,
            "http": f"{host}:{http_port}",
            "scheme": scheme,
            "pid": os.getpid(),
        }
        if config.resp_addr:  # the Redis-protocol front door: the same token, TLS when the HTTP API has it
            resp_host, resp_port = split_addr(config.resp_addr)
            resp, resp_port = await start_resp(
                storage, resp_host, resp_port, token=config.http_token, ssl_context=tls.http_server
            )
            app[METRICS].attach_resp(resp)
            ready["resp"] = join_addr(resp_host, resp_port)
        # Everything allocated so far (modules, the app, the node) lives as long as the process: moved out of
        # the collector's sight, a full collection no longer walks it (on this project's machine 18 ms of
        # event-loop stall per collection, more on a busy one; about 0.1 ms after).
        gc.freeze()
        if not runtime.joined.is_set():
            # It serves (local reads and writes, the API, health) but has not reached its cluster yet.
            join = snapshot(storage, runtime, members=False).join
            waiting = ready | {"event": "waiting", "reason": join.reason, "targets": [t for t, _ in join.targets]}
            print(json.dumps(waiting), flush=True)
            joined = asyncio.ensure_future(runtime.joined.wait())
            stopping = asyncio.ensure_future(stop.wait())
            await asyncio.wait((joined, stopping), return_when=asyncio.FIRST_COMPLETED)
            for task in (joined, stopping):
                task.cancel()
        if not stop.is_set():
            print(json.dumps(ready), flush=True)
            await stop.wait()
        log.info("node %s stopping", config.node_id)
    finally:
        if resp is not None:
            await resp.close()
        if runner is not None:
            await runner.cleanup()
        # Commits what is queued and closes the store; the node stays a member (it will be back) unless
        # leave_on_terminate, when it first leaves for good.
        await (storage.leave() if config.leave_on_terminate else storage.close())
        print(json.dumps({"event": "stopped", "node_id": config.node_id}), flush=True)


def advertised_host(http_host: str, peer_addr: str) -> str:
    """The host other nodes reach the HTTP API at: its listening host, or the peer address's host when it
    listens on every interface."""
    if http_host in ("", "0.0.0.0", "::"):
        return split_addr(peer_addr)[0]
    return http_host


def join_addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def raise_open_files_limit() -> tuple[int, int]:
    """Raises the soft limit of open files (RLIMIT_NOFILE) to the hard limit, as a server that holds a
    socket per connection should: the common soft default of 1,024 is easily reached by clients and peers.
    Logs both limits; returns (soft, hard) as they are now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An unlimited hard limit: ask for a million (the kernel refuses unlimited open files).
        target = hard if hard != resource.RLIM_INFINITY else 1 << 20
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("open files: could not raise the soft limit %d to the hard limit %d: %s", soft, hard, exc)
            return soft, hard
        raised = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        log.info("open files: soft limit raised from %d to %d (hard limit %d)", soft, raised, hard)
        return raised, hard
    log.info("open files: soft limit %d, hard limit %d", soft, hard)
    return soft, hard


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
