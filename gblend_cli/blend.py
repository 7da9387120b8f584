"""Gradient-Blending (paper Sec. 3) and the Overfitting-to-Generalization Ratio (Sec. 2).

Definitions (Eq. 3): O_N = L^V_N - L^T_N; between checkpoints N and N+n,
ΔO = O_{N+n} - O_N, ΔG = L^V_N - L^V_{N+n}, OGR = |ΔO / ΔG|.
Proposition 1 in practice: w_k = (1/Z) ΔG_k / ΔO_k² (Z: weights sum to 1).

Algorithm 1 (`estimate_blend_weights`): from one checkpoint, train the k uni-modal networks and
the naive fused network n epochs on T — all k+1 in one pass over the data (EstimatorEnsemble) —
and measure L^T on T' and L^V on V before and after, each with a clean eval-mode pass, averaged per
sample. At φ_0 the "before" pass runs on a copy whose BatchNorm statistics are recomputed on T'
(freshly initialised statistics would distort it: audio L^V_0 2.27 instead of ln 8 = 2.08).
Algorithms 2 (offline) and 3 (online) decide when to call it: the loss policy in
gblend_cli/policies/gblend.py. `terms_from_runs` reads Algorithm 2's terms from finished runs.

The paper leaves ΔG <= 0 and ΔO ≈ 0 open. Our choices:
- `w_raw` (logged beside every weight): the formula with ΔG clipped at 0 (a head that does not
  generalise gets no weight), normalised; null where it is undefined (a ΔO of exactly 0, or every
  ΔG <= 0).
- rule `formula`: w_raw itself — the paper's formula with no guard beyond clipping ΔG (equal
  weights where it is undefined). The README's raw-rule rows use it; no head is flagged.
- rule `raw`: w_raw with ΔO² floored at its own noise, SE(ΔO)², where SE(ΔO) combines the
  standard errors of the four mean losses (per-clip losses on T' and V, before and after): a head
  whose ΔO is indistinguishable from 0 cannot take all the weight by a near-zero denominator, and
  the guard does not depend on how much *other* heads overfit. Every ΔG <= 0 -> equal weights.
- rule `regularised` (default): the `raw` rule, then each head whose ΔG <= 0 is lifted to
  `min_weight` (their total at most 0.05) so that its head keeps training, the mass taken
  proportionally from the others. A head that generalises is never floored: every weight stays
  within 0.05 of w_raw unless the noise guard binds, and the log row says when it does.
- online (Algorithm 3), an estimate after the first that shows no head generalising measurably —
  every ΔG within `evidence_z` standard errors of 0 — keeps the weights in force (`keep_weights`):
  late in a run, when the learning rate has decayed, a super-epoch's ΔG and ΔO on a small V are
  noise, and the formula would hand nearly all the weight to whichever head the noise favours.
  The row logs both (`w_estimated`, and `kept_from`: the epoch of the estimate still in force;
  `RunFolder.blend_in_force`; `kept_why`). With `keep_noise_bound` (off: it cost online G-Blend
  about 2 points on the tuning data, README) an estimate in which the noise guard sets a
  generalising head's ΔO² keeps them too.

Every row flags what moved its weights away from w_raw (`guard_flags`), judged, as the rules weigh,
by the clipped ΔG (max(ΔG, 0); NaN/Inf: 0): per head `floored` (a head with clipped ΔG 0 lifted to
the floor) and `noise_bound` (the noise guard set the denominator of a head with clipped ΔG > 0:
for a head with none it moves nothing), and `equal_fallback` (no head generalised: equal weights;
then nothing else is flagged). The flags describe the row's `w`: in a row that kept the weights in
force they are the kept estimate's, and this estimate's own are `floored_estimated`,
`noise_bound_estimated` and `equal_fallback_estimated`, beside `w_estimated`.
"""

from __future__ import annotations

import math

import torch

from .errors import UserError
from .ogr import gradient_blend_terms, loss_like, se_like
from .ui import console

