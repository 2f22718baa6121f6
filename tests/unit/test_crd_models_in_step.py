"""The CRDs in crds/ and the pydantic models in fleetwarden.core.spec say the same thing.

The walk compares the deployed CRD files (never a copy) with the models, field by field
and recursively: names, types, formats, defaults, enums, bounds, required fields, nullability and
descriptions. The examples are checked against the models: every valid manifest
validates, every invalid one is refused (or is marked as refused by the API server only).
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
import re
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pydantic
import pytest
import yaml

from fleetwarden.core import decision, spec

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"
EXAMPLES = ROOT / "examples"
INVALID = EXAMPLES / "invalid"

_BOUND_KEYS = {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength",
               "minItems", "maxItems", "minProperties", "maxProperties"}


def load_crd(file_name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((CRDS / file_name).read_text())
    return doc


def version_schema(crd: dict[str, Any]) -> dict[str, Any]:
    (version,) = crd["spec"]["versions"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# ---------------------------------------------------------------- the walk


def _unwrap(annotation: Any) -> tuple[Any, list[Any], bool]:
    """(bare type, constraint metadata from Annotated, whether None is allowed)."""
    metadata: list[Any] = []
    nullable = False
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            base, *extra = typing.get_args(annotation)
            for item in extra:
                metadata.extend(item.metadata if isinstance(item, pydantic.fields.FieldInfo) else [item])
            annotation = base
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(annotation) if a is not type(None)]
            nullable = nullable or len(args) < len(typing.get_args(annotation))
            assert len(args) == 1, f"unions other than Optional are not mapped: {annotation}"
            annotation = args[0]
        else:
            return annotation, metadata, nullable


def _expected_bounds(metadata: list[Any], kind: str) -> dict[str, Any]:
    """The schema bounds pydantic constraints stand for; kind: string, array, object or number."""
    length = {"string": ("minLength", "maxLength"), "array": ("minItems", "maxItems"),
              "object": ("minProperties", "maxProperties")}.get(kind, ("minLength", "maxLength"))
    out: dict[str, Any] = {}
    for item in metadata:
        if isinstance(item, annotated_types.Gt):
            out.update(minimum=item.gt, exclusiveMinimum=True)
        elif isinstance(item, annotated_types.Ge):
            out["minimum"] = item.ge
        elif isinstance(item, annotated_types.Lt):
            out.update(maximum=item.lt, exclusiveMaximum=True)
        elif isinstance(item, annotated_types.Le):
            out["maximum"] = item.le
        elif isinstance(item, annotated_types.MinLen):
            out[length[0]] = item.min_length
        elif isinstance(item, annotated_types.MaxLen):
            out[length[1]] = item.max_length
        elif isinstance(item, pydantic.PlainSerializer):
            continue  # how a value is written (status timestamps), not a constraint
        else:
            raise AssertionError(f"constraint {item!r} has no CRD counterpart in this walk")
    return out


def _schema_bounds(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k in _BOUND_KEYS and v is not False}


def _same_value(a: Any, b: Any) -> bool:
    """Equal, and a bool is never equal to a number (True == 1 in Python)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def compare_type(path: str, annotation: Any, metadata: list[Any], schema: dict[str, Any],
                 errors: list[str]) -> None:
    """Compare one value's type, enum and bounds (recursing into lists, maps and models)."""
    base, more, _ = _unwrap(annotation)
    metadata = [*metadata, *more]
    origin = typing.get_origin(base)
    if base is str:
        kind: str = "string"
    elif base is dt.datetime:
        kind = "string"
    elif base is bool:
        kind = "boolean"
    elif base is int:
        kind = "integer"
    elif base is float:
        kind = "number"
    elif isinstance(base, type) and issubclass(base, enum.Enum):
        kind = "string"
        if schema.get("enum") != [m.value for m in base]:
            errors.append(f"{path}: enum {schema.get('enum')} != model {[m.value for m in base]}")
    elif origin is typing.Literal:
        kind = "string"
        if schema.get("enum") != list(typing.get_args(base)):
            errors.append(f"{path}: enum {schema.get('enum')} != model {list(typing.get_args(base))}")
    elif origin is list:
        kind = "array"
        if "items" not in schema:
            errors.append(f"{path}: array without items")
        else:
            (item,) = typing.get_args(base)
            compare_type(f"{path}[]", item, [], schema["items"], errors)
    elif origin is dict:
        kind = "object"
        key, value = typing.get_args(base)
        if key is not str:
            errors.append(f"{path}: map keys must be strings, model has {key}")
        if "properties" in schema or "additionalProperties" not in schema:
            errors.append(f"{path}: a map is an object with additionalProperties and no properties")
        else:
            compare_type(f"{path}{{}}", value, [], schema["additionalProperties"], errors)
    elif isinstance(base, type) and issubclass(base, pydantic.BaseModel):
        kind = "object"
        compare_model(path, base, schema, errors)
    else:
        raise AssertionError(f"{path}: type {base!r} is not mapped by this walk")

    if schema.get("type") != kind:
        errors.append(f"{path}: type {schema.get('type')!r} != model {kind!r}")
    want_format = "date-time" if base is dt.datetime else None
    if kind == "integer" and schema.get("format") in ("int32", "int64"):
        want_format = schema["format"]  # the Kubernetes integer formats say how wide, nothing a model mirrors
    if schema.get("format") != want_format:
        errors.append(f"{path}: format {schema.get('format')!r} != model {want_format!r}")
    if "enum" in schema and kind != "string":
        errors.append(f"{path}: enum on a non-string")
    if "enum" in schema and not (isinstance(base, type) and issubclass(base, enum.Enum)) \
            and typing.get_origin(base) is not typing.Literal:
        errors.append(f"{path}: schema has an enum the model lacks")
    want, have = _expected_bounds(metadata, kind), _schema_bounds(schema)
    if want != have:
        errors.append(f"{path}: bounds {have} != model {want}")


