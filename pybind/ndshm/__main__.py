"""Command line: ``python -m ndshm ls | info NAME... | rm NAME... | gc | bench`` (see ``--help``)."""

from __future__ import annotations

import os
import sys
from typing import Optional, Sequence


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ndshm command line; returns the exit status.

    A reader that goes away (``ndshm ls | head -1``) ends the command quietly, as it ends
    ``ls``, instead of with a ``BrokenPipeError`` traceback."""
    from ._cli import main as cli_main

    try:
        rc = cli_main(list(sys.argv[1:] if argv is None else argv))
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would flush stdout again at exit and report the same error: point it at /dev/null.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        return 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
