"""The training core: one loop for every train command.

A run trains `MultiModalNet` with the loss L = sum_k w_k CE_k over the heads it has; a *policy*
supplies the weights: uni-modal = {m: 1}, naive = {fused: 1}, G-Blend = estimated weights
(gblend_cli/blend.py), auxiliary loss = equal weights. The same `run_epoch` and `evaluate` also
train and measure G-Blend's estimators, so Algorithm 1 never needs a second loop.

Outputs (rank 0 only, every write atomic): config.toml, env.json, metrics.jsonl, summary.csv,
final.json, checkpoints/last.pt and best.pt ({model, optimizer, lr_scheduler, scaler, epoch,
config, rng, policy}); `--resume` continues from last.pt and reproduces an uninterrupted CPU run.
"""

from __future__ import annotations

import math
import platform
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import FORMAT_VERSION, __version__
from . import distributed as dist_utils
from .config import to_toml
from .data import ClipDataset, PreparedDataset, eval_items, make_loader, split_holdout, subset
from .errors import UserError
from .models import MultiModalNet
from .storage import (append_jsonl, read_jsonl, require_known_format, rewrite_jsonl_atomic, torch_save_atomic,
                      write_json_atomic, write_text_atomic)
from .ui import console, progress


class TrainingDiverged(UserError):
    exit_code = 3


@dataclass
class RunSpec:
    """What a run trains: its modalities, the heads its model has, the head it is judged by."""

    method: str  # unimodal | naive | gblend
    modalities: list[str]
    heads: list[str]
    eval_head: str
    extra: dict = field(default_factory=dict)


class FixedWeights:
    """Loss weights that never change (uni-modal, naive, auxiliary loss, hand-set G-Blend)."""

    def __init__(self, weights: dict[str, float]):
        self.weights = dict(weights)

    def before_epoch(self, epoch: int, trainer: "Trainer") -> None:
        pass

    def state_dict(self) -> dict:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict) -> None:
        self.weights = dict(state["weights"])


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


def head_loss(logits: torch.Tensor, y: torch.Tensor, multilabel: bool, reduction: str = "mean") -> torch.Tensor:
    logits = logits.float()
    if multilabel:
        loss = F.binary_cross_entropy_with_logits(logits, y, reduction="none").sum(1)
        return loss.mean() if reduction == "mean" else loss
    return F.cross_entropy(logits, y, reduction=reduction)


