"""Command line: ``python -m ndshm ls | info NAME | rm NAME... | gc | bench [--quick]``."""

from __future__ import annotations

import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ndshm command line; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "bench":
        from ._benchcli import main as bench_main

        return bench_main(args[1:])
    from ._cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
