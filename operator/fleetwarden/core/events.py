"""Usage events: parse and validate one JSON line against the contract, fast.

The contract is ``docs/contracts/usage-events.md`` (the copy of the shared contract) and
its machine-readable form ``docs/contracts/usage-event.schema.json`` (JSON Schema 2020-12).
This module accepts exactly what that schema accepts (with the RFC 3339 ``date-time``
format checked) and refuses exactly what it refuses; ``tests/unit/core/test_events.py``
checks that against ``jsonschema`` on many random events. It does so without
``jsonschema`` on the hot path:

1. ``_problem(obj)`` is the general validator: it walks every known field and returns the
   first problem as ``(field, reason)``, or ``None`` for a valid event. It is the single
   source of truth.
2. A fast path caches, per *shape* (the tuple of keys in line order: one producer writes
   the same shape again and again), a small straight-line checker generated for that
   shape. The checker only ever *accepts*: on anything unusual it returns ``None`` and the
   general validator decides and explains. So the fast path cannot accept what the
   general validator refuses.

Subtleties of JSON Schema kept here: ``integer`` accepts ``3.0`` but not ``true``;
``number`` refuses booleans; a string's ``minLength`` counts code points; ``status`` is
checked against the top-level enum and then narrowed by type (``tool``: ok/error;
``task``: completed/failed/abandoned); unknown fields are kept and ignored.

``time`` is RFC 3339 with a zone (``Z``/``z`` or ``+hh:mm``; ``T`` may be ``t``; no leap
second ``60``, as the reference format checker) or Unix seconds as a number. Inside the
core time is Unix seconds (float).

Blank lines (only whitespace) are skipped: they carry no event. Every other line yields
an :class:`Event` or an :class:`~fleetwarden.errors.EventError` naming the line and the
field; ``iter_events`` never stops at a broken line.

Reading a log (``iter_events``) also enforces limits the schema does not state
(:func:`limit_problem`, ``docs/design.md`` "Limits on usage events"): a line of at most
MAX_LINE_BYTES (read in bounded pieces: a longer line is skipped, never held whole),
amounts of at most MAX_AMOUNT, at most MAX_TOKENS_PER_CALL tokens per call, a numeric time
within the years 1 to 9999. ``is_valid``, ``parse_line`` and ``from_obj`` stay the contract
(``from_obj(..., limits=True)`` adds them). The fast path has a second set of generated
checkers for the limits, which only ever accept, like the first.
"""

from __future__ import annotations

import calendar
import datetime
import functools
import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import IO, Any, Union

from fleetwarden import errors

try:  # orjson is the fast path; the standard library is the fallback.
    import orjson

    _loads: Callable[[bytes | str], Any] = orjson.loads
    _JSONError: type[Exception] = orjson.JSONDecodeError
except ImportError:  # pragma: no cover - exercised only without orjson
    import json

    def _refuse_constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON")

    _json_decoder = json.JSONDecoder(parse_constant=_refuse_constant)

    def _loads(data: bytes | str) -> Any:
        if isinstance(data, bytes):
            data = data.decode("utf-8")
        return _json_decoder.decode(data)

    _JSONError = ValueError

# Strict JSON from bytes or text (orjson when installed, else the standard library refusing NaN and
# Infinity as orjson does); its errors are ValueErrors. The adapters decode Prometheus' answers with it.
loads_json = _loads

TYPES = frozenset({"llm", "tool", "task", "outcome", "human"})
STATUSES = frozenset({"ok", "error", "completed", "failed", "abandoned"})
TOOL_STATUSES = frozenset({"ok", "error"})
TASK_STATUSES = frozenset({"completed", "failed", "abandoned"})
# Allowed values of `status` for each type (the top-level enum, narrowed by the allOf rules).
STATUS_FOR_TYPE: Mapping[str, frozenset[str]] = {
    "llm": STATUSES, "tool": TOOL_STATUSES, "task": TASK_STATUSES, "outcome": STATUSES, "human": STATUSES,
}
# Fields each type requires beyond time, type and agent.
REQUIRED_FOR_TYPE: Mapping[str, tuple[str, ...]] = {
    "llm": ("task_id", "model", "input_tokens", "output_tokens"),
    "tool": ("task_id", "tool"),
    "task": ("task_id", "status"),
    "outcome": ("task_id", "outcome"),
    "human": ("minutes",),
}
REQUIRED = ("time", "type", "agent")

