"""Capture: TransformerLens hook names + token windows → a stream of activation batches.

Works on anything with the TransformerLens hook interface (``run_with_cache``,
``hook_dict``): ``HookedTransformer`` and ``TransformerBridge`` (whose hook
aliases such as ``blocks.3.hook_resid_post`` are resolved). One forward pass per
batch; the pass stops after the deepest hooked layer unless logits are needed.
Only one batch is held in memory at a time. Capture computes no statistics: the
per-token NLL / entropy / max-probability it attaches when logits are requested
are the model's own output distribution, reduced so that the ``[batch, pos,
vocab]`` logits never leave this module (a HookedTransformer's are never even
formed: :func:`unembed_readouts`).
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformer_lens import HookedTransformer

from fer_diag.data.suite import SetKind, TextSet, Windows
from fer_diag.errors import FerDiagError, HookKindError

_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")
_EMBED_HOOKS = ("hook_embed", "hook_pos_embed", "embed.")
#: Hooks that are not one vector per token position (attention patterns and scores, rotary tables): refused.
UNSUPPORTED_HOOKS = ("hook_pattern", "hook_attn_scores", "hook_cos", "hook_sin")
SUPPORTED_KINDS = (
    "per-position vectors [batch, pos, d] (hook_resid_pre/mid/post, hook_attn_out, hook_mlp_out, mlp.hook_pre/post, "
    "ln*.hook_normalized, hook_embed…) and per-head vectors [batch, pos, n_heads, d_head] "
    "(attn.hook_q, hook_k, hook_v, hook_z, hook_result: flattened to n_heads·d_head)"
)


class HookNameError(FerDiagError, KeyError):
    """A requested hook name (or pattern) matches no hook of the model."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0])


class ActivationValueError(FerDiagError, ValueError):
    """Captured activations contain NaN or Inf."""


@dataclass
class ActivationBatch:
    """Activations of one batch of windows of one text set.

    ``acts[hook]`` is ``[batch, pos, d]`` float32 on CPU, read in ``basis``
    (``"raw"`` for the hook's own coordinates, or the name of an SAE basis).
    ``mask`` is ``[batch, pos]`` bool, True where a position counts (BOS / first
    position and padding excluded). ``seq_index`` numbers the windows within
    their text set, so shards can be merged. ``token_nll`` etc. are ``[batch,
    pos]`` and present only when capture ran the full model: entry ``t`` is about
    the prediction *of* token ``t`` from tokens ``< t``.
    """

    set_name: str
    kind: SetKind
    level: float | None
    tokens: torch.Tensor
    mask: torch.Tensor
    seq_index: torch.Tensor
    acts: dict[str, torch.Tensor]
    basis: str = "raw"
    labels: torch.Tensor | None = None
    token_nll: torch.Tensor | None = None
    token_entropy: torch.Tensor | None = None
    token_maxprob: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)
    #: in an SAE basis: the raw hook vectors the latents encode (``[batch, pos, d_in]`` per hook)
    raw: dict[str, torch.Tensor] | None = None
    #: CE-loss sums per hook (:class:`fer_diag.basis.CESums`) of this batch's windows with
    #: ``seq_index`` below the pipeline's ``ce_windows``; None when none of them is
    ce: dict | None = None
    #: the full logits ``[batch, pos, vocab]`` (model device and dtype), only with ``Capture(keep_logits=True)``
    logits: torch.Tensor | None = None

    @property
    def hooks(self) -> list[str]:
        return list(self.acts)

    @property
    def is_latent(self) -> bool:
        """True in an SAE basis; False for the raw coordinates and rotations of them (``raw@…``)."""
        return not (self.basis == "raw" or self.basis.startswith("raw@"))

    def with_acts(self, acts: dict[str, torch.Tensor], basis: str) -> ActivationBatch:
        """The same batch read in another basis; ``raw`` keeps the hook vectors that were read."""
        raw = {h: self.acts[h] for h in acts} if self.basis == "raw" else self.raw
        return replace(self, acts=acts, basis=basis, raw=raw)

    def last_index(self) -> torch.Tensor:
        """``[batch]`` position of each window's last counted token (-1 if none)."""
        pos = torch.arange(self.mask.shape[1]).expand_as(self.mask)
        return torch.where(self.mask, pos, torch.full_like(pos, -1)).max(dim=1).values


