"""`fleetwarden incident list|show|postmortem`: read the incident records the operator keeps.

Records live in the ConfigMap ``fleetwarden-incidents`` of each namespace (one key per
incident id, JSON; see ``fleetwarden.handlers.incidents``).

    fleetwarden incident list [-n NS | -A] [-o table|json]
    fleetwarden incident show ID [-n NS] [-o text|json]
    fleetwarden incident postmortem ID [-n NS] [-o FILE]

``show`` and ``postmortem`` search every namespace unless ``-n`` is given (ids are unique).
The postmortem text is :func:`fleetwarden.core.incidents.render_postmortem`'s; this module
only reads the record and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from fleetwarden import errors
from fleetwarden.core import digest, incidents, spec, timefmt, windows
from fleetwarden.core import metricnames as names

CONFIGMAP = "fleetwarden-incidents"  # fleetwarden.handlers.incidents.CONFIGMAP (no kopf import here)


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("incident", help="list incidents, show one, draft its postmortem",
                                   description="Read the incident records the operator keeps.")
    sub = parser.add_subparsers(dest="incident_command", metavar="SUBCOMMAND")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--kubeconfig", default=None, help="kubeconfig file (default: $KUBECONFIG)")
        p.add_argument("--as", dest="as_user", default=None, metavar="USER", help="impersonate USER")

    p_list = sub.add_parser("list", help="incidents, newest first")
    scope = p_list.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", default=None, help="this namespace (default: the context's)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="every namespace")
    p_list.add_argument("--output", "-o", choices=["table", "json"], default="table")
    common(p_list)
    p_list.set_defaults(func=run_list)

    p_show = sub.add_parser("show", help="one incident's full record")
    p_show.add_argument("id", metavar="ID")
    p_show.add_argument("-n", "--namespace", default=None, help="its namespace (default: search all)")
    p_show.add_argument("--output", "-o", choices=["text", "json"], default="text")
    common(p_show)
    p_show.set_defaults(func=run_show)

    p_pm = sub.add_parser("postmortem", help="a blameless postmortem draft (Markdown)")
    p_pm.add_argument("id", metavar="ID")
    p_pm.add_argument("-n", "--namespace", default=None, help="its namespace (default: search all)")
    p_pm.add_argument("-o", "--output", default=None, metavar="FILE", help="write to FILE (default: stdout)")
    p_pm.add_argument("--prometheus", metavar="URL", help="read the agent's spend from this Prometheus for the "
                      "cost impact (spend above baseline, spend prevented)")
    common(p_pm)
    p_pm.set_defaults(func=run_postmortem)

    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


# ---------------------------------------------------------------- reading


def _kube(args: argparse.Namespace) -> Any:
    from fleetwarden.adapters import approvals, kube

    return kube.Kube(approvals.api_client(args.kubeconfig, as_user=args.as_user))


def _configmaps(args: argparse.Namespace, namespace: str | None) -> list[dict[str, Any]]:
    from fleetwarden.adapters import configmaps

    k = _kube(args)
    if namespace is None:
        return configmaps.list_named(k, CONFIGMAP)
    found = configmaps.get(k, namespace, CONFIGMAP)
    return [found] if found is not None else []


def parse_configmap(cm: dict[str, Any]) -> list[incidents.Incident]:
    """The records in one ConfigMap; a key that does not parse is an InputError naming it."""
    meta = cm.get("metadata", {})
    out = []
    for key, value in sorted((cm.get("data") or {}).items()):
        try:
            out.append(incidents.Incident.from_dict(json.loads(value)))
        except (ValueError, KeyError, TypeError) as exc:
            raise errors.InputError(f"not an incident record: {exc}",
                                    file=f"configmap {meta.get('namespace')}/{meta.get('name')}", field=key) from exc
    return out


def _records(args: argparse.Namespace, namespace: str | None) -> list[incidents.Incident]:
    records = [r for cm in _configmaps(args, namespace) for r in parse_configmap(cm)]
    return sorted(records, key=lambda r: (timefmt.parse_rfc3339_strict(r.last_seen), r.id), reverse=True)


def _find(args: argparse.Namespace) -> incidents.Incident:
    for record in _records(args, args.namespace):
        if record.id == args.id:
            return record
    where = f"namespace {args.namespace}" if args.namespace else "any namespace"
    raise errors.InputError(f"no incident {args.id} in {where} (try `fleetwarden incident list -A`)")


def _namespace(args: argparse.Namespace) -> str | None:
    if getattr(args, "all_namespaces", False):
        return None
    if args.namespace:
        return str(args.namespace)
    from fleetwarden.commands import approval

    return approval.default_namespace(args.kubeconfig)


# ---------------------------------------------------------------- commands


def run_list(args: argparse.Namespace) -> int:
    records = _records(args, _namespace(args))
    if args.output == "json":
        print(json.dumps([r.to_dict() for r in records], indent=2, sort_keys=True))
        return 0
    if not records:
        print("no incidents")
        return 0
    rows = [("ID", "NAMESPACE", "AGENT", "KIND", "ACTION", "STATUS", "DETECTED", "SUMMARY")]
    rows += [(r.id, r.namespace, r.agent, r.kind, r.action, r.status, r.detected, r.message[:60]) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:-1], widths, strict=True)) + "  " + row[-1])
    return 0


def run_show(args: argparse.Namespace) -> int:
    record = _find(args)
    if args.output == "json":
        print(json.dumps(record.to_dict(), indent=2, sort_keys=True))
        return 0
    print(f"{record.id}  {record.title}  [{record.status}]")
    print(f"  agent:      {record.namespace}/{record.agent}" + (f" (workflow {record.workflow})" if record.workflow else ""))
    print(f"  budget:     {record.budget or '-'}    policy: {record.policy or '-'}")
    if record.model or record.previous_model:
        print(f"  model:      {record.previous_model or '?'} -> {record.model or '?'}")
    if record.tool:
        print(f"  tool:       {record.tool}")
    print(f"  opened:     {record.opened}   detected: {record.detected}   last seen: {record.last_seen}")
    if record.resolved_at:
        print(f"  resolved:   {record.resolved_at}")
    print(f"  message:    {record.message}")
    print(f"  evidence:   {json.dumps(dict(record.evidence), sort_keys=True)}")
    print("  timeline:")
    for entry in record.timeline:
        print(f"    {entry.time}  {entry.what}")
    return 0


def run_postmortem(args: argparse.Namespace) -> int:
    record = _find(args)
    now = time.time()
    impact = _impact(args.prometheus, record, now) if args.prometheus else None
    text = incidents.render_postmortem(record, now=now, impact=impact)
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise errors.InputError(f"cannot write: {exc.strerror}", file=args.output) from exc
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def _impact(url: str, record: incidents.Incident, now: float) -> digest.CostImpact:
    from fleetwarden.adapters import prometheus_report

    return record_impact(prometheus_report.ReportSource(url), record, now)


def record_impact(src: Any, record: incidents.Incident, now: float) -> digest.CostImpact:
    """The incident's cost impact from the agent's spend per minute in Prometheus (``src``, a
    ``prometheus_report.ReportSource``), from an hour before onset to the end of the day of
    the action (or now)."""
    from fleetwarden.adapters import prometheus_report

    onset = timefmt.parse_rfc3339_strict(record.opened)
    resolved = timefmt.parse_rfc3339_strict(record.resolved_at) if record.resolved_at else now
    acting = next((a for a in record.actions if a.action in digest.STOPPING_ACTIONS | digest.CORRECTING_ACTIONS),
                  None)
    action_time = timefmt.parse_rfc3339_strict(acting.time) if acting else resolved
    window_end = windows.calendar_end(spec.Window.day, action_time)
    per_minute = prometheus_report.agent_spend_per_minute(
        src, record.namespace, record.agent, onset - digest.BASELINE_SECONDS, min(now, max(resolved, window_end)),
        names.SPEND)
    return digest.cost_impact(per_minute, onset=onset, resolved=resolved,
                              action=acting.action if acting else record.action, action_time=action_time,
                              window_end=window_end, known_from=min(per_minute) if per_minute else None)
