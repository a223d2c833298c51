"""Offline SAE training: the recipe behind the shipped default SAEs and ``fer-diag train-sae``.

Texts are packed into BOS-led windows, the model runs once per batch up to the
deepest requested hook (:class:`fer_diag.capture.Capture`), and the counted
positions (BOS / position 0 excluded: that is where SmolLM2's ~2.5e4 massive
activation sits) are cached in memory. Each hook's SAE is then trained by
sae-lens's own :class:`~sae_lens.training.sae_trainer.SAETrainer` from a
shuffled iterator over that cache (several epochs are fine), with wandb off and
no hub. A held-out slice of the windows gives the card's explained variance,
L0 and dead fraction. The result is saved in sae-lens format
(``SAE.load_from_disk`` reads it) next to a ``card.json``.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import sae_lens
import torch
from sae_lens import SAE
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.registry import get_sae_training_class
from sae_lens.saes.sae import SAEMetadata
from sae_lens.training.sae_trainer import SAETrainer
from tqdm.auto import tqdm

from fer_diag.analyzers.massive import detect_massive
from fer_diag.capture import Capture, resolve_hooks
from fer_diag.data.suite import SetKind, TextSet, Windows
from fer_diag.errors import TextSetError
from fer_diag.sae.loading import shipped_sae_dir
from fer_diag.sae.recipe import DEFAULT_SAE_HOOKS, SAETrainingConfig

CARD_FILENAME = "card.json"


def pack_windows(texts: Sequence[str], tokenizer, seq_len: int, bos_token_id: int | None, max_tokens: int) -> Windows:
    """Pack ``texts`` (joined by blank lines) into full windows of ``seq_len`` tokens, no padding.

    Each window starts with BOS when the model has one; its mask excludes
    position 0. ``source_index`` is the index of the text each window starts in.
    Stops once ``max_tokens`` counted positions are reached.
    """
    body = seq_len - 1 if bos_token_id is not None else seq_len
    n_max = max(1, math.ceil(max_tokens / (seq_len - 1)))
    sep = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    rows: list[list[int]] = []
    starts: list[int] = []
    buf: list[int] = []
    buf_start = 0
    for i, text in enumerate(texts):
        if len(rows) >= n_max:
            break
        if not buf:
            buf_start = i
        buf.extend(tokenizer(text, add_special_tokens=False)["input_ids"] + sep)
        while len(buf) >= body and len(rows) < n_max:
            rows.append(buf[:body])
            starts.append(buf_start)
            buf, buf_start = buf[body:], i
    if not rows:
        raise TextSetError(
            f"{len(texts)} text(s) give fewer than {body} tokens: too little to train an SAE. Pass more text."
        )
    tokens = torch.tensor(rows, dtype=torch.long)
    if bos_token_id is not None:
        tokens = torch.cat([torch.full((len(rows), 1), bos_token_id, dtype=torch.long), tokens], dim=1)
    mask = torch.ones_like(tokens, dtype=torch.bool)
    mask[:, 0] = False
    return Windows("sae-training", tokens, mask, torch.tensor(starts, dtype=torch.long))


def collect_activations(
    model, hooks: Sequence[str], windows: Windows, *, batch_size: int = 16, progress: bool = True
) -> dict[str, torch.Tensor]:
    """One forward pass per batch for all ``hooks``; returns ``hook → [tokens, d]`` float32 of counted positions."""
    capture = Capture(model, list(hooks), batch_size=batch_size)
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in capture.hooks}
    n_batches = math.ceil(len(windows) / batch_size)
    for batch in tqdm(
        capture.batches(windows, TextSet(windows.set_name, SetKind.IN_DISTRIBUTION)),
        total=n_batches,
        desc="Caching activations",
        disable=not progress,
    ):
        for h, a in batch.acts.items():
            parts[h].append(a[batch.mask])
    return {h: torch.cat(p) for h, p in parts.items()}


def _batches(acts: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless shuffled batches over ``acts`` (a fresh permutation each epoch)."""
    while True:
        perm = torch.randperm(len(acts), generator=generator)
        for lo in range(0, len(perm) - batch_size + 1, batch_size):
            yield acts[perm[lo : lo + batch_size]]


