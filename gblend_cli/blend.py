"""Gradient-Blending (paper Sec. 3) and the Overfitting-to-Generalization Ratio (Sec. 2).

Definitions (Eq. 3): O_N = L^V_N - L^T_N; between checkpoints N and N+n,
ΔO = O_{N+n} - O_N, ΔG = L^V_N - L^V_{N+n}, OGR = |ΔO / ΔG|.
Proposition 1 in practice: w_k = (1/Z) ΔG_k / ΔO_k² (Z: weights sum to 1).

Algorithm 1 (`estimate_blend_weights`): from one checkpoint, train the k uni-modal networks and
the naive fused network n epochs on T — all k+1 in one pass over the data (EstimatorEnsemble) —
and measure L^T on T' and L^V on V before and after, each with a clean eval-mode pass, averaged per
sample. Algorithms 2 (offline) and 3 (online) decide when to call it: the loss policy in
gblend_cli/policies/gblend.py.

The paper leaves ΔG <= 0 and ΔO ≈ 0 open. Rules (`gblend.rule`):
- raw: the formula with the minimal guards: ΔG clipped at 0, ΔO² floored at 1e-12; all-zero ->
  equal weights. Winner-take-all in practice (a head with ΔO ≈ 0 takes everything).
- regularised (default): ΔG clipped at 0; ΔO² floored at `delta_o_floor` × the largest head's ΔO²
  (no head wins by a near-zero denominator); then every weight floored at `min_weight` and the
  fused head at `fused_min_weight` (no head is dropped; the evaluated fused head keeps training);
  all-zero -> equal weights. `w_raw` in blend_weights.jsonl is always the unguarded formula.
"""

from __future__ import annotations

import math

import torch

from .ogr import gradient_blend_terms, loss_like
from .ui import console


# --- the formula and its rules ------------------------------------------------------------------
def raw_weights(delta_g: dict[str, float], delta_o: dict[str, float]) -> dict[str, float | None]:
    """The paper's w_k = (ΔG_k / ΔO_k²) / Z with no guard (None where undefined)."""
    terms = {}
    for h in delta_g:
        terms[h] = delta_g[h] / delta_o[h] ** 2 if delta_o[h] != 0 else math.copysign(math.inf, delta_g[h] or 1)
    z = sum(terms.values())
    if not math.isfinite(z) or z == 0:
        return {h: None for h in terms}
    return {h: t / z for h, t in terms.items()}


def _apply_floors(w: dict[str, float], floors: dict[str, float]) -> dict[str, float]:
    """Raise weights to their floors, taking the mass proportionally from the heads above theirs."""
    fixed: dict[str, float] = {}
    for _ in range(len(w) + 1):
        free = {h: v for h, v in w.items() if h not in fixed}
        mass = 1.0 - sum(fixed.values())
        total = sum(free.values())
        scaled = {h: (v / total * mass if total > 0 else mass / len(free)) for h, v in free.items()}
        low = {h for h, v in scaled.items() if v < floors.get(h, 0.0)}
        if not low:
            return {**fixed, **scaled}
        fixed.update({h: floors.get(h, 0.0) for h in w if h in low})  # head order, not set order: sums stay bit-exact
        if sum(fixed.values()) >= 1.0:  # floors alone fill the budget: share in proportion to floors
            s = sum(fixed.values())
            return {h: fixed.get(h, 0.0) / s for h in w}
    return {**fixed, **scaled}  # pragma: no cover


