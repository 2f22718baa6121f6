"""`fleetwarden digest`: the sprint-review cost digest, this period against the one before.

Offline from usage events (``--events FILE``) or live from Prometheus (``--live``, with
``--prometheus URL``). ``--period 14d`` by default. It shows spend by team, project and
cost center with deltas; the top movers (agents, tools, models) with the finding or model
change that explains each; cost per outcome against target and human baseline with its
trend; budgets with projected month-end and days left; recommendations and what changed;
the period's incidents with their cost impact and postmortem status; governance gaps.

Output: Markdown (default), HTML or JSON, to standard output or ``-o FILE``, always, before
any ``--post``: a failed post (after bounded retries with backoff) exits non-zero, and
the digest is still there.

    fleetwarden digest --events usage.jsonl -f budgets/ --period 14d -o digest.md
    fleetwarden digest --live --prometheus http://prometheus:9090 --post slack
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from fleetwarden import errors
from fleetwarden.commands import report as report_cmd
from fleetwarden.core import digest as core
from fleetwarden.core import findings, pricing, spec, timefmt
from fleetwarden.views import digest, digest_render, live, model, offline

POST_TARGETS = ("slack", "alertmanager", "configmap")
WEBHOOK_ENV = "FLEETWARDEN_DIGEST_WEBHOOK_URL"
PROMETHEUS_ENV = "FLEETWARDEN_PROMETHEUS_URL"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "digest", help="sprint-review cost digest: this period against the one before, delivered",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE", help="usage events (JSON Lines)")
    source.add_argument("--live", action="store_true", help="read live metrics from Prometheus (--prometheus)")
    parser.add_argument("--prometheus", metavar="URL", default=os.environ.get(PROMETHEUS_ENV),
                        help=f"Prometheus for --live (default: ${PROMETHEUS_ENV})")
    parser.add_argument("--period", default="14d", help="length of a period, e.g. 14d, 7d, 2h (default 14d)")
    parser.add_argument("--end", metavar="TIME", help="end of the current period (RFC 3339 or Unix seconds); "
                        "default: offline the minute after the last event, live now")
    parser.add_argument("--periods", type=int, default=4, help="periods in the cost-per-outcome trend (default 4)")
    parser.add_argument("-f", "--filename", dest="manifests", action="append", default=[], metavar="MANIFESTS",
                        help="AgentBudget/CostPolicy YAML file or directory (repeatable)")
    parser.add_argument("--kubeconfig", metavar="FILE", help="live: agent Deployments, AgentBudgets and incidents")
    parser.add_argument("--postmortems", metavar="DIR", help="postmortems written, one file per incident id "
                        "(<id>.md): incidents without one are listed")
    parser.add_argument("--prices", metavar="FILE", help="price table overrides (YAML) for events without cost_usd")
    parser.add_argument("--output", choices=tuple(digest_render.RENDERERS), default="markdown")
    parser.add_argument("-o", "--out", metavar="FILE", help="write here instead of standard output")
    parser.add_argument("--title", default="Fleetwarden cost digest")
    parser.add_argument("--post", action="append", choices=POST_TARGETS, default=[],
                        help="deliver the digest: slack (incoming webhook), alertmanager (webhook receiver) or "
                             "configmap (repeatable)")
    parser.add_argument("--webhook-url-env", default=WEBHOOK_ENV, metavar="VAR",
                        help=f"environment variable holding the webhook URL, from a Secret (default {WEBHOOK_ENV})")
    parser.add_argument("--configmap", metavar="NAMESPACE/NAME", help="the ConfigMap for --post configmap")
    parser.add_argument("--retries", type=int, default=3, help="retries of a failed post (default 3)")
    parser.add_argument("--backoff", type=float, default=2.0, help="seconds before the first retry, doubling")
    parser.set_defaults(func=run)


def _offline(args: argparse.Namespace, period: float, budgets: list[spec.AgentBudget],
             policies: list[spec.CostPolicy]) -> digest.Digest:
    prices = pricing.PriceTable.load(args.prices) if args.prices else pricing.PriceTable()
    fold = offline.Fold(prices, digest.DIMENSIONS, budgets=budgets, cost_policies=policies)
    for ev in report_cmd._events(args.events):
        fold.add(ev)
    found, notes = report_cmd._replay(report_cmd._events(args.events), budgets, policies, prices)
    if fold.last is None:
        raise errors.InputError("no usage events: the period has no data", file=args.events)
    end = report_cmd.parse_end(args.end)
    end = end if end is not None else (int(fold.last // 60) + 1) * 60.0
    try:
        check, reports = digest.offline_reports(fold, found, budgets, period_seconds=period, end=end,
                                                periods=max(2, args.periods), steps=digest.steps_for(period))
    except core.PeriodError as exc:
        raise errors.InputError(f"{exc}: the events end at {timefmt.rfc3339(fold.last)}", field="--end") from None
    current = reports[0]
    assert current is not None
    return digest.compose(
        current, reports[1], period_seconds=period, title=args.title, notes=[*check.notes, *notes],
        older=list(reversed(reports[2:])), budgets=digest.offline_budgets(fold, budgets, current, period),
        impacts=digest.offline_impacts(fold, _in(found, current), current), postmortems=_postmortems(args, current),
        agent_models={f"{ns}/{agent}": sorted(used) for (ns, agent), used in fold.models.items()})


def _in(found: list[findings.Finding], report: model.Report) -> list[findings.Finding]:
    return [f for f in found if report.window_start <= f.time <= report.window_end]


def _live(args: argparse.Namespace, period: float, budgets: list[spec.AgentBudget]) -> digest.Digest:
    from fleetwarden.adapters import prometheus_report

    if not args.prometheus:
        raise errors.InputError(f"--live needs --prometheus URL (or ${PROMETHEUS_ENV})", field="--prometheus")
    src = prometheus_report.ReportSource(args.prometheus)
    end = report_cmd.parse_end(args.end)
    end = end if end is not None else time.time()
    try:
        check = core.check_periods(period_seconds=period, end=end,
                                   first_data=digest.live_first_data(src, period_seconds=period, end=end),
                                   retention_seconds=prometheus_report.retention_seconds(args.prometheus))
    except core.PeriodError as exc:
        raise errors.InputError(f"{exc}: Prometheus at {args.prometheus} has no fleetwarden cost series "
                                f"in the {args.period} before {timefmt.rfc3339(end)}", field="--period") from None

    def build(stop: float) -> model.Report:
        return live.build(args.prometheus, dims=digest.DIMENSIONS, window_seconds=period, steps=digest.steps_for(period), end=stop,
                          budgets=budgets, kubeconfig=args.kubeconfig, title=args.title, source=src)

    current = build(end)
    previous = build(end - period) if check.previous_known else None
    return digest.compose(current, previous, period_seconds=period, title=args.title, notes=check.notes,
                          budgets=digest.live_budgets(src, current, period), postmortems=_postmortems(args, current),
                          impacts=_live_impacts(args, src, current, end))


def _live_impacts(args: argparse.Namespace, src: Any, report: model.Report, end: float
                  ) -> dict[str, core.CostImpact | None]:
    """With a kubeconfig, each incident's record (the operator's incident ConfigMaps) and the
    agent's spend in Prometheus give its cost impact; otherwise it is unknown."""
    impacts: dict[str, core.CostImpact | None] = {i.id: None for i in report.incidents}
    if args.kubeconfig is None or not impacts:
        return impacts
    from fleetwarden.commands import incident as incident_cmd

    records = incident_cmd._records(argparse.Namespace(kubeconfig=args.kubeconfig, as_user=None), None)
    for record in records:
        if record.id in impacts:
            impacts[record.id] = incident_cmd.record_impact(src, record, end)
    return impacts