@torch.inference_mode()
def evaluate_sae(sae: SAE, acts: torch.Tensor, batch_size: int = 4096) -> dict[str, Any]:
    """Held-out quality of ``sae`` on ``acts [tokens, d_in]``.

    ``explained_variance`` = 1 − Σ‖x−x̂‖²/Σ‖x−x̄‖²; ``explained_variance_massive_masked``
    the same over the coordinates that are not massive-activation dims
    (``massive_dims``, Sun et al. 2024: some |x_j| > 100 and ≥ 1000 × median |x|),
    which otherwise dominate Σ‖x−x̄‖² through a handful of tokens. ``l0`` is the
    mean number of firing latents, ``dead_fraction`` the share of latents that
    never fire on ``acts``.
    """
    dims = detect_massive(acts[None]).dims.unique()
    keep = torch.ones(acts.shape[1], dtype=torch.bool)
    keep[dims] = False
    sq_err = torch.zeros(acts.shape[1], dtype=torch.float64)
    l0 = 0
    fired = torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for lo in range(0, len(acts), batch_size):
        x = acts[lo : lo + batch_size].to(sae.device, sae.dtype)
        f = sae.encode(x)
        sq_err += (sae.decode(f) - x).double().pow(2).sum(0).cpu()
        active = f != 0
        l0 += int(active.sum())
        fired |= active.any(0).cpu()
    var = (acts.double() - acts.double().mean(0)).pow(2).sum(0)
    return {
        "explained_variance": 1.0 - float(sq_err.sum() / var.sum()),
        "explained_variance_massive_masked": 1.0 - float(sq_err[keep].sum() / var[keep].sum()),
        "massive_dims": dims.tolist(),
        "l0": l0 / len(acts),
        "dead_fraction": 1.0 - fired.float().mean().item(),
        "tokens": len(acts),
    }


def _training_sae(cfg: SAETrainingConfig, d_in: int, metadata: SAEMetadata):
    sae_cls, cfg_cls = get_sae_training_class(cfg.architecture)
    kwargs = dict(cfg.sae_kwargs)
    if "k" in cfg_cls.__dataclass_fields__:
        kwargs.setdefault("k", cfg.k)
    sae_cfg = cfg_cls(
        d_in=d_in,
        d_sae=cfg.d_sae,
        device=cfg.device,
        normalize_activations="expected_average_only_in",
        metadata=metadata,
        **kwargs,
    )
    return sae_cls(sae_cfg)


def train_on_activations(
    acts: torch.Tensor,
    heldout: torch.Tensor,
    hook: str,
    cfg: SAETrainingConfig,
    *,
    model_name: str | None = None,
    progress: bool = True,
) -> tuple[SAE, dict[str, Any]]:
    """Train one SAE on cached activations with sae-lens's trainer; return the inference SAE and its card."""
    torch.manual_seed(cfg.seed)
    if len(acts) < cfg.batch_size:
        raise TextSetError(
            f"only {len(acts)} activation vectors for {hook}, fewer than one batch ({cfg.batch_size}). "
            "Pass more text (--text), or from Python a smaller SAETrainingConfig(batch_size=…)."
        )
    metadata = SAEMetadata(model_name=model_name, hook_name=hook, context_size=cfg.seq_len, prepend_bos=True)
    sae = _training_sae(cfg, acts.shape[1], metadata)
    with torch.no_grad():  # start the decoder bias at the data mean: the residual stream is far from centred
        sae.b_dec.copy_(acts.mean(0) * math.sqrt(sae.cfg.d_in) / acts.norm(dim=-1).mean())
    trainer_cfg = SAETrainerConfig(
        total_training_samples=cfg.training_tokens,
        train_batch_size_samples=cfg.batch_size,
        lr=cfg.lr,
        lr_end=cfg.lr,
        lr_scheduler_name="constant",
        lr_warm_up_steps=cfg.lr_warm_up_steps,
        lr_decay_steps=cfg.training_tokens // cfg.batch_size // 5,
        device=cfg.device,
        dead_feature_window=cfg.dead_feature_window,
        feature_sampling_window=cfg.dead_feature_window * 5,
        logger=LoggingConfig(log_to_wandb=False),
        n_batches_for_norm_estimate=min(50, math.ceil(len(acts) / cfg.batch_size)),
    )
    data = _batches(acts, cfg.batch_size, torch.Generator().manual_seed(cfg.seed))
    trainer = SAETrainer(trainer_cfg, sae, data)
    start = time.perf_counter()
    quiet = mock.patch("sae_lens.training.sae_trainer.tqdm", partial(tqdm, disable=not progress))
    with quiet, mock.patch("sae_lens.training.activation_scaler.tqdm", partial(tqdm, disable=True)):
        trained = trainer.fit()
    seconds = time.perf_counter() - start
    # rounded to the saved dtype, so the card describes (and the caller holds) the SAE as it loads from disk
    inference = _to_inference(trained).to(dtype=getattr(torch, cfg.save_dtype)).to(dtype=torch.float32)
    card = {
        "hook": hook,
        "model": model_name,
        "architecture": inference.cfg.architecture(),
        "d_in": inference.cfg.d_in,
        "d_sae": inference.cfg.d_sae,
        "config": asdict(cfg),
        "tokens_seen": trainer.n_training_samples,
        "cache_tokens": len(acts),
        "heldout": evaluate_sae(inference, heldout),
        "training_seconds": round(seconds, 1),
        "sae_lens_version": sae_lens.__version__,
    }
    return inference, card


