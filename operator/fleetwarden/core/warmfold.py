"""The operator's detector fold of one agent, from an anchor, kept warm between cycles.

Refolding an agent's whole lookback from an empty state once a minute is most of a large
fleet's CPU (docs/operator.md, "Scale"). This module gives the *same* findings, bit for bit,
as a fold of the detectors from an empty state at the agent's **anchor**, while stepping only
the minutes that are new:

- The anchor moves once every ``anchor_minutes`` minutes (each agent at its own phase, so a
  fraction of the fleet re-anchors each minute): :func:`anchor` is the latest minute at the
  agent's phase that is not after ``lookback_start + anchor_minutes``. The fetch covers the
  lookback plus ``anchor_minutes``, so the detectors always see at least the configured
  lookback (and up to ``anchor_minutes - 1`` minutes more).
- :class:`Folds` keeps, per agent, the detectors' state after the minutes that can no longer
  change (all but the last ``tail_minutes``, which a late scrape may still fill), pickled and
  compressed (with zstd, and a dictionary trained on the first states it kept: :class:`Trained`),
  with those minutes and the findings they revealed. A cycle restores it, steps
  the newly settled minutes, keeps the new state (a live agent's every other minute:
  :data:`KEEP_MINUTES`), and steps the tail on top. A state refers to its parameters, which
  the restore is handed, rather than holding a copy.
- The kept state is used only when the minutes it folded are, one by one, the first minutes of
  this cycle's window (equal in every field: a state keeps their count and a hash of their
  fields, not the minutes, which the fetcher keeps compactly), with the same anchor and the
  same parameters; otherwise the window is folded again from its anchor. The detectors are a
  pure fold (same minutes in order, same findings out: docs/detectors.md), so a state restored
  after ``k`` minutes and stepped on is the state a fold from the anchor reaches, and its
  findings are the same. When the window is exactly the kept minutes (an agent with nothing new since), the
  findings are those kept, and the state is not even restored. ``tests/unit/core/test_warmfold.py``
  checks this against a fold from the anchor, and ``tests/e2e/test_replay_operator_agree.py``
  against replay on real parts.
- An agent whose anchor moves at the next minute would fold its whole lookback from the new
  anchor in the first cycle after the minute turned, when every agent also steps its new
  minute: at 10,000 agents a fifteenth of the fleet, most of that cycle's time. So
  :meth:`Folds.prepare` folds ahead, later in the minute before (from :func:`prepare_second`
  into it, each agent at its own second, so the work is spread over the minute's other
  cycles): the state a fold from the next anchor keeps, over the settled minutes from there on,
  kept apart. When the anchor has moved, :meth:`Folds.findings` takes it as a kept state, by
  the same test (anchor, parameters, the minutes' count and digest); a minute changed since is
  folded again from the anchor, as with any kept state. Folding ahead changes when the work is
  done, never a finding.

Nothing here depends on a clock: the window, ``end`` and the anchor come from the caller.
"""

from __future__ import annotations

import bisect
import contextlib
import copyreg
import dataclasses
import io
import pickle
import threading
import zlib
from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import zstandard

from fleetwarden.core import detectors, findings, series, spec

ANCHOR_MINUTES = 15  # the operator's default: an anchor lasts this many minutes
TAIL_MINUTES = 3  # the last minutes of a window never kept in a state (a late scrape can still change them)
# A kept state is replaced once this many more minutes have settled (or the window's last has, or
# one more in the agent's own minutes: _keeps): a live agent's is kept every other minute, and a
# restore between steps one settled minute more. A keep (pickling and compressing the state)
# costs about three steps (docs/operator.md, "Scale").
KEEP_MINUTES = 2
_LEVEL = 1  # zstd: a state is about 20 KB pickled, about 3 KB at level 1 (docs/design.md)


def phase(namespace: str, agent: str, anchor_minutes: int) -> int:
    """The agent's anchor phase (minutes), stable across restarts and replicas."""
    return zlib.crc32(f"{namespace}/{agent}".encode()) % anchor_minutes


