"""Load AgentBudget and CostPolicy manifests from YAML files and directories.

The same files that go to the cluster (``kubectl apply -f``): multi-document YAML;
directories are read recursively for ``*.yaml``/``*.yml`` (sorted, so the result does not
depend on the file system). Documents of other kinds (Deployment, Namespace, CostApproval,
...) are skipped and counted. An invalid AgentBudget or CostPolicy is a
:class:`~fleetwarden.errors.ManifestError` naming the file, the line and the field
(``examples/budget.yaml, line 12, field 'spec.limits[0].amountUSD': ...``); so are invalid
YAML and two manifests of the same kind, namespace and name.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pydantic
import yaml

from fleetwarden import errors
from fleetwarden.core import spec

KINDS = ("AgentBudget", "CostPolicy")
# What the API server accepts as an object name (RFC 1123 subdomain) and a namespace (label).
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclasses.dataclass
class Manifests:
    budgets: list[spec.AgentBudget] = dataclasses.field(default_factory=list)
    policies: list[spec.CostPolicy] = dataclasses.field(default_factory=list)
    files: int = 0
    skipped: int = 0  # documents of other kinds
    where: dict[tuple[str, str, str], str] = dataclasses.field(default_factory=dict)  # (kind, ns, name) -> file:line


def yaml_files(path: str | os.PathLike[str]) -> list[Path]:
    """The YAML files of a path: itself, or every *.yaml/*.yml below a directory (sorted)."""
    p = Path(path)
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in (".yaml", ".yml"))
    if not p.exists():
        raise errors.ManifestError("no such file or directory", file=str(p))
    return [p]


def _loc_text(loc: Sequence[int | str]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def object_error(exc: pydantic.ValidationError, prefix: str = "") -> errors.ManifestError:
    """A resource the API server holds that does not validate, as one line naming the field of
    its first problem (``field 'spec.limits.0.amountUSD': Input should be greater than 0``);
    ``prefix`` goes before the error's location ("spec" when only the spec was validated)."""
    first = exc.errors()[0]
    loc = [str(p) for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    field = ".".join([prefix, *loc] if prefix else loc) or None
    return errors.ManifestError(" ".join(str(first["msg"]).split()), field=field)


def _node_at(node: yaml.Node, loc: Sequence[int | str]) -> yaml.Node:
    """The deepest YAML node along a pydantic error location (for its line number)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == part), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            nxt = node.value[part]
        else:
            nxt = None
        if nxt is None:
            break
        node = nxt
    return node


def _documents(path: Path) -> Iterable[tuple[int, yaml.Node, Any]]:
    """(document number, node, value) of every non-empty document of a YAML file."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.ManifestError(f"cannot read: {exc}", file=str(path)) from None
    loader = yaml.SafeLoader(text)
    number = 0
    try:
        while loader.check_node():
            node = loader.get_node()
            number += 1
            if node is None:
                continue
            yield number, node, loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reason = getattr(exc, "problem", None) or str(exc)
        raise errors.ManifestError(f"not valid YAML: {reason}", file=str(path),
                                   line=mark.line + 1 if mark is not None else None) from None
    finally:
        loader.dispose()


def parse_document(doc: Any, node: yaml.Node | None, *, file: str,
                   number: int) -> spec.AgentBudget | spec.CostPolicy | None:
    """One document: an AgentBudget/CostPolicy, or None for another kind. Raises ManifestError."""
    line = node.start_mark.line + 1 if node is not None else None
    if not isinstance(doc, dict):
        raise errors.ManifestError(f"document {number} is not a Kubernetes object (a mapping)", file=file, line=line)
    kind = doc.get("kind")
    api = doc.get("apiVersion")
    if kind not in KINDS or not (isinstance(api, str) and api.split("/")[0] == spec.GROUP):
        return None
    try:
        res = spec.parse_resource(doc)
    except pydantic.ValidationError as exc:
        err = exc.errors()[0]
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _node_at(node, loc) if node is not None else None
        name = (doc.get("metadata") or {}).get("name") if isinstance(doc.get("metadata"), dict) else None
        what = f"{kind} {name}" if name else str(kind)
        reason = err["msg"]
        if "input" in err and err["type"] not in ("missing",):
            reason += f", got {err['input']!r}"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise errors.ManifestError(
            f"document {number} ({what}): {reason}{more}", file=file,
            line=where.start_mark.line + 1 if where is not None else line,
            field=_loc_text(loc) or None) from None
    meta = res.metadata
    for field, value, pattern, most in (("metadata.name", meta.name, _DNS_SUBDOMAIN, 253),
                                        ("metadata.namespace", meta.namespace, _DNS_LABEL, 63)):
        if not (len(value) <= most and pattern.fullmatch(value)):
            where = _node_at(node, field.split(".")) if node is not None else None
            chars = "letters, digits, '-' and '.'" if field == "metadata.name" else "letters, digits and '-'"
            raise errors.ManifestError(
                f"document {number} ({kind} {meta.name}): must be a lowercase RFC 1123 name ({chars}, "
                f"at most {most} characters), got {value!r}",
                file=file, line=where.start_mark.line + 1 if where is not None else line, field=field)
    return res


def load(paths: Iterable[str | os.PathLike[str]]) -> Manifests:
    """Every AgentBudget and CostPolicy under ``paths`` (files or directories)."""
    out = Manifests()
    for path in paths:
        for f in yaml_files(path):
            out.files += 1
            for number, node, doc in _documents(f):
                res = parse_document(doc, node, file=str(f), number=number)
                if res is None:
                    out.skipped += 1
                    continue
                key = (res.kind, res.metadata.namespace, res.metadata.name)
                here = f"{f}:{node.start_mark.line + 1}"
                if key in out.where:
                    raise errors.ManifestError(
                        f"{res.kind} {res.metadata.namespace}/{res.metadata.name} is also defined at {out.where[key]}",
                        file=str(f), line=node.start_mark.line + 1)
                out.where[key] = here
                if isinstance(res, spec.AgentBudget):
                    out.budgets.append(res)
                else:
                    out.policies.append(res)
    return out
