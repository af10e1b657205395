"""A local cluster of real `dsm node run` processes on loopback (`dsm cluster up` / `dsm cluster down`).

Everything lives in one directory the user can see:

    <dir>/cluster.json     the nodes: id, pid, peer and HTTP addresses, data directory, log file
    <dir>/n1/dsm.sqlite3   node n1's store
    <dir>/n1/node.log      node n1's standard output and error (the ready line, then its log)

Node i (from 1) listens for peers on `host:peer_port + i - 1` and for HTTP clients on
`host:http_port + i - 1`; port 0 lets the system choose (the chosen ports are read from the node's ready
line and kept, so a restarted node comes back on the same addresses). Every node after the first joins
through the first ones already started.

Processes are started in their own session, so they outlive the command that started them; `down` ends
exactly the processes listed in cluster.json (SIGTERM, then SIGKILL after a grace period), after checking
that each pid is still a `dsm node run` of that node (a pid reused by another program is left alone).

A directory holds one cluster: `up` refuses a directory that already has a cluster.json (it would otherwise
replace its secret, TLS and ports while the stores remember the old cluster). `start_all` starts a recorded
cluster again exactly as it was (`dsm cluster up` on such a directory), `differences` says which requested
settings disagree with the recorded ones, and `remove` deletes a stopped cluster's data, logs and CA for a
new one (`dsm cluster up --recreate`).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from dsm.errors import DSMError
from dsm.net.certs import ClusterCA

STATE_FILE = "cluster.json"
READY_TIMEOUT_S = 30.0


class ClusterError(DSMError):
    """A local cluster could not be started, found or stopped."""


@dataclass
class LocalNode:
    """One node of a local cluster, as recorded in cluster.json."""

    node_id: str
    listen: str
    http: str
    data_dir: str
    log: str
    pid: int = 0
    https: bool = False
    #: Started but not joined yet (its `waiting` line was read, not yet its `ready` line).
    waiting: bool = False
    #: host:port of its Redis-protocol front door ("" when it has none).
    resp: str = ""

    @property
    def url(self) -> str:
        return ("https://" if self.https else "http://") + self.http


class LocalCluster:
    """Starts, stops, kills and restarts the nodes of one local cluster directory.

    Args:
        directory: where the nodes' data, logs and cluster.json live (created if missing).
        env: extra environment for the nodes (e.g. DSM_* settings); DSM_* variables of the calling
            environment are not passed on, so a node's settings are exactly the flags and `env`.
    """

    def __init__(self, directory: str | Path, env: Mapping[str, str] | None = None, tls: bool = False) -> None:
        self.directory = Path(directory).resolve()
        self.env = dict(env or {})
        #: TLS between the nodes (mutual, against the cluster CA in `<directory>/tls`) and HTTPS for the API.
        self.tls = tls
        self.nodes: list[LocalNode] = []

    # ------------------------------------------------------------------ state

    @classmethod
    def load(cls, directory: str | Path) -> LocalCluster:
        """The cluster recorded in `directory`/cluster.json.

        Raises:
            ClusterError: there is no readable cluster.json there.
        """
        cluster = cls(directory)
        path = cluster.directory / STATE_FILE
        try:
            state = json.loads(path.read_text())
            cluster.env = dict(state.get("env", {}))
            cluster.tls = bool(state.get("tls", False))
            cluster.nodes = [LocalNode(**n) for n in state["nodes"]]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ClusterError(f"no local cluster in {cluster.directory} ({path.name}: {exc})") from exc
        return cluster

    def save(self) -> None:
        state = {"env": self.env, "tls": self.tls, "nodes": [asdict(n) for n in self.nodes]}
        tmp = self.directory / (STATE_FILE + ".tmp")
        # The file may hold the cluster secret (in env): readable by its owner only.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.directory / STATE_FILE)

    def node(self, node_id: str) -> LocalNode:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise ClusterError(f"no node {node_id!r} in {self.directory}")

    # ------------------------------------------------------------------ life cycle

    @property
    def ca_dir(self) -> Path:
        """Where the cluster CA and the node certificates live (`--tls`)."""
        return self.directory / "tls"

    @property
    def ca_file(self) -> str | None:
        """The CA a client needs to check the nodes' HTTPS (None without TLS)."""
        return str(self.ca_dir / "ca.pem") if self.tls else None

    def up(
        self,
        count: int,
        host: str = "127.0.0.1",
        peer_port: int = 7400,
        http_port: int = 7480,
        resp_port: int | None = None,
    ) -> None:
        """Starts `count` nodes n1..nN and waits until each serves (with a Redis-protocol front door each on
        `resp_port` + i - 1 when it is given; 0: ports the system picks).

        Raises:
            ClusterError: the directory already holds a cluster (running or not: see `start_all` and
                `remove`), or a node did not start (its log's last lines are in the message); the nodes
                already started are stopped again.
        """
        if count < 1:
            raise ClusterError("a cluster needs at least one node")
        self.directory.mkdir(parents=True, exist_ok=True)
        if (self.directory / STATE_FILE).exists():
            try:
                recorded = LocalCluster.load(self.directory)
            except ClusterError as exc:
                raise ClusterError(f"{exc}: remove the directory to start a new cluster there") from None
            running = [n.node_id for n in recorded.running()]
            if running:
                raise ClusterError(f"{self.directory} already runs {', '.join(running)}: `dsm cluster down` first")
            raise ClusterError(
                f"{self.directory} already holds a cluster ({recorded.summary()}): `dsm cluster up --dir "
                f"{self.directory}` starts it again as it was, `--recreate` deletes it (data included) and starts "
                "a new one; or choose another directory"
            )
        self.nodes = []
        for i in range(count):
            node_id = f"n{i + 1}"
            data = self.directory / node_id
            self.nodes.append(
                LocalNode(
                    node_id=node_id,
                    listen=f"{host}:{peer_port + i if peer_port else 0}",
                    http=f"{host}:{http_port + i if http_port else 0}",
                    data_dir=str(data),
                    log=str(data / "node.log"),
                    resp="" if resp_port is None else f"{host}:{resp_port + i if resp_port else 0}",
                )
            )
        self._start_nodes(self.nodes)

    def start_all(self) -> list[str]:
        """Starts again every recorded node that is not running, with its id, addresses, data, secret and
        TLS as recorded; returns the ids started.

        Raises:
            ClusterError: every node already runs, or one did not start (those started here are stopped).
        """
        stopped = [n for n in self.nodes if not self.alive(n)]
        if not stopped:
            running = ", ".join(n.node_id for n in self.nodes)
            raise ClusterError(f"{self.directory} already runs {running}: nothing to start")
        self._start_nodes(stopped)
        return [n.node_id for n in stopped]

    def _start_nodes(self, nodes: list[LocalNode]) -> None:
        """Starts `nodes` and waits until each has joined; on failure stops the ones started.

        The first is started alone when no node of the cluster runs (the others need an address to join
        through: with port 0 it is known only from its ready line); then all the others at once, each
        joining through the nodes already running, and their ready lines are awaited together."""
        zygote = _Zygote() if len(nodes) > 2 else None  # it imports while the first node starts
        try:
            waiting: list[tuple[LocalNode, int]] = []
            rest = list(nodes)
            if not any(self.alive(m) for m in self.nodes if m not in nodes):
                first = rest.pop(0)
                offset = self._log_size(first)
                if self.start(first.node_id).waiting:
                    waiting.append((first, offset))
            seeds = [m.listen for m in self.nodes if m not in rest and self.alive(m)]
            offsets = [self._log_size(n) for n in rest]
            if len(rest) > 1:
                # Forked from one process that imported the node's code once: most of a node's start-up CPU
                # is that import, and the cores are shared by all the nodes starting at once.
                assert zygote is not None
                zygote.spawn([(n, *self._command(n, seeds)) for n in rest])
                procs: list[subprocess.Popen[bytes] | None] = [None] * len(rest)
            else:
                procs = [self._spawn(n, seeds) for n in rest]
            for n, offset, proc in zip(rest, offsets, procs, strict=True):
                self._record_ready(n, self._wait_ready(n, proc, offset))
            # A node restarted on a store that saved its cluster waits for a member to answer (the first one
            # started has nobody to join until the next one is up): every node must be ready at the end.
            for n, offset in waiting:
                self._wait_ready(n, None, offset, accept_waiting=False)
                n.waiting = False
            self.save()
        except BaseException:
            self._stop(nodes)
            raise
        finally:
            if zygote is not None:
                zygote.close()

    def summary(self) -> str:
        """The recorded cluster in a few words: nodes, TLS, host and first ports."""
        if not self.nodes:
            return "no nodes"
        first = self.nodes[0]
        tls = "TLS on" if self.tls else "TLS off"
        return f"{len(self.nodes)} nodes n1..n{len(self.nodes)}, {tls}, n1 on peer {first.listen} and HTTP {first.http}"

    def differences(
        self,
        count: int | None = None,
        host: str | None = None,
        peer_port: int | None = None,
        http_port: int | None = None,
        secret: str | None = None,
        tls: bool | None = None,
    ) -> list[str]:
        """The requested settings (None: not requested; a port 0: any) that disagree with the recorded
        cluster, each as `--flag value` against what is recorded (a secret is not shown)."""
        out = []
        first_host, first_peer, first_http = "", 0, 0
        if self.nodes:
            first_host, _, peer = self.nodes[0].listen.rpartition(":")
            first_http = int(self.nodes[0].http.rpartition(":")[2] or 0)
            first_peer = int(peer or 0)
        if count is not None and count != len(self.nodes):
            out.append(f"--nodes {count} (recorded: {len(self.nodes)})")
        if host is not None and host != first_host.strip("[]"):
            out.append(f"--host {host} (recorded: {first_host})")
        if peer_port and peer_port != first_peer:
            out.append(f"--peer-port {peer_port} (recorded: n1 on {first_peer})")
        if http_port and http_port != first_http:
            out.append(f"--http-port {http_port} (recorded: n1 on {first_http})")
        if secret is not None and secret != self.env.get("DSM_CLUSTER_SECRET"):
            out.append("--secret (not the recorded one)")
        if tls is not None and tls != self.tls:
            out.append(f"--tls {'on' if tls else 'off'} (recorded: {'on' if self.tls else 'off'})")
        return out

    def remove(self) -> None:
        """Deletes the recorded cluster: its nodes' data directories (stores and logs) inside the cluster's
        directory, its CA and cluster.json. Nothing outside the directory is touched.

        Raises:
            ClusterError: a node still runs.
        """
        running = [n.node_id for n in self.running()]
        if running:
            raise ClusterError(f"{self.directory} still runs {', '.join(running)}: `dsm cluster down` first")
        for path in [Path(n.data_dir) for n in self.nodes] + [self.ca_dir]:
            resolved = path.resolve()
            if resolved.is_relative_to(self.directory) and resolved != self.directory and resolved.is_dir():
                shutil.rmtree(resolved)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / STATE_FILE).unlink()
        self.nodes = []

    def start(self, node_id: str) -> LocalNode:
        """Starts (or restarts) one node with its recorded id, addresses and data; returns once it serves."""
        n = self.node(node_id)
        if self.alive(n):
            raise ClusterError(f"{node_id} already runs (pid {n.pid})")
        others = [m.listen for m in self.nodes if m is not n and self.alive(m)]
        offset = self._log_size(n)
        proc = self._spawn(n, others)
        # With no other node running, a node whose store saved its cluster cannot join yet: its `waiting`
        # line is enough (it serves local reads and writes and joins when the others start).
        self._record_ready(n, self._wait_ready(n, proc, offset, accept_waiting=not others))
        return n

    def _command(self, n: LocalNode, seeds: list[str]) -> tuple[list[str], dict[str, str]]:
        """The `dsm node run` arguments of node `n`, joining through (up to three of) `seeds`, and its
        environment (the caller's without its DSM_* variables, the cluster's, the node's TLS files)."""
        Path(n.data_dir).mkdir(parents=True, exist_ok=True)
        args = ["node", "run", "--node-id", n.node_id, "--listen", n.listen]
        args += ["--http", n.http, "--data-dir", n.data_dir, "--log-level", "WARNING"]
        if n.resp:
            args += ["--resp", n.resp]
        for addr in seeds[:3]:
            args += ["--bootstrap", addr]
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | self.env
        if self.tls:
            files = ClusterCA(self.ca_dir).node(n.node_id, n.listen.rpartition(":")[0].strip("[]"))
            env |= {"DSM_TLS_CERT_FILE": files.cert, "DSM_TLS_KEY_FILE": files.key, "DSM_TLS_CA_FILE": files.ca}
            n.https = True
        return args, env

    def _spawn(self, n: LocalNode, seeds: list[str]) -> subprocess.Popen[bytes]:
        """Starts node `n`'s process, joining through (up to three of) `seeds`; its output goes to its log."""
        args, env = self._command(n, seeds)
        with Path(n.log).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "dsm.cli", *args],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        n.pid = proc.pid
        return proc

    def _record_ready(self, n: LocalNode, ready: Mapping[str, object]) -> None:
        """Keeps what a node's ready (or waiting) line says: its addresses (chosen by the system for port 0)."""
        n.listen, n.http = str(ready["listen"]), str(ready["http"])
        if "resp" in ready:
            n.resp = str(ready["resp"])
        n.waiting = ready["event"] == "waiting"
        self.save()

    @staticmethod
    def _log_size(n: LocalNode) -> int:
        with contextlib.suppress(OSError):
            return Path(n.log).stat().st_size
        return 0

    def _wait_ready(
        self, n: LocalNode, proc: subprocess.Popen[bytes] | None, offset: int, accept_waiting: bool = False
    ) -> dict[str, object]:
        """The node's `ready` line (or `waiting` line, if `accept_waiting`) written after `offset` in its log."""
        deadline = time.monotonic() + READY_TIMEOUT_S
        with open(n.log, "rb") as log:
            log.seek(offset)
            pending = b""
            while True:
                chunk = log.read()
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    if line.startswith(b'{"event": "ready"') or (
                        accept_waiting and line.startswith(b'{"event": "waiting"')
                    ):
                        ready: dict[str, object] = json.loads(line)
                        return ready
                if proc is not None and proc.poll() is not None:
                    raise ClusterError(f"{n.node_id} exited with {proc.returncode}: {self._tail(n)}")
                if proc is None and not self.alive(n):
                    raise ClusterError(f"{n.node_id} exited: {self._tail(n)}")
                if time.monotonic() > deadline:
                    if proc is not None:
                        proc.kill()
                    others = "".join(
                        f"; {m.node_id}: {self._tail(m, 3)}" for m in self.nodes if m is not n and self.alive(m)
                    )
                    raise ClusterError(
                        f"{n.node_id} did not {'serve' if accept_waiting else 'join'} within {READY_TIMEOUT_S:.0f} s: "
                        f"{self._tail(n)}{others}"
                    )
                if not chunk:
                    time.sleep(0.02)

    @staticmethod
    def _tail(n: LocalNode, lines: int = 5) -> str:
        with contextlib.suppress(OSError):
            return " | ".join(Path(n.log).read_text(errors="replace").strip().splitlines()[-lines:])
        return "(no log)"

    def kill(self, node_id: str, sig: int = signal.SIGKILL, timeout: float = 15.0) -> None:
        """Sends `sig` to one node and waits until its process is gone (SIGKILL after `timeout`)."""
        n = self.node(node_id)
        if not self.alive(n):
            return
        os.kill(n.pid, sig)
        if not _wait_gone(n.pid, timeout):
            os.kill(n.pid, signal.SIGKILL)
            _wait_gone(n.pid, 5.0)

    def down(self, timeout: float = 15.0) -> list[str]:
        """Stops every running node of the cluster gracefully (SIGTERM; SIGKILL after `timeout`); returns
        the ids stopped."""
        return self._stop(self.nodes, timeout)

    def _stop(self, nodes: list[LocalNode], timeout: float = 15.0) -> list[str]:
        running = [n for n in nodes if self.alive(n)]
        for n in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(n.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in running:
            if not _wait_gone(n.pid, max(0.0, deadline - time.monotonic())):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(n.pid, signal.SIGKILL)
                _wait_gone(n.pid, 5.0)
        return [n.node_id for n in running]

    def running(self) -> list[LocalNode]:
        return [n for n in self.nodes if self.alive(n)]

    @staticmethod
    def alive(n: LocalNode) -> bool:
        """Whether `n.pid` is still that node's process (not a pid reused by another program)."""
        if n.pid <= 0:
            return False
        _reap(n.pid)
        try:
            os.kill(n.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return False
        cmdline = Path(f"/proc/{n.pid}/cmdline")
        if not cmdline.exists():  # not Linux: the pid is all we can check
            return True
        try:
            args = cmdline.read_bytes().split(b"\0")
            if ZYGOTE_MODULE.encode() in args:  # forked by a zygote (its stdout: the log)
                return os.readlink(f"/proc/{n.pid}/fd/1") == str(Path(n.log).resolve())
        except OSError:
            return False
        return b"node" in args and n.node_id.encode() in args


def _reap(pid: int) -> None:
    """Collects the exit status if `pid` is our own child (otherwise a killed child stays a zombie)."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        _reap(pid)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


#: The module a zygote runs as (`python -m dsm.zygote`); the nodes it forks keep its command line.
ZYGOTE_MODULE = "dsm.zygote"


class _Zygote:
    """A process that imports the node's code once and forks every node of a batch from it
    (`python -m dsm.zygote`, `dsm.zygote`): given one JSON line per node (its `dsm` arguments, environment and
    log), it forks a child per line, which starts a session of its own, takes the log as its standard output
    and error and runs `dsm node run` in-process; the zygote answers each child's pid once the child has
    its log as standard output (so `LocalCluster.alive` recognizes it at once) and exits at the end of its
    input. The children are then no one's children but init's, like the nodes `_spawn` starts."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", ZYGOTE_MODULE],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )

    def spawn(self, nodes: list[tuple[LocalNode, list[str], dict[str, str]]]) -> None:
        """Forks a node per (node, arguments, environment); sets each node's pid."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        for n, args, env in nodes:
            spec = {"args": args, "env": env, "log": str(Path(n.log).resolve())}
            self.proc.stdin.write(json.dumps(spec).encode() + b"\n")
        self.proc.stdin.close()
        for n, _, _ in nodes:
            line = self.proc.stdout.readline()
            if not line:
                raise ClusterError(
                    f"the zygote that starts the nodes exited before {n.node_id} (status {self.proc.wait()})"
                )
            n.pid = int(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()