# --- metrics ------------------------------------------------------------------------------------
def average_precision(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class AP (AudioSet mAP); classes without positives give NaN."""
    order = np.argsort(-scores, axis=0, kind="stable")
    t = np.take_along_axis(targets, order, axis=0)
    tp = np.cumsum(t, axis=0)
    prec = tp / np.arange(1, len(t) + 1)[:, None]
    npos = t.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (prec * t).sum(0) / npos


def auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-class ROC AUC via ranks (ties averaged); NaN without both classes."""
    import pandas as pd

    out = np.full(scores.shape[1], np.nan)
    for c in range(scores.shape[1]):
        pos = targets[:, c] > 0
        n1, n0 = pos.sum(), (~pos).sum()
        if n1 and n0:
            r = pd.Series(scores[:, c]).rank(method="average").to_numpy()
            out[c] = (r[pos].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


class Trainer:
    """Owns the data, the model and the loop of one run folder."""

    def __init__(self, cfg: dict, spec: RunSpec, run_dir: Path, data_dir: Path, resume: bool = False):
        self.cfg, self.spec, self.run_dir = cfg, spec, Path(run_dir)
        self.tcfg = cfg["train"]
        self.env, self.device = dist_utils.setup(self.tcfg["device"])
        if self.device.type == "cpu":
            torch.set_num_threads(max(1, self.tcfg["threads"]))
        seed = self.tcfg["seed"]
        torch.manual_seed(seed + self.env.rank)
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            "bf16" if self.tcfg["amp"] == "auto" else self.tcfg["amp"]) if self.device.type == "cuda" else None
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

        self.ds = PreparedDataset(data_dir)
        self.ds.check_modalities(spec.modalities)
        self.multilabel = self.ds.multilabel
        T, V = split_holdout(self.ds, self.tcfg["holdout_fraction"], seed)
        val = self.ds.split_indices("val") or self.ds.split_indices("test")
        if not T:
            raise UserError(f"{data_dir}: no training clips (split 'train' is empty)")
        if not val:
            raise UserError(f"{data_dir}: no evaluation clips (split 'val' is empty)")
        self.ds.preload(T + V + val, spec.modalities)
        clip = cfg["clip"]
        self.train_set = ClipDataset(self.ds, [(i, -1) for i in T], spec.modalities, clip, train=True, seed=seed)
        self.batch_size = self.tcfg["batch_size"]
        self.train_loader = make_loader(self.train_set, self.batch_size, shuffle=True, seed=seed, drop_last=True,
                                        workers=self.tcfg["workers"], rank=self.env.rank, world=self.env.world,
                                        pin_memory=self.device.type == "cuda")
        if len(self.train_loader) == 0:
            raise UserError(f"train.batch_size = {self.batch_size} is larger than the {len(T)} training clips per process")
        Tp = subset(T, self.tcfg["train_eval_size"], seed)
        self.eval_sets = {name: self._eval_set(idx, 1) for name, idx in (("train", Tp), ("holdout", V), ("val", val))}
        self.final_set = self._eval_set(val, clip["eval_clips"])
        self.split_sizes = {"T": len(T), "V": len(V), "T_prime": len(Tp), "val": len(val)}

        self.model = self._new_model()
        self.optimizer = make_optimizer(self.model.parameters(), self.tcfg)
        self.steps_per_epoch = len(self.train_loader)
        self.scheduler = make_scheduler(self.optimizer, self.steps_per_epoch, self.tcfg)
        self.resume = resume

    # --- construction ---------------------------------------------------------------------------
    def _eval_set(self, indices: list[int], n_clips: int) -> ClipDataset | None:
        if not indices:
            return None
        # each rank evaluates whole videos, so video-level metrics need no cross-rank merging of clips
        mine = [i for r, i in enumerate(indices) if r % self.env.world == self.env.rank]
        return ClipDataset(self.ds, eval_items(self.ds, mine, n_clips, self.cfg["clip"]["frames"]), self.spec.modalities,
                           self.cfg["clip"], train=False)

    def _new_model(self) -> MultiModalNet:
        model = MultiModalNet(self.spec.modalities, self.spec.heads, len(self.ds.classes), self.cfg["model"])
        if self.tcfg["init_from"]:
            load_backbones(model, Path(self.tcfg["init_from"]))
        model = model.to(self.device)
        if self.device.type == "cuda" and self.tcfg["channels_last"]:
            set_channels_last(model)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """DistributedDataParallel (and torch.compile on CUDA when asked) for training."""
        if self.tcfg["compile"] and self.device.type == "cuda":
            model = torch.compile(model)
        if self.env.enabled:
            model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        return model

    # --- the loop -------------------------------------------------------------------------------
    def run_epoch(self, model, optimizer, scheduler, weights: dict[str, float], epoch: int, bar=None, task=None,
                  clip_groups=None) -> dict[str, float]:
        """One pass over T: L = sum_h w_h * loss_h (heads with w_h = 0 are not computed into the loss).

        Returns mean per-head training losses (running, in train mode: for display only; OGR uses
        clean eval passes). Losses stay on the device; the host syncs once per epoch on CUDA."""
        model.train()
        self.train_set.set_epoch(epoch)
        sampler = self.train_loader.sampler
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        heads = [h for h, w in weights.items() if w > 0]
        w_vec = torch.tensor([weights[h] for h in heads], device=self.device)
        sums = torch.zeros(len(heads) + 1, device=self.device)
        n = 0
        t0 = time.perf_counter()
        for step, batch in enumerate(self.train_loader):
            inputs = {m: batch[m].to(self.device, non_blocking=True) for m in self.spec.modalities}
            y = batch["label"].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = model(inputs)
            losses = torch.stack([head_loss(out[h], y, self.multilabel) for h in heads])
            loss = (losses * w_vec).sum()
            optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if self.tcfg["grad_clip"] > 0:
                self.scaler.unscale_(optimizer)
                for group in (clip_groups or [list(model.parameters())]):
                    torch.nn.utils.clip_grad_norm_(group, self.tcfg["grad_clip"])
            self.scaler.step(optimizer)
            self.scaler.update()
            scheduler.step()
            sums += torch.cat([losses.detach(), loss.detach()[None]]) * len(y)
            n += len(y)
            if bar is not None and (self.device.type == "cpu" or step % 50 == 0):
                rate = n * self.env.world / max(1e-9, time.perf_counter() - t0)
                bar.update(task, completed=step + 1, info=f"loss {float(sums[-1]) / n:.3f}  {rate:.0f} clips/s")
        means = (dist_utils.all_reduce_sum(sums) / (n * self.env.world)).tolist()
        if not all(math.isfinite(x) for x in means):
            raise TrainingDiverged(f"{self.run_dir}: the training loss became {means[-1]} at epoch {epoch + 1}; "
                                   f"the last good checkpoint is {self.run_dir / 'checkpoints' / 'last.pt'} "
                                   f"(lower train.lr or set train.grad_clip)")
        return {h: means[i] for i, h in enumerate(heads)} | {"total": means[-1],
                                                            "clips_per_s": n * self.env.world / (time.perf_counter() - t0)}

    @torch.no_grad()
    def evaluate(self, model, dataset: ClipDataset | None, heads: list[str], video_level: bool = False) -> dict:
        """Clean pass in eval mode: per head mean per-sample loss and clip top-1 (%); with
        `video_level`, softmax averaged over each video's clips -> video top-1/top-5 (and mAP/mAUC
        for multi-label data)."""
        if dataset is None:
            return {}
        was_training = model.training
        model.eval()
        loader = make_loader(dataset, self.batch_size * 2, shuffle=False, seed=0, workers=self.tcfg["workers"],
                             pin_memory=self.device.type == "cuda")
        nv, nc = len(dataset.videos), len(self.ds.classes)
        acc = {h: {"loss": torch.zeros((), device=self.device), "correct": torch.zeros((), device=self.device),
                   "probs": torch.zeros(nv, nc, device=self.device)} for h in heads}
        nclips = torch.zeros(nv, device=self.device)
        labels: dict[int, object] = {}
        for batch in loader:
            inputs = {m: batch[m].to(self.device, non_blocking=True) for m in self.spec.modalities}
            y = batch["label"].to(self.device, non_blocking=True)
            v = batch["video"].to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = model(inputs)
            for h in heads:
                logits = out[h].float()
                acc[h]["loss"] += head_loss(logits, y, self.multilabel, reduction="none").sum()
                if self.multilabel:
                    p = torch.sigmoid(logits)
                    acc[h]["correct"] += (y.gather(1, logits.argmax(1, keepdim=True)) > 0).sum()
                else:
                    p = logits.softmax(1)
                    acc[h]["correct"] += (logits.argmax(1) == y).sum()
                acc[h]["probs"].index_add_(0, v, p)
            nclips.index_add_(0, v, torch.ones_like(v, dtype=torch.float))
            if video_level:
                for vi, yi in zip(batch["video"].tolist(), batch["label"]):
                    labels[vi] = yi
        n_total = dist_utils.all_reduce_sum(nclips.sum().clone())
        result = {}
        for h in heads:
            sums = dist_utils.all_reduce_sum(torch.stack([acc[h]["loss"], acc[h]["correct"]]))
            r = {"loss": float(sums[0] / n_total), "top1": 100.0 * float(sums[1] / n_total)}
            if video_level:
                probs = (acc[h]["probs"] / nclips.clamp(min=1)[:, None]).cpu()
                if self.multilabel:
                    y_all = torch.stack([labels[i] for i in range(nv)]).numpy()
                    gathered = dist_utils.all_gather_objects((probs.numpy(), y_all))
                    s, t = np.concatenate([g[0] for g in gathered]), np.concatenate([g[1] for g in gathered])
                    r["map"] = float(np.nanmean(average_precision(s, t)))
                    r["mauc"] = float(np.nanmean(auc(s, t)))
                    top = probs.topk(min(5, nc), 1).indices
                    yv = torch.from_numpy(y_all)
                    c1 = (yv.gather(1, top[:, :1]) > 0).any(1).sum()
                    c5 = (yv.gather(1, top) > 0).any(1).sum()
                else:
                    yv = torch.tensor([int(labels[i]) for i in range(nv)])
                    top = probs.topk(min(5, nc), 1).indices
                    c1 = (top[:, 0] == yv).sum()
                    c5 = (top == yv[:, None]).any(1).sum()
                counts = dist_utils.all_reduce_sum(torch.tensor([float(c1), float(c5), float(nv)], device=self.device))
                r["video_top1"] = 100.0 * float(counts[0] / counts[2])
                r["video_top5"] = 100.0 * float(counts[1] / counts[2])
            result[h] = r
        model.train(was_training)
        return result

    def evaluate_splits(self, model, heads: list[str]) -> dict:
        """Per-epoch metrics: T' (train, eval mode), V (holdout) and the evaluation split, 1 clip each."""
        return {name: self.evaluate(model, ds, heads) for name, ds in self.eval_sets.items() if ds is not None}

    # --- checkpoints ----------------------------------------------------------------------------
    def checkpoint(self, epoch: int, policy, best: float) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": epoch,
            "config": to_toml(self.cfg),
            "spec": {"method": self.spec.method, "modalities": self.spec.modalities, "heads": self.spec.heads,
                     "eval_head": self.spec.eval_head},
            "rng": {"torch": torch.get_rng_state()},
            "policy": policy.state_dict(),
            "best": best,
        }

    def fit(self, policy) -> dict:
        """Train `tcfg.epochs` epochs with the policy's weights; evaluate; write the run folder."""
        run, main = self.run_dir, self.env.is_main
        ckpt_dir = run / "checkpoints"
        epochs, eval_every = self.tcfg["epochs"], self.tcfg["eval_every"]
        start, best = 0, -math.inf
        all_heads = self.spec.heads
        if self.resume and (ckpt_dir / "last.pt").exists():
            state = load_checkpoint(ckpt_dir / "last.pt")
            check_resume_compatible(state, self.cfg, self.spec, run)
            unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["lr_scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            policy.load_state_dict(state["policy"])
            start, best = state["epoch"], state["best"]
            if main:  # drop rows written after the checkpoint (they are recomputed identically)
                rewrite_jsonl_atomic(run / "metrics.jsonl", [r for r in read_jsonl(run / "metrics.jsonl") if r["epoch"] <= start])
                if (run / "blend_weights.jsonl").exists():
                    rewrite_jsonl_atomic(run / "blend_weights.jsonl",
                                         [r for r in read_jsonl(run / "blend_weights.jsonl") if r["epoch"] < start])
            console.print(f"resuming {run} from epoch {start}")
        elif main:
            for stale in ("metrics.jsonl", "blend_weights.jsonl", "summary.csv", "final.json"):
                (run / stale).unlink(missing_ok=True)
        if main:
            write_text_atomic(run / "config.toml", to_toml(self.cfg))
            write_json_atomic(run / "env.json", environment_info(self))
        t_start = time.perf_counter()
        model = self.wrap(self.model)
        if start == 0:
            self._log_epoch(0, self.evaluate_splits(self.model, all_heads), {}, policy, 0.0)
        with progress() if main else _NullBar() as bar:
            task = bar.add_task("train", total=self.steps_per_epoch, info="")
            for epoch in range(start, epochs):
                policy.before_epoch(epoch, self)  # G-Blend re-estimates here (Algorithms 2 and 3)
                weights = {h: float(policy.weights.get(h, 0.0)) for h in all_heads}
                bar.reset(task, total=self.steps_per_epoch, description=f"{run.name} epoch {epoch + 1}/{epochs}")
                t0 = time.perf_counter()
                train_stats = self.run_epoch(model, self.optimizer, self.scheduler, weights, epoch, bar, task)
                metrics = {}
                if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                    metrics = self.evaluate_splits(self.model, all_heads)
                self._log_epoch(epoch + 1, metrics, train_stats, policy, time.perf_counter() - t0)
                score = (metrics.get("holdout") or metrics.get("val") or {}).get(self.spec.eval_head, {}).get("top1")
                if main:
                    state = self.checkpoint(epoch + 1, policy, max(best, score if score is not None else -math.inf))
                    if score is not None and score > best:  # best first: last.pt records it as saved
                        torch_save_atomic(ckpt_dir / "best.pt", state)
                    torch_save_atomic(ckpt_dir / "last.pt", state)
                if score is not None:
                    best = max(best, score)
        final = self.finish(policy, time.perf_counter() - t_start)
        dist_utils.barrier()
        return final

    def _log_epoch(self, epoch: int, metrics: dict, train_stats: dict, policy, seconds: float) -> None:
        if not self.env.is_main:
            return
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
               "weights": {h: round(float(policy.weights.get(h, 0.0)), 6) for h in self.spec.heads}}
        row.update(metrics)
        if train_stats:
            row["train_running"] = {k: round(v, 5) for k, v in train_stats.items()}
        row["epoch_seconds"] = round(seconds, 3)
        append_jsonl(self.run_dir / "metrics.jsonl", row)
        write_summary_csv(self.run_dir)
        if metrics and epoch > 0:
            h = self.spec.eval_head
            parts = [f"{s} {metrics[s][h]['top1']:.1f}" for s in ("train", "holdout", "val") if s in metrics]
            console.print(f"{self.run_dir.name} epoch {epoch}: {h} top-1 " + ", ".join(parts)
                          + f"  ({train_stats.get('clips_per_s', 0):.0f} clips/s)")

    def finish(self, policy, seconds: float) -> dict:
        """Final evaluation: `eval_clips` clips per video on the evaluation split -> final.json."""
        heads = self.spec.heads
        val = self.evaluate(self.model, self.final_set, heads, video_level=True)
        train = self.evaluate(self.model, self.eval_sets["train"], heads)
        h = self.spec.eval_head
        final = {
            "head": h, "clip_top1": val[h]["top1"], "video_top1": val[h]["video_top1"],
            "video_top5": val[h]["video_top5"], "train_top1": train[h]["top1"], "val_loss": val[h]["loss"],
            "train_loss": train[h]["loss"],
            "heads": {k: {"clip_top1": v["top1"], "video_top1": v["video_top1"], "video_top5": v["video_top5"],
                          "train_top1": train[k]["top1"]} | ({"map": v["map"], "mauc": v["mauc"]} if "map" in v else {})
                      for k, v in val.items()},
            "method": self.spec.method, "modalities": self.spec.modalities, "seed": self.tcfg["seed"],
            "epochs": self.tcfg["epochs"], "weights": {k: float(policy.weights.get(k, 0.0)) for k in heads},
            "dataset": self.cfg["dataset"]["name"], "splits": self.split_sizes, "seconds": round(seconds, 1),
            "format_version": FORMAT_VERSION,
        } | self.spec.extra
        if "map" in val[h]:
            final["map"], final["mauc"] = val[h]["map"], val[h]["mauc"]
        if self.env.is_main:
            write_json_atomic(self.run_dir / "final.json", final)
        return final


