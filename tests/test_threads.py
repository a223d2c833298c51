"""The shared threads of numpy-heavy loops."""

from __future__ import annotations

import threading

import pytest
import torch

from fer_diag.threads import thread_map


def test_thread_map_keeps_order_and_reraises():
    assert thread_map(lambda x: x * x, range(10)) == [x * x for x in range(10)]
    with pytest.raises(ZeroDivisionError):
        thread_map(lambda x: 1 / x, [1, 0, 2])


def test_nested_thread_map_runs_in_the_caller():
    def outer(i: int) -> list[tuple[int, str]]:  # would deadlock if the inner items queued behind the outer ones
        return thread_map(lambda j: (i * 10 + j, threading.current_thread().name), range(3))

    out = thread_map(outer, range(4))
    assert [[v for v, _ in row] for row in out] == [[i * 10 + j for j in range(3)] for i in range(4)]
    assert all(name.startswith("fer-diag") for row in out for _, name in row)


@pytest.mark.skipif(not torch.backends.openmp.is_available(), reason="set per thread only under OpenMP")
def test_pool_threads_run_torch_on_one_thread_and_leave_the_caller_alone():
    n = torch.get_num_threads()
    assert set(thread_map(lambda _: torch.get_num_threads(), range(8))) == {1}
    assert torch.get_num_threads() == n
    seen = []  # a thread started elsewhere afterwards gets the process's count, not the pool's
    t = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    t.start()
    t.join()
    assert seen == [n]
