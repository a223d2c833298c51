"""Markdown sections for SAE results: fidelity per set, SAE L0 next to raw sparsity, shifted latents."""

from __future__ import annotations

from fer_diag.report import views
from fer_diag.report.markdown import table
from fer_diag.report.schema import Report
from fer_diag.report.views import fmt


def _fidelity(r: Report) -> str:
    rows = []
    for hook, h in (r.sae_fidelity.hooks if r.sae_fidelity else {}).items():
        for set_name, s in h.sets.items():
            rows.append(
                [
                    hook,
                    set_name,
                    fmt(s.explained_variance),
                    fmt(s.ev_drop),
                    fmt(s.cosine),
                    fmt(s.relative_mse),
                    fmt(s.l0, 1),
                    fmt(s.ce_score),
                    str(s.ce_tokens),
                ]
            )
    header = ["hook", "text set", "EV", "EV drop vs ID", "cosine", "rel. MSE", "L0", "CE score", "CE tokens"]
    return "\n".join(
        [
            "## SAE fidelity per text set",
            "",
            "EV = 1 − ‖x − x̂‖²/‖x − x̄‖² over counted tokens; CE score = (CE_abl − CE_sae)/(CE_abl − CE_clean) "
            "with zero-ablation, on the first windows of each set. An SAE whose fidelity collapses on a set makes "
            "its L0 there meaningless.",
            "",
            table(header, rows),
        ]
    )


def _sign(x: float | None, eps: float = 1e-12) -> int:
    return 0 if x is None or abs(x) < eps else (1 if x > 0 else -1)


def _l0_vs_raw(r: Report) -> str:
    """Per SAE hook and set: SAE L0 change and raw thresholded-density change vs the ID set, and whether they agree."""
    ref = views.reference_set(r)
    sae_bases = [b for b in views.bases(r) if b != "raw"]
    if ref is None or not sae_bases:
        return ""
    rows = []
    for basis in sae_bases:
        for hook in r.saes:
            l0_ref = views.profile_value(r, basis, hook, ref, "l0")
            raw_ref = views.profile_value(r, "raw", hook, ref, "thresh_density")
            hoyer_ref = views.profile_value(r, "raw", hook, ref, "hoyer")
            for s in views.set_names(r, ["shifted", "graded"]):
                l0 = views.profile_value(r, basis, hook, s, "l0")
                raw = views.profile_value(r, "raw", hook, s, "thresh_density")
                hoyer = views.profile_value(r, "raw", hook, s, "hoyer")
                if None in (l0, l0_ref, raw, raw_ref):
                    continue
                d_l0, d_raw = l0 - l0_ref, raw - raw_ref
                agree = "same" if _sign(d_l0) == _sign(d_raw) else "opposite"
                rows.append(
                    [
                        hook,
                        s,
                        fmt(l0_ref, 1),
                        fmt(l0, 1),
                        fmt(raw_ref),
                        fmt(raw),
                        fmt(None if hoyer is None or hoyer_ref is None else hoyer - hoyer_ref),
                        agree,
                    ]
                )
    if not rows:
        return ""
    n_same = sum(row[-1] == "same" for row in rows)
    return "\n".join(
        [
            "## SAE L0 next to raw sparsity",
            "",
            f"Do SAE latents and raw activations get denser/sparser together under shift? Direction of SAE L0 vs raw "
            f"thresholded density (both 'higher = denser'), relative to `{ref}`: same direction in {n_same} of "
            f"{len(rows)} (hook, set) pairs.",
            "",
            table(
                [
                    "hook",
                    "text set",
                    f"L0 {ref}",
                    "L0",
                    f"raw density {ref}",
                    "raw density",
                    "Δ hoyer (raw)",
                    "direction",
                ],
                rows,
            ),
        ]
    )


def _density(r: Report) -> str:
    rows = []
    for basis, hooks in (r.sparsity.feature_density if r.sparsity else {}).items():
        for hook, sets in hooks.items():
            for s, d in sets.items():
                rows.append([basis, hook, s, fmt(d.mean_l0, 1), fmt(d.dead_frac), fmt(d.dense_frac)])
    if not rows:
        return ""
    return "\n".join(
        [
            "### Feature density",
            "",
            table(["basis", "hook", "text set", "mean L0", "dead (never fired)", "dense"], rows),
        ]
    )


def _shifted(r: Report, per_side: int = 3) -> str:
    hooks = r.shifted_latents.hooks if r.shifted_latents else {}
    if not hooks:
        return ""
    parts = [
        "## Which latents shift",
        "",
        "Per shifted set, the latents whose firing rate changed most against the in-distribution set, with their "
        "top in-distribution context (token in ⟦ ⟧). All entries and contexts are in report.json.",
        "",
    ]
    for hook, sets in hooks.items():
        rows = []
        for s, entry in sets.items():
            for side in ("gained", "lost"):
                for lat in getattr(entry, side)[:per_side]:
                    ctx = (lat.contexts[0].text if lat.contexts else None) or ""
                    ctx = ctx.replace("\n", " ").replace("|", "\\|")
                    rows.append(
                        [
                            s,
                            side,
                            str(lat.latent),
                            fmt(lat.rate_reference),
                            fmt(lat.rate),
                            ctx[:90],
                        ]
                    )
        parts += [f"### {hook}", "", table(["text set", "", "latent", "rate ID", "rate", "top ID context"], rows), ""]
    return "\n".join(parts)


def render_sae(r: Report) -> str:
    if not r.saes:
        return ""
    return "\n\n".join(p for p in (_fidelity(r), _l0_vs_raw(r), _density(r), _shifted(r)) if p)
