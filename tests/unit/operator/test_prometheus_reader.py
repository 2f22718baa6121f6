"""The Prometheus reader process (adapters/reader.py): the fleet-wide fetch's range, spend and
freshness queries sent, decoded and folded in a process of its own, so that the operator's
interpreter is free for the evaluations. What the operator hands out must be what it builds
itself, fetch after fetch; a failed query fails the same way; a reader that dies or hangs fails
the fetch, saying so, and the next fetch starts another.

A real reader process and the real HTTP client against a local HTTP server answering as
Prometheus does (the incremental test's synthetic fleet: each range point evaluated at its own
time, so fetches a few minutes apart overlap as they would)."""

from __future__ import annotations

import datetime as dt
import http.server
import json
import os
import signal
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_prometheus_incremental import AGENTS, END, NOW, Synthetic
from test_prometheus_misbehaving import Handler

from fleetwarden import errors
from fleetwarden.adapters import prometheus, reader
from fleetwarden.core import series
from fleetwarden.handlers import settings


class Fleet(http.server.ThreadingHTTPServer):
    """Prometheus' query API on 127.0.0.1 over :class:`Synthetic`'s range answers, with spend and
    freshness for every agent (and one series without an agent label); ``broken`` answers an
    error page instead."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.synthetic = Synthetic()
        self.broken = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def instant(self, query: str, at: float) -> list[dict[str, Any]]:
        fresh = query == prometheus.freshness_query()
        out = [{"metric": {"namespace": ns, "agent": agent, "pod": pod},
                "value": [at, str(at - 7 - i if fresh else (len(query) * (i + 1)) % 97 / 8 + j)]}
               for i, (ns, agent) in enumerate(AGENTS) for j, pod in enumerate(("a", "b"))]
        return [*out, {"metric": {"namespace": "shop"}, "value": [at, "1"]}]


class _Handler(Handler):
    """The misbehaving server's handler (its ``answer``), answering for :class:`Fleet`."""

    server: Fleet  # type: ignore[assignment]

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        url = urllib.parse.urlsplit(self.path)
        args = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        if self.server.broken:
            self.answer(500, "text/html", b"<html><body><h1>502 Bad Gateway</h1></body></html>")
            return
        if url.path.endswith("/query_range"):
            start = dt.datetime.fromtimestamp(int(args["start"]), tz=dt.timezone.utc)
            end = dt.datetime.fromtimestamp(int(args["end"]), tz=dt.timezone.utc)
            data = {"resultType": "matrix",
                    "result": self.server.synthetic.custom_query_range(args["query"], start, end, args["step"])}
        else:
            data = {"resultType": "vector", "result": self.server.instant(args["query"], float(args["time"]))}
        self.answer(200, "application/json", json.dumps({"status": "success", "data": data}).encode())


@pytest.fixture()
def fleet() -> Iterator[Fleet]:
    srv = Fleet()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture()
def process(fleet: Fleet) -> Iterator[reader.ReaderProcess]:
    proc = reader.ReaderProcess(fleet.url, timeout=5)
    yield proc
    proc.close()


def fetcher(fleet: Fleet, with_reader: reader.ReaderProcess | None, timed: list[str] | None = None
            ) -> prometheus.Fetcher:
    return prometheus.Fetcher(prometheus.connect(fleet.url, timeout=5), lookback_minutes=30, incremental=True,
                              slice_minutes=7, anchor_minutes=15, spend_ledger=True, reader=with_reader,
                              on_query=None if timed is None else lambda what, seconds: timed.append(what))


def test_the_reader_hands_out_what_the_operator_builds_itself(fleet: Fleet, process: reader.ReaderProcess) -> None:
    """Fetches minutes and seconds apart (the first read in slices, then the new minutes and the
    settle): the same minutes, outcomes, guardrail decisions, spend, freshness, query count and
    unlabelled series as the fetcher that decodes its answers itself, and each query timed."""
    timed_here: list[str] = []
    timed_there: list[str] = []
    here, there = fetcher(fleet, None, timed_here), fetcher(fleet, process, timed_there)
    for now in (NOW - 900, NOW - 420, NOW - 60, NOW - 45, NOW):
        a, b = here.fetch(now), there.fetch(now)
        assert (a.start, a.end) == (b.start, b.end)
        assert a.minutes == b.minutes and len(b.minutes) == len(AGENTS)
        assert all(isinstance(run, series.MinuteRun) for run in b.minutes.values())
        assert a.outcomes == b.outcomes and b.outcomes
        assert a.guardrails == b.guardrails and b.guardrails
        assert a.spend == b.spend and len(b.spend) == len(AGENTS)
        assert a.last_sample == b.last_sample and len(b.last_sample) == len(AGENTS)
        assert a.queries == b.queries
        assert a.unlabelled == b.unlabelled and b.unlabelled
        assert timed_here == timed_there and timed_there
        timed_here.clear()
        timed_there.clear()
    assert process.started == 1 and process.pid != os.getpid()


