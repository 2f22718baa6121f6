"""Errors of the local development cluster (all are ``fleetwarden.errors`` subclasses).

DevClusterError                  base (a FleetwardenError: the CLI prints one line)
 +-- BinaryMissingError          a binary is not built and cannot be built here
 +-- BuildError                  ``go build`` failed; quotes the tail of its output
 +-- ComponentError              a component did not start or became unready; quotes its log tail
"""

from __future__ import annotations

from pathlib import Path

from fleetwarden import errors


class DevClusterError(errors.FleetwardenError):
    """The local control plane or a launcher failed."""


class BinaryMissingError(DevClusterError):
    """A required binary is missing (not built, not installed)."""


class BuildError(DevClusterError):
    """Building a control-plane binary with ``go build`` failed."""


class ComponentError(DevClusterError):
    """A component failed to start or to become ready."""


def log_tail(path: Path | str, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, indented, for an error message."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return "    (no log)"
    tail = text.rstrip().splitlines()[-lines:]
    return "\n".join("    " + line for line in tail) if tail else "    (empty log)"