FLOOR_BUDGET = 0.05  # the most weight the floors may move in total


# --- the formula and its rules ------------------------------------------------------------------
def _generalisation(delta_g: dict[str, float]) -> dict[str, float]:
    """ΔG clipped at 0; NaN/Inf count as no evidence of generalising."""
    return {h: max(v, 0.0) if math.isfinite(v) else 0.0 for h, v in delta_g.items()}


def raw_weights(delta_g: dict[str, float], delta_o: dict[str, float]) -> dict[str, float | None]:
    """w_raw: the paper's w_k = (ΔG_k / ΔO_k²) / Z with ΔG clipped at 0 and no other guard (None
    everywhere when it is undefined: a ΔO of exactly 0 with ΔG > 0, a non-finite ΔO, or Z = 0)."""
    g = _generalisation(delta_g)
    terms = {}
    for h in g:
        if g[h] == 0:
            terms[h] = 0.0
        elif delta_o[h] == 0 or not math.isfinite(delta_o[h]):
            return {k: None for k in g}
        else:
            terms[h] = g[h] / delta_o[h] ** 2
    z = sum(terms.values())
    if not math.isfinite(z) or z == 0:
        return {h: None for h in g}
    return {h: t / z for h, t in terms.items()}


def noise_bound(delta_o: dict[str, float], delta_o_se: dict[str, float | None] | None) -> dict[str, bool]:
    """Heads whose |ΔO| is below its standard error: there the noise guard sets the denominator."""
    se = delta_o_se or {}
    return {h: se.get(h) is not None and abs(delta_o[h]) < se[h] for h in delta_o}


HEAD_FLAGS = ("noise_bound", "floored")  # per head; with the row's equal_fallback, what moved w from w_raw


def guard_flags(delta_g: dict[str, float], delta_o: dict[str, float], w: dict[str, float], rule: str,
                delta_o_se: dict[str, float | None] | None = None) -> tuple[bool, dict[str, dict[str, bool]]]:
    """(equal_fallback, {head: {"noise_bound", "floored"}}) of weights `w` that `blend_weights` gave
    under `rule`: what moved them from w_raw, judged by the clipped ΔG the rules weigh by (see the
    module docstring). `formula` has no guard (fallback: w_raw undefined)."""
    heads = list(delta_g)
    if rule == "formula":
        return raw_weights(delta_g, delta_o)[heads[0]] is None, {h: dict.fromkeys(HEAD_FLAGS, False) for h in heads}
    g = _generalisation(delta_g)
    fallback = not any(v > 0 for v in g.values())
    bound = noise_bound(delta_o, delta_o_se)
    return fallback, {h: {"noise_bound": not fallback and g[h] > 0 and bound[h],
                          "floored": rule == "regularised" and not fallback and g[h] == 0 and w[h] > 0} for h in heads}


def blend_weights(delta_g: dict[str, float], delta_o: dict[str, float], rule: str = "regularised",
                  min_weight: float = 0.05, delta_o_se: dict[str, float | None] | None = None) -> dict[str, float]:
    """Final weights under `rule` (see the module docstring). Always >= 0 and summing to 1.

    `delta_o_se`: {head: standard error of ΔO} for the noise guard (None: only ΔO² >= 1e-12)."""
    heads = list(delta_g)
    if rule == "formula":
        w = raw_weights(delta_g, delta_o)
        return w if all(v is not None for v in w.values()) else {h: 1.0 / len(heads) for h in heads}
    g = _generalisation(delta_g)
    se = delta_o_se or {}
    o2 = {}
    for h in heads:
        noise = se.get(h) or 0.0
        o2[h] = max(delta_o[h] ** 2 if math.isfinite(delta_o[h]) else math.inf,
                    noise * noise if math.isfinite(noise) else 0.0, 1e-12)
    score = {h: g[h] / o2[h] for h in heads}
    z = sum(score.values())
    if not (z > 0 and math.isfinite(z)):
        return {h: 1.0 / len(heads) for h in heads}  # no head generalises: no evidence to weigh by
    w = {h: score[h] / z for h in heads}
    if rule == "regularised":
        lifted = [h for h in heads if g[h] == 0]
        if lifted and min_weight > 0:
            floor = min(min_weight, FLOOR_BUDGET / len(lifted))
            keep = 1.0 - floor * len(lifted)
            w = {h: floor if h in lifted else v * keep for h, v in w.items()}
    return w


