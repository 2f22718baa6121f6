"""Make each simulated agent follow its Deployment, so a kill switch or a model rollback by
the operator shows in the metrics.

Every ``interval`` seconds the Deployments of the namespace are listed; for each agent
with a Deployment of its name: at zero replicas it stops spending (its open tasks end
abandoned); the model named on the Deployment (annotation ``fleetwarden.dev/model``, else
the env var ``MODEL`` of a container) becomes the model it runs; a new value of the
annotation ``fleetwarden.dev/simulate-scenario`` (a scenario name, e.g. ``runaway-loop``)
starts that scenario on the agent once (``kubectl annotate deployment NAME
fleetwarden.dev/simulate-scenario=runaway-loop``; the annotation's value at the first poll
is taken as already played). The Kubernetes client is imported here only, lazily, so the
SDK and the fast simulator never need it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from fleetwarden import errors
from fleetwarden.simulate import fleet as fleet_mod

log = logging.getLogger("fleetwarden.simulate")

MODEL_ANNOTATION = "fleetwarden.dev/model"
MODEL_ENV = "MODEL"
SCENARIO_ANNOTATION = "fleetwarden.dev/simulate-scenario"


def deployment_model(deployment: Any) -> str | None:
    """The model a Deployment names: its annotation, else a container's MODEL env var."""
    annotations = (deployment.metadata.annotations or {}) if deployment.metadata else {}
    if annotations.get(MODEL_ANNOTATION):
        return str(annotations[MODEL_ANNOTATION])
    pod_spec = deployment.spec.template.spec if deployment.spec and deployment.spec.template else None
    for container in (pod_spec.containers or []) if pod_spec else []:
        for env in container.env or []:
            if env.name == MODEL_ENV and env.value:
                return str(env.value)
    return None


def apply(fleet: fleet_mod.Fleet, deployments: list[Any], played: dict[str, str] | None = None) -> None:
    """Apply the Deployments' replicas, models and scenario requests to the agents of the fleet.

    ``played``: agent -> the scenario annotation value already acted on (updated here); a
    value not in it starts its scenario. None: scenario annotations are ignored."""
    by_name = {d.metadata.name: d for d in deployments}
    for agent in fleet.agents:
        dep = by_name.get(agent.name)
        if dep is None:
            continue
        if played is not None:
            annotations = (dep.metadata.annotations or {}) if dep.metadata else {}
            wanted = str(annotations.get(SCENARIO_ANNOTATION) or "")
            if wanted and played.get(agent.name) != wanted:
                try:
                    fleet.request_scenario(wanted, agent.name)
                    log.info("%s: scenario %s requested by its Deployment", agent.name, wanted)
                except ValueError as exc:
                    log.warning("%s: annotation %s ignored: %s", agent.name, SCENARIO_ANNOTATION, exc)
            played[agent.name] = wanted
        replicas = dep.spec.replicas if dep.spec and dep.spec.replicas is not None else 1
        if (replicas == 0) != agent.paused:
            log.info("%s: %s", agent.name, "scaled to zero: stops spending" if replicas == 0 else "running again")
            agent.paused = replicas == 0
        model = deployment_model(dep)
        if model is not None and model != agent.model:
            if fleet.prices.knows(model):
                log.info("%s: model %s -> %s (from its Deployment)", agent.name, agent.model, model)
                agent.use_model(model, version=f"model-{model}")
            else:
                log.warning("%s: Deployment names model %r, which has no price; keeping %s",
                            agent.name, model, agent.model)


class DeploymentFollower:
    """A daemon thread polling the namespace's Deployments (see the module docstring)."""

    def __init__(self, fleet: fleet_mod.Fleet, kubeconfig: str, *, interval: float = 3.0) -> None:
        try:
            from kubernetes import client, config
        except ImportError as exc:  # pragma: no cover - the operator extra is not installed
            raise errors.FleetwardenError("--kubeconfig needs the Kubernetes client: "
                                          "pip install 'fleetwarden[operator]'") from exc
        try:
            api_client = config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        except Exception as exc:  # the client raises several kinds for a bad file
            raise errors.InputError(f"cannot load kubeconfig: {exc}", file=kubeconfig) from exc
        self._apps = client.AppsV1Api(api_client)
        self._played: dict[str, str] | None = None  # None until the first poll
        self.fleet = fleet
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="deployment-follower", daemon=True)

    def poll_once(self) -> None:
        result = self._apps.list_namespaced_deployment(self.fleet.namespace, _request_timeout=10)
        items = list(result.items)
        if self._played is None:  # what is annotated before the start is history, not a request
            self._played = {str(d.metadata.name): str((d.metadata.annotations or {}).get(SCENARIO_ANNOTATION) or "")
                            for d in items if d.metadata}
        apply(self.fleet, items, self._played)

    def start(self) -> DeploymentFollower:
        try:
            self.poll_once()  # fail loudly at start if the API server cannot be reached
        except Exception as exc:
            raise errors.KubernetesError(f"cannot list Deployments in {self.fleet.namespace!r}: {exc}") from exc
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll_once()
            except Exception as exc:  # keep following; the next poll may work
                log.warning("cannot list Deployments: %s", exc)
