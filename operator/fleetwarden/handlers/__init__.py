"""The kopf operator. ``fleetwarden operator`` runs it; so does ``kopf run -m fleetwarden.handlers``.

Importing this package registers every handler module with kopf:

- ``agentbudgets``: the evaluation loop (timer, spec edits, Deployments scaled up while held);
- ``approvals``: CostApproval expiry and announcements;
- ``policyconfig``: CostPolicy -> ConfigMap compile;
- ``incidents``: incident records and Alertmanager alerts (registered in ``hooks.on_findings``).

``kopftoggles`` first patches kopf's index readiness (see there).
"""

from fleetwarden.handlers import kopftoggles

kopftoggles.apply()  # before kopf starts: its index readiness without the quadratic start

from fleetwarden.handlers import agentbudgets, approvals, incidents, policyconfig  # noqa: E402,F401