# Folding ahead (Folds.prepare) starts this many seconds after the end of the data's last complete
# minute, each agent at its own second among the PREPARE_SPREAD after it (45 to 59 s). The operator
# reads a minute a scrape interval after its end (15-27 s after it at the defaults), and folds its
# new minute in that cycle and the next two (WAIT_SECONDS: up to about 50 s after the end); so the
# folds ahead fall on the minute's last cycles, which have no new minute to fold. (From 20 to 44 s
# they fell on the same three cycles as the new minute's folds, which then took about twice the
# evaluation time of the others: docs/operator.md, Scale.) A budget evaluated at least once every
# 15 s is evaluated at or after its second before the next minute is read (75 s or more after the
# end); one evaluated less often may miss it and fold from its new anchor as before.
PREPARE_FROM = 45
PREPARE_SPREAD = 15


def prepare_second(namespace: str, agent: str) -> int:
    """The second of a minute from which the agent's next anchor may be folded ahead."""
    return PREPARE_FROM + zlib.crc32(f"ahead/{namespace}/{agent}".encode()) % PREPARE_SPREAD


# A new minute's fold waits for two agents in three (each agent's share, 0, 1 or 2, is fixed by
# its name): the evaluations that first see a minute fold share 0's, the next evaluation of an
# agent of share 1, at least WAIT_SECONDS[1] later, folds its own, and an agent of share 2 folds
# at its first evaluation WAIT_SECONDS[2] or more after its first of the minute: at the operator's
# 15 s interval the second after, as no evaluation of a cycle ends 20 s after the one before
# unless the cycle ran long (then it folds one evaluation sooner). The cycle after the minute
# turned, which folded every agent's new minute, does a third of that work, and each of the next
# two cycles another. Until then a waiting agent's findings are those of the minute before, from
# the same anchor; an agent waits neither in the minute its anchor moved nor in the minute before
# a move (core/stages.py, anchored_detector_findings; docs/operator.md, "Scale").
WAIT_SHARES = 3
WAIT_SECONDS = (0.0, 5.0, 20.0)


def wait_share(namespace: str, agent: str) -> int:
    """The agent's share: its new minute is folded at its first evaluation of that minute (0), or at
    its first one ``WAIT_SECONDS[share]`` or more after that (1, 2)."""
    return zlib.crc32(f"wait/{namespace}/{agent}".encode()) % WAIT_SHARES


