"""kopf's start alone, for ``benchmarks/operator_scale.py --kopf-start`` (never installed).

A kopf handler module run in place of the operator (``python -m kopf run --standalone -A``
this file), watching what the operator watches at scale, AgentBudgets and Deployments, and
keeping the least the operator must: a compact copy of each (a budget's metadata and spec
without ``managedFields``; a Deployment's name, labels and replicas). Nothing is evaluated.
With ``FLEETWARDEN_BENCH_KOPF_INDEXES=1`` the copies are kopf indexes (``@kopf.index``, as
the operator keeps them, with the operator's patch of kopf's readiness from
handlers/kopftoggles.py), and kopf holds every object's worker until all are filled; with
``0`` the event handlers keep them in a dict of their own. Its memory is kopf's start plus
those copies. Settings from the environment: ``FLEETWARDEN_BENCH_KOPF_IDLE`` (kopf's
``queueing.idle_timeout``), ``FLEETWARDEN_BENCH_KOPF_CHUNK`` (``watching.chunk_size``).

It writes how many budgets and Deployments it has handled, once a second, as one line
``BUDGETS DEPLOYMENTS`` to ``FLEETWARDEN_BENCH_KOPF_COUNTS``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf


def _kopftoggles() -> Any:
    """The operator's ``handlers/kopftoggles.py``, loaded from its file: importing it as
    ``fleetwarden.handlers.kopftoggles`` would import the package, which registers the operator's
    own handlers."""
    package = importlib.util.find_spec("fleetwarden")
    assert package is not None and package.submodule_search_locations
    path = Path(next(iter(package.submodule_search_locations))) / "handlers" / "kopftoggles.py"
    spec = importlib.util.spec_from_file_location("fleetwarden_bench_kopftoggles", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_kopftoggles().apply()  # as the operator does: kopf's index readiness without its quadratic start

INDEXES = os.environ.get("FLEETWARDEN_BENCH_KOPF_INDEXES", "1") == "1"
COUNTS = os.environ.get("FLEETWARDEN_BENCH_KOPF_COUNTS")
OWN: dict[str, dict[str, Any]] = {}  # uid -> compact copy (without kopf indexes)
SEEN: dict[str, set[str]] = {"budgets": set(), "deployments": set()}  # uids handled


def budget_copy(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    return {"metadata": meta, "spec": dict(body.get("spec") or {})}


def deployment_copy(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"name": meta.get("name"), "labels": dict(meta.get("labels") or {}),
            "replicas": (body.get("spec") or {}).get("replicas")}


async def _write_counts() -> None:
    assert COUNTS is not None
    while True:
        Path(COUNTS).write_text(f"{len(SEEN['budgets'])} {len(SEEN['deployments'])}\n")
        await asyncio.sleep(1.0)


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.enabled = False  # as the operator
    settings.watching.server_timeout = 300
    if os.environ.get("FLEETWARDEN_BENCH_KOPF_IDLE"):
        settings.queueing.idle_timeout = float(os.environ["FLEETWARDEN_BENCH_KOPF_IDLE"])
    if os.environ.get("FLEETWARDEN_BENCH_KOPF_CHUNK"):
        settings.watching.chunk_size = int(os.environ["FLEETWARDEN_BENCH_KOPF_CHUNK"])
    if COUNTS:
        asyncio.get_running_loop().create_task(_write_counts())


if INDEXES:
    @kopf.index("fleetwarden.dev", "v1alpha1", "agentbudgets")
    async def budgets_index(**kwargs: Any) -> dict[str, Any]:
        return {kwargs["namespace"]: budget_copy(kwargs["body"])}

    @kopf.index("apps", "v1", "deployments")
    async def deployments_index(**kwargs: Any) -> dict[str, Any]:
        return {kwargs["namespace"]: deployment_copy(kwargs["body"])}


@kopf.on.event("fleetwarden.dev", "v1alpha1", "agentbudgets")
async def budget_seen(body: Any, uid: str, **_: Any) -> None:
    SEEN["budgets"].add(uid)
    if not INDEXES:
        OWN[uid] = budget_copy(body)


@kopf.on.event("apps", "v1", "deployments")
async def deployment_seen(body: Any, uid: str, **_: Any) -> None:
    SEEN["deployments"].add(uid)
    if not INDEXES:
        OWN[uid] = deployment_copy(body)
