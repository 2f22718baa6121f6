"""benchmarks/operator_scale.py's CPU by process in its window: the processes under the benchmark,
found by their parents in /proc, and the CPU each used between two readings."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import operator_scale  # noqa: E402

BUSY = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end:\n    pass\nprint('done', flush=True)\nimport sys\nsys.stdin.read()\n"


def test_cpu_is_counted_for_every_process_under_the_root_and_named_by_program() -> None:
    # a child that waits for its own child, which burns 0.3 s of CPU: both under this process
    child = subprocess.Popen([sys.executable, "-c", "import subprocess, sys\n"
                              f"subprocess.Popen([{sys.executable!r}, '-c', {BUSY!r}], stdin=sys.stdin).wait()"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        before = operator_scale.cpu_by_process(1)  # (the whole tree: the grandchild may not exist yet)
        assert child.stdout is not None and child.stdout.readline() == "done\n"
        after = operator_scale.cpu_by_process(operator_scale.os.getpid())  # (and whatever else this process started)
        under_child = operator_scale.cpu_by_process(child.pid)
        grandchildren = set(under_child) - {child.pid}
        assert len(grandchildren) == 1 and operator_scale.os.getpid() not in under_child, under_child
        assert set(under_child) <= set(after)  # what is under the child is under this process too
        grandchild = grandchildren.pop()
        assert after[grandchild][1] >= 0.25  # it burnt 0.3 s of CPU (process time, not the clock)
        used = operator_scale.cpu_in_window(before, after, {child.pid: "the child"})
        assert "the child" in used and Path(sys.executable).name in used
        assert used[Path(sys.executable).name] >= after[grandchild][1] - (before[grandchild][1] if grandchild in before else 0)
    finally:
        child.communicate("", timeout=30)


def test_a_program_s_cpu_is_the_sum_of_each_process_s_own_difference() -> None:
    """A process that used nothing in the window adds exactly nothing to its program's figure, whatever
    it had used before (no rounding from adding and taking away its earlier reading)."""
    for earlier in (1.5, 5.01, 7.33, 20.15, 123.47, 9876.54):
        before = {10: ("python3", earlier)}
        after = {11: ("python3", 0.31), 10: ("python3", earlier), 12: ("etcd", 2.0)}
        used = operator_scale.cpu_in_window(before, after, {})
        assert used["python3"] == 0.31, (earlier, used)
        assert list(used) == ["etcd", "python3"]  # the largest first


def test_the_machine_busy_time_grows_with_work() -> None:
    before = operator_scale.machine_busy()
    end = time.process_time() + 0.2
    while time.process_time() < end:
        pass
    assert operator_scale.machine_busy() - before >= 0.15


def test_the_window_s_cycles_are_read_back_from_the_operator_s_log(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the cycles numbered inside the window, each with the second it started at, its time, its
    data and when its fetch ended; the operator's other lines are skipped."""
    from fleetwarden.handlers import fleet

    start = 1795824000.0
    lines = [fleet.cycle_line(k, 10000, 0, 9.0 + k, start + 15 * k + 0.5, "same_minute" if k % 4 else "new_minute",
                              5.25 if k % 2 else None) for k in range(1, 7)]
    log = tmp_path / "operator.log"
    log.write_text("\n".join(f"[2026-11-28 00:00:{k:02d},000] fleetwarden.handlers.fleet [INFO    ] {line}"
                             for k, line in enumerate(lines)) + "\nsomething else: cycle 9 of nothing\n")
    operator_scale.print_cycles(log, 2, 5)
    out = capsys.readouterr().out
    assert out.splitlines()[1] == ("  3: :45.5 12.0s same_minute, fetch 5.2s; 4: :00.5 13.0s new_minute, no fetch; "
                                   "5: :15.5 14.0s same_minute, fetch 5.2s")


def test_the_window_s_detector_folds_are_read_by_minute_from_the_operator_s_counters() -> None:
    """The benchmark's line of folds: each minute's the difference of the counts last read in it
    from those of the minute before (the first: from the window's start), by kind."""
    def exposition(anchor: int, restored: int, unchanged: int, ahead: int) -> str:
        return "".join(f'fleetwarden_operator_detector_folds_total{{how="{how}"}} {n}.0\n' for how, n in
                       (("anchor", anchor), ("restored", restored), ("unchanged", unchanged), ("ahead", ahead)))

    before = operator_scale.folds_of(exposition(10000, 0, 20, 0))
    assert before == (10000, 0, 20, 0)
    by_minute = {0: operator_scale.folds_of(exposition(12100, 9000, 1020, 5)),
                 1: operator_scale.folds_of(exposition(12300, 9100, 30000, 600))}
    assert operator_scale.folds_line(before, by_minute) == (
        "detector folds by minute of the window (anchor/restored/unchanged/ahead): 0: 2100/9000/1000/5; "
        "1: 200/100/28980/595 (before it, the first pass and one interval: 10000/0/20/0)")


def test_the_live_agents_page_goes_on_from_where_the_backfill_ends() -> None:
    """``--live``: the page Prometheus scrapes holds each agent's three counters, each at the
    value the backfill's formula gives at the time of the scrape (so it goes on at the same rate),
    in the text format Prometheus reads."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    agents = [("scale-000", "agent-00000"), ("scale-001", "agent-00000")]
    live = operator_scale.LiveAgents(agents, start=1_000_000)
    try:
        families = {f.name: f for f in text_string_to_metric_families(live.page(1_000_000 + 90 * 60))}
        assert set(families) == {"fleetwarden_llm_cost_usd", "fleetwarden_llm_calls", "fleetwarden_tasks"}
        for name, _, per_minute in operator_scale.FAMILIES:
            got = {(s.labels["namespace"], s.labels["agent"]): s.value
                   for s in families[name].samples if s.name == name + "_total"}
            assert got == {a: pytest.approx(per_minute * 90) for a in agents}, name
        with urllib.request.urlopen(f"http://{live.address}/metrics", timeout=10) as answer:  # noqa: S310
            text = answer.read().decode()
        scraped = {f.name: f for f in text_string_to_metric_families(text)}
        now_minutes = (time.time() - 1_000_000) / 60
        value = scraped["fleetwarden_tasks"].samples[0].value
        assert now_minutes - 1 < value <= now_minutes + 1  # read at the scrape's time
        assert live.scrapes == 1
    finally:
        live.stop()
