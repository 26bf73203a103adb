"""Drop-in replacements for standard-library shared-memory APIs, built on ndshm."""

from . import shared_memory

__all__ = ["shared_memory"]
