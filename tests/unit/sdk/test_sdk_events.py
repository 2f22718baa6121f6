"""Usage events written by the SDK follow the contract and its JSON schema."""

from __future__ import annotations

import io
import json
import pathlib
import threading

import jsonschema
import pytest
from prometheus_client import CollectorRegistry

from fleetwarden import sdk

SCHEMA_PATH = pathlib.Path(__file__).resolve().parents[3] / "docs" / "contracts" / "usage-event.schema.json"


def _validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER)


def _all_kinds(tracker: sdk.Tracker) -> None:
    with tracker.task("refund") as task, task.step("plan"):
        task.llm_call("gpt-4o", input_tokens=10, output_tokens=5, cache_read_tokens=2, cache_write_tokens=1,
                      reasoning_tokens=3, provider="openai")
        task.llm_call("gpt-4o", input_tokens=0, output_tokens=0, status="error")
        with task.tool("crm.search"):
            pass
        task.tool_call("purchase.create", cost_usd=0.5, status="error", amount_usd=120.0)
        task.outcome("resolved_ticket", count=1.5, value_usd=-2.0)
        task.human(0)
    with tracker.task("") as task:
        task.abandon()
    with pytest.raises(RuntimeError), tracker.task("triage"):
        raise RuntimeError


def test_every_event_validates_against_the_schema() -> None:
    """Each kind of event the SDK writes validates against usage-event.schema.json."""
    buf = io.BytesIO()
    tracker = sdk.Tracker("bot", namespace="ns", labels={"team": "cx", "cost_center": "CC-1"},
                          agent_version="v3", registry=CollectorRegistry(), events=sdk.EventWriter(buf))
    _all_kinds(tracker)
    lines = buf.getvalue().decode().splitlines()
    events = [json.loads(line) for line in lines]
    validator = _validator()
    for event in events:
        validator.validate(event)
    assert [e["type"] for e in events] == ["llm", "llm", "tool", "tool", "outcome", "human", "task", "task", "task"]
    assert [e["status"] for e in events if e["type"] == "task"] == ["completed", "abandoned", "failed"]
    first = events[0]
    assert first["labels"] == {"team": "cx", "cost_center": "CC-1"} and first["agent_version"] == "v3"
    assert first["step"] == "plan" and first["workflow"] == "refund" and first["cost_usd"] > 0
    assert len({e["task_id"] for e in events}) == 3


def test_event_costs_equal_the_metric_costs() -> None:
    """The costs in the events add up to exactly what the metrics count."""
    buf = io.BytesIO()
    reg = CollectorRegistry()
    tracker = sdk.Tracker("bot", registry=reg, events=sdk.EventWriter(buf))
    _all_kinds(tracker)
    events = [json.loads(line) for line in buf.getvalue().splitlines()]
    metric_total = sum(s.value for f in reg.collect() for s in f.samples
                       if s.name in ("fleetwarden_llm_cost_usd_total", "fleetwarden_tool_cost_usd_total",
                                     "fleetwarden_human_cost_usd_total"))
    assert sum(e.get("cost_usd", 0.0) for e in events) == pytest.approx(metric_total, abs=1e-12)


def test_writer_to_a_file_appends_and_is_thread_safe(tmp_path: pathlib.Path) -> None:
    """Lines written from many threads to a file are whole and all there; reopening appends."""
    path = tmp_path / "usage.jsonl"
    with sdk.EventWriter(path) as writer:
        tracker = sdk.Tracker("bot", registry=CollectorRegistry(), events=writer)

        def work() -> None:
            for _ in range(200):
                with tracker.task("w") as task:
                    task.tool_call("t")

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    with sdk.EventWriter(path) as writer:
        writer.write({"time": 1.0, "type": "human", "agent": "bot", "minutes": 1})
    lines = path.read_text().splitlines()
    assert len(lines) == 4 * 200 * 2 + 1
    validator = _validator()
    for line in lines:
        validator.validate(json.loads(line))


def test_writer_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    """EventWriter('-') writes JSON lines to standard output."""
    writer = sdk.EventWriter("-")
    writer.write({"time": 2.5, "type": "human", "agent": "bot", "minutes": 3})
    writer.flush()
    assert json.loads(capsys.readouterr().out) == {"time": 2.5, "type": "human", "agent": "bot", "minutes": 3}
