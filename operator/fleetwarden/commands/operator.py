"""`fleetwarden operator`: run the kopf operator in this process.

    fleetwarden operator [--interval 15] [--prometheus-url URL] [--prometheus-timeout 10] [--prometheus-grace 30]
                         [--prometheus-headers X-Scope-OrgID=TENANT]
                         [--namespace NS ... | --all-namespaces]
                         [--scrape-interval 15] [--lookback-minutes 90] [--metrics-port 8081]
                         [--alertmanager-url URL] [--evaluation fleet|timers] [--prometheus-reader thread|process]
                         [--liveness http://0.0.0.0:8080/healthz] [--verbose]

The flags set the ``FLEETWARDEN_*`` environment read by ``fleetwarden.handlers.settings``
(so ``kopf run -m fleetwarden.handlers`` with the same variables behaves the same). A bad value
(not a finite number, below its minimum, a URL without http(s):// and a host) stops it at
start with one line naming the flag (or variable) and the value; exit code 2.

A shard (docs/scaling.md): ``--namespace`` (repeatable; a name or a glob such as ``team-*``)
limits both what kopf watches and every Prometheus query of the SDK's series
(``FLEETWARDEN_NAMESPACES``, which serves as the namespaces when no flag is given). A value
kopf reads as a pattern with exclusions or commas (``!team-dev``) limits the watches only;
the queries then cover the fleet. Under ``--leader-elect`` a shard's Lease is, unless
``--lease-name`` says otherwise, ``fleetwarden-operator-<hash of its namespaces>``: replicas of
one shard share it, two shards never do.
"""

from __future__ import annotations

import argparse
import logging
import os

from fleetwarden import errors

# The flags that set a FLEETWARDEN_* variable (handlers.settings checks the value):
# (flag, variable, metavar, help)
FLAGS = (
    ("--interval", "FLEETWARDEN_INTERVAL", "SECONDS", "seconds between evaluations of each budget (default 15)"),
    ("--prometheus-url", "FLEETWARDEN_PROMETHEUS_URL", "URL",
     "Prometheus with the agents' metrics (default http://localhost:9090)"),
    ("--prometheus-timeout", "FLEETWARDEN_PROMETHEUS_TIMEOUT", "SECONDS",
     "seconds one Prometheus query may take; longer, the fetch fails (default 10)"),
    ("--prometheus-grace", "FLEETWARDEN_PROMETHEUS_GRACE", "SECONDS",
     "a fetch that fails less than this after the last good one goes on with that one's data; "
     "later failures make the metrics unknown (default 30; 0: every failure does)"),
    ("--scrape-interval", "FLEETWARDEN_SCRAPE_INTERVAL", "SECONDS",
     "Prometheus' scrape interval in seconds: data older than 3 of them is stale (default 15)"),
    ("--lookback-minutes", "FLEETWARDEN_LOOKBACK_MINUTES", "MINUTES",
     "minutes of history the detectors see at least; each fetch reads 15 more for their anchor (default 90)"),
    ("--metrics-port", "FLEETWARDEN_METRICS_PORT", "PORT",
     "port of the operator's own /metrics (default 8081; 0 turns it off)"),
    ("--evaluation", "FLEETWARDEN_EVALUATION", "MODE",
     "timers: a kopf timer per budget (default); fleet: one evaluation of every budget per interval"),
    ("--alertmanager-url", "FLEETWARDEN_ALERTMANAGER_URL", "URL",
     "send one alert per incident to this Alertmanager, e.g. http://alertmanager.monitoring:9093 (default: none)"),
    ("--prometheus-reader", "FLEETWARDEN_PROMETHEUS_READER", "WHERE",
     "thread: the operator decodes Prometheus' answers itself (default); process: a reader process of its own "
     "does (less of the operator's CPU, some 80 MiB more memory)"),
    ("--prometheus-headers", "FLEETWARDEN_PROMETHEUS_HEADERS", "NAME=VALUE,...",
     "HTTP headers sent with each query, e.g. X-Scope-OrgID=team-a for Mimir (default: none)"),
)
NAMESPACES_ENV = "FLEETWARDEN_NAMESPACES"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "operator", help="run the operator (reconcile Prometheus cost against AgentBudgets)",
        description="Evaluate every AgentBudget on a timer: status, kill switch, model rollback, events.")
    for flag, env, metavar, text in FLAGS:  # values are kept as written: handlers.settings checks them
        parser.add_argument(flag, default=None, metavar=metavar, help=f"{text}; env {env}")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("--namespace", "-n", action="append", default=None,
                       help="serve only this namespace or glob (repeatable): a shard; also the scope of the "
                            f"Prometheus queries; env {NAMESPACES_ENV} (comma-separated)")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="serve every namespace (default)")
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
    group.add_argument("--lease-name", default=None,
                       help="the Lease (default fleetwarden-operator; a shard's: fleetwarden-operator-<hash of "
                            "its namespaces>)")
    group.add_argument("--lease-namespace", default=None,
                       help="the Lease's namespace (default: $POD_NAMESPACE, else the pod's own namespace)")
    group.add_argument("--lease-duration", type=float, default=15.0,
                       help="seconds a standby waits after the last renewal it saw before taking over (default 15)")
    group.add_argument("--renew-deadline", type=float, default=10.0,
                       help="seconds the leader keeps trying to renew before it stops acting; shorter than "
                            "--lease-duration (default 10)")
    group.add_argument("--retry-period", type=float, default=2.0,
                       help="seconds between attempts to acquire or renew (default 2)")


