"""The specs of AgentBudget, CostPolicy and CostApproval, as pydantic models.

These mirror the CRD schemas in ``crds/`` field by field (a test keeps them in step:
``tests/unit/test_crd_models_in_step.py``). Field names are snake_case in Python and
camelCase in YAML (``amount_usd`` <-> ``amountUSD``). Every field has the same default
as the CRD, so a manifest read by ``fleetwarden replay`` means what it means in the
cluster.
"""

from __future__ import annotations

import datetime as dt
import enum
import weakref
from typing import Annotated, Any, ClassVar, Literal

import pydantic
from pydantic import BaseModel, ConfigDict, Field

GROUP = "fleetwarden.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

# Bounds that keep the CRD's CEL rules within the API server's cost budget; the CRDs
# declare the same maxItems/maxLength.
MAX_TOOL_PATTERNS = 64
MAX_APPROVAL_RULES = 32
MAX_NAME_LENGTH = 253

NonNegativeUSD = Annotated[float, Field(ge=0)]
PositiveRate = Annotated[float, Field(gt=0)]
ToolPattern = Annotated[str, Field(min_length=1, max_length=MAX_NAME_LENGTH)]


def _camel(name: str) -> str:
    special = {
        "amount_usd": "amountUSD",
        "target_cost_usd": "targetCostUSD",
        "human_baseline_usd": "humanBaselineUSD",
        "fixed_monthly_costs_usd": "fixedMonthlyCostsUSD",
        "human_hourly_rate_usd": "humanHourlyRateUSD",
        "amount_above_usd": "amountAboveUSD",
        "tool_prices_usd": "toolPricesUSD",
        "min_spend_usd": "minSpendUSD",
    }
    if name in special:
        return special[name]
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


# Every pydantic model keeps its own set of the fields given (``model_fields_set``): at 10,000
# parsed AgentBudgets of ten models each, 100,000 sets of a few hundred bytes, most of them
# equal. The models here are frozen, and pydantic only ever adds to that set in ``__setattr__``
# (refused when frozen) or on a copy (``model_copy`` copies it first), so equal sets are shared.
_FIELDS_SETS: dict[frozenset[str], set[str]] = {}
_MAX_FIELDS_SETS = 4096  # distinct sets shared; past this a model keeps its own (still correct)

# The same holds one level up: the parts of 10,000 budgets (an owner, two spend limits, a kill
# switch, a model source, a source) are mostly equal from budget to budget, and each is a
# model, its ``__dict__`` and its values. The parts are frozen models too, so a part equal to
# one parsed before (the same type, the same fields given, the same JSON) is that one, shared.
# Kept by the hash of its JSON (a collision keeps the part as parsed), weakly: a part no model
# holds any more leaves the table. A class whose objects are each an object's own (its name, its
# whole spec, the selector naming its agent) sets ``_SHARED = False``: they would only fill it.
_PARTS: weakref.WeakValueDictionary[tuple[type, int], _Model] = weakref.WeakValueDictionary()


def _shared(part: _Model) -> _Model:
    """The part parsed before equal to ``part``, else ``part`` (kept for the next one)."""
    if not part._SHARED:
        return part
    text = part.model_dump_json()
    given = part.__pydantic_fields_set__
    key = (type(part), hash((text, *sorted(given))))
    kept = _PARTS.get(key)
    if kept is None:
        _PARTS[key] = part
        return part
    if kept.__pydantic_fields_set__ == given and kept.model_dump_json() == text:
        return kept
    return part


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="forbid", frozen=True)
    _SHARED: ClassVar[bool] = True  # whether an equal part of another model may be this one

    def model_post_init(self, context: Any, /) -> None:
        """Share the set of fields given with every other model given the same fields, and each
        part (a model, or the models of a list) with an equal part of a model parsed before."""
        given = self.__pydantic_fields_set__
        key = frozenset(given)
        shared = _FIELDS_SETS.get(key)
        if shared is None and len(_FIELDS_SETS) < _MAX_FIELDS_SETS:
            shared = _FIELDS_SETS.setdefault(key, given)
        if shared is not None and shared is not given:
            object.__setattr__(self, "__pydantic_fields_set__", shared)
        for name, value in list(self.__dict__.items()):
            kind = type(value)
            if kind in _MODELS:
                part = _shared(value)
                if part is not value:
                    object.__setattr__(self, name, part)
            elif kind is list and value and type(value[0]) in _MODELS and value[0]._SHARED:
                parts = [_shared(v) if type(v) in _MODELS else v for v in value]
                if any(p is not v for p, v in zip(parts, value, strict=True)):
                    object.__setattr__(self, name, parts)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _MODELS.add(cls)


