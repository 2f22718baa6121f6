"""kopf's index readiness, patched (fleetwarden.handlers.kopftoggles): the same waits, without
waking every waiting worker on every object indexed.

The workload is kopf's own (kopf/_core/reactor/queueing.py): the listing holds one blocker
toggle; each object's first event makes a toggle; its worker indexes it, drops the toggle and
waits for the whole set to be on, while the watcher reads the next event; the listing ends by
dropping the blocker."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from fleetwarden.handlers import kopftoggles

assert kopftoggles.apply()  # what importing fleetwarden.handlers does


class CountingAll:
    """``all``, counting its calls: each is one check of the set's state (by a woken waiter,
    or by the patch before and after a change)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, states: object) -> bool:
        self.calls += 1
        return all(states)  # type: ignore[call-overload]


async def _index(objects: int) -> tuple[CountingAll, list[int]]:
    fn = CountingAll()
    indexed = aiotoggles.ToggleSet(fn)
    blocker = await indexed.make_toggle(name="listing")
    done: list[int] = []

    async def worker(i: int, toggle: aiotoggles.Toggle) -> None:
        await asyncio.sleep(0)  # indexing
        await indexed.drop_toggle(toggle)
        await indexed.wait_for(True)
        done.append(i)

    tasks = []
    for i in range(objects):
        toggle = await indexed.make_toggle(name=f"object-{i}")
        tasks.append(asyncio.create_task(worker(i, toggle)))
        for _ in range(3):  # the next event is a read from the watch away: the worker waits by then
            await asyncio.sleep(0)
    assert not done, "a worker ran before the listing ended"
    await indexed.drop_toggle(blocker)
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return fn, done


def test_every_worker_waits_for_the_listing_then_all_go_on():
    _, done = asyncio.run(_index(200))
    assert sorted(done) == list(range(200))


def test_the_set_is_checked_a_few_times_per_object_not_once_per_object_per_object():
    # unpatched, every make and drop wakes every waiting worker: about N^2 / 2 checks (20,000
    # at 200 objects, 180,000 at 600); patched, a few per object
    for objects in (200, 600):
        fn, done = asyncio.run(_index(objects))
        assert len(done) == objects
        assert fn.calls <= 8 * objects, (objects, fn.calls)


def test_waiters_for_off_wake_when_a_toggle_turns_the_set_off():
    async def scenario() -> list[str]:
        s = aiotoggles.ToggleSet(all)  # empty: on
        seen: list[str] = []

        async def wait_off() -> None:
            await s.wait_for(False)
            seen.append("off")

        task = asyncio.create_task(wait_off())
        await asyncio.sleep(0)
        assert not seen
        toggle = await s.make_toggle(False)  # the set flips off
        await asyncio.wait_for(task, timeout=5)
        await toggle.turn_to(True)  # a child turned (peering's way) still wakes the set's waiters
        await asyncio.wait_for(s.wait_for(True), timeout=5)
        await s.drop_toggles([toggle])
        assert s.is_on() and len(s) == 0
        return seen

    assert asyncio.run(scenario()) == ["off"]


def test_apply_is_idempotent():
    assert kopftoggles.apply() and kopftoggles.apply()
