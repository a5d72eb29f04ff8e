"""Giving freed C heap back to the system, so that an idle agent stays small.

glibc keeps what the process frees for reuse and returns only the top of the main heap
by itself; each thread's arena keeps the rest. The agent's start-up (policy load, the
scan of the protected trees) and its passes over the trees (label inventory, DAC audit)
free several MB that an idle agent would otherwise keep resident for good.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim: Callable[[int], int] = ctypes.CDLL(None).malloc_trim
    except AttributeError:  # not glibc (musl has no malloc_trim): nothing to give back
        return None
    return trim


_MALLOC_TRIM = _malloc_trim()


def return_freed_heap() -> None:
    """Give the free pages of every malloc arena back to the system (``malloc_trim``).
    Cheap (a walk of the free lists); call it after work that freed a lot."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
