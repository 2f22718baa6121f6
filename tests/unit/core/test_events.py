"""Usage-event parsing: the hand-written validator agrees with the JSON schema, line by line."""

from __future__ import annotations

import io
import json
import pathlib
import random

import jsonschema
import pytest
from rfc3339_validator import validate_rfc3339

from fleetwarden import errors
from fleetwarden.core import events

SCHEMA_PATH = pathlib.Path(__file__).resolve().parents[3] / "docs" / "contracts" / "usage-event.schema.json"
SCHEMA = json.loads(SCHEMA_PATH.read_text())


def _rfc3339_checker() -> jsonschema.FormatChecker:
    """The reference `date-time` check: what jsonschema itself uses (rfc3339-validator on the
    upper-cased string), minus one quirk of its regex: a trailing newline passes `$`."""
    checker = jsonschema.FormatChecker(formats=())

    @checker.checks("date-time")
    def _date_time(instance: object) -> bool:
        if not isinstance(instance, str):
            return True
        return not instance.endswith("\n") and validate_rfc3339(instance.upper())

    return checker


REFERENCE = jsonschema.Draft202012Validator(SCHEMA, format_checker=_rfc3339_checker())

VALID_TIMES = [
    "2026-11-28T10:00:00Z", "2026-11-28T10:00:59z", "2026-11-28t23:59:59.123456Z", "2024-02-29T00:00:00+01:00",
    "2026-01-01T00:00:00-05:30", 1795860000, 1795860000.5, -1, 0,
]
INVALID_TIMES = [
    "2026-11-28T10:00:00", "2026-11-28 10:00:00Z", "2023-02-29T00:00:00Z", "2026-11-31T00:00:00Z",
    "2026-11-28T24:00:00Z", "2026-11-28T10:60:00Z", "2026-11-28T10:00:60Z", "0000-01-01T00:00:00Z",
    "2026-11-28T10:00:00+24:00", "2026-11-28T10:00:00.Z", "2026-11-28T10:00:00Z\n", "yesterday", "",
    "2026-13-01T00:00:00Z", "２０２６-11-28T10:00:00Z", True, None, [], {},
]
ODD_VALUES = [
    None, True, False, 0, 1, -1, -3, 2.5, 3.0, -0.0, -2.0, 0.0, "", "x", "ok", "error", "completed", "failed",
    "abandoned", "llm", "tool", [], ["a"], {}, {"a": "b"}, {"a": 1}, 10**20, 1e300,
]


def _valid_event(rng: random.Random) -> dict:
    kind = rng.choice(sorted(events.TYPES))
    ev: dict = {"time": rng.choice(VALID_TIMES), "type": kind, "agent": rng.choice(["a", "support-bot", "é"])}
    if rng.random() < 0.7:
        ev["namespace"] = rng.choice(["support", "default"])
    if rng.random() < 0.5:
        ev["labels"] = rng.choice([{}, {"team": "cx"}, {"team": "cx", "cost_center": "CC-1"}])
    for name in ("workflow", "step", "agent_version"):
        if rng.random() < 0.3:
            ev[name] = rng.choice(["", "refund", "v2"])
    if kind != "human" or rng.random() < 0.3:
        ev["task_id"] = "t-1"
    if kind == "llm":
        ev.update(model="gpt-4o", input_tokens=rng.choice([0, 5, 1200, 7.0]), output_tokens=rng.randint(0, 900))
        for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens"):
            if rng.random() < 0.3:
                ev[name] = rng.randint(0, 50)
        if rng.random() < 0.3:
            ev["provider"] = "openai"
    elif kind == "tool":
        ev["tool"] = "crm.search"
        if rng.random() < 0.5:
            ev["status"] = rng.choice(["ok", "error"])
    elif kind == "task":
        ev["status"] = rng.choice(["completed", "failed", "abandoned"])
    elif kind == "outcome":
        ev["outcome"] = "resolved_ticket"
        if rng.random() < 0.5:
            ev["count"] = rng.choice([1, 0.5, 3])
        if rng.random() < 0.3:
            ev["value_usd"] = rng.choice([-5, 0, 12.5])
    else:
        ev["minutes"] = rng.choice([0, 2.5, 10])
    if rng.random() < 0.4:
        ev["cost_usd"] = rng.choice([0, 0.002, 1])
    if rng.random() < 0.2:
        ev["something_new"] = rng.choice([1, "x", None])
    return ev


