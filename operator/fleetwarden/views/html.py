"""The report as one self-contained HTML page: inline CSS and inline SVG charts.

No script, no font, no stylesheet and no image is fetched from anywhere: the page is one
file that opens offline and can be mailed or attached to a ticket. Anomalies are marked on
the cost chart and linked to their incident.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from fleetwarden.core import timefmt
from fleetwarden.views import model, text

CSS = """
:root { --fg:#1d2430; --muted:#5b6675; --line:#d9dee5; --accent:#2f6fdf; --bad:#c62828; --warn:#b26a00;
        --good:#2e7d32; --bg:#ffffff; --panel:#f6f8fa; }
* { box-sizing: border-box; }
body { font: 14px/1.45 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--fg);
       background: var(--bg); margin: 0; padding: 24px 32px; }
h1 { font-size: 22px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta { color: var(--muted); margin: 0 0 16px; }
.kpis { display: flex; gap: 16px; flex-wrap: wrap; margin: 12px 0; }
.kpi { background: var(--panel); border: 1px solid var(--line); border-radius: 6px; padding: 10px 14px; min-width: 150px; }
.kpi .v { font-size: 20px; font-weight: 600; }
.kpi .l { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.kpi.bad .v { color: var(--bad); }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: middle; }
th { font-size: 12px; color: var(--muted); font-weight: 600; text-transform: uppercase; letter-spacing: .03em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.share { white-space: nowrap; }
tr.anomaly td { background: #fdecea; }
tr.anomaly td:first-child { border-left: 3px solid var(--bad); }
.bar { display: inline-block; height: 8px; background: var(--accent); border-radius: 2px; vertical-align: middle; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; font-weight: 600; }
.rec-more_budget { background: #e3f3e4; color: var(--good); }
.rec-hold { background: #e8eef9; color: var(--accent); }
.rec-optimise { background: #fff1dc; color: var(--warn); }
.rec-retire { background: #fdecea; color: var(--bad); }
.act-kill, .act-rollback { background: #fdecea; color: var(--bad); }
.act-alert, .act-throttle { background: #fff1dc; color: var(--warn); }
.act-deny, .act-pause { background: #f3e5f5; color: #7b1fa2; }
.muted { color: var(--muted); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(520px, 1fr)); gap: 8px 28px; }
.incident { border: 1px solid var(--line); border-left: 4px solid var(--bad); border-radius: 4px; padding: 8px 12px; margin: 8px 0; }
.incident h3 { font-size: 15px; margin: 0 0 4px; }
.incident dl { display: grid; grid-template-columns: 130px 1fr; gap: 2px 8px; margin: 4px 0 0; }
.incident dt { color: var(--muted); }
.incident dd { margin: 0; }
svg text { font: 11px -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: var(--muted); }
.note { background: #fff8e1; border: 1px solid #f3d37a; padding: 6px 10px; border-radius: 4px; margin: 6px 0; }
"""


def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _points(values: Sequence[float | None], width: float, height: float, pad: float, top: float
            ) -> list[tuple[float, float] | None]:
    n = len(values)
    out: list[tuple[float, float] | None] = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        x = pad + (i + 0.5) * (width - 2 * pad) / max(n, 1)
        y = height - pad - (v / top * (height - 2 * pad) if top > 0 else 0.0)
        out.append((x, y))
    return out


def _path(points: Sequence[tuple[float, float] | None]) -> str:
    """An SVG path through the known points; a gap (unknown) starts a new segment."""
    parts: list[str] = []
    pen_down = False
    for p in points:
        if p is None:
            pen_down = False
            continue
        parts.append(f"{'L' if pen_down else 'M'}{p[0]:.1f},{p[1]:.1f}")
        pen_down = True
    return " ".join(parts)


def spark_svg(values: Sequence[float | None], *, width: int = 120, height: int = 24, css_class: str = "spark"
              ) -> str:
    """A small inline SVG line for a table cell."""
    known = [v for v in values if v is not None]
    if not known:
        return '<span class="muted">unknown</span>'
    top = max(known)
    pts = _points(values, width, height, 2, top)
    return (f'<svg class="{css_class}" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
            f'role="img" aria-label="trend"><path d="{_path(pts)}" fill="none" stroke="#2f6fdf" '
            f'stroke-width="1.5"/></svg>')


def trend_chart(report: model.Report, *, width: int = 1180, height: int = 240) -> str:
    """The cost-over-time chart, with anomalies (red) and model changes (dashed) marked."""
    values = report.total_trend
    known = [v for v in values if v is not None]
    if not known:
        return '<p class="muted">No cost data in the window.</p>'
    top = max(known) * 1.1 or 1.0
    pad_l, pad = 64, 24
    inner_w = width - pad_l - pad
    n = len(values)

    def x_of(ts: float) -> float:
        span = report.window_end - report.window_start
        return pad_l + (ts - report.window_start) / span * inner_w if span > 0 else pad_l

    pts: list[tuple[float, float] | None] = []
    for i, v in enumerate(values):
        if v is None:
            pts.append(None)
            continue
        x = pad_l + (i + 0.5) * inner_w / n
        y = height - pad - v / top * (height - 2 * pad)
        pts.append((x, y))
    line = _path(pts)
    known_pts = [p for p in pts if p is not None]
    area = (f"{line} L{known_pts[-1][0]:.1f},{height - pad} L{known_pts[0][0]:.1f},{height - pad} Z"
            if len(known_pts) > 1 and None not in pts else "")
    svg = [f'<svg id="cost-trend" class="chart" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'role="img" aria-label="cost per {text.duration(report.step_seconds)} over the window">']
    for frac in (0.0, 0.5, 1.0):
        y = height - pad - frac * (height - 2 * pad)
        svg.append(f'<line x1="{pad_l}" y1="{y:.1f}" x2="{width - pad}" y2="{y:.1f}" stroke="#e6e9ee"/>')
        svg.append(f'<text x="{pad_l - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(text.money(top * frac))}</text>')
    for i in (0, n // 2, n - 1):
        ts = report.window_start + i * report.step_seconds
        x = pad_l + (i + 0.5) * inner_w / n
        svg.append(f'<text x="{x:.1f}" y="{height - 6}" text-anchor="middle">'
                   f'{_e(timefmt.rfc3339_ms(ts)[5:16].replace("T", " "))}</text>')
    if area:
        svg.append(f'<path class="area" d="{area}" fill="#2f6fdf" fill-opacity="0.10" stroke="none"/>')
    svg.append(f'<path class="cost-line" d="{line}" fill="none" stroke="#2f6fdf" stroke-width="2"/>')
    for mc in report.model_changes:
        x = x_of(mc.time)
        svg.append(f'<line class="model-change" x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" '
                   f'stroke="#7b1fa2" stroke-dasharray="4 3"><title>{_e(mc.namespace)}/{_e(mc.agent)}: '
                   f'{_e(mc.previous_model)} -&gt; {_e(mc.model)}</title></line>')
    for a in report.anomalies:
        x = x_of(a.time)
        svg.append(f'<g class="anomaly-marker"><line x1="{x:.1f}" y1="{pad}" x2="{x:.1f}" y2="{height - pad}" '
                   f'stroke="#c62828" stroke-width="1.5"/><circle cx="{x:.1f}" cy="{pad}" r="4" fill="#c62828"/>'
                   f'<title>{_e(a.kind)}: {_e(a.namespace)}/{_e(a.agent)}</title></g>')
    svg.append("</svg>")
    return "".join(svg)


def _share_bar(share: float | None) -> str:
    if share is None:
        return '<span class="muted">unknown</span>'
    return (f'<span class="bar" style="width:{max(1.0, share * 120):.0f}px"></span> '
            f'{_e(text.percent(share))}')


def _breakdown(b: model.Breakdown) -> str:
    rows = []
    for r in b.rows:
        cls = ' class="anomaly"' if r.anomalous else ""
        rows.append(f'<tr{cls}><td>{_e(r.key)}</td><td class="num">{_e(text.money(r.cost_usd))}</td>'
                    f'<td class="share">{_share_bar(r.share)}</td><td class="num">{_e(text.number(r.tokens))}</td>'
                    f'<td class="num">{_e(text.number(r.calls))}</td><td>{spark_svg(r.trend)}</td></tr>')
    body = "".join(rows) or '<tr><td colspan="6" class="muted">no spend</td></tr>'
    return (f'<section class="breakdown" id="by-{_e(b.dimension)}"><h2>Cost by {_e(b.dimension)}</h2><table>'
            f'<thead><tr><th>{_e(b.dimension)}</th><th class="num">cost</th><th>share</th>'
            f'<th class="num">tokens</th><th class="num">calls</th><th>trend</th></tr></thead>'
            f'<tbody>{body}</tbody></table></section>')


def _anomalies(report: model.Report) -> str:
    if not report.anomalies:
        return '<h2 id="anomalies">Anomalies</h2><p class="muted">None found in the window.</p>'
    rows = []
    for a in report.anomalies:
        inc = f'<a href="#{_e(a.incident)}">{_e(a.incident)}</a>' if a.incident else "-"
        model_cell = (f"{_e(a.previous_model)} &rarr; {_e(a.model)}" if a.previous_model
                      else _e(a.model or "-"))
        rows.append(f'<tr class="anomaly" data-kind="{_e(a.kind)}"><td>{_e(text.when(a.time))}</td>'
                    f'<td>{_e(a.kind)}</td><td>{_e(a.namespace)}/{_e(a.agent)}</td><td>{_e(a.workflow or "-")}</td>'
                    f'<td>{model_cell}</td><td><span class="badge act-{_e(a.action)}">{_e(a.action)}</span></td>'
                    f'<td>{inc}</td><td>{_e(a.message)}</td></tr>')
    return (f'<h2 id="anomalies">Anomalies ({len(report.anomalies)})</h2><table><thead><tr><th>time</th>'
            f'<th>kind</th><th>agent</th><th>workflow</th><th>model</th><th>action</th><th>incident</th>'
            f'<th>message</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _economics(report: model.Report) -> str:
    if not report.economics:
        return ('<h2 id="economics">Unit economics</h2><p class="muted">No outcomes in the window, or no '
                'unit-economics targets to judge them by.</p>')
    rows = []
    for e in report.economics:
        rec = (f'<span class="badge rec-{_e(e.recommendation)}">{_e(e.recommendation)}</span>'
               if e.recommendation else '<span class="muted">unknown</span>')
        models = "; ".join(f"{_e(m.model)} {_e(text.money(m.cost_per_outcome_usd))}" for m in e.models)
        over = (e.cost_per_outcome_usd is not None and e.target_cost_usd is not None
                and e.cost_per_outcome_usd > e.target_cost_usd)
        cls = ' class="anomaly"' if over else ""
        rows.append(f'<tr{cls}><td>{_e(e.namespace)}/{_e(e.workflow)}</td><td>{_e(e.outcome)}</td>'
                    f'<td class="num">{_e(text.number(e.outcomes))}</td>'
                    f'<td class="num">{_e(text.money(e.cost_per_outcome_usd))}</td>'
                    f'<td class="num">{_e(text.money(e.target_cost_usd))}</td>'
                    f'<td class="num">{_e(text.money(e.human_baseline_usd))}</td>'
                    f'<td class="num">{_e("unknown" if e.roi is None else f"{e.roi:.1f}x")}</td>'
                    f'<td class="num">{_e(text.money(e.savings_usd))}</td>'
                    f'<td>{spark_svg(e.trend, css_class="spark economics-trend")}</td><td>{rec}</td>'
                    f'<td>{_e(e.reason or "")}<br><span class="muted">{models}</span></td></tr>')
    return ('<h2 id="economics">Unit economics and ROI</h2><table><thead><tr><th>workflow</th><th>outcome</th>'
            '<th class="num">outcomes</th><th class="num">cost / outcome</th><th class="num">target</th>'
            '<th class="num">human</th><th class="num">ROI</th><th class="num">saved</th><th>trend</th>'
            f'<th>recommendation</th><th>why</th></tr></thead><tbody>{"".join(rows)}</tbody></table>')


def _governance(report: model.Report) -> str:
    if not report.governance:
        return ('<h2 id="governance">Governance gaps</h2><p class="muted">Every agent seen is governed by an '
                'AgentBudget with a unit-economics target.</p>')
    rows = "".join(f'<tr class="gap" data-problem="{_e(g.problem)}"><td>{_e(g.namespace)}/{_e(g.agent)}</td>'
                   f'<td>{_e(g.problem)}</td><td>{_e(g.message)}</td></tr>' for g in report.governance)
    return (f'<h2 id="governance">Governance gaps ({len(report.governance)})</h2><table><thead><tr>'
            f'<th>agent</th><th>problem</th><th>detail</th></tr></thead><tbody>{rows}</tbody></table>')


def _incidents(report: model.Report) -> str:
    if not report.incidents:
        return '<h2 id="incidents">Incidents</h2><p class="muted">None.</p>'
    cards = []
    for inc in report.incidents:
        mc = inc.model_change
        change = (f"{_e(mc.previous_model or 'unknown')} &rarr; {_e(mc.model)} at {_e(text.when(mc.time))}"
                  if mc else '<span class="muted">none seen before it</span>')
        actions = ", ".join(f'<span class="badge act-{_e(a)}">{_e(a)}</span>' for a in inc.actions) or "none"
        cards.append(f'<div class="incident" id="{_e(inc.id)}"><h3>{_e(inc.title)} <span class="muted">'
                     f'{_e(inc.id)}</span></h3><div>{_e(inc.message)}</div><dl>'
                     f'<dt>agent</dt><dd>{_e(inc.namespace)}/{_e(inc.agent)}</dd>'
                     f'<dt>workflow</dt><dd>{_e(inc.workflow or "-")}</dd>'
                     f'<dt>opened</dt><dd>{_e(text.when(inc.opened))}</dd>'
                     f'<dt>model change</dt><dd>{change}</dd><dt>actions</dt><dd>{actions}</dd>'
                     f'<dt>findings</dt><dd>{inc.findings}</dd></dl></div>')
    return f'<h2 id="incidents">Incidents ({len(report.incidents)})</h2>{"".join(cards)}'


def render(report: model.Report) -> str:
    span = report.window_end - report.window_start
    kpis = [("total cost", text.money(report.total_cost_usd), False),
            ("anomalies", str(len(report.anomalies)), bool(report.anomalies)),
            ("incidents", str(len(report.incidents)), bool(report.incidents)),
            ("governance gaps", str(len(report.governance)), bool(report.governance))]
    kpi_html = "".join(f'<div class="kpi{" bad" if bad else ""}"><div class="l">{_e(label)}</div>'
                       f'<div class="v">{_e(value)}</div></div>' for label, value, bad in kpis)
    notes = "".join(f'<div class="note">{_e(n)}</div>' for n in report.notes)
    breakdowns = "".join(_breakdown(b) for b in report.breakdowns)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(report.title)}</title>'
        f'<style>{CSS}</style></head><body>'
        f'<h1>{_e(report.title)}</h1><p class="meta">{_e(report.source)} &middot; '
        f'{_e(text.when(report.window_start))} to {_e(text.when(report.window_end))} '
        f'({_e(text.duration(span))}, one point per {_e(text.duration(report.step_seconds))})</p>'
        f'<div class="kpis">{kpi_html}</div>{notes}'
        f'<h2 id="trend">Cost over time</h2>{trend_chart(report)}'
        '<p class="muted">Red: anomalies. Dashed: model changes.</p>'
        f'{_anomalies(report)}{_incidents(report)}{_economics(report)}{_governance(report)}'
        f'<div class="grid">{breakdowns}</div>'
        '</body></html>\n'
    )