def compare_model(path: str, model: type[pydantic.BaseModel], schema: dict[str, Any], errors: list[str]) -> None:
    """Compare a model with an object schema: the same properties, both ways, each compared."""
    props: dict[str, Any] = schema.get("properties", {})
    fields = {(f.alias or name): f for name, f in model.model_fields.items()}
    for name in sorted(set(fields) - set(props)):
        errors.append(f"{path}.{name}: in the model, not in the CRD")
    for name in sorted(set(props) - set(fields)):
        errors.append(f"{path}.{name}: in the CRD, not in the model")
    required = {name for name, f in fields.items() if f.is_required()}
    if set(schema.get("required", [])) != required:
        errors.append(f"{path}: required {sorted(schema.get('required', []))} != model {sorted(required)}")
    for name in sorted(set(fields) & set(props)):
        field, prop, where = fields[name], props[name], f"{path}.{name}"
        if not str(prop.get("description", "")).strip():
            errors.append(f"{where}: no description")
        _, _, allows_none = _unwrap(field.annotation)
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        if field.is_required() or default is None:
            if "default" in prop:
                errors.append(f"{where}: CRD default {prop['default']!r}, model has none")
        elif isinstance(default, pydantic.BaseModel):
            # a nested object defaults to {} (or more), so that its own defaults apply
            crd_default = prop.get("default")
            if not isinstance(crd_default, dict) or type(default).model_validate(crd_default) != default:
                errors.append(f"{where}: CRD default {crd_default!r} must be an object that means the model's default")
        elif isinstance(default, (list, dict)) and not default:
            if "default" in prop and prop["default"] != default:
                errors.append(f"{where}: CRD default {prop['default']!r} != model {default!r}")
        else:
            want = default.value if isinstance(default, enum.Enum) else default
            if "default" not in prop or not _same_value(prop["default"], want):
                errors.append(f"{where}: CRD default {prop.get('default')!r} != model {want!r}")
        # null must survive (and not be defaulted) only where None differs from the default
        want_nullable = allows_none and not field.is_required() and default is not None
        if bool(prop.get("nullable", False)) != want_nullable:
            errors.append(f"{where}: nullable {prop.get('nullable', False)} != model {want_nullable}")
        compare_type(where, field.annotation, list(field.metadata), prop, errors)


