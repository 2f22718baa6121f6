"""Kubernetes: the agent Deployments, their scale and model, KEDA pauses, Events, budget status.

Everything that talks to the API server for the operator goes through :class:`Kube`.
API failures are raised as :class:`fleetwarden.errors.KubernetesError` with the
client's exception as ``__cause__``; ``transient`` on the error says whether a retry may help.

Deployments are read as plain dicts (the JSON the API server sends), so the same code
reads a watch event body, a list item and a recorded fixture.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes import client, config
from kubernetes.client import exceptions as kube_exceptions

from fleetwarden import errors
from fleetwarden.core import decision, spec, timefmt

REPLICAS_BEFORE_KILL = "fleetwarden.dev/replicas-before-kill"
KEDA_PAUSED_REPLICAS = "autoscaling.keda.sh/paused-replicas"
KEDA_GROUP, KEDA_VERSION, KEDA_PLURAL = "keda.sh", "v1alpha1", "scaledobjects"
BUDGET_PLURAL = "agentbudgets"
POLICY_PLURAL = "costpolicies"

# The API's Status reason for an HTTP status, when the answer did not say one.
_REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
            410: "Gone", 422: "Invalid", 429: "TooManyRequests", 500: "InternalError",
            503: "ServiceUnavailable", 504: "Timeout"}
# HTTP statuses worth retrying: conflict, throttled, server-side trouble.
_TRANSIENT = {409, 429, 500, 502, 503, 504}


class KubeError(errors.KubernetesError):
    """A Kubernetes API failure; ``status`` is the HTTP status (None: no answer at all);
    ``reason_code`` the API's Status reason (``Forbidden``, ``NotFound``, ``Conflict``,
    ``Invalid``...; ``Timeout`` when nothing answered; ``NotApplied`` for a read-back mismatch)."""

    def __init__(self, message: str, status: int | None, reason_code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason_code = reason_code or (_REASONS.get(status) if status is not None else "Timeout")

    @property
    def transient(self) -> bool:
        return self.status is None or self.status in _TRANSIENT


def wrap_api_error(what: str, exc: Exception) -> KubeError:
    """A Kubernetes client error as a KubeError, with the API server's message and status."""
    status = getattr(exc, "status", None)
    reason = getattr(exc, "reason", None) or str(exc)
    code = None
    body = getattr(exc, "body", None)
    if body:
        with contextlib.suppress(ValueError, AttributeError):
            parsed = json.loads(body)
            reason = parsed.get("message", reason)
            code = parsed.get("reason") or None
    return KubeError(f"{what}: {status or 'no answer'} {reason}", status if isinstance(status, int) else None, code)


# Called before every request that is not a read (set by ``handlers.leader`` under leader
# election): raises KubeError when this process may not write. One place, so that no write of
# any handler, hook or adapter can slip past it.
WRITE_GUARD: Callable[[str, str], None] | None = None
_READS = frozenset({"GET", "HEAD", "OPTIONS"})
# Who posts the Events (their ``reportingInstance``): under leader election the replica's Lease
# identity (``handlers.leader`` sets it), so an Event says which replica (and shard) acted.
REPORTING_INSTANCE = "fleetwarden"


