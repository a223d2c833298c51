"""Threads for numpy-heavy loops whose items write disjoint outputs (numpy's sorts and reductions release the GIL).

Torch ops already use every core; single-threaded numpy leaves all but one idle.
:func:`thread_map` runs such a loop on one thread per torch thread, in a pool
shared by the whole process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from typing import TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


_PREFIX = "fer-diag"


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max(1, torch.get_num_threads()), thread_name_prefix=_PREFIX)


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the parent's threads


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on the shared threads; the first exception raised is re-raised here.

    Called from one of those threads (a nested loop), it runs in the caller instead of
    waiting on work queued behind itself.
    """
    if threading.current_thread().name.startswith(_PREFIX):
        return [fn(x) for x in items]
    return list(_pool().map(fn, items))
