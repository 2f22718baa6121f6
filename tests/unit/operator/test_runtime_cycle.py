"""The evaluation loop around the pure core: one Prometheus fetch per cycle, one status patch,
unknown data never acts. The API server is a recording fake here (unit tests only)."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from fleetwarden import errors
from fleetwarden.adapters import kube, prometheus
from fleetwarden.core import series, spec
from fleetwarden.handlers import hooks, metrics, runtime

NOW = 1_800_000_000.0


class FakeKube:
    """Records what the Runtime asks of the API server."""

    def __init__(self, fail_scale: int | None = None, ignore_scale: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail_scale = fail_scale
        self.ignore_scale = ignore_scale  # the scale is accepted but does not stick (read back differs)
        self.fail_status: int | None = None
        self.replicas: dict[str, int] = {}
        self.models: dict[str, str] = {}

    def scale_to_zero(self, namespace: str, name: str, remember: int, observed: str | None = None) -> None:
        self.calls.append(("try_scale", namespace, name))
        if self.fail_scale is not None:
            raise kube.KubeError("scale refused", self.fail_scale)
        self.calls.append(("scale_to_zero", namespace, name, remember))
        if not self.ignore_scale:
            self.replicas[name] = 0

    def restore(self, namespace: str, name: str, replicas: int, observed: str | None = None) -> None:
        self.calls.append(("restore", namespace, name, replicas))
        self.replicas[name] = replicas

    def set_model(self, namespace: str, name: str, model: str, source: Any, observed: str | None = None) -> None:
        self.calls.append(("set_model", namespace, name, model))
        self.models[name] = model

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        model = self.models.get(name)
        return {"metadata": {"name": name, "namespace": namespace, "annotations": {}},
                "spec": {"replicas": self.replicas.get(name, 2), "template": {"spec": {"containers": [
                    {"name": "agent", "env": [{"name": "MODEL", "value": model}] if model else []}]}}}}

    def patch_budget_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if self.fail_status is not None:
            raise kube.KubeError("status patch refused", self.fail_status)
        self.calls.append(("status", namespace, name, patch))

    def post_event(self, ref: dict[str, Any], type_: str, reason: str, message: str, *, once: bool = False) -> None:
        self.calls.append(("event", ref["kind"], ref["name"], type_, reason))

    def of(self, kind: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] == kind]


class CountingFetcher:
    def __init__(self, hour_spend: float = 0.5, fail: bool = False) -> None:
        self.fetches = 0
        self.hour_spend = hour_spend
        self.fail = fail

    def fetch(self, now: float | None = None) -> prometheus.FleetSnapshot:
        self.fetches += 1
        if self.fail:
            raise errors.PrometheusError("Prometheus query failed (inference_cost): connection refused")
        end = series.minute_of(NOW)
        agents = [("shop", f"bot-{i}") for i in range(50)]
        return prometheus.FleetSnapshot(
            fetched_at=NOW, start=end - 600, end=end,
            minutes={k: [series.AgentMinute(k[1], k[0], m, inference_cost_usd=0.001) for m in range(end - 600, end, 60)]
                     for k in agents},
            spend={k: {(w, c): self.hour_spend for w in spec.Window for c in (False, True)} for k in agents},
            last_sample=dict.fromkeys(agents, NOW), stale_after=45.0, queries=16)


def body(i: int) -> dict[str, Any]:
    return {"apiVersion": spec.API_VERSION, "kind": "AgentBudget",
            "metadata": {"name": f"budget-{i}", "namespace": "shop", "uid": f"uid-{i}", "generation": 1},
            "spec": {"selector": {"matchLabels": {"agent": f"bot-{i}"}}, "limits": [{"window": "hour", "amountUSD": 1}]}}


def deployment(i: int, replicas: int = 2) -> dict[str, Any]:
    return {"metadata": {"name": f"bot-{i}", "namespace": "shop", "uid": f"d-{i}", "labels": {"agent": f"bot-{i}"}},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"name": "agent", "env": []}]}}}}


def make(fetcher: Any, k: FakeKube, monotonic: Any = lambda: 0.0) -> runtime.Runtime:
    return runtime.Runtime(interval=15.0, fetcher=fetcher, kube_client=k, clock=lambda: NOW,  # type: ignore[arg-type]
                           monotonic=monotonic)


def test_one_prometheus_fetch_serves_every_budget_of_a_cycle() -> None:
    """Fifty budgets evaluated in one cycle cost one fleet-wide fetch (16 queries), not fifty."""
    fetcher, k = CountingFetcher(), FakeKube()
    rt = make(fetcher, k)
    deployments = [deployment(i) for i in range(50)]
    for i in range(50):
        rt.reconcile(body(i), deployments)
    assert fetcher.fetches == 1
    assert len(k.of("status")) == 50  # one status patch per budget


def test_an_evaluation_knows_the_minute_of_its_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """The evaluation is handed the end of the snapshot's last complete minute: its detectors'
    results are kept under the data's minute, not the clock's (core/stages.py, data_minute)."""
    from fleetwarden.core import evaluate

    seen: list[Any] = []
    plan = evaluate.plan
    monkeypatch.setattr(evaluate, "plan", lambda inp: seen.append(inp) or plan(inp))
    rt = make(CountingFetcher(), FakeKube())
    rt.reconcile(body(0), [deployment(0)])
    assert [inp.data_end for inp in seen] == [series.minute_of(NOW)]


def test_every_fetch_is_timed_on_the_operators_metrics_failed_ones_too() -> None:
    """``fleetwarden_operator_prometheus_fetch_seconds`` counts each fleet-wide fetch once, whether
    Prometheus answered or not, and none for the budgets served from the snapshot at hand."""
    def fetches_timed() -> float:
        return metrics.REGISTRY.get_sample_value("fleetwarden_operator_prometheus_fetch_seconds_count") or 0.0
    before = fetches_timed()
    rt = make(CountingFetcher(), FakeKube())
    for i in range(5):
        rt.reconcile(body(i), [deployment(i)])
    assert fetches_timed() == before + 1
    rt.new_cycle()
    rt.reconcile(body(0), [deployment(0)])
    make(CountingFetcher(fail=True), FakeKube()).reconcile(body(0), [deployment(0)])
    assert fetches_timed() == before + 3


def test_a_budget_is_parsed_once_per_generation_and_only_its_latest_parse_is_kept() -> None:
    """Each spec edit is a new generation: a long-running operator must not keep every old parse
    (one per edit of every budget), nor the parse of a budget deleted."""
    rt = make(CountingFetcher(), FakeKube())
    first = rt.parse_budget(body(0))
    assert first is not None and rt.parse_budget(body(0)) is first  # the same generation: parsed once
    for generation, cap in ((2, 5), (3, 7), (4, 9)):
        edited = body(0)
        edited["metadata"]["generation"] = generation
        edited["spec"]["limits"][0]["amountUSD"] = cap
        parsed = rt.parse_budget(edited)
        assert parsed is not None and parsed.spec.limits[0].amount_usd == cap  # the edit is read
    rt.parse_budget(body(1))
    assert len(rt._budgets) == 2  # noqa: SLF001 - one parse per budget, not one per generation seen
    rt.forget("uid-0", "shop", "budget-0")  # deleted
    assert set(rt._budgets) == {"uid-1"}  # noqa: SLF001


def policy(version: str, *, calls: int = 100, name: str = "guard", uid: str = "p-1") -> dict[str, Any]:
    return {"apiVersion": spec.API_VERSION, "kind": "CostPolicy",
            "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": version, "generation": 1},
            "spec": {"rateLimits": {"toolCallsPerMinute": calls}}}


def test_a_policy_is_parsed_once_per_version_however_many_budgets_read_it(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Every evaluation in a namespace reads its CostPolicies: each is parsed (and an invalid
    one warned of) once per resourceVersion, an edit is read, a body without a version each time."""
    parsed: list[str] = []
    real = runtime.parse_policies

    def counting(bodies: Any) -> list[spec.CostPolicy]:
        bodies = list(bodies)
        parsed.extend(b["metadata"]["name"] for b in bodies)
        return real(bodies)
    monkeypatch.setattr(runtime, "parse_policies", counting)
    rt = make(CountingFetcher(), FakeKube())
    bad = policy("9", name="broken", uid="p-2")
    bad["spec"] = {"rateLimits": {"toolCallsPerMinute": "many"}}
    for i in range(5):
        rt.reconcile(body(i), [deployment(i)], [policy("1"), bad])
    assert parsed == ["guard", "broken"]
    assert caplog.text.count("CostPolicy shop/broken ignored") == 1
    got = rt._parse_policies([policy("1"), bad])  # noqa: SLF001
    assert [p.spec.rate_limits.tool_calls_per_minute for p in got] == [100]
    got = rt._parse_policies([policy("2", calls=7), bad])  # noqa: SLF001 - edited: a new version
    assert [p.spec.rate_limits.tool_calls_per_minute for p in got] == [7]
    assert parsed == ["guard", "broken", "guard"]
    unversioned = policy("3")
    del unversioned["metadata"]["resourceVersion"]
    rt._parse_policies([unversioned])  # noqa: SLF001
    rt._parse_policies([unversioned])  # noqa: SLF001
    assert parsed == ["guard", "broken", "guard", "guard", "guard"]


