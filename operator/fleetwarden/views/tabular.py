"""Machine-readable reports: JSON (the whole model) and CSV (one row per fact, long format)."""

from __future__ import annotations

import csv
import io
import json

from fleetwarden.core import timefmt
from fleetwarden.views import model

CSV_COLUMNS = ("section", "dimension", "key", "namespace", "workflow", "outcome", "cost_usd", "share",
               "tokens", "calls", "outcomes", "cost_per_outcome_usd", "target_cost_usd", "human_baseline_usd",
               "roi", "recommendation", "time", "kind", "action", "message", "trend")


def render_json(report: model.Report) -> str:
    return json.dumps(report.to_dict(), indent=2, sort_keys=False) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _trend(values: model.Trend) -> str:
    return " ".join("" if v is None else repr(v) for v in values)


def render_csv(report: model.Report) -> str:
    """Sections ``cost``, ``economics``, ``anomaly``, ``governance``; unknown is an empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()

    def put(**row: object) -> None:
        writer.writerow({k: _cell(row.get(k)) for k in CSV_COLUMNS})

    put(section="cost", dimension="total", key="total", cost_usd=report.total_cost_usd, share=1.0,
        trend=_trend(report.total_trend))
    for b in report.breakdowns:
        for r in b.rows:
            put(section="cost", dimension=b.dimension, key=r.key, cost_usd=r.cost_usd, share=r.share,
                tokens=r.tokens, calls=r.calls, trend=_trend(r.trend))
    for e in report.economics:
        put(section="economics", namespace=e.namespace, workflow=e.workflow, outcome=e.outcome,
            cost_usd=e.cost_usd, outcomes=e.outcomes, cost_per_outcome_usd=e.cost_per_outcome_usd,
            target_cost_usd=e.target_cost_usd, human_baseline_usd=e.human_baseline_usd, roi=e.roi,
            recommendation=e.recommendation, message=e.reason, trend=_trend(e.trend))
    for a in report.anomalies:
        put(section="anomaly", key=a.agent, namespace=a.namespace, workflow=a.workflow,
            time=timefmt.rfc3339_ms(a.time), kind=a.kind, action=a.action, message=a.message)
    for g in report.governance:
        put(section="governance", key=g.agent, namespace=g.namespace, kind=g.problem, message=g.message)
    return buf.getvalue()
