"""Loading sae-lens SAEs and matching each to the hook it reads.

An SAE can be given as a sae-lens :class:`~sae_lens.SAE` object (any
architecture: standard, topk, batchtopk, jumprelu, gated, …), a folder written
by ``SAE.save_model`` (read with ``SAE.load_from_disk``), or a sae-lens registry
``release/sae_id`` (``SAE.from_pretrained``, which needs the Hugging Face hub).
Each SAE names its hook in ``sae.cfg.metadata.hook_name``; a mapping
``{hook: sae}`` overrides that. TransformerBridge aliases are resolved: an SAE
for ``blocks.3.hook_resid_post`` matches a captured ``blocks.3.hook_out`` (same
hook point). Every mismatch is an error that names the fix.
"""

from __future__ import annotations

import difflib
import os
import socket
import warnings
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from sae_lens import SAE
from sae_lens.constants import SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME
from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory
from safetensors import SafetensorError

from fer_diag.capture import available_hooks, hook_layer
from fer_diag.errors import FerDiagError

#: what a user may pass for one SAE
SAESpec = SAE | str | Path | tuple[str, str]

SHIPPED_DIR = "assets/saes"


class SAELoadError(FerDiagError, ValueError):
    """An SAE could not be loaded (not a sae-lens folder, unknown release, hub unreachable)."""


class SAEMatchError(FerDiagError, ValueError):
    """An SAE does not fit the model or the captured hooks (hook, width)."""


def load_sae(spec: SAESpec, device: str = "cpu") -> SAE:
    """One SAE from an object (returned as is), a sae-lens folder, or a registry ``release/sae_id``.

    ``(release, sae_id)`` tuples work too. Loaded SAEs come on ``device`` in float32.
    """
    if isinstance(spec, SAE):
        return spec
    if isinstance(spec, tuple):
        return _from_registry(*spec, device=device)
    if check_sae_spec(spec) == "folder":
        return load_sae_folder(spec, device=device)
    release, _, sae_id = str(spec).partition("/")
    return _from_registry(release, sae_id, device=device)


def check_sae_spec(spec: str | Path) -> str:
    """``"folder"`` or ``"registry"``: what a string SAE spec names, checked without loading anything.

    Raises :class:`SAELoadError` for a folder not in sae-lens format, or a string that is
    neither an existing path nor a sae-lens registry ``release/sae_id``.
    """
    path = Path(spec)
    if path.exists():
        _check_folder(path)
        return "folder"
    release, _, sae_id = str(spec).partition("/")
    if sae_id and release in get_pretrained_saes_directory():
        return "registry"
    raise SAELoadError(
        f"{str(spec)!r} is neither an existing folder nor a sae-lens registry 'release/sae_id'. "
        "Pass a folder written by sae.save_model(folder), or a release listed in sae-lens's pretrained_saes.yaml."
    )


def _check_folder(path: Path) -> None:
    missing = [f for f in (SAE_CFG_FILENAME, SAE_WEIGHTS_FILENAME) if not (path / f).is_file()]
    if missing:
        raise SAELoadError(
            f"folder {str(path)!r} is not in sae-lens format: missing {', '.join(missing)}. "
            "Save an SAE with sae.save_model(folder) (sae-lens) to get cfg.json + sae_weights.safetensors."
        )


