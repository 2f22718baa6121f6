"""`fleetwarden demo`: the local demo on a real control plane (what `scripts/demo` runs).

    fleetwarden demo [--keep] [--state-dir DIR] [--summary FILE] [--speed 10]

Starts a Kubernetes control plane (KWOK nodes), Prometheus and Alertmanager on 127.0.0.1,
applies the CRDs and the example fleets, runs one simulator per example namespace and the
operator, and tells the story as it happens: baseline spend; a model update on the support
swarm that the operator rolls back; a runaway loop in the lead-generation agent that trips
the kill switch; a person resuming it. About six minutes (see docs/demo.md).

Without ``--keep`` everything is stopped at the end, on Ctrl-C and on errors; with it,
everything keeps running and the demo prints how to reach and stop it.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from types import FrameType

from fleetwarden import errors


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from fleetwarden.demo import stack

    parser = subparsers.add_parser(
        "demo", help="the local demo: model rollback and kill switch on a real control plane",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--state-dir", type=Path, default=None,
                        help=f"where the cluster, logs and events live (default {stack.default_state_dir()})")
    parser.add_argument("--keep", action="store_true",
                        help="leave everything running at the end and print how to reach it")
    parser.add_argument("--summary", type=Path, default=None, metavar="FILE",
                        help="write what happened as JSON to FILE (also when the demo fails)")
    parser.add_argument("--speed", type=float, default=10.0,
                        help="simulated seconds per wall-clock second for the agents (default 10)")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="seconds between the operator's evaluations of a budget (default 5)")
    parser.set_defaults(func=run)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(args: argparse.Namespace) -> int:
    from fleetwarden.demo import stack, story

    if not 1 <= args.speed <= 30:
        raise errors.InputError("must be between 1 and 30", field="--speed")
    if args.interval < 1:
        raise errors.InputError("must be at least 1 second", field="--interval")
    state_dir = (args.state_dir or stack.default_state_dir()).expanduser().resolve()
    opts = story.Options(state_dir=state_dir, keep=args.keep, speed=args.speed, interval=args.interval,
                         summary=args.summary.expanduser().resolve() if args.summary else None)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    tale = story.Story(opts)
    ok = False
    try:
        tale.run()
        ok = True
    except KeyboardInterrupt:
        tale.say("\ninterrupted: stopping everything")
        tale.summary["error"] = "interrupted"
        tale.write_summary()
    finally:
        keep = args.keep and ok
        if keep:
            _print_keep(tale)
        else:
            try:
                stopped = tale.stack.stop(remove_state=ok)
            except Exception as exc:  # report, do not hide the story's own error
                print(f"fleetwarden demo: stopping failed: {exc}", file=sys.stderr)
            else:
                where = "" if ok else f"; logs kept in {state_dir / 'logs'}"
                tale.say(f"\nstopped {len(stopped)} processes{where}")
    if ok:
        tale.say(f"\ndemo finished in {tale.summary['seconds']:.0f}s")
        return 0
    return 130


def _print_keep(tale: object) -> None:
    from fleetwarden.demo import story

    assert isinstance(tale, story.Story)
    st = tale.stack
    assert st.prometheus is not None and st.alertmanager is not None
    tale.say("\nEverything keeps running (--keep). To look around:")
    tale.say(f"  export KUBECONFIG={st.kubeconfig}")
    tale.say(f"  export PATH={Path(st.kubectl_path).parent}:$PATH      # the matching kubectl")
    tale.say("  kubectl get fleetwarden -A")
    tale.say(f"  Prometheus   {st.prometheus.url}   Alertmanager {st.alertmanager.url}")
    tale.say(f"  logs         {tale.opts.state_dir / 'logs'}   usage events {tale.opts.state_dir / 'events'}")
    tale.say(f"  fleetwarden report --events {tale.opts.state_dir / 'events' / 'support.jsonl'} "
             "-f examples/support-swarm")
    tale.say(f"Stop it all: fleetwarden dev-cluster --state-dir {tale.opts.state_dir} down")
