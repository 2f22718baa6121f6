"""Incident records and Alertmanager alerts, after every evaluation (``hooks.on_findings``).

Where an incident is kept:

- the ConfigMap ``fleetwarden-incidents`` in the budget's namespace: one key per incident
  id, the full record as JSON (``fleetwarden.core.incidents.Incident``), at most
  ``incidents.MAX_RECORDS`` (open ones and the newest kept), read by ``fleetwarden incident``;
- the annotation ``fleetwarden.dev/incidents`` on the agent's Deployment and on the
  AgentBudget: a JSON list of the newest ``incidents.MAX_ANNOTATION_ENTRIES`` (id, kind,
  time, status, summary).

Idempotent by id: the id is deterministic (``findings.incident_id``), merging a finding
already recorded changes nothing, and nothing is written when nothing changed; so the
operator's fold of its lookback window every cycle, or a restart, never duplicates a
record. A kill-switch incident is resolved when ``spec.killSwitch.acknowledge`` names it.

Both hooks never raise into the evaluation: Kubernetes failures are logged and retried
by the next cycle (the same findings come again); alerts go through the non-blocking
:class:`fleetwarden.adapters.alertmanager.Notifier`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from fleetwarden import errors
from fleetwarden.adapters import alertmanager, configmaps, kube
from fleetwarden.core import decision, findings, incidents, timefmt
from fleetwarden.handlers import hooks

log = logging.getLogger(__name__)

CONFIGMAP = "fleetwarden-incidents"
ANNOTATION = "fleetwarden.dev/incidents"
LABELS = {"fleetwarden.dev/record": "incidents"}


# ---------------------------------------------------------------- pure: actions -> records


def _action_entries(action: Any, now: float) -> list[tuple[str | None, str | None, incidents.ActionTaken]]:
    """``(agent, incident id or None, ActionTaken)`` for one evaluation action."""
    at = timefmt.rfc3339(now)
    if isinstance(action, decision.ScaleToZero):
        verb = {"suspend": "suspend", "step": "step"}.get(action.reason, "kill")
        return [(action.agent, None, incidents.ActionTaken(
            at, verb, f"scaled {action.agent} from {action.replicas_to_remember} to 0 replicas ({action.reason})"))]
    if isinstance(action, decision.RestoreReplicas):
        return [(action.agent, None, incidents.ActionTaken(
            at, "resume", f"restored {action.agent} to {action.replicas} replicas ({action.reason})"))]
    if isinstance(action, decision.SetModel):
        return [(action.agent, action.incident, incidents.ActionTaken(
            at, "rollback" if action.reason.startswith("rollback") else "set-model",
            f"{action.agent}: model {action.previous or '?'} -> {action.model} ({action.reason})"))]
    if isinstance(action, decision.Notify):
        return [(action.finding.agent, action.incident, incidents.ActionTaken(
            timefmt.rfc3339(action.finding.time), "alert", "notified (Event, Alertmanager when configured)"))]
    return []


_VERB_FOR_FINDING_ACTION = {"kill": {"kill", "suspend"}, "pause": {"kill", "suspend"},
                            "rollback": {"rollback", "set-model"}}


def plan(budget_body: Mapping[str, Any], found: Sequence[findings.Finding], actions: Iterable[Any],
         existing: Mapping[str, incidents.Incident], now: float
         ) -> dict[str, incidents.Incident]:
    """The records after this evaluation: ``existing`` with ``found`` merged in, the actions
    attached to the incidents they served, acknowledged kill switches resolved.

    An action names its incident (model changes, notifications) or is attached to the
    incidents of the same agent whose policy action it carries out (a scale to zero to a
    ``kill`` finding). An action already recorded with the same verb and detail is not
    recorded again (only its first time counts)."""
    entries = [e for a in actions for e in _action_entries(a, now)]
    items = []
    for finding in found:
        iid = findings.incident_id(finding)
        mine = []
        for agent, incident, taken in entries:
            if incident is not None:
                if incident == iid:
                    mine.append(taken)
            elif agent == finding.agent and taken.action in _VERB_FOR_FINDING_ACTION.get(finding.action, ()):
                mine.append(taken)
        previous = existing.get(iid)
        if previous is not None:
            known = {(a.action, a.detail) for a in previous.actions}
            mine = [a for a in mine if (a.action, a.detail) not in known]
        items.append((iid, finding, mine))
    records = incidents.fold(existing, items)
    ack = ((budget_body.get("spec") or {}).get("killSwitch") or {}).get("acknowledge")
    if ack and ack in records and records[ack].status == incidents.OPEN:
        records[ack] = incidents.resolve(records[ack], now, "kill switch acknowledged (spec.killSwitch.acknowledge)")
    return incidents.bound(records)


def read_records(configmap: Mapping[str, Any] | None) -> tuple[dict[str, incidents.Incident], list[str]]:
    """Records in the ConfigMap, and the keys that did not parse (kept untouched, logged)."""
    records: dict[str, incidents.Incident] = {}
    broken: list[str] = []
    for key, value in ((configmap or {}).get("data") or {}).items():
        try:
            records[key] = incidents.Incident.from_dict(json.loads(value))
        except (ValueError, KeyError, TypeError):
            broken.append(key)
    return records, broken


# ---------------------------------------------------------------- I/O


class Recorder:
    """Writes incident records; ``clock`` is injectable for tests."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._kube: kube.Kube | None = None
        # budget uid -> what it last recorded; the same input again needs no API call.
        self._last: dict[str, tuple[Any, ...]] = {}

    def _client(self, api: Any) -> kube.Kube:
        if isinstance(api, kube.Kube):
            return api
        if self._kube is None:
            self._kube = kube.Kube(kube.load_config())
        return self._kube

    def record(self, budget_body: Mapping[str, Any], found: Sequence[findings.Finding], actions: Sequence[Any],
               api: Any = None) -> dict[str, incidents.Incident]:
        """Merge ``found`` into the namespace's records; write what changed. Returns the
        records of this call's incidents (after the merge)."""
        meta = budget_body.get("metadata") or {}
        namespace, budget = meta.get("namespace") or "default", meta.get("name")
        ack = ((budget_body.get("spec") or {}).get("killSwitch") or {}).get("acknowledge")
        if not found and not ack:
            return {}
        signature = _signature(found, actions, ack)
        if meta.get("uid") and self._last.get(str(meta["uid"])) == signature:
            return {}
        k = self._client(api)
        existing, broken = read_records(configmaps.get(k, namespace, CONFIGMAP))
        if broken:
            log.warning("configmap %s/%s: keys %s are not incident records; left as they are",
                        namespace, CONFIGMAP, ", ".join(sorted(broken)))
        if not found and (ack not in existing or existing[ack].status != incidents.OPEN):
            return {}
        records = plan(budget_body, found, actions, existing, self.clock())
        changed = {iid: rec for iid, rec in records.items() if existing.get(iid) != rec}
        dropped = [iid for iid in existing if iid not in records]
        if changed or dropped:
            data: dict[str, str | None] = {iid: rec.to_json() for iid, rec in changed.items()}
            data.update({iid: None for iid in dropped})
            configmaps.upsert(k, namespace, CONFIGMAP, data, labels=LABELS)
            self._annotate(k, namespace, budget, budget_body, list(changed.values()))
        if meta.get("uid"):
            self._last[str(meta["uid"])] = signature
        touched = {findings.incident_id(f) for f in found} | ({ack} if ack else set())
        return {iid: records[iid] for iid in touched if iid in records}

    def _annotate(self, k: kube.Kube, namespace: str, budget: str | None, budget_body: Mapping[str, Any],
                  changed: Sequence[incidents.Incident]) -> None:
        by_agent: dict[str, list[incidents.Incident]] = {}
        for rec in changed:
            by_agent.setdefault(rec.agent, []).append(rec)
        for agent, recs in sorted(by_agent.items()):
            try:
                deployment = k.get_deployment(namespace, agent)
            except kube.KubeError as exc:
                if exc.status == 404:
                    continue  # the agent is gone; the ConfigMap still has the record
                raise
            old = (deployment.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)
            value = incidents.annotation_value(recs, existing=old)
            if value != old:
                k.annotate(namespace, agent, {ANNOTATION: value})
        if budget:
            current = configmaps.get_budget(k, namespace, budget)
            if current is None:
                return
            old = (current.get("metadata", {}).get("annotations") or {}).get(ANNOTATION)
            value = incidents.annotation_value(changed, existing=old)
            if value != old:
                configmaps.annotate_budget(k, namespace, budget, {ANNOTATION: value})


