"""Section 5, scaling: epoch time vs training clips (linear fit); torchrun 2 CPU processes vs 1.

The epochs train the naive trainer's model on loaders over the first n clips of its T; the
torchrun comparison runs the real `gblend train-naive` command, one and two processes, alternately.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

from gblend_cli.data import ClipDataset, make_loader

from .common import Ctx, interleave, linear_fit, log, med, paired_ratio, train_epoch


def section_scaling(ctx: Ctx) -> None:
    epoch_vs_clips(ctx)
    torchrun_vs_one(ctx)


def epoch_vs_clips(ctx: Ctx) -> None:
    """Epoch time at several training-set sizes: the fit's intercept is the per-epoch fixed cost."""
    S, T = ctx.S, ctx.table
    tr = ctx.naive()
    sizes = [n for n in S["scaling"] if n <= len(tr.data.train_loader.dataset)]
    loaders = {n: first_clips_loader(tr, n) for n in sizes}
    epoch = [300]

    def run(n):
        def fn():
            t = time.perf_counter()
            train_epoch(tr, loaders[n], {"fused": 1.0}, epoch[0])
            dt = time.perf_counter() - t
            epoch[0] += 1
            return dt
        return fn

    log(f"5 scaling: epoch time vs training clips {sizes}, {S['reps'] * 2} repetitions")
    s = interleave({str(n): run(n) for n in sizes}, S["reps"] * 2, label="  per epoch")
    xs, ys = sizes, [med(s[str(n)]) for n in sizes]
    a, b, r2 = linear_fit(xs, ys)
    per_clip = [y / x for x, y in zip(xs, ys)]
    ctx.details["scaling"] = {"samples": s, "fit": {"intercept_s": a, "slope_s_per_clip": b, "r2": r2}}
    T.add("5", f"epoch time vs training clips {'/'.join(map(str, sizes))}: linear fit t = a + b*n "
               f"(a = {a * 1000:.0f} ms, R^2 = {r2:.4f}); ratio = time per clip at {sizes[-1]} vs {sizes[0]}",
          f"b = {b * 1000:.2f} ms/clip", f"{per_clip[0] * 1000:.2f} ms/clip at {sizes[0]}",
          per_clip[-1] / per_clip[0])


def first_clips_loader(tr, n: int):
    """A training loader like the trainer's own over the first `n` clips of its T."""
    seed = tr.tcfg["seed"]
    ds = ClipDataset(tr.data.ds, tr.data.train_loader.dataset.items[:n], list(tr.key.modalities), tr.cfg["clip"],
                     train=True, seed=seed)
    return make_loader(ds, tr.tcfg["batch_size"], shuffle=True, seed=seed, drop_last=True, workers=tr.tcfg["workers"])


def torchrun_vs_one(ctx: Ctx) -> None:
    """`gblend train-naive` under torchrun with 2 CPU processes vs 1 process, alternately."""
    S, T = ctx.S, ctx.table
    E = S["ddp_epochs"]
    common = ["train-naive", "--modalities", "audio,rgb", "--data", str(ctx.prepared), "--epochs", str(E),
              "--threads", "1", "--workers", "0", "--set", "train.eval_every=1000", "--set", "clip.eval_clips=1",
              "--set", "train.train_eval_size=64"]

    def run(nproc: int, k: int) -> dict:
        out = ctx.work / "runs" / f"ddp{nproc}-{k}"
        shutil.rmtree(out, ignore_errors=True)
        launcher = [sys.executable, "-m", "gblend_cli"] if nproc == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "gblend_cli"]
        t = time.perf_counter()
        p = subprocess.run(launcher + common + ["--out", str(out)], cwd=ctx.work, env=ctx.env(), capture_output=True,
                           text=True, timeout=600)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{nproc}-process training failed: {p.stderr[-1500:]}")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        # epoch 1 warms up; the last epoch also evaluates: epochs 2..E-1 are pure training epochs
        ep = [r["epoch_seconds"] for r in rows if 2 <= r["epoch"] <= E - 1]
        log(f"  {nproc} process(es): wall {wall:.1f}s, training epoch {1000 * med(ep):.0f} ms (median of {len(ep)})")
        return {"wall_s": wall, "epoch_s": ep}

    log(f"5 scaling: torchrun 2 CPU processes (gloo) vs 1 process, {E} epochs, {S['ddp_pairs']} interleaved pairs")
    res = {1: [], 2: []}
    for k in range(S["ddp_pairs"]):
        for nproc in ((1, 2) if k % 2 == 0 else (2, 1)):
            res[nproc].append(run(nproc, k))
    ctx.details["ddp"] = res
    e1 = [x for r in res[1] for x in r["epoch_s"]]
    e2 = [x for r in res[2] for x in r["epoch_s"]]
    w1, w2 = [r["wall_s"] for r in res[1]], [r["wall_s"] for r in res[2]]
    T.add("5", f"torchrun 2 processes vs 1 process: training epoch time ({len(e1)} epochs each; ideal 0.50x)",
          f"{1000 * med(e2):.0f} ms", f"{1000 * med(e1):.0f} ms", med(e2) / med(e1))
    T.add("5", f"torchrun 2 processes vs 1 process: wall clock of the whole command, {E} epochs "
               f"({len(w1)} pairs; start-up included)", f"{med(w2):.1f} s", f"{med(w1):.1f} s", paired_ratio(w2, w1))