def test_status_is_not_written_again_when_nothing_changed() -> None:
    """A second evaluation with the same data writes no status patch."""
    k = FakeKube()
    rt = make(CountingFetcher(), k)
    rt.reconcile(body(0), [deployment(0)])
    rt.reconcile(body(0), [deployment(0)])
    assert len(k.of("status")) == 1


def test_kill_acts_patches_and_explains() -> None:
    """Spend past the kill threshold: scale to zero, the status says Killed, a Warning event on the budget."""
    k = FakeKube()
    decision = make(CountingFetcher(hour_spend=2.0), k).reconcile(body(0), [deployment(0)])
    assert k.of("scale_to_zero") == [("scale_to_zero", "shop", "bot-0", 2)]
    [status_call] = k.of("status")
    assert status_call[3]["state"] == "Killed"
    assert ("event", "AgentBudget", "budget-0", "Warning", "KillSwitchEngaged") in k.calls
    assert decision.status.body()["killSwitch"]["replicas"] == {"bot-0": 2}


def test_prometheus_down_is_unknown_and_nothing_is_scaled() -> None:
    """A Prometheus error: MetricsAvailable=False in the patch, a Warning event, no scaling."""
    k = FakeKube()
    make(CountingFetcher(fail=True), k).reconcile(body(0), [deployment(0)])
    assert k.of("scale_to_zero") == []
    [status_call] = k.of("status")
    available = next(c for c in status_call[3]["conditions"] if c["type"] == "MetricsAvailable")
    assert available["status"] == "False" and "connection refused" in available["message"]
    assert ("event", "AgentBudget", "budget-0", "Warning", "MetricsUnavailable") in k.calls