def available_hooks(model) -> list[str]:
    """All hook names the model answers to (TransformerBridge aliases included)."""
    names = set(model.hook_dict)
    names.update(getattr(model, "hook_aliases", None) or {})
    return sorted(names, key=_natural_key)


def _natural_key(name: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def resolve_hooks(model, patterns: Sequence[str]) -> list[str]:
    """Expand hook names / shell wildcards (``blocks.*.hook_resid_post``) to hook names.

    Raises :class:`HookNameError` listing close matches when a name or pattern
    matches nothing, and :class:`~fer_diag.errors.HookKindError` for a hook that is
    not one vector per position (:data:`UNSUPPORTED_HOOKS`: attention patterns and
    scores); wildcards leave those out.
    """
    known = available_hooks(model)
    known_set = set(known)
    out: list[str] = []
    for pat in patterns:
        if any(c in pat for c in "*?["):
            hits = [n for n in known if fnmatch.fnmatchcase(n, pat)]
            if hits and all(_unsupported(n) for n in hits):
                raise _kind_error(pat)
            hits = [n for n in hits if not _unsupported(n)]
        else:
            hits = [pat] if pat in known_set else []
            if hits and _unsupported(pat):
                raise _kind_error(pat)
        if not hits:
            close = difflib.get_close_matches(pat, known, n=5, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise HookNameError(
                f"hook {pat!r} matches no hook of this model.{hint} "
                "List all with `fer-diag models --hooks MODEL` (MODEL: a zoo name, e.g. smollm2-135m) "
                "or fer_diag.capture.available_hooks(model) from Python."
            )
        out.extend(h for h in hits if h not in out)
    return out


def check_hook_kinds(patterns: Sequence[str]) -> None:
    """Refuse, without the model, hook names that are never one vector per position (:data:`UNSUPPORTED_HOOKS`)."""
    for pat in patterns:
        if not any(c in pat for c in "*?[") and _unsupported(pat):
            raise _kind_error(pat)


def _unsupported(name: str) -> bool:
    return name.rsplit(".", 1)[-1] in UNSUPPORTED_HOOKS


def _kind_error(pattern: str) -> HookKindError:
    return HookKindError(
        f"hook {pattern!r} does not hold one activation vector per token position, which every analysis needs. "
        f"Supported: {SUPPORTED_KINDS}."
    )


def per_position(name: str, act: torch.Tensor, tokens_shape: torch.Size) -> torch.Tensor:
    """``act`` as ``[batch, pos, d]`` float32 on CPU; per-head ``[batch, pos, n_heads, d_head]`` flattened to
    ``n_heads·d_head`` (heads in order, as sae-lens does for ``hook_z`` SAEs).

    Raises :class:`~fer_diag.errors.HookKindError` for a shape that does not start with ``[batch, pos]``.
    """
    if act.ndim < 3 or tuple(act.shape[:2]) != tuple(tokens_shape):
        raise HookKindError(
            f"hook {name!r} gives activations of shape {list(act.shape)} for {list(tokens_shape)} tokens, not one "
            f"vector per token position. Supported: {SUPPORTED_KINDS}."
        )
    return act.detach().flatten(2).to("cpu", torch.float32)


def hook_layer(name: str) -> int | None:
    """Block index of a hook name, or None for hooks outside the blocks (embed, ln_final)."""
    m = _LAYER_RE.match(name)
    return int(m.group(1)) if m else None


def stop_layer(model, hooks: Sequence[str]) -> int | None:
    """``stop_at_layer`` for a forward pass that still reaches every hook, or None for the full model."""
    deepest = -1
    for h in hooks:
        layer = hook_layer(h)
        if layer is None and not h.startswith(_EMBED_HOOKS):
            return None  # ln_final / unembed hooks need the whole model
        deepest = max(deepest, -1 if layer is None else layer)
    # stop_at_layer = n_layers still runs every block, and skips only ln_final and the unembedding
    return deepest + 1


@dataclass
class Capture:
    """Run ``model`` over token windows and yield :class:`ActivationBatch` es.

    ``need_logits`` runs the whole model and attaches per-token NLL, predictive
    entropy and max-probability (the perplexity baselines of DESIGN §5); a
    HookedTransformer whose hooks are all in or before the blocks gets them from
    :func:`unembed_readouts`, without the logits.
    ``keep_logits`` (implies ``need_logits``) also attaches the logits themselves, for
    measures that need two models' whole distributions (:mod:`fer_diag.compare`).
    ``token_budget`` sizes batches by tokens instead of ``batch_size``: a batch
    takes the next windows while rows × width stays within the budget (one window
    at least) and is cut after its last counted position. Windows of unequal
    length (concept windows, shortest first) then cost only their own tokens, and
    short ones go many to a pass. A causal model's earlier positions do not depend
    on the padding cut, but such a batch is narrower than the windows.
    """

    model: object
    hooks: list[str]
    batch_size: int = 8
    need_logits: bool = False
    check_finite: bool = True
    keep_logits: bool = False
    token_budget: int | None = None

    def __post_init__(self) -> None:
        self.hooks = resolve_hooks(self.model, self.hooks)
        self.need_logits = self.need_logits or self.keep_logits

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def _chunked_unembed(self) -> bool:
        """Readouts without the logits (:func:`unembed_readouts`)."""
        return self.need_logits and not self.keep_logits and chunked_unembed(self.model, self.hooks)

    def batches(
        self,
        windows: Windows,
        text_set: TextSet,
        start: int = 0,
    ) -> Iterator[ActivationBatch]:
        """Yield one batch of ``text_set`` at a time, from window ``start`` on (resuming an interrupted run).

        The set's kind, level and axis travel with every batch (``meta["axis"]``);
        per-text labels are mapped to windows.
        """
        labels = None if text_set.labels is None else torch.as_tensor(text_set.labels)
        stop = None if self.need_logits else stop_layer(self.model, self.hooks)
        if self._chunked_unembed:  # the blocks here, the unembedding in unembed_readouts
            stop = self.model.cfg.n_layers
        for lo, hi, width in self._spans(windows, start):
            tokens, mask = windows.tokens[lo:hi, :width], windows.mask[lo:hi, :width]
            out, cache = self._forward(tokens, stop)
            acts = {h: per_position(h, cache[h], tokens.shape) for h in self.hooks}
            if self.check_finite:
                self._check_finite(acts, mask, windows.set_name, lo)
            batch = ActivationBatch(
                set_name=windows.set_name,
                kind=text_set.kind,
                level=text_set.level,
                tokens=tokens,
                mask=mask,
                seq_index=windows.index[lo:hi],
                acts=acts,
                labels=None if labels is None else labels[windows.source_index[lo:hi]],
                meta={"axis": text_set.axis},
            )
            if self._chunked_unembed:
                batch.token_nll, batch.token_entropy, batch.token_maxprob = unembed_readouts(self.model, out, tokens)
            elif self.need_logits:
                batch.token_nll, batch.token_entropy, batch.token_maxprob = token_readouts(out, tokens)
                if self.keep_logits:
                    batch.logits = out
            yield batch

    def _spans(self, windows: Windows, start: int) -> Iterator[tuple[int, int, int]]:
        """``(lo, hi, width)`` of each batch: ``batch_size`` rows at full width, or packed by ``token_budget``."""
        n, full = len(windows), windows.tokens.shape[1]
        if self.token_budget is None:
            yield from ((lo, min(lo + self.batch_size, n), full) for lo in range(start, n, self.batch_size))
            return
        pos = torch.arange(full).expand_as(windows.mask)  # a window's width: through its last counted position
        ends = (torch.where(windows.mask, pos, 0).amax(1) + 1).tolist()
        lo = start
        while lo < n:
            hi, width = lo + 1, ends[lo]
            while hi < n and (hi + 1 - lo) * max(width, ends[hi]) <= self.token_budget:
                width = max(width, ends[hi])
                hi += 1
            yield lo, hi, width
            lo = hi

    @torch.inference_mode()
    def _forward(self, tokens: torch.Tensor, stop: int | None):
        kwargs = {"names_filter": list(self.hooks)}
        if stop is not None:
            kwargs["stop_at_layer"] = stop
        return self.model.run_with_cache(tokens.to(self.device), **kwargs)

    def _check_finite(self, acts: dict[str, torch.Tensor], mask: torch.Tensor, set_name: str, lo: int) -> None:
        for h, a in acts.items():
            if torch.isfinite(a.sum()):  # one pass: NaN / Inf anywhere make the sum non-finite
                continue
            bad = ~torch.isfinite(a[mask])
            if bad.any():
                raise ActivationValueError(
                    f"{int(bad.any(-1).sum())} token(s) of text set {set_name!r} (windows from {lo}) give NaN/Inf "
                    f"activations at {h}. Run the model in float32 (dtype=torch.float32) or drop those texts."
                )


#: vocabulary columns per step of :func:`unembed_readouts`: [1024, 2048] float32 temporaries (8 MB), not
#: [1024, vocab] ones; the product of a 1,024-row block with a column block of W_U stays efficient
READOUT_CHUNK = 2048
#: predictions per step of :func:`unembed_readouts` (bounds the blocks for long or many windows)
READOUT_ROWS = 1024


def _online_readouts(chunks: Iterator[tuple[int, torch.Tensor]], target: torch.Tensor) -> torch.Tensor:
    """``[3, n]`` NLL, entropy (nats) and max-probability of n predictions whose logits arrive in vocabulary chunks.

    Online log-sum-exp over the chunks ``(lo, z [n, c])``, z holding vocabulary
    columns ``lo … lo + c − 1`` (Milakov & Gimelshein 2018, arXiv 1805.02867): with
    the running maximum m, S = Σ e^(z−m) and T = Σ e^(z−m)·z, a chunk that raises m
    to m' rescales S and T by e^(m−m'). Then lse = m + ln S, NLL = lse − z_target,
    entropy = lse − T/S, max-probability = 1/S: one exponential pass, no
    log-softmax. The target logit (``target [n]``, vocabulary ids) is read from
    the chunk that holds it, so that it is the very value the sum saw.
    """
    m = total = dot = e = None
    z_target = torch.full(target.shape, float("nan"), device=target.device)
    for lo, z in chunks:
        z = z.float()
        inside = (target >= lo) & (target < lo + z.shape[1])
        at = (target - lo).clamp(0, z.shape[1] - 1)[:, None]
        z_target = torch.where(inside, z.gather(1, at).squeeze(1), z_target)  # no host sync (GPU)
        top = z.amax(1)
        if e is None:
            e, m = torch.empty_like(z), top
        else:
            new = torch.maximum(m, top)
            scale = (m - new).exp_().nan_to_num_(nan=0.0)  # −inf − (−inf): nothing summed yet
            total, dot, m = total.mul_(scale), dot.mul_(scale), new
        shift = torch.where(m > float("-inf"), m, 0.0)  # rows with only −inf logits so far add 0
        ez = torch.sub(z, shift[:, None], out=e[:, : z.shape[1]]).exp_()
        chunk_total, chunk_dot = ez.sum(1), torch.linalg.vecdot(ez, z)
        # 0 · (−inf) = NaN where a logit is −inf: it adds 0. Off the CPU always redone: checking needs a host sync
        if z.device.type != "cpu" or not bool(torch.isfinite(chunk_dot).all()):
            chunk_dot = torch.linalg.vecdot(ez, torch.where(ez > 0, z, 0.0))
        total = chunk_total if total is None else total.add_(chunk_total)
        dot = chunk_dot if dot is None else dot.add_(chunk_dot)
    lse = m + total.log()
    return torch.stack([lse - z_target, lse - dot / total, total.reciprocal()])


def _placed(blocks: list[torch.Tensor], b: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[3, rows]`` blocks of readouts, in order, of the predictions made at each of the b·t positions → ``[b, t]``
    each about the token predicted (position 0: NaN), on CPU."""
    rows = torch.cat(blocks, 1) if blocks else torch.empty(3, 0)
    out = torch.full((3, b, t), float("nan"), device=rows.device)
    out[:, :, 1:] = rows.view(3, b, t)[:, :, :-1]
    return tuple(x.cpu() for x in out)


def _next_tokens(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``[b·t]`` target of the prediction at each position (the last position's is a placeholder 0)."""
    return torch.nn.functional.pad(tokens[:, 1:], (0, 1)).reshape(-1).to(device)


def token_readouts(
    logits: torch.Tensor, tokens: torch.Tensor, rows: int = 8, chunk: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token NLL, predictive entropy (nats) and max-probability of the prediction of token t, from ``logits``.

    Position 0 has no prediction and is NaN. Returned on CPU, float32. Reads the
    logits ``rows`` predictions at a time (:func:`_online_readouts`; ``chunk``
    vocabulary columns at a time, default all), so the vocabulary-sized
    intermediates stay in cache: 8 rows of a 49k vocabulary are 1.5 MB, 1.5× faster
    here than blocks of 1,024 rows × 2,048 columns.
    """
    b, t, vocab = logits.shape
    flat, chunk = logits.reshape(b * t, vocab), chunk or vocab
    target = _next_tokens(tokens, logits.device)
    blocks = []
    for r0 in range(0, b * t, rows):
        z = flat[r0 : r0 + rows]
        chunks = ((lo, z[:, lo : lo + chunk]) for lo in range(0, vocab, chunk))
        blocks.append(_online_readouts(chunks, target[r0 : r0 + rows]))
    return _placed(blocks, b, t)


def chunked_unembed(model, hooks: Sequence[str]) -> bool:
    """Whether a forward pass touching ``hooks`` can end in :func:`unembed_readouts`: a HookedTransformer whose
    hooks are all in or before its blocks."""
    return isinstance(model, HookedTransformer) and stop_layer(model, hooks) is not None


def forward_readouts(
    model, tokens: torch.Tensor, forward: Callable[..., torch.Tensor], hooks: Sequence[str] = ()
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`token_readouts` of ``forward(**kwargs)``, a forward pass of ``model`` on ``tokens`` touching ``hooks``.

    Where :func:`chunked_unembed` allows it, the pass stops after the blocks
    (``forward(stop_at_layer=n_layers)``) and the readouts come from
    :func:`unembed_readouts`; otherwise from the logits of ``forward()``.
    """
    if chunked_unembed(model, hooks):
        return unembed_readouts(model, forward(stop_at_layer=model.cfg.n_layers), tokens)
    return token_readouts(forward(), tokens)


@torch.inference_mode()
def unembed_readouts(
    model: HookedTransformer, resid: torch.Tensor, tokens: torch.Tensor, chunk: int = READOUT_CHUNK
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`token_readouts` of a HookedTransformer from its last block's residual ``resid [b, t, d]``.

    Applies ``ln_final``, then the unembedding (and the logit soft cap) one block
    of ``chunk`` vocabulary columns at a time, as the model's forward pass would,
    without ever holding the ``[b, t, vocab]`` logits: 0.1–0.25 s faster per batch of
    8 × 128 tokens than the full forward pass and :func:`token_readouts` here
    (SmolLM2-135M: 200 MB of logits per batch, written, then read again). Equal to
    :func:`token_readouts` of the model's logits up to rounding: the sums over the
    vocabulary run in chunks (SmolLM2 in float32: ≤ 3e-5 nats), and in a 16-bit
    dtype the logits themselves may round differently.
    """
    b, t, _ = resid.shape
    x = model.ln_final(resid) if model.cfg.normalization_type is not None else resid
    x = x.reshape(b * t, -1)
    w, bias = model.unembed.W_U, model.unembed.b_U
    vocab, cap = w.shape[1], model.cfg.output_logits_soft_cap or 0.0

    def chunks(xb: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        buf = torch.empty(len(xb), min(chunk, vocab), dtype=x.dtype, device=x.device)  # reused by each full chunk
        for lo in range(0, vocab, chunk):
            hi = min(lo + chunk, vocab)
            z = torch.addmm(bias[lo:hi], xb, w[:, lo:hi], out=buf if hi - lo == buf.shape[1] else None)
            yield lo, (z.div_(cap).tanh_().mul_(cap) if cap > 0 else z)

    target = _next_tokens(tokens, x.device)
    rows = [
        _online_readouts(chunks(x[r0 : r0 + READOUT_ROWS]), target[r0 : r0 + READOUT_ROWS])
        for r0 in range(0, b * t, READOUT_ROWS)
    ]
    return _placed(rows, b, t)
