"""Reading agent Deployments, and the status merge patch the operator writes."""

from __future__ import annotations

from typing import Any

import pytest

from fleetwarden.adapters import kube
from fleetwarden.core import spec
from fleetwarden.handlers import runtime


def deployment(env: list[dict[str, str]] | None = None, annotations: dict[str, str] | None = None,
               template_annotations: dict[str, str] | None = None, replicas: int | None = 3,
               containers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {
        "metadata": {"name": "bot", "namespace": "shop", "labels": {"app": "support"},
                     "annotations": annotations or {}},
        "spec": {"replicas": replicas, "template": {
            "metadata": {"annotations": template_annotations or {}},
            "spec": {"containers": containers or [{"name": "agent", "image": "reg.example/bot:1.4.2",
                                                   "env": env or []}]}}},
    }


@pytest.mark.parametrize(("source", "dep", "expected"), [
    ({}, deployment([{"name": "MODEL", "value": "gpt-4o"}]), "gpt-4o"),
    ({"envVar": "LLM"}, deployment([{"name": "MODEL", "value": "gpt-4o"}, {"name": "LLM", "value": "o3"}]), "o3"),
    ({"annotation": "fleetwarden.dev/model"}, deployment(template_annotations={"fleetwarden.dev/model": "x"}), "x"),
    ({"annotation": "fleetwarden.dev/model"}, deployment(annotations={"fleetwarden.dev/model": "y"}), "y"),
    ({"container": "sidecar"}, deployment(containers=[
        {"name": "agent", "env": [{"name": "MODEL", "value": "a"}]},
        {"name": "sidecar", "env": [{"name": "MODEL", "value": "b"}]}]), "b"),
    ({}, deployment(), None),
])
def test_model_is_read_from_env_or_annotation(source: dict[str, Any], dep: dict[str, Any],
                                              expected: str | None) -> None:
    """The model comes from spec.model's env var on its container (first by default), else the annotation."""
    assert kube.read_model(dep, spec.ModelSource.model_validate(source)) == expected


def test_agent_state_reads_replicas_version_and_remembered_count() -> None:
    """AgentDeployment: replicas (default 1), image tag as version, replicas-before-kill."""
    dep = deployment(annotations={kube.REPLICAS_BEFORE_KILL: "4"}, replicas=0)
    state = kube.agent_state(dep, spec.ModelSource())
    assert (state.name, state.namespace, state.replicas, state.version) == ("bot", "shop", 0, "1.4.2")
    assert state.replicas_before == 4
    assert kube.agent_state(deployment(replicas=None), spec.ModelSource()).replicas == 1


def test_api_errors_say_whether_a_retry_may_help() -> None:
    """Conflicts, throttling, server errors and no answer are transient; 403/404/422 are not."""
    assert kube.KubeError("x", 409).transient and kube.KubeError("x", None).transient
    assert not kube.KubeError("x", 404).transient and not kube.KubeError("x", 403).transient


@pytest.mark.parametrize(("old", "new", "patch"), [
    ({"a": 1}, {"a": 1}, {}),
    ({"a": 1}, {"a": 2}, {"a": 2}),
    ({"a": 1, "b": 2}, {"a": 1}, {"b": None}),
    ({"ks": {"engaged": False, "resumedAt": "t"}}, {"ks": {"engaged": True, "incident": "i"}},
     {"ks": {"engaged": True, "incident": "i", "resumedAt": None}}),
    ({"conditions": [{"type": "A"}]}, {"conditions": [{"type": "B"}]}, {"conditions": [{"type": "B"}]}),
])
def test_status_patch_is_a_merge_patch_that_removes_what_is_gone(old: dict[str, Any], new: dict[str, Any],
                                                                 patch: dict[str, Any]) -> None:
    """The status patch sets what changed and nulls keys that disappeared (nested too)."""
    assert runtime.merge_patch(old, new) == patch


def test_select_agents_uses_the_budget_selector_and_namespace() -> None:
    """Only Deployments of the budget's namespace whose labels match are its agents."""
    budget = spec.AgentBudget.model_validate({"metadata": {"name": "b", "namespace": "shop"},
                                              "spec": {"selector": {"matchLabels": {"app": "support"}}}})
    other_ns = deployment()
    other_ns["metadata"] = {**other_ns["metadata"], "namespace": "elsewhere", "name": "far"}
    other_label = deployment()
    other_label["metadata"] = {**other_label["metadata"], "labels": {"app": "sales"}, "name": "sales"}
    agents, chosen = runtime.select_agents(budget, [deployment(), other_ns, other_label])
    assert [a.name for a in agents] == ["bot"] and list(chosen) == ["bot"]


class FakeEvents:
    """The Events of one namespace as the API server keeps them: a name is unique (409)."""

    def __init__(self) -> None:
        self.stored: dict[str, dict[str, Any]] = {}

    def create_namespaced_event(self, namespace: str, body: dict[str, Any]) -> None:
        from kubernetes.client import exceptions

        name = body["metadata"]["name"]
        if name in self.stored:
            raise exceptions.ApiException(status=409, reason="AlreadyExists")
        self.stored[name] = dict(body)

    def read_namespaced_event(self, name: str, namespace: str, _preload_content: bool = True) -> Any:
        import json

        class Response:
            data = json.dumps(self.stored[name]).encode()

        return Response()

    def patch_namespaced_event(self, name: str, namespace: str, patch: dict[str, Any]) -> None:
        self.stored[name].update(patch)


def events_kube() -> tuple[kube.Kube, FakeEvents]:
    k = kube.Kube(kube.client.ApiClient(kube.client.Configuration()))
    fake = FakeEvents()
    k.core = fake  # type: ignore[assignment]
    return k, fake


REF = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "bot", "namespace": "shop", "uid": "u-1"}


