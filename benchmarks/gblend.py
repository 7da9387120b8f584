"""Section 4, G-Blend: G-Blend epoch vs naive epoch; Algorithm 1 in one data pass vs k+1 separate
trainings; whole online/offline G-Blend run vs naive, computed from the measured components.

Algorithm 1 runs through the same estimation context a run gives its loss policy (RunContext);
a subclass with a stopwatch on `train` splits its time into the ensemble's epochs and the fixed
part (building the estimators, the evaluations before and after).
"""

from __future__ import annotations

import time
from dataclasses import replace

from gblend_cli.blend import estimate_blend_weights
from gblend_cli.policies import make_policy
from gblend_cli.train import RunContext

from .common import Ctx, interleave, log, med, paired_ratio

MODS = ["audio", "rgb"]


class TimedContext(RunContext):
    """A run's estimation context that adds up the seconds spent training estimators."""

    def __init__(self, trainer):
        super().__init__(trainer, trainer.folder)
        self.train_s = 0.0

    def train(self, model, first_epoch: int, n_epochs: int, clip_groups=None) -> None:
        t = time.perf_counter()
        super().train(model, first_epoch, n_epochs, clip_groups)
        self.train_s += time.perf_counter() - t


def section_gblend(ctx: Ctx) -> None:
    naive = ctx.naive()
    gb = ctx.trainer("gblend", "gblend", MODS)
    uni = [ctx.trainer(f"uni-{m}", "unimodal", [m]) for m in MODS]
    weights, comp = estimation(ctx, gb, uni + [naive])
    epochs = epoch_costs(ctx, gb, naive, weights)
    whole_run(ctx, gb, epochs, comp)


def estimation(ctx: Ctx, gb, separate_trainers: list) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Algorithm 1 in one pass vs the same k+1 estimators trained one after another; returns the
    estimated weights and the components of one estimation (per ensemble epoch, fixed part)."""
    S, T = ctx.S, ctx.table
    gcfg = gb.cfg["gblend"]
    n_est = S["est_epochs"]
    comp: dict[str, list[float]] = {"ens_epoch": [], "fixed": []}
    last = {}

    def one_pass():
        run = TimedContext(gb)
        t = time.perf_counter()
        last["row"] = estimate_blend_weights(run, 0, n_est, gcfg)
        dt = time.perf_counter() - t
        comp["ens_epoch"].append(run.train_s / n_est)
        comp["fixed"].append(dt - run.train_s)
        return dt

    def separate():
        t = time.perf_counter()
        for trainer in separate_trainers:
            train_estimator(trainer, gb.model, n_est)
        return time.perf_counter() - t

    k1 = len(separate_trainers)
    log(f"4 gblend: Algorithm 1 ({k1} estimators, {n_est} epoch(s), evaluation on T' and V before and "
        f"after) in one pass vs {k1} separate trainings, {S['reps']} repetitions")
    s_est = interleave({"one_pass": one_pass, "separate": separate}, S["reps"], label="  per estimation")
    comp = {k: v[1:] for k, v in comp.items()}  # drop the warm-up run
    ctx.details["gblend"] = {"estimation": s_est, "components": comp}
    T.add("4", f"G-Blend weight estimation (k+1={k1} estimators, {n_est} epoch(s), one data pass) vs "
               f"{k1} separate trainings of the same epochs", f"{med(s_est['one_pass']):.2f} s",
          f"{med(s_est['separate']):.2f} s", paired_ratio(s_est["one_pass"], s_est["separate"]))
    return {h: v["w"] for h, v in last["row"]["heads"].items()}, comp


def train_estimator(trainer, src, n_epochs: int) -> None:
    """One of Algorithm 1's estimators on its own: `trainer`'s model initialised from `src` as
    EstimatorEnsemble does, evaluated on T' and V (BatchNorm statistics recomputed first, as at
    φ_0), trained `n_epochs` from epoch 0, evaluated again."""
    model = trainer.new_model()
    for m in trainer.key.modalities:
        model.backbones[m].load_state_dict(src.backbones[m].state_dict())
        if m in model.heads:
            model.heads[m].load_state_dict(src.heads[m].state_dict())
    if hasattr(model, "fused"):
        model.fused.load_state_dict(src.fused.state_dict())
    run = RunContext(trainer, trainer.folder)
    heads = trainer.key.heads
    probe = run.bn_recalibrated(model)
    for s in ("train", "holdout"):
        run.evaluate(probe, s, heads)
    run.train(model, 0, n_epochs)
    for s in ("train", "holdout"):
        run.evaluate(model, s, heads)


def epoch_costs(ctx: Ctx, gb, naive, weights: dict[str, float]) -> dict[str, list[float]]:
    """A G-Blend epoch with the estimated weights vs a naive epoch, and each run's evaluation pass."""
    S, T = ctx.S, ctx.table
    epoch = [200]

    def run(trainer, w):
        def fn():
            t = time.perf_counter()
            trainer.run_epoch(trainer.model, trainer.optimizer, trainer.scheduler, w, epoch[0])
            epoch[0] += 1
            return time.perf_counter() - t
        return fn

    def evaluate(trainer):
        def fn():
            t = time.perf_counter()
            trainer.evaluate_splits(trainer.model)
            return time.perf_counter() - t
        return fn

    log(f"4 gblend: G-Blend epoch (weights {', '.join(f'{h} {w:.2f}' for h, w in weights.items())}) vs naive epoch")
    s = interleave({"gblend": run(gb, weights), "naive": run(naive, {"fused": 1.0}),
                    "eval_gblend": evaluate(gb), "eval_naive": evaluate(naive)}, S["reps"], label="  per epoch")
    ctx.details["gblend"] |= {"epochs": s, "weights": weights}
    r = paired_ratio(s["gblend"], s["naive"])
    T.add("4", "G-Blend epoch (all heads' losses, estimated weights) vs naive epoch (fused head), data loading included",
          f"{med(s['gblend']):.2f} s", f"{med(s['naive']):.2f} s", r, "< 1.10x", r < 1.10)
    return s


