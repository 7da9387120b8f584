"""Squeeze-and-excitation gating of the visual features by audio (paper Sec. 3.2, Fig. 1 "SE gate")."""

from __future__ import annotations

import torch
from torch import nn

from ..models import seeded_build
from .stages import TwoStreamBase, channels


class SEGateNet(TwoStreamBase):
    """Audio gates the visual channels, squeeze-and-excitation style (Hu et al., CVPR 2018).

    After stage k (`model.fusion_stage`, default 3 of 4) the audio map is averaged to a vector
    ("squeeze"), mapped by FC -> ReLU -> FC -> sigmoid to one gate per visual channel
    ("excitation"), and the visual map is multiplied by it; both backbones then finish, and their
    pooled features are concatenated into the same fusion head as late concatenation.

    Paper Fig. 1 ("SE gate", 71.4 on Kinetics, no better than late concat). What the paper leaves
    open: the stage, the bottleneck width (here: visual channels / 4, at least 4) and whether the
    audio features also reach the head (here: yes, as in late concat)."""

    def __init__(self, modalities: list[str], num_classes: int, model_cfg: dict, init_seed: int = 0):
        super().__init__(modalities, num_classes, model_cfg, init_seed, "se-gate")
        ca, cv = channels(self.backbones["audio"], self.stage), channels(self.backbones[self.visual], self.stage)
        hidden = max(4, cv // 4)
        self.gate = seeded_build(init_seed, "se-gate/gate", lambda: nn.Sequential(
            nn.Linear(ca, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, cv), nn.Sigmoid()))
        self.fused = self.fused_head(init_seed, sum(b.out_dim for b in self.backbones.values()), model_cfg)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, v = self.streams_at_stage(inputs)
        g = self.gate(a.mean(dim=(2, 3))).to(v.dtype)
        return self.late_concat(a, v * g[:, :, None, None, None])
