"""A large fleet's figure writes and heartbeats go out from the writer's own threads
(runtime.StatusWriter): an evaluation does not wait for their PATCH, a budget's writes keep
their order, a decisive write comes after the budget's write under way and patches over what
it wrote, and a write that fails is written by the next evaluation. Fakes only (the API
server); the operator's e2e tests and benchmarks/operator_scale.py run it on the real parts."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fleetwarden.adapters import kube
from fleetwarden.handlers import fleet, runtime

WAIT = 30.0  # how long a held PATCH waits for the test to let it go (never reached when all is well)


class _HeldPatches:
    """An API server whose status PATCHes wait until ``release`` is set (while ``hold`` is), or
    fail with ``fail`` (an HTTP status)."""

    def __init__(self) -> None:
        self.patches: list[tuple[str, dict[str, Any]]] = []
        self.started: list[str] = []
        self.hold = False
        self.release = threading.Event()
        self.fail: int | None = None

    def patch_budget_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        self.started.append(name)
        if self.hold:
            self.release.wait(WAIT)
        if self.fail is not None:
            raise kube.KubeError(f"patch status of agentbudget {namespace}/{name}: boom", self.fail)
        self.patches.append((name, patch))


def _large_fleet(rt: runtime.Runtime, written: dict[str, dict[str, Any]], k: _HeldPatches) -> None:
    """10,000 budgets written so far (figures wait for their turn), ``written`` among them, each
    with its status written and its figures' turn come."""
    for uid, status in written.items():
        rt._write_status(k, uid, "ns", uid, {}, status)  # noqa: SLF001 - the first writes: changes
    rt._written_at.update({f"other-{i}": 0.0 for i in range(10_000 - len(written))})  # noqa: SLF001
    assert rt.figure_seconds() > 0
    for uid in written:
        rt._written_at[uid] -= rt.figure_seconds() + 1  # noqa: SLF001
    k.patches.clear()
    k.started.clear()


def _seen(writer: runtime.StatusWriter) -> threading.Event:
    """An event set once a write settles a budget (StatusWriter.settle)."""
    settling = threading.Event()
    settle = writer.settle

    def settle_seen(uid: str) -> bool:
        settling.set()
        return settle(uid)
    writer.settle = settle_seen  # type: ignore[method-assign]
    return settling


BASE = {"state": "Active", "spend": {"hour": 4.0}, "summary": {"percentUsed": 40.0}}
GROWN = {**BASE, "spend": {"hour": 5.5}, "summary": {"percentUsed": 55.0}}


def test_a_large_fleets_figure_write_does_not_hold_the_evaluation_and_is_kept_once_written() -> None:
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE}, k)
    k.hold = True
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001 - returns with its PATCH held
    assert not k.patches  # not sent yet: the evaluation went on
    assert rt.figures_wait("a")  # its turn is taken: the next evaluations work no figures out for it
    assert rt.previous_status({"metadata": {"uid": "a"}}) == BASE  # what the API server holds so far
    k.release.set()
    assert rt.writer.drain(WAIT)
    assert k.patches == [("a", {"spend": {"hour": 5.5}, "summary": {"percentUsed": 55.0}})]
    assert rt.previous_status({"metadata": {"uid": "a"}}) == GROWN


