"""Running the backbones of `gblend_cli/models.py` stage by stage, for the fusions that join audio
and a visual modality inside the backbones (midconcat, se-gate, nl-gate)."""

from __future__ import annotations

import torch
from torch import nn

from ..errors import UserError
from ..models import FusionHead, build_backbone, seeded_build


def audio_and_visual(modalities: list[str], fusion: str) -> str:
    """The visual modality of an audio + one visual modality combination (the only kind a
    mid-level fusion takes); a one-line error otherwise."""
    visual = [m for m in modalities if m != "audio"]
    if "audio" not in modalities or len(visual) != 1:
        raise UserError(f"model.fusion = {fusion} joins audio and one visual modality; got {','.join(modalities)} "
                        f"(use --modalities audio,rgb or audio,flow)")
    return visual[0]


def channels(backbone: nn.Module, stage: int) -> int:
    """Output channels of backbone stage `stage` (1-based): its last BatchNorm's width."""
    bns = [m for m in backbone.layers[stage - 1].modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return bns[-1].num_features


def visual_stem(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    x = backbone.normalise(x)
    if backbone.channels_last:
        x = x.contiguous(memory_format=torch.channels_last_3d)
    return backbone.stem(x)


def audio_stem(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return backbone.stem(backbone.input_norm(x.float().unsqueeze(1)))


def run_stages(backbone: nn.Module, x: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Stages first..last (1-based, inclusive)."""
    for layer in backbone.layers[first - 1:last]:
        x = layer(x)
    return x


class TwoStreamBase(nn.Module):
    """An audio and a visual backbone initialised as naive fusion's (same (seed, name)), the
    fusion stage k, and the fused head; subclasses add what joins the streams after stage k."""

    def __init__(self, modalities: list[str], num_classes: int, model_cfg: dict, init_seed: int, fusion: str,
                 audio_stages: int = 4):
        super().__init__()
        self.visual = audio_and_visual(modalities, fusion)
        self.modalities, self.head_names, self.num_classes = ["audio", self.visual], ["fused"], num_classes
        self.stage = model_cfg["fusion_stage"]
        self.backbones = nn.ModuleDict({m: seeded_build(init_seed, f"backbone/{m}", build_backbone, m, model_cfg)
                                        for m in self.modalities})
        if audio_stages < 4:  # the audio pathway ends at the fusion point
            self.backbones["audio"].layers = self.backbones["audio"].layers[:audio_stages]
        self.heads = nn.ModuleDict()  # no uni-modal heads: these are naive-fusion networks

    def fused_head(self, init_seed: int, in_dim: int, model_cfg: dict) -> FusionHead:
        return seeded_build(init_seed, "fused", FusionHead, in_dim, self.num_classes, model_cfg["fusion_dropout"])

    def streams_at_stage(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """(audio, visual) feature maps after stage k."""
        a, v = self.backbones["audio"], self.backbones[self.visual]
        return (run_stages(a, audio_stem(a, inputs["audio"]), 1, self.stage),
                run_stages(v, visual_stem(v, inputs[self.visual]), 1, self.stage))

    def late_concat(self, a: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        """Both streams through their remaining stages, pooled, concatenated, the fused head."""
        ab, vb = self.backbones["audio"], self.backbones[self.visual]
        a = ab.pool(run_stages(ab, a, self.stage + 1, 4)).flatten(1)
        v = vb.pool(run_stages(vb, v, self.stage + 1, 4)).flatten(1)
        return {"fused": self.fused(torch.cat([a, v], dim=1))}
