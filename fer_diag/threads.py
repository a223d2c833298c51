"""Threads for numpy-heavy loops whose items write disjoint outputs (numpy's sorts and reductions release the GIL).

Torch ops already use every core; single-threaded numpy leaves all but one idle.
:func:`thread_map` runs such a loop on one thread per torch thread, in a pool
shared by the whole process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix="fer-diag")


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on the shared threads; the first exception raised is re-raised here."""
    return list(_pool().map(fn, items))