def test_an_event_said_again_is_counted_on_the_stored_event_not_posted_anew() -> None:
    """The same (object, type, reason, message) finds its stored Event: one object, count 2; a new
    process (no memory) finds it too. Another message or object is another Event."""
    k, fake = events_kube()
    assert k.post_event(REF, "Warning", "KillSwitchHeld", "bot scaled up; scaled to zero again") is True
    restarted = kube.Kube(kube.client.ApiClient(kube.client.Configuration()))
    restarted.core = fake  # type: ignore[assignment]
    assert restarted.post_event(REF, "Warning", "KillSwitchHeld", "bot scaled up; scaled to zero again") is False
    (event,) = fake.stored.values()
    assert event["count"] == 2 and event["reason"] == "KillSwitchHeld"
    k.post_event(REF, "Warning", "KillSwitchHeld", "another message")
    k.post_event({**REF, "uid": "u-2"}, "Warning", "KillSwitchHeld", "bot scaled up; scaled to zero again")
    assert len(fake.stored) == 3


def test_a_once_event_is_left_as_stored() -> None:
    """``once``: said once per object and problem, whatever the restarts: no new object, no count."""
    k, fake = events_kube()
    assert k.post_event(REF, "Warning", "Ungoverned", "no AgentBudget selects bot", once=True) is True
    assert k.post_event(REF, "Warning", "Ungoverned", "no AgentBudget selects bot", once=True) is False
    (event,) = fake.stored.values()
    assert event["count"] == 1