# Every model class here (a set: ``isinstance`` on pydantic's ABC metaclass costs a few times more,
# and ``model_post_init`` asks it of every field of every model parsed).
_MODELS: set[type] = set()


class Window(str, enum.Enum):
    hour = "hour"
    day = "day"
    month = "month"


WINDOW_SECONDS = {Window.hour: 3600, Window.day: 86400, Window.month: 30 * 86400}


class LabelSelectorRequirement(_Model):
    # the selector's own, as the selector is its budget's (and a selector is parsed on every
    # Deployment event: agentbudgets.deployment_event)
    _SHARED = False

    key: str
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] = Field(default_factory=list)


class LabelSelector(_Model):
    """A Kubernetes label selector. An empty selector selects every agent in the namespace."""
    _SHARED = False  # each object's own

    match_labels: dict[str, str] = Field(default_factory=dict)
    match_expressions: list[LabelSelectorRequirement] = Field(default_factory=list)

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.match_labels.items():
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True

    def to_query(self) -> str:
        """The selector as a ``labelSelector`` query string for the Kubernetes API."""
        parts = [f"{k}={v}" for k, v in sorted(self.match_labels.items())]
        for req in self.match_expressions:
            if req.operator == "In":
                parts.append(f"{req.key} in ({','.join(req.values)})")
            elif req.operator == "NotIn":
                parts.append(f"{req.key} notin ({','.join(req.values)})")
            elif req.operator == "Exists":
                parts.append(req.key)
            else:
                parts.append(f"!{req.key}")
        return ",".join(parts)


# ---------------------------------------------------------------- AgentBudget


class Owner(_Model):
    team: str | None = None
    project: str | None = None
    cost_center: str | None = None
    contact: str | None = None


class SpendLimit(_Model):
    """A cap on spend in USD over one window, with a warning threshold."""

    window: Window
    amount_usd: float = Field(gt=0)
    warning_percent: float = Field(default=80.0, gt=0, lt=100)
    calendar: bool = False  # False: rolling window ending now; True: calendar hour/day/month (UTC)


class Enforcement(str, enum.Enum):
    """How a budget acts on what it finds (as Kyverno's Audit/Enforce, Gatekeeper's dryrun/warn/deny)."""

    dry_run = "DryRun"  # findings, Events and metrics say what would have happened; no action, no alert
    warn = "Warn"  # as DryRun, and on-call is alerted; no action
    enforce = "Enforce"  # acts (the default)


class KillAction(str, enum.Enum):
    scale_to_zero = "ScaleToZero"
    alert_only = "AlertOnly"


class KillSwitch(_Model):
    """Engage when spend in ``window`` passes ``threshold_percent`` of that window's cap."""

    enabled: bool = True
    threshold_percent: float = Field(default=150.0, gt=100)
    window: Window = Window.hour
    action: KillAction = KillAction.scale_to_zero
    # A human resumes by setting this to the incident id shown in status.killSwitch.incident.
    acknowledge: str | None = None


class ModelSource(_Model):
    """Where an agent's model is set on its Deployment, and the model it should run."""

    env_var: str | None = Field(default="MODEL", min_length=1)
    annotation: str | None = Field(default=None, min_length=1)
    container: str | None = None
    # The model the agents should run. Setting or changing it rolls the agents to it
    # (back or forward); empty means "whatever the Deployment says".
    desired: str | None = None
    rollback_on_spike: bool = True

    @pydantic.model_validator(mode="after")
    def _has_a_source(self) -> ModelSource:
        if self.env_var is None and self.annotation is None:
            raise ValueError("model: set envVar or annotation")
        return self


class UnitEconomicsTarget(_Model):
    outcome: str
    workflow: str | None = None
    target_cost_usd: float | None = Field(default=None, ge=0)
    human_baseline_usd: float | None = Field(default=None, ge=0)


class SourceType(str, enum.Enum):
    """What the budget's agents report through (docs/metrics.md, Sources)."""

    fleetwarden = "Fleetwarden"  # the Fleetwarden SDK's fleetwarden_* series (the default)
    open_telemetry = "OpenTelemetry"  # OpenTelemetry GenAI semantic conventions (gen_ai_* series)
    lite_llm = "LiteLLM"  # the LiteLLM proxy's litellm_* series


