"""Fixed loss weights: uni-modal {m: 1}, naive {fused: 1}, hand-set G-Blend weights, and equal
weights over every head (the auxiliary-loss baseline of the paper's Table 5)."""

from __future__ import annotations

from ..errors import UserError
from .base import SetWeights


def parse_weights(text: str, heads: list[str]) -> dict[str, float]:
    """'rgb=.630,audio=.014,fused=.356' -> normalised weights; 'equal' -> 1/(k+1) each."""
    if text.strip() == "equal":
        return {h: 1.0 / len(heads) for h in heads}
    w = {}
    for part in text.split(","):
        if "=" not in part:
            raise UserError(f"--weights: expected HEAD=W pairs like rgb=.63,audio=.01,fused=.36; got {part!r}")
        h, v = part.split("=", 1)
        h = h.strip()
        if h not in heads:
            raise UserError(f"--weights: head {h!r} is not in this model (heads: {', '.join(heads)})")
        try:
            w[h] = float(v)
        except ValueError:
            raise UserError(f"--weights: {h}={v!r} is not a number") from None
        if w[h] < 0:
            raise UserError(f"--weights: {h}={v} is negative")
    total = sum(w.values())
    if total <= 0:
        raise UserError("--weights: the weights sum to 0")
    return {h: w.get(h, 0.0) / total for h in heads}


class FixedWeights(SetWeights):
    """Loss weights that never change."""

    def __init__(self, weights: dict[str, float]):
        self.weights = dict(weights)

    def before_epoch(self, epoch: int, ctx) -> None:
        pass

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
