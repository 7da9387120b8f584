"""The dropout baseline (paper Sec. 3.2, Fig. 1 "dropout" and Table 5 "Dropout")."""

from __future__ import annotations

from ..models import MultiModalNet


class DropoutFusionNet(MultiModalNet):
    """Naive late concatenation whose fusion head drops its concatenated features at
    `model.fix_dropout` (0.8 by default) instead of `model.fusion_dropout` (0.5): the paper's
    regulariser against the multi-modal network's overfitting.

    Paper Sec. 3.2 / Table 5 ("Dropout") and Fig. 1. What the paper leaves open: the rate and where
    the dropout sits; its fusion head (official code) already has a dropout on the concatenated
    features, so here that same layer drops more. Dropout has no parameters, so this network starts
    from exactly the naive run's weights (same seed)."""

    def __init__(self, modalities: list[str], num_classes: int, model_cfg: dict, init_seed: int = 0):
        super().__init__(modalities, ["fused"], num_classes, {**model_cfg, "fusion_dropout": model_cfg["fix_dropout"]},
                         init_seed=init_seed)
