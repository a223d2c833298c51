"""Function-preserving changes of basis (DESIGN §5 "Model comparison", §6 "basis-dependent").

:func:`rotate_residual` rotates the residual stream of a TransformerLens
``HookedTransformer`` by a seeded random orthogonal ``Q``: the new model computes
the same logits, but every vector it writes to the residual stream is the old one
times ``Q``. It is the canonical "same behaviour, different internals" pair, and
the fixture for the verdict's basis flag: a sparsity metric read in the residual
basis (Hoyer, Gini, top-p energy, …) changes under it, the covariance
participation ratio and norms do not.

Convention: row vectors, ``h_rot = h @ Q`` with ``Q`` orthogonal ``[d_model, d_model]``.
The weights become

* writers (``·Q`` on their d_model axis): ``W_E``, ``W_pos``, every block's
  ``W_O``, ``b_O``, ``W_out``, ``b_out``;
* readers (``Qᵀ·`` on their d_model axis): ``W_Q``, ``W_K``, ``W_V`` (also the
  grouped-query ``_W_K`` / ``_W_V``), ``W_in``, ``W_gate``, ``W_U``.

Why the logits are unchanged: with the norm weights folded into the readers
(TransformerLens ``fold_ln``: RMSNorm → ``RMSNormPre``, LayerNorm → ``LNPre``) a
block reads ``norm(x) W`` with a weightless norm. ``RMSNormPre`` divides by
‖x‖/√d, and ‖xQ‖ = ‖x‖, so ``norm(xQ) Qᵀ W = norm(x) W``. ``LNPre`` also centres:
x − mean(x)·1 commutes with ``Q`` only if ``Q`` fixes the all-ones direction
(then ``Qᵀ1 = 1`` too and mean(xQ) = mean(x)), so for LayerNorm models ``Q`` is
drawn on the orthogonal complement of 1/√d (``Q = u uᵀ + P R Pᵀ``, u = 1/√d,
``P`` an orthonormal basis of u⊥, ``R`` Haar on O(d−1)). A model without any
normalisation is linear in the residual stream's basis and needs nothing more.

What moves and what does not: ``hook_resid_*``, ``hook_embed`` / ``hook_pos_embed``,
``attn.hook_result`` / ``hook_attn_out``, ``hook_mlp_out`` and the normalised stream
``ln*.hook_normalized`` are rotated (h → h Q); queries, keys, values, ``hook_z``,
attention patterns and the MLP neurons (``mlp.hook_pre`` / ``hook_post``) are
unchanged — the elementwise nonlinearity privileges the neuron basis, the residual
stream has no privileged basis.

Not supported (:class:`UnsupportedRotationError`): TransformerBridge (pass a
``HookedTransformer``, or fold and convert first), post-sublayer norms
(``use_normalization_before_and_after``, Gemma-2/3: their elementwise weights
cannot be folded), mixture-of-experts, and any parameter this module does not
know the residual axis of. As a safety net the rotated copy is checked on a few
random tokens (``check=True``): if its logits differ, the error says so.
"""

from __future__ import annotations

import copy
import re
import warnings
from typing import TYPE_CHECKING

import torch

from fer_diag.errors import BadInputError

if TYPE_CHECKING:
    from sae_lens import SAE
    from transformer_lens import HookedTransformer

__all__ = [
    "UnsupportedRotationError",
    "haar_orthogonal",
    "residual_rotation",
    "rotate_residual",
    "rotate_sae",
]

#: attribute of a rotated model holding the ``Q`` used (float64, CPU): h_rot = h @ Q
ROTATION_ATTR = "fer_diag_rotation"

_BLOCK = r"blocks\.\d+\."
_WRITERS = re.compile(rf"^(embed\.W_E|pos_embed\.W_pos|{_BLOCK}attn\.(W_O|b_O)|{_BLOCK}mlp\.(W_out|b_out))$")
_READERS = re.compile(rf"^({_BLOCK}attn\.(W_Q|W_K|W_V|_W_K|_W_V)|{_BLOCK}mlp\.(W_in|W_gate)|unembed\.W_U)$")
_UNTOUCHED = re.compile(
    rf"^({_BLOCK}attn\.(b_Q|b_K|b_V|_b_K|_b_V|mask|IGNORE|rotary_sin|rotary_cos|alibi|[qk]_norm\.[wb])"
    rf"|{_BLOCK}mlp\.(b_in|ln\.[wb])|unembed\.b_U)$"
)
_FOLDED = {"RMSPre", "LNPre", None}
_SAE_INPUT, _SAE_OUTPUT = ("W_enc",), ("W_dec", "b_dec")
_SAE_LATENT = {"b_enc", "threshold", "b_gate", "b_mag", "r_mag"}  # live in the latent space: unchanged


