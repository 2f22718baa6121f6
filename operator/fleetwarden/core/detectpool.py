"""Replay's anomaly detectors in worker processes, sharded by agent (``fleetwarden replay --jobs N``).

The detectors are per agent: each :class:`~fleetwarden.core.detectors.DetectorSet` folds
over its own agent's minutes and nothing else, so they can run anywhere as long as each
agent's minutes reach its detectors in order. :class:`DetectorPool` keeps ``workers``
processes; an agent's detectors live in worker ``agent id % workers`` for the whole replay
(``--jobs N`` starts N of them beside the process that reads the events).

Replay (:class:`fleetwarden.core.replay.Replay`) hands over the minutes of one close at a
time (:meth:`DetectorPool.submit`) and goes on reading events while the workers judge them;
it takes the findings back (:meth:`DetectorPool.collect`) before the next close and puts
them where they would have been found in one process, so the output is the same byte for
byte (``tests/unit/core/test_detectpool.py``). Only one close is in flight: memory stays flat.

A minute crosses the process boundary as a plain tuple of its fields (:func:`pack`;
``AgentMinute``'s read-only mappings cannot be pickled) and is rebuilt there (:func:`unpack`).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import multiprocessing.connection
import signal
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

from fleetwarden.core import detectors, findings, series, spec

# One minute to judge: (agent id, the agent's anomaly parameters the first time it is sent else None, minute)
Job = tuple[int, "spec.AnomalyParams | None", tuple[Any, ...]]


def pack(am: series.AgentMinute) -> tuple[Any, ...]:
    """The fields of a minute in declaration order, its mappings as plain dicts (None when empty)."""
    return (am.agent, am.namespace, am.minute, am.inference_cost_usd, am.tool_cost_usd, am.human_cost_usd, am.tokens,
            am.output_tokens, am.llm_calls, am.tasks_completed, am.tasks_failed, am.tasks_abandoned, am.outcomes,
            dict(am.tool_calls) if am.tool_calls else None, dict(am.tool_costs) if am.tool_costs else None,
            am.model, am.version, am.workflow, am.open_tasks, am.largest_task_tokens, am.largest_task_age,
            am.largest_task_id, am.oldest_task_tokens, am.oldest_task_age, am.oldest_task_id)


def unpack(fields: tuple[Any, ...]) -> series.AgentMinute:
    """The minute :func:`pack` was given (empty mappings are the shared empty one, as the bucketer makes them)."""
    calls, costs = fields[13], fields[14]
    am: series.AgentMinute = series.make(  # type: ignore[operator]
        *fields[:13], MappingProxyType(calls) if calls else series._EMPTY,
        MappingProxyType(costs) if costs else series._EMPTY, *fields[15:])
    return am


def _judge(sets: dict[int, detectors.DetectorSet], batch: list[tuple[int, Job]]
           ) -> list[tuple[int, list[findings.Finding]]]:
    """Each minute of the batch through its agent's detectors: ``[(index in batch, findings)]`` of the
    minutes that found something."""
    out: list[tuple[int, list[findings.Finding]]] = []
    for index, (agent_id, params, fields) in batch:
        am = unpack(fields)
        ds = sets.get(agent_id)
        if ds is None:
            if params is None:
                raise ValueError(f"the first minute of agent {agent_id} came without its parameters")
            ds = sets[agent_id] = detectors.DetectorSet(params, am.agent, am.namespace)
        found = ds.step(am)
        if found:
            out.append((index, found))
    return out


def _worker(conn: multiprocessing.connection.Connection, thresholds: tuple[int, int, int]) -> None:
    """One worker: batches in, ``("ok", findings by index)`` or ``("error", why)`` out. Ctrl-C is the
    parent's to handle (it stops the workers); a parent gone ends the worker quietly. It collects
    garbage at the parent's ``thresholds`` (a spawned process would start at CPython's defaults)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    gc.set_threshold(*thresholds)
    sets: dict[int, detectors.DetectorSet] = {}
    while True:
        try:
            batch = conn.recv()
        except (EOFError, OSError):
            return
        if batch is None:
            return
        reply: tuple[str, object]
        try:
            reply = ("ok", _judge(sets, batch))
        except Exception as exc:  # noqa: BLE001 - handed to the parent, which stops the replay with it
            reply = ("error", f"{type(exc).__name__}: {exc}")
        try:
            conn.send(reply)
        except OSError:  # the parent stopped reading (`replay | head`): nothing waits for this
            return
        if reply[0] != "ok":
            return


class DetectorPool:
    """``workers`` processes running the detectors of the agents given to them (see the module doc)."""

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ValueError("a detector pool needs at least one worker")
        # fork: nothing to re-import, and the caller's main module is not run again (spawn would)
        methods = multiprocessing.get_all_start_methods()
        ctx: Any = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        self._conns: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for _ in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, gc.get_threshold()), daemon=True, name="fleetwarden-detectors")
            proc.start()
            child.close()
            self._conns.append(parent)
            self._procs.append(proc)
        self._busy: list[multiprocessing.connection.Connection] = []

    @property
    def workers(self) -> int:
        return len(self._conns)

    def submit(self, jobs: Sequence[Job]) -> None:
        """Start judging one close's minutes (at most one submission in flight: collect it first)."""
        assert not self._busy, "collect() the last submission first"
        n = len(self._conns)
        shards: list[list[tuple[int, Job]]] = [[] for _ in range(n)]
        for index, job in enumerate(jobs):
            shards[job[0] % n].append((index, job))
        for conn, shard in zip(self._conns, shards, strict=True):
            if shard:
                conn.send(shard)
                self._busy.append(conn)

    def collect(self) -> dict[int, list[findings.Finding]]:
        """The findings of the last submission, by the index of their minute in it."""
        found: dict[int, list[findings.Finding]] = {}
        busy, self._busy = self._busy, []
        for conn in busy:
            try:
                status, payload = conn.recv()
            except (EOFError, OSError):
                raise RuntimeError("a detector worker process ended unexpectedly") from None
            if status != "ok":
                raise RuntimeError(f"a detector worker failed: {payload}")
            found.update(payload)
        return found

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        for conn in self._conns:
            with contextlib.suppress(OSError, ValueError):  # a worker already gone
                conn.send(None)
            conn.close()
        for proc in self._procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()
        self._conns, self._procs, self._busy = [], [], []

    def __enter__(self) -> DetectorPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
