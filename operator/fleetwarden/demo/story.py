"""The demo's story, told on the real parts while it happens.

1. A control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK), Prometheus
   (5 s scrapes, the repo's rules) and Alertmanager on 127.0.0.1.
2. The CRDs and the three example fleets, applied with kubectl; KWOK runs their pods.
3. One simulator per example namespace (agents named after the Deployments, following
   their replicas and MODEL) as Prometheus targets, and the operator.
4. (a) baseline spend in ``kubectl get agentbudgets -A``; (b) a model update on
   support-triage, detected as ``model_update_spike`` and rolled back by the operator;
   (c) a runaway loop in lead-gen-agent, stopped by the kill switch; (d) a person
   acknowledges the incident and the exact replicas come back.

Every wait polls what a person could look at (kubectl, PromQL) with a timeout; on timeout
it prints what it waited for, the operator's last log lines and the budget's status, and
the demo ends with exit code 2. ``--summary FILE`` writes what happened as JSON (``ok``,
then one object per part of the story), also when it fails.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO, TypeVar

from fleetwarden.core import detectors, metricnames, pricing
from fleetwarden.demo import stack as stack_mod
from fleetwarden.devcluster import failures

T = TypeVar("T")

SUPPORT_NS, SUPPORT_BUDGET, TRIAGE = "support", "support-swarm", "support-triage"
LEAD_NS, LEAD_BUDGET, LEAD_AGENT = "lead-generation", "lead-generation", "lead-gen-agent"
EXAMPLES = ("support-swarm", "lead-generation", "procurement")
# namespace -> (simulator profile, agents named after the example Deployments)
SIMULATORS = {
    SUPPORT_NS: ("support", (TRIAGE, "support-resolver")),
    LEAD_NS: ("lead-generation", (LEAD_AGENT,)),
    "procurement": ("procurement", ("procurement-agent",)),
}
BASE_MODEL, SPIKE_MODEL = "gpt-4o-mini", "gpt-4.1-mini"
SCENARIO_ANNOTATION = "fleetwarden.dev/simulate-scenario"  # fleetwarden.simulate.follow.SCENARIO_ANNOTATION
# Triage tasks Prometheus must hold before the model update (the detector needs a baseline of
# at least MIN_BASELINE_TASKS (8) ended tasks over MIN_BASELINE_MINUTES (5) active minutes within the
# hour before the change; more makes its sequential test decide sooner).
BASELINE_TASKS = 40
# ... and the whole minutes with triage tasks it must hold (the detector's MIN_BASELINE_MINUTES,
# and one for the first, partial minute): on a fast machine 40 tasks take under two minutes.
BASELINE_MINUTES = detectors.MIN_BASELINE_MINUTES + 1
NORMAL_AGAIN = 1.3  # cost per task within this multiple of the baseline counts as normal
PROGRESS_EVERY = 15.0


@dataclasses.dataclass(frozen=True)
class Options:
    state_dir: Path
    keep: bool = False
    speed: float = 10.0
    interval: float = 5.0
    scrape_interval: float = 5.0
    summary: Path | None = None
    start_timeout: float = 300.0


class Story:
    def __init__(self, opts: Options, out: TextIO = sys.stdout) -> None:
        self.opts = opts
        self.out = out
        self.began = time.monotonic()
        self.root = stack_mod.repo_root()
        self.stack = stack_mod.Stack(opts.state_dir, keep=opts.keep, scrape_interval=opts.scrape_interval,
                                     log=self.say, cwd=self.root)
        self.summary: dict[str, Any] = {"ok": False, "stateDir": str(opts.state_dir), "speed": opts.speed,
                                        "steps": []}
        self._step: str | None = None
        self._step_began = 0.0

    # ---------------------------------------------------------------- printing

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def clock(self) -> str:
        seconds = int(time.monotonic() - self.began)
        return f"{seconds // 60}:{seconds % 60:02d}"

    def section(self, key: str, title: str) -> None:
        self._end_step()
        self._step, self._step_began = key, time.monotonic()
        self.say()
        self.say(f"=== [{self.clock()}] {title}")

    def _end_step(self) -> None:
        if self._step is not None:
            self.summary["steps"].append({"name": self._step,
                                          "seconds": round(time.monotonic() - self._step_began, 1)})
            self._step = None

    def show(self, *args: str, check: bool = True) -> str:
        """Run and print ``kubectl ARGS`` as a person would type it (KUBECONFIG set)."""
        self.say(f"$ kubectl {' '.join(shlex.quote(a) for a in args)}")
        result = self.stack.kubectl(*args, check=check)
        text = (result.stdout + result.stderr).rstrip()
        for line in text.splitlines():
            self.say(f"  {line}")
        return result.stdout

    def show_fleetwarden(self, *args: str) -> str | None:
        self.say(f"$ fleetwarden {' '.join(shlex.quote(a) for a in args)}")
        result = self.stack.fleetwarden(*args)
        for line in (result.stdout + result.stderr).rstrip().splitlines():
            self.say(f"  {line}")
        return result.stdout if result.returncode == 0 else None

    # ---------------------------------------------------------------- waiting

    def wait(self, what: str, probe: Callable[[], T | None], timeout: float, *,
             progress: Callable[[], str | None] | None = None, budget: tuple[str, str] | None = None,
             interval: float = 1.0) -> T:
        """Poll ``probe`` until it returns something truthy; on timeout explain and stop the demo."""
        deadline = time.monotonic() + timeout
        next_note = time.monotonic() + PROGRESS_EVERY
        while True:
            try:
                value = probe()
            except stack_mod.DemoError:
                value = None
            if value:
                return value
            if not self.stack.running("operator") and "operator" in self.stack.own:
                self._explain(what, budget, "the operator exited")
            if time.monotonic() >= deadline:
                self._explain(what, budget, f"timed out after {timeout:.0f}s")
            if progress is not None and time.monotonic() >= next_note:
                note = progress()
                if note:
                    self.say(f"  [{self.clock()}] {note}")
                next_note = time.monotonic() + PROGRESS_EVERY
            time.sleep(interval)

    def _explain(self, what: str, budget: tuple[str, str] | None, why: str) -> None:
        self.say()
        self.say(f"!!! {why} waiting for: {what}")
        self.say("--- the operator's last log lines:")
        for line in self.stack.tail("operator").splitlines():
            self.say(f"  {line}")
        if budget is not None:
            namespace, name = budget
            self.say(f"--- status of agentbudget {namespace}/{name}:")
            try:
                status = self.stack.get_json("agentbudget", name, "-n", namespace).get("status", {})
                for line in json.dumps(status, indent=2).splitlines():
                    self.say(f"  {line}")
            except stack_mod.DemoError as exc:
                self.say(f"  (cannot read it: {exc})")
        self.say(f"--- logs: {self.opts.state_dir / 'logs'}")
        raise stack_mod.DemoError(f"{why} waiting for {what}")

    # ---------------------------------------------------------------- reading

    def budget(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.stack.get_json("agentbudget", name, "-n", namespace))

    def status(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.budget(namespace, name).get("status") or {})

    def deployment(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.stack.get_json("deployment", name, "-n", namespace))

    def model_of(self, namespace: str, name: str) -> str | None:
        for container in self.deployment(namespace, name)["spec"]["template"]["spec"].get("containers", []):
            for env in container.get("env") or []:
                if env.get("name") == "MODEL":
                    return str(env.get("value"))
        return None

    def running_pods(self, namespace: str, app: str) -> int:
        pods = self.stack.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/name={app}")["items"]
        return sum(1 for p in pods if (p.get("status") or {}).get("phase") == "Running"
                   and not p["metadata"].get("deletionTimestamp"))

    def pods(self, namespace: str, app: str) -> int:
        return len(self.stack.get_json("pods", "-n", namespace, "-l", f"app.kubernetes.io/name={app}")["items"])

    def cost_per_task(self, namespace: str, agent: str, window: str) -> float | None:
        sel = f'namespace="{namespace}",agent="{agent}"'
        return self.stack.scalar(f"sum(rate({metricnames.LLM_COST_USD}{{{sel}}}[{window}])) / "
                                 f"sum(rate({metricnames.TASKS}{{{sel}}}[{window}]))")

    def tokens_per_minute(self, namespace: str, agent: str) -> float | None:
        sel = f'namespace="{namespace}",agent="{agent}"'
        return self.stack.scalar("60 * (" + " + ".join(
            f"(sum(rate({metric}{{{sel}}}[30s])) or vector(0))" for metric in metricnames.LLM_TOKENS) + ")")

    def hour_spend(self, namespace: str) -> float | None:
        return self.stack.scalar(" + ".join(
            f'(sum(increase({metric}{{namespace="{namespace}"}}[1h])) or vector(0))'
            for metric in (metricnames.LLM_COST_USD, metricnames.TOOL_COST_USD)))

    # ---------------------------------------------------------------- the story

    def run(self) -> dict[str, Any]:
        try:
            self.start_everything()
            self.apply_examples()
            self.start_agents_and_operator()
            self.baseline()
            self.model_update()
            self.runaway_loop()
            self.resume()
            self.epilogue()
            self._end_step()
            self.summary["ok"] = True
            return self.summary
        except BaseException as exc:
            failed = self._step
            self._end_step()
            self.summary["failedStep"] = failed
            self.summary["error"] = str(exc) or type(exc).__name__
            raise
        finally:
            self.summary["seconds"] = round(time.monotonic() - self.began, 1)
            self.write_summary()

    def write_summary(self) -> None:
        if self.opts.summary is not None:
            self.opts.summary.parent.mkdir(parents=True, exist_ok=True)
            self.opts.summary.write_text(json.dumps(self.summary, indent=2) + "\n")

    def start_everything(self) -> None:
        self.section("start", "1. A Kubernetes control plane, Prometheus and Alertmanager on 127.0.0.1")
        self.stack.check_state_dir()
        try:
            self.stack.start_control_plane(timeout=self.opts.start_timeout)
            rules = self.root / stack_mod.RULES
            self.stack.start_monitoring(rules if rules.exists() else None)
        except failures.ComponentError as exc:
            raise stack_mod.DemoError(str(exc)) from exc
        self.say(f"  API server   {self.stack.info['server']}  (etcd, kube-apiserver, kube-controller-manager, "
                 "kube-scheduler, KWOK)")
        self.say(f"  Prometheus   {self.stack.prom.url}  (scrape every {self.opts.scrape_interval:g}s, "
                 f"rules from {stack_mod.RULES})")
        assert self.stack.alertmanager is not None
        self.say(f"  Alertmanager {self.stack.alertmanager.url}")
        self.say(f"  kubectl      {self.stack.kubectl_path}")

    def apply_examples(self) -> None:
        self.section("apply", "2. The CRDs and three example fleets, applied as a person would")
        self.show("apply", "-f", "crds/")
        crds = [f"crd/{p}.fleetwarden.dev" for p in ("agentbudgets", "costpolicies", "costapprovals")]
        self.stack.kubectl("wait", "--for=condition=Established", "--timeout=60s", *crds, timeout=90)
        for example in EXAMPLES:
            self.show("apply", "-f", f"examples/{example}/")
        self.scale_rate_limits()

        def all_running() -> bool:
            items = self.stack.get_json("deployments", "-A", "-l", "fleetwarden.dev/budget")["items"]
            return len(items) == 4 and all(
                (d.get("status") or {}).get("readyReplicas") == d["spec"]["replicas"] for d in items)

        self.wait("the example Deployments' pods Running (KWOK)", all_running, 120)
        self.show("get", "fleetwarden", "-A")
        self.show("get", "pods", "-A", "-l", "fleetwarden.dev/budget")

    def scale_rate_limits(self) -> None:
        """Per-minute tool limits count wall-clock minutes; at N x speed one holds N simulated minutes."""
        speed = self.opts.speed
        if speed == 1:
            return
        self.say(f"  At {speed:g}x speed a wall-clock minute holds {speed:g} simulated minutes, so the per-minute "
                 "tool limits of the CostPolicies scale with it:")
        for policy in self.stack.get_json("costpolicies", "-A")["items"]:
            limits = (policy.get("spec") or {}).get("rateLimits") or {}
            patch: dict[str, Any] = {}
            if limits.get("toolCallsPerMinute") is not None:
                patch["toolCallsPerMinute"] = round(limits["toolCallsPerMinute"] * speed)
            if limits.get("perTool"):
                patch["perTool"] = {tool: round(n * speed) for tool, n in limits["perTool"].items()}
            if patch:
                meta = policy["metadata"]
                self.show("patch", "costpolicy", meta["name"], "-n", meta["namespace"], "--type", "merge", "-p",
                          json.dumps({"spec": {"rateLimits": patch}}))

    def start_agents_and_operator(self) -> None:
        self.section("agents", "3. Simulated agents (real-time, following their Deployments) and the operator")
        speed = self.opts.speed
        for namespace, (profile, names) in SIMULATORS.items():
            address = self.stack.start_simulator(namespace, profile, names, speed=speed)
            self.say(f"  simulator {namespace}: agents {', '.join(names)} ({profile} profile, {speed:g}x speed), "
                     f"/metrics on {address}")
        for namespace in SIMULATORS:
            try:
                self.stack.prom.wait_for_target_up(f"sim-{namespace}", timeout=60)
            except failures.ComponentError as exc:
                raise stack_mod.DemoError(str(exc)) from exc
        self.say(f"  Prometheus scrapes them every {self.opts.scrape_interval:g}s")
        self.stack.start_operator(interval=self.opts.interval)
        assert self.stack.alertmanager is not None
        self.say(f"$ fleetwarden operator --all-namespaces --interval {self.opts.interval:g} "
                 f"--prometheus-url {self.stack.prom.url} --scrape-interval {self.opts.scrape_interval:g} "
                 f"--alertmanager-url {self.stack.alertmanager.url} --leader-elect "
                 f"--lease-namespace {stack_mod.OPERATOR_NAMESPACE}  # log: {self.stack.log_path('operator')}")
        self.say(f"  (as its ServiceAccount {stack_mod.OPERATOR_NAMESPACE}/{stack_mod.OPERATOR_ACCOUNT}, "
                 f"manifests/rbac.yaml; kubeconfig {self.stack.state_dir / 'operator.kubeconfig'})")
        self.say(f"  (one simulated hour passes in {60 / speed:g} wall-clock minutes; the operator and "
                 "Prometheus run on the wall clock)")

    def baseline(self) -> None:
        self.section("baseline", "4a. Baseline: what the fleets spend")

        def spending() -> bool:
            for namespace, name in ((SUPPORT_NS, SUPPORT_BUDGET), (LEAD_NS, LEAD_BUDGET)):
                summary = self.status(namespace, name).get("summary") or {}
                if not (summary.get("spendUSD") or 0) > 0:
                    return False
            return True

        self.wait("spend in the status of the support-swarm and lead-generation AgentBudgets", spending, 180,
                  budget=(SUPPORT_NS, SUPPORT_BUDGET))

        def baseline_ready() -> float | None:
            boundary = int(time.time() // 60) * 60
            result = self.stack.prom.query(
                f'sum({metricnames.TASKS}{{namespace="{SUPPORT_NS}",agent="{TRIAGE}"}})', at=float(boundary))
            tasks = float(result[0]["value"][1]) if result else 0.0
            if tasks < BASELINE_TASKS:
                return None
            active = self.stack.prom.query(
                f'count_over_time((sum(increase({metricnames.TASKS}{{namespace="{SUPPORT_NS}",agent="{TRIAGE}"}}[1m]))'
                f' > 0)[30m:1m])', at=float(boundary))
            if (float(active[0]["value"][1]) if active else 0.0) < BASELINE_MINUTES:
                return None
            return self.cost_per_task(SUPPORT_NS, TRIAGE, "1m")

        base = self.wait(f"{BASELINE_TASKS} support-triage tasks over {BASELINE_MINUTES} whole minutes "
                         "(the detector's baseline)",
                         baseline_ready, 480,
                         progress=lambda: "waiting for a baseline of whole minutes of support-triage tasks")
        self.show("get", "agentbudgets", "-A")
        self.say(f"  support-triage runs {BASE_MODEL}: ${base:.4f} of model cost per task (PromQL: rate of "
                 f"{metricnames.LLM_COST_USD} / rate of {metricnames.TASKS}, last minute)")
        self.summary["baseline"] = {"agent": TRIAGE, "model": BASE_MODEL, "costPerTaskUSD": round(base, 6)}

    def model_update(self) -> None:
        self.section("model", f"4b. A model update: support-triage moves from {BASE_MODEL} to {SPIKE_MODEL}")
        base = float(self.summary["baseline"]["costPerTaskUSD"])
        table = pricing.PriceTable.from_config(None)
        per_million = {m: table.llm_cost(m, input_tokens=1_000_000, output_tokens=0) for m in (BASE_MODEL, SPIKE_MODEL)}
        self.say(f"  price per million input tokens: {BASE_MODEL} ${per_million[BASE_MODEL]:.2f}, "
                 f"{SPIKE_MODEL} ${per_million[SPIKE_MODEL]:.2f} "
                 f"({per_million[SPIKE_MODEL] / per_million[BASE_MODEL]:.1f}x), and it answers at more length")
        self.show("set", "env", f"deployment/{TRIAGE}", "-n", SUPPORT_NS, f"MODEL={SPIKE_MODEL}")
        changed_at = time.time()
        peak = {"ratio": 0.0, "cost": 0.0}

        def watch() -> str | None:
            cost = self.cost_per_task(SUPPORT_NS, TRIAGE, "1m")
            if cost is None:
                return None
            if cost / base > peak["ratio"]:
                peak.update(ratio=cost / base, cost=cost)
            return (f"support-triage: ${cost:.4f} per task, {cost / base:.1f}x the baseline; "
                    "the operator judges whole minutes after the change")

        def rolled_back() -> dict[str, Any] | None:
            watch()
            rollbacks = (self.status(SUPPORT_NS, SUPPORT_BUDGET).get("model") or {}).get("rollbacks") or []
            return next((r for r in rollbacks if r.get("agent") == TRIAGE and r.get("incident")), None)

        record = self.wait("the operator to roll support-triage back (status.model.rollbacks)", rolled_back, 300,
                           progress=watch, budget=(SUPPORT_NS, SUPPORT_BUDGET), interval=2.0)
        detected = time.time() - changed_at
        self.say(f"  [{self.clock()}] rolled back {detected:.0f}s after the update; peak seen in Prometheus: "
                 f"${peak['cost']:.4f} per task ({peak['ratio']:.1f}x)")
        model = self.wait(f"Deployment {TRIAGE} back on {BASE_MODEL}",
                          lambda: self.model_of(SUPPORT_NS, TRIAGE) == BASE_MODEL and BASE_MODEL, 60,
                          budget=(SUPPORT_NS, SUPPORT_BUDGET))
        self.show("get", "events", "-n", SUPPORT_NS, "--field-selector", "reason=ModelRolledBack")
        self.show("get", "agentbudget", SUPPORT_BUDGET, "-n", SUPPORT_NS, "-o",
                  "jsonpath={range .status.model.rollbacks[*]}{.agent}: {.from} -> {.to} ({.incident}){\"\\n\"}{end}")
        self.show("get", "deployment", TRIAGE, "-n", SUPPORT_NS, "-o",
                  "jsonpath={.spec.template.spec.containers[0].env}{\"\\n\"}")

        def normal() -> float | None:
            cost = self.cost_per_task(SUPPORT_NS, TRIAGE, "30s")
            return cost if cost is not None and cost <= NORMAL_AGAIN * base else None

        after = self.wait(f"support-triage's cost per task back within {NORMAL_AGAIN}x of the baseline", normal, 180,
                          progress=lambda: watch() and "waiting for the cost per task to settle",
                          budget=(SUPPORT_NS, SUPPORT_BUDGET))
        self.say(f"  [{self.clock()}] support-triage: ${after:.4f} per task again ({after / base:.2f}x the baseline, "
                 "last 30 s in Prometheus)")
        self.summary["modelUpdate"] = {
            "agent": TRIAGE, "from": BASE_MODEL, "to": SPIKE_MODEL,
            "peakCostPerTaskUSD": round(peak["cost"], 6), "peakRatio": round(peak["ratio"], 2),
        }
        self.summary["rollback"] = {
            "agent": TRIAGE, "from": record.get("from"), "to": record.get("to"), "incident": record.get("incident"),
            "reason": record.get("reason"), "secondsAfterUpdate": round(detected, 1), "deploymentModel": model,
            "costPerTaskAfterUSD": round(after, 6), "ratioAfter": round(after / base, 2),
        }

    def runaway_loop(self) -> None:
        self.section("kill", "4c. A runaway loop: lead-gen-agent calls its model faster and faster, finishing nothing")
        budget = self.budget(LEAD_NS, LEAD_BUDGET)
        spec = budget["spec"]
        hour_cap = next((lim["amountUSD"] for lim in spec.get("limits", []) if lim["window"] == "hour"), None)
        threshold = (spec.get("killSwitch") or {}).get("thresholdPercent", 150)
        replicas_before = int(self.deployment(LEAD_NS, LEAD_AGENT)["spec"]["replicas"])
        self.say(f"  budget {LEAD_BUDGET}: hourly cap ${hour_cap}, kill switch at {threshold}%; the runaway_loop "
                 "detector (CostPolicy default: action kill) watches the token rate too")
        self.say("  (the simulator starts the scenario when its Deployment is annotated)")
        self.show("annotate", f"deployment/{LEAD_AGENT}", "-n", LEAD_NS, f"{SCENARIO_ANNOTATION}=runaway-loop",
                  "--overwrite")
        started = time.time()

        def watch() -> str | None:
            tokens = self.tokens_per_minute(LEAD_NS, LEAD_AGENT)
            spend = self.hour_spend(LEAD_NS)
            if tokens is None or spend is None:
                return None
            return f"lead-gen-agent: {tokens / 1e6:.1f}M tokens/minute; lead-generation spent ${spend:.2f} this hour"

        def engaged() -> dict[str, Any] | None:
            ks = self.status(LEAD_NS, LEAD_BUDGET).get("killSwitch") or {}
            return ks if ks.get("engaged") and ks.get("incident") else None

        ks = self.wait("the kill switch of lead-generation (status.killSwitch.engaged)", engaged, 300,
                       progress=watch, budget=(LEAD_NS, LEAD_BUDGET))
        incident = str(ks["incident"])
        self.say(f"  [{self.clock()}] kill switch engaged {time.time() - started:.0f}s after the loop began: {incident}")
        self.wait(f"Deployment {LEAD_AGENT} at 0 replicas and its KWOK pods gone",
                  lambda: self.deployment(LEAD_NS, LEAD_AGENT)["spec"]["replicas"] == 0
                  and self.pods(LEAD_NS, LEAD_AGENT) == 0, 90, budget=(LEAD_NS, LEAD_BUDGET))
        stopped_at = time.time()
        self.show("get", "deployment", LEAD_AGENT, "-n", LEAD_NS)
        self.show("get", "pods", "-n", LEAD_NS)
        self.show("get", "events", "-n", LEAD_NS, "--field-selector", "type=Warning")
        self.show("get", "agentbudget", LEAD_BUDGET, "-n", LEAD_NS, "-o",
                  "jsonpath={range .status.conditions[?(@.type==\"KillSwitchEngaged\")]}"
                  "{.type}={.status} {.reason}: {.message}{\"\\n\"}{end}")
        status = self.status(LEAD_NS, LEAD_BUDGET)
        kind = next((i.get("kind") for i in status.get("incidents") or [] if i.get("id") == incident), None)
        events = self.stack.get_json("events", "-n", LEAD_NS, "--field-selector", "type=Warning")["items"]
        self.show("get", "agentbudgets", "-A")
        self.summary["killSwitch"] = {
            "budget": LEAD_BUDGET, "agent": LEAD_AGENT, "incident": incident, "kind": kind,
            "engagedAt": ks.get("engagedAt"), "replicasRemembered": ks.get("replicas"),
            "replicasBefore": replicas_before, "deploymentReplicas": 0, "pods": 0,
            "secondsAfterLoopBegan": round(stopped_at - started, 1),
            "warningEvents": sorted({str(e.get("reason")) for e in events}),
            "conditionKillSwitchEngaged": next((c.get("status") for c in status.get("conditions") or []
                                                if c.get("type") == "KillSwitchEngaged"), None),
        }

    def resume(self) -> None:
        self.section("resume", "4d. A person reads the incident and resumes")
        ks = self.summary["killSwitch"]
        incident, remembered = ks["incident"], dict(ks.get("replicasRemembered") or {})
        self.show_fleetwarden("incident", "show", incident, "-n", LEAD_NS)
        patch = json.dumps({"spec": {"killSwitch": {"acknowledge": incident}}})
        self.show("patch", "agentbudget", LEAD_BUDGET, "-n", LEAD_NS, "--type", "merge", "-p", patch)
        want = int(remembered.get(LEAD_AGENT, ks["replicasBefore"]))

        def restored() -> dict[str, Any] | None:
            status = self.status(LEAD_NS, LEAD_BUDGET)
            ks_now = status.get("killSwitch") or {}
            if ks_now.get("engaged") or not ks_now.get("resumedAt"):
                return None
            if self.deployment(LEAD_NS, LEAD_AGENT)["spec"]["replicas"] != want:
                return None
            if self.running_pods(LEAD_NS, LEAD_AGENT) != want:
                return None
            return ks_now

        ks_now = self.wait(f"{LEAD_AGENT} back at {want} replicas with {want} Running pods", restored, 120,
                           budget=(LEAD_NS, LEAD_BUDGET))
        self.say(f"  [{self.clock()}] resumed at {ks_now.get('resumedAt')}; checking it stays resumed "
                 f"for {3 * self.opts.interval:g}s")
        time.sleep(3 * self.opts.interval)
        replicas = int(self.deployment(LEAD_NS, LEAD_AGENT)["spec"]["replicas"])
        still = not (self.status(LEAD_NS, LEAD_BUDGET).get("killSwitch") or {}).get("engaged")
        if replicas != want or not still:
            self._explain(f"{LEAD_AGENT} to stay resumed", (LEAD_NS, LEAD_BUDGET),
                          f"replicas {replicas}, kill switch engaged again: {not still}")
        self.show("get", "pods", "-n", LEAD_NS)
        self.summary["resume"] = {"acknowledged": incident, "replicasWanted": want, "deploymentReplicas": replicas,
                                  "runningPods": self.running_pods(LEAD_NS, LEAD_AGENT),
                                  "resumedAt": ks_now.get("resumedAt"), "engagedAfter": not still}

    def epilogue(self) -> None:
        self.section("epilogue", "5. What is left to read")
        self.show("describe", "agentbudget", SUPPORT_BUDGET, "-n", SUPPORT_NS)
        self.show("describe", "agentbudget", LEAD_BUDGET, "-n", LEAD_NS)
        for namespace in (SUPPORT_NS, LEAD_NS):
            self.show("get", "events", "-n", namespace, "--field-selector", "source=fleetwarden",
                      "--sort-by=.lastTimestamp")
        listed = self.show_fleetwarden("incident", "list", "-A")
        self.summary["incidentList"] = listed is not None
        try:
            assert self.stack.alertmanager is not None
            alerts = self.stack.alertmanager.alerts()
        except (OSError, ValueError):
            alerts = []
        names = sorted({str(a.get("labels", {}).get("alertname")) for a in alerts})
        # the operator's alerts carry the incident id; the others come from Prometheus' rules
        from_operator = [a for a in alerts if a.get("labels", {}).get("incident")]
        self.say(f"  Alertmanager holds {len(from_operator)} alert(s) from the operator:")
        for alert in sorted(from_operator, key=lambda a: str(a.get("labels", {}).get("alertname"))):
            labels = alert.get("labels", {})
            about = "/".join(str(labels[k]) for k in ("namespace", "agent") if labels.get(k))
            self.say(f"    {labels.get('alertname')}  {about}  {labels.get('severity', '')}  {labels.get('incident')}")
        by_rule: dict[str, int] = {}
        for alert in alerts:
            if alert not in from_operator:
                name = str(alert.get("labels", {}).get("alertname"))
                by_rule[name] = by_rule.get(name, 0) + 1
        self.say(f"  and {len(alerts) - len(from_operator)} from Prometheus' rules ({stack_mod.RULES}): "
                 + (", ".join(f"{name} x{n}" for name, n in sorted(by_rule.items())) or "none"))
        self.summary["alerts"] = names
