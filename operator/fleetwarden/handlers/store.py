"""The fleet loop's own indexes of the watched objects (``FLEETWARDEN_EVALUATION=fleet``), in
place of kopf's, and the readiness that says they are complete.

Why not kopf's indexes: before any handler runs, kopf holds every watched object's worker,
with its first event's body, until every index is filled (docs/operator.md, Scale: "kopf's
start, measured alone"). At 10,000 AgentBudgets and their Deployments that is 20,000 workers,
queues and bodies alive at once, and the arenas they leave behind. Without a kopf index each
event is handled as it is listed and its body is freed.

- :class:`Index`: namespace -> uid -> a compact copy of the object, read as kopf's indexes
  are (``index.get(namespace)`` gives the namespace's copies), so the handlers and
  :func:`fleetwarden.handlers.fleet.copy_indexes` read either. It is written by ``async``
  event handlers, in the event loop's thread.
- :class:`Listings`: kopf's index readiness, done again for these indexes. kopf's watch stream
  marks the end of each listing (``Bookmark.LISTED``); :func:`watch_listings` wraps it to note
  every object listed and each listing's end. The indexes are complete (``ready`` is set)
  once every watch of every kind has listed, and an event of every object listed has been
  handled (:meth:`Listings.handled`). Until then the fleet loop does not start, and the
  handlers that act (governance checks, prompted evaluations) are not called.
- :func:`memories`: kopf's memory of each object it has seen (a copy of the memo, an error
  throttler, the state of its indexes and daemons: about 1 KB an object), kept only for the
  kinds that need one. With these indexes no AgentBudget or Deployment has a kopf index, a
  timer, a daemon or a change handler, only event handlers, which read none of it: kopf
  gets a fresh memory for each of their events (as it does for an admission request) and
  keeps none, 20,000 fewer at 10,000 budgets. What is given up: kopf's back-off after an
  error outside the handlers restarts at its first delay with each event of that object.
- :class:`Parts`: equal parts of the copies (a budget's limits, kill switch, model source,
  owner) kept once: most are equal from budget to budget, and 10,000 copies would hold each
  10,000 times.

A kopf whose watch module lacks what :func:`watch_listings` needs is left as it is, with a
warning: the operator then keeps kopf's indexes (``tests/unit/operator/test_store.py``).
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections.abc import AsyncIterator, Callable, Collection, Iterator, Mapping
from typing import Any

log = logging.getLogger(__name__)

Body = Mapping[str, Any]
Kind = tuple[str, str]  # (API group, plural): "" for the core group

_PATCHED = "__fleetwarden_listings__"


class Index(Mapping[str, list[Body]]):
    """namespace -> the copies of its objects (a new list on each read)."""

    def __init__(self) -> None:
        self._by_namespace: dict[str, dict[str, Body]] = {}

    def put(self, namespace: str, uid: str, body: Body) -> None:
        self._by_namespace.setdefault(namespace, {})[uid] = body

    def drop(self, namespace: str, uid: str) -> None:
        bodies = self._by_namespace.get(namespace)
        if bodies is None:
            return
        bodies.pop(uid, None)
        if not bodies:
            del self._by_namespace[namespace]

    def __getitem__(self, namespace: str) -> list[Body]:
        return list(self._by_namespace[namespace].values())

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._by_namespace))

    def __len__(self) -> int:
        return len(self._by_namespace)

    def count(self) -> int:
        """How many objects, in every namespace."""
        return sum(len(b) for b in list(self._by_namespace.values()))


class Parts:
    """Equal JSON values (the parts of the copies in an index) kept once. A value equal to one
    kept before (the same JSON, its types included: ``1`` is not ``1.0``) is that one. Kept by
    the hash of its JSON, so a value met once costs a hash, not its text; a collision keeps the
    value as given. Past ``limit`` values the table starts again (values deleted since leave
    it so; the copies keep theirs, and an equal value is then kept at most once more).
    The values are shared between copies, so they are read, never changed: the index's copies
    are only read (their nested values were kopf's body's own before)."""

    def __init__(self, limit: int = 65_536) -> None:
        self._kept: dict[int, Any] = {}
        self.limit = limit

    @staticmethod
    def _text(value: Any) -> str | None:
        try:
            return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except (TypeError, ValueError):  # not plain JSON: kept as given
            return None

    def share(self, value: Any) -> Any:
        text = self._text(value)
        if text is None:
            return value
        key = hash(text)
        kept = self._kept.get(key)
        if kept is None:
            if len(self._kept) >= self.limit:
                self._kept = {}
            self._kept[key] = value
            return value
        return kept if kept is value or self._text(kept) == text else value

    def __len__(self) -> int:
        return len(self._kept)


class Listings:
    """Whether kopf has listed every object of ``kinds`` and each has been handled once.

    Called in the event loop's thread only (by the watch wrapper and ``async`` handlers);
    ``ready`` is a :class:`threading.Event` so the evaluation threads can read it."""

    def __init__(self, kinds: Collection[Kind], ready: threading.Event | None = None) -> None:
        self.kinds = frozenset(kinds)
        self.ready = ready if ready is not None else threading.Event()
        self._watches: dict[int, tuple[Kind, bool]] = {}  # a watch -> its kind, listed yet
        self._pending: set[str] = set()  # uids listed and not handled yet
        self._unserved: set[Kind] = set()  # kinds the API server does not serve: none to list

    def unserved(self, kind: Kind) -> None:
        """The API server does not serve ``kind`` (its CRD is not installed): there is none of it,
        and no listing of it to wait for. kopf watches a kind only once it is served, so without
        this the indexes would wait for it forever; if its CRD is installed later, kopf watches it
        and its objects come as events."""
        self._unserved.add(kind)
        self._check()

    def started(self, watch: int, kind: Kind) -> None:
        if kind in self.kinds:
            self._watches[watch] = (kind, False)

    def listed(self, watch: int, uid: str | None) -> None:
        """``uid`` came in ``watch``'s first listing (None: the listing is over)."""
        if self.ready.is_set() or watch not in self._watches:
            return
        kind, done = self._watches[watch]
        if done:
            return
        if uid is None:
            self._watches[watch] = (kind, True)
            self._check()
        else:
            self._pending.add(uid)

    def stopped(self, watch: int) -> None:
        if self._watches.pop(watch, None) is not None:
            self._check()

    def handled(self, uid: str) -> None:
        """A handler has taken an event of the object ``uid``."""
        if self.ready.is_set():
            return
        self._pending.discard(uid)
        self._check()

    def listing(self, watch: int) -> bool:
        """Whether ``watch`` is in its first listing (its events are to be noted)."""
        state = self._watches.get(watch)
        return state is not None and not state[1] and not self.ready.is_set()

    def waiting_for(self) -> str:
        """What readiness still waits for (for the log)."""
        kinds = {k for k, _ in self._watches.values()}
        unlisted = sorted("/".join(k) for k, done in self._watches.values() if not done)
        missing = sorted("/".join(k) for k in self.kinds - kinds - self._unserved)
        unserved = sorted("/".join(k) for k in self._unserved)
        return (f"kinds not watched yet: {missing or 'none'}; listings not over: {unlisted or 'none'}; "
                f"objects listed and not handled: {len(self._pending)}"
                + (f"; not served, taken as none: {unserved}" if unserved else ""))

    def _check(self) -> None:
        if self.ready.is_set() or self._pending:
            return
        kinds = {k for k, _ in self._watches.values()}
        if kinds | self._unserved >= self.kinds and all(done for _, done in self._watches.values()):
            self.ready.set()
            log.info("every watched object listed and handled: the indexes are complete")


