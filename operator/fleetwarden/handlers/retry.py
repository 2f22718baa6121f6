"""How the handlers retry a transient failure: one style, one delay.

The adapters raise the project's own errors (:class:`fleetwarden.errors.ExternalError`:
``KubernetesError`` with ``transient``, ``PrometheusError``), with the client's error as
``__cause__``. A handler maps them with :func:`temporary` to ``kopf.TemporaryError`` with
``delay=DELAY`` (or ``kopf.PermanentError`` when the error says trying again cannot help):

- a timer (``agentbudgets.budget_timer``) lets kopf run it again after that delay (after a
  permanent error, at its next interval);
- kopf never retries a watch-event handler (``@kopf.on.event``), so one that must not lose
  the work (``policyconfig``, ``approvals``) catches the ``kopf.TemporaryError`` and runs the
  work again after its ``delay`` with :func:`call_later` (re-reading the object then, never
  replaying a stale body); one whose work a timer redoes anyway (``agentbudgets``) logs it.

Nothing here sleeps in a thread or loops over attempts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Iterator, MutableMapping
from typing import Any

import kopf

from fleetwarden import errors
from fleetwarden.handlers import settings

# Seconds before a transient failure is tried again: the evaluation interval, at most 10 s.
MAX_DELAY = 10.0
DELAY = min(settings.current().interval, MAX_DELAY)

_running: set[asyncio.Task[None]] = set()


def transient(exc: errors.ExternalError) -> bool:
    """Whether trying again may help: what the error says (``KubeError.transient``: no answer,
    a conflict, throttling, a server error), else yes (Prometheus unreachable)."""
    return bool(getattr(exc, "transient", True))


@contextlib.contextmanager
def temporary() -> Iterator[None]:
    """Raise the project's own errors from the block as ``kopf.TemporaryError(delay=DELAY)``,
    or as ``kopf.PermanentError`` when trying again cannot help (a 403, 404 or 422): the
    error's message, the error itself as ``__cause__``."""
    try:
        yield
    except errors.ExternalError as exc:
        if transient(exc):
            raise kopf.TemporaryError(str(exc), delay=DELAY) from exc
        raise kopf.PermanentError(str(exc)) from exc


def call_later(timers: MutableMapping[str, asyncio.TimerHandle], key: str, delay: float,
               work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``work`` on the running loop after ``delay`` seconds; one pending run per ``key``
    (a newer one replaces it). ``timers`` holds the handles, so the caller can cancel one."""
    old = timers.pop(key, None)
    if old is not None:
        old.cancel()
    loop = asyncio.get_running_loop()

    def start() -> None:
        timers.pop(key, None)
        task = loop.create_task(work())
        _running.add(task)  # the loop keeps only a weak reference to a task
        task.add_done_callback(_running.discard)

    timers[key] = loop.call_later(delay, start)
