"""The per-task token cap holds when a task's model calls run together: each call reserves its
prompt estimate plus max_tokens before it starts and settles when it is recorded."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import sdk
from fleetwarden.core import spec

CAP = 1000
PROMPT, MAX_TOKENS, USED = 100, 200, 250  # each call holds 300 and uses 250: three fit at once
CALLS = 10


def _task(cap: int = CAP, **fields: object) -> sdk.Task:
    policy = sdk.GuardrailPolicy(spec.CostPolicySpec.model_validate({"tokenCaps": {"perTask": cap}, **fields}))
    return sdk.Tracker("bot", registry=CollectorRegistry(), policy=policy).start_task("w")


def _record(task: sdk.Task) -> None:
    task.llm_call("m", input_tokens=PROMPT, output_tokens=USED - PROMPT, cost_usd=0.0)


def test_threads_of_one_task_never_pass_the_cap_together() -> None:
    """Ten threads start a call at once and hold it until all have tried: three are let through
    (3 x 300 <= 1000), seven are refused, and the task ends under its cap with nothing held."""
    task = _task()
    start = threading.Barrier(CALLS)
    tried = threading.Semaphore(0)
    all_tried = threading.Event()
    admitted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def one_call(i: int) -> None:
        start.wait()
        try:
            with task.llm_guard(PROMPT, max_tokens=MAX_TOKENS):
                with lock:
                    admitted.append(i)
                tried.release()
                assert all_tried.wait(10)
                _record(task)
        except sdk.TokenCapExceeded:
            with lock:
                refused.append(i)
            tried.release()

    threads = [threading.Thread(target=one_call, args=(i,)) for i in range(CALLS)]
    for t in threads:
        t.start()
    for _ in range(CALLS):
        assert tried.acquire(timeout=10)
    all_tried.set()
    for t in threads:
        t.join(10)
    assert (len(admitted), len(refused)) == (3, CALLS - 3)
    assert task.tokens == 3 * USED <= CAP and task.reserved == 0


def test_asyncio_calls_of_one_task_never_pass_the_cap_together() -> None:
    """The same with asyncio tasks that await their model call inside the guard."""
    task = _task()
    gate = asyncio.Event()

    async def one_call() -> bool:
        try:
            with task.llm_guard(PROMPT, max_tokens=MAX_TOKENS):
                await gate.wait()
                _record(task)
                return True
        except sdk.TokenCapExceeded:
            return False

    async def main() -> list[bool]:
        calls = [asyncio.create_task(one_call()) for _ in range(CALLS)]
        await asyncio.sleep(0.01)  # every call has reserved or been refused
        gate.set()
        return await asyncio.gather(*calls)

    assert sum(asyncio.run(main())) == 3
    assert task.tokens == 3 * USED and task.reserved == 0


def test_a_settled_call_frees_what_it_did_not_use() -> None:
    """A call holds prompt + max_tokens while under way and only what it used afterwards."""
    task = _task()
    with task.llm_guard(PROMPT, max_tokens=MAX_TOKENS):
        assert task.reserved == PROMPT + MAX_TOKENS
        _record(task)
        assert (task.reserved, task.tokens) == (0, USED)
    r = task.reserve_llm(PROMPT, max_tokens=MAX_TOKENS)
    with pytest.raises(sdk.TokenCapExceeded, match="250 tokens used \\+ 300 reserved \\+ 500 estimated"):
        task.check_llm(500)
    task.llm_call("m", input_tokens=10, output_tokens=10, cost_usd=0.0, reservation=r)
    assert (task.reserved, task.tokens) == (0, USED + 20)


def test_a_call_that_fails_before_it_is_recorded_gives_its_tokens_back() -> None:
    task = _task()
    with pytest.raises(RuntimeError), task.llm_guard(PROMPT, max_tokens=MAX_TOKENS):
        raise RuntimeError("provider down")
    assert task.reserved == 0
    r = task.reserve_llm(CAP)
    r.release()
    r.release()  # twice is a no-op
    assert task.reserved == 0


def test_dry_run_reserves_but_never_refuses() -> None:
    """In DryRun a call past the cap goes (and holds its tokens, so the next is judged on them too)."""
    task = _task(enforcement="DryRun")
    for _ in range(5):
        task.reserve_llm(PROMPT, max_tokens=MAX_TOKENS)
    assert task.reserved == 5 * (PROMPT + MAX_TOKENS)