# --- Algorithm 1 --------------------------------------------------------------------------------
def estimate_blend_weights(ctx, epoch: int, n_epochs: int, gcfg: dict) -> dict:
    """Algorithm 1 at checkpoint φ_epoch for n epochs, through the run's EstimationContext:
    returns the blend_weights.jsonl row {"epoch", "n_epochs", "metric", "rule", "heads": {h: {LT/LV
    before/after, ΔO, ΔG, OGR, w_raw, w}}}. The run's model is not modified; the estimators'
    randomness is seeded by (seed, epoch)."""
    from .models import EstimatorEnsemble

    from .engine import rng_seed

    ensemble = EstimatorEnsemble(ctx.model, ctx.model_cfg).to(ctx.device)
    heads = ensemble.head_names
    with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
        torch.manual_seed(rng_seed(ctx.seed, epoch, ctx.rank))
        probe = ctx.bn_recalibrated(ensemble) if epoch == 0 else ensemble  # φ_0: no initial BN statistics
        before = {s: ctx.evaluate(probe, s, heads) for s in ("train", "holdout")}
        ctx.train(ensemble, epoch, n_epochs, clip_groups=ensemble.clip_groups())
        after = {s: ctx.evaluate(ensemble, s, heads) for s in ("train", "holdout")}
    metric = gcfg["metric"]
    rows: dict[str, dict] = {}
    for h in heads:
        lt_b, lv_b = loss_like(before["train"], h, metric), loss_like(before["holdout"], h, metric)
        lt_a, lv_a = loss_like(after["train"], h, metric), loss_like(after["holdout"], h, metric)
        ses = [se_like(m, h, metric) for m in (before["train"], before["holdout"], after["train"], after["holdout"])]
        rows[h] = {"LT_before": lt_b, "LV_before": lv_b, "LT_after": lt_a, "LV_after": lv_a,
                   **gradient_blend_terms(lt_b, lv_b, lt_a, lv_a), "delta_O_se": delta_o_se(*ses),
                   "delta_G_se": delta_o_se(ses[1], ses[3])}
    return blend_row(epoch, n_epochs, gcfg, rows)