def test_a_failed_fetch_within_the_grace_goes_on_with_the_last_good_data_then_is_unknown() -> None:
    """With ``prometheus_grace``, a fetch that fails less than the grace after the last good one is
    bridged by it: the budget's status and events stay as they were (no MetricsUnavailable for a
    blip), the failure is counted. Once the last good data is older than the grace, the metrics
    are unknown as without one; a good fetch ends it. Without a good fetch before, a failure is
    unknown at once."""
    def sample(name: str) -> float:
        return metrics.REGISTRY.get_sample_value(name) or 0.0
    now = [0.0]
    fetcher, k = CountingFetcher(), FakeKube()
    rt = runtime.Runtime(interval=15.0, fetcher=fetcher, kube_client=k, clock=lambda: NOW,  # type: ignore[arg-type]
                         monotonic=lambda: now[0], prometheus_grace=30.0)
    rt.reconcile(body(0), [deployment(0)])
    [first] = k.of("status")
    assert condition(first[3], "MetricsAvailable")["status"] == "True"
    bridged = sample("fleetwarden_operator_prometheus_bridged_total")
    fetcher.fail = True
    for at in (15.0, 29.0):
        now[0] = at
        rt.new_cycle()
        rt.reconcile(body(0), [deployment(0)])
        assert k.of("status") == [first]  # nothing changed: nothing written
        assert not [c for c in k.calls if c[0] == "event" and c[4] == "MetricsUnavailable"]
    assert fetcher.fetches == 3
    assert sample("fleetwarden_operator_prometheus_bridged_total") == bridged + 2
    assert sample("fleetwarden_operator_prometheus_failing_seconds") == 14.0  # since the first failure, at 15
    now[0] = 31.0
    rt.new_cycle()
    rt.reconcile(body(0), [deployment(0)])
    unknown = k.of("status")[-1][3]
    assert condition(unknown, "MetricsAvailable")["status"] == "False"
    assert "connection refused" in condition(unknown, "MetricsAvailable")["message"]
    assert ("event", "AgentBudget", "budget-0", "Warning", "MetricsUnavailable") in k.calls
    assert sample("fleetwarden_operator_prometheus_bridged_total") == bridged + 2
    fetcher.fail = False
    now[0] = 40.0
    rt.new_cycle()
    rt.reconcile(body(0), [deployment(0)])
    assert condition(k.of("status")[-1][3], "MetricsAvailable")["status"] == "True"
    assert sample("fleetwarden_operator_prometheus_failing_seconds") == 0.0

    k = FakeKube()
    cold = runtime.Runtime(interval=15.0, fetcher=CountingFetcher(fail=True), kube_client=k,  # type: ignore[arg-type]
                           clock=lambda: NOW, monotonic=lambda: 0.0, prometheus_grace=30.0)
    cold.reconcile(body(0), [deployment(0)])
    assert condition(k.of("status")[-1][3], "MetricsAvailable")["status"] == "False"


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.mark.parametrize(("k", "status", "reason"), [
    (FakeKube(fail_scale=503), 503, "ServiceUnavailable"),
    (FakeKube(fail_scale=403), 403, "Forbidden"),
    (FakeKube(fail_scale=404), 404, "NotFound"),
    (FakeKube(fail_scale=409), 409, "Conflict"),
    (FakeKube(fail_scale=422), 422, "Invalid"),
    (FakeKube(fail_scale=None, ignore_scale=True), None, "NotApplied"),  # accepted, but reads back 2 replicas
])
def test_a_failed_kill_is_never_shown_as_done(k: FakeKube, status: int | None, reason: str) -> None:
    """A kill whose scale failed: the status is not Killed, KillSwitchEngaged=False ScaleFailed with the
    API's reason, a Warning Event ScaleFailed, and on-call is paged (hooks.on_failures)."""
    paged: list[Any] = []
    hooks.on_failures.append(lambda body_, failures: paged.extend(failures))
    try:
        verdict = make(CountingFetcher(hour_spend=2.0), k).reconcile(body(0), [deployment(0)])
    finally:
        hooks.on_failures.pop()
    written = k.of("status")[0][3]
    assert written["state"] != "Killed" and not (written.get("killSwitch") or {}).get("engaged")
    ks = condition(written, "KillSwitchEngaged")
    assert (ks["status"], ks["reason"]) == ("False", "ScaleFailed") and reason in ks["message"]
    assert condition(written, "Ready")["status"] == "False"
    assert ("event", "AgentBudget", "budget-0", "Warning", "ScaleFailed") in k.calls
    assert [(f.status, f.reason) for f in verdict.failures] == [(status, reason)] == [(f.status, f.reason)
                                                                                       for f in paged]


