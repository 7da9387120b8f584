"""Loss policies: how a run weighs its heads' losses, L = sum_h w_h CE_h.

Each method is one class in one file behind the `LossPolicy` interface (policies/base.py):
uni-modal {m: 1}, naive {fused: 1}, hand-set or equal weights (the auxiliary-loss baseline), and
Gradient-Blending (policies/gblend.py), whose weights Algorithm 1 estimates. `make_policy` picks
the class for a run's key.
"""

from __future__ import annotations

from ..errors import UserError
from ..experiment import RunKey
from .base import EstimationContext, LossPolicy
from .fixed import FixedWeights, parse_weights

__all__ = ["EstimationContext", "FixedWeights", "LossPolicy", "make_policy", "parse_weights"]


def make_policy(key: RunKey, cfg: dict) -> LossPolicy:
    """The policy of a run: fixed weights for uni-modal, naive, hand-set and equal-weight runs;
    Gradient-Blending (offline or online) otherwise."""
    if key.method == "unimodal":
        return FixedWeights({key.modalities[0]: 1.0})
    if key.method == "naive":
        return FixedWeights({"fused": 1.0})
    if key.mode in ("fixed", "equal"):
        return FixedWeights(parse_weights(cfg["gblend"]["weights"] if key.mode == "fixed" else "equal", key.heads))
    if cfg["train"]["holdout_fraction"] == 0 and not cfg["gblend"]["estimate_from"]:
        raise UserError("train.holdout_fraction = 0 leaves no held-out V, and G-Blend's weights are measured on V "
                        "(Algorithm 1); set train.holdout_fraction > 0 (the paper holds out 8%) or give --weights")
    from .gblend import GradientBlending

    return GradientBlending(cfg, key.mode, key.heads)
