"""InfoReg as a loss policy with a gradient hook: Information Acquisition Regulation (Huang, Wei,
Yang & Hu, "Adaptive Unimodal Regulation for Balanced Multimodal Information Acquisition",
CVPR 2025).

The loss is the fused loss plus every modality's uni-modal loss, L = L_mm + Σ_u L_u. During its
*prime learning window* — while the information its encoder acquires, measured by the trace of
the Fisher information (Σ over its weight tensors of the mean squared gradient, summed over the
epoch's steps), still grows fast — a modality that is ahead is slowed by a proximal term pulling
its encoder towards where the epoch started (θ̃_u):

    tr_u(e) = Σ_steps Σ_{W ∈ encoder u} mean(g_W²),
    k_u(e) = (tr̄_u(e−1) − tr̄_u(e−2)) / tr̄_u(e−1)      (tr̄: the mean over the last `window` epochs;
                                                            k = 1 before two epochs are known)
    in the window:  k_u(e) > τ                             (τ = methods.inforeg_threshold, 0.04)
    s_u = Σ_i softmax(f_u(x_i))[y_i]   (the batch's confidence in the label, modality u's head)
    g(θ_u) ← g(θ_u) + β_u (θ_u − θ̃_u),   β_u = β · exp(tanh(s_u − min_v s_v))   if s_u > min_v s_v and u in its window
                                          β_u = 0                                 otherwise

(the gradient of L + Σ_u β_u/2 ‖θ_u − θ̃_u‖², β = methods.inforeg_beta = 0.95).

Our reading, from the official code (GeWu-Lab/InfoReg_CVPR2025, main.py):
- The official code tests `score_a > score_v` in its first branch and `score_v < score_a` (the same
  condition) in the second, so the visual encoder is never regulated; we regulate whichever
  modality is ahead, with one β for all (the code's second, never-reached branch had 0.1).
- The code decides the window from the audio encoder's trace for both modalities; each encoder
  here has its own window from its own trace. Three modalities: every modality ahead of the
  weakest is regulated, by its own gap to it.
- The code averages the last 10 epochs' traces of an 80-epoch run; `methods.inforeg_window` = 0
  takes max(1, epochs // 8) epochs (10 of 80), so the window scales with the run.
- The trace is taken after the regulation term is added (as in the code), over every weight
  tensor (dim > 1) of the encoder; θ̃_u is every parameter of encoder u at the epoch's start.
"""

from __future__ import annotations

import math

import torch

from ..metrics import true_class_confidence
from .base import SetWeights


def trace_growth(traces: list[float], window: int) -> float:
    """k = (tr̄_now − tr̄_before) / tr̄_now over the last `window` epochs (1 with fewer than two)."""
    if len(traces) < 2:
        return 1.0
    now = traces[-window:]
    before = traces[-window - 1:-1]
    cur, prev = sum(now) / len(now), sum(before) / len(before)
    return (cur - prev) / cur if cur > 0 else 0.0


def regulation_strengths(scores: dict[str, float], in_window: dict[str, bool], beta: float) -> dict[str, float]:
    """β_u for every modality (see the module docstring)."""
    low = min(scores.values())
    return {u: beta * math.exp(math.tanh(s - low)) if s > low and in_window[u] else 0.0 for u, s in scores.items()}


class InfoReg(SetWeights):
    """L_mm + Σ_u L_u; the modality ahead is pulled back towards its epoch start in its window."""

    single_process = True  # the scores come from this process's batch

    def __init__(self, cfg: dict, modalities: list[str]):
        mc = cfg["methods"]
        self.modalities = list(modalities)
        self.beta, self.threshold = mc["inforeg_beta"], mc["inforeg_threshold"]
        self.window = mc["inforeg_window"] or max(1, cfg["train"]["epochs"] // 8)
        self.weights = {m: 1.0 for m in self.modalities} | {"fused": 1.0}
        self.traces: dict[str, list[float]] = {m: [] for m in self.modalities}
        self.anchor: dict[str, list[torch.Tensor]] = {}
        self.growth = {m: 1.0 for m in self.modalities}
        self.in_window = {m: True for m in self.modalities}
        self._sums = self._fresh()

    def _fresh(self) -> dict:
        return {"steps": 0, "trace": {m: 0.0 for m in self.modalities}, "beta": {m: 0.0 for m in self.modalities},
                "regulated": {m: 0 for m in self.modalities}}

    def before_epoch(self, epoch: int, ctx) -> None:
        """θ̃ = the encoders now (after a --resume: the checkpoint, i.e. the same), and the windows."""
        self.anchor = {m: [p.detach().clone() for p in ctx.model.backbones[m].parameters()] for m in self.modalities}
        self.growth = {m: trace_growth(self.traces[m], self.window) for m in self.modalities}
        self.in_window = {m: g > self.threshold for m, g in self.growth.items()}
        self._sums = self._fresh()

    def backward(self, step) -> torch.Tensor:
        step.backward(step.loss)
        scores = {m: float(true_class_confidence(step.out[m], step.y, step.multilabel)) for m in self.modalities}
        betas = regulation_strengths(scores, self.in_window, self.beta)
        s, scale = self._sums, step.grad_scale
        with torch.no_grad():
            for m in self.modalities:
                trace = torch.zeros((), dtype=torch.float64, device=step.y.device)
                for p, a in zip(step.module.backbones[m].parameters(), self.anchor[m]):
                    if p.grad is None:
                        continue
                    if betas[m]:
                        p.grad.add_(p.detach() - a, alpha=betas[m] * scale)
                    if p.dim() > 1:
                        trace += (p.grad.double() / scale).square().mean()
                s["trace"][m] += float(trace)
                s["beta"][m] += betas[m]
                s["regulated"][m] += int(betas[m] > 0)
        s["steps"] += 1
        return step.loss

    def after_epoch(self, epoch: int) -> dict:
        """Closes the epoch's FIM trace (kept for the next windows) and reports the regulation."""
        n = max(1, self._sums["steps"])
        for m in self.modalities:
            self.traces[m].append(self._sums["trace"][m])
        return {"inforeg_trace": {m: round(v, 6) for m, v in self._sums["trace"].items()},
                "inforeg_growth": {m: round(v, 5) for m, v in self.growth.items()},
                "inforeg_in_window": dict(self.in_window),
                "inforeg_regulated_share": {m: round(v / n, 4) for m, v in self._sums["regulated"].items()},
                "inforeg_beta_mean": {m: round(v / n, 5) for m, v in self._sums["beta"].items()}}

    def state_dict(self) -> dict:
        return {"weights": self.weights, "traces": {m: list(v) for m, v in self.traces.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
        self.traces = {m: list(v) for m, v in state["traces"].items()}
