"""The fleet loop's own indexes and their readiness (handlers/store.py): the indexes read as kopf's
do, and ``ready`` is set only once every watch of every kind has listed and every object listed
has been handled."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fleetwarden.handlers import agentbudgets, fleet, store

KINDS = [("fleetwarden.dev", "agentbudgets"), ("apps", "deployments")]


def obj(uid: str, namespace: str = "shop") -> dict[str, Any]:
    return {"metadata": {"uid": uid, "namespace": namespace, "name": uid}}


def listed(uid: str, type_: str | None = None) -> dict[str, Any]:
    return {"type": type_, "object": obj(uid)}


# ---------------------------------------------------------------- Index


def test_the_index_reads_as_kopfs_by_namespace_and_forgets_what_is_dropped() -> None:
    index = store.Index()
    index.put("shop", "a", obj("a"))
    index.put("shop", "b", obj("b"))
    index.put("crm", "c", obj("c", "crm"))
    index.put("shop", "a", {"metadata": {"uid": "a", "name": "a2"}})  # a newer copy replaces the old
    assert sorted(index) == ["crm", "shop"] and len(index) == 2 and index.count() == 3
    assert [b["metadata"]["name"] for b in index["shop"]] == ["a2", "b"]
    assert index.get("nowhere", ()) == ()
    index.drop("crm", "c")
    index.drop("crm", "c")  # twice: nothing happens
    index.drop("nowhere", "x")
    assert list(index) == ["shop"] and index.count() == 2  # an emptied namespace is gone
    # the fleet loop copies it as it copied kopf's
    items = fleet.copy_indexes(index, {"shop": [obj("d")]}, {}, {})
    assert [(i.budget["metadata"]["name"], len(i.deployments)) for i in items] == [("a2", 1), ("b", 1)]


def test_reading_the_index_while_it_changes_never_fails() -> None:
    index = store.Index()
    for i in range(5):
        index.put(f"ns-{i}", "x", obj("x"))
    for namespace in index:  # a handler drops namespaces while the loop iterates
        index.drop(namespace, "x")
        index.put("late", str(namespace), obj("y"))
    assert list(index) == ["late"]


# ---------------------------------------------------------------- Listings


def test_ready_only_once_every_kind_has_listed_and_every_object_listed_was_handled() -> None:
    listings = store.Listings(KINDS)
    listings.started(1, KINDS[0])
    listings.started(99, ("", "namespaces"))  # a kind not indexed: ignored
    for uid in ("b1", "b2"):
        listings.listed(1, uid)
    listings.listed(1, None)  # the budgets' listing is over
    listings.handled("b1")
    listings.handled("b2")
    assert not listings.ready.is_set()  # no Deployment listed yet
    listings.started(2, KINDS[1])
    listings.listed(2, "d1")
    listings.listed(2, None)
    assert not listings.ready.is_set()  # d1 listed, not handled yet
    assert "objects listed and not handled: 1" in listings.waiting_for()
    listings.handled("d1")
    assert listings.ready.is_set()
    # afterwards nothing is tracked: a new listing (a watch restarted) does not unset it
    listings.started(3, KINDS[1])
    listings.listed(3, "d2")
    assert listings.ready.is_set() and not listings.listing(3)


def test_every_watch_of_a_kind_must_list_and_a_stopped_one_is_not_waited_for() -> None:
    listings = store.Listings(KINDS)
    listings.started(1, KINDS[0])  # budgets in namespace a
    listings.started(2, KINDS[0])  # budgets in namespace b
    listings.started(3, KINDS[1])
    listings.listed(1, None)
    listings.listed(3, None)
    assert not listings.ready.is_set()  # namespace b's budgets are not listed
    assert "fleetwarden.dev/agentbudgets" in listings.waiting_for()
    listings.stopped(2)  # its namespace went away
    assert listings.ready.is_set()


def test_a_kind_whose_only_watch_stopped_is_waited_for_again() -> None:
    listings = store.Listings(KINDS)
    listings.started(1, KINDS[0])
    listings.started(2, KINDS[1])
    listings.listed(1, None)
    listings.stopped(2)
    assert not listings.ready.is_set()
    assert "apps/deployments" in listings.waiting_for()


def test_a_kind_the_api_server_does_not_serve_is_none_and_not_waited_for() -> None:
    """A kind whose CRD is not installed is never watched by kopf: once said unserved, the indexes
    wait only for the others (and say so), and a watch of it that starts later (its CRD installed
    meanwhile) is waited for like any other before they are complete."""
    listings = store.Listings(KINDS)
    listings.unserved(KINDS[1])
    assert not listings.ready.is_set()  # the budgets are still to be listed
    listings.started(1, KINDS[0])
    listings.listed(1, None)
    assert listings.ready.is_set()
    later = store.Listings(KINDS)
    later.unserved(KINDS[1])
    assert "not served, taken as none: ['apps/deployments']" in later.waiting_for()
    assert "kinds not watched yet: ['fleetwarden.dev/agentbudgets']" in later.waiting_for()
    later.started(1, KINDS[0])
    later.started(2, KINDS[1])  # installed meanwhile: kopf watches it
    later.listed(1, None)
    assert not later.ready.is_set()
    later.listed(2, None)
    assert later.ready.is_set()


def test_an_object_deleted_before_it_was_handled_counts_once_its_deletion_is() -> None:
    listings = store.Listings(KINDS[:1])
    listings.started(1, KINDS[0])
    listings.listed(1, "gone")
    listings.listed(1, None)
    assert not listings.ready.is_set()
    listings.handled("gone")  # the handler took its DELETED event (kopf may batch the two)
    assert listings.ready.is_set()


# ---------------------------------------------------------------- the watch stream


class Mark:
    pass


LISTED = Mark()


def run_watch(events: list[Any], plural: str = "agentbudgets", group: str = "fleetwarden.dev") -> list[Any]:
    """The events ``_wrap`` passes on (it tells ``store._current``, set by the test)."""
    async def original(**kwargs: Any) -> AsyncIterator[Any]:
        for event in events:
            yield event

    class Resource:
        pass

    resource = Resource()
    resource.group, resource.plural = group, plural  # type: ignore[attr-defined]
    wrapped = store._wrap(original, LISTED)  # noqa: SLF001

    async def main() -> list[Any]:
        return [e async for e in wrapped(resource=resource, namespace=None, settings=None)]

    return asyncio.run(main())


def test_the_wrapped_watch_passes_every_event_on_and_notes_the_first_listing(monkeypatch: pytest.MonkeyPatch) -> None:
    listings = store.Listings(KINDS[:1])
    monkeypatch.setattr(store, "_current", listings)
    seen: list[Any] = []
    events = [listed("a"), {"type": "BOOKMARK", "object": {}}, listed("b"), LISTED,
              listed("c", "ADDED")]  # after the listing: the stream, not waited for

    original_listed = listings.listed

    def spy(watch: int, uid: str | None) -> None:
        seen.append(uid)
        original_listed(watch, uid)

    monkeypatch.setattr(listings, "listed", spy)
    assert run_watch(events) == events
    assert seen == ["a", "b", None]
    # the stream has ended: its watch is no longer waited for, and a and b still are
    assert not listings.ready.is_set()
    assert "objects listed and not handled: 2" in listings.waiting_for()


def test_a_kind_not_indexed_is_not_tracked(monkeypatch: pytest.MonkeyPatch) -> None:
    listings = store.Listings(KINDS[:1])
    monkeypatch.setattr(store, "_current", listings)
    run_watch([listed("n1"), LISTED], plural="namespaces", group="")
    assert "objects listed and not handled: 0" in listings.waiting_for()


def test_watch_listings_wraps_kopfs_watch_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from kopf._cogs.clients import watching

    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)  # restored afterwards
    monkeypatch.setattr(store, "_current", None)
    first, second = store.Listings(KINDS), store.Listings(KINDS)
    assert store.watch_listings(first)
    wrapped = watching.infinite_watch
    assert store.watch_listings(second)
    assert watching.infinite_watch is wrapped  # not wrapped twice
    assert store._current is second  # noqa: SLF001 - the latest listings are told


def test_a_kopf_without_the_listing_mark_is_left_as_it_is(monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    from kopf._cogs.clients import watching

    monkeypatch.setattr(watching, "infinite_watch", watching.infinite_watch)
    monkeypatch.delattr(watching, "Bookmark")
    before = watching.infinite_watch
    with caplog.at_level(logging.WARNING):
        assert not store.watch_listings(store.Listings(KINDS))
    assert watching.infinite_watch is before
    assert "keeps kopf's indexes" in caplog.text


# ---------------------------------------------------------------- the handlers that keep them


def test_the_keepers_hold_the_compact_copy_and_tell_the_listings(monkeypatch: pytest.MonkeyPatch) -> None:
    listings = store.Listings(KINDS[1:])
    monkeypatch.setattr(agentbudgets, "LISTINGS", listings)
    listings.started(1, KINDS[1])
    listings.listed(1, "d1")
    listings.listed(1, None)
    index = store.Index()
    keep = agentbudgets._keeper(index, agentbudgets.agent_deployments)  # noqa: SLF001
    body = {"metadata": {"uid": "d1", "name": "bot", "namespace": "shop", "labels": {"app": "support"},
                         "managedFields": [{"manager": "kubectl"}]},
            "spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}},
            "status": {"readyReplicas": 3}}
    asyncio.run(keep(event={"type": None}, body=body, namespace="shop"))
    (kept,) = index["shop"]
    assert kept == agentbudgets.agent_deployments(body=body, namespace="shop")["shop"]
    assert "managedFields" not in kept["metadata"] and "status" not in kept
    assert listings.ready.is_set()
    asyncio.run(keep(event={"type": "DELETED"}, body=body, namespace="shop"))
    assert len(index) == 0


def test_the_keepers_success_lines_are_dropped_and_nothing_else() -> None:
    quiet = agentbudgets.QuietKeepers()

    def kept(msg: str, level: int = logging.INFO) -> bool:
        return quiet.filter(logging.LogRecord("kopf.objects", level, __file__, 1, msg, None, None))

    assert not kept("Handler 'keep_budgets' succeeded.")
    assert not kept("Handler 'keep_deployments' succeeded.")
    assert kept("Handler 'budget_event' succeeded.")
    assert kept("Handler 'keep_budgets' failed with an exception and will stop now: boom", logging.ERROR)
    assert kept("Timer 'budget_timer' succeeded.")


# ---------------------------------------------------------------- kopf's memories

BUDGET = {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget", "metadata": {"uid": "b1"}}
POLICY = {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "CostPolicy", "metadata": {"uid": "p1"}}


def test_kopfs_memories_keep_none_for_the_unkept_kinds_and_the_rest_as_kopf_does() -> None:
    from kopf._cogs.structs import ephemera

    kept = store.memories({("fleetwarden.dev/v1alpha1", "AgentBudget")})
    base = ephemera.AnyMemo(ephemera.Memo(shared="yes"))

    async def recall() -> list[Any]:
        return [await kept.recall(body, memobase=base) for body in (BUDGET, BUDGET, POLICY, POLICY)]

    budget1, budget2, policy1, policy2 = asyncio.run(recall())
    assert budget1 is not budget2 and policy1 is policy2  # a fresh one each time; kopf's own
    assert list(kept.iter_all_memories()) == [policy1]
    for memory in (budget1, policy1):  # each a copy of the operator's memo, as kopf makes it
        assert memory.memo == base and memory.memo is not base
    asyncio.run(kept.forget(BUDGET))  # a deleted budget: nothing to forget, nothing fails
    asyncio.run(kept.forget(POLICY))
    assert list(kept.iter_all_memories()) == []


REGISTRY = r"""
import json
from kopf._core.intents import registries
import fleetwarden.handlers
from fleetwarden.handlers import agentbudgets
registry = registries.get_default_registry()
print(json.dumps({
    "memories": agentbudgets.MEMORIES is not None,
    "stateful": sorted({h.selector.any_name for name in ("_indexing", "_spawning", "_changing", "_webhooks")
                        for h in getattr(registry, name).get_all_handlers()}),
    "events": sorted({h.selector.any_name for h in registry._watching.get_all_handlers()}),
}))
"""


@pytest.mark.parametrize("mode", ["fleet", "timers"])
def test_kopf_keeps_no_memory_of_budgets_and_deployments_only_where_nothing_reads_one(mode: str) -> None:
    """kopf reads an object's memory for its indexes, timers, daemons, change handlers and
    webhooks; in fleet mode none of them is on a budget or a Deployment, so not keeping their
    memories loses nothing (a timer or an index added on them would fail this)."""
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETWARDEN_")}
    env.update(FLEETWARDEN_EVALUATION=mode, FLEETWARDEN_PROMETHEUS_URL="http://127.0.0.1:9")
    out = subprocess.run([sys.executable, "-c", REGISTRY], env=env, capture_output=True, text=True, check=True)
    seen = json.loads(out.stdout.splitlines()[-1])
    assert {"agentbudgets", "deployments"} <= set(seen["events"])
    if mode == "fleet":
        assert seen["memories"] is True
        assert not {"agentbudgets", "deployments"} & set(seen["stateful"])
    else:  # a timer per budget: kopf keeps every memory
        assert seen["memories"] is False and "agentbudgets" in seen["stateful"]


# ---------------------------------------------------------------- equal parts kept once


def _budget_body(name: str, hour: Any = 10, ack: str | None = None) -> dict[str, Any]:
    kill: dict[str, Any] = {"enabled": True, "thresholdPercent": 150}
    if ack is not None:
        kill["acknowledge"] = ack
    return {"apiVersion": "fleetwarden.dev/v1alpha1", "kind": "AgentBudget",
            "metadata": {"name": name, "namespace": "shop", "uid": f"u-{name}", "managedFields": [{"x": 1}]},
            "spec": {"selector": {"matchLabels": {"agent": name}},
                     "limits": [{"window": "hour", "amountUSD": hour}, {"window": "day", "amountUSD": 100}],
                     "killSwitch": kill, "owner": {"team": "support"}, "suspend": False}}


def test_the_copies_of_two_budgets_hold_their_equal_spec_parts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agentbudgets, "PARTS", store.Parts())
    a = agentbudgets.budgets_by_namespace(body=_budget_body("triage"), namespace="shop")["shop"]
    b = agentbudgets.budgets_by_namespace(body=_budget_body("refunds"), namespace="shop")["shop"]
    c = agentbudgets.budgets_by_namespace(body=_budget_body("billing", hour=25, ack="inc-1"), namespace="shop")["shop"]
    for part in ("limits", "killSwitch", "owner"):
        assert a["spec"][part] is b["spec"][part], part
        assert a["spec"][part] == _budget_body("triage")["spec"][part]
    assert c["spec"]["limits"] is not a["spec"]["limits"] and c["spec"]["limits"][0]["amountUSD"] == 25
    assert c["spec"]["killSwitch"] == {"enabled": True, "thresholdPercent": 150, "acknowledge": "inc-1"}
    assert c["spec"]["owner"] is a["spec"]["owner"]
    assert a["spec"]["selector"] == {"matchLabels": {"agent": "triage"}}
    assert b["spec"]["selector"] == {"matchLabels": {"agent": "refunds"}}
    assert a["spec"]["suspend"] is False and "managedFields" not in a["metadata"]
    assert a["metadata"]["name"] == "triage" and b["metadata"]["name"] == "refunds"


def test_parts_tell_json_types_apart_and_a_collision_keeps_the_value_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = store.Parts()
    one, one_float, true = {"n": 1}, {"n": 1.0}, {"n": True}
    assert parts.share(one) is one and parts.share({"n": 1}) is one
    assert parts.share(one_float) is one_float and parts.share(true) is true  # 1, 1.0 and true differ in JSON
    assert parts.share([{"b": 1, "a": 2}]) == [{"b": 1, "a": 2}]
    odd = {"when": object()}
    assert parts.share(odd) is odd  # not JSON: as given
    monkeypatch.setattr(store, "hash", lambda _text: 7, raising=False)  # every text one hash
    colliding = store.Parts()
    first, second = {"team": "support"}, {"team": "sales"}
    assert colliding.share(first) is first
    assert colliding.share(second) is second and second == {"team": "sales"}
    assert colliding.share({"team": "support"}) is first


def test_past_its_limit_parts_starts_again() -> None:
    parts = store.Parts(limit=2)
    values = [{"i": i} for i in range(5)]
    assert [parts.share(v) is v for v in values] == [True] * 5
    assert len(parts) == 1  # {"i": 4}: the table started again at the 3rd and the 5th
    assert parts.share({"i": 4}) is values[4] and parts.share({"i": 0}) == {"i": 0}
    assert len(parts) == 2
