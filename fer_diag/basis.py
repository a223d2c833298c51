"""Bases: how a hook's vector is read (DESIGN §2).

:class:`RawBasis` reads the hook's own coordinates (neurons / residual dims).
:class:`RotatedBasis` reads them after a fixed, seeded random orthogonal change
of basis — a *generic* basis, for the verdict's basis-dependence test on hooks
whose basis is not privileged (:func:`basis_privilege`).
:class:`SAEBasis` reads an SAE's latents via sae-lens ``SAE.encode`` for the
hooks that have an SAE; it also decodes (for fidelity) and splices
reconstructions into forward passes for the CE-loss score
(:meth:`SAEBasis.ce_sums`). Reading runs in inference mode on the SAE's device
and returns float32 on CPU, like :mod:`fer_diag.capture`.
"""

from __future__ import annotations

import re
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial

import torch
from sae_lens import SAE, GatedSAE, JumpReLUSAE, StandardSAE, TrainingSAE
from transformer_lens import HookedTransformer

from fer_diag.capture import ActivationBatch, forward_readouts, hook_layer

_RESID_POST = ".hook_resid_post"
_RESID_HOOK = re.compile(r"\.hook_resid_(pre|mid|post)$")
_ABLATED_CACHE = 16  # shared ablated log-probs kept per model (SAEBasis._ablated_nll)
#: sae-lens decoders that start with ``feature_acts @ W_dec`` (then bias, hooks, output norm, reshape):
#: they take a sparse matrix of latents as they are
_LINEAR_DECODERS = frozenset(c.decode for c in (StandardSAE, JumpReLUSAE, GatedSAE, TrainingSAE))
#: latents denser than this are decoded as a dense matrix (the sparse product is slower past ~7 % here)
_SPARSE_DECODE = 0.05


class RawBasis:
    """The hook's own coordinates: reading is the identity."""

    name = "raw"

    def read(self, batch: ActivationBatch) -> ActivationBatch:
        return batch


_NEURON_HOOK = re.compile(r"\.mlp\.hook_(pre|post|pre_linear)$")
_ROTARY_HOOK = re.compile(r"\.attn\.hook_(q|k|rot_q|rot_k)$")
_HEAD_HOOK = re.compile(r"\.attn\.hook_(z|v)$")


def basis_privilege(hook: str) -> str | None:
    """Why ``hook``'s coordinates are a privileged basis (so the basis-dependence test does not apply), or None.

    The residual stream, attention and MLP outputs and per-head ``z`` / ``v`` are
    not privileged: an orthogonal change of basis folds into the weights that
    write and read them, with identical outputs. MLP neurons are privileged by
    the elementwise nonlinearity; per-head queries and keys by the rotary
    embedding, which acts on fixed coordinate pairs.
    """
    if _NEURON_HOOK.search(hook):
        return "MLP neurons: the elementwise nonlinearity makes this basis privileged"
    if _ROTARY_HOOK.search(hook):
        return "queries / keys: the rotary embedding acts on fixed coordinate pairs"
    return None