def load_sae_folder(path: str | Path, device: str = "cpu") -> SAE:
    """``SAE.load_from_disk`` (float32) with a clear error when the folder is not in sae-lens format."""
    path = Path(path)
    _check_folder(path)
    try:
        return SAE.load_from_disk(path, device=device, dtype="float32")
    except (KeyError, ValueError, TypeError, SafetensorError) as e:
        raise SAELoadError(
            f"folder {str(path)!r} has {SAE_CFG_FILENAME} and {SAE_WEIGHTS_FILENAME} but sae-lens cannot read them "
            f"({type(e).__name__}: {e}). Re-save the SAE with sae.save_model(folder) from sae-lens 6."
        ) from e


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _from_registry(release: str, sae_id: str, device: str = "cpu") -> SAE:
    fix = (
        f"On a machine with network access run `SAE.from_pretrained({release!r}, {sae_id!r}).save_model(folder)` "
        "and pass that folder instead"
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
    if not offline and not _hub_reachable():
        raise SAELoadError(f"cannot load SAE {release}/{sae_id}: the Hugging Face hub is unreachable. {fix}.")
    try:
        return SAE.from_pretrained(release, sae_id, device=device, dtype="float32")
    except OSError as e:  # huggingface_hub's not-found / offline errors are OSErrors
        raise SAELoadError(f"cannot load SAE {release}/{sae_id} from the hub ({e}). {fix}.") from e


def _hook_point(model, name: str) -> Any | None:
    """The hook point object ``name`` refers to (bridge aliases followed), or None."""
    hooks = model.hook_dict
    if name in hooks:
        return hooks[name]
    target = (getattr(model, "hook_aliases", None) or {}).get(name)
    for t in [target] if isinstance(target, str) else target or []:
        if t in hooks:
            return hooks[t]
    return None


@torch.inference_mode()
def hook_widths(model, hooks: Sequence[str]) -> dict[str, int]:
    """Width (product of the trailing dims) of each hook's activation, from a 2-token forward pass."""
    device = next(model.parameters()).device
    tokens = torch.zeros((1, 2), dtype=torch.long, device=device)
    layers = [hook_layer(h) for h in hooks]
    kwargs: dict[str, Any] = {"names_filter": list(hooks)}
    if all(layer is not None for layer in layers) and max(layers) + 1 < model.cfg.n_layers:
        kwargs["stop_at_layer"] = max(layers) + 1
    _, cache = model.run_with_cache(tokens, **kwargs)
    return {h: int(torch.tensor(cache[h].shape[2:]).prod()) for h in hooks}


def _as_items(saes: Any) -> list[tuple[str | None, SAESpec]]:
    if isinstance(saes, Mapping):
        return list(saes.items())
    if isinstance(saes, SAE | str | Path | tuple):
        return [(None, saes)]
    if isinstance(saes, Sequence):
        return [(None, s) for s in saes]
    raise TypeError(
        f"saes must be an SAE, a folder, 'release/sae_id', a list of those or a dict hook → SAE; got {saes!r}"
    )


def match_saes(saes: Any, model, hooks: Sequence[str], *, extend: bool = False) -> dict[str, SAE]:
    """Load ``saes`` and key each by the captured hook it reads (a name in ``hooks``).

    ``saes``: one SAE spec (object, folder, ``release/sae_id``), a list of them,
    or a dict ``{hook: spec}`` whose keys override ``metadata.hook_name``. SAEs are
    loaded on the model's device in float32; an SAE object elsewhere is moved
    there in place, with a warning saying so. Raises :class:`SAEMatchError` for an SAE without a hook name,
    a hook the model lacks, a hook not among ``hooks``, two SAEs for one hook, or
    ``d_in`` ≠ the hook's width. With ``extend`` an SAE for a hook of the model that
    is not among ``hooks`` is kept under its own hook name (the caller captures it too).
    """
    device = next(model.parameters()).device
    known = available_hooks(model)
    points = {id(_hook_point(model, h)): h for h in hooks}
    out: dict[str, SAE] = {}
    for key, spec in _as_items(saes):
        sae = load_sae(spec, device=str(device))
        name = key or sae.cfg.metadata.hook_name
        if not name:
            raise SAEMatchError(
                f"SAE {_label(spec)} has no cfg.metadata.hook_name. Set metadata.hook_name in its cfg.json, "
                "or from Python pass it as a dict {hook_name: sae}."
            )
        point = _hook_point(model, name)
        if point is None:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f" Close matches: {', '.join(close)}." if close else ""
            raise SAEMatchError(
                f"SAE {_label(spec)} reads hook {name!r}, which this model does not have: it was trained for another "
                f"model, or its cfg.json names the hook wrongly (fix metadata.hook_name there, or from Python pass "
                f"{{correct_hook: sae}}).{hint}"
            )
        hook = points.get(id(point)) or (name if extend else None)
        if hook is None:
            raise SAEMatchError(
                f"SAE {_label(spec)} reads hook {name!r}, which is not captured (hooks: {', '.join(hooks)}). "
                f"Add {name!r} to the hooks (--hooks {name}, or hooks=[...] from Python)."
            )
        if hook in out:
            raise SAEMatchError(f"two SAEs given for hook {hook!r}; pass one SAE per hook")
        if getattr(sae, "hook_z_reshaping_mode", False):  # capture hands it [batch, pos, n_heads·d_head] already
            sae.turn_off_forward_pass_hook_z_reshaping()
        out[hook] = _on_device(sae, device, hook)
    if out:
        widths = hook_widths(model, list(out))
        for hook, sae in out.items():
            if sae.cfg.d_in != widths[hook]:
                raise SAEMatchError(
                    f"SAE for {hook} has d_in={sae.cfg.d_in} but the hook's width is {widths[hook]}: "
                    "the SAE was trained for another model or hook. Pass an SAE trained on this model's "
                    f"{hook} (fer-diag train-sae --hook {hook})."
                )
    return out


def _label(spec: SAESpec) -> str:
    return type(spec).__name__ if isinstance(spec, SAE) else repr(str(spec))


def _on_device(sae: SAE, device: torch.device, hook: str) -> SAE:
    """``sae`` on ``device`` in float32 (in place), with a warning when that moved or upcast it."""
    if sae.device != device or sae.dtype != torch.float32:
        warnings.warn(
            f"SAE for {hook} was on {sae.device}/{sae.dtype}; moved to the model's device {device} in float32",
            stacklevel=3,
        )
        sae.to(device=device, dtype=torch.float32)
    return sae.eval()


def shipped_sae_dir(model_name: str) -> Path:
    """Folder of the SAEs shipped for zoo model ``model_name`` (one sub-folder per hook)."""
    return Path(str(resources.files("fer_diag").joinpath(SHIPPED_DIR, model_name)))


def default_saes(model_name: str = "smollm2-135m", device: str = "cpu") -> dict[str, SAE]:
    """The shipped SAEs of a zoo model, keyed by hook, in float32; ``{}`` when none are shipped."""
    root = shipped_sae_dir(model_name)
    if not root.is_dir():
        return {}
    out = {}
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (hook_layer(p.name) or 0, p.name)):
        sae = load_sae_folder(folder, device=device)
        out[sae.cfg.metadata.hook_name] = sae.eval()
    return out
