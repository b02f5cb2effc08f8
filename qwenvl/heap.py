"""glibc's heap, tuned for CPU inference (a no-op where the C library is not glibc).

Settings of the process's C allocator, through `ctypes`:

`trim`: glibc's malloc_trim(0), which gives free heap pages back to the OS. The
loads call it between steps that free large temporaries (qwenvl/int8.py,
int8_cache.py, int8_float32.py), so that their holes do not add up in the
resident set.

`tune_for_generation`: called once the model is loaded on the CPU
(qwenvl/session.py). By default glibc gives a freed block of over 32 MB
straight back to the OS and trims the top of its heap once 64 MB there are
free, so each layer of a forward pass maps its activations afresh and the
kernel zeroes every page of them again (a page fault per 4 KB). After the load,
blocks up to 1 GiB come from the heap and what is freed stays there for the
next layer (`reuse_freed`); what the vision tower's activations leave is given
back once the tower has run, so that it does not add to the language model's
peak. The load is left as it was: its peak depends on temporaries going back to
the OS between its trims. Measured in docs/performance.md ("glibc's heap
during generation"): the vision tower's page faults fell 2.5-6x, the whole int8
request took 0.94x (emulated AVX2) and 0.99x (native bf16) of its time before,
and the peak is the same.
"""
from __future__ import annotations

import sys

# mallopt's parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

# Blocks up to this size come from the heap after `reuse_freed` (the largest activation
# of the sample image's forward pass is 31 MB; larger blocks are mapped as glibc does).
MMAP_THRESHOLD = 1 << 30
# ... and free memory at the top of the heap is kept up to this (mallopt's int:
# the most it takes): the next forward pass reuses it.
TRIM_THRESHOLD = (1 << 31) - 1

_LIBC: list = []


def _libc():
    """glibc through ctypes, or None (another C library, another OS)."""
    if not _LIBC:
        lib = None
        if sys.platform.startswith("linux"):
            import ctypes

            try:
                candidate = ctypes.CDLL("libc.so.6")
                if hasattr(candidate, "malloc_trim") and hasattr(candidate, "mallopt"):
                    lib = candidate
            except OSError:
                pass
        _LIBC.append(lib)
    return _LIBC[0]


def trim() -> None:
    """glibc's malloc_trim(0): return free heap pages to the OS (a no-op elsewhere).

    Freed tensors of a few MB stay in glibc's heap, counted in the resident
    set, and the holes they leave between live tensors are rarely reused
    whole: without this, quantizing 197 weights one after another peaked at
    2 GB above the final size.
    """
    lib = _libc()
    if lib is not None:
        lib.malloc_trim(0)


def tune_for_generation(model) -> bool:
    """After a load on the CPU: `reuse_freed`, and a trim each time the vision tower has run
    (`model.model.visual`, Qwen3-VL's), so that what its activations leave in the heap does not
    add to the language model's peak. False where glibc is not there (nothing is changed)."""
    if not reuse_freed():
        return False
    visual = getattr(getattr(model, "model", None), "visual", None)
    if visual is not None:
        visual.register_forward_hook(_trim_after)
    return True


def _trim_after(module, args, output) -> None:
    trim()


def reuse_freed() -> bool:
    """Keep freed memory in the heap for reuse (see the module doc); False where it cannot (not glibc)."""
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(lib.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
