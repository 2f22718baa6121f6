"""Shared e2e fixture: the Fleetwarden CRDs installed, exactly as a user installs them.

Use it with ``from fixtures_fleetwarden import crds_installed  # noqa: F401`` in a test
module (tests/e2e is on sys.path during collection), or register this module in
tests/e2e/conftest.py with ``pytest_plugins = ["fixtures_fleetwarden"]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT / "crds"


def crd_names() -> list[str]:
    """The names of the CRDs in crds/ (e.g. agentbudgets.fleetwarden.dev)."""
    names = []
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                names.append(doc["metadata"]["name"])
    return names


@pytest.fixture(scope="session")
def crds_installed(cluster: Any) -> list[str]:
    """`kubectl apply -f crds/`, then wait until every CRD is Established; returns their names."""
    cluster.kubectl("apply", "-f", str(CRDS))
    names = crd_names()
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    *[f"customresourcedefinition/{name}" for name in names], timeout=90)
    return names