def _signature(found: Sequence[findings.Finding], actions: Sequence[Any], ack: str | None) -> tuple[Any, ...]:
    """What one call records, without times of its own: equal signatures write the same."""
    acts = tuple(sorted((agent or "", iid or "", a.action, a.detail)
                        for action in actions for agent, iid, a in _action_entries(action, 0.0)))
    return (tuple(sorted(json.dumps(f.to_dict(), sort_keys=True) for f in found)), acts, ack)


RECORDER = Recorder()


def record_incidents(budget_body: dict[str, Any], found: list[findings.Finding], actions: list[Any],
                     api: Any) -> None:
    """``hooks.on_findings`` entry: record incidents; log (never raise) API failures."""
    try:
        RECORDER.record(budget_body, found, actions, api)
    except errors.ExternalError as exc:
        log.warning("incidents not recorded this cycle (retried next cycle): %s", exc)


def notify_alertmanager(budget_body: dict[str, Any], found: list[findings.Finding], actions: list[Any],
                        api: Any) -> None:
    """``hooks.on_findings`` entry: queue one alert per incident when Alertmanager is configured."""
    del actions, api
    if not found:
        return  # (before the notifier, which reads the environment: most evaluations find nothing)
    notifier = alertmanager.notifier()
    if notifier is None:
        return
    budget = (budget_body.get("metadata") or {}).get("name")
    notifier.submit(alertmanager.build_alerts(((f, findings.incident_id(f)) for f in found), budget=budget))


def alert_failures(budget_body: dict[str, Any], failures: list[Any]) -> None:
    """``hooks.on_failures`` entry: page on-call for each action that did not take effect."""
    if not failures:
        return
    notifier = alertmanager.notifier()
    if notifier is None:
        return
    meta = budget_body.get("metadata") or {}
    notifier.submit([alertmanager.build_failure_alert(f, namespace=str(meta.get("namespace") or "default"),
                                                      budget=str(meta.get("name") or "")) for f in failures])


for _hook in (record_incidents, notify_alertmanager):
    if _hook not in hooks.on_findings:
        hooks.on_findings.append(_hook)
if alert_failures not in hooks.on_failures:
    hooks.on_failures.append(alert_failures)
