"""From a train command to a run: its key and folder, the prepared data (the demo is prepared on
first use), the loss policy, and the folder lock."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .config import data_dir, read_saved_toml, results_dir, saved_value
from .errors import UserError
from .experiment import RunKey
from .run_folder import RunFolder
from .storage import folder_lock
from .ui import console
from .ui import out as stdout


def ensure_data(cfg: dict, data: Path | None) -> Path:
    """The prepared dataset; the demo is prepared on first use."""
    from .distributed import launch_rank

    path = Path(data) if data else data_dir(cfg)
    if not (path / "dataset.json").exists() and launch_rank() > 0:  # rank 0 prepares; the others wait
        deadline = time.monotonic() + 3600
        while not (path / "dataset.json").exists() and time.monotonic() < deadline:
            time.sleep(1)
    if not (path / "dataset.json").exists():
        if cfg["dataset"]["name"] == "demo" and not data:
            console.print(f"preparing the demo dataset in {path} (first use)")
            from .prepare import prepare_dataset

            prepare_dataset(cfg, path)
        else:
            raise UserError(f"{path}: no prepared dataset here (no dataset.json); run `gblend prepare-data` first")
    return path


def adopt_data_settings(cfg: dict, data_path: Path) -> None:
    """config.toml records how the data was made, not what the recipe would have made: a demo folder
    generated with another `--seed` (or other generator settings) is what this run trains on."""
    saved = data_path / "prepare_config.toml"
    if cfg["dataset"]["name"] != "demo" or not saved.exists():
        return
    made = read_saved_toml(saved, "prepare the data again (gblend prepare-data)")
    cfg["demo"].update({k: saved_value(made, "demo", k) for k in cfg["demo"]})


def train(cfg: dict, method: str, modalities, *, data: Path | None = None, out: Path | None = None,
          resume: bool = False) -> dict:
    """Train one run through the core; returns final.json's content."""
    from . import distributed
    from .policies import make_policy
    from .train import Trainer

    key = RunKey.for_config(method, modalities, cfg)
    cfg["dataset"]["data_dir"] = str(Path(data or data_dir(cfg)).resolve())  # config.toml records the data used
    adopt_data_settings(cfg, Path(cfg["dataset"]["data_dir"]))  # before the policy compares runs' settings
    policy = make_policy(key, cfg)  # bad weights or estimation sources are refused before anything is written
    data_path = ensure_data(cfg, data)
    folder = RunFolder(Path(out) if out else results_dir(cfg) / key.name, writer=distributed.launch_rank() == 0)
    if not resume and folder.has_run():
        raise UserError(f"{folder.path}: already holds a run; use --resume to continue it, or another --out "
                        f"(nothing was changed)")
    if resume and folder.is_complete():
        folder.check_same_recipe(cfg)  # a different recipe is a different run, not this finished one
        damaged = folder.writer and folder.damaged_journals()
        if damaged or (folder.writer and folder.left_by_a_kill()):
            try:
                with folder_lock(folder.path, "training run"):
                    repaired = folder.tidy_finished()
            except UserError:
                if damaged:
                    raise
                repaired = []  # only a leftover to tidy, and the folder is locked by someone else: leave it
            if repaired:
                stdout.print(f"{folder.path}: already complete; rewrote {', '.join(repaired)} from {folder.last}")
                return folder.final()
        stdout.print(f"{folder.path}: already complete (final.json); nothing to resume")
        return folder.final()
    if resume and not folder.has_checkpoint():
        raise UserError(f"{folder.path}: nothing to resume (no checkpoint); run the same command without --resume "
                        f"to start this run")
    lock = folder_lock(folder.path, "training run") if folder.writer else contextlib.nullcontext()
    with lock:  # only rank 0 writes the run folder
        trainer = Trainer(cfg, key, folder, data_path, resume=resume)
        final = trainer.fit(policy)
    if trainer.env.is_main:
        stdout.print(f"{folder.path}: {key.eval_head} head video top-1 {final['video_top1']:.1f}%, clip top-1 "
                      f"{final['clip_top1']:.1f}%, train top-1 {final['train_top1']:.1f}%")
    distributed.cleanup()
    return final
