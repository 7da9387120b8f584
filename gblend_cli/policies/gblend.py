"""Gradient-Blending as a loss policy (paper Sec. 3.3): the loss is L_blend = sum_k w_k L_k over
the k uni-modal heads and the fused head, with w_k = ΔG_k / ΔO_k² / Z estimated by Algorithm 1
(gblend_cli/blend.py) — once from φ_0 over the whole run (offline, Algorithm 2), or at the start
of every super-epoch over that super-epoch (online, Algorithm 3; a later estimate in which no head
generalises measurably keeps the weights in force: `blend.keep_weights`)."""

from __future__ import annotations

from ..blend import (blend_row, estimate_blend_weights, keep_weights, noise_bound_heads, row_flags,
                     show_weights_table, shows_generalisation, terms_from_runs)


class GradientBlending:
    """`cfg` is the run's whole recipe (offline terms read from runs are checked against it)."""

    def __init__(self, cfg: dict, mode: str, heads: list[str]):
        if mode not in ("offline", "online"):
            raise ValueError(mode)
        self.cfg, self.gcfg, self.mode, self.epochs, self.heads = cfg, cfg["gblend"], mode, cfg["train"]["epochs"], heads
        self.from_runs = None  # offline terms read (and checked) now, before the run starts
        if mode == "offline" and self.gcfg["estimate_from"]:
            self.from_runs = terms_from_runs(self.gcfg["estimate_from"], cfg, [h for h in heads if h != "fused"])
        self.weights = {h: 1.0 / len(heads) for h in heads}
        self.history: list[dict] = []

    def schedule(self) -> dict[int, int]:
        """{epoch: estimation length} of every estimation point."""
        if self.mode == "offline":
            return {0: self.gcfg["estimate_epochs"] or self.epochs}
        points, e, n = {}, 0, self.gcfg["warmup_super_epoch"]
        while e < self.epochs:
            points[e] = min(n, self.epochs - e)
            e += n
            n = self.gcfg["super_epoch"]
        return points

    def before_epoch(self, epoch: int, ctx) -> None:
        n = self.schedule().get(epoch)
        if n is None:
            return
        if self.from_runs is not None:  # Algorithm 2's estimators ran already: they are these runs
            terms, names = self.from_runs
            row = blend_row(epoch, n, self.gcfg, terms, source="runs", runs=names)
        else:
            row = estimate_blend_weights(ctx, epoch, n, self.gcfg)
        source = epoch
        if why := self.keep_reason(row):  # nothing to re-weight by
            source = self.source_epoch
            row = keep_weights(row, self.weights, source, self.history[-1].get("flags"), why)
        old = dict(self.weights)
        self.weights = {h: row["heads"][h]["w"] for h in self.heads}
        self.history.append({"epoch": epoch, "weights": dict(self.weights), "source_epoch": source,
                             "flags": row_flags(row)})  # the flags of the weights in force
        ctx.record(row)
        if ctx.is_main and (old != self.weights or row.get("kept_from") is not None):
            show_weights_table(row)

    def keep_reason(self, row: dict) -> str | None:
        """Why an online estimate after the first keeps the weights in force (None: it re-weights):
        "no_generalisation" (no head's ΔG above gblend.evidence_z standard errors), or, with
        gblend.keep_noise_bound, "noise_bound" (a generalising head's |ΔO| below SE(ΔO): the
        guard, not the formula, would set its weight)."""
        if self.mode != "online" or not self.history:
            return None
        z = self.gcfg["evidence_z"]
        if z > 0 and not shows_generalisation(row, z):
            return "no_generalisation"
        if self.gcfg.get("keep_noise_bound") and noise_bound_heads(row):
            return "noise_bound"
        return None

    @property
    def source_epoch(self) -> int | None:
        """The epoch of the estimate whose weights are in force (a history saved before
        `source_epoch` was recorded: its last estimate's)."""
        if not self.history:
            return None
        return self.history[-1].get("source_epoch", self.history[-1]["epoch"])

    def weights_for(self, epoch: int) -> dict[str, float]:
        return self.weights

    def estimation_plan(self) -> dict[int, int]:
        return {} if self.from_runs is not None else self.schedule()

    def state_dict(self) -> dict:
        return {"weights": self.weights, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
        self.history = list(state.get("history", []))
