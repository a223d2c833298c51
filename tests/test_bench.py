"""`fer-diag bench` on a tiny model: the ratios are the measured seconds over the measured floor."""

import pytest

from fer_diag.bench import run_bench
from fer_diag.data.sources import MissingCorpusError


def test_bench_reports_consistent_ratios(tiny_hooked):
    try:
        res = run_bench(tiny_hooked, n_seqs=4, memory_sizes=(), repeats=2, batch_size=2, seq_len=16)
    except MissingCorpusError as e:
        pytest.skip(str(e))
    assert res.windows == 4 and res.tokens == 4 * 16 and res.n_saes == 0
    assert res.forward_s > 0 and res.floor_spread >= 1.0
    assert res.ratio_stream == pytest.approx(res.audit_stream_s / res.forward_s)
    assert res.ratio_total == pytest.approx(res.audit_total_s / res.forward_s)
    assert res.capture_s > 0  # timed, not left at a default
    assert res.ratio_stream_rotations == pytest.approx(res.audit_stream_rotations_s / res.forward_s)
    assert res.basis_rotations == 2
    assert set(res.fixed_s) == {"setup", "scaffold_intervention", "statistics", "verdict"}
    assert res.audit_total_s >= res.audit_stream_s + res.fixed_s["statistics"]
    assert res.ce_splice_s == 0.0  # no SAE, nothing spliced