def test_select_agents_through_the_label_index_chooses_the_same_agents() -> None:
    """The index (built once for a namespace's list, rebuilt when the list changes) gives the
    agents a match against every Deployment gives, for selectors of labels and expressions."""
    import random

    rng = random.Random(5)

    def fleet() -> list[dict[str, Any]]:
        out = []
        for i in range(60):
            d = deployment()
            labels = {k: rng.choice(["a", "b", "c"]) for k in ("team", "tier", "app") if rng.random() < 0.8}
            d["metadata"] = {**d["metadata"], "name": f"d{i}", "labels": labels,
                             "namespace": "shop" if rng.random() < 0.9 else "elsewhere"}
            out.append(d)
        return out

    selectors = [{"matchLabels": {"team": "a"}}, {"matchLabels": {"team": "b", "tier": "c"}},
                 {"matchLabels": {"app": "z"}}, {},
                 {"matchLabels": {"tier": "a"}, "matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["b"]}]},
                 {"matchExpressions": [{"key": "team", "operator": "Exists"}]}]
    budgets = [spec.AgentBudget.model_validate({"metadata": {"name": f"b{i}", "namespace": "shop"},
                                                "spec": {"selector": sel}}) for i, sel in enumerate(selectors)]
    index = runtime.LabelIndex()
    deployments = fleet()
    sizes = []
    for _ in range(2):  # the second time from the index kept
        for budget in budgets:
            linear = runtime.select_agents(budget, deployments)
            assert runtime.select_agents(budget, list(deployments), index) == linear
            sizes.append(len(linear[0]))
    assert index.built == 1 and 0 in sizes and max(sizes) > 10  # the selectors choose some, and none
    changed = list(deployments)
    changed[3] = {**changed[3], "metadata": {**changed[3]["metadata"], "namespace": "shop", "labels": {"team": "a", "tier": "c"}}}
    for budget in budgets:  # one Deployment relabelled (a new object, as kopf's index gives)
        assert runtime.select_agents(budget, changed, index) == runtime.select_agents(budget, changed)
    assert index.built == 2
    assert [a.name for a in runtime.select_agents(budgets[0], changed, index)[0]].count("d3") == 1


def test_the_index_reads_each_agent_once_while_its_namespace_list_is_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent a Deployment is (replicas, model, version) is read once per Deployment and place of
    the model while the namespace's list holds the same objects, whichever budgets and lists
    (a new list of the same objects each cycle) ask; a Deployment changed (a new object, as the
    indexes give) is read again and its new replicas and model seen; another place of the model
    is read on its own."""
    reads: list[str] = []
    real = kube.agent_state

    def counted(d: Any, source: spec.ModelSource) -> Any:
        reads.append(d["metadata"]["name"])
        return real(d, source)
    monkeypatch.setattr(kube, "agent_state", counted)

    def named(name: str, replicas: int, model: str) -> dict[str, Any]:
        d = deployment(env=[{"name": "MODEL", "value": model}], annotations={"model": f"a-{model}"}, replicas=replicas)
        d["metadata"] = {**d["metadata"], "name": name, "labels": {"app": "support", "agent": name}}
        return d

    def budget(name: str, selector: dict[str, Any], model: dict[str, Any] | None = None) -> spec.AgentBudget:
        doc: dict[str, Any] = {"selector": selector}
        if model is not None:
            doc["model"] = model
        return spec.AgentBudget.model_validate({"metadata": {"name": name, "namespace": "shop"}, "spec": doc})

    index = runtime.LabelIndex()
    fleet = [named(f"a{i}", 2, "gpt-4o") for i in range(4)]
    budgets = [budget("all", {"matchLabels": {"app": "support"}}), budget("one", {"matchLabels": {"agent": "a1"}}),
               budget("expr", {"matchExpressions": [{"key": "agent", "operator": "In", "values": ["a2", "a3"]}]})]
    for _ in range(3):  # three cycles, each a new list of the same objects
        listed = list(fleet)
        for b in budgets:
            agents, _ = runtime.select_agents(b, listed, index)
            counted_so_far = len(reads)
            assert agents == runtime.select_agents(b, listed)[0]  # (read without the index: not counted)
            del reads[counted_so_far:]
    assert sorted(reads) == ["a0", "a1", "a2", "a3"] and index.built == 1
    reads.clear()
    fleet[1] = named("a1", 0, "gpt-4o-mini")  # scaled to zero, its model rolled back: a new object
    agents, _ = runtime.select_agents(budgets[1], list(fleet), index)
    assert [(a.name, a.replicas, a.model) for a in agents] == [("a1", 0, "gpt-4o-mini")]
    all_agents, _ = runtime.select_agents(budgets[0], list(fleet), index)
    assert [(a.name, a.replicas, a.model) for a in all_agents][:2] == [("a0", 2, "gpt-4o"), ("a1", 0, "gpt-4o-mini")]
    assert sorted(reads) == ["a0", "a1", "a2", "a3"] and index.built == 2  # read again once, with the new list
    reads.clear()
    by_annotation = budget("ann", {"matchLabels": {"agent": "a1"}}, {"envVar": None, "annotation": "model"})
    agents, _ = runtime.select_agents(by_annotation, list(fleet), index)
    assert [a.model for a in agents] == ["a-gpt-4o-mini"] and reads == ["a1"]
