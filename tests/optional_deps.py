"""Optional test dependencies (torch, OpenCV, matplotlib): present, skipped visibly, or a failure.

The main CPython run must have them: a missing one there is ``conftest.skip_or_fail`` (a skip
locally, a failure under CI). The runs that deliberately install only numpy, cffi and pytest (PyPy,
and the oldest NumPy ``make test`` supports) set ``NDSHM_TEST_MINIMAL_DEPS`` to the reason, and those
tests skip saying it: the main run covers them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType
from typing import Optional

import pytest

from conftest import skip_or_fail

MINIMAL_DEPS_VAR = "NDSHM_TEST_MINIMAL_DEPS"


def minimal_deps_reason() -> Optional[str]:
    """Why this run has no optional packages (the variable's value), or None for a full run."""
    return os.environ.get(MINIMAL_DEPS_VAR) or None


def require(module: str, what: str = "test") -> ModuleType:
    """Import ``module`` or skip this test: visibly in a minimal-deps run, via skip_or_fail otherwise."""
    reason = minimal_deps_reason()
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if reason:
            pytest.skip(f"{module} is not installed ({e}): {reason}")
        skip_or_fail(f"{module} is not installed ({e}); `make venv` installs it for this {what}")
        raise  # skip_or_fail always raises; this keeps type checkers and readers sure of it
