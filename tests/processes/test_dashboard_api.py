"""What the dashboard (`GET /ui`) stands on, on real `dsm node run` processes with an API token: the page's
files are served without the token and with a strict Content Security Policy; every node advertises its
HTTP address in its metadata; `GET /v1/overlay` assembles every member's links (asking each member with the
caller's token) and says who could not be asked. (The page itself in a real browser: issue 20, next step.)"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from dsm.urls import url_on_host
from procs import Proc, eventually, procs_fixture  # noqa: F401 (the `procs` fixture)

pytestmark = pytest.mark.usefixtures("loopback_hosts")

TOKEN = "dashboard-token-0123456789"
ENV = {"DSM_HTTP_TOKEN": TOKEN}


def get(url: str, token: str = TOKEN) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def overlay(node: Proc) -> dict[str, Any]:
    status, _, body = get(node.url + "/v1/overlay")
    assert status == 200, body
    answer: dict[str, Any] = json.loads(body)
    return answer


def test_the_dashboard_files_and_the_overlay_it_draws(procs: list[Proc], tmp_path: Path) -> None:
    first = Proc("d0", "127.0.0.1", tmp_path, [], env=ENV)
    procs.append(first)
    for i in (1, 2):
        procs.append(Proc(f"d{i}", f"127.0.0.{i + 1}", tmp_path, [first.listen], env=ENV))

    for path, kind in (("/ui", "text/html"), ("/ui/app.js", "text/javascript"), ("/ui/app.css", "text/css")):
        status, headers, body = get(first.url + path, token="")  # open, like the health routes
        assert status == 200 and headers["Content-Type"].startswith(kind) and body
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert get(first.url + "/v1/overlay", token="")[0] == 401  # what the page shows needs the token
    assert get(first.url + "/v1/members", token="")[0] == 401

    def advertised() -> bool:
        status, _, body = get(first.url + "/v1/members")
        members = json.loads(body)["members"] if status == 200 else []
        https = {m["id"]: m["metadata"].get("http", "") for m in members if m["state"] == "alive"}
        return len(https) == 3 and all(
            url == f"http://{p.http}" for p in procs for node, url in https.items() if node == p.node_id
        )

    eventually(advertised)

    def assembled() -> bool:
        answer = overlay(first)
        nodes = {n["id"]: n for n in answer["nodes"]}
        return set(nodes) == {"d0", "d1", "d2"} and not answer["unreachable"] and all(n["near"] for n in nodes.values())

    eventually(assembled)
    answer = overlay(first)
    for node in answer["nodes"]:
        assert 0 <= node["position"] < 1 and node["state"] == "alive" and node["id"] not in node["near"]
        assert set(node["near"]) <= {"d0", "d1", "d2"}
    assert [n["position"] for n in answer["nodes"]] == sorted(n["position"] for n in answer["nodes"])

    # A member that stops is no longer asked; the others' links still come.
    procs.pop().stop()
    eventually(lambda: {n["id"] for n in overlay(first)["nodes"]} == {"d0", "d1"}, timeout=30)


def test_the_token_goes_only_to_a_members_own_host() -> None:
    assert url_on_host("http://127.0.0.2:8080", "127.0.0.2:7946")
    assert url_on_host("https://[::1]:8080/", "[::1]:7946")
    assert not url_on_host("http://attacker.example:80", "127.0.0.2:7946")
    assert not url_on_host("http://127.0.0.3:8080", "127.0.0.2:7946")
    assert not url_on_host("file:///etc/passwd", "127.0.0.2:7946")
    assert not url_on_host("not a url", "127.0.0.2:7946")