# What each known field must be: the check names used below.
_NONEMPTY_STR = ("agent", "namespace", "task_id", "model", "tool", "outcome")
_STR = ("workflow", "step", "agent_version", "provider")
_NONNEG_INT = ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
_NONNEG_NUM = ("cost_usd", "minutes")
KNOWN_FIELDS = frozenset(
    ("time", "type", "labels", "status", "count", "value_usd") + _NONEMPTY_STR + _STR + _NONNEG_INT + _NONNEG_NUM
)
_CHECK: dict[str, str] = {
    **{k: "nonempty_str" for k in _NONEMPTY_STR},
    **{k: "str" for k in _STR},
    **{k: "nonneg_int" for k in _NONNEG_INT},
    **{k: "nonneg_num" for k in _NONNEG_NUM},
    "time": "time", "type": "type", "labels": "labels", "status": "status",
    "count": "pos_num", "value_usd": "num",
}


# ---------------------------------------------------------------- time


_RFC3339 = re.compile(
    r"([0-9]{4})-(0[1-9]|1[0-2])-([0-9]{2})[Tt]([01][0-9]|2[0-3]):([0-5][0-9]):([0-5][0-9])(\.[0-9]+)?"
    r"(?:([Zz])|([+-])([01][0-9]|2[0-3]):([0-5][0-9]))"
)
# "YYYY-MM-DDTHH:MM" (as written) -> Unix seconds of that minute read as UTC. Bounded.
_MINUTE_PREFIX: dict[str, int] = {}
_MINUTE_PREFIX_MAX = 200_000
_SECONDS = {f"{s:02d}": s for s in range(60)}


def parse_time(value: object) -> float | None:
    """Unix seconds of a contract ``time`` value, or ``None`` when it is not one.

    Strings must be RFC 3339 date-times with a zone; numbers (not booleans) are Unix seconds.
    """
    kind = type(value)
    if kind is str:
        return _time_from_str(value)  # type: ignore[arg-type]
    if kind is float or kind is int:
        try:
            return float(value)  # type: ignore[arg-type]
        except OverflowError:
            return None
    return None


# Exact time strings seen recently -> Unix seconds (a busy fleet writes the same second many times).
_TIME_CACHE: dict[str, float] = {}
_TIME_CACHE_MAX = 4096


def _time_from_str(text: str) -> float | None:
    ts = _TIME_CACHE.get(text)
    if ts is not None:
        return ts
    ts = _time_from_str_uncached(text)
    if ts is not None:
        if len(_TIME_CACHE) >= _TIME_CACHE_MAX:
            _TIME_CACHE.clear()
        _TIME_CACHE[text] = ts
    return ts


def _time_from_str_uncached(text: str) -> float | None:
    # Fast path: a minute already seen, then ":SS" and "Z".
    base = _MINUTE_PREFIX.get(text[:16])
    if base is not None and len(text) == 20 and text[16] == ":" and text[19] in "Zz":
        sec = _SECONDS.get(text[17:19])
        if sec is not None:
            return float(base + sec)
    return _time_from_str_slow(text)