def _scope_flags(args: argparse.Namespace) -> list[str] | None:
    """What ``--namespace`` / ``-A`` put in FLEETWARDEN_NAMESPACES: the names and globs
    ([] for -A, "" for kopf patterns that no matcher expresses); None: no flag, the
    environment stands."""
    if args.all_namespaces:
        return []
    if not args.namespace:
        return None
    if any("!" in n or "," in n for n in args.namespace):
        return []
    return [n.strip() for n in args.namespace]


def run(args: argparse.Namespace) -> int:
    # 1: the flags become the environment handlers.settings reads (and checks) on import
    from_flag: dict[str, str] = {}
    for flag, env, _, _ in FLAGS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            os.environ[env] = str(value)
            from_flag[env] = flag
    patterns = _scope_flags(args)
    if patterns is not None:
        os.environ[NAMESPACES_ENV] = ",".join(patterns)
        from_flag[NAMESPACES_ENV] = "--namespace"

    # 2: read and check them (importing the package registers the handlers, which read them
    #    too): a bad value names its flag, or else its variable
    try:
        from fleetwarden.handlers import settings

        current = settings.Settings.from_env()
    except errors.InputError as exc:
        if exc.field in from_flag:
            raise errors.InputError(exc.reason, field=from_flag[exc.field]) from None
        raise

    import kopf

    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat.PLAIN)
    import fleetwarden.handlers  # noqa: F401 - registers the handlers (reads the settings above)
    from fleetwarden.handlers import agentbudgets, leader

    # 3: the namespaces served (a shard's, or all); the Prometheus queries' scope is the same
    #    unless a kopf pattern cannot be one (then they cover the fleet, said once here)
    namespaces = list(args.namespace or current.namespaces)
    if args.namespace and not current.namespaces:
        logging.getLogger(__name__).info("namespaces %s: kopf patterns, not a Prometheus matcher; the "
                                         "queries cover every namespace", namespaces)

    # 4: leader election: stand by until this replica holds the Lease (docs/operator.md)
    elector = None
    if args.leader_elect:
        elector = leader.elect(leader.settings_from_args(args, namespaces), liveness=args.liveness)

    try:
        kopf.run(standalone=True, clusterwide=not namespaces, namespaces=namespaces,
                 liveness_endpoint=args.liveness, memories=agentbudgets.MEMORIES)
    finally:
        if elector is not None:
            leader.step_down(elector)
    return 0
