"""A real node's HTTP API against the OpenAPI document it serves, with schemathesis: generated requests (valid
and invalid ones) to every operation, and each answer checked against the document: its status declared,
its content type, its headers and its body's schema; no 5xx but the documented 503; invalid input refused;
the token required where the document says; an undeclared method answered 405 with Allow.

Bounded and deterministic: a fixed number of examples per operation and mode, hypothesis derandomized and
without its example database; the whole run takes some seconds."""

from __future__ import annotations

from pathlib import Path

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    missing_required_header,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from procs import Proc, procs_fixture  # noqa: F401  (the `procs` fixture)

TOKEN = "openapi-token-0123456789"
EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
    ignored_auth,
    missing_required_header,
    unsupported_method,
]
#: A stream that stays open for as long as the client reads it: checked by hand at the end, not generated.
STREAMS = {("GET", "/v1/watch")}


def test_every_operation_conforms_to_the_served_document(tmp_path: Path, procs: list[Proc]) -> None:
    node = Proc("o1", "127.0.0.1", tmp_path, [], env={"DSM_HTTP_TOKEN": TOKEN})
    procs.append(node)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    # Schemathesis applies the token by the document's security scheme ("bearer"), and leaves it out where
    # a check needs it out (a request without it must get a 401).
    config = schemathesis.Config.from_dict({"auth": {"openapi": {"bearer": {"bearer": TOKEN}}}})
    schema = schemathesis.openapi.from_url(node.url + "/openapi.json", config=config, headers=auth, timeout=10)
    tried = []
    statuses: set[int] = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        if (operation.method.upper(), operation.path) in STREAMS:
            continue
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @given(case=strategy)
            @settings(
                max_examples=EXAMPLES,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def conforms(case: schemathesis.Case) -> None:
                response = case.call_and_validate(base_url=node.url, checks=CHECKS, timeout=10)
                statuses.add(response.status_code)

            try:
                conforms()
            except Unsatisfiable:
                # Nothing of this operation can be made invalid (no parameters, no body): no negative case.
                assert mode is schemathesis.GenerationMode.NEGATIVE, operation.path
        tried.append(f"{operation.method.upper()} {operation.path}")
    # Every operation but the stream and the document itself (schemathesis does not test the path it was
    # loaded from); answers of every kind were checked.
    document = requests.get(node.url + "/openapi.json", headers=auth, timeout=10).json()
    assert len(tried) == len([m for ops in document["paths"].values() for m in ops if m != "parameters"]) - 2
    assert {200, 300, 400, 401, 404} - statuses <= {300}, statuses
    # The stream, by hand: its status and content type as declared, and a bad limit a declared 400.
    declared = document["paths"]["/v1/watch"]["get"]["responses"]
    with requests.get(node.url + "/v1/watch", headers=auth, params={"prefix": "w"}, stream=True, timeout=10) as stream:
        assert str(stream.status_code) in declared
        assert stream.headers["Content-Type"] in declared[str(stream.status_code)]["content"]
    bad = requests.get(node.url + "/v1/watch", headers=auth, params={"limit": "0"}, timeout=10)
    assert str(bad.status_code) in declared and bad.json()["error"]["code"] == "bad_limit"
    assert node.stop() == 0 and "Traceback" not in node.stderr, node.stderr
