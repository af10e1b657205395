"""The command line's costs (issue 20, section 5): how long `dsm cluster up -n N` takes until every node
serves and has joined, and until the first node sees all N alive; and the CPU one `dsm get` costs (user +
system of the whole process, from its start to its exit, measured with getrusage of the children).

    .venv/bin/python bench/cli_bench.py [--nodes 50] [--gets 20] [--get-python PATH]

`--get-python` runs the `dsm get`s with another interpreter: a user's install has no dev extra, whose
selenium brings trio, which httpcore imports when it is there (about 40 ms here). Measure it with a fresh
virtualenv: `python3 -m venv /tmp/uservenv && /tmp/uservenv/bin/pip install -e . && .venv/bin/python
bench/cli_bench.py --get-python /tmp/uservenv/bin/python`.

Writes bench/results/cli.json. The cluster is started in a temporary directory on ports the system picks
and stopped (`dsm cluster down`) at the end, whatever happens."""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
DSM = [sys.executable, "-m", "dsm.cli"]


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def alive_members(url: str) -> int:
    with urllib.request.urlopen(url + "/v1/members", timeout=5) as answer:
        return sum(1 for m in json.loads(answer.read())["members"] if m["state"] == "alive")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--gets", type=int, default=20)
    parser.add_argument("--get-python", default=sys.executable, help="the interpreter the dsm gets run with")
    args = parser.parse_args()
    get = [args.get_python, "-m", "dsm.cli", "get"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    report: dict[str, object] = {"nodes": args.nodes, "cpus": os.cpu_count(), "get_python": args.get_python}
    with tempfile.TemporaryDirectory() as tmp:
        directory = str(Path(tmp) / "cluster")
        start = time.monotonic()
        try:
            up = subprocess.run(
                [
                    *DSM,
                    "cluster",
                    "up",
                    "-n",
                    str(args.nodes),
                    "--dir",
                    directory,
                    "--peer-port",
                    "0",
                    "--http-port",
                    "0",
                ],
                capture_output=True,
                text=True,
                env=env | {"COLUMNS": "200"},
                timeout=600,
            )
            up_s = time.monotonic() - start
            if up.returncode:
                raise SystemExit(f"cluster up failed: {up.stderr}")
            state = json.loads((Path(directory) / "cluster.json").read_text())
            url = "http://" + state["nodes"][0]["http"]
            while alive_members(url) < args.nodes:
                time.sleep(0.05)
            all_alive_s = time.monotonic() - start
            report |= {"cluster_up_s": round(up_s, 2), "all_alive_seen_by_n1_s": round(all_alive_s, 2)}
            print(
                f"cluster up -n {args.nodes}: returned after {up_s:.2f} s, n1 saw all alive after {all_alive_s:.2f} s"
            )
            put = subprocess.run([*DSM, "put", "k", "v", "--node", url], capture_output=True, env=env, timeout=60)
            assert put.returncode == 0, put.stderr
            cpu, wall = [], []
            for _ in range(args.gets):
                before, t0 = children_cpu_s(), time.monotonic()
                got = subprocess.run([*get, "k", "--node", url, "-o", "raw"], capture_output=True, env=env)
                wall.append(time.monotonic() - t0)
                cpu.append(children_cpu_s() - before)
                assert got.returncode == 0 and got.stdout == b"v", got.stderr
            report |= {
                "get_cpu_ms_median": round(statistics.median(cpu) * 1000, 1),
                "get_cpu_ms_max": round(max(cpu) * 1000, 1),
                "get_wall_ms_median": round(statistics.median(wall) * 1000, 1),
            }
            print(
                f"dsm get: CPU median {statistics.median(cpu) * 1000:.0f} ms, max {max(cpu) * 1000:.0f} ms; "
                f"wall median {statistics.median(wall) * 1000:.0f} ms ({args.gets} runs, {args.nodes} nodes up)"
            )
        finally:
            subprocess.run([*DSM, "cluster", "down", "--dir", directory], capture_output=True, env=env, timeout=300)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "cli.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
