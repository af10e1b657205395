"""The command line's conventions (issue 20, section 5) against real `dsm node run` processes: `-o
table|json|raw`, values from `@file` and `-`, `--endpoints` / `DSM_ENDPOINTS` with failover, `dsm list
--after / --all`, `dsm delete --prefix` (HTTP `DELETE /v1/kv?prefix=`, bounded and paged), `dsm status` per
member, shell completion, and no numpy or matplotlib imported by the client commands.

Most commands run in-process through click's CliRunner (the real command, the real client, real nodes);
those whose exact bytes on stdout or whose imports matter run as `python -m dsm.cli` subprocesses."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from dsm.cli import EXIT_SIBLINGS, main
from procs import Proc, eventually, procs_fixture  # noqa: F401  (the `procs` fixture)

#: The caller's DSM_* variables left out of every command (None removes one in CliRunner).
CLEAN: dict[str, str | None] = {k: None for k in os.environ if k.startswith("DSM_")}
DSM = [sys.executable, "-m", "dsm.cli"]


def cli(*args: str, env: Mapping[str, str] | None = None, stdin: bytes | None = None) -> Result:
    return CliRunner().invoke(main, list(args), env={**CLEAN, **(env or {})}, input=stdin, catch_exceptions=False)


def subprocess_cli(*args: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | dict(env or {})
    return subprocess.run([*DSM, *args], capture_output=True, timeout=120, env=environ)


@pytest.fixture
def node(tmp_path: Path, procs: list[Proc]) -> Proc:
    n = Proc("c1", "127.0.0.1", tmp_path, [], env={"DSM_CONFLICT_RESOLUTION": "siblings"})
    procs.append(n)
    return n


def test_get_raw_prints_exactly_the_stored_bytes_and_json_holds_the_version(node: Proc, tmp_path: Path) -> None:
    stored = bytes(range(256)) + b"\n\n"  # not UTF-8, ends with newlines: nothing may be added or taken
    (tmp_path / "value.bin").write_bytes(stored)
    put = cli("put", "bin", "@" + str(tmp_path / "value.bin"), "--node", node.url, "-o", "json")
    assert put.exit_code == 0, put.output
    ack = json.loads(put.stdout)
    raw = subprocess_cli("get", "bin", "--node", node.url, "-o", "raw")
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout == stored
    got = json.loads(cli("get", "bin", "--node", node.url, "-o", "json").stdout)
    assert base64.b64decode(got["value"]) == stored
    assert got["key"] == "bin" and got["context"] and got["writer"] == "c1"
    assert got["timestamp"] == ack["timestamp"] and len(got["siblings"]) == 1
    # The table output is the value and a newline, the context on stderr (as before).
    table = subprocess_cli("get", "bin", "--node", node.url)
    assert table.stdout == stored + b"\n" and b"context=" in table.stderr


def test_values_from_stdin_a_file_and_an_escaped_at(node: Proc, tmp_path: Path) -> None:
    assert cli("put", "in", "-", "--node", node.url, stdin=b"from stdin\x00").exit_code == 0
    assert node.client.get("in").value == b"from stdin\x00"  # type: ignore[union-attr]
    assert cli("put", "at", "@@handle", "--node", node.url).exit_code == 0
    assert node.client.get("at").value == b"@handle"  # type: ignore[union-attr]
    missing = cli("put", "f", "@" + str(tmp_path / "absent"), "--node", node.url)
    assert missing.exit_code == 2 and "cannot read" in missing.output
    assert node.client.get("f") is None
    raw = cli("put", "r", "v", "--node", node.url, "-o", "raw")
    assert raw.exit_code == 0 and raw.stdout == node.client.get("r").context  # type: ignore[union-attr]


def test_get_raw_refuses_siblings_and_json_lists_them(node: Proc) -> None:
    node.client.put("k", b"one")
    node.client.put("k", b"two")  # a blind write beside the first: two siblings
    got = node.client.get("k")
    assert got is not None and len(got.siblings) == 2
    raw = subprocess_cli("get", "k", "--node", node.url, "-o", "raw")
    assert raw.returncode == EXIT_SIBLINGS and raw.stdout == b"" and b"siblings" in raw.stderr
    doc = json.loads(cli("get", "k", "--node", node.url, "-o", "json").stdout)
    assert sorted(base64.b64decode(s["value"]) for s in doc["siblings"]) == [b"one", b"two"]
    absent = cli("get", "nothing", "--node", node.url, "-o", "raw")
    assert absent.exit_code == 1 and absent.stdout == ""


def test_list_after_and_all(node: Proc) -> None:
    keys = [f"p/{i:02}" for i in range(7)]
    for key in keys:
        node.client.put(key, b"v")
    node.client.put("q", b"v")
    first = cli("list", "--prefix", "p/", "--limit", "3", "--node", node.url)
    assert first.stdout.split() == keys[:3] and "(more after p/02)" in first.stderr
    second = cli("list", "--prefix", "p/", "--limit", "3", "--after", "p/02", "--node", node.url, "-o", "json")
    assert json.loads(second.stdout) == {"keys": keys[3:6], "next": "p/05"}
    every = cli("list", "--prefix", "p/", "--limit", "2", "--all", "--node", node.url, "-o", "json")
    assert json.loads(every.stdout) == {"keys": keys, "next": None}


def test_delete_prefix_pages_through_the_node(node: Proc) -> None:
    for i in range(230):
        node.client.put(f"gone/{i:03}", b"v")
    for key in ("gone", "gonf", "kept/1"):
        node.client.put(key, b"v")
    stored = store_keys(node)
    # One page over HTTP: bounded by limit, says how many, whether more remain and where to continue.
    request = urllib.request.Request(node.url + "/v1/kv?prefix=gone/&limit=100", method="DELETE")
    with urllib.request.urlopen(request, timeout=30) as answer:
        page = json.loads(answer.read())
    assert page == {"prefix": "gone/", "deleted": 100, "more": True, "next": "gone/099"}
    assert node.client.get("gone/099") is None and node.client.get("gone/100") is not None
    done = cli("delete", "--prefix", "gone/", "--node", node.url, "-o", "json")
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {"prefix": "gone/", "deleted": 130}
    assert node.client.list("gone/").keys == []
    assert node.client.list("", limit=10).keys == ["gone", "gonf", "kept/1"]
    assert store_keys(node) == stored  # ordinary deletes: every key is still stored, as its tombstone
    assert cli("delete", "--prefix", "", "--node", node.url).exit_code == 2


def store_keys(node: Proc) -> int:
    with urllib.request.urlopen(node.url + "/v1/store", timeout=30) as answer:
        return int(json.loads(answer.read())["keys"])


def test_endpoints_fail_over_to_the_next_node(tmp_path: Path, procs: list[Proc]) -> None:
    n1 = Proc("e1", "127.0.0.1", tmp_path, [])
    procs.append(n1)
    dead = "127.0.0.1:9"  # nothing listens on the discard port here
    put = cli("put", "k", "v", "--endpoints", f"{dead},{n1.http}")
    assert put.exit_code == 0, put.output
    got = cli("get", "k", "-o", "raw", env={"DSM_ENDPOINTS": f"http://{dead}, {n1.url}"})
    assert got.exit_code == 0 and got.stdout == "v"
    listed = cli("list", env={"DSM_ENDPOINTS": f"{dead},{n1.http}"})
    assert listed.stdout.split() == ["k"]
    deleted = cli("delete", "--prefix", "k", "--endpoints", f"{dead},{n1.http}", "-o", "raw")
    assert deleted.exit_code == 0 and deleted.stdout == "1"
    none = cli("get", "k", "--endpoints", f"{dead},127.0.0.1:7")
    assert none.exit_code == 1 and "Connection refused" in none.output and "Traceback" not in none.output


def test_status_shows_each_members_own_numbers(tmp_path: Path, procs: list[Proc]) -> None:
    n1 = Proc("s1", "127.0.0.1", tmp_path, [], extra=["--tag", "rack=r1"])
    procs.append(n1)
    n2 = Proc("s2", "127.0.0.1", tmp_path, [n1.listen], extra=["--tag", "rack=r2"])
    procs.append(n2)
    for i in range(20):
        n2.client.put(f"k{i}", b"v" * 100)
    eventually(lambda: len(n1.client.list("", limit=100).keys) == 20)

    def rows() -> Sequence[dict[str, object]]:
        result = cli("status", "--node", n1.url, "-o", "json")
        assert result.exit_code == 0, result.output
        doc = json.loads(result.stdout)
        assert doc["node_id"] == "s1"
        return sorted(doc["members"], key=lambda m: str(m["id"]))

    def complete() -> bool:
        found = rows()
        # s1 received s2's writes by replication: its delay has readings.
        return len(found) == 2 and isinstance(found[0]["replication_delay_p50_s"], float)

    eventually(complete)
    found = rows()
    assert [m["tags"]["rack"] for m in found] == ["r1", "r2"]  # type: ignore[index]
    for m in found:
        # Each member's own numbers: the client keys it stores (not its internal records), its SQLite files,
        # its gossip period.
        assert m["state"] == "alive" and m["keys"] == 20
        assert isinstance(m["store_bytes"], int) and m["store_bytes"] > 2000
        assert isinstance(m["gossip_interval_s"], float) and m["gossip_interval_s"] > 0
        assert m["http"] == m["tags"]["http"]  # type: ignore[index]
    assert found[0]["http"] == n1.url and found[1]["http"] == n2.url
    table = cli("status", "--node", n1.url, env={"COLUMNS": "250"})
    assert "rack=r2" in table.stdout and "repl. delay" in table.stdout and " ms" in table.stdout


def test_shell_completion_scripts() -> None:
    dsm = Path(sys.executable).parent / "dsm"
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "compdef"), ("fish", "complete --no-files")):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")} | {"_DSM_COMPLETE": f"{shell}_source"}
        result = subprocess.run([str(dsm)], capture_output=True, text=True, timeout=60, env=env)
        assert result.returncode == 0 and marker in result.stdout and "_DSM_COMPLETE" in result.stdout, result
    # And the completions themselves: the commands and an option of `dsm get`.
    env = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    env |= {"_DSM_COMPLETE": "bash_complete", "COMP_WORDS": "dsm get --ou", "COMP_CWORD": "2"}
    result = subprocess.run([str(dsm)], capture_output=True, text=True, timeout=60, env=env)
    assert "--output" in result.stdout


def test_client_commands_import_neither_numpy_nor_matplotlib_nor_rich(node: Proc) -> None:
    node.client.put("k", b"v")
    probe = (
        "import sys; from dsm.cli import main\n"
        "try:\n    main(['get', 'k', '--node', sys.argv[1], '-o', 'raw'])\n"
        "except SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = ('numpy', 'matplotlib', 'dsm.net.runtime', 'dsm.config', 'rich', 'pygments')\n"
        "print(' '.join(m for m in heavy if m in sys.modules), file=sys.stderr)"
    )
    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    result = subprocess.run(
        [sys.executable, "-c", probe, node.url], capture_output=True, text=True, timeout=60, env=environ
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "v" and result.stderr.strip() == "", result.stderr


def test_the_choices_spelled_in_the_cli_match_the_enums() -> None:
    from dsm import cli
    from dsm.config import HttpTls, Profile
    from dsm.core.consistency import LEVEL_NAMES

    assert tuple(p.value for p in Profile) == cli.PROFILE_NAMES
    assert tuple(m.value for m in HttpTls) == cli.HTTP_TLS_MODES
    assert cli.LEVEL_NAMES == LEVEL_NAMES


def test_config_as_json_and_as_environment_lines() -> None:
    env = {"DSM_GOSSIP_FANOUT": "7", "DSM_HTTP_TOKEN": "a-secret-token-0123456789", "DSM_TAGS": '{"rack": "r1"}'}
    doc = json.loads(cli("config", "-o", "json", env=env).stdout)
    assert doc["gossip_fanout"] == 7 and doc["tags"] == {"rack": "r1"} and doc["http_token"] == "<redacted>"
    lines = cli("config", "-o", "raw", env=env).stdout.splitlines()
    assert "DSM_GOSSIP_FANOUT=7" in lines and 'DSM_TAGS={"rack": "r1"}' in lines
    assert "DSM_HTTP_TOKEN=<redacted>" in lines and "a-secret" not in "".join(lines)


def test_watch_takes_the_endpoints_and_fails_over_to_the_next(node: Proc) -> None:
    import select
    import signal

    environ = {k: v for k, v in os.environ.items() if not k.startswith("DSM_")}
    environ["DSM_ENDPOINTS"] = f"127.0.0.1:9,{node.http}"  # nothing listens on the first
    watcher = subprocess.Popen([*DSM, "watch", "w/"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=environ)
    try:
        assert watcher.stdout is not None
        line = b""
        for i in range(300):  # until the watch is open on the second endpoint and has seen a write
            node.client.put("w/a", str(i).encode())
            if select.select([watcher.stdout], [], [], 0.1)[0]:
                line = watcher.stdout.readline()
                break
        assert json.loads(line)["key"] == "w/a"
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.communicate(timeout=15)
