"""Sun et al.'s (2024, arXiv 2402.17762) scaffold intervention on massive activations.

Massive activations act as fixed biases: setting them to their mean across
inputs barely changes the loss, zeroing them destroys it. This runs the model
(with hooks), so it is a step of its own, after the analyzers:
:func:`scaffold_intervention` is the test, :func:`scaffold_report` picks the
first hook with massive activations from a
:class:`~fer_diag.analyzers.massive.MassiveResult` and runs the test on one
batch of windows.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch

from fer_diag.analyzers.massive import MassiveResult
from fer_diag.capture import ActivationBatch, forward_readouts


@torch.no_grad()
def scaffold_intervention(
    model,
    tokens: torch.Tensor,
    hook: str,
    dims: Sequence[int],
    positions: Sequence[int] | torch.Tensor,
    mean_values: Sequence[float] | torch.Tensor,
    loss_mask: torch.Tensor | None = None,
    clean_nll: torch.Tensor | None = None,
) -> dict:
    """Sun et al.'s test of massive activations as fixed biases: mean next-token NLL of three runs.

    * clean: the model as is;
    * mean: ``h[:, p, dims] := mean_values`` at ``hook`` for the positions ``p``;
    * zero: ``h[:, p, dims] := 0``.

    ``positions`` is a list of positions (e.g. ``[0]``) or a ``[B, T]`` bool mask
    (e.g. delimiter tokens); ``mean_values`` has one value per dim (their mean over
    inputs, e.g. ``MassiveDim.value_mean``). NLL is averaged over predicted tokens
    (positions ≥ 1, and where ``loss_mask`` is True). Works with any model that has
    ``run_with_hooks`` (HookedTransformer, TransformerBridge). ``clean_nll``, the
    clean run's per-token NLL of these tokens (:func:`fer_diag.capture.token_readouts`,
    as a capture with logits already has it), saves the clean forward pass.
    Expected for genuine massive activations: nll_mean ≈ nll_clean ≪ nll_zero.
    """
    tokens = torch.as_tensor(tokens)
    dims_t = torch.as_tensor(list(dims), dtype=torch.long)
    means = torch.as_tensor(mean_values, dtype=torch.float32).reshape(-1)
    if len(means) != len(dims_t):
        raise ValueError(f"need one mean value per dim: {len(dims_t)} dims, {len(means)} values")
    if torch.is_tensor(positions) and positions.dtype == torch.bool:
        where = positions.cpu()
    else:
        where = torch.zeros(tokens.shape, dtype=torch.bool)
        where[:, torch.as_tensor(list(positions), dtype=torch.long)] = True

    def setter(values: torch.Tensor):
        def edit(act: torch.Tensor, hook) -> torch.Tensor:
            sel = where.to(act.device)
            sub = act[:, :, dims_t.to(act.device)]
            sub[sel] = values.to(act.device, act.dtype)
            act[:, :, dims_t.to(act.device)] = sub
            return act

        return edit

    valid = torch.ones(tokens.shape, dtype=torch.bool) if loss_mask is None else loss_mask.bool().cpu()

    def mean_nll(per_token: torch.Tensor) -> float:
        keep = valid & torch.isfinite(per_token)  # NaN at position 0
        return float(per_token[keep].mean())

    def nll(fwd_hooks: list) -> float:
        run = partial(model.run_with_hooks, tokens, fwd_hooks=fwd_hooks)
        return mean_nll(forward_readouts(model, tokens, run, [h for h, _ in fwd_hooks])[0])

    clean = nll([]) if clean_nll is None else mean_nll(clean_nll.cpu())
    mean = nll([(hook, setter(means))])
    zero = nll([(hook, setter(torch.zeros_like(means)))])
    return {
        "hook": hook,
        "dims": dims_t.tolist(),
        "n_positions": int(where.sum()),
        "nll_clean": clean,
        "nll_mean": mean,
        "nll_zero": zero,
        "delta_mean": mean - clean,
        "delta_zero": zero - clean,
    }


def scaffold_report(model, massive: MassiveResult, batch: ActivationBatch, max_windows: int = 8) -> dict | None:
    """The intervention at the first hook with massive activations at position 0, on ``batch``'s first windows.

    Sets those dims at position 0 to their mean across inputs, then to zero, on at
    most ``max_windows`` windows (two extra forward passes each); None when no hook
    has massive activations at the first position.
    """
    hook = massive.first_hook
    if hook is None:
        return None
    dims = [d for d in massive.hooks[hook].dims if d.hits_first_position > 0]
    if not dims:
        return None
    n = min(max_windows, len(batch.seq_index))
    out = scaffold_intervention(
        model,
        batch.tokens[:n],
        hook,
        [d.dim for d in dims],
        [0],
        [d.value_mean for d in dims],
        loss_mask=batch.mask[:n],
        clean_nll=None if batch.token_nll is None else batch.token_nll[:n],
    )
    return {**out, "positions": [0], "windows": n}
