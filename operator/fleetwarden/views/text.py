"""The terminal report: aligned tables, sparklines (▁▂▃▄▅▆▇█) and anomalies marked with ``!``."""

from __future__ import annotations

from collections.abc import Sequence

from fleetwarden.core import timefmt
from fleetwarden.views import model

BARS = "▁▂▃▄▅▆▇█"
UNKNOWN = "unknown"


def sparkline(values: Sequence[float | None]) -> str:
    """One character per value, scaled between 0 and the largest value; a gap for unknown."""
    known = [v for v in values if v is not None]
    if not known:
        return " " * len(values)
    top = max(known)
    out = []
    for v in values:
        if v is None:
            out.append(" ")
        elif top <= 0:
            out.append(BARS[0])
        else:
            out.append(BARS[min(len(BARS) - 1, int(v / top * (len(BARS) - 1) + 0.5))])
    return "".join(out)


def money(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    if value != 0 and abs(value) < 0.01:
        return f"${value:.4f}"
    return f"${value:,.2f}"


def number(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"


def percent(value: float | None) -> str:
    return UNKNOWN if value is None else f"{value * 100:.1f}%"


def when(ts: float | None) -> str:
    return UNKNOWN if ts is None else timefmt.rfc3339_ms(ts)


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool] | None = None) -> str:
    """Rows under headers, columns padded to their widest cell (``right``: right-align)."""
    right = right or [False] * len(headers)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def duration(seconds: float) -> str:
    if seconds % 86400 == 0:
        return f"{int(seconds // 86400)}d"
    if seconds % 3600 == 0:
        return f"{int(seconds // 3600)}h"
    return f"{int(seconds // 60)}m"


def render(report: model.Report) -> str:
    out: list[str] = []
    span = report.window_end - report.window_start
    out.append(f"{report.title}")
    out.append(f"source: {report.source}")
    out.append(f"window: {when(report.window_start)} .. {when(report.window_end)} ({duration(span)}, "
               f"trend step {duration(report.step_seconds)})")
    out.append(f"total cost: {money(report.total_cost_usd)}  {sparkline(report.total_trend)}")
    for note in report.notes:
        out.append(f"note: {note}")

    for breakdown in report.breakdowns:
        out.append("")
        out.append(f"Cost by {breakdown.dimension}")
        rows = [[("! " if r.anomalous else "  ") + r.key, money(r.cost_usd), percent(r.share), number(r.tokens),
                 number(r.calls), sparkline(r.trend)] for r in breakdown.rows]
        out.append(table([f"  {breakdown.dimension}", "cost", "share", "tokens", "calls", "trend"], rows,
                         [False, True, True, True, True, False]) if rows else "  (no spend)")

    out.append("")
    out.append(f"Anomalies ({len(report.anomalies)})")
    if report.anomalies:
        rows = [["! " + when(a.time), a.kind, f"{a.namespace}/{a.agent}", a.workflow or "-", a.action,
                 a.incident or "-", a.message] for a in report.anomalies]
        out.append(table(["  time", "kind", "agent", "workflow", "action", "incident", "message"], rows))
    else:
        out.append("  none found")

    if report.economics:
        out.append("")
        out.append("Unit economics")
        rows = []
        for e in report.economics:
            rows.append([f"{e.namespace}/{e.workflow}", e.outcome, number(e.outcomes), money(e.cost_per_outcome_usd),
                         money(e.target_cost_usd), money(e.human_baseline_usd),
                         UNKNOWN if e.roi is None else f"{e.roi:.1f}x", sparkline(e.trend),
                         e.recommendation or UNKNOWN])
        out.append(table(["workflow", "outcome", "outcomes", "cost/outcome", "target", "human", "ROI", "trend",
                          "recommendation"], rows, [False, False, True, True, True, True, True, False, False]))
        for e in report.economics:
            if e.reason:
                out.append(f"  {e.namespace}/{e.workflow} ({e.outcome}): {e.reason}")
            if len(e.models) > 1:
                parts = ", ".join(f"{m.model} {money(m.cost_per_outcome_usd)}" for m in e.models)
                out.append(f"  {e.namespace}/{e.workflow} cost per {e.outcome} by model: {parts}")

    out.append("")
    out.append(f"Governance gaps ({len(report.governance)})")
    if report.governance:
        rows = [[f"{g.namespace}/{g.agent}", g.problem, g.message] for g in report.governance]
        out.append(table(["agent", "problem", "detail"], rows))
    else:
        out.append("  every agent seen is governed by a budget with a unit-economics target")

    out.append("")
    out.append(f"Incidents ({len(report.incidents)})")
    if not report.incidents:
        out.append("  none")
    for inc in report.incidents:
        out.append(f"  {inc.id}  {inc.title}  {inc.namespace}/{inc.agent}"
                   f"{'  workflow ' + inc.workflow if inc.workflow else ''}  opened {when(inc.opened)}")
        if inc.model_change is not None:
            mc = inc.model_change
            out.append(f"    model change: {mc.previous_model or UNKNOWN} -> {mc.model} at {when(mc.time)}")
        out.append(f"    actions: {', '.join(inc.actions) if inc.actions else 'none'}")
        out.append(f"    {inc.message}")
    return "\n".join(out) + "\n"
