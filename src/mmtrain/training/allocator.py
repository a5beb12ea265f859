"""glibc ``malloc`` settings for training on a CPU (``malloc_tuning: true``, the default).

A training step frees and re-allocates the same activation and gradient buffers every time. With
glibc's defaults, buffers above a threshold that adapts at run time are mapped fresh from the kernel
and unmapped when freed, and the top of the heap is returned to the kernel whenever 128 KiB are
free. Whether a step's buffers land in reused memory or in fresh pages then depends on the order
earlier allocations happened in, so the same training loop ran with 4 or with 2,400 page faults a
step depending on the run (for the demo model, 51.6 vs 58.6 ms a step, measured with
``benchmarks/training_step.py``'s contenders). Fixing the mmap threshold at 32 MiB and keeping up to
1 GiB of freed heap makes every step reuse the memory of the previous one: 0-180 faults a step and
run-to-run differences under 1%.

The cost: memory freed after a peak stays with the process (up to ``TRIM_THRESHOLD``) instead of
going back to the system at once. Settings are process-wide and inherited by DataLoader workers
(forked). Elsewhere than Linux with glibc nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 32 * 2**20  # glibc's own ceiling for its adaptive threshold on 64-bit
TRIM_THRESHOLD = 2**30
TOP_PAD = 64 * 2**20


def tune_malloc() -> bool:
    """Apply the settings above; True when glibc accepted all of them."""
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        log.debug("malloc_tuning: no glibc mallopt in %s; left as it is", name)
        return False
    settings = ((M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD))
    accepted = [bool(mallopt(param, value)) for param, value in settings]
    if not all(accepted):
        log.warning("malloc_tuning: glibc refused some settings (%s); training runs as before", accepted)
    return all(accepted)
