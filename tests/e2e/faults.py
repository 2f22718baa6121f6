"""The fault table: each fault test of tests/e2e records one row; ``benchmarks/faults.py`` runs the
tests marked ``faults`` and prints the rows as a table (docs/operator.md shows the last one).

A row: ``fault`` (what was done), ``injected`` (how many times it was actually hit), ``survived``
(how many of those ended converged: the right replicas, a true status), and the three that must
stay 0: ``duplicated`` (an action or its record done twice: a second incident, a second alert, a
second Event object for one kill, a second scale of an agent already at zero), ``lost`` (an action
never done: an agent left running after a kill, a replica count not restored exactly), and
``false_claims`` (the status saying what is not so: Killed while an agent runs, a killSwitch
replica count differing from what ran before the kill).

Adding a row is one call at the end of a fault test (mark it ``@pytest.mark.faults``)::

    faults.record("leader SIGKILL mid-kill", injected=1, survived=1, duplicated=0, lost=0, false_claims=0)

Rows go to the JSON-lines file named by ``$FLEETWARDEN_FAULTS_OUT`` (when set) and to stdout.
"""

from __future__ import annotations

import dataclasses
import json
import os
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

OUT_ENV = "FLEETWARDEN_FAULTS_OUT"


@dataclasses.dataclass(frozen=True)
class Row:
    fault: str
    injected: int
    survived: int
    duplicated: int
    lost: int
    false_claims: int
    note: str = ""


def record(fault: str, *, injected: int, survived: int, duplicated: int, lost: int, false_claims: int,
           note: str = "") -> Row:
    row = Row(fault, injected, survived, duplicated, lost, false_claims, note)
    path = os.environ.get(OUT_ENV)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(dataclasses.asdict(row)) + "\n")
    print(f"fault row: {json.dumps(dataclasses.asdict(row))}")
    return row


def false_claims(status: Mapping[str, Any], replicas: Mapping[str, int], before: Mapping[str, int]) -> list[str]:
    """What a status says that the cluster contradicts: Killed (or the kill switch engaged) while an
    agent has replicas that the status does not list as pending (its scale failed, said in
    killSwitch.pending and the KillSwitchEngaged condition); a remembered count that is not what
    the agent ran before the kill."""
    out = []
    ks = status.get("killSwitch") or {}
    if status.get("state") == "Killed" or ks.get("engaged"):
        # an agent the status lists as not stopped yet (killSwitch.pending: its scale failed) is no claim
        pending = set(ks.get("pending") or ()) if status.get("state") != "Killed" else set()
        out += [f"{status.get('state')} while {a} has {n} replicas" for a, n in sorted(replicas.items())
                if n > 0 and a not in pending]
        for agent, count in sorted((ks.get("replicas") or {}).items()):
            if agent in before and int(count) != before[agent]:
                out.append(f"killSwitch.replicas[{agent}] = {count}, ran {before[agent]}")
    return out


class ClaimSampler:
    """Samples (status, replicas) every ``period`` s in a thread and keeps every false claim seen."""

    def __init__(self, read: Callable[[], tuple[Mapping[str, Any], Mapping[str, int]]], before: Mapping[str, int],
                 period: float = 0.25) -> None:
        self.read = read
        self.before = dict(before)
        self.period = period
        self.claims: list[str] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="claim-sampler", daemon=True)

    def __enter__(self) -> ClaimSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                status, replicas = self.read()
            except Exception:  # noqa: BLE001 - a failed read is no sample
                time.sleep(self.period)
                continue
            self.samples += 1
            for claim in false_claims(status, replicas, self.before):
                if claim not in self.claims:
                    self.claims.append(claim)
            self._stop.wait(self.period)
