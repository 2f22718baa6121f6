"""CostApprovals on the API server: create, wait, decide, expire, and "who am I".

- :class:`Approvals` wraps the calls (the operator, ``fleetwarden approve|deny`` and the
  agent's backend share it). Failures are :class:`fleetwarden.errors.KubernetesError`
  (``adapters.kube.KubeError``) with the client's exception as ``__cause__``.
- :class:`KubernetesApprovalBackend` is the agent side: it implements the SDK's
  ``ApprovalBackend`` protocol (``request(...) -> id``, ``wait(id, timeout) ->
  "approved" | "denied" | "expired"``) by creating a CostApproval and watching its status.

Identity: every decision records ``status.decidedBy`` = the caller's username, found with a
SelfSubjectReview (``authentication.k8s.io/v1``); ``spec.requester`` is found the same way.
``manifests/approvals-policy.yaml`` checks both in the API server, so they cannot lie.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal

from kubernetes import client, watch
from kubernetes.client import exceptions as kube_exceptions

from fleetwarden import errors
from fleetwarden.adapters import kube
from fleetwarden.core import spec, timefmt

PLURAL = "costapprovals"
KIND = "CostApproval"

APPROVED, DENIED, EXPIRED = "Approved", "Denied", "Expired"
DECISIONS = (APPROVED, DENIED, EXPIRED)
# The SDK's words for the decisions.
SDK_RESULT: dict[str, Literal["approved", "denied", "expired"]] = {APPROVED: "approved", DENIED: "denied", EXPIRED: "expired"}


def decision_of(body: Mapping[str, Any]) -> str | None:
    """The decision recorded on a CostApproval, or None while pending."""
    value = (body.get("status") or {}).get("decision")
    return value if value in DECISIONS else None


def is_expired(body: Mapping[str, Any], now: float) -> bool:
    """A pending request whose ``spec.expiresAt`` has passed."""
    if decision_of(body) is not None:
        return False
    expires = (body.get("spec") or {}).get("expiresAt")
    return expires is not None and timefmt.parse_rfc3339_strict(str(expires)) <= now


def _name_part(text: str) -> str:
    """``text`` cut to a DNS-1123 label prefix (for generateName)."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return (cleaned[:40].rstrip("-") or "approval") + "-"



def api_client(kubeconfig: str | None = None, *, as_user: str | None = None,
               as_groups: tuple[str, ...] = ()) -> client.ApiClient:
    """An API client (in-cluster, else kubeconfig), impersonating ``as_user`` when given
    (like ``kubectl --as``; the caller needs the ``impersonate`` verb)."""
    api = kube.load_config(kubeconfig)
    if as_user:
        api.set_default_header("Impersonate-User", as_user)  # type: ignore[no-untyped-call]
        for group in as_groups[:1]:  # the client keeps one value per header
            api.set_default_header("Impersonate-Group", group)  # type: ignore[no-untyped-call]
    return api


