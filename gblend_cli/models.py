"""Backbones and the multi-head audio-visual network (paper Sec. 3, Fig. 2c).

- Visual (RGB: 3 channels, flow: 2): video ResNets built from torchvision's blocks — R(2+1)D-18,
  R(2+1)D-34 (layers [3,4,6,3]), R3D-18, R3D-50 — or a slim variant with configurable widths.
- Audio: a 2D ResNet on the log-mel "image" (1 x frames x 40 mels), configurable depth/width.
- MultiModalNet: one backbone per modality, one linear head per modality, and the fused head on
  the concatenated pooled features: dropout -> FC(dim/2) -> ReLU -> FC(dim/2) -> ReLU -> classifier.
  One forward returns every requested head's logits: naive training uses only "fused", uni-modal
  training only its own head, G-Blend a weighted sum over all (L_blend = sum_i w_i L_i).
"""

from __future__ import annotations

import contextlib
import zlib

import torch
from torch import nn
from torchvision.models import resnet as resnet2d
from torchvision.models.video import resnet as vres

RGB_MEAN = (0.43216, 0.394666, 0.37645)  # Kinetics statistics (torchvision video models)
RGB_STD = (0.22803, 0.22145, 0.216989)

VISUAL_ARCHS = {  # name: (block, conv builder, layers, widths, stem kind)
    "r2plus1d_18": (vres.BasicBlock, vres.Conv2Plus1D, [2, 2, 2, 2], [64, 128, 256, 512], "2plus1d"),
    "r2plus1d_34": (vres.BasicBlock, vres.Conv2Plus1D, [3, 4, 6, 3], [64, 128, 256, 512], "2plus1d"),
    "r3d_18": (vres.BasicBlock, vres.Conv3DSimple, [2, 2, 2, 2], [64, 128, 256, 512], "3d"),
    "r3d_50": (vres.Bottleneck, vres.Conv3DSimple, [3, 4, 6, 3], [64, 128, 256, 512], "3d"),
    "slim_r2plus1d": (vres.BasicBlock, vres.Conv2Plus1D, None, None, "2plus1d"),
    "slim_r3d": (vres.BasicBlock, vres.Conv3DSimple, None, None, "3d"),
}
AUDIO_ARCHS = {
    "resnet18": (resnet2d.BasicBlock, [2, 2, 2, 2], [64, 128, 256, 512]),
    "resnet34": (resnet2d.BasicBlock, [3, 4, 6, 3], [64, 128, 256, 512]),
    "resnet50": (resnet2d.Bottleneck, [3, 4, 6, 3], [64, 128, 256, 512]),
    "slim_resnet2d": (resnet2d.BasicBlock, None, None),
}


class VideoBackbone(nn.Module):
    """torchvision's VideoResNet with configurable input channels and widths, no classifier.

    Input: uint8 (B, T, H, W, C) as stored; normalised here so loaders move uint8 to the GPU."""

    def __init__(self, modality: str, arch: str, widths=None, layers=None):
        super().__init__()
        if arch not in VISUAL_ARCHS:
            raise ValueError(f"unknown visual backbone {arch!r}; known: {', '.join(VISUAL_ARCHS)}")
        block, conv, std_layers, std_widths, stem_kind = VISUAL_ARCHS[arch]
        layers, widths = list(std_layers or layers), list(std_widths or widths)
        self.modality = modality
        self.channels_last = False  # set by the trainer on CUDA
        in_ch = 3 if modality == "rgb" else 2
        w0 = widths[0]
        if stem_kind == "2plus1d":  # R2Plus1dStem: (1,7,7) spatial then (3,1,1) temporal; 45 mid at width 64
            mid = max(1, round(45 * w0 / 64))
            self.stem = nn.Sequential(
                nn.Conv3d(in_ch, mid, (1, 7, 7), (1, 2, 2), (0, 3, 3), bias=False), nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
                nn.Conv3d(mid, w0, (3, 1, 1), 1, (1, 0, 0), bias=False), nn.BatchNorm3d(w0), nn.ReLU(inplace=True))
        else:  # BasicStem
            self.stem = nn.Sequential(nn.Conv3d(in_ch, w0, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                                      nn.BatchNorm3d(w0), nn.ReLU(inplace=True))
        self.inplanes = w0
        self.layers = nn.Sequential(*[self._make_layer(block, conv, w, n, 1 if i == 0 else 2)
                                      for i, (w, n) in enumerate(zip(widths, layers))])
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.out_dim = widths[-1] * block.expansion
        if modality == "rgb":
            self.register_buffer("mean", torch.tensor(RGB_MEAN).view(1, 3, 1, 1, 1) * 255, persistent=False)
            self.register_buffer("std", torch.tensor(RGB_STD).view(1, 3, 1, 1, 1) * 255, persistent=False)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block, conv, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv3d(self.inplanes, planes * block.expansion, 1, conv.get_downsample_stride(stride), bias=False),
                nn.BatchNorm3d(planes * block.expansion))
        layers = [block(self.inplanes, planes, conv, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, conv) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 4, 1, 2, 3).float()  # (B, C, T, H, W)
        if self.modality == "rgb":
            return (x - self.mean) / self.std
        return x / 127.5 - 1.0  # flow: uint8 -> px / prepare.flow_bound

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalise(x)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)
        return self.pool(self.layers(self.stem(x))).flatten(1)