def anchor(lookback_start: float, anchor_minutes: int, namespace: str, agent: str) -> int:
    """The start of the agent's detector fold: the latest minute ``t`` at the agent's phase with
    ``t <= lookback_start + anchor_minutes`` minutes; so ``lookback_start < t``."""
    latest = (int(lookback_start) // series.MINUTE) + anchor_minutes
    return (latest - (latest - phase(namespace, agent, anchor_minutes)) % anchor_minutes) * series.MINUTE


def _proxy_of(items: dict[str, float]) -> Mapping[str, float]:
    return MappingProxyType(items) if items else series.NO_TOOLS


def _reduce_proxy(proxy: Any) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    return _proxy_of, (dict(proxy),)


_DISPATCH = copyreg.dispatch_table.copy()
_DISPATCH[MappingProxyType] = _reduce_proxy  # the minutes' read-only tool maps, kept in detector state


_codecs = threading.local()  # a zstd (de)compressor is not to be shared by threads at once
_TRAIN_STATES = 64  # a Folds trains its zstd dictionary on the first states it keeps
_DICTIONARY_BYTES = 32 * 1024  # at most; at least a tenth of the samples' bytes less


class Trained:
    """A zstd dictionary trained on states pickled in this process, and each thread's
    (de)compressor with it. The states of different agents share most of their bytes (class and
    field names, parameters, the detectors' layout), which zstd alone cannot see across blobs:
    with the dictionary a state is a quarter to a half smaller (docs/operator.md, "Scale")."""

    def __init__(self, samples: Sequence[bytes]) -> None:
        size = min(_DICTIONARY_BYTES, sum(map(len, samples)) // 10)
        self.data = zstandard.train_dictionary(size, list(samples))  # raises ZstdError when it cannot
        self._local = threading.local()

    def compressor(self) -> zstandard.ZstdCompressor:
        made: zstandard.ZstdCompressor | None = getattr(self._local, "compressor", None)
        if made is None:
            made = self._local.compressor = zstandard.ZstdCompressor(level=_LEVEL, dict_data=self.data)
        return made

    def decompressor(self) -> zstandard.ZstdDecompressor:
        made: zstandard.ZstdDecompressor | None = getattr(self._local, "decompressor", None)
        if made is None:
            made = self._local.decompressor = zstandard.ZstdDecompressor(dict_data=self.data)
        return made


def _compressor() -> zstandard.ZstdCompressor:
    made: zstandard.ZstdCompressor | None = getattr(_codecs, "compressor", None)
    if made is None:
        made = _codecs.compressor = zstandard.ZstdCompressor(level=_LEVEL)
    return made


def _decompressor() -> zstandard.ZstdDecompressor:
    made: zstandard.ZstdDecompressor | None = getattr(_codecs, "decompressor", None)
    if made is None:
        made = _codecs.decompressor = zstandard.ZstdDecompressor()
    return made


_restoring = threading.local()  # the parameters of the state being restored in this thread (loads)
_keeping = threading.local()  # those of the state being pickled in this thread (pickled)
# each detector's parameters, by type: the part of AnomalyParams it is ("": the whole)
_PARTS: dict[type[Any], str] = {spec.AnomalyParams: "", **{type(part): name for name, part in spec.AnomalyParams()}}


def _kept_params(part: str) -> Any:
    """The parameters a state is restored with (``part``: one detector's; "": the whole)."""
    params = getattr(_restoring, "params", None)
    if params is None:
        raise pickle.UnpicklingError("a kept detector state restored without its parameters (loads(params=...))")
    return params if not part else getattr(params, part)


def _reduce_params(obj: Any) -> Any:
    """The state's own parameters (or one of their parts) as a reference to them; others whole."""
    part = _PARTS[type(obj)]
    params = getattr(_keeping, "params", None)
    if params is not None and (getattr(params, part) if part else params) is obj:
        return _kept_params, (part,)
    return obj.__reduce_ex__(pickle.HIGHEST_PROTOCOL)


for _cls in _PARTS:
    _DISPATCH[_cls] = _reduce_params


def pickled(detector_set: detectors.DetectorSet) -> bytes:
    """The detectors' state, pickled (read-only maps as such), not compressed. Its parameters are
    not in it, only a reference to them: :func:`loads` is handed them (a state is only ever restored
    with parameters equal to those it was folded with: :class:`Folds`), which saves pickling a
    pydantic model and its four parts at every keep, and rebuilding them at every restore."""
    buffer = io.BytesIO()
    pickler = pickle.Pickler(buffer, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.dispatch_table = _DISPATCH
    _keeping.params = detector_set.params
    try:
        pickler.dump(detector_set)
    finally:
        _keeping.params = None
    return buffer.getvalue()


def dumps(detector_set: detectors.DetectorSet, trained: Trained | None = None) -> bytes:
    """The detectors' state, pickled and compressed (with ``trained``'s dictionary if given)."""
    return compress(pickled(detector_set), trained)


def compress(raw: bytes, trained: Trained | None = None) -> bytes:
    compressor = _compressor() if trained is None else trained.compressor()
    # a copy of the exact size: zstd's answer is a block of the worst case's size cut down to the
    # output, and each kept one would pin the rest of that block (15-20 KB) behind it in the heap
    return memoryview(compressor.compress(raw)).tobytes()


def loads(blob: bytes, trained: Trained | None = None, params: spec.AnomalyParams | None = None
          ) -> detectors.DetectorSet:
    """The state :func:`dumps` kept (only ever bytes this process made), with the same ``trained``,
    and ``params`` equal to those it was folded with (its detectors hold them)."""
    decompressor = _decompressor() if trained is None else trained.decompressor()
    raw = decompressor.decompress(blob)
    _restoring.params = params
    try:
        restored = pickle.loads(raw)  # noqa: S301 - our own bytes, never read from outside
    finally:
        _restoring.params = None
    assert isinstance(restored, detectors.DetectorSet)
    return restored


@dataclasses.dataclass(frozen=True)
class _State:
    anchor: int
    params: spec.AnomalyParams
    folded: int  # how many minutes were stepped into ``blob``, from the anchor on
    digest: int  # of those minutes' every field (:func:`_digest`)
    found: tuple[findings.Finding, ...]  # the findings those minutes revealed
    blob: bytes
    trained: Trained | None = None  # the dictionary ``blob`` was compressed with (None: none)


def _digest(window: Sequence[series.AgentMinute]) -> Callable[[int], int]:
    """``digest(n)``: a hash of every field of the first ``n`` minutes of ``window`` (a compact run
    hashes its rows: series.MinuteRun.digest). Equal minutes give equal digests; a state is kept
    on a digest that matches, so unequal minutes with the same 64-bit digest would keep a state
    they should not (no more likely than any two hashes meeting by chance)."""
    if isinstance(window, series.MinuteRun):
        return window.digest
    keys: list[tuple[object, ...]] = []

    def digest(n: int) -> int:
        keys.extend(series.minute_key(m) for m in window[len(keys):n])
        return hash(("fields", tuple(keys[:n])))
    return digest


def _minute_at(window: Sequence[series.AgentMinute], i: int) -> int:
    return window.minute_at(i) if isinstance(window, series.MinuteRun) else window[i].minute


def _settled(window: Sequence[series.AgentMinute], before: int) -> int:
    """How many minutes of ``window`` (in order) start before ``before``: those no late scrape changes."""
    settled = len(window)
    while settled and _minute_at(window, settled - 1) >= before:
        settled -= 1
    return settled


def _keeps(window: Sequence[series.AgentMinute], settled: int, done: int, anchor_at: int) -> bool:
    """Whether a fold that restored a state kept after ``done`` minutes and stepped the window's
    settled minutes up to ``settled`` (more than ``done``) keeps a new state: once KEEP_MINUTES
    more have settled; or one more, in the minutes of the agent's parity (its anchor's: half the
    fleet each minute, not the whole fleet every other minute); or once every minute of the
    window has settled (the agent quiet since: its next folds restore nothing)."""
    if settled - done >= KEEP_MINUTES or settled == len(window):
        return True
    return (_minute_at(window, settled - 1) - anchor_at) // series.MINUTE % KEEP_MINUTES == 0


class Folds:
    """The kept detector states of a fleet's agents (see the module doc). Thread-safe: two
    evaluations of one agent at once each compute the same findings; the last state kept wins."""

    def __init__(self, tail_minutes: int = TAIL_MINUTES) -> None:
        self.tail_minutes = tail_minutes
        self._states: dict[tuple[str, str, str], _State] = {}
        self._ahead: dict[tuple[str, str, str], _State] = {}  # folded ahead from the next anchor (prepare)
        self._lock = threading.Lock()
        self._swept = 0
        # (each counted under the lock: the operator's evaluation threads fold at once; read by
        # the operator's fleetwarden_operator_detector_folds_total)
        self.warm = 0  # folds that used a kept state: restored it, or had nothing to step (unchanged)
        self.unchanged = 0  # of them, nothing to step: the kept findings, no state restored
        self.cold = 0  # folds from the anchor
        self.prepared = 0  # states folded ahead (prepare)
        self.ahead_used = 0  # of them, taken by a fold at their anchor
        # the first states kept, pickled, until the dictionary is trained on them (then None)
        self._samples: list[bytes] | None = []
        self.trained: Trained | None = None

    def __len__(self) -> int:
        return len(self._states)

    def findings(self, namespace: str, agent: str, window: Sequence[series.AgentMinute], end: int,
                 params: spec.AnomalyParams, anchor_at: int, source: str = "") -> list[findings.Finding]:
        """The findings of a fold of ``window`` (the agent's minutes from ``anchor_at`` on, in
        order, all before ``end``, read from ``source``) from an empty state at ``anchor_at``."""
        key = (namespace, agent, source)
        settled = _settled(window, end - self.tail_minutes * series.MINUTE)
        with self._lock:
            state = self._states.get(key)
            if state is None or state.anchor != anchor_at:
                ahead = self._ahead.get(key)
                if ahead is not None and ahead.anchor == anchor_at:  # the anchor moved: folded ahead
                    state = self._states[key] = self._ahead.pop(key)
                    self.ahead_used += 1
        digest = _digest(window)
        kept = state is not None and state.anchor == anchor_at and state.params == params \
            and state.folded <= settled and digest(state.folded) == state.digest
        if kept:
            assert state is not None
            unchanged = state.folded == len(window)
            with self._lock:
                self.warm += 1
                self.unchanged += unchanged
            if unchanged:
                return list(state.found)  # nothing to step: the findings are those the kept minutes revealed
            detector_set, out, done = loads(state.blob, state.trained, params), list(state.found), state.folded
        else:
            detector_set, out, done = detectors.DetectorSet(params, agent, namespace), [], 0
            with self._lock:
                self.cold += 1
        for minute in window[done:settled]:
            out.extend(detector_set.step(minute))
        if not kept or settled > done and _keeps(window, settled, done, anchor_at):
            trained = self.trained
            raw = pickled(detector_set)
            fresh = _State(anchor_at, params, settled, digest(settled), tuple(out), compress(raw, trained), trained)
            with self._lock:
                self._states[key] = fresh
            if trained is None and self._samples is not None:
                self._sample(raw)
        for minute in window[settled:]:
            out.extend(detector_set.step(minute))
        return out

    def prepare(self, namespace: str, agent: str, window: Sequence[series.AgentMinute], end: int,
                params: spec.AnomalyParams, anchor_at: int, source: str = "") -> bool:
        """Fold ahead for the agent's next anchor ``anchor_at`` (see the module doc): the state a
        fold from an empty state at ``anchor_at`` keeps over the settled minutes of ``window`` (in
        order, all before ``end``) from there on, kept apart until :meth:`findings` folds from
        ``anchor_at``. Once per anchor and parameters; returns whether it folded."""
        key = (namespace, agent, source)
        with self._lock:
            held = self._ahead.get(key)
            if held is not None and held.anchor == anchor_at and held.params == params:
                return False
        if isinstance(window, series.MinuteRun):
            ahead: Sequence[series.AgentMinute] = window[window.first_at(anchor_at):]
        else:
            ahead = window[bisect.bisect_left(window, anchor_at, key=lambda m: m.minute):]
        settled = _settled(ahead, end - self.tail_minutes * series.MINUTE)
        if not settled:
            return False
        detector_set, out = detectors.DetectorSet(params, agent, namespace), []
        for minute in ahead[:settled]:
            out.extend(detector_set.step(minute))
        trained = self.trained
        state = _State(anchor_at, params, settled, _digest(ahead)(settled), tuple(out),
                       dumps(detector_set, trained), trained)
        with self._lock:
            self._ahead[key] = state
            self.prepared += 1
        return True

    def _sample(self, raw: bytes) -> None:
        """Keep ``raw`` toward the dictionary; with enough, train it (once: the states kept before
        keep theirs, read with none). If zstd cannot train one, the states stay without."""
        with self._lock:
            if self._samples is None:
                return
            self._samples.append(raw)
            if len(self._samples) < _TRAIN_STATES:
                return
            samples, self._samples = self._samples, None
        with contextlib.suppress(zstandard.ZstdError):  # too little to learn from: compressed alone
            self.trained = Trained(samples)

    def sweep(self, lookback_start: float) -> None:
        """Forget the states no window can use any more (anchors at or before ``lookback_start``);
        at most once a minute."""
        minute = int(lookback_start)
        with self._lock:
            if minute <= self._swept:
                return
            self._swept = minute
            for kept in (self._states, self._ahead):
                for key in [k for k, s in kept.items() if s.anchor <= lookback_start]:
                    del kept[key]
