"""The local development cluster: a real control plane on 127.0.0.1, plus Prometheus and Alertmanager.

- ``cluster.LocalCluster``: etcd, kube-apiserver, kube-controller-manager, kube-scheduler and
  KWOK (fake nodes) in one state directory; ``up``, ``down``, ``status``, ``env``.
- ``monitoring.Prometheus`` / ``monitoring.Alertmanager``: launchers with generated configs.
- ``build``: ``go build`` of the binaries into ``$FLEETWARDEN_CACHE/bin/<component>-<version>``.
- ``failures``: the errors (``fleetwarden.errors.FleetwardenError`` subclasses).

Standard library only (plus the openssl, go and component binaries it runs).
See docs/dev-cluster.md.
"""