class _NullBar:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False

    def add_task(self, *a, **k):
        return 0

    def reset(self, *a, **k):
        pass

    def update(self, *a, **k):
        pass


def set_channels_last(model: torch.nn.Module) -> None:
    """channels_last(_3d) weights and activations for the convolutional backbones (CUDA)."""
    from .models import AudioBackbone, VideoBackbone

    for m in model.modules():
        if isinstance(m, VideoBackbone):
            m.to(memory_format=torch.channels_last_3d)
            m.channels_last = True
        elif isinstance(m, AudioBackbone):
            m.to(memory_format=torch.channels_last)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    model = getattr(model, "module", model)  # DDP
    return getattr(model, "_orig_mod", model)  # torch.compile


def load_checkpoint(path: Path) -> dict:
    """Checkpoints hold only tensors and plain data: loaded with weights_only=True."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
        raise UserError(f"{path}: cannot load checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None


def check_resume_compatible(state: dict, cfg: dict, spec: RunSpec, run: Path) -> None:
    import tomllib

    require_known_format(state, run / "checkpoints" / "last.pt")
    old = tomllib.loads(state["config"])
    new = tomllib.loads(to_toml(cfg))
    ignore = {("train", "workers"), ("train", "threads"), ("train", "device"), ("prepare", "workers"),
              ("dataset", "data_dir"), ("dataset", "results_dir")}
    for section, values in new.items():
        for key, value in values.items():
            if (section, key) not in ignore and old.get(section, {}).get(key) != value:
                raise UserError(f"{run}: --resume with a different recipe: {section}.{key} was "
                                f"{old.get(section, {}).get(key)!r}, now {value!r}; use the original settings or a new --out")
    if state["spec"]["modalities"] != spec.modalities or state["spec"]["method"] != spec.method:
        raise UserError(f"{run}: --resume of a {state['spec']['method']} run on {','.join(state['spec']['modalities'])} "
                        f"with {spec.method} on {','.join(spec.modalities)}")


def load_backbones(model: MultiModalNet, run: Path) -> None:
    """The paper's "pre-training" baseline: initialise backbones (and matching heads) from
    uni-modal runs. `run` may be one run folder or several joined with ','."""
    for r in str(run).split(","):
        path = Path(r) / "checkpoints" / "last.pt"
        if not path.exists():
            raise UserError(f"{path}: no checkpoint to initialise from (--init-from)")
        full = load_checkpoint(path)
        require_known_format(full, path)
        state = full["model"]
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
            raise UserError(f"{path}: has no backbone for {', '.join(model.modalities)}")


def environment_info(trainer: Trainer) -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "gblend": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": str(trainer.device),
        "device_name": torch.cuda.get_device_name(trainer.device) if trainer.device.type == "cuda" else platform.processor() or platform.machine(),
        "world_size": trainer.env.world, "threads": torch.get_num_threads(), "git_commit": commit,
        "host": platform.node(), "amp": str(trainer.amp_dtype) if trainer.amp_dtype else "none",
        "splits": trainer.split_sizes,
    }


def write_summary_csv(run: Path) -> None:
    """summary.csv mirrors metrics.jsonl, one row per epoch, flattened (split_head_metric)."""
    rows = read_jsonl(run / "metrics.jsonl")
    cols: list[str] = []
    flat_rows = []
    for r in rows:
        flat = {"epoch": r["epoch"], "lr": r["lr"]}
        for split in ("train", "holdout", "val"):
            for head, vals in r.get(split, {}).items():
                for k, v in vals.items():
                    flat[f"{split}_{head}_{k}"] = v
        for head, w in r.get("weights", {}).items():
            flat[f"w_{head}"] = w
        flat_rows.append(flat)
        cols += [c for c in flat if c not in cols]
    lines = [",".join(cols)] + [",".join("" if r.get(c) is None else f"{r[c]:.6g}" if isinstance(r.get(c), float)
                                         else str(r[c]) for c in cols) for r in flat_rows]
    write_text_atomic(run / "summary.csv", "\n".join(lines) + "\n")
