"""Per-agent, per-minute buckets: the one input every detector folds over.

Replay builds them from usage events; the operator builds them from PromQL range queries
(step 60 s). Both then run the same pure detector steps over them, so a finding in replay
is a finding in the cluster.

A minute with no activity for an agent is a bucket of zeros *when the data source says
so* (replay reads the complete record; Prometheus answered). When the source cannot say
(Prometheus down, stale), there is no bucket at all: callers pass ``None`` for the whole
input, and nothing destructive happens on unknown data.
"""

from __future__ import annotations

import array
import bisect
import dataclasses
import operator
import struct
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import overload

MINUTE = 60

_EMPTY: Mapping[str, float] = MappingProxyType({})
# The one empty tool mapping every minute without tool calls shares (a fleet's minutes are
# mostly without; one empty dict each is 64 bytes, 58 MB over 10,000 agents' 90 minutes x 2).
NO_TOOLS = _EMPTY


def shared(name: str) -> str:
    """One string object for a name however many answers repeat it (``sys.intern``). A decoded
    answer makes new strings each time, and the operator keeps every minute of each agent's
    lookback (its agent, namespace, model, workflow and tool names), fetch after fetch."""
    return sys.intern(name) if type(name) is str else name


def minute_of(ts: float) -> int:
    """The start (Unix seconds) of the minute that ``ts`` falls in."""
    return int(ts // MINUTE) * MINUTE


@dataclasses.dataclass(frozen=True, slots=True)
class AgentMinute:
    """What one agent did in one minute ``[minute, minute + 60)``."""

    agent: str
    namespace: str
    minute: int  # Unix seconds at the start of the minute
    inference_cost_usd: float = 0.0
    tool_cost_usd: float = 0.0
    human_cost_usd: float = 0.0
    tokens: int = 0  # input + output + cache + reasoning tokens of all model calls
    output_tokens: int = 0
    llm_calls: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    tasks_abandoned: int = 0
    outcomes: float = 0.0  # sum of outcome counts
    tool_calls: Mapping[str, float] = dataclasses.field(default_factory=lambda: _EMPTY)  # tool -> calls in the minute
    tool_costs: Mapping[str, float] = dataclasses.field(default_factory=lambda: _EMPTY)  # tool -> USD in the minute
    model: str | None = None  # the model with the most calls this minute (None: no call)
    version: str | None = None  # agent_version seen this minute, when the data names one
    workflow: str | None = None  # the workflow with the most activity this minute
    # Open tasks at the minute's end (None: the source does not say). Bounded per agent, so the
    # SDK exports them live too (docs/metrics.md): how many are open, and of the *running* ones
    # (an event within the last 5 minutes) the largest by tokens and the oldest, each with its
    # tokens so far and age (seconds since its first event); 0 when none runs. Their ids are
    # known in replay only.
    open_tasks: int | None = None
    largest_task_tokens: int | None = None
    largest_task_age: float | None = None
    largest_task_id: str | None = None
    oldest_task_tokens: int | None = None
    oldest_task_age: float | None = None
    oldest_task_id: str | None = None

    @property
    def cost_usd(self) -> float:
        return self.inference_cost_usd + self.tool_cost_usd + self.human_cost_usd

    @property
    def tasks_ended(self) -> int:
        return self.tasks_completed + self.tasks_failed + self.tasks_abandoned

    @property
    def output(self) -> float:
        """Output in the contract's sense: completed tasks plus outcomes."""
        return self.tasks_completed + self.outcomes


def _compile_maker() -> object:
    """``make(agent, namespace, minute, ...every field in order)``: an AgentMinute built without
    the frozen dataclass' ``__init__`` (one ``object.__setattr__`` per field): each slot is set
    through its descriptor. Same object, same fields; for the bucketer's hot path."""
    names = [f.name for f in dataclasses.fields(AgentMinute)]
    setters = {f"_set_{n}": getattr(AgentMinute, n).__set__ for n in names}
    params = ", ".join(names)
    defaults = ", ".join(f"{k}={k}" for k in setters)
    body = "".join(f"    _set_{n}(o, {n})\n" for n in names)
    src = f"def make({params}, *, _new=_new, _cls=_cls, {defaults}):\n    o = _new(_cls)\n{body}    return o\n"
    scope: dict[str, object] = {"_new": object.__new__, "_cls": AgentMinute, **setters}
    exec(src, scope)  # noqa: S102 - generated from the dataclass' own field names
    return scope["make"]


# make(agent, namespace, minute, inference_cost_usd, tool_cost_usd, human_cost_usd, tokens, output_tokens,
#      llm_calls, tasks_completed, tasks_failed, tasks_abandoned, outcomes, tool_calls, tool_costs, model,
#      version, workflow, open_tasks, largest_task_tokens, largest_task_age, largest_task_id,
#      oldest_task_tokens, oldest_task_age, oldest_task_id) -> AgentMinute: every field, positionally,
#      in declaration order
make = _compile_maker()


_HASHABLE = operator.attrgetter(*(f.name for f in dataclasses.fields(AgentMinute)
                                  if f.name not in ("tool_calls", "tool_costs")))


def minute_key(m: AgentMinute) -> tuple[object, ...]:
    """Every field of ``m`` as a hashable tuple (a tool map as its items): equal minutes give equal
    keys (two maps equal in another order give other keys)."""
    key: tuple[object, ...] = _HASHABLE(m)
    if m.tool_calls or m.tool_costs:
        key += (tuple(m.tool_calls.items()), tuple(m.tool_costs.items()))
    return key


# ------------------------------------------------------------------ a compact run of kept minutes

# The numbers of a minute a row holds, after the minute itself: (field, struct code, default). A
# row keeps only those that differ from their default, each in 4 bytes when that holds it exactly
# (``i`` for an int, ``f`` for a float), else in 8 (``q``, ``d``), so a quiet minute is small. A row
# is its layout (``<I``: bit k, the k-th number is present; bit 16 + k, it is in 4 bytes; bit 31,
# the minute is in 8), the minute (``I``, or ``q``), then the numbers present in this order. The
# layout depends on the values only, so equal minutes have equal rows.
_NUMBERS: tuple[tuple[str, str, float | int | None], ...] = (
    ("inference_cost_usd", "d", 0.0), ("tool_cost_usd", "d", 0.0), ("human_cost_usd", "d", 0.0),
    ("tokens", "q", 0), ("output_tokens", "q", 0), ("llm_calls", "q", 0), ("tasks_completed", "q", 0),
    ("tasks_failed", "q", 0), ("tasks_abandoned", "q", 0), ("outcomes", "d", 0.0),
    ("open_tasks", "q", None), ("largest_task_tokens", "q", None), ("largest_task_age", "d", None),
    ("oldest_task_tokens", "q", None), ("oldest_task_age", "d", None),
)
_NARROW = {"q": "i", "d": "f"}
_WIDE_MINUTE = 1 << 31
# The rest of a minute, held by reference beside its row: mostly one shared tuple for many minutes.
_REST = ("tool_calls", "tool_costs", "model", "version", "workflow", "largest_task_id", "oldest_task_id")
_HEAD = struct.Struct("<II")  # layout, minute (a minute in 8 bytes: _WIDE_HEAD)
_WIDE_HEAD = struct.Struct("<Iq")
_LAYOUT = struct.Struct("<I")
_INT_RANGE = (-(2**63), 2**63 - 1)
_NARROW_INT = (-(2**31), 2**31 - 1)
_FLOAT_EXACT = 2**53  # an int a float field holds is kept only if a double holds it exactly
_FLOAT32 = struct.Struct("<f")
_RESTS: dict[tuple[object, ...], tuple[object, ...]] = {}
_MAX_RESTS = 4096  # shared rest tuples at most; past that a minute keeps its own
_DECODERS: dict[int, Callable[[str, str, bytes, int, tuple[object, ...]], AgentMinute]] = {}
# A run adds rows in place while the rows before its first are at most 16 to 47 (by agent, so
# that a fleet's agents copy theirs at different minutes); past that, a sum is a copy.
_DEAD_ROWS = (16, 32)


def _code(code: str, value: object) -> str | None:
    """The code ``value`` packs under in a field of ``code`` so that it unpacks equal to itself:
    the narrow one when it holds it exactly (None: neither does, the minute is kept whole)."""
    if code == "q":
        if type(value) is not int:
            return None
        if _NARROW_INT[0] <= value <= _NARROW_INT[1]:
            return "i"
        return "q" if _INT_RANGE[0] <= value <= _INT_RANGE[1] else None
    if type(value) is int:
        if not -_FLOAT_EXACT <= value <= _FLOAT_EXACT:
            return None
        value = float(value)
    elif type(value) is not float:
        return None
    try:
        narrow = _FLOAT32.unpack(_FLOAT32.pack(value))[0] == value
    except OverflowError:  # beyond a 4-byte float's range
        narrow = False
    return "f" if narrow else "d"


def _row(m: AgentMinute) -> bytes | None:
    """The packed numbers of ``m``, or None when one cannot be packed exactly."""
    layout, codes, values = 0, [], []
    for bit, (name, code, default) in enumerate(_NUMBERS):
        value = getattr(m, name)
        if value is None if default is None else value == default:
            continue
        packed = _code(code, value)
        if packed is None:
            return None
        layout |= 1 << bit
        if packed != code:
            layout |= 1 << (16 + bit)
        codes.append(packed)
        values.append(value)
    minute = m.minute
    if type(minute) is not int or not _INT_RANGE[0] <= minute <= _INT_RANGE[1]:
        return None
    if not 0 <= minute < 2**32:
        layout |= _WIDE_MINUTE
    return struct.pack("<I" + ("q" if layout & _WIDE_MINUTE else "I") + "".join(codes), layout, minute, *values)


def _rest(m: AgentMinute) -> tuple[object, ...]:
    """The rest of ``m``: an empty tool map as None, so a minute without tools has a hashable
    rest, shared with every minute of the same names (at most ``_MAX_RESTS`` such tuples)."""
    rest = tuple(getattr(m, name) or None if i < 2 else getattr(m, name) for i, name in enumerate(_REST))
    if rest[0] is not None or rest[1] is not None:
        return rest  # tool maps are not hashable: this minute keeps its own
    shared_rest = _RESTS.get(rest)
    if shared_rest is None:
        if len(_RESTS) >= _MAX_RESTS:
            return rest
        shared_rest = _RESTS[rest] = rest
    return shared_rest


def _hashable(rest: tuple[object, ...] | None) -> object:
    if rest is None or (rest[0] is None and rest[1] is None):
        return rest
    return tuple(tuple(x.items()) if i < 2 and x is not None else x for i, x in enumerate(rest))  # type: ignore[attr-defined]


def _decoder(mask: int) -> Callable[[str, str, bytes, int, tuple[object, ...]], AgentMinute]:
    """``decode(agent, namespace, blob, offset, rest)`` for the row of layout ``mask`` at ``offset``
    of ``blob``: generated once per layout, so a minute is one unpack and one :data:`make` call."""
    got = _DECODERS.get(mask)
    if got is not None:
        return got
    present = [(name, _NARROW[code] if mask >> (16 + bit) & 1 else code)
               for bit, (name, code, _) in enumerate(_NUMBERS) if mask >> bit & 1]
    minute_code = "q" if mask & _WIDE_MINUTE else "I"
    unpack = struct.Struct("<I" + minute_code + "".join(code for _, code in present)).unpack_from
    names = [name for name, _ in present]
    values = {name: name if name in names else repr(default) for name, _, default in _NUMBERS}
    values.update({name: f"rest[{i}]" if i >= 2 else f"rest[{i}] or NO_TOOLS" for i, name in enumerate(_REST)})
    fields = [f.name for f in dataclasses.fields(AgentMinute)]
    values.update(agent="agent", namespace="namespace", minute="minute")
    targets = ", ".join(["_", "minute", *names]) + ","
    src = (f"def decode(agent, namespace, blob, offset, rest):\n"
           f"    {targets} = unpack(blob, offset)\n"
           f"    return make({', '.join(values[name] for name in fields)})\n")
    scope: dict[str, object] = {"unpack": unpack, "make": make, "NO_TOOLS": NO_TOOLS}
    exec(src, scope)  # noqa: S102 - generated from the field table above
    decode = scope["decode"]
    _DECODERS[mask] = decode  # type: ignore[assignment]
    return decode  # type: ignore[return-value]


class MinuteRun(Sequence[AgentMinute]):
    """One agent's minutes, in order, held compactly: the numbers of each minute that are not
    zero (or not None) packed in a row, the rows one after the other in one ``bytes``, and a
    reference to the rest of each minute (names and tool maps), shared between minutes that have
    the same. Reading it gives :class:`AgentMinute` objects equal to those it was made of, built
    anew at each read.

    The operator keeps every agent's lookback between fetches (90 minutes and more, 10,000 agents:
    a million minutes); as objects a minute takes about 300 bytes with its numbers, as a row of
    its own (a ``bytes`` each) about 90, in one ``bytes`` with the others its row's length and 4
    bytes of offset (docs/operator.md, "Scale"). A minute that cannot be packed exactly (a number
    of another type or out of range, another agent's) is kept as it is, in place of its rest,
    with a row of no bytes. A slice shares its run's bytes (``_lo`` and ``_hi``: the rows it
    covers).

    A run that ends where its buffer does (the fetcher's, joined fetch after fetch) takes the
    rows of a run added to it *in place*: they go on after its own in the same buffer, and the
    sum is a run over both. Every run over the rows before, a snapshot handed out, reads what it
    read: rows are only ever added after the last, never changed (by one thread at a time: the
    fetcher's, under the runtime's fetch lock). So a fetch that finds a few
    new minutes copies those, not every agent's lookback while the last snapshot still holds
    it (the copy doubled the kept minutes at every fetch: docs/operator.md, "Scale"). Once the
    rows before a run's first (minutes past the lookback) are more than a few dozen, the sum is
    a copy into a buffer of its own: :data:`_DEAD_ROWS`."""

    __slots__ = ("agent", "namespace", "_blob", "_offsets", "_rests", "_lo", "_hi")

    def __init__(self, agent: str, namespace: str, blob: bytearray | None = None, offsets: array.array[int] | None = None,
                 rests: list[tuple[object, ...] | AgentMinute] | None = None, lo: int = 0, hi: int | None = None) -> None:
        # row i is blob[offsets[i]:offsets[i + 1]], its rest rests[i]; this run is rows lo .. hi - 1;
        # the three grow together (rows added after the last, never changed)
        self.agent, self.namespace = agent, namespace
        self._blob = blob if blob is not None else bytearray()
        self._rests = rests if rests is not None else []
        self._offsets = offsets if offsets is not None else array.array("I", (0,))
        self._lo, self._hi = lo, len(self._rests) if hi is None else hi

    @classmethod
    def of(cls, agent: str, namespace: str, minutes: Iterable[AgentMinute]) -> MinuteRun:
        rows: list[bytes] = []
        rests: list[tuple[object, ...] | AgentMinute] = []
        offsets = [0]
        at = 0
        for m in minutes:
            row = _row(m) if m.agent == agent and m.namespace == namespace else None
            if row is None:
                rests.append(m)
            else:
                rows.append(row)
                at += len(row)
                rests.append(_rest(m))
            offsets.append(at)
        return cls(agent, namespace, bytearray(b"".join(rows)), array.array("I", offsets), rests)

    def __len__(self) -> int:
        return self._hi - self._lo

    def _at(self, i: int) -> AgentMinute:
        j = self._lo + i
        rest = self._rests[j]
        if type(rest) is AgentMinute:
            return rest
        offset = self._offsets[j]
        return _decoder(_LAYOUT.unpack_from(self._blob, offset)[0])(self.agent, self.namespace, self._blob, offset, rest)  # type: ignore[arg-type]

    def _index(self, i: int) -> int:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("MinuteRun index out of range")
        return i

    @overload
    def __getitem__(self, index: int) -> AgentMinute: ...

    @overload
    def __getitem__(self, index: slice) -> MinuteRun: ...

    def __getitem__(self, index: int | slice) -> AgentMinute | MinuteRun:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise ValueError("a MinuteRun is sliced with a step of 1 only")
            stop = max(start, stop)
            return MinuteRun(self.agent, self.namespace, self._blob, self._offsets, self._rests,
                             self._lo + start, self._lo + stop)
        return self._at(self._index(index))

    def __iter__(self) -> Iterator[AgentMinute]:
        head, decoders, agent, namespace = _LAYOUT.unpack_from, _DECODERS, self.agent, self.namespace
        blob, offsets, rests = self._blob, self._offsets, self._rests
        for j in range(self._lo, self._hi):
            rest = rests[j]
            if type(rest) is AgentMinute:
                yield rest
            else:
                offset = offsets[j]
                mask = head(blob, offset)[0]
                decode = decoders.get(mask) or _decoder(mask)
                yield decode(agent, namespace, blob, offset, rest)  # type: ignore[arg-type]

    def minute_at(self, i: int) -> int:
        """The start of the ``i``-th minute, without building it."""
        j = self._lo + self._index(i)
        rest = self._rests[j]
        if type(rest) is AgentMinute:
            return rest.minute
        layout, minute = _HEAD.unpack_from(self._blob, self._offsets[j])
        return int(_WIDE_HEAD.unpack_from(self._blob, self._offsets[j])[1]) if layout & _WIDE_MINUTE else int(minute)

    def reshared(self) -> MinuteRun:
        """This run with its names shared again, in place: a run that came through a pipe
        (``adapters/reader.py``, unpickled) holds new strings and a new rest tuple for every
        minute, where one built here shares them with every other run (:func:`shared`,
        ``_RESTS``). Returns the run."""
        self.agent, self.namespace = shared(self.agent), shared(self.namespace)
        rests = self._rests
        for i, rest in enumerate(rests):
            if type(rest) is not tuple:
                continue  # a minute kept whole
            again = tuple(shared(x) if type(x) is str
                          else {shared(k): v for k, v in x.items()} if type(x) is dict else x
                          for x in rest)
            if again[0] is None and again[1] is None:
                kept = _RESTS.get(again)
                if kept is None and len(_RESTS) < _MAX_RESTS:
                    kept = _RESTS[again] = again
                again = kept if kept is not None else again
            rests[i] = again
        return self

    def first_at(self, start: int, lo: int = 0) -> int:
        """The position of the first minute that starts at or after ``start`` (the run is in order).

        An agent's run mostly has every minute: the position is then guessed from the minutes
        between ``start`` and the run's minute at ``lo``, and taken once the minutes on both sides
        of it say so (three reads, not the seven of a bisection of 100 minutes); a run with gaps
        falls back to the bisection."""
        n = len(self)
        if lo >= n:
            return lo
        first = self.minute_at(lo)
        if start <= first:
            return lo
        guess = lo + -(-(start - first) // MINUTE)  # the position were no minute missing from lo on
        if guess <= n and self.minute_at(guess - 1) < start and (guess == n or self.minute_at(guess) >= start):
            return guess
        return bisect.bisect_left(range(n), start, lo, key=self.minute_at)

    def _bytes(self, n: int) -> bytes:
        """The rows of the first ``n`` minutes, one after the other."""
        # one copy (a slice of the buffer would be a bytearray, copied again to hash it); the
        # view is released at once, so the buffer can still grow
        return memoryview(self._blob)[self._offsets[self._lo]:self._offsets[self._lo + n]].tobytes()

    def digest(self, n: int) -> int:
        """A hash of the first ``n`` minutes, from their rows: equal minutes of runs give equal
        digests (a run's rows are canonical, and a row's mask gives its length, so the rows one
        after the other are the rows), without building a minute."""
        rests = tuple(self._rests[self._lo:self._lo + n])
        try:
            return hash(("run", self._bytes(n), rests))
        except TypeError:  # a minute with tool maps, or one kept whole
            return hash(("run", self._bytes(n), tuple(
                minute_key(r) if type(r) is AgentMinute else _hashable(r) for r in rests)))  # type: ignore[arg-type]

    def between(self, start: int, end: int) -> MinuteRun:
        """The minutes that start in ``[start, end)`` (the run is in order)."""
        i = self.first_at(start)
        return self[i:self.first_at(end, i)]

    def __add__(self, other: MinuteRun) -> MinuteRun:
        if (other.agent, other.namespace) != (self.agent, self.namespace):
            return NotImplemented
        blob, offsets, rests = self._blob, self._offsets, self._rests
        theirs = other._bytes(len(other))
        if self._hi == len(rests) == len(offsets) - 1 and offsets[-1] == len(blob) \
                and self._lo <= _DEAD_ROWS[0] + hash((self.namespace, self.agent)) % _DEAD_ROWS[1]:
            # this run ends where its buffer does: the other's rows go on after its own, in place
            base = len(blob) - other._offsets[other._lo]
            added = [o + base for o in other._offsets[other._lo + 1:other._hi + 1]]
            more = other._rests[other._lo:other._hi]
            blob += theirs
            offsets.extend(added)
            rests.extend(more)
            return MinuteRun(self.agent, self.namespace, blob, offsets, rests, self._lo, len(rests))
        mine = bytearray(self._bytes(len(self)))
        first, base = offsets[self._lo], len(mine) - other._offsets[other._lo]
        joined = array.array("I", [*(o - first for o in offsets[self._lo:self._hi + 1]),
                                   *(o + base for o in other._offsets[other._lo + 1:other._hi + 1])])
        mine += theirs
        return MinuteRun(self.agent, self.namespace, mine, joined,
                         rests[self._lo:self._hi] + other._rests[other._lo:other._hi])

    def __eq__(self, other: object) -> bool:
        if isinstance(other, MinuteRun) and (other.agent, other.namespace) == (self.agent, self.namespace) \
                and len(other) == len(self) and other._bytes(len(other)) == self._bytes(len(self)) \
                and other._rests[other._lo:other._hi] == self._rests[self._lo:self._hi]:
            return True
        if isinstance(other, Sequence) and not isinstance(other, (str, bytes)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MinuteRun({self.namespace}/{self.agent}, {len(self)} minutes)"


def since(minutes: Sequence[AgentMinute], start: int) -> Iterable[AgentMinute]:
    """The minutes that start at or after ``start``: of a run, only those are built."""
    if isinstance(minutes, MinuteRun):
        return minutes[minutes.first_at(start):]
    return (m for m in minutes if m.minute >= start)
