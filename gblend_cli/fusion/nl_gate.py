"""Non-local attention gating of the visual features by audio (paper Sec. 3.2, Fig. 1 "NL gate")."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..models import seeded_build
from .stages import TwoStreamBase, channels


class NLGate(nn.Module):
    """A non-local block (Wang et al., CVPR 2018, embedded Gaussian) whose queries are the visual
    positions and whose keys and values are the audio (frame, mel) positions; its output is added to
    the visual map through a 1x1x1 convolution and a BatchNorm initialised to zero, so the block
    starts as the identity."""

    def __init__(self, ca: int, cv: int):
        super().__init__()
        d = max(1, cv // 2)
        self.theta, self.phi, self.g = nn.Conv3d(cv, d, 1), nn.Conv2d(ca, d, 1), nn.Conv2d(ca, d, 1)
        self.out = nn.Sequential(nn.Conv3d(d, cv, 1, bias=False), nn.BatchNorm3d(cv))
        nn.init.zeros_(self.out[1].weight)
        self.scale = 1.0 / math.sqrt(d)

    def forward(self, v: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        b, _, t, h, w = v.shape
        q = self.theta(v).flatten(2).transpose(1, 2)  # (B, Nv, d)
        k = self.phi(a).flatten(2)  # (B, d, Na)
        val = self.g(a).flatten(2).transpose(1, 2)  # (B, Na, d)
        attn = torch.softmax(torch.bmm(q, k) * self.scale, dim=-1)  # (B, Nv, Na)
        y = torch.bmm(attn, val).transpose(1, 2).reshape(b, -1, t, h, w)
        return v + self.out(y)


class NLGateNet(TwoStreamBase):
    """Audio gates the visual features through non-local attention.

    After stage k (`model.fusion_stage`, default 3 of 4) every visual position attends over the
    audio map's positions and adds what it reads (`NLGate`); both backbones then finish and their
    pooled features are concatenated into the same fusion head as late concatenation.

    Paper Fig. 1 ("NL gate", 72.0 on Kinetics). What the paper leaves open: the stage, the
    attention form (here: embedded Gaussian, d = visual channels / 2, a residual whose BatchNorm
    starts at zero), and whether audio also reaches the head (here: yes, as in late concat)."""

    def __init__(self, modalities: list[str], num_classes: int, model_cfg: dict, init_seed: int = 0):
        super().__init__(modalities, num_classes, model_cfg, init_seed, "nl-gate")
        ca, cv = channels(self.backbones["audio"], self.stage), channels(self.backbones[self.visual], self.stage)
        self.gate = seeded_build(init_seed, "nl-gate/gate", NLGate, ca, cv)
        self.fused = self.fused_head(init_seed, sum(b.out_dim for b in self.backbones.values()), model_cfg)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, v = self.streams_at_stage(inputs)
        return self.late_concat(a, self.gate(v, a.to(v.dtype)))
