"""Loading AgentBudget/CostPolicy YAML: multi-document files, directories, and errors naming file, line and field."""

from __future__ import annotations

import pathlib

import pydantic
import pytest

from fleetwarden import errors
from fleetwarden.core import manifests, spec

GOOD = """\
apiVersion: v1
kind: Namespace
metadata: {name: support}
---
apiVersion: fleetwarden.dev/v1alpha1
kind: AgentBudget
metadata: {name: swarm, namespace: support}
spec:
  limits:
    - window: hour
      amountUSD: 20
---
apiVersion: fleetwarden.dev/v1alpha1
kind: CostPolicy
metadata: {name: swarm, namespace: support}
spec:
  tokenCaps: {perTask: 1000}
"""


def test_multi_document_file_and_other_kinds_skipped(tmp_path: pathlib.Path) -> None:
    """A multi-document file yields its budgets and policies; other kinds are skipped and counted."""
    (tmp_path / "all.yaml").write_text(GOOD)
    m = manifests.load([tmp_path / "all.yaml"])
    assert [b.metadata.name for b in m.budgets] == ["swarm"] and m.budgets[0].spec.limits[0].amount_usd == 20
    assert [p.spec.token_caps.per_task for p in m.policies] == [1000]
    assert (m.files, m.skipped) == (1, 1)


def test_directories_are_read_recursively_for_yaml_only(tmp_path: pathlib.Path) -> None:
    """A directory is read recursively for *.yaml and *.yml; other files are ignored."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.yml").write_text(GOOD.split("---\n")[1])
    (tmp_path / "c.yaml").write_text(GOOD.split("---\n")[2])
    (tmp_path / "notes.txt").write_text("kind: AgentBudget\n")
    m = manifests.load([tmp_path])
    assert (len(m.budgets), len(m.policies), m.files) == (1, 1, 2)


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        (GOOD.replace("amountUSD: 20", "amountUSD: -5"), 11, "spec.limits[0].amountUSD", "greater than 0"),
        (GOOD.replace("window: hour", "window: week"), 10, "spec.limits[0].window", "'hour', 'day' or 'month'"),
        (GOOD.replace("perTask: 1000", "perTask: 1000, bogus: 1"), 17, "spec.tokenCaps.bogus", "Extra inputs"),
        (GOOD.replace("name: swarm, namespace: support}\nspec:\n  limits",
                      "name: Swarm_1, namespace: support}\nspec:\n  limits"), 7, "metadata.name", "RFC 1123"),
        (GOOD.replace("spec:\n  limits:", "spec:\n  limits: [\n"), None, None, "not valid YAML"),
    ],
)
def test_invalid_manifests_name_file_line_and_field(tmp_path: pathlib.Path, text: str, line: int | None,
                                                    field: str | None, fragment: str) -> None:
    """An invalid manifest is a ManifestError naming the file, the line and the field."""
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(errors.ManifestError) as exc:
        manifests.load([path])
    assert exc.value.file == str(path) and fragment in str(exc.value)
    if line is not None:
        assert (exc.value.line, exc.value.field) == (line, field)


def test_duplicate_manifest_is_refused(tmp_path: pathlib.Path) -> None:
    """Two manifests of the same kind, namespace and name are refused, naming where the first was."""
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(errors.ManifestError, match="also defined at"):
        manifests.load([tmp_path])


def test_missing_path_is_an_error(tmp_path: pathlib.Path) -> None:
    """A path that does not exist is an error naming it."""
    with pytest.raises(errors.ManifestError, match="no such file"):
        manifests.load([tmp_path / "nope.yaml"])


@pytest.mark.parametrize(("model", "doc", "prefix", "expected"), [
    ("AgentBudget", {"metadata": {"name": "b"}, "spec": {"limits": [{"window": "hour", "amountUSD": 0}]}}, "",
     "field 'spec.limits.0.amountUSD': Input should be greater than 0"),
    ("AgentBudget", {"spec": {}}, "", "field 'metadata': Field required"),
    ("CostPolicySpec", {"tokenCaps": {"perTask": 0}}, "spec",
     "field 'spec.tokenCaps.perTask': Input should be greater than or equal to 1"),
    ("CostPolicySpec", {"selector": []}, "spec", "field 'spec.selector': Input should be a valid dictionary or instance of LabelSelector"),
])
def test_object_error_is_one_line_naming_the_field(model: str, doc: dict[str, object], prefix: str,
                                                   expected: str) -> None:
    """A resource read from the API server that does not validate: its first problem, with the field."""
    with pytest.raises(pydantic.ValidationError) as raised:
        getattr(spec, model).model_validate(doc)
    error = manifests.object_error(raised.value, prefix)
    assert isinstance(error, errors.ManifestError)
    assert str(error) == expected