def test_a_decisive_write_comes_after_the_budgets_figure_write_under_way_and_patches_over_it() -> None:
    """The evaluation that decides read the status before the figure write landed; its patch is
    worked out over what that write left, and sent after it."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE}, k)
    k.hold = True
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001
    while not k.started:  # the figure write is under way (held)
        threading.Event().wait(0.01)
    exceeded = {**GROWN, "state": "Exceeded"}
    decided = threading.Thread(target=rt._write_status, args=(k, "a", "ns", "a", BASE, exceeded))  # noqa: SLF001
    settling = _seen(rt.writer)
    decided.start()
    assert settling.wait(WAIT)  # the decision waits for it
    k.release.set()
    decided.join(WAIT)
    assert rt.writer.drain(WAIT)
    assert k.patches == [("a", {"spend": {"hour": 5.5}, "summary": {"percentUsed": 55.0}}),
                         ("a", {"state": "Exceeded"})]
    assert rt.previous_status({"metadata": {"uid": "a"}}) == exceeded


def test_a_decisive_write_waits_for_the_budgets_write_under_way_outside_the_gate() -> None:
    """While it waits, other evaluations go on: the gate (one evaluation's work at a time) is free."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE}, k)
    k.hold = True
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001
    settling = _seen(rt.writer)

    def decide() -> None:
        with rt.gate.held():
            rt._write_status(k, "a", "ns", "a", BASE, {**GROWN, "state": "Exceeded"})  # noqa: SLF001
    while not k.started:  # the figure write is under way (held)
        threading.Event().wait(0.01)
    decided = threading.Thread(target=decide)
    decided.start()
    assert settling.wait(WAIT)
    free = rt.gate._lock.acquire(timeout=5.0)  # noqa: SLF001 - another evaluation would come in
    if free:
        rt.gate._lock.release()  # noqa: SLF001
    k.release.set()
    decided.join(WAIT)
    assert free
    assert [name for name, _ in k.patches] == ["a", "a"] and k.patches[-1][1] == {"state": "Exceeded"}


def test_a_large_fleets_figures_and_heartbeats_wait_while_the_evaluations_run_behind() -> None:
    """While the fleet loop runs behind its turns (Runtime.behind), a figure write whose turn has
    come waits, its figures are not even worked out, and so does a heartbeat; a decisive write
    goes out at once. Once the loop is back on time, the figures go out."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE, "b": BASE, "c": BASE}, k)
    behind = True
    rt.behind = lambda: behind
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001
    rt._written_at["c"] -= rt.heartbeat_seconds()  # noqa: SLF001 - its heartbeat is due too
    rt._write_status(k, "c", "ns", "c", BASE, {**BASE, "lastEvaluated": "later"})  # noqa: SLF001
    assert rt.writer.drain(WAIT)
    assert not k.started  # neither went out
    assert rt.figures_wait("a") and rt.figures_wait("c")
    rt._write_status(k, "b", "ns", "b", BASE, {**BASE, "state": "Exceeded"})  # noqa: SLF001
    assert k.patches == [("b", {"state": "Exceeded"})]  # a decision is not held back
    behind = False
    assert not rt.figures_wait("a")
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001
    rt._write_status(k, "c", "ns", "c", BASE, {**BASE, "lastEvaluated": "later"})  # noqa: SLF001
    assert rt.writer.drain(WAIT)
    assert sorted(name for name, _ in k.patches) == ["a", "b", "c"]


def test_figures_held_past_their_turn_are_counted_until_worked_out_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """figures_overdue and figures_held (the operator's ..._figures_overdue_seconds and
    ..._budgets): a budget whose figures' turn has come but which an evaluation holds (the
    evaluations run behind, or the figure writes are at their rate) counts from that first
    evaluation, not from a later one; not before its turn; and no more once an evaluation works
    its figures out again: written, found unchanged, or the budget deleted."""
    clock = [1_000.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE, "b": BASE, "c": BASE}, k)
    assert (rt.figures_held(), rt.figures_overdue()) == (0, 0.0)
    behind = True
    rt.behind = lambda: behind
    assert rt.figures_wait("a")
    rt._written_at["fresh"] = clock[0]  # noqa: SLF001 - written just now: its turn is to come
    assert rt.figures_wait("fresh")
    assert rt.figures_held() == 1
    clock[0] += 40.0
    assert rt.figures_wait("a") and rt.figures_wait("b")  # a held again: still counted from the first
    assert (rt.figures_held(), rt.figures_overdue()) == (2, 40.0)
    behind = False
    assert not rt.figures_wait("a") and rt.figures_held() == 2  # worked out, not yet written
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001 - written
    rt._write_status(k, "b", "ns", "b", BASE, BASE)  # noqa: SLF001 - unchanged: as written
    assert rt.writer.drain(WAIT)
    assert [name for name, _ in k.patches] == ["a"]
    assert (rt.figures_held(), rt.figures_overdue()) == (0, 0.0)
    assert not rt.figures_wait("c")
    behind = True  # between its evaluation's check and its write: held by the write
    rt._write_status(k, "c", "ns", "c", BASE, GROWN)  # noqa: SLF001
    assert rt.figures_held() == 1
    clock[0] += 5.0
    assert rt.figures_overdue() == 5.0
    rt.forget("c", "ns", "c")
    assert (rt.figures_held(), rt.figures_overdue()) == (0, 0.0)


def test_the_operators_metrics_page_and_fleet_loop_read_the_figures_held(monkeypatch: pytest.MonkeyPatch) -> None:
    """The operator's runtime (agentbudgets.get_runtime) is what ..._figures_overdue_seconds and
    ..._figures_overdue_budgets read, and what the fleet loop's ``held_since`` reads."""
    from fleetwarden.handlers import agentbudgets, metrics
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    monkeypatch.setattr(agentbudgets, "RUNTIME", None)
    monkeypatch.setattr(runtime, "build", lambda _settings: rt)
    assert agentbudgets.get_runtime() is rt
    rt._held.update({"a": runtime.time.monotonic() - 600.0, "b": runtime.time.monotonic()})  # noqa: SLF001
    try:
        assert metrics.REGISTRY.get_sample_value("fleetwarden_operator_figures_overdue_budgets") == 2
        assert metrics.REGISTRY.get_sample_value("fleetwarden_operator_figures_overdue_seconds") >= 600.0
        # ... and what the fleet loop reads to take the longest held first (fleet.HELD_FIRST)
        item = fleet.Item({"metadata": {"namespace": "ns", "name": "a", "uid": "a"}}, [], [], [])
        assert agentbudgets._held_since(item) == rt._held["a"]  # noqa: SLF001
        assert agentbudgets._held_since(fleet.Item({"metadata": {"uid": "c"}}, [], [], [])) is None  # noqa: SLF001
    finally:
        rt._held.clear()  # noqa: SLF001 - the gauges stay wired to it: steady for the tests after