class GuardedApiClient(client.ApiClient):
    """An ApiClient that asks ``WRITE_GUARD`` before each write (POST, PUT, PATCH, DELETE)."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        guard = WRITE_GUARD
        if guard is not None and method.upper() not in _READS:
            guard(method.upper(), url)
        return super().call_api(method, url, *args, **kwargs)


def load_config(kubeconfig: str | None = None, *, guarded: bool = True) -> client.ApiClient:
    """An API client from the in-cluster service account, else ``kubeconfig``/``$KUBECONFIG``
    (``guarded``: its writes pass ``WRITE_GUARD``; the Lease's own client is not)."""
    configuration = client.Configuration()
    try:
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except config.ConfigException:
        try:
            config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
        except (config.ConfigException, OSError, TypeError) as exc:
            raise errors.KubernetesError(f"no Kubernetes configuration: {exc}") from exc
    configuration.connection_pool_maxsize = 32
    return GuardedApiClient(configuration) if guarded else client.ApiClient(configuration)


# ------------------------------------------------------------------ reading Deployments


def _container(deployment: Mapping[str, Any], name: str | None) -> Mapping[str, Any] | None:
    containers = deployment.get("spec", {}).get("template", {}).get("spec", {}).get("containers") or []
    if not containers:
        return None
    if name is None:
        return containers[0]  # type: ignore[no-any-return]
    for container in containers:
        if container.get("name") == name:
            return container  # type: ignore[no-any-return]
    return None


def read_model(deployment: Mapping[str, Any], source: spec.ModelSource) -> str | None:
    """The model a Deployment runs: the env var on its model container, else the annotation.

    The annotation is read from the pod template first (that is what rolls out), then
    from the Deployment itself."""
    container = _container(deployment, source.container)
    if source.env_var is not None and container is not None:
        for env in container.get("env") or []:
            if env.get("name") == source.env_var and env.get("value") is not None:
                return str(env["value"])
    if source.annotation is not None:
        template_meta = deployment.get("spec", {}).get("template", {}).get("metadata", {}) or {}
        for annotations in (template_meta.get("annotations") or {},
                            deployment.get("metadata", {}).get("annotations") or {}):
            if source.annotation in annotations:
                return str(annotations[source.annotation])
    return None


def read_version(deployment: Mapping[str, Any], source: spec.ModelSource) -> str | None:
    """The agent's release: the image tag (or digest) of its model container."""
    container = _container(deployment, source.container)
    image = (container or {}).get("image")
    if not image:
        return None
    if "@" in image:
        return str(image.split("@", 1)[1])
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else "latest"


def agent_state(deployment: Mapping[str, Any], source: spec.ModelSource) -> decision.AgentDeployment:
    """The operator's view of one agent Deployment."""
    meta = deployment.get("metadata", {})
    replicas = deployment.get("spec", {}).get("replicas")
    return decision.AgentDeployment(
        name=meta["name"],
        namespace=meta.get("namespace", "default"),
        labels=dict(meta.get("labels") or {}),
        replicas=1 if replicas is None else int(replicas),
        model=read_model(deployment, source),
        version=read_version(deployment, source),
        replicas_before=remembered_replicas(deployment),
        resource_version=meta.get("resourceVersion"),
    )


def remembered_replicas(deployment: Mapping[str, Any]) -> int | None:
    """The replicas recorded on the Deployment when it was scaled to zero, if any."""
    value = (deployment.get("metadata", {}).get("annotations") or {}).get(REPLICAS_BEFORE_KILL)
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


class Kube:
    """The operator's calls to the API server."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.apps = client.AppsV1Api(api_client)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self._keda_absent = False
        self._lock = threading.Lock()

    def _json(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            response = fn(*args, _preload_content=False, **kwargs)
            return json.loads(response.data)
        except kube_exceptions.ApiException as exc:
            raise wrap_api_error(what, exc) from exc
        except (OSError, ValueError) as exc:  # connection refused, reset, bad JSON
            raise wrap_api_error(what, exc) from exc

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except kube_exceptions.ApiException as exc:
            raise wrap_api_error(what, exc) from exc
        except OSError as exc:
            raise wrap_api_error(what, exc) from exc

    def served(self, group: str, version: str) -> set[str]:
        """The resources (plurals) the API server serves in ``group``/``version``: none when it
        serves no such group version (404). Other failures raise KubeError."""
        try:
            data = self._json(f"discover {group}/{version}", self.custom.get_api_resources, group, version)
        except KubeError as exc:
            if exc.status == 404:
                return set()
            raise
        return {str(r.get("name")) for r in data.get("resources") or () if "/" not in str(r.get("name"))}

    # ---------------------------------------------------------------- listing

    def list_deployments(self, namespace: str | None, selector: spec.LabelSelector | None = None
                         ) -> list[dict[str, Any]]:
        """Deployments (as dicts) in ``namespace`` (None: all) matching ``selector``."""
        kwargs: dict[str, Any] = {}
        if selector is not None and selector.to_query():
            kwargs["label_selector"] = selector.to_query()
        if namespace is None:
            data = self._json("list deployments", self.apps.list_deployment_for_all_namespaces, **kwargs)
        else:
            data = self._json(f"list deployments in {namespace}", self.apps.list_namespaced_deployment,
                              namespace, **kwargs)
        return list(data.get("items") or [])

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return self._json(f"read deployment {namespace}/{name}", self.apps.read_namespaced_deployment,  # type: ignore[no-any-return]
                          name, namespace)

    def list_budgets(self, namespace: str | None) -> list[dict[str, Any]]:
        return self._list_custom(BUDGET_PLURAL, namespace)

    def list_policies(self, namespace: str | None) -> list[dict[str, Any]]:
        return self._list_custom(POLICY_PLURAL, namespace)

    def _list_custom(self, plural: str, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            data = self._json(f"list {plural}", self.custom.list_cluster_custom_object,
                              spec.GROUP, spec.VERSION, plural)
        else:
            data = self._json(f"list {plural} in {namespace}", self.custom.list_namespaced_custom_object,
                              spec.GROUP, spec.VERSION, namespace, plural)
        return list(data.get("items") or [])

    # ---------------------------------------------------------------- scaling

    def scale(self, namespace: str, name: str, replicas: int, *, observed: str | None = None) -> None:
        """Set a Deployment's replicas through the scale subresource (refused with 409 when
        ``observed`` is a resourceVersion and the Deployment has changed since)."""
        body: dict[str, Any] = {"spec": {"replicas": replicas}}
        if observed:
            body["metadata"] = {"resourceVersion": observed}
        self._call(f"scale deployment {namespace}/{name} to {replicas}",
                   self.apps.patch_namespaced_deployment_scale, name, namespace, body)

    def annotate(self, namespace: str, name: str, annotations: Mapping[str, str | None], *,
                 observed: str | None = None) -> None:
        """Set (or, with None, remove) annotations on a Deployment (409 if it changed since ``observed``)."""
        metadata: dict[str, Any] = {"annotations": dict(annotations)}
        if observed:
            metadata["resourceVersion"] = observed
        self._call(f"annotate deployment {namespace}/{name}", self.apps.patch_namespaced_deployment,
                   name, namespace, {"metadata": metadata})

    def scaled_objects_for(self, namespace: str, deployment: str) -> list[str]:
        """Names of KEDA ScaledObjects targeting ``deployment``; empty when KEDA is not installed."""
        if self._keda_absent:
            return []
        try:
            data = self._json(f"list scaledobjects in {namespace}", self.custom.list_namespaced_custom_object,
                              KEDA_GROUP, KEDA_VERSION, namespace, KEDA_PLURAL)
        except KubeError as exc:
            if exc.status == 404:  # the CRD is absent
                self._keda_absent = True
                return []
            raise
        names = []
        for item in data.get("items") or []:
            target = item.get("spec", {}).get("scaleTargetRef") or {}
            if target.get("name") == deployment and target.get("kind", "Deployment") == "Deployment":
                names.append(item["metadata"]["name"])
        return names

    def set_keda_paused(self, namespace: str, deployment: str, paused: bool) -> list[str]:
        """Pause (``paused-replicas: "0"``) or unpause the ScaledObjects of a Deployment.

        Without this KEDA would scale a killed agent straight back up. Returns the names."""
        names = self.scaled_objects_for(namespace, deployment)
        value = "0" if paused else None
        for name in names:
            self._call(f"annotate scaledobject {namespace}/{name}",
                       self.custom.patch_namespaced_custom_object, KEDA_GROUP, KEDA_VERSION, namespace,
                       KEDA_PLURAL, name, {"metadata": {"annotations": {KEDA_PAUSED_REPLICAS: value}}})
        return names

    def scale_to_zero(self, namespace: str, name: str, remember: int, *, keda: bool = True,
                      observed: str | None = None) -> None:
        """Record ``remember`` on the Deployment (only if it is still the ``observed`` version: a
        competing writer since gets a 409, and the next evaluation decides on what it wrote), pause
        KEDA, then scale to zero."""
        self.annotate(namespace, name, {REPLICAS_BEFORE_KILL: str(remember)}, observed=observed)
        try:
            if keda:
                self.set_keda_paused(namespace, name, True)
            self.scale(namespace, name, 0)
        except KubeError:
            # not stopped: it must not look stopped (an agent at zero with this annotation is restored)
            with contextlib.suppress(KubeError):
                self.annotate(namespace, name, {REPLICAS_BEFORE_KILL: None})
            raise

    def restore(self, namespace: str, name: str, replicas: int, *, keda: bool = True,
                observed: str | None = None) -> None:
        """Scale back to ``replicas`` (409 if changed since ``observed``), unpause KEDA and drop the
        remembered count."""
        self.scale(namespace, name, replicas, observed=observed)
        if keda:
            self.set_keda_paused(namespace, name, False)
        self.annotate(namespace, name, {REPLICAS_BEFORE_KILL: None})

    # ---------------------------------------------------------------- model

    def set_model(self, namespace: str, name: str, model: str, source: spec.ModelSource, *,
                  observed: str | None = None) -> None:
        """Point a Deployment at ``model``: its env var (strategic merge by name) and/or annotation
        (409 if the Deployment changed since ``observed``)."""
        deployment = self.get_deployment(namespace, name)
        container = _container(deployment, source.container)
        template: dict[str, Any] = {}
        if source.env_var is not None and container is not None:
            template["spec"] = {"containers": [
                {"name": container["name"], "env": [{"name": source.env_var, "value": model}]}]}
        if source.annotation is not None:
            template["metadata"] = {"annotations": {source.annotation: model}}
        if not template:
            raise KubeError(f"deployment {namespace}/{name}: no container {source.container!r} "
                            "and no annotation to set the model on", 422)
        patch: dict[str, Any] = {"spec": {"template": template}}
        if observed:
            patch["metadata"] = {"resourceVersion": observed}
        self._call(f"set model of deployment {namespace}/{name}", self.apps.patch_namespaced_deployment,
                   name, namespace, patch)

    # ---------------------------------------------------------------- status and events

    def patch_budget_status(self, namespace: str, name: str, patch: Mapping[str, Any]) -> None:
        """Merge-patch an AgentBudget's status subresource."""
        self._call(f"patch status of agentbudget {namespace}/{name}",
                   self.custom.patch_namespaced_custom_object_status, spec.GROUP, spec.VERSION, namespace,
                   BUDGET_PLURAL, name, {"status": dict(patch)})

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str, message: str, *,
                   once: bool = False) -> bool:
        """A core/v1 Event about ``involved`` (apiVersion, kind, name, namespace, uid); True when a
        new Event object was created.

        De-duplicated by what is stored, not by this process's memory (which a restart loses):
        the Event's name is derived from (object uid, type, reason, message), so saying the same
        thing again finds the Event already there (409). Then ``once`` leaves it as it is (said
        once per object and problem, whatever the restarts); otherwise its ``count`` goes up and
        ``lastTimestamp`` moves, as the kubelet's event correlator aggregates repeats."""
        namespace = involved.get("namespace") or "default"
        now = timefmt.rfc3339(time.time())
        key = "\x00".join(str(involved.get(k) or "") for k in ("uid", "kind", "name")) + f"\x00{type_}\x00{reason}"
        digest = hashlib.sha256(f"{key}\x00{message[:1024]}".encode()).hexdigest()[:16]
        name = f"{str(involved['name'])[:200]}.{digest}"
        body = {
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {k: involved[k] for k in ("apiVersion", "kind", "name", "namespace", "uid")
                               if involved.get(k)},
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "fleetwarden"},
            "reportingComponent": "fleetwarden.dev/operator",
            "reportingInstance": REPORTING_INSTANCE[:128],
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call(f"post event {reason} in {namespace}", self.core.create_namespaced_event, namespace, body)
            return True
        except KubeError as exc:
            if exc.status != 409:
                raise
        if once:
            return False
        stored = self._json(f"read event {reason} in {namespace}", self.core.read_namespaced_event, name, namespace)
        self._call(f"count event {reason} in {namespace}", self.core.patch_namespaced_event, name, namespace,
                   {"count": int(stored.get("count") or 1) + 1, "lastTimestamp": now})
        return False


def deployment_ref(namespace: str, name: str, uid: str | None = None) -> dict[str, Any]:
    """An ``involvedObject`` for a Deployment."""
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": name, "namespace": namespace, "uid": uid}


def budget_ref(body: Mapping[str, Any]) -> dict[str, Any]:
    """An ``involvedObject`` for an AgentBudget body."""
    meta = body.get("metadata", {})
    return {"apiVersion": spec.API_VERSION, "kind": "AgentBudget", "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid")}