def _time_from_str_slow(text: str) -> float | None:
    m = _RFC3339.fullmatch(text)
    if m is None:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    if year == 0 or not 1 <= day <= calendar.monthrange(year, month)[1]:
        return None
    base = calendar.timegm((year, month, day, hour, minute, 0, 0, 0, 0))
    if len(_MINUTE_PREFIX) >= _MINUTE_PREFIX_MAX:
        _MINUTE_PREFIX.clear()
    _MINUTE_PREFIX[text[:16]] = base
    ts = float(base + second)
    if m.group(7):
        ts += float("0" + m.group(7))
    if m.group(9):
        offset = int(m.group(10)) * 3600 + int(m.group(11)) * 60
        ts += -offset if m.group(9) == "+" else offset
    return ts


# ---------------------------------------------------------------- the event


_Labels = Mapping[str, str]
_NO_LABELS: _Labels = {}


class Event:
    """One valid usage event. ``time`` is Unix seconds; ``raw`` is the parsed JSON object
    (unknown fields included). Typed fields are read from ``raw`` on access, with the
    contract's defaults (``namespace`` "default", tool ``status`` "ok", ``count`` 1)."""

    __slots__ = ("time", "type", "agent", "namespace", "raw", "line")

    def __init__(self, time: float, type: str, agent: str, namespace: str, raw: dict[str, Any],
                 line: int | None = None) -> None:
        self.time = time
        self.type = type
        self.agent = agent
        self.namespace = namespace
        self.raw = raw
        self.line = line  # the line number it was read from, when read from lines

    def __repr__(self) -> str:
        return f"Event({self.raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and self.time == other.time and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]

    def get(self, name: str, default: Any = None) -> Any:
        """Any field as written, unknown ones included."""
        return self.raw.get(name, default)

    @property
    def extra(self) -> dict[str, Any]:
        """Fields the contract does not define (kept, ignored by Fleetwarden)."""
        return {k: v for k, v in self.raw.items() if k not in KNOWN_FIELDS}

    @property
    def labels(self) -> _Labels:
        labels: _Labels = self.raw.get("labels") or _NO_LABELS
        return labels

    @property
    def workflow(self) -> str | None:
        return self.raw.get("workflow")

    @property
    def task_id(self) -> str | None:
        return self.raw.get("task_id")

    @property
    def step(self) -> str | None:
        return self.raw.get("step")

    @property
    def agent_version(self) -> str | None:
        return self.raw.get("agent_version")

    @property
    def model(self) -> str | None:
        return self.raw.get("model")

    @property
    def provider(self) -> str | None:
        return self.raw.get("provider")

    def _int(self, name: str) -> int | None:
        v = self.raw.get(name)
        return None if v is None else int(v)

    @property
    def input_tokens(self) -> int | None:
        return self._int("input_tokens")

    @property
    def output_tokens(self) -> int | None:
        return self._int("output_tokens")

    @property
    def cache_read_tokens(self) -> int | None:
        return self._int("cache_read_tokens")

    @property
    def cache_write_tokens(self) -> int | None:
        return self._int("cache_write_tokens")

    @property
    def reasoning_tokens(self) -> int | None:
        return self._int("reasoning_tokens")

    @property
    def tokens(self) -> int:
        """All tokens of an llm call (input + output + cache + reasoning); 0 for other types."""
        raw = self.raw
        return int(raw.get("input_tokens", 0) + raw.get("output_tokens", 0) + raw.get("cache_read_tokens", 0)
                   + raw.get("cache_write_tokens", 0) + raw.get("reasoning_tokens", 0))

    @property
    def cost_usd(self) -> float | None:
        v = self.raw.get("cost_usd")
        return None if v is None else float(v)

    @property
    def tool(self) -> str | None:
        return self.raw.get("tool")

    @property
    def status(self) -> str | None:
        v = self.raw.get("status")
        if v is None and self.type == "tool":
            return "ok"
        return None if v is None else str(v)

    @property
    def outcome(self) -> str | None:
        return self.raw.get("outcome")

    @property
    def count(self) -> float | None:
        if self.type != "outcome":
            return self.raw.get("count")
        return self.raw.get("count", 1)  # type: ignore[no-any-return]

    @property
    def value_usd(self) -> float | None:
        return self.raw.get("value_usd")

    @property
    def minutes(self) -> float | None:
        return self.raw.get("minutes")


