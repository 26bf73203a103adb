"""Drop-in replacements for shared-memory APIs, built on ndshm: ``shared_memory`` and ``managers``
(the standard library's), ``sharedarray`` (the SharedArray package's)."""

from . import managers, shared_memory

__all__ = ["managers", "shared_memory", "sharedarray"]  # sharedarray is imported on first use
