"""The kopf operator. ``fleetwarden operator`` runs it; so does ``kopf run -m fleetwarden.handlers``.

Importing this package registers every handler module with kopf:

- ``agentbudgets``: the evaluation loop (timer, spec edits, Deployments scaled up while held);
- ``approvals``: CostApproval expiry and announcements;
- ``policyconfig``: CostPolicy -> ConfigMap compile;
- ``incidents``: incident records and Alertmanager alerts (registered in ``hooks.on_findings``).
"""

from fleetwarden.handlers import agentbudgets, approvals, incidents, policyconfig  # noqa: F401