# ---------------------------------------------------------------- the general validator


def _describe(value: object) -> str:
    text = repr(value) if not isinstance(value, str) else _json_str(value)
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif value is None:
        text = "null"
    return text if len(text) <= 60 else text[:57] + "..."


def _json_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _is_num(v: object) -> bool:
    t = type(v)
    return t is int or t is float


def _is_int(v: object) -> bool:
    t = type(v)
    return t is int or (t is float and v.is_integer())  # type: ignore[attr-defined]


def _field_problem(name: str, check: str, v: object, etype: object) -> str | None:
    """Why ``v`` is not a valid value for field ``name``, or None."""
    if check == "nonempty_str":
        if type(v) is not str or not v:
            return f"must be a non-empty string, got {_describe(v)}"
    elif check == "str":
        if type(v) is not str:
            return f"must be a string, got {_describe(v)}"
    elif check == "nonneg_int":
        if not _is_int(v) or v < 0:  # type: ignore[operator]
            return f"must be an integer >= 0, got {_describe(v)}"
    elif check == "nonneg_num":
        if not _is_num(v) or v < 0:  # type: ignore[operator]
            return f"must be a number >= 0, got {_describe(v)}"
    elif check == "pos_num":
        if not _is_num(v) or v <= 0:  # type: ignore[operator]
            return f"must be a number > 0, got {_describe(v)}"
    elif check == "num":
        if not _is_num(v):
            return f"must be a number, got {_describe(v)}"
    elif check == "time":
        if parse_time(v) is None:
            return f"must be an RFC 3339 date-time with a zone or Unix seconds, got {_describe(v)}"
    elif check == "type":
        if type(v) is not str or v not in TYPES:
            return f"must be one of llm, tool, task, outcome, human, got {_describe(v)}"
    elif check == "labels":
        if type(v) is not dict:
            return f"must be an object of strings, got {_describe(v)}"
        for key, item in v.items():
            if type(item) is not str:
                return f"label {key!r} must be a string, got {_describe(item)}"
    elif check == "status":
        allowed = STATUS_FOR_TYPE.get(etype, STATUSES) if type(etype) is str else STATUSES
        if type(v) is not str or v not in allowed:
            where = f" for type {etype!r}" if allowed is not STATUSES else ""
            return f"must be one of {', '.join(sorted(allowed))}{where}, got {_describe(v)}"
    return None


def problem(obj: object) -> tuple[str | None, str] | None:
    """The first way ``obj`` breaks the contract, as ``(field, reason)``; None when valid."""
    if type(obj) is not dict:
        return None, f"must be a JSON object, got {type(obj).__name__ if obj is not None else 'null'}"
    etype = obj.get("type")
    for name in REQUIRED:
        if name not in obj:
            return name, "required"
    for name, v in obj.items():
        check = _CHECK.get(name)
        if check is not None:
            reason = _field_problem(name, check, v, etype)
            if reason is not None:
                return name, reason
    for name in REQUIRED_FOR_TYPE[str(etype)]:
        if name not in obj:
            return name, f"required for type {etype!r}"
    return None


# ---------------------------------------------------------------- limits beyond the contract


# What reading a log refuses although the schema allows it (docs/design.md, "Limits on usage
# events"): values no producer writes, which would make sums overflow or dates impossible.
MAX_LINE_BYTES = 1 << 20  # a line, its newline included (characters for a text stream)
MAX_AMOUNT = 1e9  # cost_usd, minutes, count, and value_usd either way, per event
MAX_TOKENS_PER_CALL = 20_000_000  # the five token fields of one llm event, summed
MIN_TIME, MAX_TIME = -62135596800.0, 253402300800.0  # numeric time: 0001-01-01 to the end of 9999 (UTC)
_AMOUNTS = ("cost_usd", "minutes", "count", "value_usd")


