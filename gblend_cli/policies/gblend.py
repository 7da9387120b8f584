"""Gradient-Blending as a loss policy (paper Sec. 3.3): the loss is L_blend = sum_k w_k L_k over
the k uni-modal heads and the fused head, with w_k = ΔG_k / ΔO_k² / Z estimated by Algorithm 1
(gblend_cli/blend.py) — once from φ_0 over the whole run (offline, Algorithm 2), or at the start
of every super-epoch over that super-epoch (online, Algorithm 3)."""

from __future__ import annotations

from ..blend import estimate_blend_weights, show_weights_table


class GradientBlending:
    def __init__(self, gcfg: dict, mode: str, epochs: int, heads: list[str]):
        if mode not in ("offline", "online"):
            raise ValueError(mode)
        self.gcfg, self.mode, self.epochs, self.heads = gcfg, mode, epochs, heads
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
        row = estimate_blend_weights(ctx, epoch, n, self.gcfg)
        old = dict(self.weights)
        self.weights = {h: row["heads"][h]["w"] for h in self.heads}
        self.history.append({"epoch": epoch, "weights": dict(self.weights)})
        ctx.record(row)
        if ctx.is_main and old != self.weights:
            show_weights_table(row)

    def weights_for(self, epoch: int) -> dict[str, float]:
        return self.weights

    def state_dict(self) -> dict:
        return {"weights": self.weights, "history": self.history}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
        self.history = list(state.get("history", []))
