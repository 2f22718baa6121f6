"""The contracts in docs/contracts/ are the shared ones, and the code knows every finding kind they list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fleetwarden.core import findings

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "contracts"
SHARED = ROOT.parent / "shared" / "contracts"


@pytest.mark.skipif(not SHARED.is_dir(), reason="no shared contracts beside this checkout")
@pytest.mark.parametrize("name", sorted(p.name for p in SHARED.glob("*")) if SHARED.is_dir() else [])
def test_docs_contract_is_the_shared_one(name: str) -> None:
    """Each shared contract has a byte-identical copy in docs/contracts/."""
    copy = DOCS / name
    assert copy.is_file(), f"docs/contracts/{name} is missing: copy ../shared/contracts/{name}"
    assert copy.read_bytes() == (SHARED / name).read_bytes(), \
        f"docs/contracts/{name} differs from ../shared/contracts/{name}: copy it over"


def test_every_finding_kind_of_the_contract_is_known() -> None:
    """The kinds listed in docs/contracts/findings.md are exactly findings.KINDS, and each can be made."""
    text = (DOCS / "findings.md").read_text()
    listed = re.findall(r"^- `([a-z_]+)`:", text.split("Kinds:", 1)[1], flags=re.MULTILINE)
    assert sorted(listed) == sorted(findings.KINDS)
    for kind in listed:
        assert findings.Finding(kind=kind, agent="a", namespace="n", time=0.0, action="alert",
                                message="m").to_dict()["kind"] == kind