def _to_inference(trained) -> SAE:
    """The inference SAE of a trained ``TrainingSAE`` (decoder norms folded where the architecture needs it)."""
    state = trained.state_dict()
    trained.process_state_dict_for_saving_inference(state)
    cfg_dict = trained.cfg.get_inference_sae_cfg_dict()
    sae = SAE.from_dict(cfg_dict)
    sae.process_state_dict_for_loading(state)
    sae.load_state_dict(state)
    return sae.eval()


def save_sae(sae: SAE, card: dict[str, Any], out_dir: str | Path, dtype: str = "float16") -> Path:
    """Save ``sae`` in sae-lens format (weights in ``dtype``) with ``card.json`` beside it."""
    out = Path(out_dir)
    saved = SAE.from_dict(sae.cfg.to_dict())
    saved.load_state_dict(sae.state_dict())
    saved.to(dtype=getattr(torch, dtype))
    saved.save_model(out)
    (out / CARD_FILENAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return out


def sae_dir_name(hook: str) -> str:
    """Folder name of a hook's SAE (``blocks.3.hook_resid_post`` → ``blocks.3.hook_resid_post``, no slashes)."""
    return hook.replace("/", "_")


@dataclass
class ActivationCache:
    """Activation vectors of counted positions per hook: ``train`` for training, ``heldout`` for the card."""

    train: dict[str, torch.Tensor]
    heldout: dict[str, torch.Tensor]
    texts: int


def build_cache(
    model,
    hooks: Sequence[str],
    texts: Sequence[str],
    cfg: SAETrainingConfig,
    *,
    eval_texts: Sequence[str] | None = None,
    progress: bool = True,
) -> ActivationCache:
    """Capture all ``hooks`` at once over packed ``texts`` (and ``eval_texts``, the held-out set, if given).

    Without ``eval_texts`` a seeded ``heldout_fraction`` of the windows is held out.
    """
    hooks = resolve_hooks(model.model, hooks)
    windows = pack_windows(texts, model.tokenizer, cfg.seq_len, model.bos_token_id, cfg.cache_tokens)
    collect = partial(collect_activations, model.model, hooks, batch_size=cfg.model_batch_size, progress=progress)
    if eval_texts is not None:
        eval_windows = pack_windows(
            eval_texts, model.tokenizer, cfg.seq_len, model.bos_token_id, round(cfg.cache_tokens * cfg.heldout_fraction)
        )
        return ActivationCache(collect(windows), collect(eval_windows), len(texts))
    n_held = max(1, round(len(windows) * cfg.heldout_fraction))
    if n_held >= len(windows):
        raise TextSetError(
            f"{len(windows)} window(s) cannot be split into training and held-out parts. Pass more text."
        )
    perm = torch.randperm(len(windows), generator=torch.Generator().manual_seed(cfg.seed))
    acts = collect(windows)
    per_window = int(windows.mask[0].sum())  # counted positions are stored window after window
    rows = torch.arange(len(windows) * per_window).view(len(windows), per_window)
    held, train = rows[perm[:n_held].sort().values].flatten(), rows[perm[n_held:].sort().values].flatten()
    return ActivationCache({h: a[train] for h, a in acts.items()}, {h: a[held] for h, a in acts.items()}, len(texts))


def train_saes(
    model,
    hooks: Sequence[str],
    texts: Sequence[str],
    *,
    eval_texts: Sequence[str] | None = None,
    config: SAETrainingConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> dict[str, tuple[SAE, dict[str, Any]]]:
    """Train one SAE per hook from a single activation cache (one forward pass per batch feeds all hooks).

    ``model`` is a :class:`fer_diag.models.LoadedModel` (``.model``, ``.tokenizer``,
    ``.bos_token_id``, optional ``.name``). ``eval_texts`` (held-out in-distribution
    text) give the card's metrics; without them part of ``texts`` is held out.
    ``options`` override fields of ``config`` (:class:`SAETrainingConfig`). With
    ``out_dir``, each SAE is saved to ``out_dir/<hook>/`` (see :func:`save_sae`).
    """
    cfg = replace(config or SAETrainingConfig(), **options)
    cache = build_cache(model, hooks, texts, cfg, eval_texts=eval_texts, progress=progress)
    return train_from_cache(cache, cfg, model_name=getattr(model, "name", None), out_dir=out_dir, progress=progress)


def train_from_cache(
    cache: ActivationCache,
    cfg: SAETrainingConfig,
    *,
    model_name: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, tuple[SAE, dict[str, Any]]]:
    """Train (and with ``out_dir`` save) one SAE per hook of ``cache``."""
    out: dict[str, tuple[SAE, dict[str, Any]]] = {}
    for hook, acts in cache.train.items():
        sae, card = train_on_activations(acts, cache.heldout[hook], hook, cfg, model_name=model_name, progress=progress)
        card["texts"] = cache.texts
        if out_dir is not None:
            save_sae(sae, card, Path(out_dir) / sae_dir_name(hook), cfg.save_dtype)
        out[hook] = (sae, card)
    return out


def train_sae(
    model,
    hook: str,
    texts: Sequence[str],
    *,
    eval_texts: Sequence[str] | None = None,
    config: SAETrainingConfig | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> tuple[SAE, dict[str, Any]]:
    """Train one SAE for ``hook`` on ``texts`` and save it to ``out_dir`` (the SAE's own folder) if given.

    ``options`` are :class:`SAETrainingConfig` fields, e.g. ``train_sae(lm, "blocks.3.hook_resid_post", texts,
    architecture="topk", d_sae=2304, k=32, training_tokens=2_000_000, seed=0, out_dir="my_sae")``.
    """
    cfg = replace(config or SAETrainingConfig(), **options)
    (result,) = train_saes(model, [hook], texts, eval_texts=eval_texts, config=cfg, progress=progress).values()
    if out_dir is not None:
        save_sae(*result, out_dir, cfg.save_dtype)
    return result


def train_default_saes(
    model_name: str = "smollm2-135m",
    out_dir: str | Path | None = None,
    *,
    progress: bool = True,
    **options: Any,
) -> dict[str, tuple[SAE, dict[str, Any]]]:
    """The recipe of the shipped SAEs: zoo model, English-fortune training split, held-out split for the cards.

    Writes to ``out_dir`` (default: the package's shipped folder,
    :func:`fer_diag.sae.loading.shipped_sae_dir`). ``options`` override
    :class:`SAETrainingConfig` defaults.
    """
    from fer_diag.data.sources import english_fortunes
    from fer_diag.models import load_model

    if model_name not in DEFAULT_SAE_HOOKS:
        raise ValueError(f"no default SAE hooks for {model_name!r}; have {sorted(DEFAULT_SAE_HOOKS)}")
    lm = load_model(model_name)
    return train_saes(
        lm,
        DEFAULT_SAE_HOOKS[model_name],
        english_fortunes(split="train"),
        eval_texts=english_fortunes(split="heldout"),
        out_dir=out_dir if out_dir is not None else shipped_sae_dir(model_name),
        progress=progress,
        **options,
    )
