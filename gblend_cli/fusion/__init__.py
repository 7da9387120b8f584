"""Naive fusion's attempted fixes as model options (`model.fusion`; paper Sec. 3.2, Fig. 1 and
Table 5): each is one class in its own file, trained like naive late fusion (the fused head's loss
only, `train-naive --fusion NAME`).

- late (default): `models.MultiModalNet`, the paper's late concatenation.
- dropout: late concatenation with a stronger dropout in the fusion head (`dropout.py`).
- midconcat: audio and visual features concatenated after an intermediate stage, then a shared
  trunk (`midconcat.py`).
- se-gate: squeeze-and-excitation gating of the visual channels by audio (`se_gate.py`).
- nl-gate: non-local attention from the visual features to audio (`nl_gate.py`).

The paper's other fixes need no model option: pre-training is `train.init_from` (the uni-modal
runs' weights), early stopping is a naive run's best-by-V checkpoint (`early_stop.json`).
"""

from __future__ import annotations

from torch import nn

from ..models import MultiModalNet

FUSIONS = ("late", "dropout", "midconcat", "se-gate", "nl-gate")
MID_FUSIONS = ("midconcat", "se-gate", "nl-gate")  # audio meets one visual modality inside the backbones


def build_model(modalities: list[str], heads: list[str], num_classes: int, model_cfg: dict,
                init_seed: int = 0, probe_heads=(), head_fusion: str = "mlp") -> nn.Module:
    """The network of a run: `MultiModalNet` unless a naive run (heads == ["fused"]) asks for
    another `model.fusion`. Every variant builds its backbones and fused head from the same
    (seed, name) initialisations as naive late fusion (`models.seeded_build`). `probe_heads` and
    `head_fusion` (the methods' stop-gradient probes and UME's mean of logits, RunKey.probe_heads
    and RunKey.fusion) go to `MultiModalNet` (its `fusion`)."""
    fusion = model_cfg.get("fusion", "late")
    if fusion == "late" or list(heads) != ["fused"]:
        return MultiModalNet(modalities, heads, num_classes, model_cfg, init_seed=init_seed, probe_heads=probe_heads,
                             fusion=head_fusion)
    if fusion == "dropout":
        from .dropout import DropoutFusionNet as cls
    elif fusion == "midconcat":
        from .midconcat import MidConcatNet as cls
    elif fusion == "se-gate":
        from .se_gate import SEGateNet as cls
    elif fusion == "nl-gate":
        from .nl_gate import NLGateNet as cls
    else:  # pragma: no cover - config.validate refuses other names
        raise ValueError(f"unknown model.fusion {fusion!r}")
    return cls(modalities, num_classes, model_cfg, init_seed)
