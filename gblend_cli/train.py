"""The training core: one `Trainer` for every train command.

A run trains `MultiModalNet` with L = sum_k w_k CE_k over its heads; a loss policy
(gblend_cli/policies/) supplies the weights. The epoch and the evaluation pass are
`engine.train_one_epoch` and `engine.evaluate`; G-Blend's estimators are trained and measured by
the same two functions through a narrow `RunContext`, so Algorithm 1 never needs a second loop.
The run folder (gblend_cli/run_folder.py) owns every file; `--resume` continues from last.pt and
reproduces an uninterrupted CPU run.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from . import distributed as dist_utils
from .config import to_toml
from .data import PreparedDataset, build_run_data
from .diagnostics import FeatureMeans, SubsetAccuracy, peak_memory
from .engine import (NonFiniteLoss, Precision, evaluate, make_optimizer, make_scheduler, recalibrated_bn, rng_seed,
                     train_one_epoch)
from .errors import ProtocolError, UserError
from .experiment import RunKey
from .fusion import build_model
from .models import MultiModalNet, load_backbones, set_channels_last
from .ogr import ogr_per_head
from .run_folder import DamagedCheckpoint, RunFolder, best_score, environment_info, load_checkpoint
from .storage import read_jsonl
from .ui import RunProgress, console


class TrainingDiverged(UserError):
    exit_code = 3


SPLIT_NAMES = {"train": "T'", "holdout": "V", "val": "val", "final": "val, every clip"}
POLICY_SPLITS = ("train", "holdout")  # what a loss policy may measure (RunContext.evaluate)


class Trainer:
    """Sets up one run (device, data, model, optimiser) and trains it: `fit(policy)`."""

    def __init__(self, cfg: dict, key: RunKey, folder: RunFolder, data_dir: Path, resume: bool = False):
        self.cfg, self.key, self.folder, self.resume = cfg, key, folder, resume
        self.tcfg = cfg["train"]
        self.env, device = dist_utils.setup(self.tcfg["device"])
        if device.type == "cpu":
            torch.set_num_threads(max(1, self.tcfg["threads"]))
        self.precision = Precision.for_device(device, self.tcfg["amp"])
        self.scaler = self.precision.new_scaler()

        ds = PreparedDataset(data_dir)
        ds.check_modalities(key.modalities)
        self.data = build_run_data(ds, list(key.modalities), cfg, rank=self.env.rank, world=self.env.world,
                                   pin_memory=device.type == "cuda")
        self.model = self.new_model()
        self.optimizer = make_optimizer(self.model.parameters(), self.tcfg)
        self.scheduler = make_scheduler(self.optimizer, self.data.steps_per_epoch, self.tcfg)
        self.progress = RunProgress(False, folder.path.name, 0)  # fit() shows the real bars

    @property
    def device(self) -> torch.device:
        return self.precision.device

    def new_model(self) -> torch.nn.Module:
        model = build_model(list(self.key.modalities), self.key.heads, len(self.data.ds.classes), self.cfg["model"],
                            init_seed=self.tcfg["seed"], probe_heads=self.key.probe_heads, head_fusion=self.key.fusion)
        # MultiModalNet, or a naive run's model.fusion (gblend_cli/fusion/)
        if self.tcfg["init_from"]:
            load_backbones(model, [(str(p), load_checkpoint(p)["model"]) for p in init_checkpoints(self.tcfg["init_from"])])
        model = model.to(self.device)
        if self.device.type == "cuda" and self.tcfg["channels_last"]:
            set_channels_last(model)
        return model

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        return dist_utils.wrap_model(model, self.env, self.device, self.tcfg["compile"])

    # --- the epoch and the evaluation -----------------------------------------------------------
    def run_epoch(self, model, optimizer, scheduler, weights: dict[str, float], epoch: int, *, scaler=None,
                  clip_groups=None, on_step=None, backward=None) -> dict[str, float]:
        """One epoch over T (see engine.train_one_epoch; `backward`: a policy's gradient hook); a
        NaN/Inf loss stops the run (exit 3)."""
        try:
            return train_one_epoch(model, self.data.train_loader, optimizer, scheduler, weights, epoch=epoch,
                                   precision=self.precision, scaler=scaler or self.scaler, modalities=self.key.modalities,
                                   multilabel=self.data.ds.multilabel, grad_clip=self.tcfg["grad_clip"],
                                   clip_groups=clip_groups, on_step=on_step, backward=backward)
        except NonFiniteLoss as e:
            raise TrainingDiverged(f"{self.folder.path}: the training loss became {e.value} at epoch {epoch + 1}; "
                                   f"the last good checkpoint is {self.folder.last} "
                                   f"(lower train.lr or set train.grad_clip)") from None

    def evaluate(self, model, split: str, heads: list[str], video_level: bool = False, on_features=None) -> dict:
        """A clean pass over a named split: 'train' (T'), 'holdout' (V), 'val', or 'final' (the
        evaluation split, `eval_clips` clips per video); {} for a split this run does not have."""
        loader = self.data.final_loader if split == "final" else self.data.eval_loaders.get(split)
        if loader is None:
            return {}
        dist_utils.sync_buffers(model)  # evaluate rank 0's model, the one saved, on every rank
        on_batch = self.progress.evaluating(f"evaluating {SPLIT_NAMES.get(split, split)}", len(loader.dataset))
        try:
            return evaluate(model, loader, heads, precision=self.precision, modalities=self.key.modalities,
                            num_classes=len(self.data.ds.classes), multilabel=self.data.ds.multilabel,
                            video_level=video_level, on_batch=on_batch, on_features=on_features)
        finally:
            self.progress.done_evaluating()

    def evaluate_splits(self, model) -> dict:
        """Per-epoch metrics: T' (train, eval mode), V (holdout) and the evaluation split, 1 clip each."""
        return {s: self.evaluate(model, s, self.key.heads) for s in self.data.eval_loaders}

    def bn_recalibrated(self, model) -> torch.nn.Module:
        """A copy of `model` with BatchNorm statistics recomputed on T' (engine.recalibrated_bn): what
        the epoch-0 measurements (φ_0) are taken on."""
        return recalibrated_bn(model, self.data.eval_loaders["train"], precision=self.precision,
                               modalities=self.key.modalities)

    # --- the run --------------------------------------------------------------------------------
    def checkpoint_state(self, epoch: int, policy, best: float) -> dict:
        return {
            "model": dist_utils.unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "precision": self.precision.name,
            "epoch": epoch,
            "config": to_toml(self.cfg),
            "spec": {"method": self.key.method, "modalities": list(self.key.modalities), "heads": self.key.heads,
                     "eval_head": self.key.eval_head},
            "rng": dist_utils.rng_states(self.device),  # every rank's
            "policy": policy.state_dict(),
            "best": best,
        }

    def fit(self, policy) -> dict:
        """Train `train.epochs` epochs with the policy's weights (and its gradient hook, if it has
        one: policies/base.py), evaluating every `eval_every` epochs and checkpointing every epoch;
        then the final evaluation -> final.json. A policy with `trains = False` (UME) trains no
        epoch: its model is measured, checkpointed and evaluated."""
        folder, main = self.folder, self.env.is_main
        eval_every = self.tcfg["eval_every"]
        epochs = self.tcfg["epochs"] if getattr(policy, "trains", True) else 0
        if self.env.world > 1 and getattr(policy, "single_process", False):
            raise UserError(f"{self.key.method} modulates gradients with per-batch statistics that are not "
                            "all-reduced across processes yet: run it in one process (not under torchrun)")
        backward, after_epoch = getattr(policy, "backward", None), getattr(policy, "after_epoch", None)
        start, best, resumed = 0, -math.inf, False
        if self.resume and not folder.last.exists() and folder.estimation.exists():  # refused before anything is written
            try:
                self.check_precision(load_checkpoint(folder.estimation).get("precision"), folder.estimation)
            except DamagedCheckpoint:
                pass  # estimated again from its start (RunFolder.estimation_state says so)
        if self.resume and folder.last.exists():
            state = folder.resume_state(self.cfg, self.key)
            self.check_precision(state.get("precision"), folder.last)
            dist_utils.unwrap(self.model).load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["lr_scheduler"])
            self.precision.load_scaler_state(self.scaler, state.get("scaler"))
            policy.load_state_dict(state["policy"])
            start, best, resumed = state["epoch"], state["best"], True
            dist_utils.restore_rng_states(state["rng"], self.env.rank, self.device,
                                          rng_seed(self.tcfg["seed"], start, self.env.rank))
            console.print(f"resuming {folder.path} from epoch {start}")
        folder.start(self.cfg, environment_info(self.device, self.env.world, self.precision.amp_dtype,
                                                self.data.split_sizes), start if resumed else None,
                     state.get("journals") if resumed else None)
        ctx = RunContext(self, folder)
        t_start = time.perf_counter()
        model = self.wrap(self.model)
        steps = self.data.steps_per_epoch
        estimation = sum(n for e, n in policy.estimation_plan().items() if e >= start)
        with RunProgress(main, folder.path.name, (epochs - start + estimation) * steps) as self.progress:
            if not resumed:
                torch.manual_seed(rng_seed(self.tcfg["seed"], 0, self.env.rank))
                if hasattr(policy, "init_model"):
                    policy.init_model(dist_utils.unwrap(self.model))
                # φ_0 on BatchNorm statistics of T'; a model that trains nothing is measured as it is
                probe = self.bn_recalibrated(self.model) if epochs else self.model
                self._log_epoch(0, self.evaluate_splits(probe), {}, policy.weights_for(0), 0.0)
                if not epochs:
                    folder.save_checkpoint(self.checkpoint_state(0, policy, best), is_best=False)
            for epoch in range(start, epochs):
                policy.before_epoch(epoch, ctx)  # G-Blend re-estimates here (Algorithms 2 and 3)
                weights = {h: float(policy.weights_for(epoch).get(h, 0.0)) for h in self.key.heads}
                self.progress.phase(f"epoch {epoch + 1}/{epochs}", steps)
                t0 = time.perf_counter()
                train_stats = self.run_epoch(model, self.optimizer, self.scheduler, weights, epoch,
                                             on_step=self._on_step(t0), backward=backward)
                summary = after_epoch(epoch) if after_epoch is not None else None
                metrics = {}
                if (epoch + 1) % eval_every == 0 or epoch + 1 == epochs:
                    metrics = self.evaluate_splits(self.model)
                self._log_epoch(epoch + 1, metrics, train_stats, weights, time.perf_counter() - t0, summary)
                score = best_score(metrics, self.key.eval_head)
                folder.save_checkpoint(self.checkpoint_state(epoch + 1, policy, max(best, score)), is_best=score > best)
                folder.drop_estimation()  # superseded: last.pt holds the weights it estimated
                best = max(best, score)
            final = self.finish(policy.weights_for(max(0, epochs - 1)), time.perf_counter() - t_start, epochs)
        self.progress = RunProgress(False, folder.path.name, 0)
        dist_utils.barrier()
        return final

    def check_precision(self, saved: str | None, where: Path) -> None:
        """--resume computes in the precision the checkpoint was made in: train.amp may not change
        (the recipe check), and train.device may, but not to a device that changes the precision
        (train.amp = auto is bf16 on CUDA and float32 on CPU; fp16 and bf16 apply on CUDA only).
        `saved`: the checkpoint's "precision"; for a checkpoint of an older gblend, env.json's
        "amp" (the run's last start); unknown: not checked."""
        if saved is None:
            amp = (self.folder.env_info() or {}).get("amp")
            saved = {"torch.bfloat16": "bf16", "torch.float16": "fp16", "none": "none"}.get(amp)
        if saved is None or saved == self.precision.name:
            return
        raise UserError(f"{where}: --resume with another precision: the run trained with amp {saved}, this one would "
                        f"with amp {self.precision.name} (train.device = {self.tcfg['device']!r}: {self.device}; "
                        f"train.amp = {self.tcfg['amp']!r}); set train.device to the kind of device the run trained "
                        f"on, or use a new --out")

    def _on_step(self, t0: float):
        def on_step(step, clips, loss):
            rate = clips / max(1e-9, time.perf_counter() - t0)
            self.progress.step(step, f"loss {loss:.3f}  {rate:.0f} clips/s")
        return on_step

    def _log_epoch(self, epoch: int, metrics: dict, train_stats: dict, weights: dict, seconds: float,
                   policy_summary: dict | None = None) -> None:
        if not self.env.is_main:
            return
        row = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"],
               "weights": {h: round(float(weights.get(h, 0.0)), 6) for h in self.key.heads}}
        row.update(metrics)
        if train_stats:
            row["train_running"] = {k: round(v, 5) for k, v in train_stats.items()}
        if policy_summary:
            row["policy"] = policy_summary
        row["epoch_seconds"] = round(seconds, 3)
        self.folder.log_metrics(row)
        if metrics and epoch > 0:
            h = self.key.eval_head
            parts = [f"{s} {metrics[s][h]['top1']:.1f}" for s in ("train", "holdout", "val") if s in metrics]
            self.progress.log(f"{self.folder.path.name} epoch {epoch}: {h} top-1 " + ", ".join(parts)
                              + f"  ({train_stats.get('clips_per_s', 0):.0f} clips/s)")

    def finish(self, weights: dict, seconds: float, epochs: int | None = None) -> dict:
        """Final evaluation: `eval_clips` clips per video on the evaluation split -> final.json;
        for a multi-modal run, with the diagnostics (gblend_cli/diagnostics.py): each modality's
        Shapley contribution to the fused head, measured in the same pass."""
        heads, h, key = self.key.heads, self.key.eval_head, self.key
        epochs = self.tcfg["epochs"] if epochs is None else epochs
        diag = None
        if "fused" in heads and len(key.modalities) > 1 and isinstance(dist_utils.unwrap(self.model), MultiModalNet):
            # (not the mid-fusion models of gblend_cli/fusion/: no separate pooled features per modality)
            means = FeatureMeans()
            train = self.evaluate(self.model, "train", heads, on_features=means.add)
            module = dist_utils.unwrap(self.model)
            final_set = self.data.final_loader.dataset
            diag = SubsetAccuracy(module, means.result(), len(final_set.videos), len(self.data.ds.classes),
                                  self.data.ds.multilabel, self.device)
            val = self.evaluate(self.model, "final", heads, video_level=True,
                                on_features=lambda f, b, y, v: diag.add(f, b, y, v))
        else:
            train = self.evaluate(self.model, "train", heads)
            val = self.evaluate(self.model, "final", heads, video_level=True)
        final = {
            "head": h, "clip_top1": val[h]["top1"], "video_top1": val[h]["video_top1"],
            "video_top5": val[h]["video_top5"], "train_top1": train[h]["top1"], "val_loss": val[h]["loss"],
            "train_loss": train[h]["loss"],
            "heads": {k: {"clip_top1": v["top1"], "video_top1": v["video_top1"], "video_top5": v["video_top5"],
                          "train_top1": train[k]["top1"]} | ({"map": v["map"], "mauc": v["mauc"]} if "map" in v else {})
                      for k, v in val.items()},
            "method": key.method, "modalities": list(key.modalities), "seed": key.seed,
            "epochs": epochs, "weights": {k: float(weights.get(k, 0.0)) for k in heads},
            "dataset": self.cfg["dataset"]["name"], "splits": self.data.split_sizes, "seconds": round(seconds, 1),
        } | ({"mode": key.mode} if key.mode else {}) | ({"fix": key.fix} if key.fix else {}) \
            | ({"optimizer": key.optimizer} if key.optimizer else {}) | peak_memory(self.device)
        if diag is not None:  # the run folder's diagnostics: contribution, each head's V@1 and OGR
            log = self.folder.path / "metrics.jsonl"
            final["diagnostics"] = diag.diagnostics(val[h]) | {
                "head_video_top1": {k: v["video_top1"] for k, v in val.items() if k != "fused"},
                "ogr": ogr_per_head(read_jsonl(log), heads) if log.exists() else {}}
        if "map" in val[h]:
            final["map"], final["mauc"] = val[h]["map"], val[h]["mauc"]
        if key.method == "naive":
            self.write_early_stop(val)  # before final.json, which marks the run complete
        self.folder.write_final(final)
        return final


    def write_early_stop(self, last_val: dict) -> None:
        """Early stopping (paper Fig. 1), read from a naive run: the best-by-V checkpoint (best.pt)
        evaluated like the final model (`eval_clips` clips per video) -> early_stop.json."""
        if not self.folder.best.exists():
            return
        state = load_checkpoint(self.folder.best)
        h, epoch = self.key.eval_head, int(state["epoch"])
        if epoch == self.tcfg["epochs"]:
            val = last_val
        else:
            import copy

            model = copy.deepcopy(dist_utils.unwrap(self.model))
            model.load_state_dict(state["model"])
            val = self.evaluate(model, "final", [h], video_level=True)
        self.folder.write_early_stop({"epoch": epoch, "head": h, "clip_top1": val[h]["top1"],
                                      "video_top1": val[h]["video_top1"], "video_top5": val[h]["video_top5"],
                                      "val_loss": val[h]["loss"], "chosen_by": "V top-1 (best.pt)"})