class LiteLLMLabel(str, enum.Enum):
    """The LiteLLM label whose value is the agent's Deployment name."""

    api_key_alias = "api_key_alias"
    team = "team"
    end_user = "end_user"


class Source(_Model):
    """Where the operator reads the budget's agents' usage. Tokens without dollars are priced
    by the operator (genai-prices, then CostPolicy toolPricesUSD for tools)."""

    type: SourceType = SourceType.fleetwarden
    # LiteLLM only: which label names the agent (its value is the Deployment's name)
    agent_label: LiteLLMLabel | None = None

    @pydantic.model_validator(mode="after")
    def _agent_label_for_litellm(self) -> Source:
        if self.agent_label is not None and self.type is not SourceType.lite_llm:
            raise ValueError("source.agentLabel: only for type LiteLLM")
        return self


class StepAction(str, enum.Enum):
    """What a step of the graduated response does (docs/operator.md, "Graduated response")."""

    cheaper_model = "CheaperModel"  # every agent runs ``model`` (recorded as a rollback; undone: back)
    cap_output_tokens = "CapOutputTokens"  # the SDK clamps each model call's max tokens (policy ConfigMap)
    stop_new_tasks = "StopNewTasks"  # the SDK refuses new tasks; running ones finish (policy ConfigMap)
    scale_to_zero = "ScaleToZero"  # the agents scaled to zero; undone: their replicas restored


MAX_STEPS = 8


class Step(_Model):
    """One step before the kill: engaged while spend over ``window`` is at or past ``at_percent``
    of that window's cap; undone when it falls back under, or when a person acknowledges it."""

    name: str | None = Field(default=None, min_length=1, max_length=63)  # default: "<action>-<atPercent>"
    at_percent: float = Field(gt=0)
    window: Window | None = None  # default: the window of the budget's first limit
    action: StepAction
    model: str | None = Field(default=None, min_length=1)  # CheaperModel only
    max_output_tokens: int | None = Field(default=None, ge=1)  # CapOutputTokens only

    @pydantic.model_validator(mode="after")
    def _parameters_of_the_action(self) -> Step:
        if (self.model is not None) != (self.action is StepAction.cheaper_model):
            raise ValueError(f"step {self.key}: model is for CheaperModel, and CheaperModel needs it")
        if (self.max_output_tokens is not None) != (self.action is StepAction.cap_output_tokens):
            raise ValueError(f"step {self.key}: maxOutputTokens is for CapOutputTokens, and CapOutputTokens "
                             "needs it")
        return self

    @property
    def key(self) -> str:
        """The step's name: ``name``, else ``<action>-<atPercent>`` (``CheaperModel-80``)."""
        return self.name or f"{self.action.value}-{self.at_percent:g}"


class AgentBudgetSpec(_Model):
    _SHARED = False  # each object's own
    selector: LabelSelector = Field(default_factory=LabelSelector)
    owner: Owner = Field(default_factory=Owner)
    limits: list[SpendLimit] = Field(default_factory=list, max_length=len(Window))
    kill_switch: KillSwitch = Field(default_factory=KillSwitch)
    model: ModelSource = Field(default_factory=ModelSource)
    unit_economics: list[UnitEconomicsTarget] = Field(default_factory=list)
    fixed_monthly_costs_usd: dict[str, NonNegativeUSD] = Field(default_factory=dict)
    human_hourly_rate_usd: float = Field(default=60.0, ge=0)
    suspend: bool = False
    enforcement: Enforcement = Enforcement.enforce
    source: Source = Field(default_factory=Source)
    steps: list[Step] = Field(default_factory=list, max_length=MAX_STEPS)
    # A person undoes the engaged steps by setting this to status.steps.engagement.
    acknowledge_steps: str | None = None

    @pydantic.model_validator(mode="after")
    def _steps_have_a_limit(self) -> AgentBudgetSpec:
        names: set[str] = set()
        for step in self.steps:
            if step.key in names:
                raise ValueError(f"steps: more than one step named {step.key}")
            names.add(step.key)
            window_of = self.step_window(step)
            if window_of is None or self.limit_for(window_of) is None:
                window = step.window.value if step.window is not None else "(the first limit's)"
                raise ValueError(f"steps: step {step.key}: window {window} has no limit in spec.limits")
        return self

    def step_window(self, step: Step) -> Window | None:
        """The window a step's percentage refers to: its own, else the first limit's."""
        if step.window is not None:
            return step.window
        return self.limits[0].window if self.limits else None

    @pydantic.model_validator(mode="after")
    def _one_limit_per_window(self) -> AgentBudgetSpec:
        seen: set[Window] = set()
        for limit in self.limits:
            if limit.window in seen:
                raise ValueError(f"limits: more than one limit for window {limit.window.value}")
            seen.add(limit.window)
        return self

    @pydantic.model_validator(mode="after")
    def _kill_switch_has_a_limit(self) -> AgentBudgetSpec:
        # A kill switch on a window without a cap would never fire; a budget without any
        # limit (reporting only) is fine.
        ks = self.kill_switch
        if ks.enabled and self.limits and self.limit_for(ks.window) is None:
            raise ValueError(f"killSwitch.window {ks.window.value} has no limit in spec.limits")
        return self

    def limit_for(self, window: Window) -> SpendLimit | None:
        for limit in self.limits:
            if limit.window == window:
                return limit
        return None


