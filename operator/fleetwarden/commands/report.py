"""`fleetwarden report`: cost by agent, tool, step, team, project and cost center, with
trends, anomalies, unit economics, governance gaps and incidents.

Offline from usage events (``--events FILE``), or live from Prometheus (``--prometheus
URL``). ``-f`` reads AgentBudget/CostPolicy manifests (files or directories): their
targets judge unit economics, their selectors say which agents are governed, and replay
uses them to find anomalies. Output: a terminal table (default), JSON, CSV or a
self-contained HTML page (``--output html -o report.html``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pydantic
import yaml

from fleetwarden import errors
from fleetwarden.core import events as events_mod
from fleetwarden.core import findings, pricing, spec, timefmt
from fleetwarden.views import html, live, model, offline, tabular, text

FORMATS = ("table", "json", "csv", "html")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "report", help="cost, trends, anomalies, unit economics and governance gaps of a fleet",
        description=__doc__.split("\n\n")[0] if __doc__ else None)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--events", metavar="FILE", help="usage events (JSON Lines; - for standard input)")
    source.add_argument("--prometheus", metavar="URL", help="read live metrics from this Prometheus")
    parser.add_argument("-f", "--filename", dest="manifests", action="append", default=[], metavar="MANIFESTS",
                        help="AgentBudget/CostPolicy YAML file or directory (repeatable)")
    parser.add_argument("--window", default=None,
                        help="how far back the report looks, e.g. 90m, 24h, 7d (default: live 24h; offline "
                             "the span of the events; offline it ends at the last event)")
    parser.add_argument("--end", metavar="TIME", help="end of the window (RFC 3339 or Unix seconds); "
                        "default: offline the last event, live now")
    parser.add_argument("--by", default=",".join(model.DEFAULT_DIMENSIONS),
                        help=f"dimensions to break cost down by (from {','.join(model.DIMENSIONS)})")
    parser.add_argument("--steps", type=int, default=offline.DEFAULT_STEPS, help="points per trend line")
    parser.add_argument("--output", choices=FORMATS, default="table", help="output format")
    parser.add_argument("-o", "--out", metavar="FILE", help="write here instead of standard output")
    parser.add_argument("--prices", metavar="FILE", help="price table overrides (YAML) for events without cost_usd")
    parser.add_argument("--kubeconfig", metavar="FILE",
                        help="live: list agent Deployments and AgentBudgets from this cluster for governance gaps")
    parser.add_argument("--title", default="Fleetwarden cost report")
    parser.set_defaults(func=run)


def parse_duration(text_: str, *, what: str = "--window") -> float:
    """``"90m"`` -> 5400.0; a clear error for anything else."""
    seconds = timefmt.parse_duration(text_.strip())
    if seconds is None or seconds <= 0:
        raise errors.InputError(f"{what} {text_!r} is not a duration like 90m, 24h or 7d")
    return seconds


def parse_end(text_: str | None) -> float | None:
    if text_ is None:
        return None
    value = events_mod.parse_time(text_)
    if value is None:
        try:
            value = float(text_)
        except ValueError:
            raise errors.InputError(f"--end {text_!r} is not an RFC 3339 time or Unix seconds") from None
    return value


def _manifest_files(paths: Sequence[str]) -> Iterator[Path]:
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
        elif path.is_file():
            yield path
        else:
            raise errors.InputError("no such file or directory", file=raw)


def load_manifests(paths: Sequence[str]) -> tuple[list[spec.AgentBudget], list[spec.CostPolicy]]:
    """AgentBudgets and CostPolicies from files; other kinds are skipped (a directory may hold
    Deployments too); an invalid AgentBudget/CostPolicy is an error naming file, line and field."""
    budgets: list[spec.AgentBudget] = []
    policies: list[spec.CostPolicy] = []
    for path in _manifest_files(paths):
        text_ = path.read_text(encoding="utf-8")
        try:
            docs = list(yaml.compose_all(text_))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise errors.ManifestError(f"not valid YAML: {exc}", file=str(path),
                                       line=mark.line + 1 if mark is not None else None) from exc
        for node in docs:
            if node is None:
                continue
            doc = yaml.safe_load(yaml.serialize(node))
            if not isinstance(doc, dict) or doc.get("kind") not in ("AgentBudget", "CostPolicy"):
                continue
            line = node.start_mark.line + 1
            try:
                resource = spec.parse_resource(doc)
            except pydantic.ValidationError as exc:
                first = exc.errors()[0]
                field = ".".join(str(p) for p in first["loc"])
                raise errors.ManifestError(first["msg"], file=str(path), line=line, field=field) from exc
            if isinstance(resource, spec.AgentBudget):
                budgets.append(resource)
            else:
                policies.append(resource)
    return budgets, policies


def _events(path: str) -> Iterator[events_mod.Event]:
    for item in events_mod.iter_events(path):
        if isinstance(item, errors.EventError):
            raise item
        yield item


def offline_report(args: argparse.Namespace, dims: tuple[str, ...], window: float | None,
                   budgets: list[spec.AgentBudget], policies: list[spec.CostPolicy]) -> model.Report:
    # Tool prices of CostPolicies and human rates of AgentBudgets apply per agent, in the
    # fold as in replay; the table is the fallback.
    prices = pricing.PriceTable.load(args.prices) if args.prices else pricing.PriceTable()
    # Standard input can be read once and replay needs a second pass: keep its lines.
    source_lines = sys.stdin.buffer.readlines() if args.events == "-" else None

    def stream() -> Iterator[events_mod.Event]:
        if source_lines is not None:
            for item in events_mod.iter_events(source_lines, file="<stdin>"):
                if isinstance(item, errors.EventError):
                    raise item
                yield item
        else:
            yield from _events(args.events)

    fold = offline.Fold(prices, dims, budgets=budgets, cost_policies=policies)
    for ev in stream():
        fold.add(ev)
    found, notes = _replay(stream(), budgets, policies, prices)
    return fold.report(window_seconds=window, end=parse_end(args.end), steps=args.steps, found=found,
                       budgets=budgets, title=args.title, source=f"events: {args.events}", notes=notes,
                       replayed=True)


def _replay(stream: Iterator[events_mod.Event], budgets: list[spec.AgentBudget],
            policies: list[spec.CostPolicy], prices: pricing.PriceTable
            ) -> tuple[list[findings.Finding], list[str]]:
    try:
        from fleetwarden.core import replay
    except ImportError:
        return [], ["anomalies are not shown: fleetwarden.core.replay is not available in this build"]
    from fleetwarden.commands.replay import collector_for_replay

    with collector_for_replay():  # the collector as `fleetwarden replay` sets it
        return list(replay.run(stream, budgets, policies, prices)), []


def run(args: argparse.Namespace) -> int:
    try:
        dims = model.parse_dimensions(args.by)
    except ValueError as exc:
        raise errors.InputError(str(exc), field="--by") from None
    if args.steps < 2:
        raise errors.InputError("--steps must be at least 2")
    window = parse_duration(args.window) if args.window is not None else None
    budgets, policies = load_manifests(args.manifests)
    if args.events is not None:
        report = offline_report(args, dims, window, budgets, policies)
    else:
        window = window if window is not None else 86400.0
        end = parse_end(args.end)
        report = live.build(args.prometheus, dims=dims, window_seconds=window, steps=args.steps,
                            end=end if end is not None else time.time(), budgets=budgets,
                            kubeconfig=args.kubeconfig, title=args.title)
    out = {"table": text.render, "json": tabular.render_json, "csv": tabular.render_csv,
           "html": html.render}[args.output](report)
    if args.out:
        Path(args.out).write_text(out, encoding="utf-8")
    else:
        sys.stdout.write(out)
    return 0
