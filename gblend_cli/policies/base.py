"""The interface between the training core and a loss policy.

The core calls, for every epoch e of a run: `policy.before_epoch(e, ctx)`, then trains the epoch
with `policy.weights_for(e)`; it saves `policy.state_dict()` in every checkpoint and restores it
with `load_state_dict` on --resume. A policy that needs to measure or train models (G-Blend's
Algorithm 1) gets them through the narrow `EstimationContext`, never the trainer itself.

Optional members (a policy without them trains exactly as before; the core looks them up with
`getattr`, so FixedWeights and GradientBlending define none of them):

- ``backward(step: engine.TrainStep) -> Tensor`` — the gradient-level seam. Called every step in
  place of ``scaler.scale(L).backward()``, after the forward pass (``step.out`` logits,
  ``step.features`` each backbone's pooled features, ``step.losses`` per head, ``step.loss`` =
  sum_h w_h loss_h) and ``optimizer.zero_grad()``. It must leave the gradients to apply in
  ``.grad`` (it may run several backward passes, combine per-encoder gradients, scale them or add
  to them; ``step.backward(L)`` goes through the gradient scaler, and a term added to ``.grad``
  directly is multiplied by ``step.grad_scale``) and return the loss it minimised (a scalar
  tensor, for the running mean). Gradient clipping, the optimiser step and the schedule follow as
  for every run. Randomness must come from the global torch RNG (checkpointed each epoch) so that
  a resumed CPU run is bit-identical.
- ``after_epoch(epoch) -> dict | None`` — called after epoch `epoch` is trained, before its
  checkpoint: close the epoch's statistics; a dict returned is logged in that epoch's
  metrics.jsonl row under "policy".
- ``init_model(model) -> None`` — called once when a run starts from scratch (not on --resume),
  before the epoch-0 measurement: e.g. load weights from finished runs (UME).
- ``trains: bool`` — False for a method that trains nothing (UME: an ensemble of finished runs);
  the run then only measures and evaluates.
- ``single_process: bool`` — True when the method's per-batch statistics are not all-reduced
  across processes (its replicas would drift apart under torchrun): the core refuses world > 1.

The protocol every policy works under (README, "One protocol for every method"): a policy sees
the training data T, the fixed subset T' of T and the held-out V, never the evaluation split —
`EstimationContext.evaluate` (train.RunContext) raises `errors.ProtocolError` for any other split — and runs read from
other runs (`RunFolder.check_same_setup`) are their final checkpoints and T'/V logs, never a
choice made on the evaluation split.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch


class SetWeights:
    """The part of LossPolicy shared by every policy whose head weights are set for the whole run
    (`self.weights`) and that trains no estimators: FixedWeights and G-Blend's successors."""

    weights: dict[str, float]

    def weights_for(self, epoch: int) -> dict[str, float]:
        return self.weights

    def estimation_plan(self) -> dict[int, int]:
        return {}


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
        """A clean eval-mode pass over T' ('train') or V ('holdout'): {head: {loss, top1}}. Any
        other split raises errors.ProtocolError."""

    def bn_recalibrated(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` with BatchNorm statistics recomputed on T' (for measurements at φ_0)."""

    def train(self, model: torch.nn.Module, first_epoch: int, n_epochs: int, clip_groups=None) -> None:
        """Train `model` (every head at weight 1) for `n_epochs` on T with the run's data order,
        a fresh optimiser and the run's schedule from `first_epoch` on."""

    def record(self, row: dict) -> None:
        """Append one estimation row to the run's blend_weights.jsonl."""