def limit_problem(obj: dict[str, Any]) -> tuple[str, str] | None:
    """The first limit a contract-valid event breaks, as ``(field, reason)``; None within them."""
    t = obj["time"]
    if type(t) is not str and not MIN_TIME <= t < MAX_TIME:
        return "time", f"must be Unix seconds within the years 1 to 9999, got {_describe(t)}"
    for name in _AMOUNTS:
        v = obj.get(name)
        if v is not None and not -MAX_AMOUNT <= v <= MAX_AMOUNT:
            bounds = f"between {-MAX_AMOUNT:g} and {MAX_AMOUNT:g}" if name == "value_usd" else f"at most {MAX_AMOUNT:g}"
            return name, f"must be {bounds} per event, got {_describe(v)}"
    tokens = [(obj[name], name) for name in _NONNEG_INT if name in obj]
    total = sum(v for v, _ in tokens)
    if total > MAX_TOKENS_PER_CALL:
        shown = f"{total:,}" if type(total) is int else f"{total:g}"
        return max(tokens)[1], f"the call's tokens add up to {shown}, more than the {MAX_TOKENS_PER_CALL:,} a model " \
                               f"call can carry"
    return None


_KEY_BEFORE = re.compile(r'"((?:[^"\\]|\\.)*)"\s*:\s*$')
_NUMBER_AT = re.compile(r"-?[0-9][0-9.eE+-]*")


def _json_error(exc: Exception, file: str | None, line: int) -> errors.EventError:
    """The error of a line that did not parse; a number too large for a double (orjson refuses
    ``1e999``) is named with its field."""
    doc, pos = getattr(exc, "doc", None), getattr(exc, "pos", None)
    if "infinity" in str(exc) and isinstance(doc, str) and isinstance(pos, int):
        key = _KEY_BEFORE.search(doc, max(0, pos - 200), pos)
        number = _NUMBER_AT.match(doc, pos)
        if key is not None and number is not None:
            return errors.EventError(f"must be a finite number, got {number.group()[:40]}", file=file, line=line,
                                     field=key.group(1))
    return errors.EventError(f"not valid JSON: {exc}", file=file, line=line)


def _too_long(data: bytes | str, rest: Callable[[int], Any] | None) -> int:
    """The length of an over-long line that begins with ``data``, reading (and dropping) its
    rest in chunks with ``rest`` (a readline) when there is one: never the whole line at once."""
    size = len(data)
    if rest is not None and data[-1:] not in (b"\n", "\n"):
        while True:
            more = rest(1 << 16)
            size += len(more)
            if not more or more[-1:] in (b"\n", "\n"):
                break
    return size


# ---------------------------------------------------------------- the fast path


_SHAPES: dict[tuple[str, ...], Callable[[dict[str, Any]], float | None]] = {}
_LIMITED_SHAPES: dict[tuple[str, ...], Callable[[dict[str, Any]], float | None]] = {}  # contract + limits
_SHAPES_MAX = 4096

_SNIPPETS = {
    "nonempty_str": "    v = d[{k!r}]\n    if type(v) is not str or not v: return None\n",
    "str": "    if type(d[{k!r}]) is not str: return None\n",
    "nonneg_int": "    v = d[{k!r}]\n    if type(v) is not int or v < 0: return None\n",
    "nonneg_num": "    v = d[{k!r}]\n    if (type(v) is not float and type(v) is not int) or v < 0: return None\n",
    "pos_num": "    v = d[{k!r}]\n    if (type(v) is not float and type(v) is not int) or v <= 0: return None\n",
    "num": "    v = d[{k!r}]\n    if type(v) is not float and type(v) is not int: return None\n",
    "labels": (
        "    v = d['labels']\n    if type(v) is not dict: return None\n"
        "    for x in v.values():\n        if type(x) is not str: return None\n"
    ),
    "status": "    v = d['status']\n    if type(v) is not str or v not in _STATUS[t]: return None\n",
}
# The same, within the limits (the token fields add up in n).
_LIMITED_SNIPPETS = {
    **_SNIPPETS,
    "nonneg_int": "    v = d[{k!r}]\n    if type(v) is not int or v < 0: return None\n    n += v\n",
    "nonneg_num": "    v = d[{k!r}]\n    if (type(v) is not float and type(v) is not int) or not 0 <= v <= _MAX: return None\n",
    "pos_num": "    v = d[{k!r}]\n    if (type(v) is not float and type(v) is not int) or not 0 < v <= _MAX: return None\n",
    "num": "    v = d[{k!r}]\n    if (type(v) is not float and type(v) is not int) or not -_MAX <= v <= _MAX: return None\n",
}