def _mutate(rng: random.Random, ev: dict) -> dict:
    ev = dict(ev)
    for _ in range(rng.randint(1, 3)):
        op = rng.random()
        fields = sorted(events.KNOWN_FIELDS)
        if op < 0.25 and ev:
            del ev[rng.choice(sorted(ev))]
        elif op < 0.4:
            ev["time"] = rng.choice(VALID_TIMES + INVALID_TIMES)
        elif op < 0.5:
            ev["type"] = rng.choice(sorted(events.TYPES) + ["LLM", "", None, 1])
        elif op < 0.6:
            ev["status"] = rng.choice(sorted(events.STATUSES) + ["OK", None])
        elif op < 0.65:
            ev["labels"] = rng.choice(ODD_VALUES)
        else:
            ev[rng.choice(fields)] = rng.choice(ODD_VALUES)
    return ev


def _cases(n: int, seed: int) -> list[object]:
    rng = random.Random(seed)
    out: list[object] = []
    for _ in range(n):
        ev = _valid_event(rng)
        out.append(ev if rng.random() < 0.3 else _mutate(rng, ev))
    out += [None, [], "x", 1, [{"time": 1, "type": "human", "agent": "a", "minutes": 1}]]
    return out


def test_validator_agrees_with_the_json_schema_on_random_events() -> None:
    """Validity of random valid events and random mutations of them matches jsonschema, for parsed objects and lines."""
    cases = _cases(12000, seed=20261128)
    valid_count = 0
    for obj in cases:
        expected = REFERENCE.is_valid(obj)
        valid_count += expected
        assert events.is_valid(obj) == expected, obj
        # The same answer through the line parser (fast path included: shapes repeat).
        line = json.dumps(obj).encode()
        if expected:
            ev = events.parse_line(line)
            assert ev.agent == obj["agent"]  # type: ignore[index]
        else:
            with pytest.raises(errors.EventError):
                events.parse_line(line)
    # The generator really produces both kinds, in quantity.
    assert 2000 < valid_count < len(cases) - 2000


@pytest.mark.parametrize("value", VALID_TIMES)
def test_valid_times_are_accepted(value: object) -> None:
    """Every RFC 3339 form with a zone and every number is a valid time."""
    obj = {"time": value, "type": "human", "agent": "a", "minutes": 1}
    assert REFERENCE.is_valid(obj)
    assert events.is_valid(obj)


@pytest.mark.parametrize("value", INVALID_TIMES)
def test_invalid_times_are_refused_naming_time(value: object) -> None:
    """A time without a zone, an impossible date or a non-number is refused, naming the field."""
    obj = {"time": value, "type": "human", "agent": "a", "minutes": 1}
    with pytest.raises(errors.EventError) as exc:
        events.from_obj(obj)
    assert exc.value.field == "time"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:00:00Z", 1795860000.0),
        ("2026-11-28T10:00:00.250Z", 1795860000.25),
        ("2026-11-28T11:00:00+01:00", 1795860000.0),
        ("2026-11-28T04:30:00-05:30", 1795860000.0),
        (1795860000, 1795860000.0),
    ],
)
def test_times_become_unix_seconds(text: object, expected: float) -> None:
    """RFC 3339 times are converted to Unix seconds, zones applied; numbers pass through."""
    assert events.parse_time(text) == expected
    assert events.parse_time(text) == expected  # second time through the minute cache


