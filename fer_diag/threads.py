"""Threads for numpy-heavy loops whose items write disjoint outputs (numpy's sorts and reductions release the GIL).

Torch ops already use every core; single-threaded numpy leaves all but one idle.
:func:`thread_map` runs such a loop on one thread per torch thread, in a pool
shared by the whole process.

Torch ops inside the pool run on their own thread only (``torch.set_num_threads(1)``
there; the pool gives the parallelism). Otherwise, under torch's OpenMP backend,
each pool thread starts an OpenMP team of its own, and from then on the main thread's small torch ops run
about twice as slowly here (libgomp; measured on the token readouts: 0.045 →
0.09 s per batch, for the rest of the process).
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


def _one_torch_thread() -> None:
    torch.get_num_threads()  # torch's per-thread set-up first: it would apply the process's count later
    torch.set_num_threads(1)


@cache
def _pool() -> ThreadPoolExecutor:
    n = max(1, torch.get_num_threads())
    if not torch.backends.openmp.is_available():  # torch's own thread pool is shared: nothing to set per thread
        return ThreadPoolExecutor(n, thread_name_prefix=_PREFIX)
    ready = threading.Barrier(n)
    pool = ThreadPoolExecutor(n, thread_name_prefix=_PREFIX, initializer=_one_torch_thread)
    for f in [pool.submit(ready.wait) for _ in range(n)]:  # every thread started (and set to 1) now
        f.result()
    torch.set_num_threads(n)  # set_num_threads(1) also became the default of threads started later: undo that
    return pool


os.register_at_fork(after_in_child=_pool.cache_clear)  # a forked child has none of the parent's threads


def thread_map(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """``[fn(x) for x in items]`` on the shared threads; the first exception raised is re-raised here.

    Called from one of those threads (a nested loop), it runs in the caller instead of
    waiting on work queued behind itself.
    """
    if threading.current_thread().name.startswith(_PREFIX):
        return [fn(x) for x in items]
    return list(_pool().map(fn, items))