# ---------------------------------------------------------------- CostPolicy


class Action(str, enum.Enum):
    alert = "alert"
    throttle = "throttle"
    deny = "deny"
    pause = "pause"
    kill = "kill"
    rollback = "rollback"


class TokenCaps(_Model):
    per_task: int | None = Field(default=None, ge=1)
    action: Action = Action.deny


class RateLimits(_Model):
    tool_calls_per_minute: float | None = Field(default=None, gt=0)
    # tool name or fnmatch pattern -> calls per minute; which applies: policies.rate_limit_key
    per_tool: dict[str, PositiveRate] = Field(default_factory=dict)
    action: Action = Action.throttle


class ToolRules(_Model):
    # None: every tool not denied; patterns use fnmatch (`crm.*`)
    allow: list[ToolPattern] | None = Field(default=None, max_length=MAX_TOOL_PATTERNS)
    deny: list[ToolPattern] = Field(default_factory=list, max_length=MAX_TOOL_PATTERNS)
    action: Action = Action.deny

    @pydantic.model_validator(mode="after")
    def _allow_and_deny_apart(self) -> ToolRules:
        both = sorted(set(self.allow or ()) & set(self.deny))
        if both:
            raise ValueError(f"tools: {both[0]} is both in allow and in deny")
        return self

    def allowed(self, tool: str) -> bool:
        import fnmatch

        if any(fnmatch.fnmatchcase(tool, p) for p in self.deny):
            return False
        if self.allow is None:
            return True
        return any(fnmatch.fnmatchcase(tool, p) for p in self.allow)


class ApprovalRule(_Model):
    """Hold an action for a human: one action worth more than ``amount_above_usd``, or the
    ``calls_per_workflow_above``-th call of ``tool`` within one workflow run (task)."""

    name: str
    tool: str | None = None
    amount_above_usd: float | None = Field(default=None, ge=0)
    calls_per_workflow_above: int | None = Field(default=None, ge=0)
    timeout_seconds: int = Field(default=900, ge=1)

    @pydantic.model_validator(mode="after")
    def _has_a_trigger(self) -> ApprovalRule:
        if self.amount_above_usd is None and self.calls_per_workflow_above is None:
            raise ValueError(f"approval rule {self.name}: set amountAboveUSD or callsPerWorkflowAbove")
        if self.calls_per_workflow_above is not None and self.tool is None:
            raise ValueError(f"approval rule {self.name}: callsPerWorkflowAbove needs a tool")
        return self


class ModelUpdateSpikeParams(_Model):
    enabled: bool = True
    ratio: float = Field(default=1.8, gt=1)
    min_tasks: int = Field(default=5, ge=1)
    baseline_tasks: int = Field(default=200, ge=1)
    action: Action = Action.rollback


class RunawayLoopParams(_Model):
    enabled: bool = True
    window_minutes: int = Field(default=5, ge=2)
    acceleration: float = Field(default=1.5, gt=1)
    min_tokens_per_minute: float = Field(default=5000, ge=0)
    task_ratio: float = Field(default=12.0, gt=1)
    action: Action = Action.kill


class CostShiftParams(_Model):
    enabled: bool = True
    ratio: float = Field(default=2.0, gt=1)
    action: Action = Action.alert


class ToolCallExplosionParams(_Model):
    enabled: bool = True
    ratio: float = Field(default=8.0, gt=1)
    window_minutes: int = Field(default=3, ge=1)
    baseline_minutes: int = Field(default=60, ge=5)
    min_calls_per_minute: float = Field(default=20, ge=0)
    action: Action = Action.alert


