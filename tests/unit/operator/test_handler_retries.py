"""One retry style in the handlers: the project's own errors become kopf.TemporaryError with the one
delay (kopf.PermanentError when trying again cannot help); watch-event handlers, which kopf never
retries, run the work again after that delay, reading the object afresh."""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from test_runtime_cycle import CountingFetcher, FakeKube, body, deployment, make

from fleetwarden import errors
from fleetwarden.adapters import kube
from fleetwarden.handlers import agentbudgets, approvals, policyconfig, retry


@pytest.mark.parametrize(("error", "expected"), [
    (kube.KubeError("patch: 503 unavailable", 503), kopf.TemporaryError),
    (kube.KubeError("patch: 409 conflict", 409), kopf.TemporaryError),
    (kube.KubeError("patch: no answer", None), kopf.TemporaryError),
    (errors.PrometheusError("Prometheus unreachable"), kopf.TemporaryError),
    (kube.KubeError("patch: 403 forbidden", 403), kopf.PermanentError),
    (kube.KubeError("patch: 422 invalid", 422), kopf.PermanentError),
])
def test_own_errors_map_to_kopf_errors(error: errors.ExternalError, expected: type[Exception]) -> None:
    """Transient errors retry after retry.DELAY; the others are permanent; the message and cause are kept."""
    with pytest.raises(expected) as raised, retry.temporary():
        raise error
    assert str(raised.value) == str(error) and raised.value.__cause__ is error
    if expected is kopf.TemporaryError:
        assert raised.value.delay == retry.DELAY  # type: ignore[attr-defined]


def test_other_errors_pass_through() -> None:
    """A bug is not a transient failure: it is not turned into a retry."""
    with pytest.raises(KeyError), retry.temporary():
        raise KeyError("x")


def test_the_budget_handler_retries_a_transient_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 503 on the status write reaches kopf as TemporaryError(delay=retry.DELAY); an invalid budget raises
    nothing. (A failed action is not raised: the status says it and the runtime's backoff retries it.)"""
    k = FakeKube()
    k.fail_status = 503
    monkeypatch.setattr(agentbudgets, "RUNTIME", make(CountingFetcher(hour_spend=2.0), k))
    with pytest.raises(kopf.TemporaryError) as raised:
        agentbudgets._evaluate(body(0), {"shop": [deployment(0)]}, {}, {})  # noqa: SLF001
    assert raised.value.delay == retry.DELAY and isinstance(raised.value.__cause__, kube.KubeError)
    k.fail_status = None
    bad = body(1)
    bad["spec"]["limits"] = [{"window": "hour", "amountUSD": 0}]
    agentbudgets._evaluate(bad, {"shop": [deployment(1)]}, {}, {})  # noqa: SLF001


class FlakyPublish:
    """``policyconfig.publish`` failing with ``errors`` first, then recording what it published."""

    def __init__(self, *errors_: Exception) -> None:
        self.errors = list(errors_)
        self.published: list[dict[str, Any]] = []

    def __call__(self, body: dict[str, Any]) -> bool:
        if self.errors:
            raise self.errors.pop(0)
        self.published.append(body)
        return True


class Policies:
    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.bodies = bodies

    def list_policies(self, namespace: str) -> list[dict[str, Any]]:
        return [b for b in self.bodies if b["metadata"]["namespace"] == namespace]


def policy(generation: int) -> dict[str, Any]:
    return {"metadata": {"name": "support", "namespace": "shop", "uid": "p", "generation": generation},
            "spec": {}}


def _costpolicy_event(monkeypatch: pytest.MonkeyPatch, publish: FlakyPublish) -> dict[str, Any]:
    """Deliver a watch event of generation 1 while the cluster already holds generation 2."""
    monkeypatch.setattr(retry, "DELAY", 0.01)
    monkeypatch.setattr(policyconfig, "publish", publish)
    monkeypatch.setattr(policyconfig.STATE, "kube", Policies([policy(2)]))
    monkeypatch.setattr(policyconfig.STATE, "retries", {})

    async def run() -> dict[str, Any]:
        await policyconfig.on_costpolicy_event({"type": "MODIFIED"}, policy(1))  # type: ignore[arg-type]
        pending = dict(policyconfig.STATE.retries)
        await asyncio.sleep(0.2)
        return pending

    return asyncio.run(run())


def test_a_policy_not_published_is_published_again_from_a_fresh_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A transient failure: after retry.DELAY the namespace's policies are read again and published."""
    publish = FlakyPublish(kube.KubeError("upsert: 503", 503), kube.KubeError("list: no answer", None))
    pending = _costpolicy_event(monkeypatch, publish)
    assert list(pending) == ["shop"]  # one pending retry per namespace
    assert [b["metadata"]["generation"] for b in publish.published] == [2]  # never the stale body
    assert policyconfig.STATE.retries == {}


def test_a_permanent_failure_is_not_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 403 is logged and left for the next event: nothing is scheduled."""
    publish = FlakyPublish(kube.KubeError("upsert: 403 forbidden", 403))
    assert _costpolicy_event(monkeypatch, publish) == {}
    assert publish.published == []


def test_an_approval_not_expired_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Expiry failing transiently is tried again after retry.DELAY, under the request's timer key."""
    calls: list[tuple[str, str]] = []

    def expire_if_due(namespace: str, name: str) -> None:
        calls.append((namespace, name))
        if len(calls) == 1:
            raise kube.KubeError("get: 503", 503)

    monkeypatch.setattr(retry, "DELAY", 0.01)
    monkeypatch.setattr(approvals, "expire_if_due", expire_if_due)
    monkeypatch.setattr(approvals.STATE, "timers", {})

    async def run() -> list[str]:
        await approvals._expire_later("shop", "req", "uid-1")  # noqa: SLF001
        pending = list(approvals.STATE.timers)
        await asyncio.sleep(0.2)
        return pending

    assert asyncio.run(run()) == ["uid-1"]
    assert calls == [("shop", "req"), ("shop", "req")] and approvals.STATE.timers == {}


def test_the_indexes_keep_no_managed_fields_and_leave_kopfs_body_alone() -> None:
    """A budget or policy in kopf's index is a copy without metadata.managedFields (nothing reads
    them; at 10,000 budgets they would be held 10,000 times), the rest of its metadata kept; the
    body kopf passed in is not changed."""
    managed = [{"manager": "fleetwarden", "operation": "Update", "subresource": "status",
                "fieldsV1": {"f:status": {"f:state": {}, "f:spend": {"f:hour": {}}}}}]
    b = body(0)
    b["metadata"] = {**b["metadata"], "generation": 3, "labels": {"team": "a"}, "managedFields": managed}
    ((namespace, kept),) = agentbudgets.budgets_by_namespace(namespace="shop", body=b).items()
    assert namespace == "shop" and "managedFields" not in kept["metadata"]
    assert {k: kept["metadata"][k] for k in ("name", "namespace", "uid", "generation", "labels")} == \
        {k: b["metadata"][k] for k in ("name", "namespace", "uid", "generation", "labels")}
    assert kept["spec"] == b["spec"] and b["metadata"]["managedFields"] is managed
    policy = {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy", "spec": {"rules": []},
              "metadata": {"name": "p", "namespace": "shop", "managedFields": managed}}
    ((_, kept_policy),) = agentbudgets.cost_policies(namespace="shop", body=policy).items()
    assert kept_policy["metadata"] == {"name": "p", "namespace": "shop"} and "managedFields" in policy["metadata"]