# --- Algorithm 2 from finished runs -------------------------------------------------------------
def terms_from_runs(sources: list[str], cfg: dict, modalities: list[str]) -> tuple[dict[str, dict], list[str]]:
    """Algorithm 2's measurements read from finished runs instead of retraining them.

    Offline G-Blend's estimators start from φ_0 and train the whole run: given the same recipe and
    seed they *are* the uni-modal run of each modality and the naive run (every backbone and head is
    initialised from (seed, its name), data order and dropout draws depend only on (seed, epoch)),
    so their L^T/L^V at epoch 0 and at the end are those runs' logged values (a test checks this
    bit for bit against `estimate_blend_weights`).

    Pooled over seeds: given those runs for several seeds (each seed with every head's run), each
    loss is the mean over the seeds — so ΔO and ΔG are the means of the seeds' ΔO and ΔG — and
    SE(ΔO) is that of a mean, sqrt(Σ SE_s²) / n: the same estimate of Proposition 1's terms with
    the noise of n estimations instead of one (the paper's Table 4 gives one weight set per
    combination for its three G-Blend runs). Returns ({head: terms}, [run names])."""
    from .run_folder import finished_run_sets

    want = {m: ("unimodal", (m,)) for m in modalities} | {"fused": ("naive", tuple(modalities))}
    found = finished_run_sets(sources, want, "gblend.estimate_from",
                              "needs the uni-modal run of each modality and the naive run")
    seeds = {h: [f.key().seed for f in runs] for h, runs in found.items()}
    first = seeds["fused"]
    for h, s in seeds.items():
        if sorted(s) != sorted(first) or len(set(s)) != len(s):
            raise UserError(f"gblend.estimate_from: the {h} runs have seeds {sorted(s)}, the naive runs {sorted(first)} "
                            f"(pooling needs every head's run for each seed, once)")
    n_epochs = cfg["gblend"]["estimate_epochs"] or cfg["train"]["epochs"]
    metric = cfg["gblend"]["metric"]
    rows = {}
    for head, runs in found.items():
        measured = []
        for f, seed in zip(runs, seeds[head]):
            own = cfg | {"train": cfg["train"] | {"seed": seed}}  # pooled runs differ in their seed only
            f.check_same_setup(own, "its losses do not stand for this run's estimators (gblend.estimate_from)")
            by_epoch = {r["epoch"]: r for r in f.metrics()}
            a, b = by_epoch.get(0), by_epoch.get(n_epochs)
            if not (a and b and a.get("holdout") and b.get("holdout")):
                raise UserError(f"{f.path}/metrics.jsonl: needs T' and V losses at epochs 0 and {n_epochs}")
            losses = [loss_like(r[s], head, metric) for r in (a, b) for s in ("train", "holdout")]
            ses = [se_like(r[s], head, metric) for r in (a, b) for s in ("train", "holdout")]
            measured.append((losses, delta_o_se(*ses), delta_o_se(ses[1], ses[3])))
        n = len(measured)
        lt_b, lv_b, lt_a, lv_a = (math.fsum(m[0][i] for m in measured) / n for i in range(4))
        se_o, se_g = (None if any(m[i] is None for m in measured) else math.sqrt(math.fsum(m[i] ** 2 for m in measured)) / n
                      for i in (1, 2))
        rows[head] = {"LT_before": lt_b, "LV_before": lv_b, "LT_after": lt_a, "LV_after": lv_a,
                      **gradient_blend_terms(lt_b, lv_b, lt_a, lv_a), "delta_O_se": se_o, "delta_G_se": se_g}
    return {h: rows[h] for h in want}, [f.path.name for h in want for f in found[h]]


def delta_o_se(*ses: float | None) -> float | None:
    """SE(ΔO) from the standard errors of L^T and L^V before and after (treated as independent);
    with the two L^V errors alone, SE(ΔG). Both are measured on the same clips before and after,
    so treating them as independent overstates the noise: the guards err towards acting. Measured
    (README, "Online estimates without evidence"): at φ_0 the paired error is the same (0.93-1.13x),
    in later online windows about 0.6x; with it online G-Blend was neither more accurate nor were its
    weights the formula's (4 runs on the tuning data seeds)."""
    return None if any(x is None for x in ses) else math.sqrt(sum(x * x for x in ses))


def shows_generalisation(row: dict, z: float) -> bool:
    """Whether an estimate carries evidence to weigh by: some head's ΔG above z·SE(ΔG) (above 0
    where SE(ΔG) was not measured)."""
    for r in row["heads"].values():
        dg, se = r["delta_G"], r.get("delta_G_se")
        if math.isfinite(dg) and dg > z * (se if se is not None and math.isfinite(se) else 0.0):
            return True
    return False


def noise_bound_heads(row: dict) -> list[str]:
    """The heads of an estimate whose weight the noise guard set (`noise_bound`: a head that
    generalises, |ΔO| below SE(ΔO)): there 1/ΔO² is noise, not a measurement."""
    return [h for h, r in row["heads"].items() if r.get("noise_bound")]