def test_a_failed_action_is_retried_with_capped_backoff() -> None:
    """After a failure the next try waits the interval, then twice as long, ...; a success ends it."""
    clock = [0.0]
    k = FakeKube(fail_scale=503)
    rt = make(CountingFetcher(hour_spend=2.0), k, monotonic=lambda: clock[0])
    tries = []
    for t in (0.0, 5.0, 16.0, 30.0, 47.0, 80.0):
        clock[0] = t
        rt.new_cycle()
        rt.reconcile(body(0), [deployment(0)])
        tries.append(len(k.of("try_scale")))
    assert tries == [1, 1, 2, 2, 3, 3]  # tried at 0, 15 s later, then 30 s after that (16 + 30 = 46)
    k.fail_scale = None
    clock[0] = 200.0
    rt.reconcile(body(0), [deployment(0)])
    written = k.of("status")[-1][3]
    assert written["state"] == "Killed" and condition(written, "KillSwitchEngaged")["status"] == "True"
    assert rt.backoff.waiting(("shop", "ScaleToZero", "bot-0"), 200.0) is None


def test_backoff_is_capped() -> None:
    b = runtime.Backoff(first=15.0, cap=60.0)
    assert [b.failed("x", 0.0) for _ in range(5)] == [15.0, 30.0, 60.0, 60.0, 60.0]


def test_hooks_get_the_findings_and_actions() -> None:
    """hooks.on_findings callables receive the budget body, the findings, the actions and the API."""
    seen: list[tuple[Any, ...]] = []

    def hook(budget_body: dict[str, Any], found: list[Any], actions: list[Any], api: Any) -> None:
        seen.append((budget_body["metadata"]["name"], [f.kind for f in found], len(actions), api))

    hooks.on_findings.append(hook)
    try:
        k = FakeKube()
        make(CountingFetcher(hour_spend=2.0), k).reconcile(body(0), [deployment(0)])
    finally:
        hooks.on_findings.remove(hook)
    assert seen and seen[0][0] == "budget-0" and "kill_switch" in seen[0][1] and seen[0][3] is k


