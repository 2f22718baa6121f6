"""The operator at N AgentBudgets (default 10,000), measured end to end from outside.

Everything is real: the local control plane (etcd, kube-apiserver, controller-manager,
scheduler, KWOK), a Prometheus whose TSDB holds the agents' SDK series (90 minutes of
``fleetwarden_llm_cost_usd``, ``fleetwarden_llm_calls`` and ``fleetwarden_tasks`` per agent,
backfilled with ``promtool tsdb create-blocks-from openmetrics``), and ``fleetwarden operator``
as a subprocess with kopf's real watches, as its own ServiceAccount, under leader election.
One agent Deployment per budget, in 100 namespaces; the Deployments have 0 replicas so that
a 2-core machine does not run 10,000 pods (the operator reads and decides the same; a
killed budget would have nothing to scale).

After the first full pass and one more interval (the warm-up), it watches the operator for
``--measure`` seconds and prints:

- cycle time: fleet mode, the operator's ``fleetwarden_operator_cycle_seconds`` (mean, max);
  timers mode, the time to evaluate every budget once at the measured evaluation rate;
- the oldest evaluation seen (``fleetwarden_operator_oldest_evaluation_seconds``, max over the
  window): at most about the interval when every budget is evaluated every interval. The window
  starts while the second cycle still runs (at 10,000 budgets the slowest after the first, some
  50 s), and until it ends the budgets it has not reached yet were evaluated in the first pass; so the figure is also printed for the readings taken once two cycles have
  ended in the window (every budget evaluated since by a cycle that started in the window), and
  its largest reading in each minute of the window (whether the first minutes' are the warm-up's);
- Prometheus queries per cycle (``fleetwarden_operator_prometheus_queries_total``);
- PATCHes per cycle of ``agentbudgets/status`` and of ``agentbudgets`` (kopf's finalizers), from
  the API server's own ``apiserver_request_total``;
- the time of a fleet-wide Prometheus fetch (``fleetwarden_operator_prometheus_fetch_seconds``),
  and its slowest queries (``..._prometheus_query_seconds{query}``, the mean answer of each);
- the operator process's RSS (VmRSS, max over the window) and peak (VmHWM);
- the detectors' folds in each minute of the window, by what each cost
  (``fleetwarden_operator_detector_folds_total{how}``: from the anchor, a kept state restored,
  nothing new, folded ahead), and those before it: what the warm-up's cycles do;
- the budgets whose figures wait past their turn in each minute of the window, the most at once
  and the longest wait (``fleetwarden_operator_figures_overdue_budgets`` and ``..._seconds``):
  how stale a busy fleet's status figures grow;
- fleet mode: the window's cycles one by one, from the line each writes to the operator's log:
  the second of the minute it started at, its time, what its data brought, and when in it the
  fleet-wide fetch ended (the evaluations before that went on with the last snapshot);
- the CPU each process of the run used in the window (from /proc: the operator, Prometheus, the
  control plane's, the benchmark itself), in cores, beside the whole machine's, and the
  operator's CPU seconds per cycle: whether a cycle waits for the operator's own work or for
  a core.

The operator's /metrics is read every ``READ_EVERY`` (5) seconds (RSS every second); the longest cycle is the largest
``..._last_cycle_seconds`` read, and bounded by the cycle histogram's buckets.

By default no sample is added during the window: the backfilled history ends when the run
starts (the agents' data goes stale after three scrape intervals, written once, then
unchanged). The minute still turns every 60 s: the first cycle after it folds one more (empty)
minute into every agent's detectors and figures, the others have nothing new. The cycle time is
also printed apart for the two (``fleetwarden_operator_cycle_by_data_seconds``).

``--live``: a live fleet. The agents go on spending through the run: the benchmark serves
their three counters on a /metrics page of its own (:class:`LiveAgents`), going on from where
the backfill ends at the same rate, and Prometheus scrapes it every 15 s as it would the SDK's
pages. Every agent then has a new minute each minute, and every window unsettled minutes
(those a late scrape may still change), as in a real cluster.

    python benchmarks/operator_scale.py [--budgets 10000] [--evaluation fleet|timers] [--live]
                                        [--interval 15] [--measure 60] [--census]
                                        [--kopf-start indexed|plain [--kopf-idle S] [--kopf-chunk N]]

``--kopf-start indexed|plain`` (with ``--kopf-idle``, ``--kopf-chunk``): kopf alone in place of
the operator (``benchmarks/kopf_start/handlers.py``), its copies of the budgets and Deployments in
kopf indexes or in its event handlers' own dict; it prints kopf's RSS once every object has been
handled and ``--measure`` seconds later (docs/operator.md, "kopf's start, measured alone").

``--census``: after the window, the operator's heap by type (``sys.getsizeof`` of every object
reachable from the collector's) and CPython's account of its small-object arenas
(``benchmarks/census/sitecustomize.py``, on the operator's ``PYTHONPATH`` only).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import http.server
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

from fleetwarden.adapters import kube, prometheus
from fleetwarden.core import series, spec, warmfold
from fleetwarden.devcluster import cluster as devcluster
from fleetwarden.devcluster import monitoring, pki, procs
from fleetwarden.handlers import fleet, heap, settings

ROOT = Path(__file__).resolve().parents[1]
CENSUS_HOOK = Path(__file__).resolve().parent / "census"  # its sitecustomize.py: --census
KOPF_START = Path(__file__).resolve().parent / "kopf_start" / "handlers.py"  # --kopf-start
NAMESPACES = 100
HISTORY_MINUTES = 90 + warmfold.ANCHOR_MINUTES  # what the operator fetches: the lookback and its anchor
STEP = 30  # seconds between backfilled samples (increase(x[1m]) needs two in a minute)
OPERATOR_NS, OPERATOR_SA = "fleetwarden-system", "fleetwarden-operator"
# the cycles by what their data brought (``fleetwarden_operator_cycle_by_data_seconds``), as printed
BY_DATA = {"first": "the first pass", "same_minute": "within the minute (nothing new)",
           "new_minute": "after the minute turned (one more minute folded)", "unknown": "without data"}
WORKERS = int(next(o.default for o in settings.OPTIONS if o.field == "workers"))  # the operator's default
READ_EVERY = 5.0  # seconds between two reads of the operator's /metrics (see measure)


class FixedFetcher:
    """A Prometheus answer fixed in advance: every agent spent a little, every minute. The lookback
    is 90 minutes, plus ``anchor_minutes`` for the detectors' anchored fold (core/warmfold.py), as
    the operator's fetcher reads it; a minute's bucket is built once and kept, as the incremental
    fetcher keeps complete minutes."""

    def __init__(self, agents: list[tuple[str, str]], now: float, anchor_minutes: int = 0, drift: float = 0.0) -> None:
        self.agents = agents
        self.now = now
        self.anchor_minutes = anchor_minutes
        self.drift = drift  # USD the hour's spend moves each fetch (a live window sliding past samples)
        self.fetches = 0
        self.history_end: int | None = None  # set: no agent has a minute from then on (a quiet fleet)
        self._kept: dict[tuple[str, str], series.MinuteRun] = {}  # as the fetcher keeps them: compact runs

    def fetch(self, now: float | None = None) -> prometheus.FleetSnapshot:
        self.fetches += 1
        end = series.minute_of(self.now)
        start = end - (90 + self.anchor_minutes) * 60
        last = end if self.history_end is None else max(start, min(end, self.history_end))
        minutes: dict[tuple[str, str], series.MinuteRun] = {}
        for ns, a in self.agents:
            held = self._kept.get((ns, a))
            run = held.between(start, last) if held is not None else series.MinuteRun(a, ns)
            first = run.minute_at(len(run) - 1) + 60 if run else start
            if first < last:
                run = run + series.MinuteRun.of(a, ns, [
                    series.AgentMinute(a, ns, m, inference_cost_usd=0.001, llm_calls=2, tasks_completed=1,
                                       tokens=800, model="gpt-4o-mini") for m in range(first, last, 60)])
            self._kept[(ns, a)] = minutes[(ns, a)] = run
        hour = 0.09 + self.drift * self.fetches
        spend = {(ns, a): {(w, c): hour if w is spec.Window.hour else 0.45 for w in spec.Window
                           for c in (False, True)} for ns, a in self.agents}
        return prometheus.FleetSnapshot(fetched_at=self.now, start=start, end=end, minutes=minutes, spend=spend,
                                        last_sample={k: self.now for k in self.agents}, stale_after=45.0,
                                        queries=prometheus.QUERIES_PER_CYCLE, anchor_minutes=self.anchor_minutes)


def create_all(k: kube.Kube, budgets: int, workers: int) -> None:
    """The namespaces, then one 0-replica agent Deployment and one AgentBudget per agent."""
    per_ns = budgets // NAMESPACES
    for n in range(NAMESPACES):
        body = {"metadata": {"name": f"scale-{n:03d}"}}
        try:
            k.core.create_namespace(cast(Any, body))  # the client takes plain dicts too
        except Exception as exc:  # noqa: BLE001 - already there on a rerun
            if "AlreadyExists" not in str(exc):
                raise

    def one(i: int) -> None:
        ns, name = f"scale-{i % NAMESPACES:03d}", f"agent-{i // NAMESPACES:05d}"
        k.apps.create_namespaced_deployment(ns, cast(Any, {
            "metadata": {"name": name, "labels": {"agent": name}},
            "spec": {"replicas": 0, "selector": {"matchLabels": {"agent": name}},
                     "template": {"metadata": {"labels": {"agent": name}},
                                  "spec": {"containers": [{"name": "agent", "image": "example.com/a:1",
                                                           "env": [{"name": "MODEL", "value": "gpt-4o-mini"}]}]}}}}))
        k.custom.create_namespaced_custom_object(spec.GROUP, spec.VERSION, ns, "agentbudgets", {
            "apiVersion": spec.API_VERSION, "kind": "AgentBudget", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": {"agent": name}},
                     "limits": [{"window": "hour", "amountUSD": 10}, {"window": "day", "amountUSD": 100}]}})

    started = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, range(per_ns * NAMESPACES)))
    print(f"created {per_ns * NAMESPACES} budgets + deployments in {time.perf_counter() - started:.1f}s", flush=True)


def agents_of(budgets: int) -> list[tuple[str, str]]:
    per_ns = budgets // NAMESPACES
    return [(f"scale-{i % NAMESPACES:03d}", f"agent-{i // NAMESPACES:05d}") for i in range(per_ns * NAMESPACES)]


FAMILIES = (  # the agents' SDK counters: name, extra labels, increment per minute
    ("fleetwarden_llm_cost_usd", 'model="gpt-4o-mini",step="answer",workflow="support"', 0.002),
    ("fleetwarden_llm_calls", 'model="gpt-4o-mini",status="ok",step="answer",workflow="support"', 2.0),
    ("fleetwarden_tasks", 'status="completed",workflow="support"', 1.0),
)


def backfill(directory: Path, agents: list[tuple[str, str]], end: int) -> Path:
    """The agents' history as OpenMetrics, turned into TSDB blocks by promtool; returns the TSDB dir."""
    start = end - HISTORY_MINUTES * 60
    steps = range(start, end + 1, STEP)
    per_minute = 60 // STEP
    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "history.om"
    with text.open("w") as out:
        for name, extra, inc in FAMILIES:
            out.write(f"# TYPE {name} counter\n")
            for ns, agent in agents:
                labels = f'{{agent="{agent}",namespace="{ns}",{extra}}}'
                out.writelines(f"{name}_total{labels} {inc * k / per_minute:.4f} {ts}\n" for k, ts in enumerate(steps))
        out.write("# EOF\n")
    tsdb = directory / "tsdb"
    tsdb.mkdir(parents=True, exist_ok=True)
    subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", "-q", str(text), str(tsdb)],
                   check=True, capture_output=True, text=True, timeout=1800)
    text.unlink()
    return tsdb


