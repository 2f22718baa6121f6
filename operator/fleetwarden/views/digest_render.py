"""The digest as Markdown (a sprint-review page, a pull request, a chat message), as a
self-contained HTML page with the report's look, and as JSON. Unknown shows as "unknown"."""

from __future__ import annotations

import html as html_mod
import json
from collections.abc import Sequence

from fleetwarden.core import digest as core
from fleetwarden.core import timefmt
from fleetwarden.views import digest, html, text


def money(value: float | None) -> str:
    return text.money(value)


def signed_money(value: float | None) -> str:
    if value is None:
        return "unknown"
    return ("+" if value >= 0 else "-") + text.money(abs(value))


def pct(value: float | None) -> str:
    return "unknown" if value is None else f"{value:+.0f}%"


def days(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}"


def period_text(seconds: float) -> str:
    return text.duration(seconds)


def _delta_cells(d: core.Delta, new_if_zero: bool = True) -> list[str]:
    percent = pct(d.percent)
    if d.percent is None and d.previous == 0 and d.current and new_if_zero:
        percent = "new"
    return [money(d.current), money(d.previous), signed_money(d.change), percent]


def _impact(i: core.CostImpact | None) -> tuple[str, str]:
    if i is None:
        return "unknown", "unknown"
    return money(i.above_baseline_usd), money(i.prevented_usd)


def sections(d: digest.Digest) -> list[tuple[str, list[str], list[list[str]], list[str]]]:
    """(heading, table headers, table rows, notes) of each section, shared by Markdown and HTML."""
    out: list[tuple[str, list[str], list[list[str]], list[str]]] = []
    out.append(("Spend by team, project and cost center", ["dimension", "key", "this period", "previous", "delta", "%"],
                [[r.dimension, r.key, *_delta_cells(r.delta)] for r in d.spend], []))
    out.append(("Top movers", ["dimension", "key", "this period", "previous", "delta", "%", "why"],
                [[m.dimension, m.key, *_delta_cells(m.delta), m.explanation or "no finding or model change names it"]
                 for m in d.movers],
                [] if d.movers else ["no move: nothing changed, or the previous period is unknown"]))
    out.append(("Cost per outcome", ["workflow", "outcome", "this period", "previous", "delta", "%", "target",
                                     "human baseline", "trend (oldest first)"],
                [[f"{o.namespace}/{o.workflow}", o.outcome, *_delta_cells(o.delta, False), money(o.target_usd),
                  money(o.human_baseline_usd), " -> ".join(money(v) for v in o.trend)] for o in d.outcomes], []))
    out.append(("Budgets", ["budget", "month to date", "month cap", "burn / day", "projected month-end",
                            "days left", "note"],
                [[f"{b.namespace}/{b.budget}", money(b.month_to_date_usd), money(b.month_cap_usd),
                  money(b.burn_usd_per_day), money(b.projected_month_end_usd), days(b.days_left), b.note]
                 for b in d.budgets], [] if d.budgets else ["no AgentBudget given (-f) or found"]))
    out.append(("Recommendations", ["workflow", "recommendation", "previous", "changed", "why"],
                [[r.workflow, r.recommendation or "-", r.previous or "-",
                  {True: "yes", False: "no", None: "unknown"}[r.changed], r.reason or ""]
                 for r in d.recommendations], []))
    missing = [i.id for i in d.incidents if i.postmortem == digest.POSTMORTEM_MISSING]
    out.append(("Incidents", ["incident", "what", "agent", "opened", "actions", "spend above baseline",
                              "spend prevented", "postmortem"],
                [[i.id, i.title, f"{i.namespace}/{i.agent}", timefmt.rfc3339(i.opened), ", ".join(i.actions),
                  *_impact(i.impact), i.postmortem] for i in d.incidents],
                ([f"incidents with no postmortem: {', '.join(missing)}"] if missing else [])
                + ([] if d.incidents else ["no incident in the period"])))
    out.append(("Governance gaps", ["agent", "problem", "new this period", "what"],
                [[f"{g.gap.namespace}/{g.gap.agent}", g.gap.problem,
                  {True: "yes", False: "no", None: "unknown"}[g.new], g.gap.message] for g in d.gaps],
                [] if d.gaps else ["every agent has a budget with a unit-economics target"]))
    return out


def headline(d: digest.Digest) -> str:
    t = d.total
    return (f"Total spend {money(t.current)} ({signed_money(t.change)}, {pct(t.percent)} against the previous "
            f"{period_text(d.period_seconds)}: {money(t.previous)})")


def _md_cell(value: str) -> str:
    return value.replace("|", "\\|").replace("\n", " ")


def render_markdown(d: digest.Digest) -> str:
    lines = [f"# {d.title}", "",
             f"Period {timefmt.rfc3339(d.start)} to {timefmt.rfc3339(d.end)} ({period_text(d.period_seconds)}), "
             f"compared with the {period_text(d.period_seconds)} before. Source: {d.source}.", "",
             f"**{headline(d)}**", ""]
    for note in d.notes:
        lines.append(f"> Note: {note}")
    if d.notes:
        lines.append("")
    for heading, headers, rows, notes in sections(d):
        lines += [f"## {heading}", ""]
        if rows:
            lines.append("| " + " | ".join(headers) + " |")
            lines.append("|" + "|".join("---" for _ in headers) + "|")
            lines += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            lines.append("")
        lines += [f"_{n}_" for n in notes]
        if notes:
            lines.append("")
    return "\n".join(lines)


def _e(value: object) -> str:
    return html_mod.escape("" if value is None else str(value), quote=True)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(d: digest.Digest) -> str:
    t = d.total
    kpis = [("spend this period", money(t.current), False), ("previous period", money(t.previous), False),
            ("delta", f"{signed_money(t.change)} ({pct(t.percent)})", (t.change or 0) > 0),
            ("incidents", str(len(d.incidents)), bool(d.incidents))]
    parts = [f"<h1>{_e(d.title)}</h1>",
             f'<p class="meta">{_e(timefmt.rfc3339(d.start))} to {_e(timefmt.rfc3339(d.end))} '
             f"({_e(period_text(d.period_seconds))}), against the period before &middot; {_e(d.source)}</p>",
             '<div class="kpis">' + "".join(
                 f'<div class="kpi{" bad" if bad else ""}"><div class="v">{_e(v)}</div><div class="l">{_e(k)}</div></div>'
                 for k, v, bad in kpis) + "</div>"]
    parts += [f'<div class="note">{_e(n)}</div>' for n in d.notes]
    for heading, headers, rows, notes in sections(d):
        slug = heading.lower().replace(" ", "-").replace(",", "")
        parts.append(f'<section id="{_e(slug)}"><h2>{_e(heading)}</h2>')
        if rows:
            parts.append(_table(headers, rows))
        parts += [f'<p class="muted">{_e(n)}</p>' for n in notes]
        parts.append("</section>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{_e(d.title)}</title><style>{html.CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")


def render_json(d: digest.Digest) -> str:
    return json.dumps(d.to_dict(), indent=2, sort_keys=False) + "\n"


RENDERERS = {"markdown": render_markdown, "html": render_html, "json": render_json}
