"""`fleetwarden dev-cluster`: a real Kubernetes control plane (plus Prometheus/Alertmanager) on loopback.

    fleetwarden dev-cluster build                  build missing binaries (and helm) into the cache
    fleetwarden dev-cluster up [--prometheus] [--alertmanager]
    fleetwarden dev-cluster env                    `eval "$(fleetwarden dev-cluster env)"`
    fleetwarden dev-cluster status
    fleetwarden dev-cluster down [--keep-state]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys

from fleetwarden.devcluster import build, cluster, layout, monitoring


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "dev-cluster", help="run a local control plane (etcd, kube-apiserver, KWOK nodes) and Prometheus",
        description="A real Kubernetes control plane on 127.0.0.1 with fake KWOK nodes, "
                    "and optionally Prometheus and Alertmanager.")
    parser.add_argument("--state-dir", default=None,
                        help=f"where pids, logs, certificates and kubeconfig live "
                             f"(default {layout.default_state_dir()})")
    actions = parser.add_subparsers(dest="action", metavar="ACTION")

    p_build = actions.add_parser("build", help="build the control-plane binaries and helm into the cache")
    p_build.add_argument("--force", action="store_true", help="rebuild even if cached")
    p_build.set_defaults(func=run_build)

    p_up = actions.add_parser("up", help="start the cluster (and wait until pods can run)")
    p_up.add_argument("--nodes", type=int, default=1, help="number of fake KWOK nodes (default 1)")
    p_up.add_argument("--prometheus", action="store_true", help="also start Prometheus")
    p_up.add_argument("--alertmanager", action="store_true", help="also start Alertmanager")
    p_up.add_argument("--webhook-url", default=None, help="Alertmanager sends every alert to this URL")
    p_up.add_argument("--scrape-interval", type=float, default=monitoring.DEFAULT_SCRAPE_INTERVAL,
                      help="Prometheus scrape interval in seconds (default 15)")
    p_up.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    p_up.set_defaults(func=run_up)

    p_down = actions.add_parser("down", help="stop every process and remove the state directory")
    p_down.add_argument("--keep-state", action="store_true", help="keep logs, certificates and data")
    p_down.set_defaults(func=run_down)

    p_env = actions.add_parser("env", help="print `export` lines for KUBECONFIG and friends")
    p_env.set_defaults(func=run_env)

    p_status = actions.add_parser("status", help="show processes and readiness (exit 1 if not ready)")
    p_status.add_argument("--json", action="store_true", help="print JSON")
    p_status.set_defaults(func=run_status)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _log(message: str) -> None:
    print(f"dev-cluster: {message}", file=sys.stderr, flush=True)


def _cluster(args: argparse.Namespace, **kwargs: object) -> cluster.LocalCluster:
    return cluster.LocalCluster(args.state_dir, log=_log, **kwargs)  # type: ignore[arg-type]


def run_build(args: argparse.Namespace) -> int:
    for comp in layout.COMPONENTS + layout.TOOLS:
        paths = build.build_component(comp, force=args.force, log=_log)
        for name, path in paths.items():
            print(f"{name}\t{path}")
    return 0


def run_up(args: argparse.Namespace) -> int:
    local = _cluster(args, nodes=args.nodes)
    local.up(timeout=args.timeout)
    extra: dict[str, str] = {}
    am_url = None
    if args.alertmanager:
        am = monitoring.Alertmanager(local.state_dir / "alertmanager", args.webhook_url).start()
        am_url = am.url
        extra["ALERTMANAGER_URL"] = am.url
        _log(f"alertmanager at {am.url}")
    if args.prometheus:
        prom = monitoring.Prometheus(local.state_dir / "prometheus", scrape_interval=args.scrape_interval,
                                     alertmanager=am_url).start()
        extra["PROMETHEUS_URL"] = prom.url
        extra["FLEETWARDEN_PROMETHEUS_TARGETS"] = str(prom.targets_dir)
        _log(f"prometheus at {prom.url}; scrape targets: JSON files in {prom.targets_dir}")
    if extra:
        local.set_extra_env(extra)
    print(local.paths.env_file.read_text(), end="")
    return 0


def run_down(args: argparse.Namespace) -> int:
    stopped = _cluster(args).down(keep_state=args.keep_state)
    _log(f"stopped {', '.join(stopped) if stopped else 'nothing (no cluster running)'}")
    return 0


def run_env(args: argparse.Namespace) -> int:
    env = _cluster(args).env()
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")
    # The kubectl built with this cluster's release comes first on PATH.
    kubectl_dir = os.path.dirname(env["FLEETWARDEN_KUBECTL"])
    print(f'export PATH={shlex.quote(kubectl_dir)}:"$PATH"')
    return 0


def run_status(args: argparse.Namespace) -> int:
    status = _cluster(args).status()
    if args.json:
        print(json.dumps(status, indent=2))
    else:
        print(f"state dir: {status['state_dir']}")
        print(f"server:    {status['server'] or '-'}")
        print(f"ready:     {'yes' if status['ready'] else 'no'}")
        processes = status["processes"]
        assert isinstance(processes, dict)
        for name, running in processes.items():
            print(f"  {name:<25} {'running' if running else 'stopped'}")
    return 0 if status["ready"] else 1