def _postmortems(args: argparse.Namespace, report: model.Report) -> dict[str, bool] | None:
    if args.postmortems is None:
        return None
    folder = Path(args.postmortems)
    if not folder.is_dir():
        raise errors.InputError("not a directory", file=args.postmortems, field="--postmortems")
    return {i.id: any(folder.glob(f"{i.id}*")) for i in report.incidents}


def _write(args: argparse.Namespace, text: str) -> None:
    if args.out:
        try:
            Path(args.out).write_text(text, encoding="utf-8")
        except OSError as exc:
            raise errors.InputError(f"cannot write: {exc.strerror}", file=args.out) from exc
    else:
        sys.stdout.write(text)
        sys.stdout.flush()


def deliver(args: argparse.Namespace, d: digest.Digest) -> None:
    """Post the digest to each ``--post`` target; every target is tried, the first failure raised."""
    from fleetwarden.adapters import webhook

    markdown = digest_render.render_markdown(d)
    failures: list[errors.FleetwardenError] = []
    for target in args.post:
        try:
            if target == "configmap":
                _to_configmap(args, d, markdown)
                continue
            url = os.environ.get(args.webhook_url_env)
            if not url:
                raise errors.InputError(f"--post {target} needs the webhook URL in ${args.webhook_url_env} "
                                        "(from a Secret)", field="--webhook-url-env")
            payload = (webhook.slack_payload(markdown) if target == "slack" else webhook.alertmanager_payload(
                markdown, summary=digest_render.headline(d), labels={"source": d.source[:60]},
                starts_at=timefmt.rfc3339(d.start), ends_at=timefmt.rfc3339(d.end)))
            attempts = webhook.post_json(url, payload, retries=args.retries, backoff=args.backoff)
            print(f"fleetwarden digest: posted to {target} ({attempts} attempt(s))", file=sys.stderr)
        except errors.FleetwardenError as exc:
            failures.append(exc)
    if failures:
        where = args.out or "standard output"
        raise type(failures[0])(f"{failures[0]} (the digest was written to {where})")


def _to_configmap(args: argparse.Namespace, d: digest.Digest, markdown: str) -> None:
    from fleetwarden.adapters import configmaps, kube

    if not args.configmap or "/" not in args.configmap:
        raise errors.InputError("--post configmap needs --configmap NAMESPACE/NAME", field="--configmap")
    namespace, _, name = args.configmap.partition("/")
    client = kube.Kube(kube.load_config(args.kubeconfig))
    configmaps.upsert(client, namespace, name, {"digest.md": markdown, "digest.json": digest_render.render_json(d)},
                      labels={"fleetwarden.dev/digest": "true"})
    print(f"fleetwarden digest: wrote configmap {namespace}/{name}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    period = report_cmd.parse_duration(args.period, what="--period")
    if args.periods < 2:
        raise errors.InputError("--periods must be at least 2", field="--periods")
    budgets, policies = report_cmd.load_manifests(args.manifests)
    d = _offline(args, period, budgets, policies) if args.events is not None else _live(args, period, budgets)
    _write(args, digest_render.RENDERERS[args.output](d))
    if args.post:
        deliver(args, d)
    return 0
