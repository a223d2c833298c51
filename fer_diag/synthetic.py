"""Planted fracture and entanglement: a generator whose right FER answers are known (DESIGN §5, issue 10).

Users calibrate :mod:`fer_diag.fer` with it; the tests check that every FER
component moves with its own planted factor.

The world
---------
* A known dictionary ``W_dec [m, d_model]`` with unit-norm random rows (one per
  planted latent) and an SAE-like :class:`PlantedEncoder` that recovers the codes
  (JumpReLU of the pseudo-inverse: exact while ``m ≤ d_model``, up to the noise).
* ``n_concepts`` concepts with ``n_classes`` classes each. Every example carries
  a class of *every* concept (balanced, independent) and, per concept, a
  *context*; the context chooses which *group* of latents carries the class.
* A group is ``group_size`` latents: a main latent that always fires when the
  group does, and partners that fire with it with probability ``partner_rate``
  (a small population code, so that co-activation graphs have edges).
* **Fracture** ``f`` (:attr:`SyntheticConfig.fracture`): each class is carried by
  ``f`` groups in distribution, chosen by the context with Zipf weights
  p_z ∝ (z + 1)^−``context_decay`` (frequent and rare contexts, as tokens are).
  The shifted twin keeps group 0 and swaps groups 1…f−1 for ``f − 1`` twin-only
  groups with the same weights: with all latents found, the Jaccard index of the
  class's latents ID vs twin is 1/(2f − 1). ``f = 1``: one group, the same in both.
* **Entanglement** ``e`` (:attr:`SyntheticConfig.entanglement`): a seeded choice of
  ``round(e · slots)`` latent slots of each concept is merged with the same slot
  (class, group, member) of the next concept (cyclically), so one latent carries
  classes of several concepts; ``e = 1``: all concepts use the same latents.
* Codes are non-negative (magnitudes U(1, 2), summed where a shared latent fires
  for several concepts), plus ``n_background`` latents that fire at random;
  activations = codes @ W_dec + N(0, ``noise``²).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = ["PlantedEncoder", "SyntheticConcept", "SyntheticConfig", "SyntheticWorld", "make_world"]


class SyntheticConfig(BaseModel):
    """Planted levels and sizes of :func:`make_world` (defaults: 3 concepts × 3 classes, 200 examples per class)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fracture: int = Field(1, ge=1, description="groups of latents per class, switched by context")
    entanglement: float = Field(0.0, ge=0.0, le=1.0, description="share of latent slots merged across concepts")
    n_concepts: int = Field(3, ge=1)
    n_classes: int = Field(3, ge=2)
    n_per_class: int = Field(200, ge=5, description="examples per class, in distribution and in the twin")
    group_size: int = Field(2, ge=1, description="latents per group: a main latent and its partners")
    partner_rate: float = Field(0.7, gt=0.0, le=1.0, description="P(partner fires | its group fires)")
    context_decay: float = Field(1.0, ge=0.0, description="Zipf exponent of the context weights")
    n_background: int = Field(16, ge=0, description="latents firing at random, unrelated to any concept")
    background_rate: float = Field(0.05, ge=0.0, le=1.0)
    d_model: int = Field(256, ge=2)
    noise: float = Field(0.02, ge=0.0, description="std of the Gaussian noise added to the activations")
    threshold: float = Field(0.3, ge=0.0, description="JumpReLU threshold of the planted encoder")
    token_level: bool = Field(True, description="whether the concepts are read at one token (absorption applies)")
    seed: int = 0


@dataclass(frozen=True)
class PlantedEncoder:
    """An SAE-like encoder of the known dictionary: ``encode(x) = z · 1[z > threshold]``, ``z = x @ pinv(W_dec)``.

    ``W_dec [m, d]`` has unit-norm rows; ``W_enc = pinv(W_dec) [d, m]``; ``decode(f) = f @ W_dec``.
    """

    W_dec: np.ndarray
    W_enc: np.ndarray
    threshold: float

    def encode(self, x: np.ndarray) -> np.ndarray:
        z = np.asarray(x, dtype=np.float64) @ self.W_enc
        return np.where(z > self.threshold, z, 0.0)

    def decode(self, f: np.ndarray) -> np.ndarray:
        return np.asarray(f, dtype=np.float64) @ self.W_dec


@dataclass(frozen=True)
class SyntheticConcept:
    """One concept's examples: raw vectors, latents and labels in distribution and on the shifted twin.

    ``latent_groups[c][z]`` are the latent ids of class ``c``'s group ``z`` (groups
    ``< fracture`` in distribution, the rest twin-only): the planted answer.
    """

    name: str
    level: str
    classes: tuple[str, ...]
    raw: np.ndarray
    latents: np.ndarray
    labels: np.ndarray
    raw_twin: np.ndarray
    latents_twin: np.ndarray
    labels_twin: np.ndarray
    latent_groups: tuple[tuple[tuple[int, ...], ...], ...]