class LiveAgents:
    """``--live``: the agents' counters served on a /metrics page of the benchmark's own (in the
    Prometheus text format), each going on from the backfill's ``start`` at the backfill's rate
    (its value is the rate times the minutes since ``start``), read at each scrape. Scraped, a
    series gets the target's ``job`` and ``instance`` labels, which the backfilled ones lack: the
    operator's queries sum by agent, so both count as the agent's, one after the other."""

    def __init__(self, agents: list[tuple[str, str]], start: int) -> None:
        self.start = start
        self.rows = [(f"{name}_total", f'{{agent="{agent}",namespace="{ns}",{extra}}}', inc)
                     for name, extra, inc in FAMILIES for ns, agent in agents]
        self.scrapes = 0
        live = self

        class Page(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                body = live.page(time.time()).encode()
                live.scrapes += 1  # counted before the page is sent: a reader done with it sees the count
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
        threading.Thread(target=self.server.serve_forever, daemon=True, name="live-agents").start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def page(self, now: float) -> str:
        minutes = (now - self.start) / 60
        out, typed = [], set()
        for name, labels, inc in self.rows:
            if name not in typed:
                typed.add(name)
                out.append(f"# TYPE {name} counter\n")
            out.append(f"{name}{labels} {inc * minutes:.4f}\n")
        return "".join(out)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def kubectl(info: dict[str, Any], *args: str, kubeconfig: str | None = None) -> str:
    return subprocess.run([str(info["kubectl"]), f"--kubeconfig={kubeconfig or info['kubeconfig']}", *args],
                          check=True, capture_output=True, text=True, timeout=300).stdout


def operator_kubeconfig(info: dict[str, Any], work: Path) -> Path:
    """The operator's own ServiceAccount (manifests/), as the e2e harness runs it: a token kubeconfig."""
    for name in ("namespace.yaml", "serviceaccount.yaml", "rbac.yaml"):
        kubectl(info, "apply", "-f", str(ROOT / "manifests" / name))
    token = kubectl(info, "create", "token", OPERATOR_SA, "-n", OPERATOR_NS, "--duration=6h").strip()
    path = work / "operator.kubeconfig"
    path.write_text(pki.token_kubeconfig(Path(str(info["kubeconfig"])).read_text(), token,
                                         f"{OPERATOR_NS}-{OPERATOR_SA}", OPERATOR_NS))
    path.chmod(0o600)
    return path


def samples(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` (with these labels) in a Prometheus text exposition."""
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    total = 0.0
    for line in text.splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


FOLDS = ("anchor", "restored", "unchanged", "ahead")  # fleetwarden_operator_detector_folds_total{how}


def folds_of(text: str) -> tuple[float, ...]:
    """The operator's detector folds so far, by ``FOLDS``, in an exposition."""
    return tuple(samples(text, "fleetwarden_operator_detector_folds_total", how=how) for how in FOLDS)


def folds_line(before: tuple[float, ...], by_minute: dict[int, tuple[float, ...]]) -> str:
    """The detector folds of each minute of the window (``by_minute``: the counts last read in it)."""
    out, last = [], before
    for minute, now in sorted(by_minute.items()):
        out.append(f"{minute}: " + "/".join(f"{b - a:.0f}" for a, b in zip(last, now, strict=True)))
        last = now
    return (f"detector folds by minute of the window ({'/'.join(FOLDS)}): " + "; ".join(out)
            + " (before it, the first pass and one interval: " + "/".join(f"{x:.0f}" for x in before) + ")")


def by_query(text: str) -> dict[str, tuple[float, float]]:
    """query -> (count, seconds) of ``fleetwarden_operator_prometheus_query_seconds`` in an exposition."""
    out: dict[str, tuple[float, float]] = {}
    for m in re.finditer(r'^fleetwarden_operator_prometheus_query_seconds_(count|sum)\{query="([^"]*)"\} (\S+)$',
                         text, re.M):
        count, total = out.get(m.group(2), (0.0, 0.0))
        out[m.group(2)] = (float(m.group(3)), total) if m.group(1) == "count" else (count, float(m.group(3)))
    return out


def allocator_of(text: str) -> str | None:
    """The malloc the operator calls, from ``fleetwarden_operator_malloc_info`` (None: not on the page)."""
    found = re.search(r'^fleetwarden_operator_malloc_info\{allocator="([^"]*)"\}', text, re.M)
    return found.group(1) if found else None


def buckets(text: str, name: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts (upper bound -> count) in a Prometheus text exposition."""
    out: dict[float, float] = {}
    for m in re.finditer(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', text, re.M):
        out[float(m.group(1))] = float(m.group(2))
    return out


def longest_bound(before: dict[float, float], after: dict[float, float]) -> float | None:
    """The smallest bucket bound that holds every observation made between two readings (None: none made)."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    if total <= 0:
        return None
    return min(le for le, count in after.items() if count - before.get(le, 0.0) >= total)


def cpu_by_process(root: int) -> dict[int, tuple[str, float]]:
    """Every live process descended from ``root`` (itself included): pid -> (its program's name, the CPU
    seconds it has used, user and system). Read from /proc, the process tree by each one's parent."""
    tick = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv0 = (entry / "cmdline").read_bytes().split(b"\0", 1)[0].decode(errors="replace")
        except OSError:  # it ended meanwhile
            continue
        fields = stat.rpartition(")")[2].split()  # after "pid (comm)", which may hold spaces
        pid = int(entry.name)
        parent[pid] = int(fields[1])
        name = Path(argv0).name or stat[stat.find("(") + 1:stat.rfind(")")]
        used[pid] = (name, (int(fields[11]) + int(fields[12])) / tick)
    children: dict[int, list[int]] = {}
    for pid, ppid in parent.items():
        children.setdefault(ppid, []).append(pid)
    under: set[int] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        under.add(pid)
        todo.extend(children.get(pid, ()))
    return {pid: used[pid] for pid in under if pid in used}


def cpu_in_window(before: dict[int, tuple[str, float]], after: dict[int, tuple[str, float]], names: dict[int, str]
                  ) -> dict[str, float]:
    """CPU seconds used between two :func:`cpu_by_process` readings, by program (``names`` names some
    pids: the operator, the benchmark); a process started meanwhile counts all it used."""
    out: dict[str, float] = {}
    for pid, (name, seconds) in after.items():
        key = names.get(pid, name)
        # each process's own difference first: adding a large reading and then taking away its
        # earlier one rounds (0.31 + 20.15 - 20.15 is 0.30999...), and CPU spent would read as less
        out[key] = out.get(key, 0.0) + (seconds - (before[pid][1] if pid in before else 0.0))
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process: /proc/stat)."""
    ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait


def reader_of(pid: int) -> int | None:
    """The pid of the operator's Prometheus reader process (adapters/reader.py), if it runs one."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:  # it ended meanwhile
            continue
        if ppid == pid and b"fleetwarden.adapters.reader" in cmdline:
            return int(entry.name)
    return None


def memory(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    values = {m.group(1): float(m.group(2)) / 1024 for m in re.finditer(r"^(VmRSS|VmHWM):\s+(\d+) kB", status, re.M)}
    return values["VmRSS"], values["VmHWM"]


class Watch:
    """What the benchmark reads from outside: the operator's /metrics and the API server's."""

    def __init__(self, info: dict[str, Any], proc: subprocess.Popen[bytes], port: int) -> None:
        self.info, self.proc, self.port = info, proc, port

    def operator(self) -> str:
        if self.proc.poll() is not None:
            raise SystemExit(f"the operator exited {self.proc.returncode} (see its log)")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=30) as resp:
            return str(resp.read().decode())

    def reading(self) -> dict[str, Any]:
        text = self.operator()
        api = kubectl(self.info, "get", "--raw", "/metrics")
        return {
            "evaluations": samples(text, "fleetwarden_evaluation_seconds_count"),
            "queries": samples(text, "fleetwarden_operator_prometheus_queries_total"),
            "fetches": samples(text, "fleetwarden_operator_prometheus_fetches_total"),
            "fetch_seconds": samples(text, "fleetwarden_operator_prometheus_fetch_seconds_sum"),
            "fetches_timed": samples(text, "fleetwarden_operator_prometheus_fetch_seconds_count"),
            "by_query": by_query(text),
            "cycles": samples(text, "fleetwarden_operator_cycle_seconds_count"),
            "cycle_seconds": samples(text, "fleetwarden_operator_cycle_seconds_sum"),
            "oldest": samples(text, "fleetwarden_operator_oldest_evaluation_seconds"),
            "cycle_buckets": buckets(text, "fleetwarden_operator_cycle_seconds"),
            "by_data": {data: (samples(text, "fleetwarden_operator_cycle_by_data_seconds_count", data=data),
                               samples(text, "fleetwarden_operator_cycle_by_data_seconds_sum", data=data))
                        for data in BY_DATA},
            "gc_seconds": samples(text, "fleetwarden_operator_gc_seconds_total"),
            "gc_full_seconds": samples(text, "fleetwarden_operator_gc_seconds_total", generation="2"),
            "trims": samples(text, "fleetwarden_operator_malloc_trims_total"),
            "trim_seconds": samples(text, "fleetwarden_operator_malloc_trim_seconds_total"),
            "gc_full_runs": samples(text, "fleetwarden_operator_gc_collections_total", generation="2"),
            "allocator": allocator_of(text),
            "malloc": {part: samples(text, "fleetwarden_operator_malloc_bytes", part=part)
                       for part in ("in_use", "free", "mmapped")} if "fleetwarden_operator_malloc_bytes{" in text else None,
            "jemalloc": {**{part: samples(text, "fleetwarden_operator_jemalloc_bytes", part=part)
                            for part in heap.JEMALLOC_PARTS},
                         "arenas": samples(text, "fleetwarden_operator_jemalloc_arenas")}
            if "fleetwarden_operator_jemalloc_bytes{" in text else None,
            "status_patches": samples(api, "apiserver_request_total", verb="PATCH", resource="agentbudgets",
                                      subresource="status"),
            "patches": samples(api, "apiserver_request_total", verb="PATCH", resource="agentbudgets",
                               subresource=""),
            "at": time.monotonic(),
        }


def machine() -> str:
    """The machine line every report ends with: the cores, and the load while it ran."""
    return f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def start_operator(info: dict[str, Any], work: Path, prom_url: str, args: argparse.Namespace
                   ) -> tuple[subprocess.Popen[bytes], int]:
    env = dict(os.environ, KUBECONFIG=str(operator_kubeconfig(info, work)), PYTHONUNBUFFERED="1",
               FLEETWARDEN_EVALUATION=args.evaluation, FLEETWARDEN_WORKERS=str(args.workers))
    if args.pace is not None:
        env["FLEETWARDEN_PACE"] = str(args.pace)
    if args.reader is not None:
        env["FLEETWARDEN_PROMETHEUS_READER"] = args.reader
    if args.census:  # the operator alone gets the census hook (benchmarks/census/sitecustomize.py)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(CENSUS_HOOK), env.get("PYTHONPATH", "")) if p)
        env["FLEETWARDEN_BENCH_CENSUS"] = str(work / "census")
    port = procs.free_port()
    argv = [sys.executable, "-m", "fleetwarden", "operator", "--all-namespaces", "--interval", str(args.interval),
            "--prometheus-url", prom_url, "--metrics-port", str(port), "--leader-elect",
            "--lease-name", "fleetwarden-scale", "--lease-namespace", OPERATOR_NS]
    log = (work / "operator.log").open("w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT), port


def start_kopf(info: dict[str, Any], work: Path, args: argparse.Namespace) -> subprocess.Popen[bytes]:
    """kopf alone (``--kopf-start``): ``benchmarks/kopf_start/handlers.py`` in place of the operator."""
    env = dict(os.environ, KUBECONFIG=str(operator_kubeconfig(info, work)), PYTHONUNBUFFERED="1",
               FLEETWARDEN_BENCH_KOPF_INDEXES="1" if args.kopf_start == "indexed" else "0",
               FLEETWARDEN_BENCH_KOPF_COUNTS=str(work / "kopf-counts"))
    if args.kopf_idle is not None:
        env["FLEETWARDEN_BENCH_KOPF_IDLE"] = str(args.kopf_idle)
    if args.kopf_chunk is not None:
        env["FLEETWARDEN_BENCH_KOPF_CHUNK"] = str(args.kopf_chunk)
    argv = [sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces", "--quiet", str(KOPF_START)]
    log = (work / "kopf.log").open("w")
    return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def measure_kopf_start(proc: subprocess.Popen[bytes], n: int, args: argparse.Namespace, work: Path) -> None:
    """RSS of kopf alone every 2 s: until every budget and Deployment has been handled once, then
    ``--measure`` seconds more."""
    started, counts = time.monotonic(), work / "kopf-counts"
    rss_max, done_at, last = 0.0, None, (0, 0)
    while done_at is None or time.monotonic() < done_at + args.measure:
        if proc.poll() is not None:
            raise SystemExit(f"kopf exited with {proc.returncode} (see {work / 'kopf.log'})")
        if time.monotonic() > started + args.first_timeout:
            raise SystemExit(f"timed out after {args.first_timeout:.0f}s: {last[0]} budgets and {last[1]} "
                             f"Deployments of {n} handled")
        rss, _ = memory(proc.pid)
        rss_max = max(rss_max, rss)
        if counts.exists():
            fields = counts.read_text().split()
            if len(fields) == 2:
                last = (int(fields[0]), int(fields[1]))
        if done_at is None and last[0] >= n and last[1] >= n:
            done_at = time.monotonic()
        time.sleep(2.0)
    rss, hwm = memory(proc.pid)
    assert done_at is not None
    print(f"kopf alone ({'with' if args.kopf_start == 'indexed' else 'without'} indexes; idle_timeout "
          f"{args.kopf_idle if args.kopf_idle is not None else 'default'}, listing chunks "
          f"{args.kopf_chunk if args.kopf_chunk is not None else 'none'}): {n} budgets and {n} Deployments "
          f"handled {done_at - started:.0f}s after its start")
    print(f"kopf RSS: {rss_max:.0f} MiB max, {rss:.0f} MiB {args.measure:.0f}s after all were handled, "
          f"{hwm:.0f} MiB peak (VmHWM)")
    print(machine())


def wait(what: str, check: Any, timeout: float, every: float = 1.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(every)


def measure(watch: Watch, n: int, args: argparse.Namespace, work: Path) -> None:
    started = time.monotonic()

    first: list[float] = []

    def all_evaluated() -> bool:
        try:
            evaluations = samples(watch.operator(), "fleetwarden_evaluation_seconds_count")
        except OSError:  # its /metrics is not up yet (leader election, kopf's start)
            return False
        if evaluations and not first:
            first.append(time.monotonic() - started)
            print(f"first evaluation {first[0]:.0f}s after the operator started (its indexes complete)", flush=True)
        return evaluations >= n

    wait(f"a first evaluation of all {n} budgets", all_evaluated, args.first_timeout, every=READ_EVERY)
    print(f"first pass over {n} budgets done {time.monotonic() - started:.0f}s after the operator started",
          flush=True)
    time.sleep(args.interval)  # warm-up: one more interval
    before = watch.reading()
    folds_before = folds_of(watch.operator())
    cpu_before, busy_before = cpu_by_process(os.getpid()), machine_busy()
    rss_max, oldest_max, last_max = 0.0, 0.0, 0.0
    oldest_after: float | None = None  # over the readings once two cycles ended in the window
    oldest_by_minute: dict[int, float] = {}  # minute of the window -> the largest oldest evaluation read in it
    folds_by_minute: dict[int, tuple[float, ...]] = {}  # minute of the window -> the detector folds last read in it
    held_by_minute: dict[int, tuple[float, float]] = {}  # minute -> the most budgets held past their turn, the longest wait
    scraped = before["at"]
    # The operator's /metrics is read every READ_EVERY seconds: read every second, rendering its per-budget
    # series (7 a budget) was a sixth of the operator's CPU at 2,000 budgets (py-spy) before they
    # were kept rendered. RSS is read every second. The longest cycle is also bounded by the
    # cycle histogram, which misses none.
    reader = reader_of(watch.proc.pid)
    reader_max, both_max = 0.0, 0.0
    while time.monotonic() - before["at"] < args.measure:
        rss, _ = memory(watch.proc.pid)
        rss_max = max(rss_max, rss)
        if reader is not None:  # the container holds both: their sum is what the memory goal counts
            try:
                theirs, _ = memory(reader)
            except OSError:  # it failed and the operator started another
                reader, theirs = reader_of(watch.proc.pid), 0.0
            reader_max, both_max = max(reader_max, theirs), max(both_max, rss + theirs)
        if time.monotonic() - scraped >= READ_EVERY:
            scraped = time.monotonic()
            text = watch.operator()
            oldest = samples(text, "fleetwarden_operator_oldest_evaluation_seconds")
            oldest_max = max(oldest_max, oldest)
            minute = int((scraped - before["at"]) // 60)
            oldest_by_minute[minute] = max(oldest_by_minute.get(minute, 0.0), oldest)
            folds_by_minute[minute] = folds_of(text)
            held = (samples(text, "fleetwarden_operator_figures_overdue_budgets"),
                    samples(text, "fleetwarden_operator_figures_overdue_seconds"))
            kept = held_by_minute.get(minute, (0.0, 0.0))
            held_by_minute[minute] = (max(kept[0], held[0]), max(kept[1], held[1]))
            ended = samples(text, "fleetwarden_operator_cycle_seconds_count") - before["cycles"]
            if ended > 1:
                oldest_after = max(oldest_after or 0.0, oldest)
            if ended > 0:
                # (the gauge says the last cycle that ended: one of the window's only once one has)
                last_max = max(last_max, samples(text, "fleetwarden_operator_last_cycle_seconds"))
        time.sleep(1)
    after = watch.reading()
    names = {watch.proc.pid: "operator", os.getpid(): "benchmark"}
    if reader is not None:
        names[reader] = "reader"
    cpu = cpu_in_window(cpu_before, cpu_by_process(os.getpid()), names)
    busy = machine_busy() - busy_before
    _, hwm = memory(watch.proc.pid)
    report(before, after, n, args, rss_max, hwm, (oldest_max, oldest_after), last_max, cpu, busy)
    if reader is not None:
        print(f"reader RSS: {reader_max:.0f} MiB max in the window; the operator and its reader together "
              f"{both_max:.0f} MiB max")
    else:
        print("reader: none (the operator decodes Prometheus' answers itself)")
    print("oldest evaluation by minute of the window: " + ", ".join(
        f"{oldest:.1f}s" for _, oldest in sorted(oldest_by_minute.items())))
    print(folds_line(folds_before, folds_by_minute))
    print("figures held past their turn by minute of the window, the most budgets / the longest wait "
          "(..._figures_overdue_budgets / _seconds): " + ", ".join(
              f"{budgets:.0f} / {seconds:.1f}s" for _, (budgets, seconds) in sorted(held_by_minute.items())))
    if args.evaluation == "fleet":
        print_cycles(work / "operator.log", int(before["cycles"]), int(after["cycles"]))
    if args.census:
        census(work)


def print_cycles(log: Path, first: int, last: int) -> None:
    """The window's cycles one by one, from the operator's log (``fleet.cycle_line``): the second of the
    minute each started at, its time, what its data brought and when its fetch ended in it."""
    read = [m for m in map(fleet.CYCLE_LINE.search, log.read_text(errors="replace").splitlines()) if m]
    cycles = [m for m in read if first < int(m["number"]) <= last]
    if not cycles:
        print(f"the window's cycles: none of {first + 1}-{last} in {log}")
        return
    print("the window's cycles (cycle: second of the minute it started at, seconds, data, fetch ended in it"
          + (", the next started early by" if any(m["early"] for m in cycles) else "") + "):")
    print("  " + "; ".join(f"{m['number']}: :{float(m['second']):04.1f} {m['seconds']}s {m['data']}, "
                           + (f"fetch {m['fetch']}s" if m["fetch"] else f"fetched {m['ahead']}s before"
                              if m["ahead"] else "no fetch")
                           + (f", {m['early']}s early" if m["early"] else "") for m in cycles))
    waits = [m for m in map(fleet.WAITS_LINE.search, log.read_text(errors="replace").splitlines())
             if m and first < int(m["number"]) <= last and m["spacing"]]
    if waits:
        print("the longest wait between two evaluations of one budget, by cycle (cycle: the wait = how long after the "
              "cycle before this one started + how much later into this one than into that one the budget's "
              "evaluation ended):")
        print("  " + "; ".join(f"{m['number']}: {m['longest']}s = {m['spacing']} + "
                               f"{float(m['now']) - float(m['before']):.1f}" for m in waits))


def census(work: Path) -> None:
    """After the window: the operator's heap by type and pymalloc's account of its arenas (the walk
    holds the operator for a minute or more, so it comes after everything measured)."""
    (work / "census.go").touch()
    wait("the operator's heap census", (work / "census.txt").exists, 900, every=2.0)
    print("heap census after the window (benchmarks/census/sitecustomize.py):")
    print((work / "census.txt").read_text(), end="")


def oldest_line(oldest_max: float, oldest_after: float | None, interval: float) -> str:
    """The oldest evaluation seen: over the window, and once two cycles ended in it (None: fewer did)."""
    after = (f"{oldest_after:.1f}s once two cycles had ended in it" if oldest_after is not None
             else "fewer than two cycles ended in it")
    return (f"oldest evaluation seen: {oldest_max:.1f}s in the window, {after} "
            f"(goal: every budget within the {interval:g}s interval)")


def report(before: dict[str, Any], after: dict[str, Any], n: int, args: argparse.Namespace,
           rss_max: float, hwm: float, oldest: tuple[float, float | None], last_max: float, cpu: dict[str, float],
           busy: float) -> None:
    bound = longest_bound(before.pop("cycle_buckets"), after.pop("cycle_buckets"))
    before.pop("malloc")
    by_data = {data: (after["by_data"][data][0] - count, after["by_data"][data][1] - total)
               for data, (count, total) in before.pop("by_data").items()}
    after.pop("by_data")
    queries_before = before.pop("by_query")
    by_query_seconds = {q: (count - queries_before.get(q, (0.0, 0.0))[0], total - queries_before.get(q, (0.0, 0.0))[1])
                        for q, (count, total) in after.pop("by_query").items()}
    held = after.pop("malloc")  # a gauge: what malloc holds at the window's end
    before.pop("jemalloc")
    jemalloc = after.pop("jemalloc")  # (the same, jemalloc's account)
    before.pop("allocator")
    allocator = after.pop("allocator") or "unknown (not on the operator's page)"
    d = {k: after[k] - before[k] for k in before}
    evaluated = d["evaluations"]
    if args.evaluation == "fleet" and d["cycles"] > 0:
        cycles = d["cycles"]
        cycle = (f"{d['cycle_seconds'] / cycles:.1f}s mean, {last_max:.1f}s the longest seen (read every {READ_EVERY:g} s), "
                 f"every one <= {bound if bound is not None else math.nan:g}s (histogram) ({cycles:.0f} cycles of {n} budgets in {d['at']:.0f}s)")
    else:
        cycles = evaluated / n if n else 0.0
        rate = evaluated / d["at"]
        cycle = (f"{n / rate:.1f}s to evaluate every budget once at {rate:.0f} evaluations/s "
                 f"({evaluated:.0f} evaluations in {d['at']:.0f}s)") if rate else "no evaluation in the window"

    def per(x: float) -> str:
        return f"{x / cycles:.1f}" if cycles else "n/a"

    print(f"mode: {args.evaluation}, {n} budgets, interval {args.interval:g}s, workers {args.workers}")
    print(f"cycle time: {cycle}")
    if args.evaluation == "fleet":
        print("cycle time by what the data brought: " + "; ".join(
            f"{BY_DATA[data]} {total / count:.1f}s mean ({count:.0f})" if count else f"{BY_DATA[data]}: none"
            for data, (count, total) in by_data.items() if data != "first"))
    print(oldest_line(*oldest, args.interval))
    per_fetch = f"{d['queries'] / d['fetches']:.0f}" if d["fetches"] else "n/a"
    print(f"Prometheus queries per cycle: {per(d['queries'])} ({per_fetch} a fetch, {d['fetches']:.0f} fetches "
          f"in {d['at']:.0f}s)")
    print("Prometheus fetch time: " + (f"{d['fetch_seconds'] / d['fetches_timed']:.1f}s mean, {d['fetch_seconds']:.1f}s "
                                       f"in all ({d['fetches_timed']:.0f} fetches)" if d["fetches_timed"] else "no fetch"))
    slowest = sorted(((total / count, q) for q, (count, total) in by_query_seconds.items() if count), reverse=True)
    if slowest:
        print("slowest queries (mean answer): " + ", ".join(f"{q} {mean:.2f}s" for mean, q in slowest[:6]) +
              f"; all {len(slowest)}: {sum(mean for mean, _ in slowest):.1f}s")
    print(f"PATCHes per cycle: agentbudgets/status {per(d['status_patches'])}, agentbudgets {per(d['patches'])}")
    print(f"operator RSS: {rss_max:.0f} MiB max in the window, {hwm:.0f} MiB peak (VmHWM)")
    mib = 1024 * 1024
    if allocator == "glibc":
        print("of it glibc's malloc at the window's end: " + (
            f"{held['in_use'] / mib:.0f} MiB in use, {held['free'] / mib:.0f} MiB free but held, "
            f"{held['mmapped'] / mib:.0f} MiB in large blocks of their own (the rest: Python's small-object "
            "arenas, the stacks, the code)" if held is not None else "unknown (a glibc older than 2.33)"))
        print(f"malloc_trim: {d['trims']:.0f} runs in the window, {d['trim_seconds']:.2f}s in all")
    elif allocator == "jemalloc":
        print("of it jemalloc at the window's end: " + (
            f"{jemalloc['arenas']:.0f} arenas (MALLOC_CONF); "
            f"{jemalloc['allocated'] / mib:.0f} MiB allocated, in {jemalloc['active'] / mib:.0f} MiB of active pages; "
            f"{jemalloc['resident'] / mib:.0f} MiB resident (its metadata {jemalloc['metadata'] / mib:.0f} MiB; "
            f"the rest of RSS: the stacks, the code); {jemalloc['retained'] / mib:.0f} MiB retained (given back, "
            "still mapped)" if jemalloc is not None else "unknown (not on the operator's page)"))
        print(f"jemalloc's purge of every arena: {d['trims']:.0f} runs in the window, {d['trim_seconds']:.2f}s in all")
    else:
        print(f"malloc: {allocator}; its account is not read (glibc's and jemalloc's only), and nothing is trimmed")
    window = d["at"]
    print(f"CPU in the window, cores used on average ({os.cpu_count()} here): " + ", ".join(
        f"{name} {seconds / window:.2f}" for name, seconds in cpu.items() if seconds / window >= 0.005)
        + f"; all of these {sum(cpu.values()) / window:.2f}, the whole machine {busy / window:.2f}")
    if cycles:
        print(f"operator CPU per cycle: {cpu.get('operator', 0.0) / cycles:.1f}s"
              + (f", its reader's {cpu['reader'] / cycles:.1f}s" if "reader" in cpu else ""))
    print(f"garbage collector: {d['gc_seconds']:.1f}s of the {d['at']:.0f}s window, {d['gc_full_seconds']:.1f}s of it "
          f"in {d['gc_full_runs']:.0f} full collections")
    print(machine())


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--budgets", type=int, default=10_000)
    parser.add_argument("--evaluation", choices=("fleet", "timers"), default="fleet",
                        help="the operator's FLEETWARDEN_EVALUATION (default fleet)")
    parser.add_argument("--interval", type=float, default=15.0)
    parser.add_argument("--measure", type=float, default=60.0, help="seconds watched after the warm-up")
    parser.add_argument("--live", action="store_true",
                        help="a live fleet: the agents go on spending through the run (a /metrics page Prometheus scrapes)")
    parser.add_argument("--workers", type=int, default=WORKERS,
                        help=f"FLEETWARDEN_WORKERS, and the creating threads (default {WORKERS}: the operator's)")
    parser.add_argument("--reader", choices=("process", "thread"), default=None,
                        help="the operator's FLEETWARDEN_PROMETHEUS_READER (default: its own, thread)")
    parser.add_argument("--pace", type=float, default=None,
                        help="the operator's FLEETWARDEN_PACE (default: the operator's own; 0: each cycle all at once)")
    parser.add_argument("--first-timeout", type=float, default=3600.0,
                        help="seconds allowed for the indexes and the first pass over every budget")
    parser.add_argument("--keep", type=Path, default=None, help="keep the work directory (logs) here")
    parser.add_argument("--census", action="store_true",
                        help="after the window, walk the operator's heap: its objects by type, pymalloc's arenas")
    parser.add_argument("--kopf-start", choices=("indexed", "plain"), default=None,
                        help="run kopf alone in place of the operator (benchmarks/kopf_start/handlers.py), its "
                             "copies of the objects in kopf indexes or in plain event handlers, and print its RSS")
    parser.add_argument("--kopf-idle", type=float, default=None, help="--kopf-start: kopf's queueing.idle_timeout")
    parser.add_argument("--kopf-chunk", type=int, default=None, help="--kopf-start: kopf's watching.chunk_size")
    args = parser.parse_args()
    if args.census and args.kopf_start:
        parser.error("--census walks the operator's heap: not with --kopf-start")
    if not args.kopf_start and (args.kopf_idle is not None or args.kopf_chunk is not None):
        parser.error("--kopf-idle and --kopf-chunk set kopf alone: only with --kopf-start")
    work = args.keep or Path(tempfile.mkdtemp(prefix="fleetwarden-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    local = devcluster.LocalCluster(work / "cluster", tie_to_parent=True)
    prom: monitoring.Prometheus | None = None
    proc: subprocess.Popen[bytes] | None = None
    live: LiveAgents | None = None
    try:
        t = time.monotonic()
        agents = agents_of(args.budgets)
        end = int(time.time() // 60) * 60
        backfill(work / "prometheus", agents, end)
        print(f"backfilled {len(agents)} agents x 3 families x {HISTORY_MINUTES} min in {time.monotonic() - t:.0f}s",
              flush=True)
        prom = monitoring.Prometheus(work / "prometheus", scrape_interval=15, tie_to_parent=True).start(timeout=300)
        if args.live:
            live = LiveAgents(agents, end - HISTORY_MINUTES * 60)
            prom.add_target("agents", live.address)
            print(f"live: {len(live.rows)} series served at {live.address}, scraped every 15 s", flush=True)
        info = cast(dict[str, Any], local.up(timeout=300))
        kubectl(info, "apply", "-f", str(ROOT / "crds"))
        kubectl(info, "wait", "--for=condition=Established", "--timeout=60s", "crd/agentbudgets.fleetwarden.dev")
        create_all(kube.Kube(kube.load_config(str(info["kubeconfig"]))), args.budgets, args.workers)
        if args.kopf_start:
            proc = start_kopf(info, work, args)
            measure_kopf_start(proc, len(agents), args, work)
            return 0
        proc, port = start_operator(info, work, prom.url, args)
        measure(Watch(info, proc, port), len(agents), args, work)
        return 0
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if prom is not None:
            prom.stop()
        if live is not None:
            print(f"live: the agents' page scraped {live.scrapes} times", flush=True)
            live.stop()
        local.down()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