class UnsupportedRotationError(BadInputError):
    """A model or SAE that :func:`rotate_residual` / :func:`rotate_sae` cannot rotate; the message names why.

    A :class:`fer_diag.errors.FerDiagError` and a ``ValueError``.
    """


def haar_orthogonal(d: int, seed: int = 0, *, fix_ones: bool = False) -> torch.Tensor:
    """A seeded Haar-random orthogonal ``[d, d]`` matrix (float64, CPU).

    QR of a standard Gaussian matrix drawn from ``torch.Generator().manual_seed(seed)``
    with the sign fix Q ← Q·diag(sign(diag R)), which makes the distribution Haar on
    O(d) (Mezzadri 2007, "How to generate random matrices from the classical compact
    groups"). ``fix_ones=True`` draws from the subgroup that fixes the all-ones
    vector (``Q 1 = 1``), Haar on it: ``Q = u uᵀ + P R Pᵀ`` with u = 1/√d, ``P`` an
    orthonormal basis of u⊥ and ``R`` Haar on O(d−1) — what a LayerNorm model needs.
    """
    if d < 1:
        raise ValueError(f"d must be ≥ 1, got {d}")
    gen = torch.Generator().manual_seed(int(seed))
    k = d - 1 if fix_ones else d
    if k == 0:
        return torch.ones(1, 1, dtype=torch.float64)
    q, r = torch.linalg.qr(torch.randn(k, k, generator=gen, dtype=torch.float64))
    signs = torch.sign(torch.diagonal(r))
    q = q * torch.where(signs == 0, 1.0, signs)
    if not fix_ones:
        return q
    basis = torch.eye(d, dtype=torch.float64)
    basis[:, 0] = 1.0
    p = torch.linalg.qr(basis)[0][:, 1:]  # orthonormal basis of 1⊥ (first QR column is ±1/√d)
    u = torch.full((d, 1), d**-0.5, dtype=torch.float64)
    return u @ u.T + p @ q @ p.T


def residual_rotation(model) -> torch.Tensor | None:
    """The ``Q`` a model from :func:`rotate_residual` was rotated by (h_rot = h @ Q), or None."""
    return getattr(model, ROTATION_ATTR, None)