@pytest.mark.parametrize(
    ("obj", "field", "fragment"),
    [
        ({"time": 1, "type": "llm", "agent": "a", "task_id": "t", "model": "m", "input_tokens": -3, "output_tokens": 1},
         "input_tokens", "must be an integer >= 0, got -3"),
        ({"time": 1, "type": "llm", "agent": "a", "task_id": "t", "model": "m", "input_tokens": True, "output_tokens": 1},
         "input_tokens", "got true"),
        ({"time": 1, "type": "llm", "agent": "a", "task_id": "t", "model": "m", "input_tokens": 1},
         "output_tokens", "required for type 'llm'"),
        ({"time": 1, "type": "tool", "agent": "a", "task_id": "t", "tool": "x", "status": "completed"},
         "status", "for type 'tool'"),
        ({"time": 1, "type": "task", "agent": "a", "task_id": "t"}, "status", "required for type 'task'"),
        ({"time": 1, "type": "outcome", "agent": "a", "task_id": "t", "outcome": "o", "count": 0}, "count", "> 0"),
        ({"time": 1, "type": "human", "agent": "a", "minutes": 1, "cost_usd": False}, "cost_usd", "number >= 0"),
        ({"time": 1, "type": "human", "agent": "", "minutes": 1}, "agent", "non-empty string"),
        ({"time": 1, "type": "human", "agent": "a", "minutes": 1, "labels": {"team": 7}}, "labels", "'team'"),
        ({"time": 1, "type": "chat", "agent": "a"}, "type", "one of llm, tool"),
        ({"type": "human", "agent": "a", "minutes": 1}, "time", "required"),
    ],
)
def test_refusals_name_the_field_and_the_reason(obj: dict, field: str, fragment: str) -> None:
    """Each refusal names the field and says what it must be and what it got."""
    assert not REFERENCE.is_valid(obj)
    with pytest.raises(errors.EventError) as exc:
        events.from_obj(obj)
    assert exc.value.field == field
    assert fragment in exc.value.reason


def test_event_exposes_typed_fields_with_contract_defaults() -> None:
    """An event reads its fields with the contract's defaults and keeps unknown fields."""
    tool = events.from_obj({"time": "2026-11-28T10:00:00Z", "type": "tool", "agent": "a", "task_id": "t",
                            "tool": "crm.search", "x-extra": 1})
    assert (tool.namespace, tool.status, tool.tool, tool.task_id, tool.cost_usd) == ("default", "ok", "crm.search", "t", None)
    assert tool.extra == {"x-extra": 1}
    llm = events.from_obj({"time": 5, "type": "llm", "agent": "a", "namespace": "n", "task_id": "t", "model": "m",
                           "input_tokens": 10.0, "output_tokens": 5, "reasoning_tokens": 2})
    assert (llm.time, llm.namespace, llm.input_tokens, llm.tokens, llm.cache_read_tokens) == (5.0, "n", 10, 17, None)
    outcome = events.from_obj({"time": 5, "type": "outcome", "agent": "a", "task_id": "t", "outcome": "o"})
    assert outcome.count == 1


def test_iter_events_reports_broken_lines_and_goes_on() -> None:
    """Broken lines yield an EventError with the line number; valid lines around them still yield events."""
    text = (
        b'{"time":1,"type":"human","agent":"a","minutes":1}\n'
        b"not json\n"
        b"\n"
        b'{"time":2,"type":"tool","agent":"a","task_id":"t"}\n'
        b'{"time":3,"type":"human","agent":"b","minutes":2}\n'
    )
    out = list(events.iter_events(io.BytesIO(text), file="e.jsonl"))
    assert [type(x).__name__ for x in out] == ["Event", "EventError", "EventError", "Event"]
    assert (out[1].line, out[2].line, out[2].field) == (2, 4, "tool")
    assert out[1].file == "e.jsonl"
    assert [e.agent for e in out if isinstance(e, events.Event)] == ["a", "b"]


def test_iter_events_reads_paths_and_text_streams(tmp_path: pathlib.Path) -> None:
    """A path and a text stream give the same events as bytes."""
    line = '{"time":"2026-11-28T10:00:00Z","type":"human","agent":"a","minutes":1}\n'
    path = tmp_path / "e.jsonl"
    path.write_text(line * 3)
    from_path = list(events.iter_events(path))
    from_text = list(events.iter_events(io.StringIO(line * 3)))
    assert len(from_path) == 3 and from_path == from_text
    assert from_path[0].time == 1795860000.0
