"""Fleetwarden: govern fleets of AI agents by budget.

The package is layered (see ``.importlinter``):

- ``fleetwarden.core``: pure decisions (events, series, detectors, policies, economics).
- ``fleetwarden.sdk``: what an agent process imports to record spend and obey guardrails.
- ``fleetwarden.adapters``: Prometheus, Kubernetes and Alertmanager I/O.
- ``fleetwarden.handlers``: the kopf operator.
- ``fleetwarden.commands``: the ``fleetwarden`` command line.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
