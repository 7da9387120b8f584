"""Mid-level concatenation (paper Sec. 3.2, Fig. 1 "mid concat")."""

from __future__ import annotations

import torch
from torch import nn

from ..models import seeded_build
from .stages import TwoStreamBase, channels, run_stages


class MidConcatNet(TwoStreamBase):
    """Audio and visual features concatenated at an intermediate stage, then one shared trunk.

    After stage k (`model.fusion_stage`, default 3 of 4) the audio map (B, Ca, frames', mels') is
    averaged to a vector, tiled over the visual map's (T', H', W'), concatenated on channels and
    projected back to the visual width by a 1x1x1 convolution + BatchNorm + ReLU; the visual
    backbone's remaining stages are the shared trunk, whose pooled output feeds the same fusion
    head as late concatenation (dropout -> FC -> ReLU -> FC -> ReLU -> classifier).

    Paper Fig. 1 ("mid concat", 72.8 vs late concat 71.4 on Kinetics). What the paper leaves open:
    the stage, how a 2D audio map and a 3D visual map are aligned (here: audio pooled to a vector,
    so no time alignment), the projection, and which trunk continues (here: the visual one; the
    audio backbone's later stages are not built)."""

    def __init__(self, modalities: list[str], num_classes: int, model_cfg: dict, init_seed: int = 0):
        super().__init__(modalities, num_classes, model_cfg, init_seed, "midconcat", audio_stages=model_cfg["fusion_stage"])
        ca, cv = channels(self.backbones["audio"], self.stage), channels(self.backbones[self.visual], self.stage)
        self.merge = seeded_build(init_seed, "midconcat/merge", lambda: nn.Sequential(
            nn.Conv3d(ca + cv, cv, 1, bias=False), nn.BatchNorm3d(cv), nn.ReLU(inplace=True)))
        self.fused = self.fused_head(init_seed, self.backbones[self.visual].out_dim, model_cfg)

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        a, v = self.streams_at_stage(inputs)
        a = a.mean(dim=(2, 3))[:, :, None, None, None].expand(-1, -1, *v.shape[2:])
        trunk = self.backbones[self.visual]
        x = run_stages(trunk, self.merge(torch.cat([v, a.to(v.dtype)], dim=1)), self.stage + 1, 4)
        return {"fused": self.fused(trunk.pool(x).flatten(1))}