class Approvals:
    """CostApproval calls on one API client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.custom = client.CustomObjectsApi(api)
        self.auth = client.AuthenticationV1Api(api)
        self._whoami: str | None = None
        self._lock = threading.Lock()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (kube_exceptions.ApiException, OSError) as exc:
            raise kube.wrap_api_error(what, exc) from exc

    def whoami(self) -> str:
        """The caller's username, from a SelfSubjectReview (cached)."""
        with self._lock:
            if self._whoami is None:
                review = self._call("SelfSubjectReview", self.auth.create_self_subject_review,
                                    client.V1SelfSubjectReview(api_version="authentication.k8s.io/v1",
                                                               kind="SelfSubjectReview"))
                user = getattr(getattr(review, "status", None), "user_info", None)
                username = getattr(user, "username", None)
                if not username:
                    raise kube.KubeError("SelfSubjectReview returned no username", None)
                self._whoami = str(username)
            return self._whoami

    def get(self, namespace: str, name: str) -> dict[str, Any]:
        return self._call(f"read costapproval {namespace}/{name}", self.custom.get_namespaced_custom_object,  # type: ignore[no-any-return]
                          spec.GROUP, spec.VERSION, namespace, PLURAL, name)

    def list_all(self, namespace: str | None) -> list[dict[str, Any]]:
        if namespace is None:
            data = self._call("list costapprovals", self.custom.list_cluster_custom_object,
                              spec.GROUP, spec.VERSION, PLURAL)
        else:
            data = self._call(f"list costapprovals in {namespace}", self.custom.list_namespaced_custom_object,
                              spec.GROUP, spec.VERSION, namespace, PLURAL)
        return list(data.get("items") or [])

    def create(self, namespace: str, *, agent: str, expires_at: float, workflow: str | None = None,
               task_id: str | None = None, rule: str | None = None, tool: str | None = None,
               amount_usd: float | None = None, reason: str | None = None,
               labels: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Create a request (``spec.requester`` = the caller); returns the created body."""
        body_spec: dict[str, Any] = {"agent": agent, "requester": self.whoami(), "expiresAt": timefmt.rfc3339(expires_at)}
        for key, value in (("workflow", workflow), ("taskId", task_id), ("rule", rule), ("tool", tool),
                           ("amountUSD", amount_usd), ("reason", reason)):
            if value is not None:
                body_spec[key] = value
        body = {
            "apiVersion": spec.API_VERSION,
            "kind": KIND,
            "metadata": {"generateName": _name_part(agent),
                         "labels": {"fleetwarden.dev/agent": agent[:63], **dict(labels or {})}},
            "spec": body_spec,
        }
        return self._call(f"create costapproval in {namespace}", self.custom.create_namespaced_custom_object,  # type: ignore[no-any-return]
                          spec.GROUP, spec.VERSION, namespace, PLURAL, body)

    def decide(self, namespace: str, name: str, decision: str, *, reason: str | None = None,
               now: float | None = None) -> dict[str, Any]:
        """Record ``decision`` by the caller through the status subresource.

        Refuses (InputError) a request that is already decided. The patch carries the
        resourceVersion read, so a decision made in between is never overwritten."""
        if decision not in DECISIONS:
            raise errors.InputError(f"decision must be one of {', '.join(DECISIONS)}", field="decision")
        current = self.get(namespace, name)
        already = decision_of(current)
        if already is not None:
            by = (current.get("status") or {}).get("decidedBy", "?")
            raise errors.InputError(f"costapproval {namespace}/{name} is already {already} (by {by})")
        status: dict[str, Any] = {
            "decision": decision,
            "decidedBy": self.whoami(),
            "decidedAt": timefmt.rfc3339(time.time() if now is None else now),
        }
        if reason:
            status["reason"] = reason
        patch = {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]}, "status": status}
        return self._call(f"decide costapproval {namespace}/{name}",  # type: ignore[no-any-return]
                          self.custom.patch_namespaced_custom_object_status,
                          spec.GROUP, spec.VERSION, namespace, PLURAL, name, patch)

    def wait(self, namespace: str, name: str, timeout: float) -> str | None:
        """Watch the request until it is decided; the decision, or None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while True:
            body = self.get(namespace, name)
            found = decision_of(body)
            if found is not None:
                return found
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            watcher = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in watcher.stream(  # type: ignore[no-untyped-call]
                        self.custom.list_namespaced_custom_object, spec.GROUP, spec.VERSION, namespace, PLURAL,
                        field_selector=f"metadata.name={name}",
                        resource_version=body["metadata"]["resourceVersion"],
                        timeout_seconds=max(1, int(min(remaining, 300)))):
                    obj = event.get("object") or {}
                    if event.get("type") == "DELETED":
                        raise kube.KubeError(f"costapproval {namespace}/{name} was deleted while waiting", 404)
                    if isinstance(obj, dict) and decision_of(obj) is not None:
                        return decision_of(obj)
            except kube_exceptions.ApiException as exc:
                if exc.status != 410:  # 410 Gone: resourceVersion too old; read again
                    raise kube.wrap_api_error(f"watch costapproval {namespace}/{name}", exc) from exc
            except OSError as exc:
                raise kube.wrap_api_error(f"watch costapproval {namespace}/{name}", exc) from exc
            finally:
                watcher.stop()  # type: ignore[no-untyped-call]


class KubernetesApprovalBackend:
    """The SDK's ``ApprovalBackend`` (``fleetwarden.sdk``) on Kubernetes: one CostApproval
    per request, created in the agent's namespace and watched until decided.

    Runs in the agent; its service account needs the ``fleetwarden-approval-requester``
    ClusterRole (manifests/approvals-rbac.yaml) bound in its namespace. Request ids are
    ``namespace/name``. ``namespace`` given here overrides the one in each request (an
    agent usually passes its own pod namespace).
    """

    def __init__(self, namespace: str | None = None, *, api: client.ApiClient | None = None,
                 kubeconfig: str | None = None) -> None:
        self.namespace = namespace
        self.approvals = Approvals(api if api is not None else api_client(kubeconfig))

    def request(self, *, agent: str, namespace: str, workflow: str, task_id: str, rule: str, tool: str,
                amount_usd: float | None, reason: str, timeout_seconds: float) -> str:
        ns = self.namespace or namespace
        body = self.approvals.create(
            ns, agent=agent, expires_at=time.time() + timeout_seconds, workflow=workflow or None,
            task_id=task_id or None, rule=rule or None, tool=tool or None, amount_usd=amount_usd,
            reason=reason or None)
        return f"{ns}/{body['metadata']['name']}"

    def wait(self, request_id: str, timeout: float) -> Literal["approved", "denied", "expired"]:
        """The decision; "expired" when nobody decided within ``timeout`` seconds."""
        namespace, _, name = request_id.partition("/")
        if not name:
            raise errors.InputError(f"approval request id {request_id!r} is not namespace/name")
        decision = self.approvals.wait(namespace, name, timeout)
        return SDK_RESULT[decision] if decision is not None else "expired"
