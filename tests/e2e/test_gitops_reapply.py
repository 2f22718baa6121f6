"""GitOps end to end: re-applying the manifests in Git never undoes a kill or a model rollback.

A GitOps controller (Argo CD, Flux) re-applies what Git says on every sync. The test does
what it does, with kubectl against the real API server while the real operator runs, in
each of these ways:

- ``client-side``: ``kubectl apply`` (three-way merge; Argo CD's default sync).
- ``server-side``: ``kubectl apply --server-side --field-manager=argocd-controller``.
  Replicas land: the operator scales through the scale subresource, which leaves
  ``.spec.replicas`` with no manager. The model does not: the operator manages the model
  env var since the rollback, so the API server refuses with a conflict. (An AgentBudget
  first applied client-side also conflicts on ``.spec.limits``, whose stored entries carry
  the API server's defaults; the apply fails there, after the Deployments.)
- ``server-side-force``: the same with ``--force-conflicts``, as Argo CD's
  ``ServerSideApply=true`` always applies: everything in Git lands.

After an apply that lands, the Deployments run what Git says for a moment (the
Deployment's generation moves); the operator puts back the kill (0 replicas) or the
rolled-back model, says so in an event, keeps the incident it had (no second one in
status.incidents) and still restores exactly the replicas recorded at kill time on
acknowledge.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from fixtures_fleetwarden import crds_installed, start_operator  # noqa: F401 - fixtures
from test_operator_anomalies import Minute, model_env, policy, prometheus_with_history
from test_operator_anomalies import budget as anomaly_budget
from test_operator_budget import (
    Exporter,
    budget,
    condition,
    deployment,
    events,
    exporter,  # noqa: F401 - fixture
    fleet,  # noqa: F401 - fixture
    llm_labels,
    replicas,
    status,
)

FIELD_MANAGER = "argocd-controller"  # the manager name Argo CD applies with
MODES = {
    "client-side": [],
    "server-side": ["--server-side", f"--field-manager={FIELD_MANAGER}"],
    "server-side-force": ["--server-side", f"--field-manager={FIELD_MANAGER}", "--force-conflicts"],
}



def said(cluster: Any, namespace: str, reason: str) -> int:
    """How many times Events with ``reason`` were said: an Event said again is one object whose
    count grows (the operator de-duplicates by what it says), so objects alone undercount."""
    return sum(int(e.get("count") or 1) for e in events(cluster, namespace, reason))

def manifests(*docs: str) -> str:
    """Documents as one multi-document YAML stream (JSON is YAML), as a repository holds them."""
    return "\n---\n".join(docs)


def reapply(cluster: Any, text: str, mode: str) -> Any:
    """Apply ``text`` as a GitOps sync does in ``mode`` (a key of MODES); kubectl's result, not checked."""
    return cluster.kubectl("apply", "-f", "-", *MODES[mode], input=text, check=False)


def generation(cluster: Any, namespace: str, name: str) -> int:
    return int(cluster.get_json("deployment", name, "-n", namespace)["metadata"]["generation"])


def incident_ids(st: dict[str, Any]) -> list[str]:
    return [i["id"] for i in st.get("incidents") or []]


def no_duplicates(ids: list[str]) -> None:
    twice = [i for i, n in Counter(ids).items() if n > 1]
    assert not twice, f"incidents recorded twice in status.incidents: {twice}"


def test_reapply_never_undoes_a_kill(cluster: Any, namespace: str, fleet: dict[str, Any],  # noqa: F811
                                     prometheus: Any, exporter: Exporter, workdir: Path,  # noqa: F811
                                     request: pytest.FixtureRequest) -> None:
    """Client-side and server-side re-apply of Deployments and budget: the operator scales back to 0, same incident."""
    git = manifests(deployment("bot", namespace, 3), deployment("helper", namespace, 2),
                    budget(namespace, hour_cap=1.0))
    cluster.apply(git)
    op = start_operator(cluster, prometheus.url, namespace, workdir, request)
    cluster.wait_for(lambda: condition(status(cluster, namespace), "Ready").get("status") == "True", 60,
                     "budget Ready")
    exporter.set("llm_cost", 2.0, **llm_labels("bot", namespace))  # 200% of the 1 USD hourly cap
    killed = cluster.wait_for(lambda: (s := status(cluster, namespace)).get("state") == "Killed" and s, 60, "Killed")
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == replicas(cluster, namespace, "helper") == 0,
                     30, "both agents scaled to zero")
    incident = killed["killSwitch"]["incident"]
    before = incident_ids(killed)
    no_duplicates(before)

    for mode in MODES:
        held = said(cluster, namespace, "KillSwitchHeld")
        gen = generation(cluster, namespace, "bot")
        result = reapply(cluster, git, mode)
        if mode == "server-side":  # stops at the AgentBudget's .spec.limits, after the Deployments
            assert "deployment.apps/bot serverside-applied" in result.stdout, result.stderr
        else:
            assert result.returncode == 0, f"{mode} apply failed: {result.stderr}"
        # Git's replicas landed (3, a spec change), then the operator scaled to zero again
        cluster.wait_for(lambda gen=gen: generation(cluster, namespace, "bot") >= gen + 2
                         and replicas(cluster, namespace, "bot") == replicas(cluster, namespace, "helper") == 0,
                         30, f"agents back at zero after the {mode} apply")
        cluster.wait_for(lambda held=held: said(cluster, namespace, "KillSwitchHeld") > held, 30,
                         f"a KillSwitchHeld event for the {mode} apply")
        op.wait_evaluations(cluster, 2)
        st = status(cluster, namespace)
        assert st["state"] == "Killed", mode
        assert st["killSwitch"]["incident"] == incident and st["killSwitch"]["engaged"] is True
        assert st["killSwitch"]["replicas"] == {"bot": 3, "helper": 2}
        no_duplicates(incident_ids(st))
        assert incident_ids(st) == before, f"{mode} apply added an incident"
        assert replicas(cluster, namespace, "bot") == 0

    # the acknowledgement still restores exactly what was recorded at kill time
    cluster.kubectl("patch", "agentbudget", "support", "-n", namespace, "--type=merge",
                    "-p", json.dumps({"spec": {"killSwitch": {"acknowledge": incident}}}))
    cluster.wait_for(lambda: replicas(cluster, namespace, "bot") == 3 and replicas(cluster, namespace, "helper") == 2,
                     30, "replicas restored")