def mismatches(model: type[pydantic.BaseModel], schema: dict[str, Any]) -> list[str]:
    errors: list[str] = []
    compare_type("spec", model, [], schema, errors)
    return errors


CASES = [("agentbudgets.yaml", spec.AgentBudgetSpec), ("costpolicies.yaml", spec.CostPolicySpec),
         ("costapprovals.yaml", spec.CostApprovalSpec)]


@pytest.mark.parametrize(("crd_file", "model"), CASES)
def test_crd_spec_matches_model(crd_file: str, model: type[pydantic.BaseModel]) -> None:
    """Every spec field has the same name, type, default, enum and bounds in CRD and model."""
    schema = version_schema(load_crd(crd_file))
    assert mismatches(model, schema["properties"]["spec"]) == []


def test_walk_fails_on_a_field_added_to_the_crd_only() -> None:
    """A property added deep in the CRD schema only is reported."""
    schema = copy.deepcopy(version_schema(load_crd("agentbudgets.yaml"))["properties"]["spec"])
    schema["properties"]["killSwitch"]["properties"]["graceMinutes"] = {"type": "integer", "description": "x"}
    assert mismatches(spec.AgentBudgetSpec, schema) == ["spec.killSwitch.graceMinutes: in the CRD, not in the model"]


def test_walk_fails_on_a_field_added_to_the_model_only() -> None:
    """A field added deep in the model only is reported."""
    class Loop(spec.RunawayLoopParams):
        grace_minutes: int = 3

    class Anomalies(spec.AnomalyParams):
        runaway_loop: Loop = pydantic.Field(default_factory=Loop)

    class Policy(spec.CostPolicySpec):
        anomalies: Anomalies = pydantic.Field(default_factory=Anomalies)

    schema = version_schema(load_crd("costpolicies.yaml"))["properties"]["spec"]
    assert mismatches(Policy, schema) == ["spec.anomalies.runawayLoop.graceMinutes: in the model, not in the CRD"]


@pytest.mark.parametrize(("pointer", "change", "expected"), [
    ("limits.items.warningPercent", {"default": 90.0}, "CRD default 90.0 != model 80.0"),
    ("limits.items.warningPercent", {"maximum": 101}, "bounds"),
    ("limits.items.window", {"enum": ["hour", "day", "month", "week"]}, "enum"),
    ("limits.items.amountUSD", {"type": "integer"}, "type 'integer' != model 'number'"),
    ("killSwitch.enabled", {"default": 1}, "CRD default 1 != model True"),
    ("model.envVar", {"nullable": False}, "nullable"),
    ("owner.team", {"description": ""}, "no description"),
    ("fixedMonthlyCostsUSD", {"additionalProperties": {"type": "number"}}, "bounds"),
    ("model", {"default": None}, "means the model's default"),
    ("killSwitch", {"default": {"enabled": False}}, "means the model's default"),
])
def test_walk_fails_on_a_changed_detail(pointer: str, change: dict[str, Any], expected: str) -> None:
    """A changed type, default, enum, bound, nullability or a missing description is reported."""
    schema = copy.deepcopy(version_schema(load_crd("agentbudgets.yaml"))["properties"]["spec"])
    node = schema
    for part in pointer.split("."):
        node = node["items"] if part == "items" else node["properties"][part]
    node.update(change)
    found = mismatches(spec.AgentBudgetSpec, schema)
    assert len(found) == 1 and expected in found[0], found


def _approval_spec_schema() -> dict[str, Any]:
    return copy.deepcopy(version_schema(load_crd("costapprovals.yaml"))["properties"]["spec"])


def test_walk_fails_on_a_costapproval_field_added_to_the_crd_only() -> None:
    """A property added to the CostApproval CRD only is reported."""
    schema = _approval_spec_schema()
    schema["properties"]["priority"] = {"type": "integer", "description": "x"}
    assert mismatches(spec.CostApprovalSpec, schema) == ["spec.priority: in the CRD, not in the model"]