def blend_weights(delta_g: dict[str, float], delta_o: dict[str, float], rule: str = "regularised",
                  min_weight: float = 0.05, fused_min_weight: float = 0.1, delta_o_floor: float = 0.01) -> dict[str, float]:
    """Final weights under `rule` (see the module docstring). Always >= 0 and summing to 1."""
    heads = list(delta_g)
    g = {h: max(delta_g[h], 0.0) if math.isfinite(delta_g[h]) else 0.0 for h in heads}  # NaN/inf: no evidence
    o2 = {h: delta_o[h] ** 2 if math.isfinite(delta_o[h]) else math.inf for h in heads}
    if rule == "raw":
        o2 = {h: max(v, 1e-12) for h, v in o2.items()}
    else:
        top = max((v for v in o2.values() if math.isfinite(v)), default=0.0)
        o2 = {h: max(v, delta_o_floor * top, 1e-12) for h, v in o2.items()}
    score = {h: g[h] / o2[h] for h in heads}
    z = sum(score.values())
    ok = z > 0 and math.isfinite(z)
    w = {h: (s / z if ok else 1.0 / len(heads)) for h, s in score.items()}
    if rule == "regularised":
        floors = {h: (fused_min_weight if h == "fused" else min_weight) for h in heads}
        w = _apply_floors(w, floors)
    return w


# --- Algorithm 1 --------------------------------------------------------------------------------
def estimate_blend_weights(ctx, epoch: int, n_epochs: int, gcfg: dict) -> dict:
    """Algorithm 1 at checkpoint φ_epoch for n epochs, through the run's EstimationContext:
    returns the blend_weights.jsonl row {"epoch", "n_epochs", "metric", "rule", "heads": {h: {LT/LV
    before/after, ΔO, ΔG, OGR, w_raw, w}}}. The run's model is not modified; the estimators'
    randomness is seeded by (seed, epoch)."""
    from .models import EstimatorEnsemble

    ensemble = EstimatorEnsemble(ctx.model, ctx.model_cfg).to(ctx.device)
    heads = ensemble.head_names
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(ctx.seed * 1000 + epoch + 1)
        before = {s: ctx.evaluate(ensemble, s, heads) for s in ("train", "holdout")}
        ctx.train(ensemble, epoch, n_epochs, clip_groups=ensemble.clip_groups())
        after = {s: ctx.evaluate(ensemble, s, heads) for s in ("train", "holdout")}
    metric = gcfg["metric"]
    rows: dict[str, dict] = {}
    for h in heads:
        lt_b, lv_b = loss_like(before["train"], h, metric), loss_like(before["holdout"], h, metric)
        lt_a, lv_a = loss_like(after["train"], h, metric), loss_like(after["holdout"], h, metric)
        rows[h] = {"LT_before": lt_b, "LV_before": lv_b, "LT_after": lt_a, "LV_after": lv_a,
                   **gradient_blend_terms(lt_b, lv_b, lt_a, lv_a)}
    dg = {h: rows[h]["delta_G"] for h in heads}
    do = {h: rows[h]["delta_O"] for h in heads}
    w_raw = raw_weights(dg, do)
    w = blend_weights(dg, do, gcfg["rule"], gcfg["min_weight"], gcfg["fused_min_weight"], gcfg["delta_o_floor"])
    for h in heads:
        rows[h]["w_raw"] = w_raw[h]
        rows[h]["w"] = w[h]
        rows[h]["ogr"] = rows[h]["ogr"] if math.isfinite(rows[h]["ogr"]) else None
    return {"epoch": epoch, "n_epochs": n_epochs, "metric": metric, "rule": gcfg["rule"], "heads": rows}


def show_weights_table(row: dict) -> None:
    from rich.table import Table

    t = Table(title=f"G-Blend weights at epoch {row['epoch']} ({row['n_epochs']} estimation epochs, "
                    f"metric {row['metric']}, rule {row['rule']}; ₀ before, ₁ after)")
    for c in ("head", "L^T₀", "L^V₀", "L^T₁", "L^V₁", "ΔO", "ΔG", "OGR", "w raw", "w"):
        t.add_column(c, justify="right", no_wrap=True)
    for h, r in row["heads"].items():
        t.add_row(h, *(f"{r[k]:.3f}" for k in ("LT_before", "LV_before", "LT_after", "LV_after", "delta_O", "delta_G")),
                  "-" if r["ogr"] is None else f"{r['ogr']:.3f}", "-" if r["w_raw"] is None else f"{r['w_raw']:.3f}",
                  f"{r['w']:.3f}")
    console.print(t)