_current: Listings | None = None
_watches = itertools.count(1)  # a key for each watch stream


def _uid(raw_event: Any) -> str | None:
    try:
        uid = raw_event["object"]["metadata"]["uid"]
    except (KeyError, TypeError):
        return None
    return str(uid)


def _wrap(original: Callable[..., AsyncIterator[Any]], listed_mark: Any) -> Callable[..., AsyncIterator[Any]]:
    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        listings = _current
        resource = kwargs.get("resource")
        kind = (str(getattr(resource, "group", "") or ""), str(getattr(resource, "plural", "")))
        watch = next(_watches)
        if listings is not None:
            listings.started(watch, kind)
        try:
            async for event in original(**kwargs):
                if listings is not None and listings.listing(watch):
                    if event is listed_mark:
                        listings.listed(watch, None)
                    elif isinstance(event, Mapping) and event.get("type") != "BOOKMARK":
                        uid = _uid(event)
                        if uid is not None:
                            listings.listed(watch, uid)
                yield event
        finally:
            if listings is not None:
                listings.stopped(watch)

    setattr(infinite_watch, _PATCHED, original)
    return infinite_watch


def watch_listings(listings: Listings) -> bool:
    """Have kopf's watch streams report their listings to ``listings`` (from now on); returns
    whether they do (False: a kopf laid out otherwise, which is left as it is, with a warning)."""
    global _current
    try:
        from kopf._cogs.clients import watching
    except ImportError:
        log.warning("kopf's watching module not found: the operator keeps kopf's indexes")
        return False
    original = getattr(watching, "infinite_watch", None)
    listed_mark = getattr(getattr(watching, "Bookmark", None), "LISTED", None)
    if not callable(original) or listed_mark is None:
        log.warning("kopf's watch stream is not the one this code knows: the operator keeps kopf's indexes")
        return False
    if getattr(original, _PATCHED, None) is None:
        watching.infinite_watch = _wrap(original, listed_mark)
    _current = listings
    return True


def memories(unkept: Collection[tuple[str, str]]) -> Any:
    """kopf's store of per-object memories (for ``kopf.run(memories=...)``) keeping none for
    objects of ``unkept`` (``(apiVersion, kind)`` pairs); None (kopf's own store) for a kopf
    laid out otherwise, with a warning."""
    try:
        from kopf._core.reactor import inventory
    except ImportError:
        log.warning("kopf's inventory module not found: kopf keeps a memory of every object")
        return None
    base = getattr(inventory, "ResourceMemories", None)
    if base is None or not callable(getattr(base, "recall", None)):
        log.warning("kopf's memories are not the ones this code knows: kopf keeps a memory of every object")
        return None
    kinds = frozenset(unkept)

    class Unkept(base):  # type: ignore[misc, valid-type]
        """kopf's memories; an object of ``kinds`` gets a fresh one each time, not kept."""

        async def recall(self, raw_body: Any, *, memobase: Any = None, noticed_by_listing: bool = False,
                         ephemeral: bool = False) -> Any:
            if (raw_body.get("apiVersion"), raw_body.get("kind")) in kinds:
                ephemeral = True
            return await super().recall(raw_body, memobase=memobase, noticed_by_listing=noticed_by_listing,
                                        ephemeral=ephemeral)

    return Unkept()

