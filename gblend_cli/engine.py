"""The loop: one training epoch and one evaluation pass, with everything they use as arguments
(as in torchvision's reference `train_one_epoch`), so the trainer, G-Blend's estimators and the
benchmarks all call the same two functions. Plus the optimiser and the learning-rate schedule.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from . import distributed as dist_utils
from .metrics import ClipAccumulator, head_loss


@dataclass
class Precision:
    """Where and in what precision a run computes: the device, the autocast dtype (bf16/fp16 on
    CUDA, none on CPU) and the gradient scaler (fp16 only)."""

    device: torch.device
    amp_dtype: torch.dtype | None = None

    @classmethod
    def for_device(cls, device: torch.device, amp: str) -> "Precision":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get("bf16" if amp == "auto" else amp) \
            if device.type == "cuda" else None
        return cls(device, dtype)

    @property
    def name(self) -> str:
        """What the run computes in: "bf16", "fp16" or "none" (float32), as checkpoints record it."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "none")

    def autocast(self):
        return torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None)

    def new_scaler(self) -> torch.amp.GradScaler:
        """A GradScaler of its own for each optimiser (its scale adapts to that optimiser's steps)."""
        return torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    def load_scaler_state(self, scaler: torch.amp.GradScaler, saved: dict | None) -> None:
        """A checkpoint's GradScaler state into `scaler`, only when the checkpoint holds one and the
        scaler is enabled (fp16): a disabled scaler saves {} and loads nothing (torch refuses an
        empty state into an enabled one). A change of precision itself is refused before this
        (`Trainer.check_precision`)."""
        if saved and scaler.is_enabled():
            scaler.load_state_dict(saved)

    def to_device(self, batch: dict, modalities) -> tuple[dict, torch.Tensor]:
        inputs = {m: batch[m].to(self.device, non_blocking=True) for m in modalities}
        return inputs, batch["label"].to(self.device, non_blocking=True)


# --- optimisation -------------------------------------------------------------------------------
def make_optimizer(params, tcfg: dict) -> torch.optim.Optimizer:
    """SGD with momentum (default; the paper's), Adam or AdaGrad (the paper's Table 3)."""
    params = [p for p in params if p.requires_grad]
    if tcfg["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=tcfg["lr"], momentum=tcfg["momentum"], weight_decay=tcfg["weight_decay"])
    if tcfg["optimizer"] == "adam":
        return torch.optim.Adam(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])
    return torch.optim.Adagrad(params, lr=tcfg["lr"], weight_decay=tcfg["weight_decay"])


def lr_factor(step: int, steps_per_epoch: int, tcfg: dict) -> float:
    """Per-iteration LR multiplier: linear warm-up, then cosine to 0 / step decay / constant."""
    total = tcfg["epochs"] * steps_per_epoch
    warm = tcfg["warmup_epochs"] * steps_per_epoch
    if warm > 0 and step < warm:
        return (step + 1) / warm
    if tcfg["schedule"] == "cosine":
        progress_ = (step - warm) / max(1.0, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress_)))
    if tcfg["schedule"] == "step":
        epoch = step / steps_per_epoch
        return tcfg["gamma"] ** sum(epoch >= m for m in tcfg["milestones"])
    return 1.0


def make_scheduler(optimizer, steps_per_epoch: int, tcfg: dict, offset_epochs: int = 0):
    """The run's schedule; `offset_epochs` starts it later (G-Blend estimators replay the segment
    of the main schedule they stand in for)."""
    offset = offset_epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s + offset, steps_per_epoch, tcfg))


def rng_seed(seed: int, epoch: int, rank: int = 0) -> int:
    """The global RNG's seed (dropout) when training starts at `epoch`: a run starts from
    rng_seed(seed, 0), and Algorithm 1's estimators from rng_seed(seed, N) at checkpoint N, so the
    offline estimators draw exactly what the uni-modal and naive runs of the same seed draw."""
    return seed * 1000 + epoch + 1 + 7919 * rank


# --- the loop -----------------------------------------------------------------------------------
class NonFiniteLoss(Exception):
    """The epoch's mean training loss is NaN or Inf."""

    def __init__(self, value: float):
        super().__init__(value)
        self.value = value


