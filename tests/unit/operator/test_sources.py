"""Sources other than the SDK (spec.source): OpenTelemetry GenAI and LiteLLM series read by the
Prometheus adapter, priced by the operator with the price table replay and the SDK use.

The OpenTelemetry queries are evaluated by Prometheus's own engine (`promtool test rules`) on
series in both shapes: the OTel SDK exporter's (resource attributes on target_info only,
joined by job and instance) and a Collector's (resource attributes promoted to labels)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from fleetwarden.adapters import prometheus
from fleetwarden.adapters import sources as queries
from fleetwarden.core import decision, evaluate, pricing, spec
from fleetwarden.core import sources as core
from fleetwarden.core import status as st

PROMTOOL = shutil.which("promtool")
OTEL = spec.SourceType.open_telemetry
TOKENS = "gen_ai_client_token_usage_sum"
TASKS = "gen_ai_invoke_agent_duration_seconds_count"

# bot: the SDK exporter's shape; helper: a Collector's, named by gen_ai.agent.name; stray: no namespace at all
SERIES = [
    ('target_info{job="a", instance="i1", k8s_namespace_name="ns", k8s_deployment_name="bot"}', "1x20"),
    (f'{TOKENS}{{job="a", instance="i1", gen_ai_token_type="input", gen_ai_request_model="gpt-4o"}}', "0+100x20"),
    (f'{TOKENS}{{job="a", instance="i1", gen_ai_token_type="output", gen_ai_request_model="gpt-4o"}}', "0+20x20"),
    (f'{TASKS}{{job="a", instance="i1", gen_ai_agent_name="bot"}}', "0+2x20"),
    (f'{TOKENS}{{job="c", instance="i2", k8s_namespace_name="ns", gen_ai_agent_name="helper", '
     'gen_ai_token_type="output", gen_ai_request_model="m", gen_ai_response_model="m-2024"}', "0+10x20"),
    (f'{TOKENS}{{job="d", instance="i3", gen_ai_token_type="input", gen_ai_request_model="x"}}', "0+7x20"),
]


def _promtool(tmp_path: Path, expr: str, samples: list[tuple[str, float]], series: list[tuple[str, str]] = SERIES,
              interval: str = "1m", eval_time: str = "15m") -> subprocess.CompletedProcess[str]:
    assert PROMTOOL, "promtool is missing: run scripts/setup (Debian package prometheus)"
    test = {"rule_files": [], "evaluation_interval": interval, "tests": [{
        "interval": interval, "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": expr, "eval_time": eval_time,
                              "exp_samples": [{"labels": labels, "value": value} for labels, value in samples]}]}]}
    path = tmp_path / "sources_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    return subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)


def test_otel_tokens_are_found_in_both_shapes(tmp_path: Path) -> None:
    """Per minute, tokens by namespace, agent (Deployment, else gen_ai.agent.name), model (response's first)."""
    result = _promtool(tmp_path, queries.range_query(OTEL, "tokens"), [
        ('{namespace="ns", agent="bot", model="gpt-4o", gen_ai_token_type="input"}', 100.0),
        ('{namespace="ns", agent="bot", model="gpt-4o", gen_ai_token_type="output"}', 20.0),
        ('{namespace="ns", agent="helper", model="m-2024", gen_ai_token_type="output"}', 10.0),
    ])
    assert result.returncode == 0, result.stdout + result.stderr


def test_otel_window_counts_and_freshness(tmp_path: Path) -> None:
    """The spend-window query counts each family's growth exactly; freshness names the families found."""
    expr = queries.window_query(OTEL, 600, prometheus.window_increase)
    result = _promtool(tmp_path, expr, [
        ('{namespace="ns", agent="bot", model="gpt-4o", gen_ai_token_type="input", fw_metric="tokens"}', 1000.0),
        ('{namespace="ns", agent="bot", model="gpt-4o", gen_ai_token_type="output", fw_metric="tokens"}', 200.0),
        ('{namespace="ns", agent="bot", fw_metric="tasks"}', 20.0),
        ('{namespace="ns", agent="helper", model="m-2024", gen_ai_token_type="output", fw_metric="tokens"}', 100.0),
    ])
    assert result.returncode == 0, result.stdout + result.stderr
    fresh = _promtool(tmp_path, queries.freshness_query(OTEL), [
        ('{namespace="ns", agent="bot", fw_metric="tokens"}', 900.0),
        ('{namespace="ns", agent="bot", fw_metric="tasks"}', 900.0),
        ('{namespace="ns", agent="helper", fw_metric="tokens"}', 900.0),
    ])
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr


def test_the_harness_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    """The promtool check can fail: the target_info join read as no join is refused."""
    result = _promtool(tmp_path, queries.range_query(OTEL, "tokens"), [
        ('{namespace="ns", agent="helper", model="m-2024", gen_ai_token_type="output"}', 10.0)])
    assert result.returncode != 0 and 'agent="bot"' in result.stdout + result.stderr


def test_tokens_are_priced_with_the_price_table_and_unpriced_models_kept_apart() -> None:
    """The one formula (PriceTable.llm_cost) per model; a model with no price is never 0ドル: its tokens stay apart."""
    table = pricing.PriceTable()
    usage = core.Usage(tokens={("gpt-4o", core.INPUT): 1000.0, ("gpt-4o", core.OUTPUT): 200.0,
                               ("acme-secret-model", core.INPUT): 50.0},
                       calls={"gpt-4o": 3.0}, tools={"crm.search": 4.0})
    priced = core.price(usage, table.with_tool_prices({"crm.search": 0.01}), at=None)
    assert priced.inference_usd == table.llm_cost("gpt-4o", input_tokens=1000, output_tokens=200) > 0
    assert priced.tool_costs == {"crm.search": 0.04}
    assert priced.unpriced == {"acme-secret-model": 50.0}
    assert core.price(core.Usage(tokens={("m", core.INPUT): 9.0}), table, 0.0, ).unpriced == {"m": 9.0}
    # LiteLLM counts its own dollars: its tokens are not priced again
    assert core.price(core.Usage(tokens={("m", core.INPUT): 9.0}, spend_usd=1.5), table).inference_usd == 1.5


def _snapshot(now: float, usage: core.Usage, last: float) -> prometheus.FleetSnapshot:
    start = int(now // 60) * 60 - 600
    key = ("ns", "bot")
    minute = core.Usage(tokens=dict(usage.tokens), calls={"gpt-4o": 1.0}, tasks={core.COMPLETED: 1.0})
    data = queries.SourceData(OTEL, minutes={key: {start + 60: minute}},
                              windows={key: {(w, cal): usage for w in spec.Window for cal in (False, True)}},
                              families={key: {"tokens", "calls"}}, last_sample={key: last})
    return prometheus.FleetSnapshot(fetched_at=now, start=start, end=start + 600, minutes={}, spend={},
                                    last_sample={}, stale_after=45.0, queries=0, sources={OTEL: data},
                                    prices=pricing.PriceTable())


def _budget(**source: Any) -> spec.AgentBudget:
    return spec.AgentBudget.model_validate({
        "metadata": {"name": "b", "namespace": "ns"},
        "spec": {"limits": [{"window": "hour", "amountUSD": 0.001}], "source": {"type": "OpenTelemetry", **source}}})


def test_an_otel_budget_is_priced_killed_and_says_what_it_cannot_price_or_show() -> None:
    """Spend is the priced tokens; PricesKnown=False names the unpriced model; tasks unknown without invoke_agent."""
    now = 1_800_000_000.0
    usage = core.Usage(tokens={("gpt-4o", core.INPUT): 10000.0, ("acme-x", core.OUTPUT): 500.0})
    agents = [decision.AgentDeployment("bot", "ns", replicas=2, model="gpt-4o")]
    data = _snapshot(now, usage, now - 5).for_budget(_budget(), agents)
    expected = pricing.PriceTable().llm_cost("gpt-4o", input_tokens=10000, output_tokens=0)
    assert data.spend[spec.Window.hour] == expected
    assert data.minutes["bot"][0].tasks_completed == 1 and data.minutes["bot"][0].model == "gpt-4o"
    assert data.source is not None and data.source.unpriced == {"acme-x": 500.0}
    assert data.source.unknown[0] == "tasks"
    verdict = evaluate.evaluate(decision.EvaluationInput(
        budget=_budget(), agents=agents, minutes=data.minutes, spend=data.spend, now=now, source=data.source))
    prices = verdict.status.condition(st.PRICES_KNOWN)
    assert prices is not None and prices.status == "False" and "acme-x (500 tokens)" in prices.message
    body = verdict.status.body()["source"]
    assert body["type"] == "OpenTelemetry" and body["unpricedModels"] == [{"model": "acme-x", "tokens": 500}]
    assert body["families"] == ["calls", "tokens"] and "tasks" in body["unknown"]
    assert any(isinstance(a, decision.ScaleToZero) for a in verdict.actions)  # the kill switch on priced spend


def test_a_stale_or_silent_otel_agent_is_unknown() -> None:
    """No gen_ai sample for a running agent, or an old one: metrics unknown (StaleMetricsError), never 0."""
    now = 1_800_000_000.0
    agents = [decision.AgentDeployment("bot", "ns", replicas=1)]
    snap = _snapshot(now, core.Usage(), now - 600)
    for agent_list in (agents, [decision.AgentDeployment("other", "ns", replicas=1)]):
        try:
            snap.for_budget(_budget(), agent_list)
        except prometheus.StaleMetricsError as exc:
            assert "OpenTelemetry" in str(exc)
        else:
            raise AssertionError("stale data read as known")


def test_agent_label_is_for_litellm_only() -> None:
    """spec.source.agentLabel only with type LiteLLM (the CRD's rule says the same)."""
    try:
        _budget(agentLabel="team")
    except ValueError as exc:
        assert "only for type LiteLLM" in str(exc)
    else:
        raise AssertionError("agentLabel accepted for OpenTelemetry")
    ok = spec.AgentBudget.model_validate({"metadata": {"name": "b"},
                                          "spec": {"source": {"type": "LiteLLM", "agentLabel": "team"}}})
    assert ok.spec.source.agent_label is spec.LiteLLMLabel.team


def test_litellm_series_by_each_agent_label(tmp_path: Path) -> None:
    """LiteLLM's counters (names and labels as its prometheus integration declares them) grouped by
    the labels an agent can be mapped to; the spend is LiteLLM's own dollars."""
    lite = spec.SourceType.lite_llm
    series = [('litellm_spend_metric_total{api_key_alias="bot", team="support", end_user="", model="gpt-4o", '
               'hashed_api_key="h"}', "0+0.5x20")]
    test = {"rule_files": [], "evaluation_interval": "1m", "tests": [{
        "interval": "1m", "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [{"expr": queries.range_query(lite, "spend"), "eval_time": "15m",
                              "exp_samples": [{"labels": '{api_key_alias="bot", team="support", model="gpt-4o"}',
                                               "value": 0.5}]}]}]}
    path = tmp_path / "litellm_test.yaml"
    path.write_text(yaml.safe_dump(test, sort_keys=False), encoding="utf-8")
    assert PROMTOOL
    result = subprocess.run([PROMTOOL, "test", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    usage = core.Usage()
    queries._count(usage, lite, "spend", {"model": "gpt-4o"}, 0.5)  # noqa: SLF001
    assert core.price(usage, pricing.PriceTable()).total_usd == 0.5


def test_litellm_unset_labels_name_no_agent() -> None:
    """LiteLLM writes the text "None" in a label it has no value for (a call with no key alias,
    team or end user): that is no agent, not an agent called None."""
    lite = spec.SourceType.lite_llm
    metric = {"api_key_alias": "None", "team": "None", "end_user": "bot", "model": "gpt-4o-mini"}
    assert queries._keys(lite, metric) == [("end_user", "bot")]  # noqa: SLF001
    assert queries._keys(lite, {"api_key_alias": "", "team": "None", "end_user": "None"}) == []  # noqa: SLF001


# Scraped every 15 s, evaluated at 10m (the minute (9m, 10m]): calls made just as the minute began
# are seen first at its first scrape (what increase() over the minute cannot count), and a new
# model's series counts from its first sample.
BOUNDARY = [
    ('target_info{job="a", instance="i1", k8s_namespace_name="ns", k8s_deployment_name="bot"}', "1x40"),
    ('gen_ai_client_operation_duration_seconds_count{job="a", instance="i1", gen_ai_request_model="old"}',
     "0x36 3 3 3 3"),
    ('gen_ai_client_operation_duration_seconds_count{job="a", instance="i1", gen_ai_request_model="new"}',
     "_x38 2 2"),
]


def _boundary(tmp_path: Path, expected: dict[str, float]) -> subprocess.CompletedProcess[str]:
    samples = [(f'{{namespace="ns", agent="bot", model="{m}"}}', v) for m, v in sorted(expected.items())]
    return _promtool(tmp_path, queries.range_query(OTEL, "calls"), samples, BOUNDARY, "15s", "10m")


def test_otel_minutes_count_calls_made_as_the_minute_began_and_a_new_models_first(tmp_path: Path) -> None:
    """A source's minute is the counter's whole growth in it, as the SDK's (minute_growth), not increase()."""
    result = _boundary(tmp_path, {"old": 3.0, "new": 2.0})
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_boundary_check_fails_on_increases_reading(tmp_path: Path) -> None:
    """The harness can fail: the calls at the minute's start read as increase() reads them are refused."""
    result = _boundary(tmp_path, {"old": 0.0, "new": 0.0})
    assert result.returncode != 0, result.stdout + result.stderr


def test_minutes_of_another_source_share_their_names_across_answers() -> None:
    """Like the SDK's minutes (test_prometheus_adapter.py), a source's minutes kept fetch after
    fetch hold one string per name, however many answers made a copy of it."""
    def copy(name: str) -> str:
        return "".join(list(name))  # a new string object, as each decoded answer makes

    table = pricing.PriceTable()
    minutes = [core.agent_minute(copy("bot-1"), copy("ns-1"), 60 * i, core.Usage(
        calls={copy("gpt-4o-x"): 1.0}, tools={copy("kb.search-x"): 2.0}), table)[0] for i in range(2)]
    first, second = minutes
    assert first.model == "gpt-4o-x" and dict(first.tool_calls) == {"kb.search-x": 2.0}
    assert first.agent is second.agent and first.namespace is second.namespace and first.model is second.model
    assert next(iter(first.tool_calls)) is next(iter(second.tool_calls))