class AudioBackbone(nn.Module):
    """2D ResNet over the log-mel spectrogram (B, frames, 40) -> pooled features.

    Input normalisation is a non-affine BatchNorm on the single input channel."""

    def __init__(self, arch: str, widths=None, layers=None):
        super().__init__()
        if arch not in AUDIO_ARCHS:
            raise ValueError(f"unknown audio backbone {arch!r}; known: {', '.join(AUDIO_ARCHS)}")
        block, std_layers, std_widths = AUDIO_ARCHS[arch]
        layers, widths = list(std_layers or layers), list(std_widths or widths)
        self.input_norm = nn.BatchNorm2d(1, affine=False)
        w0 = widths[0]
        self.stem = nn.Sequential(nn.Conv2d(1, w0, 3, 2, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))  # ResNet stem: 100x40 -> 25x10
        self.inplanes = w0
        self.layers = nn.Sequential(*[self._make_layer(block, w, n, 1 if i == 0 else 2)
                                      for i, (w, n) in enumerate(zip(widths, layers))])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.out_dim = widths[-1] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_norm(x.float().unsqueeze(1))  # (B, 1, frames, mels)
        return self.pool(self.layers(self.stem(x))).flatten(1)


def build_backbone(modality: str, model_cfg: dict) -> nn.Module:
    if modality == "audio":
        return AudioBackbone(model_cfg["audio"], model_cfg["audio_widths"], model_cfg["audio_layers"])
    return VideoBackbone(modality, model_cfg["visual"], model_cfg["visual_widths"], model_cfg["visual_layers"])


class FusionHead(nn.Module):
    """Late fusion on concatenated features (the paper's code): dropout -> FC(d/2) -> ReLU ->
    FC(d/2) -> ReLU -> classifier."""

    def __init__(self, in_dim: int, num_classes: int, dropout: float):
        super().__init__()
        hidden = max(1, in_dim // 2)
        self.net = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden), nn.ReLU(inplace=True),
                                 nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@contextlib.contextmanager