def row_flags(row: dict) -> dict:
    """The flags of a row's `w` ({"equal_fallback", "heads": {head: {"noise_bound", "floored"}}}):
    what `keep_weights` carries into a row that keeps them."""
    return {"equal_fallback": row["equal_fallback"],
            "heads": {h: {f: r[f] for f in HEAD_FLAGS} for h, r in row["heads"].items()}}


def keep_weights(row: dict, weights: dict[str, float], source_epoch: int, flags: dict | None,
                 why: str = "no_generalisation") -> dict:
    """An estimate that showed nothing to re-weight by (online, Algorithm 3; `why`, logged as
    `kept_why`: "no_generalisation", or "noise_bound" under gblend.keep_noise_bound): the weights
    in force stay.
    Each head's `w` becomes the weight kept (what training uses), `w_estimated` what this estimate
    gave; `kept_from` is the epoch of the estimate whose weights stay. The flags follow `w`: they
    become those of the weights in force (`flags`, `row_flags` of their row; None where they are not
    known — a run resumed from a checkpoint of a gblend that did not keep them — and then null),
    and this estimate's own move to `<flag>_estimated`."""
    for h, r in row["heads"].items():
        r["w_estimated"], r["w"] = r["w"], weights[h]
        for f in HEAD_FLAGS:
            r[f"{f}_estimated"], r[f] = r[f], None if flags is None else flags["heads"][h][f]
    row["equal_fallback_estimated"] = row["equal_fallback"]
    row["equal_fallback"] = None if flags is None else flags["equal_fallback"]
    row["kept_from"] = source_epoch
    row["kept_why"] = why
    return row


def blend_row(epoch: int, n_epochs: int, gcfg: dict, rows: dict[str, dict], **extra) -> dict:
    """The blend_weights.jsonl row from each head's measured terms: w_raw, w and the flags of what
    moved w from w_raw (`guard_flags`)."""
    heads = list(rows)
    dg = {h: rows[h]["delta_G"] for h in heads}
    do = {h: rows[h]["delta_O"] for h in heads}
    se = {h: rows[h].get("delta_O_se") for h in heads}
    w_raw = raw_weights(dg, do)
    w = blend_weights(dg, do, gcfg["rule"], gcfg["min_weight"], se)
    fallback, flags = guard_flags(dg, do, w, gcfg["rule"], se)
    for h in heads:
        rows[h]["w_raw"] = w_raw[h]
        rows[h]["w"] = w[h]
        rows[h].update(flags[h])
        rows[h]["ogr"] = rows[h]["ogr"] if math.isfinite(rows[h]["ogr"]) else None
    return {"epoch": epoch, "n_epochs": n_epochs, "metric": gcfg["metric"], "rule": gcfg["rule"],
            "equal_fallback": fallback, "heads": rows} | extra


def show_weights_table(row: dict) -> None:
    from rich.table import Table

    why = {"noise_bound": "a generalising head's ΔO within its noise"}.get(row.get("kept_why"),
                                                                          "no head generalised measurably")
    kept = "" if row.get("kept_from") is None else f"; {why}: the weights of epoch {row['kept_from']} stay"
    t = Table(title=f"G-Blend weights at epoch {row['epoch']} ({row['n_epochs']} estimation epochs, "
                    f"metric {row['metric']}, rule {row['rule']}; ₀ before, ₁ after{kept})")
    for c in ("head", "L^T₀", "L^V₀", "L^T₁", "L^V₁", "ΔO", "ΔG", "OGR", "w raw", "w"):
        t.add_column(c, justify="right", no_wrap=True)
    for h, r in row["heads"].items():
        t.add_row(h, *(f"{r[k]:.3f}" for k in ("LT_before", "LV_before", "LT_after", "LV_after", "delta_O", "delta_G")),
                  "-" if r["ogr"] is None else f"{r['ogr']:.3f}", "-" if r["w_raw"] is None else f"{r['w_raw']:.3f}",
                  f"{r['w']:.3f}")
    console.print(t)
