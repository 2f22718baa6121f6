"""kopf handlers: evaluate every AgentBudget every interval, at once on a spec edit, and keep
killed or suspended agents at zero when something scales their Deployment back up.

- ``agent_deployments`` and ``cost_policies``: indexes (namespace -> bodies), filled from
  watches before any handler acts, so a cycle lists nothing from the API server. In
  ``timers`` mode they are kopf indexes; in ``fleet`` mode the operator's own
  (:mod:`fleetwarden.handlers.store`: kopf's indexes hold every object's worker and body
  until all are filled, most of the start's memory at 10,000 budgets), kept by ``async``
  event handlers (``keep_*``) and complete when ``LISTINGS.ready`` is set.
- ``start_fleet`` (``FLEETWARDEN_EVALUATION=fleet``): one loop evaluates every
  indexed budget each ``FLEETWARDEN_INTERVAL`` seconds (:mod:`fleetwarden.handlers.fleet`).
- ``budget_timer`` (``FLEETWARDEN_EVALUATION=timers``, the default): a kopf timer per AgentBudget, every
  ``FLEETWARDEN_INTERVAL`` seconds (and a finalizer on each, which kopf needs to stop it).
- ``budget_event``: a watch event whose ``metadata.generation`` is newer than
  ``status.observedGeneration`` (a person edited the spec: acknowledge, suspend,
  desired model) is evaluated at once. Plain event handlers leave no annotations behind.
- ``deployment_event``: a Deployment scaled above zero while a budget selecting it is
  Killed or Suspended triggers that budget's evaluation at once (not the next timer). An
  agent Deployment (``fleetwarden.dev/agent: "true"`` or a ``fleetwarden.dev/budget``
  label) that no budget governs, or whose budget has no unit-economics target, gets a
  Warning Event (``Ungoverned`` / ``NoUnitEconomics``) once; a budget deleted or edited
  has its namespace checked again.
- ``cost_approvals``: an index of the CostApprovals (namespace -> compact bodies): the
  pending ones of a budget's agents set its ApprovalPending condition.

All evaluation goes through :class:`fleetwarden.handlers.runtime.Runtime`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from typing import Any

import kopf

from fleetwarden import errors
from fleetwarden.adapters import alertmanager, prometheus
from fleetwarden.core import spec
from fleetwarden.handlers import fleet, heap, metrics, retry, runtime, store
from fleetwarden.handlers import settings as operator_settings

log = logging.getLogger(__name__)

# Read and checked once, at import (a bad value is an InputError naming the variable).
SETTINGS = operator_settings.current()

RUNTIME: runtime.Runtime | None = None
# Set by the first event handler to run: kopf runs none before all its indexes are filled.
INDEXED = threading.Event()
# The fleet loop's own indexes (fleet mode), complete once LISTINGS.ready is set.
KINDS = {"budgets": (spec.GROUP, "agentbudgets"), "deployments": ("apps", "deployments"),
         "policies": (spec.GROUP, "costpolicies"), "approvals": (spec.GROUP, "costapprovals")}
LISTINGS = store.Listings(KINDS.values())
OWN_INDEXES = SETTINGS.evaluation == "fleet" and store.watch_listings(LISTINGS)
STORE = {name: store.Index() for name in KINDS}
# For kopf.run: with these indexes kopf keeps no memory of a budget or a Deployment (store.memories).
MEMORIES = store.memories({(spec.API_VERSION, "AgentBudget"), ("apps/v1", "Deployment")}) if OWN_INDEXES else None
FLEET: fleet.FleetLoop | None = None
_FLEET_TASK: asyncio.Task[None] | None = None


def _indexed() -> None:
    """kopf has filled its indexes (an event handler runs). In ``timers`` mode the heap settles
    now (handlers/heap.py); the fleet loop settles it after its first pass."""
    if INDEXED.is_set():
        return
    INDEXED.set()
    if SETTINGS.evaluation != "fleet":
        heap.settle()


def get_runtime() -> runtime.Runtime:
    global RUNTIME
    if RUNTIME is None:
        RUNTIME = runtime.build(SETTINGS)
        metrics.OLDEST_EVALUATION.set_function(RUNTIME.oldest_evaluation)
        metrics.FIGURES_OVERDUE.set_function(RUNTIME.figures_overdue)
        metrics.FIGURES_HELD.set_function(RUNTIME.figures_held)
    return RUNTIME


@kopf.on.startup()
def configure(**kwargs: Any) -> None:
    settings: kopf.OperatorSettings = kwargs["settings"]
    settings.posting.enabled = False  # the operator posts its own, explaining each action
    settings.execution.max_workers = SETTINGS.workers
    settings.watching.server_timeout = 300
    # kopf timers (FLEETWARDEN_EVALUATION=timers) put a finalizer on each AgentBudget (to stop
    # the timer on deletion); in fleet mode kopf removes it, nothing needing it any more
    settings.persistence.finalizer = "fleetwarden.dev/finalizer"
    if OWN_INDEXES:
        # Without kopf indexes each object's worker ends once its events are handled: the
        # listing in pages, idle workers gone in half a second (docs/operator.md, Scale).
        settings.watching.chunk_size = 500
        settings.queueing.idle_timeout = 0.5
    heap.tune(metrics.REGISTRY)
    metrics.serve(SETTINGS.metrics_port)
    if SETTINGS.alertmanager_url:
        alertmanager.configure(SETTINGS.alertmanager_url)
    get_runtime()
    log.info("fleetwarden operator: interval %ss, Prometheus %s, Alertmanager %s", SETTINGS.interval,
             SETTINGS.prometheus_url, SETTINGS.alertmanager_url or "off")
    try:
        short = prometheus.retention_warning(SETTINGS.prometheus_url)
    except errors.PrometheusError as exc:
        log.info("Prometheus retention not checked: %s", exc)
    else:
        if short:
            log.warning("%s", short)


def _compact_deployment(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the operator needs of a Deployment (keeps the index small for big fleets)."""
    meta = body.get("metadata") or {}
    dspec = body.get("spec") or {}
    template = dspec.get("template") or {}
    containers = [{"name": c.get("name"), "image": c.get("image"),
                   "env": [{"name": e.get("name"), "value": e.get("value")} for e in c.get("env") or []
                           if "value" in e]}
                  for c in (template.get("spec") or {}).get("containers") or []]
    return {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
                     "labels": dict(meta.get("labels") or {}), "annotations": dict(meta.get("annotations") or {})},
        "spec": {"replicas": dspec.get("replicas"),
                 "template": {"metadata": {"annotations": dict((template.get("metadata") or {}).get("annotations")
                                                               or {})},
                              "spec": {"containers": containers}}},
    }


