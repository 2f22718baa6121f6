"""`fleetwarden approve NAME` and `fleetwarden deny NAME`: decide a CostApproval.

The decision is written through the status subresource with ``status.decidedBy`` = the
caller's username, found with a SelfSubjectReview, so the record says who decided (the
admission policy in manifests/approvals-policy.yaml checks it and refuses a decision by
the requester itself). ``--as USER`` impersonates, like ``kubectl --as``.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    for verb, decision in (("approve", "Approved"), ("deny", "Denied")):
        parser = subparsers.add_parser(verb, help=f"{verb} a pending CostApproval (records who decided)",
                                       description=f"{verb.capitalize()} a pending CostApproval.")
        parser.add_argument("name", metavar="NAME", help="the CostApproval's name")
        parser.add_argument("-n", "--namespace", default=None,
                            help="its namespace (default: the kubeconfig context's, else 'default')")
        parser.add_argument("--reason", default=None, help="why (recorded in status.reason)")
        parser.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
        parser.add_argument("--as", dest="as_user", default=None, metavar="USER",
                            help="impersonate USER (needs the impersonate permission)")
        parser.add_argument("--as-group", dest="as_group", default=None, metavar="GROUP",
                            help="impersonate GROUP with --as")
        parser.set_defaults(func=run, decision=decision)


def default_namespace(kubeconfig: str | None) -> str:
    """The namespace of the kubeconfig's current context, else ``default``."""
    try:
        from kubernetes import config

        _, context = config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
        return str((context or {}).get("context", {}).get("namespace") or "default")
    except Exception:  # noqa: BLE001 - no kubeconfig (in a pod): the default namespace
        return "default"


def run(args: argparse.Namespace) -> int:
    from fleetwarden.adapters import approvals  # the Kubernetes client only when needed

    namespace = args.namespace or default_namespace(args.kubeconfig)
    api = approvals.api_client(args.kubeconfig, as_user=args.as_user,
                               as_groups=(args.as_group,) if args.as_group else ())
    body = approvals.Approvals(api).decide(namespace, args.name, args.decision, reason=args.reason)
    status = body.get("status") or {}
    print(f"costapproval {namespace}/{args.name}: {status.get('decision')} by {status.get('decidedBy')} "
          f"at {status.get('decidedAt')}")
    return 0