@dataclass
class RotatedBasis:
    """Hook vectors in a generic basis: h ↦ h Q for a fixed Haar-random orthogonal Q drawn from ``seed``.

    One Q per width. Per-head hooks (``attn.hook_z`` / ``hook_v``, flattened to
    ``heads · d_head`` by capture; ``hook_v`` has the key/value heads under
    grouped-query attention) get a block-diagonal Q with one Haar block of size
    ``d_head`` per head, the change of basis that folds into W_V / W_O. Hooks
    with a privileged basis (:func:`basis_privilege`) are left out. The batch
    is named ``raw@rot{seed}``: a raw basis read another way (no SAE latents).
    """

    seed: int
    d_head: int | None = None
    _cache: dict[tuple[int, bool], torch.Tensor] = field(default_factory=dict, repr=False)

    @property
    def name(self) -> str:
        return f"raw@rot{self.seed}"

    def rotation(self, d: int, per_head: bool = False) -> torch.Tensor:
        """The float32 ``[d, d]`` Q used for width ``d``."""
        from fer_diag.transforms import haar_orthogonal

        key = (d, per_head)
        if key not in self._cache:
            if per_head and self.d_head and d % self.d_head == 0:
                blocks = [haar_orthogonal(self.d_head, self.seed * 1009 + h) for h in range(d // self.d_head)]
                q = torch.block_diag(*blocks)
            else:
                q = haar_orthogonal(d, self.seed)
            self._cache[key] = q.float()
        return self._cache[key]

    def read(self, batch: ActivationBatch, hooks: Sequence[str] | None = None) -> ActivationBatch:
        """The batch in this basis, for its hooks without a privileged basis."""
        acts = {
            h: a @ self.rotation(a.shape[-1], bool(_HEAD_HOOK.search(h)))
            for h, a in batch.acts.items()
            if (hooks is None or h in hooks) and basis_privilege(h) is None
        }
        return batch.with_acts(acts, self.name)


@dataclass
class CESums:
    """Summed next-token NLL over ``tokens`` counted predictions: clean, SAE-spliced and zero-ablated.

    The CE-loss score is (CE_abl − CE_sae)/(CE_abl − CE_clean) on the means (1 =
    the reconstruction loses nothing, 0 = as bad as zeroing the hook).
    """

    clean: float = 0.0
    sae: float = 0.0
    ablated: float = 0.0
    tokens: int = 0

    def __add__(self, other: CESums) -> CESums:
        return CESums(
            self.clean + other.clean, self.sae + other.sae, self.ablated + other.ablated, self.tokens + other.tokens
        )

    def score(self) -> float | None:
        """(CE_abl − CE_sae)/(CE_abl − CE_clean), or None when undefined (no tokens, or ablation costs nothing)."""
        denom = self.ablated - self.clean
        return None if self.tokens == 0 or denom == 0 else (self.ablated - self.sae) / denom


class SAEBasis:
    """SAE latents of the hooks in ``saes`` (``{hook: sae-lens SAE}``, see :func:`fer_diag.sae.loading.match_saes`)."""

    def __init__(self, saes: dict[str, SAE], name: str = "sae") -> None:
        self.saes = saes
        self.name = name
        # model → (hook, length, first token) → ablated log-probs (see _ablated_nll); gone with the model
        self._ablated_logp: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    @property
    def hooks(self) -> list[str]:
        return list(self.saes)

    @torch.inference_mode()
    def encode(self, hook: str, x: torch.Tensor) -> torch.Tensor:
        """Latents ``[..., d_sae]`` of the hook's activations ``x`` (float32, CPU)."""
        sae = self.saes[hook]
        return sae.encode(x.to(sae.device, sae.dtype)).to("cpu", torch.float32)

    @torch.inference_mode()
    def decode(self, hook: str, latents: torch.Tensor) -> torch.Tensor:
        """Reconstruction of the hook's activations from ``latents`` (float32, CPU)."""
        sae = self.saes[hook]
        return decode(sae, latents.to(sae.device, sae.dtype)).to("cpu", torch.float32)

    def read(self, batch: ActivationBatch) -> ActivationBatch:
        """The batch in this basis: latents for each hook of the batch that has an SAE (others are left out)."""
        return batch.with_acts({h: self.encode(h, a) for h, a in batch.acts.items() if h in self.saes}, self.name)

    @torch.inference_mode()
    def ce_sums(
        self,
        model,
        tokens: torch.Tensor,
        mask: torch.Tensor,
        clean_nll: torch.Tensor | None = None,
        acts: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, list[CESums]]:
        """CE-loss sums per hook and window of one batch ``tokens`` ``[b, t]`` with counted positions ``mask``.

        Up to two forward passes per hook (reconstruction spliced in, hook
        zero-ablated), plus a clean one unless ``clean_nll`` — the clean run's
        per-token NLL as :func:`fer_diag.capture.token_readouts` gives it — is
        passed. With ``acts`` (the clean hook activations of these windows, as
        captured) a HookedTransformer (not a Shortformer) resumes from the block after a
        ``hook_resid_post`` instead of running the blocks before it again; other
        hooks and models splice the value in through a forward hook. The
        zero-ablated pass of a residual-stream hook is often run once per run,
        not per batch (:meth:`_ablated_nll`).

        The reconstruction (and the zero-ablation) replaces the hook's vector at
        the counted positions only: position 0 / BOS keeps its own vector, as in
        every other statistic here (the SAEs are not trained on it, and it
        carries the massive activations). NLL is summed over predictions of
        counted tokens; one :class:`CESums` per window, in row order.
        """
        device = next(model.parameters()).device
        tokens, mask = tokens.to(device), mask.to(device)
        count = mask[:, 1:]  # predictions of counted tokens (position 0 is never predicted)
        if clean_nll is None:
            clean = _spliced_nll(model, tokens, count)
        else:
            clean = torch.where(count.cpu(), clean_nll[:, 1:].double(), 0.0).sum(1)
        n_tok = count.sum(1).cpu()
        out = {}
        for hook, sae in self.saes.items():
            cached = None if acts is None else acts.get(hook)
            spliced = _spliced_nll(model, tokens, count, hook, _splice(mask, partial(_recon, sae)), cached)
            ablated = self._ablated_nll(model, tokens, mask, hook, cached)
            out[hook] = [
                CESums(float(c), float(s), float(a), int(n))
                for c, s, a, n in zip(clean, spliced, ablated, n_tok, strict=True)
            ]
        return out

    def _ablated_nll(
        self, model, tokens: torch.Tensor, mask: torch.Tensor, hook: str, acts: torch.Tensor | None
    ) -> torch.Tensor:
        """Per-window summed NLL with the hook zero-ablated at the counted positions.

        On a HookedTransformer, zeroing a residual-stream hook (``hook_resid_pre`` /
        ``mid`` / ``post``, the whole stream there) at every position but 0 leaves
        what follows only the vector at position 0 (a function of the first token,
        by causality) and zeros: the logits depend on (position, first token), not
        on the window. They are then computed once, from one window, and kept for
        later batches with the same first token and length (at most
        ``_ABLATED_CACHE`` entries per model). Every other case runs the ablated
        pass itself: position 0 ablated too or differing between windows, positions
        left out (padding), a model that masks pad tokens it finds in the input
        (left padding), and TransformerBridge, whose hook aliases may name only
        part of the stream (``hook_resid_mid`` is the MLP's input there).
        """
        count = mask[:, 1:]
        shared = (
            isinstance(model, HookedTransformer)
            and _RESID_HOOK.search(hook) is not None
            and bool(count.all())
            and not bool(mask[:, 0].any())
            and bool((tokens[:, 0] == tokens[0, 0]).all())
            and getattr(model.tokenizer, "padding_side", "right") != "left"
        )
        if not shared:
            return _spliced_nll(model, tokens, count, hook, _splice(mask, torch.zeros_like), acts)
        weight = next(model.parameters())
        cached = self._ablated_logp.setdefault(model, {})
        key = (hook, tokens.shape[1], int(tokens[0, 0]), weight.device, weight.dtype)
        if key not in cached:
            if len(cached) >= _ABLATED_CACHE:
                del cached[next(iter(cached))]  # the oldest
            first = None if acts is None else acts[:1]
            logits = _run_with(model, tokens[:1], hook, _splice(mask[:1], torch.zeros_like), first)
            cached[key] = torch.log_softmax(logits[0, :-1].float(), dim=-1)  # [t − 1, vocab]
        logp = cached[key]
        nll = -logp[torch.arange(logp.shape[0], device=logp.device), tokens[:, 1:]]  # [b, t − 1]
        return torch.where(count, nll.double(), 0.0).sum(1).cpu()


def _run_with(model, tokens: torch.Tensor, hook: str, replace, acts: torch.Tensor | None, **kwargs) -> torch.Tensor:
    """Logits (or what ``kwargs`` such as ``stop_at_layer`` ask the forward pass for) with the hook's
    activation passed through ``replace`` (the forward-hook signature).

    With the hook's captured ``acts``, a HookedTransformer resumes after a ``hook_resid_post``
    (``start_at_layer``); a Shortformer does not, as its blocks also need the positional embedding.
    """
    layer = hook_layer(hook)
    resumable = isinstance(model, HookedTransformer) and model.cfg.positional_embedding_type != "shortformer"
    if acts is not None and resumable and layer is not None and hook.endswith(_RESID_POST):
        resid = replace(acts.to(tokens.device, next(model.parameters()).dtype))
        return model(resid, tokens=tokens, start_at_layer=layer + 1, **kwargs)
    return model.run_with_hooks(tokens, fwd_hooks=[(hook, replace)], **kwargs)


def _spliced_nll(
    model, tokens: torch.Tensor, count: torch.Tensor, hook: str | None = None, replace=None, acts=None
) -> torch.Tensor:
    """Per-window summed NLL ``[b]`` (float64, CPU) of the predictions of counted tokens (``count [b, t − 1]``), with
    ``hook`` passed through ``replace`` (:func:`_run_with`; none: the clean model)."""
    run = partial(model, tokens) if hook is None else partial(_run_with, model, tokens, hook, replace, acts)
    nll = forward_readouts(model, tokens, run, [] if hook is None else [hook])[0][:, 1:]
    return torch.where(count.cpu(), nll.double(), 0.0).sum(1)


def _recon(sae: SAE, acts: torch.Tensor) -> torch.Tensor:
    """x̂ = decode(encode(x)); per-head hooks (``[b, t, heads, d_head]``) are read flattened, as capture reads them."""
    flat = acts.flatten(2) if acts.ndim == 4 else acts
    return decode(sae, sae.encode(flat.to(sae.dtype))).to(acts.dtype).reshape(acts.shape)


def decode(sae: SAE, latents: torch.Tensor) -> torch.Tensor:
    """``sae.decode(latents)``; sparse CPU latents ``[n, d_sae]`` go in as a CSR matrix where the decoder allows it.

    With L0 ≈ 60 of 2,304 latents the product costs half the dense one; the result
    differs from the dense product by float32 rounding only (summation order).
    """
    flat = latents.ndim == 2 and latents.device.type == "cpu" and latents.shape[0] > 0
    linear = flat and type(sae).decode in _LINEAR_DECODERS
    if linear and torch.count_nonzero(latents) <= _SPARSE_DECODE * latents.numel():
        with warnings.catch_warnings():  # torch calls its sparse CSR support beta; the product is plain
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
            return sae.decode(latents.to_sparse_csr())
    return sae.decode(latents)


def _splice(mask: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]):
    """A forward hook replacing the activation at ``mask`` positions by ``fn(activation)``."""

    def hook(acts: torch.Tensor, hook=None) -> torch.Tensor:
        m = mask.view(*mask.shape, *([1] * (acts.ndim - 2)))
        return torch.where(m, fn(acts), acts)

    return hook