@dataclass
class TrainStep:
    """One training step as a loss policy's `backward` hook sees it (policies/base.py): the forward
    pass is done, the gradients are zeroed, and the hook must fill `.grad` (the optimiser step,
    gradient clipping and the schedule follow in the loop). `loss` is sum_h w_h loss_h over the heads
    with w_h > 0 (`losses`); `features` the pooled backbone features of this forward."""

    model: torch.nn.Module  # as called (DDP-wrapped in a distributed run)
    module: torch.nn.Module  # the MultiModalNet itself
    inputs: dict[str, torch.Tensor]
    y: torch.Tensor
    out: dict[str, torch.Tensor]
    features: dict[str, torch.Tensor]
    losses: dict[str, torch.Tensor]
    loss: torch.Tensor
    scaler: torch.amp.GradScaler
    precision: Precision
    epoch: int
    step: int
    multilabel: bool

    def backward(self, loss: torch.Tensor, **kw) -> None:
        """loss.backward() through the run's gradient scaler (fp16 on CUDA; identity elsewhere)."""
        self.scaler.scale(loss).backward(**kw)

    @property
    def grad_scale(self) -> float:
        """The factor the scaler multiplies gradients by (1 unless fp16): a term a hook adds to
        `.grad` directly must be multiplied by it."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0


def train_one_epoch(model, loader, optimizer, scheduler, weights: dict[str, float], *, epoch: int,
                    precision: Precision, scaler, modalities, multilabel: bool, grad_clip: float = 0.0,
                    clip_groups=None, on_step=None, backward=None) -> dict[str, float]:
    """One pass over `loader`: minimise L = sum_h w_h * loss_h (heads with w_h = 0 are left out).

    `backward` (a loss policy's hook, policies/base.py): called with a `TrainStep` instead of
    `L.backward()`; it fills the gradients (it may combine or modulate per-encoder gradients) and
    returns the loss it minimised (for the running mean). Without it the step is exactly
    `scaler.scale(L).backward()`.

    `on_step(step, clips_seen, running_loss_sum)` is called after each step (progress display);
    on CUDA the running loss stays on the device and is read only every 50 steps. Returns the
    mean per-head training losses (running, in train mode: for display only; OGR uses clean eval
    passes) and `clips_per_s`. Raises NonFiniteLoss when the mean loss is NaN/Inf."""
    model.train()
    for part in (loader.dataset, loader.sampler):  # data order and augmentation depend on (seed, epoch)
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)
    heads = [h for h, w in weights.items() if w > 0]
    device = precision.device
    w_vec = torch.tensor([weights[h] for h in heads], device=device)
    sums = torch.zeros(len(heads) + 1, device=device)
    world = dist_utils.world_size()
    n = 0
    t0 = time.perf_counter()
    for step, batch in enumerate(loader):
        inputs, y = precision.to_device(batch, modalities)
        with precision.autocast():
            out = model(inputs) if backward is None else model(inputs, return_features=True)
        if backward is not None:
            out, feats = out
        losses = torch.stack([head_loss(out[h], y, multilabel) for h in heads])
        loss = (losses * w_vec).sum()
        optimizer.zero_grad(set_to_none=True)
        if backward is None:
            scaler.scale(loss).backward()
        else:
            loss = backward(TrainStep(model, dist_utils.unwrap(model), inputs, y, out, feats,
                                      {h: losses[i] for i, h in enumerate(heads)}, loss, scaler, precision, epoch,
                                      step, multilabel))
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            for group in (clip_groups or [list(model.parameters())]):
                torch.nn.utils.clip_grad_norm_(group, grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        sums += torch.cat([losses.detach(), loss.detach()[None]]) * len(y)
        n += len(y)
        if on_step is not None and (device.type == "cpu" or step % 50 == 0):
            on_step(step, n * world, float(sums[-1]) / n)
    means = (dist_utils.all_reduce_sum(sums) / (n * world)).tolist()
    if not all(math.isfinite(x) for x in means):
        raise NonFiniteLoss(means[-1])
    return {h: means[i] for i, h in enumerate(heads)} | {"total": means[-1],
                                                        "clips_per_s": n * world / (time.perf_counter() - t0)}


@torch.no_grad()
def evaluate(model, loader, heads: list[str], *, precision: Precision, modalities, num_classes: int,
             multilabel: bool, video_level: bool = False, on_batch=None, on_features=None) -> dict:
    """A clean pass in eval mode over `loader` (a ClipDataset's): per head, the mean per-clip loss and
    clip top-1 (%); with `video_level`, video top-1/top-5 from the clip probabilities averaged per
    video (and mAP/mAUC for multi-label data). See gblend_cli/metrics.py. The model's train/eval
    mode is restored afterwards. `on_features(features, batch, y, video)` sees each batch's pooled
    backbone features (the diagnostics, gblend_cli/diagnostics.py); the heads' numbers are the same
    with or without it."""
    was_training = model.training
    model.eval()
    acc = ClipAccumulator(heads, len(loader.dataset.videos), num_classes, multilabel, precision.device)
    for batch in loader:
        inputs, y = precision.to_device(batch, modalities)
        v = batch["video"].to(precision.device)
        with precision.autocast():
            if on_features is None:
                out = model(inputs)
            else:
                out, feats = model(inputs, return_features=True)
                on_features(feats, batch, y, v)
        if video_level:
            acc.add(out, y, v, batch["label"], batch["video"].tolist())
        else:
            acc.add(out, y, v)
        if on_batch is not None:
            on_batch(len(y))
    model.train(was_training)
    return acc.result(video_level)


@torch.no_grad()
def recalibrated_bn(model: torch.nn.Module, loader, *, precision: Precision, modalities) -> torch.nn.Module:
    """A copy of `model` whose BatchNorm running statistics are recomputed (cumulative average) from
    one pass over `loader`, every other layer in eval mode (dropout draws nothing).

    Why: at φ_0 the running statistics are the initial mean 0 / variance 1, far from the data's
    (raw log-mel values are about -10 to 0), so an eval-mode pass at φ_0 measures a distorted
    network (audio L^V_0 ≈ 2.27 instead of ln 8 = 2.08). The copy leaves the trained model as it is.
    In a distributed run each rank passes over its own share of `loader`; the statistics are then
    averaged over every rank's batches, so all ranks hold the same calibrated model."""
    import copy

    bns = (torch.nn.modules.batchnorm._BatchNorm,)
    calibrated = copy.deepcopy(model)
    calibrated.eval()
    for m in calibrated.modules():
        if isinstance(m, bns):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the pass
            m.train()
    for batch in loader:
        inputs, _ = precision.to_device(batch, modalities)
        with precision.autocast():
            calibrated(inputs)
    if dist_utils.world_size() > 1:  # each rank saw its share of the loader: the average over all batches
        for m in calibrated.modules():
            if isinstance(m, bns) and m.track_running_stats:
                n = m.num_batches_tracked.to(m.running_mean.dtype)
                total = dist_utils.all_reduce_sum(n.clone())
                for stat in (m.running_mean, m.running_var):
                    stat.copy_(dist_utils.all_reduce_sum(stat * n) / total.clamp(min=1))
                m.num_batches_tracked.copy_(total.long())
    calibrated.eval()
    return calibrated