def test_walk_fails_on_a_costapproval_field_added_to_the_model_only() -> None:
    """A field added to the CostApprovalSpec model only is reported."""
    class Approval(spec.CostApprovalSpec):
        priority: int = 0

    assert mismatches(Approval, _approval_spec_schema()) == ["spec.priority: in the model, not in the CRD"]


@pytest.mark.parametrize(("pointer", "change", "expected"), [
    ("expiresAt", {"format": "date"}, "format 'date' != model 'date-time'"),
    ("expiresAt", {"type": "integer"}, "type 'integer' != model 'string'"),
    ("agent", {"format": "date-time"}, "format 'date-time' != model None"),
    ("requester", {"maxLength": 253}, "bounds"),
    ("amountUSD", {"minimum": 0.01}, "bounds"),
    ("taskId", {"default": ""}, "CRD default '', model has none"),
    ("reason", {"nullable": True}, "nullable"),
    ("tool", {"enum": ["crm.search"]}, "enum the model lacks"),
])
def test_walk_fails_on_a_changed_costapproval_detail(pointer: str, change: dict[str, Any], expected: str) -> None:
    """A changed CostApproval type, format, bound, default, nullability or enum is reported."""
    schema = _approval_spec_schema()
    schema["properties"][pointer].update(change)
    found = mismatches(spec.CostApprovalSpec, schema)
    assert len(found) == 1 and expected in found[0], found


def test_walk_fails_on_a_changed_costapproval_required_list() -> None:
    """A field made optional in the CostApproval CRD only is reported."""
    schema = _approval_spec_schema()
    schema["required"] = ["agent", "requester"]
    assert mismatches(spec.CostApprovalSpec, schema) == [
        "spec: required ['agent', 'requester'] != model ['agent', 'expiresAt', 'requester']"]


# ---------------------------------------------------------------- the rest of the CRDs


@pytest.mark.parametrize(("crd_file", "kind", "short_names"), [
    ("agentbudgets.yaml", "AgentBudget", ["ab", "abudget"]),
    ("costpolicies.yaml", "CostPolicy", ["cp", "cpol"]),
    ("costapprovals.yaml", "CostApproval", ["capp"]),
])
def test_crd_identity(crd_file: str, kind: str, short_names: list[str]) -> None:
    """Group, version, scope, names, category and the status subresource are as documented."""
    crd = load_crd(crd_file)
    assert crd["spec"]["group"] == spec.GROUP
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["metadata"]["name"] == f"{crd['spec']['names']['plural']}.{spec.GROUP}"
    assert crd["spec"]["names"]["kind"] == kind
    assert crd["spec"]["names"]["shortNames"] == short_names
    assert crd["spec"]["names"]["categories"] == ["fleetwarden"]
    (version,) = crd["spec"]["versions"]
    assert (version["name"], version["served"], version["storage"]) == (spec.VERSION, True, True)
    assert version["subresources"] == {"status": {}}


def _resolve(schema: dict[str, Any], json_path: str) -> dict[str, Any] | None:
    node: dict[str, Any] | None = schema
    for part in re.findall(r"\.([A-Za-z0-9]+)(\[[^\]]*\])?", json_path):
        name, index = part
        if node is None or name not in node.get("properties", {}):
            return None
        node = node["properties"][name]
        if index:
            node = node.get("items")
    return node


@pytest.mark.parametrize("crd_file", ["agentbudgets.yaml", "costpolicies.yaml", "costapprovals.yaml"])
def test_printer_columns_point_at_declared_fields(crd_file: str) -> None:
    """Each printer column reads a field the schema declares (else it would print nothing)."""
    (version,) = load_crd(crd_file)["spec"]["versions"]
    schema = version["schema"]["openAPIV3Schema"]
    for column in version["additionalPrinterColumns"]:
        if column["jsonPath"].startswith(".metadata."):
            continue
        assert _resolve(schema, column["jsonPath"]) is not None, column


