"""The Prometheus reader: a process of its own that sends the fleet-wide fetch's heavy queries,
decodes their answers and folds them, so that this work does not hold the operator's
interpreter while it evaluates budgets.

At 10,000 agents the fetch's range queries and spend queries return tens of thousands of
series a cycle; decoding them and building each agent's minutes took about a fifth of the
operator's interpreter (docs/operator.md, "The fetch in a process of its own"). The evaluations
run on threads of one interpreter, so that fifth was taken from them. Here the reader, a child
started with ``python -m fleetwarden.adapters.reader``, runs the very code the operator would
(:meth:`prometheus.Fetcher.answer` with a fetcher of its own) and sends back what it built: the
buckets of a slice of minutes, packed as the operator keeps them, and each agent's amounts.
The operator shares the names again (:meth:`prometheus._KeptRanges.add`) and goes on as before.

Failures are the fetch's failures: a failed query's PrometheusError comes back as it is; a
reader that dies, or answers nothing within :meth:`ReaderProcess.deadline`, is killed and the
fetch fails with a PrometheusError saying so (the cycle's budgets keep the last snapshot, as
with Prometheus down); the next fetch starts a new reader. The reader ends when the operator
closes the socket between them, or dies (it reads the end of the socket)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing.connection
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fleetwarden import errors
from fleetwarden.adapters import prometheus

log = logging.getLogger(__name__)

# Every query of a request may take the client's timeout, and its one retry as long again.
_QUERIES_PER_REQUEST = len(prometheus.RANGE_FAMILIES) + 1
READER_MALLOC_CONF = "dirty_decay_ms:0,muzzy_decay_ms:0"


class ReaderProcess:
    """The operator's end: starts the reader at the first :meth:`ask`, and again after it failed."""

    def __init__(self, url: str, *, timeout: float = 10.0, headers: Mapping[str, str] | None = None,
                 namespaces: Sequence[str] = ()) -> None:
        self.config = {"url": url, "timeout": timeout, "headers": dict(headers or {}), "namespaces": tuple(namespaces)}
        self.deadline = 2 * timeout * _QUERIES_PER_REQUEST + 30.0
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._conn: multiprocessing.connection.Connection | None = None
        self.started = 0  # readers started so far (a second one means the first failed)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def ask(self, request: tuple[Any, ...]) -> tuple[bool, Any, dict[str, int], list[tuple[str, float]]]:
        """The reader's reply to ``request`` (:class:`prometheus.Reader`)."""
        with self._lock:
            try:
                conn = self._conn if self._conn is not None else self._start()
                conn.send(request)
                if not conn.poll(self.deadline):
                    raise TimeoutError(f"no reply within {self.deadline:g} s")
                reply: tuple[bool, Any, dict[str, int], list[tuple[str, float]]] = conn.recv()
            except (OSError, EOFError, TimeoutError) as exc:
                why = self._stop()
                raise errors.PrometheusError(
                    f"the Prometheus reader process failed ({why or exc}); the next fetch starts another") from exc
            return reply

    def close(self) -> None:
        """End the reader (it reads the socket's end and exits)."""
        with self._lock:
            self._stop(kill=False)

    def _start(self) -> multiprocessing.connection.Connection:
        mine, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH", "")) if p)
        # Under jemalloc (the image preloads it) the reader gives freed pages back at once: its
        # decoded answers are large and brief, and the pod's memory is the two processes' sum.
        # (glibc's malloc ignores MALLOC_CONF.)
        env["MALLOC_CONF"] = ",".join(p for p in (env.get("MALLOC_CONF", ""), READER_MALLOC_CONF) if p)
        try:
            self._proc = subprocess.Popen(  # noqa: S603 - this interpreter, this package
                [sys.executable, "-m", "fleetwarden.adapters.reader", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), env=env, stdin=subprocess.DEVNULL)
        except OSError as exc:
            mine.close()
            raise errors.PrometheusError(f"the Prometheus reader process could not start: {exc}") from exc
        finally:
            theirs.close()
        self.started += 1
        conn = self._conn = multiprocessing.connection.Connection(mine.detach())
        conn.send(self.config)
        log.info("Prometheus reader process %d started", self._proc.pid)
        return conn

    def _stop(self, kill: bool = True) -> str:
        """Close the socket and end the reader; what became of it ("exit code N"), if it ended."""
        conn, proc = self._conn, self._proc
        self._conn = self._proc = None
        if conn is not None:
            conn.close()
        if proc is None:
            return ""
        if kill and proc.poll() is None:
            proc.kill()
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        return f"exit code {code}"


def serve(conn: multiprocessing.connection.Connection) -> None:
    """The reader's loop: a fetcher of its own answers each request until the socket ends."""
    config = conn.recv()
    timings: list[tuple[str, float]] = []
    fetcher = prometheus.Fetcher(
        prometheus.connect(config["url"], timeout=config["timeout"], headers=config["headers"]),
        namespaces=config["namespaces"], on_query=lambda what, seconds: timings.append((what, seconds)))
    while True:
        try:
            request = conn.recv()
        except EOFError:
            return
        timings.clear()
        unlabelled: dict[str, int] = {}
        reply: tuple[bool, Any, dict[str, int], list[tuple[str, float]]]
        try:
            reply = (False, fetcher.answer(request, unlabelled), unlabelled, timings)
        except errors.PrometheusError as exc:
            reply = (True, exc, unlabelled, timings)
        except Exception as exc:  # a fault of ours, told as the fetch's failure rather than a dead reader
            reply = (True, errors.PrometheusError(f"the Prometheus reader process failed: {type(exc).__name__}: {exc}"),
                     unlabelled, timings)
        conn.send(reply)


def main(argv: Sequence[str]) -> int:
    with contextlib.suppress(EOFError, OSError, KeyboardInterrupt):  # the operator went away
        serve(multiprocessing.connection.Connection(int(argv[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