def test_a_failing_hook_does_not_break_the_evaluation() -> None:
    """An exception in a hook is logged; the status is written all the same."""
    def broken(*args: Any) -> None:
        raise RuntimeError("boom")

    hooks.on_findings.append(broken)
    try:
        k = FakeKube()
        make(CountingFetcher(), k).reconcile(body(0), [deployment(0)])
    finally:
        hooks.on_findings.remove(broken)
    assert len(k.of("status")) == 1


def test_status_cache_makes_the_next_cycle_continue_from_the_decision() -> None:
    """The next cycle starts from the status just decided, even if the watch has not caught up."""
    k = FakeKube()
    rt = make(CountingFetcher(hour_spend=2.0), k)
    rt.reconcile(body(0), [deployment(0)])
    rt.reconcile(body(0), [deployment(0, replicas=3)])  # scaled back up by someone
    assert [c[3] for c in k.of("scale_to_zero")] == [2, 2]  # held, remembering the original 2


def test_the_status_kept_between_evaluations_reads_back_as_written_and_is_small() -> None:
    """The status the runtime last wrote is what the next evaluation starts from: kept compactly
    (its JSON without spaces, one byte before it saying how it is read back), it reads back
    equal value for value and type for type (a float stays a float, an int an int), never the
    stale status on the body."""
    k = FakeKube()
    rt = make(CountingFetcher(hour_spend=2.0), k)
    decision = rt.reconcile(body(0), [deployment(0)])
    written = decision.status.body()
    [status_call] = k.of("status")
    assert status_call[3] == written  # the first write is the whole status
    stale = {**body(0), "status": {"state": "Active"}}
    back = rt.previous_status(stale)
    assert back == written and rt.has_status("uid-0")

    def types(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: types(v) for k, v in value.items()}
        if isinstance(value, list):
            return [types(v) for v in value]
        return type(value)
    assert types(back) == types(written)
    assert any(type(v) is float for v in written["spend"].values())
    back["state"] = "changed"  # a caller's copy: the kept status does not change
    assert rt.previous_status(stale) == written
    kept = rt._status["uid-0"]
    assert isinstance(kept, bytes) and len(kept) == 1 + len(json.dumps(written, separators=(",", ":")).encode())
    assert not rt.has_status("uid-1") and rt.previous_status({**body(1), "status": {"state": "Active"}}) == \
        {"state": "Active"}


@pytest.mark.parametrize("odd", [float("inf"), -float("inf"), 2**70, -(2**70), 2**63 - 1, -(2**63), 1e308, 5e-324,
                                 "é\u2028\U0001f600", 2**64 - 1])