def test_reapply_never_undoes_a_model_rollback(cluster: Any, namespace: str, crds_installed: list[str],  # noqa: F811
                                               exporter: Exporter, workdir: Path,  # noqa: F811
                                               request: pytest.FixtureRequest) -> None:
    """Git says MODEL=gpt-4o, whose cost spiked: after either re-apply the operator sets gpt-4o-mini again, same incident."""
    def minute(model: str, cost: float) -> Minute:
        llm = {"agent": "bot", "namespace": namespace, "workflow": "support", "step": "answer", "model": model}
        task = {"agent": "bot", "namespace": namespace, "workflow": "support", "status": "completed"}
        return {"llm_cost": [(llm, cost)], "llm_calls": [({**llm, "status": "ok"}, 4.0)], "tasks": [(task, 2.0)]}

    history = [minute("gpt-4o-mini", 0.02)] * 30 + [minute("gpt-4o", 0.06)] * 10  # 0.01 -> 0.03 USD a task
    prom = prometheus_with_history(workdir, exporter, history, request)
    # Git: the Deployment once ran gpt-4o-mini; a commit moved it to gpt-4o
    cluster.apply(deployment("bot", namespace, 2, model="gpt-4o-mini"))
    git = manifests(deployment("bot", namespace, 2, model="gpt-4o"),
                    policy(namespace, {"modelUpdateSpike": {"minTasks": 5, "baselineTasks": 40, "ratio": 1.8}}),
                    anomaly_budget(namespace))
    cluster.apply(git)
    op = start_operator(cluster, prom.url, namespace, workdir, request)
    cluster.wait_for(lambda: model_env(cluster, namespace) == "gpt-4o-mini", 60, "MODEL rolled back")
    rollbacks = cluster.wait_for(lambda: (status(cluster, namespace).get("model") or {}).get("rollbacks"), 30,
                                 "status.model.rollbacks")
    (rollback,) = rollbacks
    before = incident_ids(status(cluster, namespace))
    assert rollback["incident"] in before
    no_duplicates(before)

    # without --force-conflicts the API server refuses Git's model: the operator manages it now
    gen = generation(cluster, namespace, "bot")
    refused = reapply(cluster, git, "server-side")
    assert refused.returncode != 0 and 'conflict with "' in refused.stderr
    assert '.spec.template.spec.containers[name="agent"].env[name="MODEL"].value' in refused.stderr
    assert generation(cluster, namespace, "bot") == gen and model_env(cluster, namespace) == "gpt-4o-mini"

    for mode in ("client-side", "server-side-force"):
        held = said(cluster, namespace, "ModelRollbackHeld")
        gen = generation(cluster, namespace, "bot")
        result = reapply(cluster, git, mode)
        assert result.returncode == 0, f"{mode} apply failed: {result.stderr}"
        # Git's model landed (a template change), then the operator set the rolled-back one again
        cluster.wait_for(lambda gen=gen: generation(cluster, namespace, "bot") >= gen + 2
                         and model_env(cluster, namespace) == "gpt-4o-mini",
                         30, f"MODEL back at gpt-4o-mini after the {mode} apply")
        cluster.wait_for(lambda held=held: said(cluster, namespace, "ModelRollbackHeld") > held, 30,
                         f"a ModelRollbackHeld event for the {mode} apply")
        op.wait_evaluations(cluster, 2)
        st = status(cluster, namespace)
        assert st["model"]["rollbacks"] == [rollback], f"{mode} apply changed the rollbacks"
        no_duplicates(incident_ids(st))
        assert incident_ids(st) == before, f"{mode} apply added an incident"
        assert model_env(cluster, namespace) == "gpt-4o-mini"
