"""Giving memory back to the system: pages of mapped files, and glibc's free heap (Linux)."""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from pathlib import Path

import torch

_MADV_PAGEOUT = 21  # Linux >= 5.4


def release_pages(tensor: torch.Tensor) -> None:
    """Hint Linux to drop ``tensor``'s memory from the resident set (``MADV_PAGEOUT``).

    A hint that never loses data: clean pages of a mapped file are read again and anonymous
    ones swapped if ever touched again, so neighbours sharing a page are safe. A no-op off
    Linux or on older kernels.
    """
    libc = _libc()
    if libc is None or tensor.device.type != "cpu" or tensor.numel() == 0:
        return
    page = os.sysconf("SC_PAGE_SIZE")
    start = tensor.data_ptr() // page * page
    end = -(-(tensor.data_ptr() + tensor.numel() * tensor.element_size()) // page) * page
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)


def trim_heap() -> None:
    """glibc keeps freed memory in its heap; ``malloc_trim`` returns it to the system."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


def release_file_pages(path: Path) -> int:
    """Hint Linux to drop the resident pages of every mapping of ``path`` in this process
    (``MADV_PAGEOUT``); returns how many mappings. Clean file pages are read again if touched,
    so this never loses data: it only gives back pages nobody reads any more (OpenVINO maps
    model.bin and, once it has repacked the weights for this CPU, never reads most of it)."""
    libc = _libc()
    if libc is None:
        return 0
    try:
        target = os.path.realpath(path)
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return 0
    count = 0
    for line in lines:
        fields = line.split(maxsplit=5)
        if len(fields) == 6 and fields[5] == target:
            start, end = (int(x, 16) for x in fields[0].split("-"))
            libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_PAGEOUT)
            count += 1
    return count