class RunContext:
    """The part of a run a loss policy may use (policies/base.py `EstimationContext`): evaluate on
    a named split, train a model n epochs on T with the run's data order and schedule, record a row."""

    def __init__(self, trainer: Trainer, folder: RunFolder):
        self._t, self._folder = trainer, folder
        self.seed, self.epochs = trainer.tcfg["seed"], trainer.tcfg["epochs"]
        self.device, self.model_cfg, self.is_main = trainer.device, trainer.cfg["model"], trainer.env.is_main

    @property
    def model(self) -> torch.nn.Module:
        return dist_utils.unwrap(self._t.model)

    def evaluate(self, model, split: str, heads: list[str]) -> dict:
        """T' ('train') or V ('holdout') only: a policy never sees the evaluation split."""
        if split not in POLICY_SPLITS:
            raise ProtocolError(f"a loss policy may measure only T' ('train') and V ('holdout'), not {split!r}: "
                                "the evaluation split is touched only for the reported numbers")
        return self._t.evaluate(model, split, heads)

    def bn_recalibrated(self, model) -> torch.nn.Module:
        return self._t.bn_recalibrated(model)

    @property
    def rank(self) -> int:
        return self._t.env.rank

    def train(self, model, first_epoch: int, n_epochs: int, clip_groups=None) -> None:
        """Algorithm 1's estimators, n epochs from `first_epoch`. After each epoch their state (model,
        optimiser, schedule, scaler, every rank's forked RNG) goes to checkpoints/estimation.pt, so a killed
        or interrupted estimation resumes (--resume) where it stopped, with the same result."""
        t = self._t
        opt = make_optimizer(model.parameters(), t.tcfg)
        sched = make_scheduler(opt, t.data.steps_per_epoch, t.tcfg, offset_epochs=first_epoch)
        scaler = t.precision.new_scaler()  # its own: the main run's scale must not move
        done = 0
        saved = self._folder.estimation_state(t.cfg, first_epoch, n_epochs) if t.resume else None
        if saved is not None:
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["optimizer"])
            sched.load_state_dict(saved["lr_scheduler"])
            t.check_precision(saved.get("precision"), self._folder.estimation)
            t.precision.load_scaler_state(scaler, saved.get("scaler"))
            done = saved["done"]
            dist_utils.restore_rng_states(saved["rng"], t.env.rank, t.device,
                                          rng_seed(t.tcfg["seed"], first_epoch + done, t.env.rank))
            t.progress.log(f"resuming the G-Blend estimation from epoch {first_epoch} after {done}/{n_epochs} epochs")
        wrapped = t.wrap(model)
        ones = {h: 1.0 for h in model.head_names}
        for e in range(done, n_epochs):
            t.progress.phase(f"G-Blend estimation from epoch {first_epoch}: {e + 1}/{n_epochs}", t.data.steps_per_epoch)
            stats = t.run_epoch(wrapped, opt, sched, ones, first_epoch + e, scaler=scaler, clip_groups=clip_groups,
                                on_step=t._on_step(time.perf_counter()))
            self._folder.save_estimation({"epoch": first_epoch, "n_epochs": n_epochs, "done": e + 1,
                                          "config": to_toml(t.cfg), "model": model.state_dict(),
                                          "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                                          "scaler": scaler.state_dict(), "precision": t.precision.name,
                                          "rng": dist_utils.rng_states(t.device)})
            t.progress.log(f"  G-Blend estimation {e + 1}/{n_epochs} (from epoch {first_epoch}): "
                           + ", ".join(f"{h} {stats[h]:.3f}" for h in ones))

    def record(self, row: dict) -> None:
        self._folder.log_blend(row)


def init_checkpoints(init_from: str) -> list[Path]:
    """`train.init_from`: one run folder or several joined with ',' -> their last.pt files."""
    paths = []
    for r in str(init_from).split(","):
        path = RunFolder(Path(r)).last
        if not path.exists():
            raise UserError(f"{path}: no checkpoint to initialise from (--init-from)")
        paths.append(path)
    return paths
