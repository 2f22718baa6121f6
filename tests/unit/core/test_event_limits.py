"""Reading a usage-event log refuses what the contract allows but no producer writes: a line
over 1 MiB, an amount over 1e9 per event (or not finite), a model call of more than 20 million
tokens, a numeric time outside the years 1 to 9999. Each is a broken line naming the field
(docs/design.md, "Limits on usage events"); the lines around it are read as before."""

from __future__ import annotations

import io
import json
import pathlib
import random
import tracemalloc
from typing import Any

import pytest

from fleetwarden import cli, errors
from fleetwarden.core import events

T = "2026-11-28T10:00:00Z"
LLM = {"time": T, "type": "llm", "agent": "bot", "namespace": "shop", "task_id": "t-1", "model": "gpt-4o",
       "input_tokens": 1200, "output_tokens": 300}
TOOL = {"time": T, "type": "tool", "agent": "bot", "namespace": "shop", "task_id": "t-1", "tool": "crm.search"}
HUMAN = {"time": T, "type": "human", "agent": "bot", "namespace": "shop", "minutes": 5}
OUTCOME = {"time": T, "type": "outcome", "agent": "bot", "namespace": "shop", "task_id": "t-1", "outcome": "won"}

REFUSED = [
    ({**LLM, "cost_usd": 1e308}, "cost_usd", "must be at most 1e+09 per event, got 1e+308"),
    ({**LLM, "cost_usd": 1e9 + 1}, "cost_usd", "at most 1e+09"),
    ({**TOOL, "cost_usd": 10**12}, "cost_usd", "at most 1e+09"),
    ({**HUMAN, "minutes": 5e9}, "minutes", "at most 1e+09"),
    ({**OUTCOME, "count": 2e9}, "count", "at most 1e+09"),
    ({**OUTCOME, "value_usd": -1e10}, "value_usd", "must be between -1e+09 and 1e+09 per event, got -10000000000.0"),
    ({**LLM, "input_tokens": 15_000_000, "output_tokens": 5_000_001}, "input_tokens",
     "the call's tokens add up to 20,000,001, more than the 20,000,000 a model call can carry"),
    ({**LLM, "output_tokens": 2, "reasoning_tokens": 30_000_000}, "reasoning_tokens", "30,001,202"),
    ({**LLM, "input_tokens": 10**23}, "input_tokens", "add up to 1e+23"),  # orjson reads it as a float
    ({**LLM, "time": 1e300}, "time", "must be Unix seconds within the years 1 to 9999, got 1e+300"),
    ({**LLM, "time": -1e300}, "time", "within the years 1 to 9999"),
    ({**LLM, "time": 253402300800}, "time", "within the years 1 to 9999"),
]
ACCEPTED = [
    {**LLM, "cost_usd": 1e9}, {**LLM, "input_tokens": 15_000_000, "output_tokens": 5_000_000},
    {**OUTCOME, "value_usd": -1e9, "count": 1e9}, {**HUMAN, "minutes": 1e9}, {**LLM, "time": 253402300799},
    {**LLM, "time": -62135596800}, {**LLM, "input_tokens": 7.0e6, "cache_read_tokens": 12_999_700},  # 20 million in all
]


def read(lines: list[bytes]) -> list[events.Event | errors.EventError]:
    return list(events.iter_events(io.BytesIO(b"".join(lines)), file="e.jsonl"))


def line(obj: object) -> bytes:
    return json.dumps(obj).encode() + b"\n"


@pytest.mark.parametrize(("obj", "field", "says"), REFUSED)
def test_a_value_beyond_the_limits_is_a_broken_line_naming_the_field(obj: dict[str, Any], field: str,
                                                                     says: str) -> None:
    """The line is an EventError naming its line and field; the lines around it are read."""
    before, broken, after = read([line(LLM), line(obj), line(TOOL)])
    assert isinstance(before, events.Event) and isinstance(after, events.Event) and after.line == 3
    assert isinstance(broken, errors.EventError)
    assert (broken.line, broken.field) == (2, field) and says in broken.reason


@pytest.mark.parametrize("obj", ACCEPTED)
def test_values_at_the_limits_are_read(obj: dict[str, Any]) -> None:
    """A value at a limit is an event like any other."""
    [ev] = read([line(obj)])
    assert isinstance(ev, events.Event) and ev.raw == obj


@pytest.mark.parametrize(("obj", "field", "says"), REFUSED)
def test_the_limits_are_not_the_contract(obj: dict[str, Any], field: str, says: str) -> None:
    """The contract (the JSON schema, is_valid, parse_line) is unchanged: the limits are the log reader's."""
    assert events.is_valid(obj)
    assert events.parse_line(json.dumps(obj)).agent == "bot"


def test_a_number_too_large_for_a_double_is_named() -> None:
    """``1e999`` (which orjson refuses to parse) names its field like the other limits."""
    text = line(LLM).replace(b'"input_tokens": 1200', b'"cost_usd": 1e999, "input_tokens": 1200')
    [broken] = read([text])
    assert isinstance(broken, errors.EventError)
    assert (broken.line, broken.field, broken.reason) == (1, "cost_usd", "must be a finite number, got 1e999")


