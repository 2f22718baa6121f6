"""``python -m fleetwarden``, the ``fleetwarden`` console script and the kubectl plugin.

kubectl runs any ``kubectl-<name>`` executable on PATH as ``kubectl <name>``, passing the
arguments after the name, so ``kubectl fleetwarden incident list -A`` runs
``kubectl_plugin()`` with ``incident list -A``: the same commands, named as kubectl's.
"""

from __future__ import annotations

import sys

from fleetwarden import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


def kubectl_plugin(argv: list[str] | None = None) -> int:
    """The ``kubectl-fleetwarden`` console script: every command, as ``kubectl fleetwarden``."""
    return cli.main(argv, prog="kubectl fleetwarden")


if __name__ == "__main__":
    sys.exit(main())
