"""OGM-GE as a loss policy with a gradient hook: On-the-fly Gradient Modulation with
Generalisation Enhancement (Peng, Wei, Deng, Wang & Hu, "Balanced Multimodal Learning via
On-the-fly Gradient Modulation", CVPR 2022).

Each step, per modality u, the confidence score over the batch and the discrepancy ratio

    s_u = Σ_i softmax(f_u(x_i))[y_i],        ρ_u = s_u / min_{v≠u} s_v

(two modalities: the paper's ρ_a = s_a / s_v), the modulation coefficient (Eq. 10)

    k_u = 1 − tanh(α · ρ_u)   if ρ_u > 1,   1 otherwise            (methods.ogm_coefficient = "paper")
    k_u = 1 − tanh(α · relu(ρ_u − 1))                              (methods.ogm_coefficient = "shifted")

and the encoder update with generalisation enhancement (GE)

    g̃(θ_u) = k_u · g(θ_u) + h,   h ~ N(0, std(g(θ_u))²)   per weight tensor of encoder u,

where g(θ_u) is the gradient of the fused loss (the only loss that reaches the encoders).

Our reading where the paper leaves something open:
- f_u. OGM-GE splits a linear classifier on concatenated features into per-modality parts. Our
  fused head is an MLP on concatenated features (the paper we reproduce, Fig. 2c), which does not
  split, so f_u is modality u's own linear head trained on its features behind a stop-gradient
  (a probe: `RunKey.probe_heads`): it measures how well the encoder's features classify now
  without adding a uni-modal loss to the encoder, as in OGM-GE only the fused loss trains it.
- Eq. 10 as printed and in the official code jumps from k = 1 to 1 − tanh(α) as ρ crosses 1;
  "shifted" is the continuous variant (our brief's formula). Default: the paper's.
- More than two modalities: each modality is compared with the weakest other one, so every
  modality ahead of the weakest is slowed in proportion to its lead (for two, the paper's rule).
- Modulated parameters: every weight tensor of an encoder (convolutions; dim > 1), as the official
  code modulates the convolution weights; BatchNorm parameters and biases keep their gradient.
  The GE noise is added to every encoder's weights while modulation runs (k = 1 included), with
  the standard deviation of that tensor's unmodulated gradient, as in the official code. It is
  drawn from the global torch RNG (checkpointed each epoch: a resumed CPU run is bit-identical).
- Modulation runs in epochs [0, methods.ogm_end_epoch) (0: the whole run); α = methods.ogm_alpha
  (default 0.1, fixed a priori, not tuned).
"""

from __future__ import annotations

import math

import torch

from ..metrics import true_class_confidence
from .base import SetWeights


def discrepancy_ratios(scores: dict[str, float]) -> dict[str, float]:
    """ρ_u = s_u / min_{v≠u} s_v (inf when the weakest other score is 0 and s_u > 0; 1 when both are 0)."""
    out = {}
    for u, s in scores.items():
        other = min(v for w, v in scores.items() if w != u)
        out[u] = s / other if other > 0 else (math.inf if s > 0 else 1.0)
    return out


def ogm_coefficients(scores: dict[str, float], alpha: float, form: str = "paper") -> dict[str, float]:
    """k_u for every modality from the confidence scores s_u (see the module docstring)."""
    k = {}
    for u, rho in discrepancy_ratios(scores).items():
        if form == "paper":
            k[u] = 1.0 - math.tanh(alpha * rho) if rho > 1 else 1.0
        elif form == "shifted":
            k[u] = 1.0 - math.tanh(alpha * max(rho - 1.0, 0.0))
        else:
            raise ValueError(form)
    return k


class OGMGE(SetWeights):
    """Fused loss on the encoders, modulated per modality; the uni-modal heads are probes."""

    single_process = True  # the ratios come from this process's batch

    def __init__(self, cfg: dict, modalities: list[str]):
        mc = cfg["methods"]
        self.modalities = list(modalities)
        self.alpha, self.form, self.noise = mc["ogm_alpha"], mc["ogm_coefficient"], mc["ogm_noise"]
        self.end = mc["ogm_end_epoch"] or cfg["train"]["epochs"]
        # the fused loss trains encoders and fused head; each probe's loss trains only its probe
        self.weights = {m: 1.0 for m in self.modalities} | {"fused": 1.0}
        self._sums = self._fresh()

    def _fresh(self) -> dict:
        return {"steps": 0, "k": {m: 0.0 for m in self.modalities}, "modulated": {m: 0 for m in self.modalities}}

    def before_epoch(self, epoch: int, ctx) -> None:
        self._sums = self._fresh()

    def backward(self, step) -> torch.Tensor:
        step.backward(step.loss)
        if step.epoch >= self.end:
            return step.loss
        scores = {m: float(true_class_confidence(step.out[m], step.y, step.multilabel)) for m in self.modalities}
        k = ogm_coefficients(scores, self.alpha, self.form)
        with torch.no_grad():
            for m in self.modalities:
                for p in step.module.backbones[m].parameters():
                    if p.grad is None or p.dim() < 2:
                        continue
                    g = p.grad
                    std = float(g.std()) if self.noise else 0.0
                    if k[m] != 1.0:
                        g.mul_(k[m])
                    if self.noise:
                        g.add_(torch.randn_like(g) * (std + 1e-8))
        s = self._sums
        s["steps"] += 1
        for m in self.modalities:
            s["k"][m] += k[m]
            s["modulated"][m] += int(k[m] < 1.0)
        return step.loss

    def after_epoch(self, epoch: int) -> dict:
        """The epoch's mean k_u and the share of steps in which each modality was slowed."""
        n = max(1, self._sums["steps"])
        return {"ogm_k_mean": {m: round(v / n, 5) for m, v in self._sums["k"].items()},
                "ogm_modulated_share": {m: round(v / n, 4) for m, v in self._sums["modulated"].items()}}

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
