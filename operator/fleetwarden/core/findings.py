"""Findings: what a detector or a policy found, exactly as ``docs/contracts/findings.md``.

A :class:`Finding` is a frozen value. Inside the core, ``time`` and ``onset`` are Unix
seconds (floats); :meth:`Finding.to_dict` renders the contract's record (RFC 3339 ``Z``
strings, absent optional fields omitted), which ``fleetwarden replay --output json`` prints
one per line and the operator records as Events, status entries and incidents.

``incident_id(finding)`` is deterministic: ``inc-`` + the first 10 hex digits of
sha256 over ``namespace/agent/kind/onset-minute[/tool]`` (the onset minute as Unix
seconds; the finding's time when it has no onset), so the same problem seen again, by a
refold or after a restart, keeps its id.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import Any

from fleetwarden.core import timefmt

# ---------------------------------------------------------------- kinds

MODEL_UPDATE_SPIKE = "model_update_spike"
RUNAWAY_LOOP = "runaway_loop"
TOOL_CALL_EXPLOSION = "tool_call_explosion"
COST_SHIFT = "cost_shift"
BUDGET_WARNING = "budget_warning"
BUDGET_EXCEEDED = "budget_exceeded"
KILL_SWITCH = "kill_switch"
TOKEN_CAP_EXCEEDED = "token_cap_exceeded"
RATE_LIMIT_EXCEEDED = "rate_limit_exceeded"
TOOL_NOT_ALLOWED = "tool_not_allowed"
APPROVAL_REQUIRED = "approval_required"

KINDS = (
    MODEL_UPDATE_SPIKE, RUNAWAY_LOOP, TOOL_CALL_EXPLOSION, COST_SHIFT, BUDGET_WARNING, BUDGET_EXCEEDED, KILL_SWITCH,
    TOKEN_CAP_EXCEEDED, RATE_LIMIT_EXCEEDED, TOOL_NOT_ALLOWED, APPROVAL_REQUIRED,
)
ANOMALY_KINDS = (MODEL_UPDATE_SPIKE, RUNAWAY_LOOP, TOOL_CALL_EXPLOSION, COST_SHIFT)

# ---------------------------------------------------------------- actions (spec.Action values)

ALERT = "alert"
THROTTLE = "throttle"
DENY = "deny"
PAUSE = "pause"
KILL = "kill"
ROLLBACK = "rollback"

ACTIONS = (ALERT, THROTTLE, DENY, PAUSE, KILL, ROLLBACK)
# How severe an action is, for sorting and for a person reading the text output.
SEVERITY = {ALERT: "warning", THROTTLE: "warning", DENY: "error", PAUSE: "error", ROLLBACK: "critical",
            KILL: "critical"}

# Optional fields, in contract order, omitted from to_dict() when None.
_OPTIONAL = ("workflow", "onset", "budget", "policy", "tool", "task_id", "model", "previous_model")


@dataclasses.dataclass(frozen=True, slots=True)
class Finding:
    """One finding (``docs/contracts/findings.md``). Times are Unix seconds."""

    kind: str
    agent: str
    namespace: str
    time: float
    action: str
    message: str
    workflow: str | None = None
    onset: float | None = None
    budget: str | None = None
    policy: str | None = None
    tool: str | None = None
    task_id: str | None = None
    model: str | None = None
    previous_model: str | None = None
    evidence: Mapping[str, Any] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown finding kind {self.kind!r}")
        if self.action not in ACTIONS:
            raise ValueError(f"unknown finding action {self.action!r}")

    @property
    def severity(self) -> str:
        return SEVERITY[self.action]

    def to_dict(self) -> dict[str, Any]:
        """The contract's record: RFC 3339 times, absent optional fields omitted."""
        out: dict[str, Any] = {"kind": self.kind, "agent": self.agent, "namespace": self.namespace}
        if self.workflow is not None:
            out["workflow"] = self.workflow
        out["time"] = timefmt.rfc3339_ms(self.time)
        if self.onset is not None:
            out["onset"] = timefmt.rfc3339_ms(self.onset)
        out["action"] = self.action
        for name in _OPTIONAL[2:]:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out["message"] = self.message
        out["evidence"] = dict(self.evidence)
        return out


def incident_id(finding: Finding) -> str:
    """``inc-`` + 10 hex of sha256(namespace/agent/kind/onset-minute[/tool]); stable across refolds."""
    onset = finding.onset if finding.onset is not None else finding.time
    minute = int(onset // 60) * 60
    key = f"{finding.namespace}/{finding.agent}/{finding.kind}/{minute}"
    if finding.tool is not None:
        key += f"/{finding.tool}"
    return "inc-" + hashlib.sha256(key.encode()).hexdigest()[:10]


def sort_key(finding: Finding) -> tuple[float, str, str, str]:
    """Order of output: by time, then namespace, agent and kind (deterministic ties)."""
    return (finding.time, finding.namespace, finding.agent, finding.kind)
