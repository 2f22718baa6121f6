"""``python -m fleetwarden`` and the ``fleetwarden`` console script."""

from __future__ import annotations

import sys

from fleetwarden import cli


def main(argv: list[str] | None = None) -> int:
    return cli.main(argv)


if __name__ == "__main__":
    sys.exit(main())