def rotate_residual(
    model: HookedTransformer,
    seed: int = 0,
    *,
    rotation: torch.Tensor | None = None,
    check: bool = True,
) -> HookedTransformer:
    """A copy of ``model`` with its residual stream rotated by a seeded random orthogonal ``Q`` (module docstring).

    ``model`` is untouched (a deep copy is rotated; the tokenizer is shared). A model
    whose norms are not folded (``cfg.normalization_type`` "RMS" / "LN") is folded
    first (TransformerLens ``load_and_process_state_dict(fold_ln=True,
    center_writing_weights=False, center_unembed=False, fold_value_biases=False)``:
    the norm weights and biases move into the readers' weights and biases, and no
    activation outside the norms changes — not the residual stream, ``hook_z`` or
    the logits; only a SoLU-LN MLP's ``hook_post`` changes, its LayerNorm weights
    moving into ``W_out``).
    ``Q`` is :func:`haar_orthogonal` ``(d_model, seed)`` — fixing the all-ones vector
    for LayerNorm models — unless ``rotation`` gives one (it must be orthogonal, and
    fix 1 for LayerNorm models). The result's ``fer_diag_rotation`` attribute
    (:func:`residual_rotation`) holds ``Q`` as a float64 CPU tensor, relative to the
    model passed in; its residual-stream activations are the input model's ``@ Q``
    and its logits the same up to float rounding (~1e-5 relative in float32).

    ``check=True`` runs both models on two random 12-token sequences and raises
    :class:`UnsupportedRotationError` if the logits differ by more than 1e-3 of their
    scale (1e-1 in half precision): an architecture feature this function misses
    fails loudly instead of silently.
    """
    from transformer_lens import HookedTransformer

    if not isinstance(model, HookedTransformer):
        kind = type(model).__name__
        if "Bridge" in kind:
            raise UnsupportedRotationError(
                f"rotate_residual needs a HookedTransformer, got a {kind}: its Hugging Face weights are not folded "
                "and not in TransformerLens's layout. Pass a HookedTransformer (fer_diag.models.load_model(..., "
                "bridge=False) or HookedTransformer.from_pretrained with fold_ln=True), or fold and convert first."
            )
        raise UnsupportedRotationError(f"rotate_residual needs a TransformerLens HookedTransformer, got a {kind}")
    cfg = model.cfg
    if getattr(cfg, "use_normalization_before_and_after", False):
        raise UnsupportedRotationError(
            "this model normalises sublayer outputs too (use_normalization_before_and_after, as Gemma-2/3): the "
            "weights of those norms act elementwise on the residual basis and cannot be folded, so no rotation of "
            "the residual stream preserves its function"
        )
    if getattr(cfg, "num_experts", None):
        raise UnsupportedRotationError("mixture-of-experts models are not supported by rotate_residual")
    norm = cfg.normalization_type
    if norm not in _FOLDED | {"RMS", "LN"}:
        raise UnsupportedRotationError(
            f"normalization_type {norm!r} is not supported: RMS / LN (folded here), RMSPre / LNPre, or None"
        )
    layer_norm = norm in ("LN", "LNPre")
    d = int(cfg.d_model)
    q = haar_orthogonal(d, seed, fix_ones=layer_norm) if rotation is None else _checked_rotation(rotation, d)
    if layer_norm and not torch.allclose(q.sum(1), torch.ones(d, dtype=q.dtype), atol=1e-8):
        raise UnsupportedRotationError(
            "a LayerNorm model needs a rotation that fixes the all-ones vector (LNPre centres the residual "
            "stream); use haar_orthogonal(d, seed, fix_ones=True)"
        )

    tok = getattr(model, "tokenizer", None)
    new = copy.deepcopy(model, memo={id(tok): tok} if tok is not None else None)
    if norm in ("RMS", "LN"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            new.load_and_process_state_dict(
                new.state_dict(),
                fold_ln=True,
                center_writing_weights=False,
                center_unembed=False,
                fold_value_biases=False,
            )
        if new.cfg.normalization_type not in _FOLDED:
            raise UnsupportedRotationError(
                f"TransformerLens could not fold this model's {norm} norms (still {new.cfg.normalization_type!r})"
            )
    _rotate_state(new, q)
    setattr(new, ROTATION_ATTR, q)
    if check:
        _check_logits(model, new)
    return new


def _checked_rotation(rotation: torch.Tensor, d: int) -> torch.Tensor:
    q = torch.as_tensor(rotation).detach().to("cpu", torch.float64)
    if q.shape != (d, d):
        raise ValueError(f"rotation must be [{d}, {d}], got {list(q.shape)}")
    if not torch.allclose(q @ q.T, torch.eye(d, dtype=torch.float64), atol=1e-6):
        raise ValueError("rotation is not orthogonal (Q Qᵀ ≠ I)")
    return q


def _rotate_state(model: HookedTransformer, q: torch.Tensor) -> None:
    """Rotate every residual-stream axis of ``model``'s state dict in place; unknown parameters raise."""
    state = model.state_dict()
    unknown = [k for k in state if not (_WRITERS.match(k) or _READERS.match(k) or _UNTOUCHED.match(k))]
    if unknown:
        raise UnsupportedRotationError(
            "rotate_residual does not know how these parameters read or write the residual stream: "
            + ", ".join(unknown[:8])
            + (f" (+{len(unknown) - 8} more)" if len(unknown) > 8 else "")
        )
    new_state = {}
    for key, w in state.items():
        dt = torch.promote_types(w.dtype, torch.float32)  # float32 products: rounding ~1e-7, far below the check's 1e-3
        if _WRITERS.match(key):
            new_state[key] = (w.to(dt) @ q.to(w.device, dt)).to(w.dtype)  # d_model is the last axis
        elif _READERS.match(key):
            new_state[key] = (q.T.to(w.device, dt) @ w.to(dt)).to(w.dtype)  # d_model is the second-to-last axis
        else:
            new_state[key] = w
    model.load_state_dict(new_state, strict=True)


@torch.no_grad()
def _check_logits(original: HookedTransformer, rotated: HookedTransformer) -> None:
    cfg = original.cfg
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, int(cfg.d_vocab), (2, min(12, int(cfg.n_ctx))), generator=gen)
    device = next(original.parameters()).device
    a = original(tokens.to(device)).double()
    b = rotated(tokens.to(device)).double()
    # a common per-position shift of the logits would not change the model, but folding here never adds one
    scale = a.abs().max().clamp_min(1e-6)
    tol = 1e-3 if cfg.dtype in (torch.float32, torch.float64) else 1e-1
    diff = float((a - b).abs().max() / scale)
    if not diff <= tol:
        raise UnsupportedRotationError(
            f"the rotated model's logits differ from the original's (max |Δ| / max |logit| = {diff:.2e} > {tol}): "
            "this architecture has a feature rotate_residual does not handle"
        )