def _compile_shape(keys: tuple[str, ...], limited: bool = False) -> Callable[[dict[str, Any]], float | None]:
    """A checker for events with exactly these keys: Unix time when surely valid (and, with
    ``limited``, within the limits), else None."""
    present = set(keys)
    types = [t for t in sorted(TYPES) if all(k in present for k in REQUIRED_FOR_TYPE[t])]
    if not types or not all(k in present for k in REQUIRED):
        return _never
    snippets = _LIMITED_SNIPPETS if limited else _SNIPPETS
    tokens = limited and any(_CHECK.get(k) == "nonneg_int" for k in keys)
    # constants are bound as default arguments: local lookups, nothing built per call
    body = [
        "def check(d, type=type, str=str, int=int, float=float, dict=dict, _TYPES=_TYPES, _STATUS=_STATUS,\n"
        "          _TIME_CACHE=_TIME_CACHE, _time_from_str=_time_from_str, _parse_time=_parse_time,\n"
        "          _MAX=_MAX, _TMIN=_TMIN, _TMAX=_TMAX):\n",
        "    t = d['type']\n",
        "    if type(t) is not str or t not in _TYPES: return None\n",
    ]
    if tokens:
        body.append("    n = 0\n")
    for k in keys:
        check = _CHECK.get(k)
        if check is None or check in ("time", "type"):
            continue
        body.append(snippets[check].format(k=k))
    if tokens:
        body.append(f"    if n > {MAX_TOKENS_PER_CALL}: return None\n")
    number_time = ("return float(v) if _TMIN <= v < _TMAX else None" if limited else "return _parse_time(v)")
    body.append(
        "    v = d['time']\n"
        "    if type(v) is str:\n"
        "        ts = _TIME_CACHE.get(v)\n"
        "        return ts if ts is not None else _time_from_str(v)\n"
        f"    if type(v) is float or type(v) is int: {number_time}\n"
        "    return None\n"
    )
    scope: dict[str, Any] = {"_time_from_str": _time_from_str, "_TIME_CACHE": _TIME_CACHE, "_parse_time": parse_time,
                             "_STATUS": STATUS_FOR_TYPE, "_TYPES": frozenset(types), "_MAX": MAX_AMOUNT,
                             "_TMIN": MIN_TIME, "_TMAX": MAX_TIME}
    exec("".join(body), scope)  # noqa: S102 - generated from constants above, never from input
    return scope["check"]  # type: ignore[no-any-return]


def _never(d: dict[str, Any]) -> float | None:
    return None


def _fast_time(obj: dict[str, Any], limited: bool = False) -> float | None:
    keys = tuple(obj)
    shapes = _LIMITED_SHAPES if limited else _SHAPES
    check = shapes.get(keys)
    if check is None:
        if len(shapes) >= _SHAPES_MAX:
            shapes.clear()
        check = shapes[keys] = _compile_shape(keys, limited)
    return check(obj)