def test_a_kept_status_reads_back_every_value_json_can_hold(odd: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kept status is read with orjson when it can, with the standard library when it cannot
    (infinities, ints past 64 bits) or when orjson is not installed: the same values, of the
    same types, either way."""
    status = {"state": "Active", "spend": {"hour": 1.5, "day": 3}, "odd": [odd, {"n": odd}]}
    for reader in (runtime.orjson, None):
        monkeypatch.setattr(runtime, "orjson", reader)
        back = runtime._unpack_status(runtime._pack_status(status))  # noqa: SLF001
        assert back == status and type(back["odd"][0]) is type(odd) and type(back["spend"]["day"]) is int
    monkeypatch.undo()
    assert runtime._pack_status(status)[:1] == (b"j" if isinstance(odd, int) and abs(odd) >= 2**64 else b"o")  # noqa: SLF001


class GatedFetcher(CountingFetcher):
    """A fetcher whose fetches after the first wait until ``gate`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.inside = threading.Event()

    def fetch(self, now: float | None = None) -> prometheus.FleetSnapshot:
        if self.fetches >= 1:
            self.inside.set()
            assert self.gate.wait(10)
        return super().fetch(now)


def test_evaluations_go_on_with_the_last_snapshot_while_one_thread_fetches() -> None:
    """A due fetch is run by one thread; the others get the last good snapshot at once rather
    than wait for it; once it is in, every evaluation gets the new one."""
    fetcher = GatedFetcher()
    rt = make(fetcher, FakeKube())
    first = rt.snapshot()
    rt.new_cycle()
    got: dict[str, prometheus.FleetSnapshot] = {}
    refresher = threading.Thread(target=lambda: got.update(refreshed=rt.snapshot()))
    refresher.start()
    assert fetcher.inside.wait(10)
    assert rt.snapshot() is first  # not blocked behind the fetch under way
    fetcher.gate.set()
    refresher.join(10)
    assert got["refreshed"] is not first and rt.snapshot() is got["refreshed"]
    assert fetcher.fetches == 2


def test_without_a_good_snapshot_evaluations_wait_for_the_fetch() -> None:
    """The first fetch (and one after an error) is waited for: there is nothing to go on with."""
    fetcher = CountingFetcher(fail=True)
    rt = make(fetcher, FakeKube())
    with pytest.raises(errors.PrometheusError):
        rt.snapshot()
    fetcher.fail = False
    rt.new_cycle()
    assert rt.snapshot().fetched_at == NOW and fetcher.fetches == 2


def _planning(monkeypatch: pytest.MonkeyPatch, seen: dict[str, Any]) -> None:
    """Wrap the evaluations' own work (evaluate.plan) to count how many run at once, each
    letting the interpreter lock go for a while, as zstd or a contended lock does."""
    import time

    from fleetwarden.core import evaluate

    plan = evaluate.plan
    lock = threading.Lock()

    def counted(inp: Any) -> Any:
        with lock:
            seen["now"] += 1
            seen["most"] = max(seen["most"], seen["now"])
        time.sleep(0.01)
        with lock:
            seen["now"] -= 1
            seen["planned"].append(inp.budget.metadata.name)
        return plan(inp)

    seen.update(now=0, most=0, planned=[])
    monkeypatch.setattr(evaluate, "plan", counted)


class WaitingKube(FakeKube):
    """Budget 0's status write waits (up to 5 s) until every other budget has been planned."""

    def __init__(self, seen: dict[str, Any], others: int) -> None:
        super().__init__()
        self.seen, self.others = seen, others
        self.waited: bool | None = None

    def patch_budget_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        if name == "budget-0":
            deadline = threading.Event()
            for _ in range(500):
                if sum(1 for n in self.seen["planned"] if n != "budget-0") >= self.others:
                    break
                deadline.wait(0.01)
            self.waited = sum(1 for n in self.seen["planned"] if n != "budget-0") >= self.others
        super().patch_budget_status(namespace, name, patch)


def test_evaluations_do_their_own_work_one_at_a_time_and_wait_outside_the_gate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluations on many threads (the fleet loop's workers) do their own work one at a time
    (Runtime.gate: under one interpreter lock, side by side it only costs switches), and let the
    others on while they wait: a status write that waits for every other budget to be planned
    gets them planned."""
    seen: dict[str, Any] = {}
    _planning(monkeypatch, seen)
    k = WaitingKube(seen, others=7)
    rt = make(CountingFetcher(), k)
    rt.snapshot()
    deployments = [deployment(i) for i in range(8)]
    first = threading.Thread(target=rt.reconcile, args=(body(0), deployments))
    first.start()
    while "budget-0" not in seen["planned"]:
        threading.Event().wait(0.001)
    others = [threading.Thread(target=rt.reconcile, args=(body(i), deployments)) for i in range(1, 8)]
    for t in others:
        t.start()
    for t in [first, *others]:
        t.join(20)
    assert sorted(seen["planned"]) == sorted(f"budget-{i}" for i in range(8))
    assert seen["most"] == 1  # never two at once
    assert k.waited is True  # the write waited outside the gate: the other seven were planned meanwhile
    assert len(k.of("status")) == 8


def test_a_fetch_waits_outside_the_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    """While one evaluation runs a due fetch, the others go on with the last snapshot: the fetch
    is waited for outside the gate."""
    seen: dict[str, Any] = {}
    _planning(monkeypatch, seen)
    fetcher = GatedFetcher()
    rt = make(fetcher, FakeKube())
    deployments = [deployment(i) for i in range(4)]
    rt.reconcile(body(0), deployments)
    rt.new_cycle()
    fetching = threading.Thread(target=rt.reconcile, args=(body(1), deployments))
    fetching.start()
    assert fetcher.inside.wait(10)
    done = []
    others = [threading.Thread(target=lambda i=i: done.append(rt.reconcile(body(i), deployments))) for i in (2, 3)]
    for t in others:
        t.start()
    for t in others:
        t.join(5)
    planned_while_fetching = sorted(seen["planned"])
    fetcher.gate.set()
    fetching.join(10)
    assert planned_while_fetching == ["budget-0", "budget-2", "budget-3"]
    assert len(done) == 2 and fetcher.fetches == 2


@pytest.mark.timeout(30)
def test_an_evaluation_never_waits_for_a_budgets_lock_holding_the_gate() -> None:
    """A runner holding the gate that evaluates a budget whose lock another thread holds (an
    evaluation prompted by an edit, waiting for the gate) lets the gate go while it waits for
    the lock: both end, neither waits for the other for ever."""
    rt = make(CountingFetcher(), FakeKube())
    deployments = [deployment(0)]
    other = threading.Thread(target=rt.reconcile, args=(body(0), deployments))
    with rt.gate.held():
        other.start()
        for _ in range(2000):  # until it holds the budget's lock and waits at the gate
            if rt.gate.waiting() > 0:
                break
            threading.Event().wait(0.005)
        assert rt.gate.waiting() == 1
        rt.reconcile(body(0), deployments)
        assert rt.gate.holding()
    other.join(10)
    assert not other.is_alive() and rt.evaluated("uid-0")


def test_kopfs_budget_index_holds_a_status_only_until_the_runtime_wrote_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """The status a budget's evaluation reads is the runtime's own once it wrote one; the index
    copy keeps the body's status only before that (the first evaluation after a start reads it)."""
    from fleetwarden.handlers import agentbudgets

    k = FakeKube()
    rt = make(CountingFetcher(), k)
    monkeypatch.setattr(agentbudgets, "RUNTIME", rt)
    written = body(0)
    written["status"] = {"state": "Killed", "killSwitch": {"engaged": True}, "observedGeneration": 1}
    before = agentbudgets.budgets_by_namespace(body=written, namespace="shop")["shop"]
    assert before["status"]["state"] == "Killed"  # no status of ours yet: the body's is kept
    assert rt.previous_status(before)["state"] == "Killed"
    rt.reconcile(before, [deployment(0)])
    assert k.of("status") and rt.has_status("uid-0")
    after = agentbudgets.budgets_by_namespace(body=written, namespace="shop")["shop"]
    assert "status" not in after and after["spec"] == written["spec"]
    assert rt.previous_status(after) == rt.previous_status(written) != {}  # what is read is the same
    other = body(1)  # a budget not written by this process yet keeps its status in the index
    other["status"] = {"state": "Active"}
    assert agentbudgets.budgets_by_namespace(body=other, namespace="shop")["shop"]["status"] == {"state": "Active"}


def test_in_a_large_fleet_the_hours_figures_are_worked_out_only_when_the_status_may_be_written(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The hour's figures (burn rate, projection, unit costs, top agents and tools) are never a
    decisive change, and in a large fleet a change of figures alone waits for the budget's turn:
    an evaluation that can write nothing does not work them out. A decisive change (here the first
    status) is written with them; the figures' turn and the heartbeat work them out again; a small
    fleet works them out every time, as before."""
    from fleetwarden.core import figures

    worked: list[float] = []
    real = figures.figures

    def counted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        worked.append(args[1])
        return real(*args, **kwargs)
    monkeypatch.setattr(figures, "figures", counted)
    k, fetcher = FakeKube(), CountingFetcher()
    rt = make(fetcher, k)
    rt._written_at.update({f"other-{i}": 0.0 for i in range(10_000)})  # noqa: SLF001 - a large fleet
    assert rt.figure_seconds() > rt.interval
    first = rt.reconcile(body(0), [deployment(0)])
    assert len(worked) == 1 and len(k.of("status")) == 1
    patch = k.of("status")[0][3]
    assert patch["topAgents"] == [{"name": "bot-0", "costUSD": 0.01}] and patch["burnRateUSDPerHour"] == 0.06
    assert first.status.top_agents is not None  # the decision returned is the one written
    again = rt.reconcile(body(0), [deployment(0)])
    assert len(worked) == 1 and len(k.of("status")) == 1  # nothing written, nothing worked out
    assert again.status.top_agents is None and again.status.spend == first.status.spend
    rt._written_at["uid-0"] -= rt.figure_seconds() + 1  # noqa: SLF001 - the figures' turn
    turn = rt.reconcile(body(0), [deployment(0)])
    assert len(worked) == 2 and turn.status.top_agents == first.status.top_agents
    assert len(k.of("status")) == 1  # the same figures: still nothing to write before the heartbeat
    rt._written_at["uid-0"] -= rt.heartbeat_seconds()  # noqa: SLF001 - the heartbeat
    rt.reconcile(body(0), [deployment(0)])
    assert len(worked) == 3 and len(k.of("status")) == 1  # (the clock stood still: the same status, no patch)
    fetcher.hour_spend = 1.2  # past the cap: a decisive change, written at once with the figures
    rt.new_cycle()
    over = rt.reconcile(body(0), [deployment(0)])
    assert len(worked) == 4 and len(k.of("status")) == 2 and k.of("status")[-1][3]["state"] == "Exceeded"
    assert over.status.top_agents == first.status.top_agents
    fetcher.hour_spend = 0.5  # under it again, just after that write: at once too
    rt.new_cycle()
    under = rt.reconcile(body(0), [deployment(0)])
    assert len(worked) == 5 and len(k.of("status")) == 3 and k.of("status")[-1][3]["state"] == "Active"
    assert under.status.top_agents == first.status.top_agents
    small = make(CountingFetcher(), FakeKube())
    for _ in range(3):
        small.reconcile(body(0), [deployment(0)])
    assert len(worked) == 8


def test_every_figure_of_the_hour_is_a_figure_or_volatile_never_a_decision() -> None:
    """What lets an evaluation skip the hour's figures: every status field they fill is one a
    large fleet writes at its turn (runtime._FIGURES) or with any other change (_VOLATILE)."""
    from fleetwarden.core import figures
    from fleetwarden.core import status as st

    end = series.minute_of(NOW)
    minutes = {"bot-0": [series.AgentMinute("bot-0", "shop", m, inference_cost_usd=0.01, tool_cost_usd=0.002,
                                            tasks_completed=1, outcomes=1.0, tool_calls={"search": 2.0},
                                            tool_costs={"search": 0.002}) for m in range(end - 3600, end, 60)]}
    outcomes = {"bot-0": {m.minute: {"resolved": 1.0} for m in minutes["bot-0"]}}
    figs = figures.figures(minutes, NOW, {spec.Window.month: 3.0}, outcomes, None)
    assert {"burn_rate_usd_per_hour", "projected_month_usd", "cost_per_task_usd", "cost_per_outcome_usd",
            "top_agents", "top_tools"} <= set(figs)
    fields = st.AgentBudgetStatus.model_fields
    for name in figs:
        alias = fields[name].alias or name
        assert alias in runtime._FIGURES or alias in runtime._VOLATILE, alias  # noqa: SLF001


def test_an_evaluation_as_the_prefetch_makes_the_snapshot_due_goes_on_with_the_last_one() -> None:
    """The fleet loop reads the next cycle's data while a cycle still runs. An evaluation that comes
    just as the prefetch makes the snapshot due must not take the fetch over (its budget would wait for
    the whole reading): it goes on with the last snapshot, and the prefetch's thread reads."""
    class Recording(CountingFetcher):
        def __init__(self) -> None:
            super().__init__()
            self.by: list[str] = []

        def fetch(self, now: float | None = None) -> prometheus.FleetSnapshot:
            self.by.append(threading.current_thread().name)
            return super().fetch(now)

    fetcher = Recording()
    rt = make(fetcher, FakeKube())
    rt.reconcile(body(0), [deployment(0)])  # the first snapshot, read by this thread
    made_due = rt.new_cycle
    verdicts: list[Any] = []

    def new_cycle() -> None:  # an evaluation comes the moment the snapshot is due
        made_due()
        evaluation = threading.Thread(target=lambda: verdicts.append(rt.reconcile(body(1), [deployment(1)])),
                                      name="evaluation")
        evaluation.start()
        evaluation.join(30)

    rt.new_cycle = new_cycle  # type: ignore[method-assign]
    reading = threading.Thread(target=rt.prefetch, name="prefetch")
    reading.start()
    reading.join(30)
    assert fetcher.by == [threading.current_thread().name, "prefetch"]
    assert len(verdicts) == 1 and verdicts[0] is not None
