"""The AgentBudget status as a typed model: what ``crds/agentbudgets.yaml`` declares under ``status``.

The operator reads the stored status with :func:`read` (leniently: a field a person or a
broken writer left invalid is dropped and named, never a crash) and writes
:meth:`AgentBudgetStatus.body` (the CRD's camelCase names, absent fields left out).
``tests/unit/test_crd_models_in_step.py`` walks these models against the CRD.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

from fleetwarden.core import spec, timefmt

# Condition types
READY = "Ready"
METRICS_AVAILABLE = "MetricsAvailable"
BUDGET_EXCEEDED = "BudgetExceeded"
KILL_SWITCH_ENGAGED = "KillSwitchEngaged"
ANOMALY_DETECTED = "AnomalyDetected"
APPROVAL_PENDING = "ApprovalPending"
PRICES_KNOWN = "PricesKnown"
STEP_ACTIVE = "StepActive"


class State(str, enum.Enum):
    active = "Active"
    warning = "Warning"
    exceeded = "Exceeded"
    killed = "Killed"
    suspended = "Suspended"
    unknown = "Unknown"


ACTIVE, WARNING, EXCEEDED, KILLED, SUSPENDED, UNKNOWN = (s.value for s in State)


def _utc(value: dt.datetime) -> str:
    return timefmt.rfc3339(value.timestamp())


# RFC 3339 in UTC to the second, as every timestamp the operator writes
Timestamp = Annotated[dt.datetime, pydantic.PlainSerializer(_utc, return_type=str)]


def at(ts: float) -> dt.datetime:
    """A Unix time as a status timestamp (to the second, as written)."""
    return dt.datetime.fromtimestamp(int(ts), tz=dt.timezone.utc)


def _camel(name: str) -> str:
    special = {"from_": "from"}
    if name in special:
        return special[name]
    if name.endswith("_usd"):
        name = name[:-4] + "_USD"
    head, *rest = name.split("_")
    return head + "".join(p if p == "USD" else p[:1].upper() + p[1:] for p in rest)


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="forbid")


class Summary(_Model):
    window: spec.Window | None = None
    spend_usd: float | None = None
    cap_usd: float | None = None
    percent_used: float | None = None


class Spend(_Model):
    hour: float | None = None
    day: float | None = None
    month: float | None = None


class TopAgent(_Model):
    name: str | None = None
    cost_usd: float | None = None


class TopTool(_Model):
    name: str | None = None
    cost_usd: float | None = None
    calls: float | None = None


class AgentModel(_Model):
    agent: str | None = None
    model: str | None = None


class Condition(_Model):
    """A metav1.Condition."""

    type: str = Field(max_length=316)
    status: Literal["True", "False", "Unknown"]
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: Timestamp
    reason: str = Field(min_length=1, max_length=1024)
    message: str = Field(max_length=32768)


class KillSwitchStatus(_Model):
    engaged: bool | None = None
    incident: str | None = None
    engaged_at: Timestamp | None = None
    replicas: dict[str, int] | None = None
    resumed_at: Timestamp | None = None
    spend_at_resume_usd: float | None = None
    pending: list[str] | None = None  # agents whose scale to zero failed; retried


class Rollback(_Model):
    agent: str | None = None
    from_: str | None = None
    to: str | None = None
    at: Timestamp | None = None
    incident: str | None = None
    reason: str | None = None


class ModelStatus(_Model):
    rollbacks: list[Rollback] | None = None
    spec_desired: str | None = None


class ActiveStep(_Model):
    """A step of the graduated response in force (or, in DryRun/Warn, one that would be)."""

    name: str | None = None
    action: str | None = None
    window: spec.Window | None = None
    at_percent: float | None = None
    percent_used: float | None = None  # of the window's cap when it engaged
    model: str | None = None  # CheaperModel: the model the agents run
    max_output_tokens: int | None = None  # CapOutputTokens: the cap the SDK applies
    since: Timestamp | None = None
    why: str | None = None


class StepsStatus(_Model):
    """The graduated response: the steps in force and what to restore when they are undone."""

    active: list[ActiveStep] | None = None
    engagement: str | None = None  # set spec.acknowledgeSteps to it to undo the steps in force
    acknowledged: list[str] | None = None  # steps a person undid; engaged again after spend falls under
    models: dict[str, str] | None = None  # each agent's model before a CheaperModel step, restored on undo
    replicas: dict[str, int] | None = None  # each agent's replicas before a ScaleToZero step, restored on undo


class Incident(_Model):
    id: str | None = None
    kind: str | None = None
    agent: str | None = None
    workflow: str | None = None
    model: str | None = None
    tool: str | None = None
    time: Timestamp | None = None
    action: str | None = None
    message: str | None = None


class UnpricedModel(_Model):
    model: str | None = None
    tokens: float | None = None  # tokens of the longest limit window no price covers


class SourceStatus(_Model):
    """The budget's source (spec.source) and its health at the last evaluation."""

    type: str | None = None
    series: int | None = None  # metric families found for the budget's agents
    families: list[str] | None = None  # their names
    last_sample: Timestamp | None = None
    unpriced_models: list[UnpricedModel] | None = None
    unknown: list[str] | None = None  # what this source cannot show: reported unknown, never 0


