"""`fleetwarden simulate`: a fleet of simulated agents, built on the SDK.

    fleetwarden simulate --fast --duration 6h --scenario runaway-loop --at 120 --events usage.jsonl
    fleetwarden simulate --port 9300 --events usage.jsonl --speed 1 [--kubeconfig KUBECONFIG]
    fleetwarden simulate --port 9301 --profiles support --names support-triage,support-resolver \
        --namespace support --kubeconfig KUBECONFIG --speed 10

``--fast`` generates events on a simulated clock as fast as possible (deterministic with
``--seed``); without it the fleet runs paced to the wall clock and serves /metrics on
127.0.0.1:PORT until ``--duration`` passes or it is stopped (SIGINT/SIGTERM). When the run
ends, open tasks end abandoned and the events are flushed; ``--linger`` keeps /metrics
served for that many seconds more (so a last scrape sees the final totals). With
``--kubeconfig`` each agent follows the Deployment of its name (``--names``) in
``--namespace``: replicas, model, and the ``fleetwarden.dev/simulate-scenario`` annotation.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time

from fleetwarden import errors
from fleetwarden.core import timefmt

DEFAULT_FAST_START = "2026-01-05T00:00:00Z"


def parse_duration(text: str) -> float:
    """Seconds from ``90`` (seconds), ``90s``, ``30m``, ``6h``, ``2d`` or ``1h30m``."""
    seconds = timefmt.parse_duration(text.strip(), bare_unit="s")
    if seconds is None:
        raise errors.InputError(f"{text!r} is not a duration like 90s, 30m or 6h", field="--duration")
    return seconds


def parse_start(text: str) -> float:
    start = timefmt.parse_rfc3339(text)
    if start is None:
        raise errors.InputError(f"{text!r} is not an RFC 3339 time", field="--start")
    return start


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from fleetwarden.simulate import profiles

    parser = subparsers.add_parser(
        "simulate", help="run a fleet of simulated agents (metrics and usage events)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast", action="store_true",
                        help="simulated clock: generate --duration of events as fast as possible")
    parser.add_argument("--duration", type=parse_duration, default=None,
                        help="simulated time to run (90s, 30m, 6h); default 1h with --fast, "
                             "else until stopped")
    parser.add_argument("--profiles", default=",".join(profiles.PROFILES),
                        help=f"comma-separated profiles (default: {','.join(profiles.PROFILES)})")
    parser.add_argument("--agents", type=int, default=2, help="agents per profile (default 2)")
    parser.add_argument("--names", default=None,
                        help="comma-separated agent names, in order (profile by profile), instead of "
                             "<prefix>-<index>: name them after Deployments to follow those")
    parser.add_argument("--namespace", default="default", help="the agents' namespace")
    parser.add_argument("--scenario", choices=profiles.SCENARIOS, default="normal")
    parser.add_argument("--at", type=float, default=60.0,
                        help="minutes from the start when the scenario's anomaly begins (default 60)")
    parser.add_argument("--target", default=None,
                        help="the agent the scenario changes (default: the first agent)")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--start", type=parse_start, default=None,
                        help=f"simulated start time, RFC 3339 (default with --fast: {DEFAULT_FAST_START}; "
                             "else now)")
    parser.add_argument("--events", default=None, help="write usage events (JSONL) to FILE ('-': stdout)")
    parser.add_argument("--prices", default=None, help="price configuration (YAML) instead of the built-in one")
    parser.add_argument("--policy-dir", default=None,
                        help="a mounted CostPolicy directory (policy.json, halt) the agents obey")
    parser.add_argument("--port", type=int, default=None, help="serve /metrics on this port (real-time mode)")
    parser.add_argument("--addr", default="127.0.0.1", help="address for /metrics (default 127.0.0.1)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="simulated seconds per wall-clock second in real-time mode (default 1)")
    parser.add_argument("--linger", type=float, default=0.0,
                        help="after the run, keep serving /metrics this many seconds")
    parser.add_argument("--kubeconfig", default=None,
                        help="follow each agent's Deployment (replicas, model) in --namespace")
    parser.add_argument("--poll", type=float, default=3.0, help="Deployment poll interval, seconds (default 3)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from fleetwarden.core import pricing
    from fleetwarden.sdk import _events, _guardrails, _metrics
    from fleetwarden.simulate import fleet as fleet_mod
    from fleetwarden.simulate import profiles

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", stream=sys.stderr)
    names = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [n for n in names if n not in profiles.PROFILES]
    if unknown:
        raise errors.InputError(f"unknown profile {unknown[0]!r} (known: {', '.join(profiles.PROFILES)})",
                                field="--profiles")
    if args.agents < 1:
        raise errors.InputError("must be at least 1", field="--agents")
    agent_names = None
    if args.names is not None:
        agent_names = [n.strip() for n in args.names.split(",") if n.strip()]
        if len(agent_names) != len(names) * args.agents:
            raise errors.InputError(f"{len(agent_names)} names for {len(names) * args.agents} agents "
                                    f"(--agents {args.agents} per profile of {', '.join(names)})", field="--names")
    if args.speed <= 0:
        raise errors.InputError("must be > 0", field="--speed")
    if args.fast and (args.port is not None or args.kubeconfig is not None):
        raise errors.InputError("--fast runs on a simulated clock: it serves no /metrics and follows no "
                                "Deployments (drop --port/--kubeconfig)", field="--fast")
    if args.fast and args.events is None:
        raise errors.InputError("--fast writes usage events: give --events FILE (or - for stdout)",
                                field="--events")

    if args.prices is not None:
        prices = pricing.PriceTable.load(args.prices)
    else:
        prices = pricing.PriceTable.from_config({"tools": profiles.TOOL_PRICES_USD})
    policy = _guardrails.GuardrailPolicy.from_dir(args.policy_dir) if args.policy_dir else None
    if args.fast:
        start = args.start if args.start is not None else parse_start(DEFAULT_FAST_START)
    else:
        start = args.start if args.start is not None else time.time()
    registry = CollectorRegistry()
    # A run writes its own file: appending a second run would interleave two fleets' clocks.
    events = (_events.EventWriter(args.events, flush_every=1 if not args.fast else 10_000, append=False)
              if args.events else None)
    try:
        fleet = fleet_mod.Fleet(profiles=names, agents_per_profile=args.agents, namespace=args.namespace,
                                scenario=args.scenario, at_minutes=args.at, target=args.target, seed=args.seed,
                                start=start, registry=registry, events=events, prices=prices, policy=policy,
                                names=agent_names)
    except ValueError as exc:
        raise errors.InputError(str(exc)) from exc

    try:
        if args.fast:
            duration = args.duration if args.duration is not None else 3600.0
            began = time.perf_counter()
            fleet.run_fast(duration)
            print(f"simulated {duration / 3600:.2f} h of {len(fleet.agents)} agents "
                  f"(scenario {args.scenario}): {events.count if events else 0} events "
                  f"in {time.perf_counter() - began:.1f} s", file=sys.stderr)
            return 0
        return _run_realtime(args, fleet, registry, _metrics)
    finally:
        if events is not None:
            events.close()


def _run_realtime(args: argparse.Namespace, fleet: object, registry: object, metrics: object) -> int:
    from fleetwarden.simulate import fleet as fleet_mod

    assert isinstance(fleet, fleet_mod.Fleet)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = None
    if args.port is not None:
        server = metrics.start_metrics_server(args.port, addr=args.addr, registry=registry)  # type: ignore[attr-defined]
        print(f"serving /metrics on http://{args.addr}:{server.server_port}/metrics", file=sys.stderr, flush=True)
    follower = None
    if args.kubeconfig is not None:
        from fleetwarden.simulate import follow

        follower = follow.DeploymentFollower(fleet, args.kubeconfig, interval=args.poll).start()
    try:
        fleet.run_realtime(args.duration, speed=args.speed, stop=stop)
        print("simulation finished: spending stopped, events flushed", file=sys.stderr, flush=True)
        if server is not None and args.linger > 0:
            stop.wait(args.linger)
    finally:
        if follower is not None:
            follower.stop()
        if server is not None:
            server.shutdown()
    return 0