def whole_run(ctx: Ctx, gb, s: dict[str, list[float]], comp: dict[str, list[float]]) -> None:
    """A whole G-Blend run vs a naive run of the demo recipe (epochs, eval_every, estimation points),
    computed from the measured components."""
    E, every = gb.tcfg["epochs"], gb.tcfg["eval_every"]
    n_evals = 1 + sum(1 for e in range(E) if (e + 1) % every == 0 or e + 1 == E)
    t_gb, t_nv, t_egb, t_env = med(s["gblend"]), med(s["naive"]), med(s["eval_gblend"]), med(s["eval_naive"])
    t_ens, t_fix = med(comp["ens_epoch"]), med(comp["fixed"])
    naive_total = E * t_nv + n_evals * t_env
    whole = {}
    for mode in ("online", "offline"):
        points = make_policy(replace(gb.key, mode=mode), gb.cfg).schedule()
        est = sum(t_fix + n * t_ens for n in points.values())
        whole[mode] = {"points": points, "estimation_s": est, "total_s": E * t_gb + n_evals * t_egb + est}
    ctx.details["gblend"]["whole_run"] = whole | {"naive_total_s": naive_total, "epochs": E, "evaluations": n_evals,
                                                  "t_ens_epoch": t_ens, "t_estimation_fixed": t_fix}
    for mode in ("online", "offline"):
        w = whole[mode]
        pts = ", ".join(f"@{e}:{n}" for e, n in w["points"].items())
        ctx.table.add("4", f"{mode} G-Blend run vs naive run, {E} epochs (demo recipe; estimations {pts}), computed: "
                           f"E*epoch + evaluations + sum(fixed + n*ensemble epoch)",
                      f"{w['total_s']:.1f} s", f"{naive_total:.1f} s", w["total_s"] / naive_total)
