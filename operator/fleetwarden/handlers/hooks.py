"""Extension points of the evaluation loop.

``on_findings``: callables ``(budget_body: dict, findings: list[Finding], actions: list, api) -> None``
called after each evaluation's actions are applied (the incident recorder and the
Alertmanager notifier register here).

``on_failures``: callables ``(budget_body: dict, failures: list[ActionFailure]) -> None`` called
after an evaluation in which an action did not take effect (the on-call alert registers here).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

OnFindings = Callable[[Any, Any, Any, Any], None]

on_findings: list[OnFindings] = []

OnFailures = Callable[[Any, Any], None]

on_failures: list[OnFailures] = []