@dataclass(frozen=True)
class SyntheticWorld:
    """:func:`make_world`'s result: the config, the encoder (dictionary) and the concepts."""

    config: SyntheticConfig
    encoder: PlantedEncoder
    concepts: tuple[SyntheticConcept, ...]


def _slot_latents(cfg: SyntheticConfig, rng: np.random.Generator) -> np.ndarray:
    """``[n_concepts, n_classes, 2f − 1, group_size]`` latent ids, slots merged across concepts per the entanglement."""
    shape = (cfg.n_concepts, cfg.n_classes, 2 * cfg.fracture - 1, cfg.group_size)
    parent = np.arange(int(np.prod(shape)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    per_concept = int(np.prod(shape[1:]))
    n_shared = round(cfg.entanglement * per_concept) if cfg.n_concepts > 1 else 0
    for k in range(cfg.n_concepts):
        for s in rng.permutation(per_concept)[:n_shared]:
            a, b = root(k * per_concept + s), root(((k + 1) % cfg.n_concepts) * per_concept + s)
            parent[max(a, b)] = min(a, b)
    roots = np.array([root(i) for i in range(parent.size)])
    return np.unique(roots, return_inverse=True)[1].reshape(shape)


def _context_weights(cfg: SyntheticConfig) -> np.ndarray:
    w = (np.arange(cfg.fracture) + 1.0) ** -cfg.context_decay
    return w / w.sum()


def _draw(
    cfg: SyntheticConfig, slots: np.ndarray, n_latents: int, twin: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Codes ``[n, n_latents]`` and labels ``[n_concepts, n]`` of one set (in distribution or the twin)."""
    n = cfg.n_per_class * cfg.n_classes
    codes = np.zeros((n, n_latents))
    labels = np.stack([rng.permutation(np.repeat(np.arange(cfg.n_classes), cfg.n_per_class)) for _ in slots])
    rows = np.arange(n)
    for k, y in enumerate(labels):
        z = rng.choice(cfg.fracture, size=n, p=_context_weights(cfg))
        if twin:
            z = np.where(z == 0, 0, z + cfg.fracture - 1)
        members = slots[k][y, z]  # [n, group_size]
        fires = np.ones_like(members, dtype=bool)
        fires[:, 1:] = rng.random((n, cfg.group_size - 1)) < cfg.partner_rate
        for i in range(cfg.group_size):
            codes[rows[fires[:, i]], members[fires[:, i], i]] += rng.uniform(1.0, 2.0, int(fires[:, i].sum()))
    background = rng.random((n, cfg.n_background)) < cfg.background_rate
    codes[:, n_latents - cfg.n_background :] += background * rng.uniform(1.0, 2.0, background.shape)
    return codes, labels


def make_world(config: SyntheticConfig | None = None) -> SyntheticWorld:
    """Draw the dictionary, the planted assignment and the examples of every concept (seeded by ``config.seed``)."""
    cfg = config or SyntheticConfig()
    rng = np.random.default_rng(cfg.seed)
    slots = _slot_latents(cfg, rng)
    n_latents = int(slots.max()) + 1 + cfg.n_background
    W_dec = rng.standard_normal((n_latents, cfg.d_model))
    W_dec /= np.linalg.norm(W_dec, axis=1, keepdims=True)
    encoder = PlantedEncoder(W_dec, np.linalg.pinv(W_dec), cfg.threshold)

    def activations(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw = encoder.decode(codes) + cfg.noise * rng.standard_normal((len(codes), cfg.d_model))
        return raw, encoder.encode(raw)

    codes, labels = _draw(cfg, slots, n_latents, False, rng)
    codes_twin, labels_twin = _draw(cfg, slots, n_latents, True, rng)
    (raw, latents), (raw_twin, latents_twin) = activations(codes), activations(codes_twin)
    classes = tuple(f"class{c}" for c in range(cfg.n_classes))
    concepts = tuple(
        SyntheticConcept(
            name=f"concept{k}",
            level="token" if cfg.token_level else "sequence",
            classes=classes,
            raw=raw,
            latents=latents,
            labels=labels[k],
            raw_twin=raw_twin,
            latents_twin=latents_twin,
            labels_twin=labels_twin[k],
            latent_groups=tuple(tuple(tuple(int(j) for j in g) for g in slots[k, c]) for c in range(cfg.n_classes)),
        )
        for k in range(cfg.n_concepts)
    )
    return SyntheticWorld(cfg, encoder, concepts)
