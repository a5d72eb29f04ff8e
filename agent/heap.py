"""Giving freed C heap back to the system, so that an idle agent stays small.

glibc keeps what the process frees for reuse and returns only the top of the main heap
by itself; each thread's arena keeps the rest. The agent's start-up (policy load, the
scan of the protected trees) and its passes over the trees (label inventory, DAC audit)
free several MB that an idle agent would otherwise keep resident for good.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: Blocks of at least this many bytes get their own mapping, unmapped when freed; free
#: memory at the top of the heap beyond it is returned at once. 128 KiB is glibc's
#: starting value for both, which it raises for good after the first large block freed.
HEAP_RETURN_BYTES = 128 * 1024


def _glibc(name: str) -> Callable[..., int] | None:
    libc: Any = ctypes.CDLL(None)
    try:
        function: Callable[..., int] = getattr(libc, name)
    except AttributeError:  # not glibc (musl has neither): nothing to tune or give back
        return None
    return function


_MALLOC_TRIM = _glibc("malloc_trim")
_MALLOPT = _glibc("mallopt")


def keep_heap_thresholds() -> None:
    """Pin glibc's mmap and trim thresholds at :data:`HEAP_RETURN_BYTES`.

    glibc raises both after the first large block is freed (up to 32 MiB), so that the
    large, short-lived buffers of the agent's passes (the label inventory, a batch of
    events serialised for the stream) then come from the heap and stay resident once
    freed. Pinned, they are mapped and unmapped. Call it at start, before threads.
    """
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, HEAP_RETURN_BYTES)
        _MALLOPT(_M_TRIM_THRESHOLD, HEAP_RETURN_BYTES)


def return_freed_heap() -> None:
    """Give the free pages of every malloc arena back to the system (``malloc_trim``).
    Cheap (a walk of the free lists); call it after work that freed a lot."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