def test_a_figure_write_that_fails_is_written_by_the_next_evaluation(caplog: pytest.LogCaptureFixture) -> None:
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE}, k)
    k.fail = 500
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001
    assert rt.writer.drain(WAIT)
    assert not k.patches and "status of AgentBudget ns/a not written" in caplog.text
    assert not rt.figures_wait("a")  # its turn has come again
    assert rt.previous_status({"metadata": {"uid": "a"}}) == BASE  # not shown as written
    k.fail = None
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001
    assert rt.writer.drain(WAIT)
    assert k.patches == [("a", {"spend": {"hour": 5.5}, "summary": {"percentUsed": 55.0}})]


def test_the_writer_keeps_each_budgets_order_and_a_later_write_replaces_a_queued_one() -> None:
    writer = runtime.StatusWriter(threads=2, limit=3)
    sent: list[str] = []
    gate = threading.Event()

    def write(what: str, hold: bool = False) -> Any:
        def send() -> None:
            if hold:
                gate.wait(WAIT)
            sent.append(what)
        return send
    assert writer.submit("a", write("a1", hold=True))
    assert writer.submit("b", write("b1", hold=True))
    while True:  # both threads hold a write under way
        with writer._cond:  # noqa: SLF001
            if len(writer._sending) == 2:  # noqa: SLF001
                break
        threading.Event().wait(0.01)
    assert writer.submit("a", write("a2"))
    assert writer.submit("a", write("a3"))  # replaces a2, which was still queued
    assert writer.submit("c", write("c1"))
    assert writer.submit("d", write("d1"))
    assert not writer.submit("e", write("e1"))  # three queued: the limit
    assert not writer.room()
    assert writer.settle("d")  # queued, not sent: dropped at once
    assert writer.submit("e", write("e1"))
    gate.set()
    assert writer.drain(WAIT)
    assert sorted(sent) == ["a1", "a3", "b1", "c1", "e1"]
    assert sent.index("a1") < sent.index("a3")


def test_a_deleted_budget_is_forgotten_after_its_write_under_way_lands() -> None:
    """A budget deleted while its figure write is being sent: the runtime forgets it only once
    that PATCH has landed, so nothing of it is kept afterwards (the write's landing kept its
    status again, for a budget no longer there); a write of it still queued is dropped unsent."""
    rt = runtime.Runtime(interval=15.0, fetcher=None)
    k = _HeldPatches()
    _large_fleet(rt, {"a": BASE}, k)
    k.hold = True
    rt._write_status(k, "a", "ns", "a", BASE, GROWN)  # noqa: SLF001 - its PATCH held under way
    while not k.started:
        threading.Event().wait(0.01)
    later: list[str] = []
    assert rt.writer.submit("a", lambda: later.append("a2"))  # queued behind the one under way
    forgetting = threading.Thread(target=rt.forget, args=("a", "ns", "a"))
    settling = _seen(rt.writer)
    forgetting.start()
    assert settling.wait(WAIT)
    k.release.set()
    forgetting.join(WAIT)
    assert not forgetting.is_alive()
    assert k.patches == [("a", {"spend": {"hour": 5.5}, "summary": {"percentUsed": 55.0}})]
    assert not rt.has_status("a")
    assert "a" not in rt._written_at  # noqa: SLF001
    assert rt.writer.pending() == 0
    assert later == []  # the queued write was dropped, never sent


def test_settling_a_budget_drops_its_queued_write() -> None:
    writer = runtime.StatusWriter(threads=1, limit=4)
    sent: list[str] = []
    gate = threading.Event()

    def held() -> None:
        gate.wait(WAIT)
        sent.append("b1")
    assert writer.submit("b", held)
    assert writer.submit("a", lambda: sent.append("a1"))  # queued behind b1 (one thread)
    assert writer.settle("a")  # dropped
    assert not writer.settle("a")  # nothing of it left
    gate.set()
    assert writer.drain(WAIT)
    assert sent == ["b1"]


def test_a_bucket_of_under_one_write_a_second_still_writes_one_at_a_time() -> None:
    """A rate under one a second (a second's worth is less than one write) holds one write, and
    refills it at that rate."""
    bucket = runtime.TokenBucket(0.05, 0.0)
    assert bucket.ready(0.0) and bucket.take(0.0)
    assert not bucket.take(10.0)
    assert bucket.take(20.0)
    assert not bucket.ready(20.0)
    bucket = runtime.TokenBucket(20.0, 0.0)
    assert sum(bucket.take(0.0) for _ in range(30)) == 20  # a second's worth at once, no more


def test_a_bucket_counts_no_time_twice_when_the_clock_comes_out_of_order() -> None:
    """Threads read the clock before they take the bucket's lock: a ``now`` earlier than the last
    one adds nothing, and the time up to the last one is not counted again."""
    bucket = runtime.TokenBucket(1.0, 0.0)
    assert bucket.take(0.0)
    assert bucket.take(1.0)  # refilled by the second up to 1.0
    assert not bucket.take(0.5)  # an earlier clock: nothing added
    assert not bucket.take(1.5)  # half a second since 1.0, not a whole one since 0.5
    assert bucket.take(2.0)