def from_obj(obj: object, *, line: int | None = None, file: str | None = None, limits: bool = False) -> Event:
    """An :class:`Event` from a parsed JSON value. Raises EventError naming the field (and ``line``).
    With ``limits``, an event beyond the limits of a log (:func:`limit_problem`) is refused too."""
    ts = _fast_time(obj, limits) if isinstance(obj, dict) else None
    if ts is None:
        found = problem(obj)
        if found is None and limits:
            found = limit_problem(obj)  # type: ignore[arg-type]
        if found is not None:
            field, reason = found
            raise errors.EventError(reason, file=file, line=line, field=field)
        assert isinstance(obj, dict)
        ts = parse_time(obj["time"])
        if ts is None:  # pragma: no cover - problem() has checked it
            raise errors.EventError("bad time", file=file, line=line, field="time")
    assert isinstance(obj, dict)
    return Event(ts, obj["type"], obj["agent"], obj.get("namespace", "default"), obj, line)


def parse_line(data: bytes | str, *, line: int | None = None, file: str | None = None) -> Event:
    """Parse and validate one JSON line. Raises EventError (not valid JSON, or the field that breaks)."""
    try:
        obj = _loads(data)
    except (_JSONError, ValueError, UnicodeDecodeError) as exc:
        raise errors.EventError(f"not valid JSON: {exc}", file=file, line=line) from None
    return from_obj(obj, line=line, file=file)


def is_valid(obj: object) -> bool:
    """Whether a parsed JSON value is a valid usage event (same answer as the JSON schema)."""
    if type(obj) is dict and _fast_time(obj) is not None:
        return True
    return problem(obj) is None


Source = Union[str, "os.PathLike[str]", IO[bytes], IO[str], Iterable[bytes], Iterable[str]]


def iter_events(source: Source, *, file: str | None = None) -> EventStream:
    """Yield an Event or an EventError for each non-blank line, in order, never stopping.

    ``source`` is a path (``"-"`` is standard input), an open file (binary or text) or any
    iterable of lines. Lines are read one at a time, so memory stays flat. The result is an
    :class:`EventStream`: an iterator of events that replay can also read without building
    an ``Event`` per line (:meth:`EventStream.records`).
    """
    return EventStream(source, file=file)


Record = tuple[float, dict[str, Any], int]  # (Unix time, the parsed object, line number) of a valid event


class EventStream:
    """The lines of a source as events: iterate it for ``Event``/``EventError`` items, or
    call :meth:`records` once for ``(time, object, line)`` tuples and ``EventError`` items
    (the same validation, the same order, no ``Event`` objects). Either is single use."""

    def __init__(self, source: Source, *, file: str | None = None) -> None:
        self.source = source
        self.file = file
        self._events: Iterator[Event | errors.EventError] | None = None
        self.blank = [0]  # blank lines seen (skipped: not events, but counted so none goes unsaid)

    def __iter__(self) -> EventStream:
        return self

    def __next__(self) -> Event | errors.EventError:
        if self._events is None:
            self._events = self._as_events()
        return next(self._events)

    def _as_events(self) -> Iterator[Event | errors.EventError]:
        for rec in self.records():
            if type(rec) is tuple:
                ts, obj, number = rec
                yield Event(ts, obj["type"], obj["agent"], obj.get("namespace", "default"), obj, number)
            else:
                yield rec  # type: ignore[misc]

    def records(self) -> Iterator[Record | errors.EventError]:
        """``(time, object, line)`` for each valid event, an ``EventError`` for each broken line."""
        source, file = self.source, self.file
        if isinstance(source, (str, os.PathLike)):
            path = os.fspath(source)
            if path.endswith(PARQUET_SUFFIXES):
                yield from _parquet_records(path, file or path)
                return
            if path == "-":
                yield from _records(*_bounded(sys.stdin.buffer), file or "<stdin>", self.blank)
                return
            with open(path, "rb") as fh:
                yield from _records(*_bounded(fh), file or path, self.blank)
            return
        if file is None:
            file = getattr(source, "name", None) if isinstance(source, io.IOBase) else None
            file = file if isinstance(file, str) else None
        if callable(getattr(source, "readline", None)):
            yield from _records(*_bounded(source), file, self.blank)  # type: ignore[arg-type]
        else:
            yield from _records(source, None, file, self.blank)