class AnomalyParams(_Model):
    model_update_spike: ModelUpdateSpikeParams = Field(default_factory=ModelUpdateSpikeParams)
    runaway_loop: RunawayLoopParams = Field(default_factory=RunawayLoopParams)
    tool_call_explosion: ToolCallExplosionParams = Field(default_factory=ToolCallExplosionParams)
    cost_shift: CostShiftParams = Field(default_factory=CostShiftParams)


class CostPolicySpec(_Model):
    _SHARED = False  # each object's own
    selector: LabelSelector = Field(default_factory=LabelSelector)
    token_caps: TokenCaps = Field(default_factory=TokenCaps)
    rate_limits: RateLimits = Field(default_factory=RateLimits)
    tools: ToolRules = Field(default_factory=ToolRules)
    tool_prices_usd: dict[str, NonNegativeUSD] = Field(default_factory=dict)
    approvals: list[ApprovalRule] = Field(default_factory=list, max_length=MAX_APPROVAL_RULES)
    anomalies: AnomalyParams = Field(default_factory=AnomalyParams)
    enforcement: Enforcement = Enforcement.enforce  # DryRun and Warn never block in the SDK

    @pydantic.model_validator(mode="after")
    def _approval_names_unique(self) -> CostPolicySpec:
        seen: set[str] = set()
        for rule in self.approvals:
            if rule.name in seen:
                raise ValueError(f"approvals: more than one rule named {rule.name!r}")
            seen.add(rule.name)
        return self


# ---------------------------------------------------------------- CostApproval


class CostApprovalSpec(_Model):
    """What an agent asks a person to approve (crds/costapprovals.yaml ``spec``; immutable)."""
    _SHARED = False  # each object's own

    agent: str = Field(min_length=1, max_length=MAX_NAME_LENGTH)
    workflow: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    task_id: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    rule: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)  # policy/rule
    tool: str | None = Field(default=None, max_length=MAX_NAME_LENGTH)
    amount_usd: float | None = Field(default=None, ge=0)
    reason: str | None = Field(default=None, max_length=4096)
    requester: str = Field(min_length=1, max_length=512)
    expires_at: dt.datetime  # RFC 3339 in YAML/JSON (format: date-time)

    @pydantic.field_validator("expires_at", mode="before")
    @classmethod
    def _date_time_text(cls, value: Any) -> Any:
        # The CRD's type is string: a number (which pydantic would take as a Unix time) is refused.
        if not isinstance(value, (str, dt.datetime)):
            raise ValueError("expiresAt: an RFC 3339 date-time, e.g. 2030-01-01T12:00:00Z")
        return value

    @pydantic.field_validator("expires_at")
    @classmethod
    def _has_a_zone(cls, value: dt.datetime) -> dt.datetime:
        if value.tzinfo is None:
            raise ValueError("expiresAt: an RFC 3339 date-time needs a time zone, e.g. 2030-01-01T12:00:00Z")
        return value


# ---------------------------------------------------------------- whole resources


class Metadata(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True)
    _SHARED = False  # each object's own
    name: str
    namespace: str = "default"
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class AgentBudget(_Model):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["fleetwarden.dev/v1alpha1"] = "fleetwarden.dev/v1alpha1"
    kind: Literal["AgentBudget"] = "AgentBudget"
    metadata: Metadata
    spec: AgentBudgetSpec = Field(default_factory=AgentBudgetSpec)


class CostPolicy(_Model):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["fleetwarden.dev/v1alpha1"] = "fleetwarden.dev/v1alpha1"
    kind: Literal["CostPolicy"] = "CostPolicy"
    metadata: Metadata
    spec: CostPolicySpec = Field(default_factory=CostPolicySpec)


class CostApproval(_Model):
    model_config = ConfigDict(alias_generator=_camel, populate_by_name=True, extra="ignore", frozen=True)
    api_version: Literal["fleetwarden.dev/v1alpha1"] = "fleetwarden.dev/v1alpha1"
    kind: Literal["CostApproval"] = "CostApproval"
    metadata: Metadata
    spec: CostApprovalSpec  # the CRD requires spec (agent, requester and expiresAt have no default)


def parse_resource(doc: dict[str, Any]) -> AgentBudget | CostPolicy:
    """Validate one manifest document. Raises ``pydantic.ValidationError``."""
    kind = doc.get("kind")
    if kind == "AgentBudget":
        return AgentBudget.model_validate(doc)
    if kind == "CostPolicy":
        return CostPolicy.model_validate(doc)
    raise ValueError(f"kind {kind!r} is not AgentBudget or CostPolicy")