def _copy(body: Mapping[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A plain copy of some top-level fields of a kopf body (kopf's views are live), without
    ``metadata.managedFields``: the server-side-apply bookkeeping mirrors every field written,
    the status included, which nothing here reads and which an index of 10,000 budgets would
    hold 10,000 times. The spec's parts (its limits, kill switch, model...) equal to another
    copy's are that copy's (``PARTS``)."""
    out: dict[str, Any] = {}
    for k in keys:
        value = body.get(k)
        out[k] = dict(value) if isinstance(value, Mapping) else value
    meta = out.get("metadata")
    if isinstance(meta, dict):
        meta.pop("managedFields", None)
    spec_ = out.get("spec")
    if isinstance(spec_, dict):  # its parts equal to another copy's are that copy's (read only)
        out["spec"] = {k: PARTS.share(v) if isinstance(v, (dict, list)) and v else v for k, v in spec_.items()}
    return out


PARTS = store.Parts()  # the equal parts of the copies' specs, kept once


_OBJECT = ("apiVersion", "kind", "metadata", "spec")  # what an index copies of an object
_BUDGET = (*_OBJECT, "status")  # a budget's copy, its status included


def agent_deployments(**kwargs: Any) -> dict[str, Any]:
    return {kwargs["namespace"]: _compact_deployment(kwargs["body"])}


def cost_policies(**kwargs: Any) -> dict[str, Any]:
    return {kwargs["namespace"]: _copy(kwargs["body"], _OBJECT)}


def _uid(body: Mapping[str, Any]) -> str:
    """An object's uid, as the runtime keys what it keeps of it."""
    return str((body.get("metadata") or {}).get("uid"))


def budgets_by_namespace(**kwargs: Any) -> dict[str, Any]:
    """A budget's copy, with its status only while this process has written none: once it has,
    the status it wrote is the one read (``Runtime.previous_status``), so an index of 10,000
    budgets does not hold every status twice (about 6 KB each)."""
    body = kwargs["body"]
    uid = _uid(body)
    return {kwargs["namespace"]: _copy(body, _OBJECT if get_runtime().has_status(uid) else _BUDGET)}


def cost_approvals(**kwargs: Any) -> dict[str, Any]:
    """What the evaluation needs of a CostApproval: who asks, for what, until when, decided or not."""
    body = kwargs["body"]
    meta, s, status = body.get("metadata") or {}, body.get("spec") or {}, body.get("status") or {}
    return {kwargs["namespace"]: {
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid")},
        "spec": {k: s.get(k) for k in ("agent", "workflow", "rule", "tool", "expiresAt")},
        "status": {"decision": status.get("decision")},
    }}


def _keeper(index: store.Index, copy: Any) -> Any:
    """An ``async`` event handler keeping ``index`` (a ``copy`` of each object, as kopf's index
    would hold it) and telling ``LISTINGS`` the object was handled."""
    async def keep(**kwargs: Any) -> None:
        event, body, namespace = kwargs["event"], kwargs["body"], str(kwargs["namespace"])
        uid = _uid(body)
        if event.get("type") == "DELETED":
            index.drop(namespace, uid)
        else:
            index.put(namespace, uid, copy(**kwargs)[namespace])
        LISTINGS.handled(uid)
    return keep


if OWN_INDEXES:
    # Registered before the handlers that read them, so kopf runs them first on each event.
    keep_budgets = kopf.on.event(spec.GROUP, spec.VERSION, "agentbudgets", id="keep_budgets")(
        _keeper(STORE["budgets"], budgets_by_namespace))
    keep_deployments = kopf.on.event("apps", "v1", "deployments", id="keep_deployments")(
        _keeper(STORE["deployments"], agent_deployments))
    keep_policies = kopf.on.event(spec.GROUP, spec.VERSION, "costpolicies", id="keep_policies")(
        _keeper(STORE["policies"], cost_policies))
    keep_approvals = kopf.on.event(spec.GROUP, spec.VERSION, "costapprovals", id="keep_approvals")(
        _keeper(STORE["approvals"], cost_approvals))
else:
    kopf.index("apps", "v1", "deployments")(agent_deployments)
    kopf.index(spec.GROUP, spec.VERSION, "costpolicies")(cost_policies)
    kopf.index(spec.GROUP, spec.VERSION, "agentbudgets")(budgets_by_namespace)
    kopf.index(spec.GROUP, spec.VERSION, "costapprovals")(cost_approvals)


class QuietKeepers(logging.Filter):
    """kopf logs every handler's success at INFO (``Handler 'x' succeeded.``): the keepers', one
    line per event of every watched object (20,000 at the start of a 10,000-budget fleet), say
    nothing and are dropped. Their failures, and every other handler's lines, are kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (isinstance(msg, str) and msg.startswith("Handler 'keep_") and msg.endswith("' succeeded."))


if OWN_INDEXES:
    logging.getLogger("kopf.objects").addFilter(QuietKeepers())
    for _name, (_, _plural) in KINDS.items():
        metrics.INDEXED_OBJECTS.labels(kind=_plural).set_function(STORE[_name].count)
    metrics.INDEXES_COMPLETE.set_function(lambda: float(LISTINGS.ready.is_set()))


def _indexes(kwargs: Mapping[str, Any]) -> tuple[Any, Any, Any, Any]:
    """Budgets, Deployments, CostPolicies and CostApprovals by namespace: the operator's own
    indexes, or kopf's from a handler's ``kwargs``."""
    if OWN_INDEXES:
        return STORE["budgets"], STORE["deployments"], STORE["policies"], STORE["approvals"]
    return (kwargs["budgets_by_namespace"], kwargs["agent_deployments"], kwargs["cost_policies"],
            kwargs["cost_approvals"])


def _acting(**_: Any) -> bool:
    """Whether the handlers that act may run (kopf's ``when``): with the operator's own indexes,
    once they are complete (before, a governance check would see half a namespace; the fleet
    loop checks every namespace once they are)."""
    return LISTINGS.ready.is_set() or not OWN_INDEXES


def check_all_namespaces() -> None:
    """Governance hygiene of every namespace with Deployments (the fleet loop, once the
    operator's own indexes are complete: the events of the listing were not checked)."""
    budgets, deployments = STORE["budgets"], STORE["deployments"]
    for namespace in list(deployments):
        _check_namespace(namespace, deployments, budgets)


def _item(body: Mapping[str, Any], agent_deployments: Any, cost_policies: Any, cost_approvals: Any) -> fleet.Item:
    """The budget with its namespace's objects, from the indexes."""
    namespace = str((body.get("metadata") or {}).get("namespace"))
    return fleet.Item(body, runtime.deployments_of(agent_deployments, namespace),
                      runtime.deployments_of(cost_policies, namespace),
                      runtime.deployments_of(cost_approvals, namespace))


def _evaluate(body: Mapping[str, Any], agent_deployments: Any, cost_policies: Any, cost_approvals: Any = None
              ) -> None:
    with retry.temporary():
        _evaluate_item(_item(body, agent_deployments, cost_policies, cost_approvals))


def _prompt(body: Mapping[str, Any], agent_deployments: Any, cost_policies: Any, cost_approvals: Any,
            held: bool = False) -> None:
    """Fleet mode: have the loop evaluate this budget at once (not in kopf's executor). A spec edit
    of a budget this process never evaluated is left to the next cycle (at the start, every
    budget's first event would otherwise be a second evaluation beside the first cycle's); an
    agent scaled up under a ``held`` budget (Killed, Suspended, a ScaleToZero step) never waits."""
    assert FLEET is not None
    uid = _uid(body)
    if not held and not get_runtime().evaluated(uid):
        return
    FLEET.prompt(uid, _item(_copy(body, _BUDGET),
                            agent_deployments, cost_policies, cost_approvals))


def _evaluate_item(item: fleet.Item) -> None:
    get_runtime().reconcile(item.budget, item.deployments, item.policies, approval_bodies=item.approvals)


def _last_evaluated(item: fleet.Item) -> float | None:
    return get_runtime().evaluated_at(_uid(item.budget))


def _held_since(item: fleet.Item) -> float | None:
    return get_runtime().held_since(_uid(item.budget))


if SETTINGS.evaluation == "fleet":
    @kopf.on.startup()
    async def start_fleet(**kwargs: Any) -> None:
        """Start the fleet-wide loop in kopf's event loop (it waits for the indexes)."""
        global FLEET, _FLEET_TASK
        rt = get_runtime()
        FLEET = fleet.FleetLoop(_evaluate_item, interval=SETTINGS.interval, workers=SETTINGS.workers,
                                new_cycle=rt.new_cycle, ready=LISTINGS.ready if OWN_INDEXES else INDEXED,
                                settled=heap.settle, on_ready=check_all_namespaces if OWN_INDEXES else None,
                                waiting=LISTINGS.waiting_for if OWN_INDEXES else None, data_end=rt.data_end,
                                after_cycle=heap.trim, fetch_ended=rt.fetch_ended, pace=SETTINGS.pace,
                                last_evaluated=_last_evaluated, held_since=_held_since, gate=rt.gate,
                                prefetch=rt.prefetch if SETTINGS.pace > 0 else None)  # each cycle's data read before it
        rt.behind = FLEET.behind  # a large fleet's figure writes wait while the cycle runs behind
        _FLEET_TASK = asyncio.get_running_loop().create_task(FLEET.run(*_indexes(kwargs)))
        if OWN_INDEXES:
            await _unserved_kinds()

    async def _unserved_kinds() -> None:
        """Tell the indexes which of our kinds the API server does not serve (a CRD not installed,
        as after a Helm upgrade, which never installs a chart's new CRDs): none of them exists,
        so none is waited for (kopf's indexes in ``timers`` mode do the same)."""
        try:
            served = await asyncio.get_running_loop().run_in_executor(
                None, get_runtime().api.served, spec.GROUP, spec.VERSION)
        except Exception as exc:  # noqa: BLE001 - logged; the indexes then wait for every kind
            log.warning("could not ask the API server which kinds it serves (%s): the fleet loop waits for "
                        "every kind's listing", exc)
            return
        for group, plural in KINDS.values():
            if group == spec.GROUP and plural not in served:
                log.warning("%s.%s/%s is not served by the API server (its CustomResourceDefinition is not "
                            "installed: kubectl apply -f crds/): the fleet loop takes it as none, and kopf "
                            "watches it once it is installed", plural, group, spec.VERSION)
                LISTINGS.unserved((group, plural))

    @kopf.on.cleanup()
    async def stop_fleet(**_: Any) -> None:
        if _FLEET_TASK is not None:
            _FLEET_TASK.cancel()
else:
    @kopf.timer(spec.GROUP, spec.VERSION, "agentbudgets", interval=SETTINGS.interval, idle=None)
    def budget_timer(**kwargs: Any) -> None:
        """Evaluate the budget every interval."""
        _, agent_deployments, cost_policies, cost_approvals = _indexes(kwargs)
        _evaluate(kwargs["body"], agent_deployments, cost_policies, cost_approvals)


@kopf.on.event(spec.GROUP, spec.VERSION, "agentbudgets", when=_acting)
def budget_event(**kwargs: Any) -> None:
    """A spec edit (generation newer than observedGeneration) is acted on at once."""
    _indexed()
    event, body = kwargs["event"], kwargs["body"]
    budgets_by_namespace, agent_deployments, cost_policies, cost_approvals = _indexes(kwargs)
    meta = body.get("metadata") or {}
    namespace, uid = str(meta.get("namespace")), str(meta.get("uid"))
    if event.get("type") == "DELETED":
        get_runtime().forget(uid, namespace, str(meta.get("name")))
        _check_namespace(namespace, agent_deployments, budgets_by_namespace, without=uid)
        return
    status = get_runtime().previous_status(body)
    generation = meta.get("generation")
    if generation is not None and status.get("observedGeneration") == generation:
        return
    _check_namespace(namespace, agent_deployments, budgets_by_namespace)
    if FLEET is not None:
        _prompt(body, agent_deployments, cost_policies, cost_approvals)
        return
    try:
        _evaluate(body, agent_deployments, cost_policies, cost_approvals)
    except (kopf.TemporaryError, kopf.PermanentError) as exc:
        log.warning("budget %s/%s: %s (the timer retries)", meta.get("namespace"), meta.get("name"), exc)


def _check_namespace(namespace: str, agent_deployments: Any, budgets: Any, without: str | None = None) -> None:
    """Governance hygiene for every agent Deployment of ``namespace`` (a budget came, went or changed)."""
    bodies = [b for b in runtime.deployments_of(budgets, namespace)
              if _uid(b) != without]
    try:
        get_runtime().check_governance(runtime.deployments_of(agent_deployments, namespace), bodies)
    except errors.FleetwardenError as exc:
        log.warning("governance check of namespace %s: %s", namespace, exc)


@kopf.on.event("apps", "v1", "deployments", when=_acting)
def deployment_event(**kwargs: Any) -> None:
    """A Deployment scaled up under a Killed or Suspended budget is evaluated (and stopped) at once."""
    _indexed()
    event, body = kwargs["event"], kwargs["body"]
    budgets_by_namespace, agent_deployments, cost_policies, cost_approvals = _indexes(kwargs)
    meta = body.get("metadata") or {}
    rt = get_runtime()
    if event.get("type") == "DELETED":
        rt.forget_deployment(str(meta.get("uid")))
        return
    namespace, labels = meta.get("namespace"), dict(meta.get("labels") or {})
    if runtime.is_agent(body):
        try:
            rt.check_governance([body], runtime.deployments_of(budgets_by_namespace, str(namespace)))
        except errors.FleetwardenError as exc:
            log.warning("governance check of deployment %s/%s: %s", namespace, meta.get("name"), exc)
    replicas = (body.get("spec") or {}).get("replicas")
    if replicas is not None and int(replicas) <= 0:
        return
    for budget_body in runtime.deployments_of(budgets_by_namespace, str(namespace)):
        selector = (budget_body.get("spec") or {}).get("selector") or {}
        try:
            matches = spec.LabelSelector.model_validate(selector).matches(labels)
        except ValueError:
            continue
        if matches and rt.is_holding(budget_body):
            if FLEET is not None:
                _prompt(budget_body, agent_deployments, cost_policies, cost_approvals, held=True)
                continue
            try:
                _evaluate(budget_body, agent_deployments, cost_policies, cost_approvals)
            except (kopf.TemporaryError, kopf.PermanentError) as exc:
                log.warning("deployment %s/%s: %s (the timer retries)", namespace, meta.get("name"), exc)
