"""Section 3, training core: `engine.train_one_epoch` (the loop behind `Trainer.run_epoch` and
G-Blend's estimators) per-step time vs a hand-written PyTorch loop, same model and batches.

Both sides train on the same cached batches, so the ratio is the loop's own overhead: loss
stacking, the weight vector, the (disabled) GradScaler, LambdaLR and the on-device running sums.
"""

from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from .common import CachedLoader, Ctx, interleave, log, med, paired_ratio, train_epoch


def section_core(ctx: Ctx) -> None:
    S, T = ctx.S, ctx.table
    tr = ctx.naive()
    batches = ctx.cached_batches()
    mods = tr.key.modalities
    hand_model = copy.deepcopy(tr.model)
    tc = tr.tcfg
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=tc["lr"], momentum=tc["momentum"],
                               weight_decay=tc["weight_decay"])
    epoch = [100]

    def core():
        t = time.perf_counter()
        train_epoch(tr, CachedLoader(batches), {"fused": 1.0}, epoch[0])
        dt = time.perf_counter() - t
        epoch[0] += 1
        return dt

    def hand():
        hand_model.train()
        t = time.perf_counter()
        for b in batches:
            out = hand_model({m: b[m] for m in mods})["fused"]
            loss = F.cross_entropy(out, b["label"])
            hand_opt.zero_grad(set_to_none=True)
            loss.backward()
            hand_opt.step()
        return time.perf_counter() - t

    log(f"3 core: engine.train_one_epoch vs a hand-written loop, {len(batches)} cached batches x "
        f"{S['reps'] * 2} repetitions")
    # "run_epoch": the sample name earlier results files use for this side
    s = interleave({"run_epoch": core, "hand": hand}, S["reps"] * 2, label="  per epoch")
    ctx.details["core"] = s | {"steps": len(batches)}
    r = paired_ratio(s["run_epoch"], s["hand"])
    n = len(batches)
    T.add("3", "engine.train_one_epoch step vs hand-written loop (forward, CE, backward, SGD), same model+batches",
          f"{1000 * med(s['run_epoch']) / n:.1f} ms/step", f"{1000 * med(s['hand']) / n:.1f} ms/step", r,
          "< 1.05x", r < 1.05)
