"""``fleetwarden simulate`` serving /metrics in real time, as a Prometheus target (for the e2e
tests that read a live simulator through the real Prometheus)."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from typing import Any

from fleetwarden.devcluster import procs


@dataclasses.dataclass
class Simulator:
    proc: subprocess.Popen[str]
    job: str  # its Prometheus job
    finished: threading.Event  # set when it says "simulation finished" (it lingers, serving /metrics)
    log: list[str]  # its stderr so far

    def said(self) -> str:
        return "".join(self.log)


@contextlib.contextmanager
def running(prometheus: Any, args: Sequence[str]) -> Iterator[Simulator]:
    """Start ``fleetwarden simulate --port P *args``, add it as a target (not yet waited for),
    and on exit remove the target and stop the simulator."""
    port = procs.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "fleetwarden", "simulate", "--port", str(port), *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sim = Simulator(proc, f"simulator-{port}", threading.Event(), [])

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            sim.log.append(line)
            if "simulation finished" in line:
                sim.finished.set()

    threading.Thread(target=read_stderr, daemon=True).start()
    prometheus.add_target(sim.job, f"127.0.0.1:{port}")
    try:
        yield sim
    finally:
        prometheus.remove_target(sim.job)
        procs.end(proc, grace=10)