def test_agentbudget_printer_columns_tell_the_story() -> None:
    """AgentBudget lists Window, Spend, Cap, Used%, State and Age from status.summary and status.state."""
    (version,) = load_crd("agentbudgets.yaml")["spec"]["versions"]
    columns = [(c["name"], c["jsonPath"]) for c in version["additionalPrinterColumns"]]
    assert columns == [
        ("Window", ".status.summary.window"), ("Spend", ".status.summary.spendUSD"),
        ("Cap", ".status.summary.capUSD"), ("Used%", ".status.summary.percentUsed"),
        ("State", ".status.state"), ("Mode", ".spec.enforcement"), ("Age", ".metadata.creationTimestamp"),
    ]


@pytest.mark.parametrize("crd_file", ["agentbudgets.yaml", "costpolicies.yaml"])
def test_status_conditions_have_the_metav1_shape(crd_file: str) -> None:
    """status.conditions is a list map keyed by type, with the metav1.Condition fields."""
    conditions = version_schema(load_crd(crd_file))["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration"}


def _walk_schema(schema: dict[str, Any], path: str = "") -> typing.Iterator[tuple[str, dict[str, Any]]]:
    yield path, schema
    for name, prop in schema.get("properties", {}).items():
        yield from _walk_schema(prop, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            yield from _walk_schema(schema[key], f"{path}[]")


@pytest.mark.parametrize("crd_file", ["agentbudgets.yaml", "costpolicies.yaml", "costapprovals.yaml"])
def test_every_status_field_is_described_and_every_rule_has_a_message(crd_file: str) -> None:
    """kubectl explain has a description for each field; each CEL rule tells the user what is wrong."""
    schema = version_schema(load_crd(crd_file))
    for path, node in _walk_schema(schema):
        if path.count(".") and not path.endswith("[]") and path != ".metadata":
            assert str(node.get("description", "")).strip(), f"{path}: no description"
        for rule in node.get("x-kubernetes-validations", []):
            assert rule.get("message") or rule.get("messageExpression"), f"{path}: rule without message"


# ---------------------------------------------------------------- the examples


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


EXAMPLE_DIRS = sorted(p for p in EXAMPLES.iterdir() if p.is_dir() and p.name != "invalid")


def test_there_are_three_example_fleets() -> None:
    """support-swarm, procurement and lead-generation are the example fleets."""
    assert [p.name for p in EXAMPLE_DIRS] == ["lead-generation", "procurement", "support-swarm"]


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_example_resources_validate_with_the_models(example: Path) -> None:
    """Each example's AgentBudget and CostPolicy validate with the pydantic models."""
    kinds = []
    for path in sorted(example.glob("*.yaml")):
        for doc in _docs(path):
            if doc["apiVersion"] == spec.API_VERSION:
                spec.parse_resource(doc)
                kinds.append(doc["kind"])
    assert sorted(kinds) == ["AgentBudget", "CostPolicy"]


OWNER_LABELS = ("app.kubernetes.io/name", "fleetwarden.dev/budget", "role", "budget-tier", "team", "project",
                "cost-center")


@pytest.mark.parametrize("example", EXAMPLE_DIRS, ids=lambda p: p.name)
def test_example_selectors_pick_the_example_agents(example: Path) -> None:
    """The budget and policy select every example Deployment, which carries the owner labels and MODEL."""
    docs = [d for path in sorted(example.glob("*.yaml")) for d in _docs(path)]
    deployments = [d for d in docs if d["kind"] == "Deployment"]
    resources = [spec.parse_resource(d) for d in docs if d["apiVersion"] == spec.API_VERSION]
    assert deployments
    for deployment in deployments:
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert set(OWNER_LABELS) <= set(labels), deployment["metadata"]["name"]
        assert deployment["metadata"]["labels"] == labels
        env = {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env.get("MODEL"), deployment["metadata"]["name"]
        for resource in resources:
            assert resource.metadata.namespace == deployment["metadata"]["namespace"]
            assert resource.spec.selector.matches(labels), (resource.metadata.name, deployment["metadata"]["name"])


# Which invalid manifests pydantic refuses too (so `fleetwarden replay` refuses them), and
# whether its message carries the same `# expect:` text. Every file must be listed here.
PYDANTIC = "pydantic"
PYDANTIC_SAME_MESSAGE = "pydantic, same message"
SERVER_ONLY = "API server only"
INVALID_TABLE = {
    "approval-without-trigger.yaml": PYDANTIC_SAME_MESSAGE,
    "cheaper-model-without-model.yaml": PYDANTIC,
    "bad-name.yaml": SERVER_ONLY,  # object names are the API server's business
    "calls-per-workflow-without-tool.yaml": PYDANTIC_SAME_MESSAGE,
    "duplicate-approval-name.yaml": PYDANTIC,
    "kill-switch-window-without-limit.yaml": PYDANTIC_SAME_MESSAGE,
    "kill-threshold-90.yaml": PYDANTIC,
    "missing-amount.yaml": PYDANTIC,
    "model-without-source.yaml": PYDANTIC_SAME_MESSAGE,
    "negative-amount.yaml": PYDANTIC,
    "negative-tool-price.yaml": PYDANTIC,
    "selector-labels-as-list.yaml": PYDANTIC,
    "selector-operator-lowercase.yaml": PYDANTIC,
    "spike-ratio-below-one.yaml": PYDANTIC,
    "tool-allowed-and-denied.yaml": PYDANTIC_SAME_MESSAGE,
    "two-limits-same-window.yaml": PYDANTIC_SAME_MESSAGE,
    "typo-kill-switch-field.yaml": PYDANTIC,
    "unknown-window-week.yaml": PYDANTIC,
    "warning-percent-120.yaml": PYDANTIC,
    "zero-token-cap.yaml": PYDANTIC,
}


def expected_error(path: Path) -> str:
    """The `# expect: ...` text on the first line of an invalid example."""
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# expect: (.+)", first)
    assert match, f"{path.name}: first line must be '# expect: <error text>'"
    return match.group(1).strip()


def test_invalid_table_lists_every_invalid_example() -> None:
    """Each file in examples/invalid/ is classified in the table, and nothing else is."""
    assert sorted(p.name for p in INVALID.glob("*.yaml")) == sorted(INVALID_TABLE)


@pytest.mark.parametrize(("name", "refused_by"), sorted(INVALID_TABLE.items()))
def test_invalid_example_is_refused(name: str, refused_by: str) -> None:
    """An invalid example holds one resource that pydantic refuses, unless only the API server can."""
    path = INVALID / name
    expect = expected_error(path)
    (doc,) = _docs(path)
    if refused_by == SERVER_ONLY:
        spec.parse_resource(doc)  # accepted here; tests/e2e/test_examples.py shows the API server refuses it
        return
    with pytest.raises(pydantic.ValidationError) as refused:
        spec.parse_resource(doc)
    if refused_by == PYDANTIC_SAME_MESSAGE:
        assert expect in str(refused.value)


# ---------------------------------------------------------------- the status the operator writes


def undeclared(value: Any, schema: dict[str, Any], path: str = "status") -> list[str]:
    """Paths in ``value`` the schema does not declare (the API server would prune them)."""
    out: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            if props is not None and key in props:
                out += undeclared(item, props[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                out += undeclared(item, extra, f"{path}.{key}")
            else:
                out.append(f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += undeclared(item, schema.get("items", {}), f"{path}[{i}]")
    return out


def test_evaluated_status_fits_the_crd_status_schema() -> None:
    """The status fleetwarden.core.evaluate writes (a kill cycle) is declared whole by the CRD and valid."""
    import jsonschema

    from fleetwarden.core import evaluate
    from fleetwarden.core.series import AgentMinute

    now = 1_800_000_000.0
    (doc,) = [d for d in _docs(EXAMPLES / "support-swarm" / "20-agentbudget.yaml")]
    doc["metadata"]["generation"] = 2
    budget = spec.AgentBudget.model_validate(doc)
    agents = [decision.AgentDeployment(name, "support", {"fleetwarden.dev/budget": "support-swarm"}, replicas,
                                  model="gpt-4o") for name, replicas in (("support-triage", 2), ("support-resolver", 3))]
    start = int(now // 60) * 60 - 30 * 60
    minutes = {a.name: [AgentMinute(a.name, "support", start + 60 * i, inference_cost_usd=0.5, tool_cost_usd=0.1,
                                    tokens=9000, output_tokens=900, llm_calls=6, tasks_completed=2, outcomes=1,
                                    tool_calls={"crm.search": 4.0}, tool_costs={"crm.search": 0.1},
                                    model="gpt-4o", workflow="resolve_ticket") for i in range(30)]
               for a in agents}
    status: dict[str, Any] = {}
    for hour in (18.0, 40.0):  # a warning, then past 150% of the hourly cap: the kill switch engages
        verdict = evaluate.evaluate(decision.EvaluationInput(
            budget=budget, agents=agents, minutes=minutes,
            spend={spec.Window.hour: hour, spec.Window.day: 120.0, spec.Window.month: 900.0},
            now=now, previous=status, generation=2))
        status = verdict.status.body()
        now += 60
    assert status["killSwitch"]["engaged"] is True  # the cycle reached the parts of the status under test
    schema = version_schema(load_crd("agentbudgets.yaml"))["properties"]["status"]
    assert undeclared(status, schema) == []
    jsonschema.Draft4Validator(schema).validate(status)


def test_status_of_a_resume_cycle_fits_the_crd_status_schema() -> None:
    """Kill, acknowledge and resume, with outcomes, guardrail findings and a pending approval: every
    field evaluate writes (spendAtResumeUSD, costPerOutcomeUSD, incident tools, ApprovalPending) is declared."""
    import jsonschema

    from fleetwarden.core import evaluate
    from fleetwarden.core.series import AgentMinute

    now = 1_800_000_000.0
    (doc,) = [d for d in _docs(EXAMPLES / "support-swarm" / "20-agentbudget.yaml")]
    doc["metadata"]["generation"] = 2
    agents = [decision.AgentDeployment(name, "support", {"fleetwarden.dev/budget": "support-swarm"}, replicas,
                                  model="gpt-4o") for name, replicas in (("support-triage", 2), ("support-resolver", 3))]
    start = int(now // 60) * 60 - 30 * 60
    minutes = {a.name: [AgentMinute(a.name, "support", start + 60 * i, inference_cost_usd=0.5, human_cost_usd=0.2,
                                    tokens=9000, output_tokens=900, llm_calls=6, tasks_completed=2, outcomes=1,
                                    tool_calls={"crm.search": 4.0}, model="gpt-4o", workflow="resolve_ticket")
                        for i in range(30)] for a in agents}
    outcomes = {a.name: {start + 60 * i: {"resolved_ticket": 1.0} for i in range(30)} for a in agents}
    guardrails = {"support-triage": {start + 600: {("token_cap_exceeded", ""): 2.0,
                                                   ("tool_not_allowed", "shell.exec"): 1.0}}}
    approvals = [decision.PendingApproval("support-triage-x1", "support-triage", expires_at=now + 3600)]
    status: dict[str, Any] = {}
    for step, hour in enumerate((40.0, 40.0, 41.0)):  # kill; acknowledge -> resume; evaluated after the resume
        if step == 1:
            doc["spec"].setdefault("killSwitch", {})["acknowledge"] = status["killSwitch"]["incident"]
        verdict = evaluate.evaluate(decision.EvaluationInput(
            budget=spec.AgentBudget.model_validate(doc), agents=agents, minutes=minutes,
            spend={spec.Window.hour: hour, spec.Window.day: 120.0, spec.Window.month: 900.0},
            now=now, previous=status, generation=2, outcomes=outcomes, guardrails=guardrails,
            approvals=approvals, lookback_start=float(start)))
        status = verdict.status.body()
        now += 60
    # the cycle reached the parts of the status under test
    assert status["killSwitch"]["resumedAt"] and status["killSwitch"]["spendAtResumeUSD"] == 40.0
    assert status["costPerOutcomeUSD"]["resolved_ticket"] > 0
    assert any(i.get("tool") == "shell.exec" for i in status["incidents"])
    assert any(c["type"] == "ApprovalPending" and c["status"] == "True" for c in status["conditions"])
    schema = version_schema(load_crd("agentbudgets.yaml"))["properties"]["status"]
    assert undeclared(status, schema) == []
    jsonschema.Draft4Validator(schema).validate(status)


# ---------------------------------------------------------------- CostApproval bodies


def _approval_body(**spec_fields: Any) -> dict[str, Any]:
    """A CostApproval as fleetwarden.adapters.approvals.Approvals.create writes it."""
    body_spec = {"agent": "procurement-buyer", "requester": "system:serviceaccount:procurement:buyer",
                 "expiresAt": "2030-01-01T12:00:00Z", "workflow": "purchase_order", "taskId": "po-17",
                 "rule": "procurement/big-purchase", "tool": "erp.create_po", "amountUSD": 1250.0,
                 "reason": "purchase above 1000 USD"}
    body_spec.update(spec_fields)
    return {"apiVersion": spec.API_VERSION, "kind": "CostApproval",
            "metadata": {"name": "procurement-buyer-x1", "namespace": "procurement"},
            "spec": {k: v for k, v in body_spec.items() if v is not None},
            "status": {"decision": "Approved", "decidedBy": "alice", "decidedAt": "2030-01-01T11:00:00Z"}}


def test_costapproval_model_reads_and_writes_what_the_crd_accepts() -> None:
    """A CostApproval body validates with the model, and the model writes it back as the CRD's schema wants."""
    import jsonschema

    approval = spec.CostApproval.model_validate(_approval_body())
    assert approval.spec.expires_at == dt.datetime(2030, 1, 1, 12, tzinfo=dt.timezone.utc)
    assert approval.spec.amount_usd == 1250.0 and approval.spec.task_id == "po-17"
    written = approval.spec.model_dump(mode="json", by_alias=True, exclude_none=True)
    assert written == _approval_body()["spec"]
    schema = version_schema(load_crd("costapprovals.yaml"))["properties"]["spec"]
    jsonschema.Draft4Validator(schema, format_checker=jsonschema.FormatChecker()).validate(written)


@pytest.mark.parametrize(("change", "field"), [
    ({"expiresAt": 1893499200}, "expiresAt"),  # a number: the CRD's type is string
    ({"expiresAt": "2030-01-01T12:00:00"}, "expiresAt"),  # no time zone: not RFC 3339
    ({"expiresAt": "tomorrow"}, "expiresAt"),
    ({"expiresAt": None}, "expiresAt"),  # required
    ({"agent": ""}, "agent"),
    ({"requester": None}, "requester"),
    ({"amountUSD": -1}, "amountUSD"),
    ({"tool": "t" * 254}, "tool"),
    ({"reason": "r" * 4097}, "reason"),
    ({"amountUsd": 5}, "amountUsd"),  # a misspelt field is refused, not dropped
])
def test_costapproval_model_refuses_what_the_crd_refuses(change: dict[str, Any], field: str) -> None:
    """A CostApproval spec the CRD refuses is refused by the model too, naming the field."""
    with pytest.raises(pydantic.ValidationError) as refused:
        spec.CostApproval.model_validate(_approval_body(**change))
    assert field in str(refused.value)


def test_crd_status_matches_the_typed_status_model() -> None:
    """The AgentBudget status the operator writes is a typed model, field for field the CRD's status."""
    from fleetwarden.core import status

    schema = version_schema(load_crd("agentbudgets.yaml"))["properties"]["status"]
    errors: list[str] = []
    compare_type("status", status.AgentBudgetStatus, [], schema, errors)
    assert errors == []


def test_walk_fails_on_a_status_field_added_to_the_crd_only() -> None:
    """A status property added in the CRD only (deep in the kill switch) is reported."""
    from fleetwarden.core import status

    schema = copy.deepcopy(version_schema(load_crd("agentbudgets.yaml"))["properties"]["status"])
    schema["properties"]["killSwitch"]["properties"]["retries"] = {"type": "integer", "description": "x"}
    errors: list[str] = []
    compare_type("status", status.AgentBudgetStatus, [], schema, errors)
    assert errors == ["status.killSwitch.retries: in the CRD, not in the model"]