def rotate_sae(sae: SAE, rotation: torch.Tensor) -> SAE:
    """A copy of an sae-lens SAE that reads the rotated stream ``x Q`` exactly as ``sae`` reads ``x``.

    ``W_enc ← Qᵀ W_enc``, ``W_dec ← W_dec Q``, ``b_dec ← b_dec Q``; the latent-space
    parameters (``b_enc``, JumpReLU ``threshold``, gated ``b_gate`` / ``b_mag`` /
    ``r_mag``) are unchanged. Then ``encode(x Q)`` = ``encode(x)`` (the pre-activations
    (xQ − b_dec Q) Qᵀ W_enc are the same numbers) and ``decode`` returns the old
    reconstruction ``@ Q``; decoder row norms (TopK's ``rescale_acts_by_decoder_norm``)
    and matching pursuit's inner products are unchanged too. Covers the Standard,
    TopK, BatchTopK, Matryoshka, AbsTopK, JumpReLU, Gated and MatchingPursuit SAEs of
    sae-lens 6; ``normalize_activations`` "none", "expected_average_only_in" and
    "constant_norm_rescale" (norm-based) are rotation-invariant, "layer_norm" only
    for a ``Q`` that fixes the all-ones vector. Transcoders (input and output at
    different hooks) and anything with other parameters raise
    :class:`UnsupportedRotationError`.
    """
    cfg = sae.cfg
    d = int(cfg.d_in)
    q = _checked_rotation(rotation, d)
    if hasattr(cfg, "d_out"):
        raise UnsupportedRotationError(f"{type(sae).__name__} is a transcoder; rotate_sae handles SAEs only")
    mode = getattr(cfg, "normalize_activations", "none")
    if mode == "layer_norm" and not torch.allclose(q.sum(1), torch.ones(d, dtype=q.dtype), atol=1e-8):
        raise UnsupportedRotationError(
            "this SAE layer-normalises its input: only a rotation that fixes the all-ones vector preserves its latents"
        )
    if mode not in ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm"):
        raise UnsupportedRotationError(f"normalize_activations={mode!r} is not supported by rotate_sae")
    state = sae.state_dict()
    unknown = [k for k in state if k not in (*_SAE_INPUT, *_SAE_OUTPUT, *_SAE_LATENT)]
    if unknown or "W_dec" not in state:
        raise UnsupportedRotationError(
            f"rotate_sae does not know how to rotate {type(sae).__name__} (parameters {sorted(state)})"
        )
    new = copy.deepcopy(sae)
    rotated = {}
    for key, w in state.items():
        if key == "W_enc":  # [d_in, d_sae]
            rotated[key] = (q.T.to(w.device) @ w.double()).to(w.dtype)
        elif key in _SAE_OUTPUT:  # [d_sae, d_in] / [d_in]
            rotated[key] = (w.double() @ q.to(w.device)).to(w.dtype)
        else:
            rotated[key] = w
    new.load_state_dict(rotated, strict=True)
    return new
