"""The interface between the training core and a loss policy.

The core calls, for every epoch e of a run: `policy.before_epoch(e, ctx)`, then trains the epoch
with `policy.weights_for(e)`; it saves `policy.state_dict()` in every checkpoint and restores it
with `load_state_dict` on --resume. A policy that needs to measure or train models (G-Blend's
Algorithm 1) gets them through the narrow `EstimationContext`, never the trainer itself.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


@runtime_checkable
class LossPolicy(Protocol):
    """How a run weighs its heads' losses."""

    def before_epoch(self, epoch: int, ctx: "EstimationContext") -> None:
        """Called before epoch `epoch` (0-based) is trained; may re-estimate the weights."""

    def weights_for(self, epoch: int) -> dict[str, float]:
        """{head: w_h} for this epoch's loss (heads left out or at 0 are not computed)."""

    def estimation_plan(self) -> dict[int, int]:
        """{epoch: n epochs} of the estimators this policy will train (for progress and its ETA)."""

    def state_dict(self) -> dict:
        """Plain data (saved in checkpoints, loaded with weights_only=True)."""

    def load_state_dict(self, state: dict) -> None: ...


class EstimationContext(Protocol):
    """What a policy may use of the run it weighs."""

    seed: int  # the run's seed
    epochs: int  # the run's length
    device: torch.device
    model_cfg: dict  # the recipe's [model] section (to build estimator networks)
    is_main: bool  # this process writes files and prints

    @property
    def model(self) -> torch.nn.Module:
        """The run's model as it is now (unwrapped; do not modify it)."""

    rank: int  # this process's rank (0 when not distributed)

    def evaluate(self, model: torch.nn.Module, split: str, heads: list[str]) -> dict:
        """A clean eval-mode pass over a named split ('train' = T', 'holdout' = V): {head: {loss, top1}}."""

    def bn_recalibrated(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` with BatchNorm statistics recomputed on T' (for measurements at φ_0)."""

    def train(self, model: torch.nn.Module, first_epoch: int, n_epochs: int, clip_groups=None) -> None:
        """Train `model` (every head at weight 1) for `n_epochs` on T with the run's data order,
        a fresh optimiser and the run's schedule from `first_epoch` on."""

    def record(self, row: dict) -> None:
        """Append one estimation row to the run's blend_weights.jsonl."""
