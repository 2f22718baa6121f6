"""Fleetwarden's own exceptions.

FleetwardenError                 base: the CLI prints its message, no traceback, exit 2
 +-- InputError                  bad input a person can fix; names the file, line and field
 |    +-- EventError             one usage-event line breaks the contract
 |    +-- ManifestError          an AgentBudget/CostPolicy manifest is invalid
 +-- PricingError                a model or tool has no known price
 +-- ExternalError               a system we talk to failed; the original error is ``__cause__``
      +-- PrometheusError        Prometheus unreachable, or answered with an error
      +-- KubernetesError        the API server refused or failed

This module imports nothing outside the standard library, so the core may use it.
"""

from __future__ import annotations


class FleetwardenError(Exception):
    """Base class of every error Fleetwarden raises on purpose."""


class InputError(FleetwardenError):
    """Input a person can fix. ``where`` says file, line and field when known."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 field: str | None = None) -> None:
        self.reason = message
        self.file = file
        self.line = line
        self.field = field
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(str(self.file))
        if self.line is not None:
            where.append(f"line {self.line}")
        if self.field is not None:
            where.append(f"field {self.field!r}")
        return (": ".join([", ".join(where), self.reason]) if where else self.reason)


class EventError(InputError):
    """A usage-event line that is not valid JSON or breaks the schema."""


class ManifestError(InputError):
    """An AgentBudget or CostPolicy manifest that does not validate."""


class PricingError(FleetwardenError):
    """A model or tool with no known price (never priced as 0ドル silently)."""


class ExternalError(FleetwardenError):
    """A system Fleetwarden talks to failed; the underlying error is ``__cause__``."""


class PrometheusError(ExternalError):
    """Prometheus could not be queried, or returned an error."""


class KubernetesError(ExternalError):
    """The Kubernetes API server refused or failed a request."""