def _bounded(fh: IO[bytes] | IO[str]) -> tuple[Iterator[Any], Callable[[int], Any]]:
    """The lines of an open file, none read past MAX_LINE_BYTES + 1 at once, and its readline
    (which reads the rest of an over-long line in chunks)."""
    end = "" if isinstance(fh, io.TextIOBase) else b""
    return iter(functools.partial(fh.readline, MAX_LINE_BYTES + 1), end), fh.readline


def _records(lines: Iterable[Any], rest: Callable[[int], Any] | None, file: str | None, blank: list[int]
             ) -> Iterator[Record | errors.EventError]:
    loads = _loads
    shapes = _LIMITED_SHAPES
    limit = MAX_LINE_BYTES
    for number, data in enumerate(lines, 1):
        if len(data) > limit:
            size = _too_long(data, rest)
            yield errors.EventError(f"the line is {size:,} {'characters' if type(data) is str else 'bytes'} long, "
                                    f"more than the {limit:,} an event may take: not read", file=file, line=number)
            continue
        try:
            obj = loads(data)
        except (_JSONError, ValueError, UnicodeDecodeError) as exc:
            if not data.strip():
                blank[0] += 1
                continue
            yield _json_error(exc, file, number)
            continue
        if type(obj) is dict:
            check = shapes.get(tuple(obj))
            ts = check(obj) if check is not None else _fast_time(obj, True)
            if ts is not None:
                yield (ts, obj, number)
                continue
        try:
            ev = from_obj(obj, line=number, file=file, limits=True)
        except errors.EventError as exc:
            yield exc
            continue
        yield (ev.time, ev.raw, number)


# ---------------------------------------------------------------- Parquet


PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_BATCH_ROWS = 65_536  # rows decoded at once: memory stays flat in the length of the file


def _parquet_records(path: str, file: str) -> Iterator[Record | errors.EventError]:
    """The rows of a Parquet file as records (row numbers from 1, in the place of line numbers),
    read a batch at a time by pyarrow's columnar reader. A row is an event as if written in
    JSON: a null is an absent field, ``labels`` may be a map or a struct of strings, and a
    timestamp with a zone is Unix seconds. Each row then goes through the same validation
    and limits as a line (:func:`from_obj`), so a bad row is named by its number."""
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise errors.EventError("reading Parquet needs pyarrow: pip install 'fleetwarden[parquet]'",
                                file=file) from None
    try:
        reader = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        raise errors.EventError(f"not a readable Parquet file: {exc}", file=file) from None
    shapes = _LIMITED_SHAPES
    number = 0
    for batch in reader.iter_batches(batch_size=PARQUET_BATCH_ROWS):
        for row in batch.to_pylist():
            number += 1
            obj = _from_row(row)
            check = shapes.get(tuple(obj))
            ts = check(obj) if check is not None else _fast_time(obj, True)
            if ts is not None:
                yield (ts, obj, number)
                continue
            try:
                ev = from_obj(obj, line=number, file=file, limits=True)
            except errors.EventError as exc:
                yield exc
                continue
            yield (ev.time, ev.raw, number)


def _from_row(row: dict[str, Any]) -> dict[str, Any]:
    """A Parquet row as the JSON object it stands for (see :func:`_parquet_records`)."""
    obj = {k: v for k, v in row.items() if v is not None}
    labels = obj.get("labels")
    if type(labels) is list:  # a map column: (key, value) pairs
        obj["labels"] = dict(labels) if all(type(p) is tuple and len(p) == 2 for p in labels) else labels
    elif type(labels) is dict:  # a struct column: every label name of the file, null where absent
        obj["labels"] = {k: v for k, v in labels.items() if v is not None}
    t = obj.get("time")
    if isinstance(t, datetime.datetime) and t.tzinfo is not None:
        obj["time"] = t.timestamp()
    return obj