class AgentBudgetStatus(_Model):
    observed_generation: int | None = None
    state: State | None = None
    summary: Summary | None = None
    spend: Spend | None = None
    burn_rate_usd_per_hour: float | None = Field(default=None, alias="burnRateUSDPerHour")
    projected_month_usd: float | None = None
    cost_per_task_usd: float | None = None
    cost_per_outcome_usd: dict[str, float] | None = None
    top_agents: list[TopAgent] | None = None
    top_tools: list[TopTool] | None = None
    models: list[AgentModel] | None = None
    last_evaluated: Timestamp | None = None
    conditions: list[Condition] | None = None
    kill_switch: KillSwitchStatus | None = None
    model: ModelStatus | None = None
    steps: StepsStatus | None = None
    incidents: list[Incident] | None = None
    source: SourceStatus | None = None

    def body(self) -> dict[str, Any]:
        """The status as the API server stores it: camelCase, unset fields left out."""
        out: dict[str, Any] = self.model_dump(mode="json", by_alias=True, exclude_none=True)
        return out

    def condition(self, type_: str) -> Condition | None:
        return next((c for c in self.conditions or () if c.type == type_), None)

    def is_true(self, type_: str) -> bool:
        c = self.condition(type_)
        return c is not None and c.status == "True"


def read(stored: Mapping[str, Any] | None) -> tuple[AgentBudgetStatus, list[str]]:
    """The stored status as the model, and what was dropped from it (``field: reason``).

    The status is the operator's own record, but a person can edit it (``kubectl edit
    --subresource=status``) and an older operator may have written it: a field that does not
    validate is dropped, so the next evaluation rewrites it, rather than failing every cycle.
    Within a list, only the invalid items are dropped."""
    if not stored:
        return AgentBudgetStatus(), []
    try:
        return AgentBudgetStatus.model_validate(dict(stored)), []
    except pydantic.ValidationError:
        pass
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    fields = {f.alias or name: f for name, f in AgentBudgetStatus.model_fields.items()}
    for key, value in stored.items():
        if key not in fields:
            dropped.append(f"{key}: not a status field")
            continue
        try:
            AgentBudgetStatus.model_validate({key: value})
            kept[key] = value
            continue
        except pydantic.ValidationError as e:
            reason = e.errors()[0]["msg"]
        if isinstance(value, list):
            good = [item for item in value if _valid_item(key, item)]
            dropped.append(f"{key}: {len(value) - len(good)} invalid item(s) dropped ({reason})")
            kept[key] = good
        else:
            dropped.append(f"{key}: {reason}")
    return AgentBudgetStatus.model_validate(kept), dropped


def _valid_item(key: str, item: Any) -> bool:
    try:
        AgentBudgetStatus.model_validate({key: [item]})
    except pydantic.ValidationError:
        return False
    return True


def set_condition(previous: Sequence[Condition], type_: str, status: Literal["True", "False", "Unknown"],
                  reason: str, message: str, now: float, generation: int | None) -> Condition:
    """A condition; its lastTransitionTime kept unless ``status`` really changes (as cert-manager does)."""
    old = next((c for c in previous if c.type == type_), None)
    message = message[:32768]
    if old is not None and old.status == status and old.reason == reason and old.message == message \
            and old.observed_generation == generation:
        return old  # as it was (most evaluations): no new model to build and validate
    changed = old is None or old.status != status
    return Condition(type=type_, status=status, reason=reason, message=message,
                     last_transition_time=at(now) if changed or old is None else old.last_transition_time,
                     observed_generation=generation)


def condition_body(previous: Sequence[Mapping[str, Any]], type_: str, status: Literal["True", "False", "Unknown"],
                   reason: str, message: str, now: float, generation: int | None) -> dict[str, Any]:
    """:func:`set_condition` for a status kept as a stored body (CostPolicy): the condition as stored."""
    prev = []
    for c in previous:
        try:
            prev.append(Condition.model_validate(c))
        except pydantic.ValidationError:
            continue  # an unreadable old condition: its transition time is lost, nothing else
    out: dict[str, Any] = set_condition(prev, type_, status, reason, message, now, generation).model_dump(
        mode="json", by_alias=True, exclude_none=True)
    return out


def rfc3339_of(value: dt.datetime) -> str:
    """A status timestamp as written."""
    return _utc(value)
