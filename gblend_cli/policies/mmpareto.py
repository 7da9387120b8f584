"""MMPareto as a loss policy with a gradient hook (Wei & Hu, "MMPareto: Boosting Multimodal
Learning with Innocent Unimodal Assistance", ICML 2024).

The loss is the fused loss plus every modality's uni-modal loss, L = L_mm + Σ_u L_u. The heads
get their plain gradients; each encoder u gets a combination of the two gradients that reach it,

    g_mm = ∇_{θ_u} L_mm,    g_u = ∇_{θ_u} L_u,

chosen so that it does not conflict with either (Pareto integration):

    α = 1/2                                              if cos(g_mm, g_u) > 0
    α = argmin_{a∈[0,1]} ‖a g_mm + (1−a) g_u‖²
      = clip( (‖g_u‖² − g_mm·g_u) / ‖g_mm − g_u‖², 0, 1 )   otherwise (the min-norm point, MGDA)

    g = 2 (α g_mm + (1 − α) g_u),
    g ← g · ‖g_mm + g_u‖ / ‖g‖   if ‖g_mm + g_u‖ > ‖g‖   (never smaller than the plain sum's step)
    g ← γ · g                                              (γ = methods.mmpareto_gamma, 1.5)

α and the cosine are computed over the whole encoder (every parameter tensor of it flattened);
the magnitude rescaling is per parameter tensor, as in the official code. In the min-norm case
the combined direction has a non-negative inner product with both g_mm and g_u, so neither
objective is made worse to first order.

Our reading: the uni-modal loss L_u is modality u's own linear head on its features (the paper's
uni-modal classifier); for three modalities each encoder has its own pair (L_mm, L_u), since L_v
(v ≠ u) does not reach encoder u. Two backward passes per step (one for L_mm, one for Σ_u L_u,
the second freeing the graph), instead of the official code's k + 2.
"""

from __future__ import annotations

import torch
from .base import SetWeights


def pareto_alpha(g_mm: torch.Tensor, g_u: torch.Tensor) -> tuple[float, float]:
    """(α, cos(g_mm, g_u)) for two flattened gradients (see the module docstring)."""
    mm, uu, mu = float(g_mm.dot(g_mm)), float(g_u.dot(g_u)), float(g_mm.dot(g_u))
    cos = mu / max((mm * uu) ** 0.5, 1e-30)
    if cos > 0:
        return 0.5, cos
    denom = mm + uu - 2 * mu
    if denom <= 0:
        return 0.5, cos
    return min(1.0, max(0.0, (uu - mu) / denom)), cos


def mmpareto_combine(g_mm: list[torch.Tensor], g_u: list[torch.Tensor], gamma: float) -> tuple[list[torch.Tensor], float, float]:
    """An encoder's combined gradient, tensor by tensor, from its multi-modal and uni-modal
    gradients; returns (gradients, α, cosine)."""
    alpha, cos = pareto_alpha(torch.cat([g.flatten() for g in g_mm]).double(),
                              torch.cat([g.flatten() for g in g_u]).double())
    out = []
    for a, b in zip(g_mm, g_u):
        new = 2 * (alpha * a + (1 - alpha) * b)
        base, norm = torch.linalg.vector_norm(a + b), torch.linalg.vector_norm(new)
        if base > norm > 0:  # (exactly opposed gradients: the min-norm point is 0, and stays 0)
            new = new * (base / norm)
        out.append(new * gamma)
    return out, alpha, cos


class MMPareto(SetWeights):
    """L_mm + Σ_u L_u, with each encoder's two gradients combined by the Pareto rule."""

    single_process = True  # the combination is per process; DDP would also need its own reduction

    def __init__(self, cfg: dict, modalities: list[str]):
        self.modalities = list(modalities)
        self.gamma = cfg["methods"]["mmpareto_gamma"]
        self.weights = {m: 1.0 for m in self.modalities} | {"fused": 1.0}
        self._sums = self._fresh()

    def _fresh(self) -> dict:
        return {"steps": 0, "conflict": {m: 0 for m in self.modalities}, "cos": {m: 0.0 for m in self.modalities},
                "alpha": {m: 0.0 for m in self.modalities}}

    def before_epoch(self, epoch: int, ctx) -> None:
        self._sums = self._fresh()

    def backward(self, step) -> torch.Tensor:
        net = step.module
        enc = {m: [p for p in net.backbones[m].parameters() if p.requires_grad] for m in self.modalities}
        enc_params = [p for m in self.modalities for p in enc[m]]
        fused_params = [p for p in net.fused.parameters() if p.requires_grad]
        uni_params = [p for m in self.modalities for p in net.heads[m].parameters() if p.requires_grad]
        l_mm = step.losses["fused"]
        l_uni = sum(step.losses[m] for m in self.modalities)
        scale = step.scaler.scale
        g1 = torch.autograd.grad(scale(l_mm), enc_params + fused_params, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(scale(l_uni), enc_params + uni_params, allow_unused=True)
        n = len(enc_params)
        zero = lambda g, p: torch.zeros_like(p) if g is None else g  # noqa: E731
        g_mm = {p: zero(g, p) for p, g in zip(enc_params, g1[:n])}
        g_u = {p: zero(g, p) for p, g in zip(enc_params, g2[:n])}
        for p, g in zip(fused_params, g1[n:]):
            p.grad = zero(g, p)
        for p, g in zip(uni_params, g2[n:]):
            p.grad = zero(g, p)
        s = self._sums
        s["steps"] += 1
        for m in self.modalities:
            new, alpha, cos = mmpareto_combine([g_mm[p] for p in enc[m]], [g_u[p] for p in enc[m]], self.gamma)
            for p, g in zip(enc[m], new):
                p.grad = g
            s["conflict"][m] += int(cos <= 0)
            s["cos"][m] += cos
            s["alpha"][m] += alpha
        return (l_mm + l_uni).detach()

    def after_epoch(self, epoch: int) -> dict:
        """The epoch's share of steps with conflicting gradients, mean cosine and mean α per encoder."""
        n = max(1, self._sums["steps"])
        return {f"mmpareto_{k}": {m: round(v / n, 5) for m, v in d.items()}
                for k, d in self._sums.items() if k != "steps"}

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])
