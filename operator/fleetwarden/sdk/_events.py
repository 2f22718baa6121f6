"""Usage events as JSON Lines (docs/contracts/usage-events.md), so what an agent spent
can be replayed with ``fleetwarden replay``."""

from __future__ import annotations

import io
import sys
import threading
from pathlib import Path
from typing import IO, Any

try:
    import orjson

    def _dumps(obj: dict[str, Any]) -> bytes:
        return orjson.dumps(obj) + b"\n"
except ImportError:  # pragma: no cover - only without orjson
    import json

    def _dumps(obj: dict[str, Any]) -> bytes:
        return (json.dumps(obj, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")


class EventWriter:
    """Writes one usage event per line to a file (appending) or a stream; thread-safe.

    ``EventWriter("usage.jsonl")``, ``EventWriter("-")`` (stdout) or ``EventWriter(stream)``
    for a binary or text stream. A file is appended to (an agent that restarts keeps its
    history) unless ``append=False``, which starts it afresh. ``flush_every`` events are buffered before a flush (1: each
    event is flushed as written, the default, so a crash loses nothing). Use it as a context
    manager or call :meth:`close`.
    """

    def __init__(self, target: str | Path | IO[Any], *, flush_every: int = 1, append: bool = True) -> None:
        self._lock = threading.Lock()
        self._own = False
        self._binary: IO[bytes] | None = None
        self._text: IO[str] | None = None
        if isinstance(target, (str, Path)):
            if str(target) == "-":
                self._text = sys.stdout
            else:
                self._binary = open(target, "ab" if append else "wb")  # noqa: SIM115 - closed in close()
                self._own = True
            self.name = str(target)
        else:
            if isinstance(target, io.TextIOBase) or "b" not in getattr(target, "mode", "b"):
                self._text = target
            else:
                self._binary = target
            self.name = getattr(target, "name", repr(target))
        self._flush_every = max(1, flush_every)
        self._pending = 0
        self.count = 0

    def write(self, event: dict[str, Any]) -> None:
        """Write one event (a dict already in the contract's shape)."""
        line = _dumps(event)
        with self._lock:
            if self._binary is not None:
                self._binary.write(line)
            else:
                assert self._text is not None
                self._text.write(line.decode("utf-8"))
            self.count += 1
            self._pending += 1
            if self._pending >= self._flush_every:
                self._flush_locked()

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_locked(self) -> None:
        self._pending = 0
        stream = self._binary if self._binary is not None else self._text
        if stream is not None and not stream.closed:
            stream.flush()

    def close(self) -> None:
        with self._lock:
            self._flush_locked()
            if self._own and self._binary is not None:
                self._binary.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