def test_a_10_mb_line_is_refused_without_reading_it_whole(tmp_path: pathlib.Path) -> None:
    """A 10 MB line is one broken line saying its length; the reader never holds more than about a
    megabyte of it (it is skipped in chunks), and the next line is read."""
    path = tmp_path / "e.jsonl"
    long = b'{"time": "' + T.encode() + b'", "type": "tool", "note": "' + b"x" * 10_000_000 + b'"}\n'
    path.write_bytes(line(LLM) + long + line(TOOL))
    tracemalloc.start()
    try:
        out = list(events.iter_events(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(x) for x in out] == [events.Event, errors.EventError, events.Event]
    assert out[1].line == 2 and f"the line is {len(long):,} bytes long, more than the 1,048,576" in out[1].reason
    assert out[2].line == 3
    assert peak < 3 * events.MAX_LINE_BYTES


def test_a_file_without_newlines_is_one_long_line(tmp_path: pathlib.Path) -> None:
    """Three megabytes with no newline: one broken line, not a parse of the whole file."""
    path = tmp_path / "blob.jsonl"
    path.write_bytes(b"[" + b"1," * 1_500_000 + b"1]")
    [broken] = list(events.iter_events(path))
    assert isinstance(broken, errors.EventError) and broken.line == 1 and "3,000,003 bytes" in broken.reason


def test_a_long_line_of_a_text_stream_or_a_list_is_refused() -> None:
    """Text streams count characters; lines already in memory (a list) are refused by their length."""
    long = '{"note": "' + "x" * events.MAX_LINE_BYTES + '"}\n'
    [from_text] = list(events.iter_events(io.StringIO(long)))
    [from_list] = list(events.iter_events([long.encode()]))
    assert isinstance(from_text, errors.EventError) and "characters long" in from_text.reason
    assert isinstance(from_list, errors.EventError) and "bytes long" in from_list.reason
    exact = json.dumps({**TOOL, "note": ""}).encode()
    exact = exact[:-2] + b"x" * (events.MAX_LINE_BYTES - len(exact) - 1) + b'"}\n'
    assert len(exact) == events.MAX_LINE_BYTES
    assert isinstance(read([exact])[0], events.Event)  # exactly 1 MiB with its newline: read


def test_the_fast_path_and_the_general_validator_agree_on_the_limits() -> None:
    """Random events near every limit: the generated per-shape checker accepts exactly what
    problem() and limit_problem() accept (the reader's fast path never lets a value past)."""
    rng = random.Random(20261128)
    near = [0, 1, 1e9, 1e9 + 1, -1e9, -1e9 - 1, 10**9, 10**9 + 1, 2.5, 1e308, 10**20, -1, 20_000_000, 20_000_001,
            19_999_999.0, 253402300799, 253402300800, -62135596800, -62135596801, 1e300]
    fields = ["cost_usd", "minutes", "count", "value_usd", "input_tokens", "output_tokens", "cache_read_tokens",
              "reasoning_tokens", "time"]
    checked = 0
    for _ in range(5000):
        obj = dict(rng.choice([LLM, TOOL, HUMAN, OUTCOME]))
        for name in rng.sample(fields, rng.randint(1, 3)):
            obj[name] = rng.choice(near)
        general = events.problem(obj) is None and events.limit_problem(obj) is None
        assert (events._fast_time(obj, True) is not None) <= general, obj
        try:
            events.from_obj(obj, limits=True)
            accepted = True
        except errors.EventError:
            accepted = False
        assert accepted == general, obj
        checked += general
    assert 500 < checked < 4500


def test_the_token_ceiling_is_above_every_known_context_window() -> None:
    """No model genai-prices knows has a context window above the per-call ceiling."""
    from genai_prices import data

    windows = [m.context_window for p in data.providers for m in p.models if getattr(m, "context_window", None)]
    assert windows and max(windows) <= events.MAX_TOKENS_PER_CALL


def test_replay_names_each_line_goes_on_and_exits_1(tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
                                                    ) -> None:
    """`fleetwarden replay`: each refused line on stderr as ``file:line: field 'x': reason``, the valid
    events still replayed, exit code 1."""
    path = tmp_path / "e.jsonl"
    path.write_bytes(line(LLM) + line({**LLM, "cost_usd": 1e308}) + line({**LLM, "input_tokens": 10**9})
                     + b'{"x": "' + b"y" * (2 << 20) + b'"}\n' + line(TOOL))
    assert cli.main(["replay", "--events", str(path)]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[:3] == [
        f"{path}:2: field 'cost_usd': must be at most 1e+09 per event, got 1e+308",
        f"{path}:3: field 'input_tokens': the call's tokens add up to 1,000,000,300, more than the 20,000,000 a "
        f"model call can carry",
        f"{path}:4: the line is 2,097,162 bytes long, more than the 1,048,576 an event may take: not read",
    ]
    assert err[3].startswith("fleetwarden replay: 2 events read, 3 broken")