def seeded(seed: int, name: str):
    """Draw from a generator of its own, seeded by (seed, name); the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(zlib.crc32(f"{seed}/{name}".encode()))
        yield


def seeded_build(seed: int, name: str, build, *args):
    """`build(*args)` initialised from (seed, name): a module starts from the same weights in every
    model that has it, so the backbone and head of a uni-modal run, of a naive run and of a G-Blend
    run with the same seed are equal at φ_0 (and Algorithm 2's estimators are those very runs)."""
    with seeded(seed, name):
        return build(*args)


class MultiModalNet(nn.Module):
    """Backbones for `modalities`; a linear head per modality in `heads`, plus "fused" if asked.
    Each backbone and head is initialised from (init_seed, its name) (see `seeded_build`).

    forward(inputs) -> {head: logits}; only the backbones the requested heads need are run.
    forward(inputs, return_features=True) -> ({head: logits}, {modality: pooled features}).

    `probe_heads`: uni-modal heads that read their backbone's features through a stop-gradient
    (linear probes trained beside a method that does not want uni-modal losses on its encoders).
    `fusion`: "mlp" (the paper's fused head on the concatenated features) or "mean" (the mean of
    the uni-modal heads' logits: an ensemble, UME). `fuse(features)` is the fused head alone, so a
    modality's features can be replaced (the Shapley diagnostics, gblend_cli/diagnostics.py)."""

    FUSIONS = ("mlp", "mean")

    def __init__(self, modalities: list[str], heads: list[str], num_classes: int, model_cfg: dict, init_seed: int = 0,
                 probe_heads=(), fusion: str = "mlp"):
        super().__init__()
        self.modalities, self.head_names, self.num_classes = list(modalities), list(heads), num_classes
        self.probe_heads, self.fusion = frozenset(probe_heads), fusion
        for h in heads:
            if h != "fused" and h not in modalities:
                raise ValueError(f"head {h!r} needs modality {h!r}")
        if fusion not in self.FUSIONS or (fusion == "mean" and not set(modalities) <= set(heads)):
            raise ValueError(f"fusion {fusion!r} with heads {heads}")
        self.backbones = nn.ModuleDict({m: seeded_build(init_seed, f"backbone/{m}", build_backbone, m, model_cfg)
                                        for m in modalities})
        self.heads = nn.ModuleDict({h: seeded_build(init_seed, f"head/{h}", nn.Linear, self.backbones[h].out_dim,
                                                    num_classes) for h in heads if h != "fused"})
        if "fused" in heads and fusion == "mlp":
            self.fused = seeded_build(init_seed, "fused", FusionHead, sum(b.out_dim for b in self.backbones.values()),
                                      num_classes, model_cfg["fusion_dropout"])

    def features(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{modality: pooled backbone features} for the backbones the heads need."""
        need = self.modalities if "fused" in self.head_names else [h for h in self.head_names]
        return {m: self.backbones[m](inputs[m]) for m in need}

    def fuse(self, feats: dict[str, torch.Tensor]) -> torch.Tensor:
        """The fused head's logits from every modality's features."""
        if self.fusion == "mean":
            return torch.stack([self.heads[m](feats[m]) for m in self.modalities]).mean(0)
        return self.fused(torch.cat([feats[m] for m in self.modalities], dim=1))

    def forward(self, inputs: dict[str, torch.Tensor], return_features: bool = False):
        feats = self.features(inputs)
        out = {h: self.heads[h](feats[h].detach() if h in self.probe_heads else feats[h]) for h in self.heads}
        if "fused" in self.head_names:
            out["fused"] = self.fuse(feats)
        return (out, feats) if return_features else out


class EstimatorEnsemble(nn.Module):
    """Algorithm 1's k+1 estimators trained in one pass over the data: for each modality a
    uni-modal network (its backbone + its own head, copied from the checkpoint) and the naive
    fused network (all backbones + fused head). Their parameters are disjoint, so training the sum
    of their losses with per-parameter optimisers is exactly k+1 separate trainings on the same
    batches, at the cost of one data pass.

    One optimiser and one GradScaler serve all k+1 (RunContext.train: a scaler of their own, apart
    from the run's, but shared among them). With fp16 (train.amp = fp16 on CUDA) the scaler acts:
    an Inf/NaN gradient in any estimator skips that step for every estimator, and the loss scale
    adapts to all of them together, so there the trainings are not exactly separate ones. With bf16
    and float32 the scaler is disabled (an identity) and they are."""

    def __init__(self, model: MultiModalNet, model_cfg: dict):
        super().__init__()
        self.head_names = [m for m in model.modalities] + ["fused"]
        self.estimators = nn.ModuleDict()
        for m in model.modalities:
            est = MultiModalNet([m], [m], model.num_classes, model_cfg)
            est.backbones[m].load_state_dict(model.backbones[m].state_dict())
            if m in model.heads:
                est.heads[m].load_state_dict(model.heads[m].state_dict())
            self.estimators[m] = est
        fused = MultiModalNet(model.modalities, ["fused"], model.num_classes, model_cfg)
        fused.backbones.load_state_dict(model.backbones.state_dict())
        if hasattr(model, "fused"):
            fused.fused.load_state_dict(model.fused.state_dict())
        self.estimators["fused"] = fused

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {h: self.estimators[h](inputs)[h] for h in self.head_names}

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """Gradient clipping is per estimator (a global norm would couple them)."""
        return [list(e.parameters()) for e in self.estimators.values()]


def set_channels_last(model: nn.Module) -> None:
    """channels_last(_3d) weights and activations for the convolutional backbones (CUDA)."""
    for m in model.modules():
        if isinstance(m, VideoBackbone):
            m.to(memory_format=torch.channels_last_3d)
            m.channels_last = True
        elif isinstance(m, AudioBackbone):
            m.to(memory_format=torch.channels_last)


def load_backbones(model: MultiModalNet, states: list[tuple[str, dict]]) -> None:
    """The paper's "pre-training" baseline: initialise `model`'s backbones (and matching heads)
    from uni-modal runs' model states, given as (where, state_dict) pairs."""
    from .errors import UserError

    for where, state in states:
        loaded = False
        for m in model.modalities:
            sub = {k[len(f"backbones.{m}."):]: v for k, v in state.items() if k.startswith(f"backbones.{m}.")}
            if sub:
                model.backbones[m].load_state_dict(sub)
                loaded = True
            head = {k[len(f"heads.{m}."):]: v for k, v in state.items() if k.startswith(f"heads.{m}.")}
            if head and m in model.heads:
                model.heads[m].load_state_dict(head)
        if not loaded:
            raise UserError(f"{where}: has no backbone for {', '.join(model.modalities)}")
