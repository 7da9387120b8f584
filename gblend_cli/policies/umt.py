"""UMT as a loss policy with a gradient hook: Uni-Modal Teacher (Du, Teng, Wang, Zeng, Xu, Zhang,
Hu & Zhao, "On Uni-Modal Feature Learning in Supervised Multi-Modal Learning", ICML 2023).

Each multi-modal encoder is distilled from the encoder of the finished uni-modal run of its
modality (the teacher, frozen), beside the fused loss:

    L = L_mm + λ Σ_u MSE(φ_u(x_u), φ_u^T(x_u)),      λ = methods.umt_weight (1.0)

φ_u: the multi-modal model's pooled features of modality u; φ_u^T: the teacher's, in eval mode.

Our reading: the teachers are the final checkpoints (last.pt) of the uni-modal runs of the same
recipe and seed (`methods.from_runs`, default RESULTS/unimodal-<m>-s<seed>; refused in one line
when one is missing or ran another recipe). The distillation is on the pooled backbone features
(the layer our late fusion reads), MSE averaged over the feature elements as in BalanceBenchmark.
The student starts from φ_0 (not from the teacher), so UMT learns the teacher's features through
the distillation loss rather than copying them. The uni-modal heads are probes behind a
stop-gradient (`RunKey.probe_heads`): they report each encoder's accuracy without training it.
λ is fixed a priori (not tuned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..models import build_backbone, seeded_build
from .base import SetWeights


class UMT(SetWeights):
    """Fused loss plus feature distillation from each modality's uni-modal run."""

    def __init__(self, cfg: dict, modalities: list[str], sources: dict[str, tuple[str, dict]]):
        """`sources`: {modality: (run name, its last.pt model state)}."""
        self.modalities = list(modalities)
        self.lam = cfg["methods"]["umt_weight"]
        self.sources = {m: name for m, (name, _) in sources.items()}
        self.teachers = torch.nn.ModuleDict()
        for m in self.modalities:
            # built from a forked RNG: the run's own random stream is the same as without teachers
            t = seeded_build(0, f"teacher/{m}", build_backbone, m, cfg["model"])
            state = sources[m][1]
            t.load_state_dict({k[len(f"backbones.{m}."):]: v for k, v in state.items() if k.startswith(f"backbones.{m}.")})
            t.eval().requires_grad_(False)
            self.teachers[m] = t
        self.weights = {m: 1.0 for m in self.modalities} | {"fused": 1.0}
        self._sums = {"steps": 0, "distill": {m: 0.0 for m in self.modalities}}

    def before_epoch(self, epoch: int, ctx) -> None:
        self.teachers.to(ctx.device)
        self._sums = {"steps": 0, "distill": {m: 0.0 for m in self.modalities}}

    def backward(self, step) -> torch.Tensor:
        with torch.no_grad(), step.precision.autocast():
            target = {m: self.teachers[m](step.inputs[m]) for m in self.modalities}
        distill = {m: F.mse_loss(step.features[m].float(), target[m].float()) for m in self.modalities}
        loss = step.loss + self.lam * sum(distill.values())
        step.backward(loss)
        self._sums["steps"] += 1
        for m, d in distill.items():
            self._sums["distill"][m] += float(d.detach())
        return loss.detach()

    def after_epoch(self, epoch: int) -> dict:
        """The epoch's mean distillation loss per modality."""
        n = max(1, self._sums["steps"])
        return {"umt_distill_mse": {m: round(v / n, 6) for m, v in self._sums["distill"].items()}}

    def state_dict(self) -> dict:
        return {"weights": self.weights, "sources": dict(self.sources)}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
