"""Keep freed CPU memory in the process for the next training step.

glibc's malloc hands the pages of freed blocks back to the kernel: a block above the mmap
threshold (128 KiB at start, raised towards 32 MiB as such blocks are freed) is unmapped when
freed, and the free top of the heap is trimmed once it exceeds twice that threshold. A training
step allocates and frees the same few-megabyte activation blocks every step, so every step maps
them again and the kernel zeroes each 4 KiB page on its first touch. Measured on edgeyolo-res,
160 px, batch 16, one thread: 4 400–21 000 minor page faults per trainer step and 2 400–7 300
per bare forward + backward; with the thresholds below, 0–1 400 and 0.

:func:`keep_freed_memory` fixes the mmap threshold at glibc's 64-bit ceiling and the trim
threshold at 1 GiB, so the process keeps the memory of its largest step instead of returning it
between steps. ``EDGEYOLO_MALLOC_TUNING=0`` leaves malloc's defaults alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD = 1 << 30

_applied: bool | None = None


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds once per process; True if they are in force.

    A no-op (False) off Linux, on a C library without ``mallopt`` or one that refuses the values
    (musl), and with ``EDGEYOLO_MALLOC_TUNING=0``.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("EDGEYOLO_MALLOC_TUNING", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    logger.debug("malloc: mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD_MAX, TRIM_THRESHOLD, _applied)
    return _applied
