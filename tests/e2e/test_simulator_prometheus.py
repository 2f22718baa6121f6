"""A real Prometheus scrapes the simulator in real-time mode; its totals equal the usage events'."""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import live_simulator
import pytest

RUN_SECONDS = 20
SPEED = 15  # simulated seconds per second: about 5 simulated minutes of six agents


def _scalar(prometheus: Any, promql: str) -> float:
    result = prometheus.query(promql)
    assert len(result) == 1, f"{promql}: {result}"
    return float(result[0]["value"][1])


def test_prometheus_totals_match_the_usage_events(prometheus: Any, tmp_path: pathlib.Path) -> None:
    """Cost, tokens, calls and tasks summed in PromQL equal the simulator's usage events, to the cent."""
    events_path = tmp_path / "usage.jsonl"
    args = ["--events", str(events_path), "--duration", f"{RUN_SECONDS * SPEED}s", "--speed", str(SPEED),
            "--scenario", "tool-call-explosion", "--at", "2", "--seed", "11", "--namespace", "e2e-sim",
            "--linger", "300"]
    with live_simulator.running(prometheus, args) as sim:
        prometheus.wait_for_target_up(sim.job, timeout=30)
        # 1: the simulator runs, Prometheus scrapes it while it spends
        assert sim.finished.wait(RUN_SECONDS + 30), "simulator did not finish:\n" + sim.said()
        spending_stopped = time.time()
        assert sim.proc.poll() is None, "the simulator must keep serving /metrics while lingering"
        # 2: wait for a scrape that began after the spending stopped
        deadline = time.monotonic() + 30
        while True:
            last = prometheus.query(f'timestamp(up{{job="{sim.job}"}})')
            if last and float(last[0]["value"][1]) > spending_stopped + 0.5:
                break
            assert time.monotonic() < deadline, "no scrape after the simulator stopped"
            time.sleep(prometheus.scrape_interval / 2)

        # 3: compare PromQL totals with the events
        events = [json.loads(line) for line in events_path.read_text().splitlines()]
        assert len(events) > 200
        sel = f'job="{sim.job}"'
        spend = _scalar(prometheus, f"sum(fleetwarden_llm_cost_usd_total{{{sel}}}) + "
                                    f"sum(fleetwarden_tool_cost_usd_total{{{sel}}}) + "
                                    f"(sum(fleetwarden_human_cost_usd_total{{{sel}}}) or vector(0))")
        assert spend == pytest.approx(sum(e.get("cost_usd", 0.0) for e in events), abs=0.005)
        tokens = _scalar(prometheus, " + ".join(
            f"sum(fleetwarden_llm_{kind}_tokens_total{{{sel}}})"
            for kind in ("input", "output", "cache_read", "cache_write", "reasoning")))
        assert tokens == sum(e.get(k, 0) for e in events for k in (
            "input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens"))
        assert _scalar(prometheus, f"sum(fleetwarden_llm_calls_total{{{sel}}})") == sum(
            e["type"] == "llm" for e in events)
        assert _scalar(prometheus, f"sum(fleetwarden_tool_calls_total{{{sel}}})") == sum(
            e["type"] == "tool" for e in events)
        assert _scalar(prometheus, f"sum(fleetwarden_tasks_total{{{sel}}})") == sum(
            e["type"] == "task" for e in events)
        assert _scalar(prometheus, f"sum(fleetwarden_task_cost_usd_count{{{sel}}})") == sum(
            e["type"] == "task" for e in events)
        per_tool = {r["metric"]["tool"]: float(r["value"][1]) for r in prometheus.query(
            f"sum by (tool) (fleetwarden_tool_calls_total{{{sel}}})")}
        assert per_tool == {t: float(sum(e.get("tool") == t for e in events))
                            for t in {e["tool"] for e in events if e["type"] == "tool"}}
        models = prometheus.query(f"fleetwarden_agent_model_info{{{sel}}}")
        assert {m["metric"]["agent"] for m in models} == {e["agent"] for e in events}
        assert {m["metric"]["namespace"] for m in models} == {"e2e-sim"}
