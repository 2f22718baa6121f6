"""`fleetwarden operator`: run the kopf operator in this process.

    fleetwarden operator [--interval 15] [--prometheus-url URL] [--namespace NS | --all-namespaces]
                         [--scrape-interval 15] [--lookback-minutes 90] [--metrics-port 8081]
                         [--alertmanager-url URL] [--liveness http://0.0.0.0:8080/healthz] [--verbose]

The flags set the ``FLEETWARDEN_*`` environment read by ``fleetwarden.handlers.settings``
(so ``kopf run -m fleetwarden.handlers`` with the same variables behaves the same).
"""

from __future__ import annotations

import argparse
import os

from fleetwarden import errors


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "operator", help="run the operator (reconcile Prometheus cost against AgentBudgets)",
        description="Evaluate every AgentBudget on a timer: status, kill switch, model rollback, events.")
    parser.add_argument("--interval", type=float, default=None,
                        help="seconds between evaluations of each budget (default 15; env FLEETWARDEN_INTERVAL)")
    parser.add_argument("--prometheus-url", default=None,
                        help="Prometheus with the agents' metrics (default http://localhost:9090; "
                             "env FLEETWARDEN_PROMETHEUS_URL)")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=None,
                       help="serve only this namespace (repeatable)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace (default)")
    parser.add_argument("--scrape-interval", type=float, default=None,
                        help="Prometheus' scrape interval in seconds: data older than 3 of them is stale "
                             "(default 15)")
    parser.add_argument("--lookback-minutes", type=int, default=None,
                        help="minutes of history the detectors refold each cycle (default 90)")
    parser.add_argument("--metrics-port", type=int, default=None,
                        help="port of the operator's own /metrics (default 8081; 0 turns it off)")
    parser.add_argument("--alertmanager-url", default=None, metavar="URL",
                        help="send one alert per incident to this Alertmanager, e.g. "
                             "http://alertmanager.monitoring:9093 (default: none; env FLEETWARDEN_ALERTMANAGER_URL)")
    parser.add_argument("--liveness", default=None, metavar="URL",
                        help="serve kopf's liveness probe here, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--verbose", "-v", action="store_true", help="log more")
    _register_leader_election(parser)
    parser.set_defaults(func=run)


def _register_leader_election(parser: argparse.ArgumentParser) -> None:
    """``--leader-elect`` and the Lease's settings (defaults as controller-runtime's)."""
    group = parser.add_argument_group("leader election (run several replicas; exactly one acts)")
    group.add_argument("--leader-elect", action=argparse.BooleanOptionalAction, default=False,
                       help="hold a coordination.k8s.io Lease before acting; stand by while another "
                            "replica holds it (default: off, a single replica acts alone)")
    group.add_argument("--lease-name", default="fleetwarden-operator", help="the Lease (default fleetwarden-operator)")
    group.add_argument("--lease-namespace", default=None,
                       help="the Lease's namespace (default: $POD_NAMESPACE, else the pod's own namespace)")
    group.add_argument("--lease-duration", type=float, default=15.0,
                       help="seconds a standby waits after the last renewal it saw before taking over (default 15)")
    group.add_argument("--renew-deadline", type=float, default=10.0,
                       help="seconds the leader keeps trying to renew before it stops acting; shorter than "
                            "--lease-duration (default 10)")
    group.add_argument("--retry-period", type=float, default=2.0,
                       help="seconds between attempts to acquire or renew (default 2)")


def _set(name: str, value: object) -> None:
    if value is not None:
        os.environ[name] = str(value)


def run(args: argparse.Namespace) -> int:
    if args.interval is not None and args.interval < 0.5:
        raise errors.InputError("must be at least 0.5 seconds", field="--interval")
    if args.alertmanager_url is not None and not args.alertmanager_url.startswith(("http://", "https://")):
        raise errors.InputError(f"must start with http:// or https://, got {args.alertmanager_url!r}",
                                field="--alertmanager-url")
    _set("FLEETWARDEN_INTERVAL", args.interval)
    _set("FLEETWARDEN_PROMETHEUS_URL", args.prometheus_url)
    _set("FLEETWARDEN_SCRAPE_INTERVAL", args.scrape_interval)
    _set("FLEETWARDEN_LOOKBACK_MINUTES", args.lookback_minutes)
    _set("FLEETWARDEN_METRICS_PORT", args.metrics_port)
    _set("FLEETWARDEN_ALERTMANAGER_URL", args.alertmanager_url)

    import kopf

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    import fleetwarden.handlers  # noqa: F401 - registers the handlers (reads the settings above)
    from fleetwarden.handlers import leader

    # Leader election: stand by until this replica holds the Lease (docs/operator.md).
    elector = leader.elect(leader.settings_from_args(args), liveness=args.liveness) if args.leader_elect else None

    namespaces = args.namespace or []
    try:
        kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
                 liveness_endpoint=args.liveness)
    finally:
        if elector is not None:
            leader.step_down(elector)
    return 0