def test_what_comes_back_shares_its_names_as_the_operators_own_answers(fleet: Fleet,
                                                                       process: reader.ReaderProcess) -> None:
    """The keys are the fetch's one tuple per agent, and a minute's names are those the
    operator's own runs share (a new string or tuple per minute would grow the kept minutes)."""
    here, there = fetcher(fleet, None), fetcher(fleet, process)
    for now in (NOW - 120, NOW):
        a, b = here.fetch(now), there.fetch(now)
    for key, run in b.minutes.items():
        mine = next(k for k in a.minutes if k == key)
        assert key is mine and key[1] is mine[1]
        assert run.agent is a.minutes[key].agent
        mine_run = a.minutes[key]
        theirs_, ours = run._rests[run._lo:run._hi], mine_run._rests[mine_run._lo:mine_run._hi]  # noqa: SLF001
        for x, y in zip(theirs_, ours, strict=True):
            assert type(x) is tuple and all(
                u is v for u, v in zip(x, y, strict=True) if isinstance(u, str)), (x, y)
            if x[0] is None and x[1] is None:
                assert x is y
            else:
                assert all(k is k2 for k, k2 in zip(x[0], y[0], strict=True))
    for key in b.spend:
        assert key is next(k for k in a.spend if k == key)


def test_a_failed_query_fails_the_fetch_as_it_would_here(fleet: Fleet, process: reader.ReaderProcess) -> None:
    fleet.broken = True
    with pytest.raises(prometheus.BadAnswerError) as here:
        fetcher(fleet, None).fetch(NOW)
    with pytest.raises(prometheus.BadAnswerError) as there:
        fetcher(fleet, process).fetch(NOW)
    assert str(there.value) == str(here.value)
    assert "Prometheus query inference_cost: HTTP 500" in str(there.value)
    fleet.broken = False
    assert fetcher(fleet, process).fetch(NOW).minutes
    assert process.started == 1  # the reader itself was fine


@pytest.mark.parametrize("fault", ["killed", "hung"])
def test_a_reader_that_dies_or_hangs_fails_the_fetch_and_the_next_starts_another(
        fleet: Fleet, process: reader.ReaderProcess, fault: str) -> None:
    f = fetcher(fleet, process)
    first = f.fetch(NOW - 60)
    pid = process.pid
    assert pid is not None
    deadline = process.deadline
    if fault == "killed":
        os.kill(pid, signal.SIGKILL)
    else:
        process.deadline = 1.0
        os.kill(pid, signal.SIGSTOP)
    with pytest.raises(errors.PrometheusError, match="the Prometheus reader process failed .*exit code -9.*"
                                                     "the next fetch starts another"):
        f.fetch(NOW)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # gone, not left behind
    # the next reader's start and first answer are not held to the hung one's short deadline (on
    # a loaded machine starting an interpreter alone can take longer than a second)
    process.deadline = deadline
    again = f.fetch(NOW)
    assert process.started == 2 and process.pid != pid
    assert again.minutes == fetcher(fleet, None).fetch(NOW).minutes
    assert first.end == END - 60 and again.end == END


def test_closing_the_operators_end_ends_the_reader(fleet: Fleet, process: reader.ReaderProcess) -> None:
    fetcher(fleet, process).fetch(NOW)
    pid = process.pid
    assert pid is not None
    proc = process._proc  # noqa: SLF001 - the child, to see it exit
    assert proc is not None
    process.close()
    assert proc.returncode == 0  # it read the socket's end and returned, not killed
    assert process.pid is None


def test_the_reader_gives_freed_pages_back_at_once_under_jemalloc(fleet: Fleet, monkeypatch: pytest.MonkeyPatch
                                                                   ) -> None:
    """The reader runs with the operator's environment, and jemalloc's decay set to give its
    freed pages back at once (its decoded answers are large and brief; the pod counts both)."""
    monkeypatch.setenv("MALLOC_CONF", "narenas:1")
    monkeypatch.setenv("FLEETWARDEN_SOMETHING", "kept")
    proc = reader.ReaderProcess(fleet.url, timeout=5)
    try:
        fetcher(fleet, proc).fetch(NOW)
        assert proc.pid is not None
        raw = Path(f"/proc/{proc.pid}/environ").read_bytes()
        environ = dict(entry.split(b"=", 1) for entry in raw.split(b"\0") if b"=" in entry)
    finally:
        proc.close()
    assert environ[b"MALLOC_CONF"] == b"narenas:1,dirty_decay_ms:0,muzzy_decay_ms:0"
    assert environ[b"FLEETWARDEN_SOMETHING"] == b"kept"


@pytest.mark.parametrize(("env", "process_"), [
    ({}, False),
    ({"FLEETWARDEN_EVALUATION": "fleet"}, False),
    ({"FLEETWARDEN_EVALUATION": "fleet", "FLEETWARDEN_PROMETHEUS_READER": "process"}, True),
    ({"FLEETWARDEN_PROMETHEUS_READER": "thread"}, False),
])
def test_the_reader_is_a_process_only_when_asked(env: dict[str, str], process_: bool) -> None:
    assert settings.Settings.from_env(env).reader_process() is process_


def test_an_unknown_reader_mode_is_refused_naming_the_variable() -> None:
    with pytest.raises(errors.InputError, match="FLEETWARDEN_PROMETHEUS_READER.*'fork'"):
        settings.Settings.from_env({"FLEETWARDEN_PROMETHEUS_READER": "fork"})
