"""`dsm.clientcore.exchange` stepped by hand, without sockets: which endpoint each attempt goes to, when a
round pauses, and which failures end a call that is never sent twice."""

from __future__ import annotations

import json
import random
from collections.abc import Generator
from typing import Any

import pytest

from dsm.clientcore import (
    Answer,
    AnswerLostError,
    ClientError,
    ConsistencyUnmetError,
    Failure,
    Outcome,
    RetryPolicy,
    Send,
    Step,
    TLSError,
    UnreachableError,
    Wait,
    exchange,
    get_call,
    put_call,
)

READ = get_call("k", consistency=None)
PLAIN = put_call("k", b"v", context=None, consistency=None, ttl_ms=None, if_absent=False, if_match=None)
CONDITIONAL = put_call("k", b"v", context=None, consistency=None, ttl_ms=None, if_absent=True, if_match=None)
LINEARIZABLE = put_call(
    "k", b"v", context=None, consistency="linearizable", ttl_ms=None, if_absent=False, if_match=None
)


def _error(status: int, code: str, message: str, **fields: Any) -> Answer:
    body = json.dumps({"error": {"code": code, "message": message, **fields}}).encode()
    return Answer(status, body, {"Content-Type": "application/json"}, "http://n")


ACK = Answer(200, b'{"key": "k", "timestamp": 7}', {"X-DSM-Context": "c1"}, "http://n")
REFUSED = Failure("http://n", "connection refused", sent=False)
BROKEN = Failure("http://n", "server disconnected", sent=True)


def _drive(steps: Generator[Step, Outcome, Any], answer: Any) -> tuple[list[Step], Any]:
    """Runs the steps, answering each `Send` with `answer(index, attempt)`; returns the steps and the result
    (or the error raised)."""
    seen: list[Step] = []
    outcome: Outcome = None
    try:
        while True:
            step = steps.send(outcome)
            seen.append(step)
            outcome = None if isinstance(step, Wait) else answer(step.index, len(seen))
    except StopIteration as done:
        return seen, done.value
    except Exception as exc:
        return seen, exc


def test_rounds_go_over_every_endpoint_from_the_current_one_with_jittered_pauses() -> None:
    policy = RetryPolicy(retries=2, backoff_s=0.5, backoff_max_s=0.8)
    steps, result = _drive(exchange(READ, 3, 1, policy, random.Random(1)), lambda i, n: REFUSED)
    sends = [s.index for s in steps if isinstance(s, Send)]
    waits = [s.seconds for s in steps if isinstance(s, Wait)]
    assert sends == [1, 2, 0] * 3 and len(steps) == 11
    assert isinstance(steps[3], Wait) and isinstance(steps[7], Wait)
    assert 0 <= waits[0] <= 0.5 and 0 <= waits[1] <= 0.8  # doubling, capped
    assert type(result) is UnreachableError


def test_the_first_answer_ends_the_call() -> None:
    steps, result = _drive(exchange(PLAIN, 2, 0, RetryPolicy(), random.Random(1)), lambda i, n: ACK if i else BROKEN)
    assert [s.index for s in steps if isinstance(s, Send)] == [0, 1]
    assert (result.key, result.timestamp, result.context) == ("k", 7, "c1")


@pytest.mark.parametrize("call", [CONDITIONAL, LINEARIZABLE])
def test_a_call_never_sent_twice_moves_on_only_when_nothing_was_sent(call: Any) -> None:
    steps, result = _drive(exchange(call, 3, 0, RetryPolicy(), random.Random(1)), lambda i, n: BROKEN)
    assert steps == [Send(0)] and isinstance(result, AnswerLostError)
    steps, result = _drive(exchange(call, 3, 0, RetryPolicy(), random.Random(1)), lambda i, n: ACK if i else REFUSED)
    assert steps == [Send(0), Send(1)] and result.key == "k"


def test_unavailable_answers_move_on_and_the_last_one_is_raised() -> None:
    closed = _error(503, "closed", "the node is stopping")
    not_joined = _error(503, "consistency_unmet", "the node refused", cause="not_joined")
    old_not_joined = _error(503, "consistency_unmet", "this node has not joined its cluster yet; nothing was written")
    too_few = _error(503, "consistency_unmet", "write at consistency 'quorum' not met", cause="")
    busy = _error(503, "too_many_connections", "retry later")
    steps, result = _drive(exchange(READ, 2, 0, RetryPolicy(retries=0), random.Random(1)), lambda i, n: closed)
    assert len(steps) == 2 and isinstance(result, ClientError) and result.code == "closed"
    # A conditional write moves on from a refusal that says nothing was done, not from a closing node.
    # The cause says the node did nothing (a v0.1.0 node says it in its message); too few answers is no refusal.
    for answer, moves in ((not_joined, True), (old_not_joined, True), (busy, True), (closed, False), (too_few, False)):
        steps, result = _drive(
            exchange(CONDITIONAL, 2, 0, RetryPolicy(retries=0), random.Random(1)),
            lambda i, n, answer=answer: ACK if i else answer,
        )
        assert len(steps) == (2 if moves else 1)
    steps, result = _drive(exchange(PLAIN, 1, 0, RetryPolicy(retries=1), random.Random(1)), lambda i, n: not_joined)
    assert len(steps) == 3 and isinstance(result, ConsistencyUnmetError) and result.cause == "not_joined"
    # Other errors are answers: not retried.
    steps, result = _drive(
        exchange(READ, 2, 0, RetryPolicy(), random.Random(1)), lambda i, n: _error(400, "bad_consistency", "no")
    )
    assert len(steps) == 1 and isinstance(result, ClientError) and result.status == 400


def test_a_failed_tls_handshake_is_not_retried() -> None:
    tls = Failure("https://n", "certificate verify failed", sent=False, tls=True)
    steps, result = _drive(exchange(READ, 2, 0, RetryPolicy(), random.Random(1)), lambda i, n: tls)
    assert len(steps) == 1 and isinstance(result, TLSError)


def test_a_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError):
        RetryPolicy(backoff_s=1.0, backoff_max_s=0.5)
