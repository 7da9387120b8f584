"""From a train command to a run: the run's name and folder, the prepared data (the demo is
prepared on first use), the heads, the loss-weight policy, and the folder lock."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from .config import HEADS, MODALITIES, data_dir, results_dir
from .errors import UserError
from .storage import folder_lock
from .ui import console


def parse_modalities(text: str, minimum: int = 1) -> list[str]:
    mods = [m.strip() for m in text.split(",") if m.strip()]
    for m in mods:
        if m not in MODALITIES:
            raise UserError(f"--modalities: unknown modality {m!r} (choose from {', '.join(MODALITIES)})")
    if len(set(mods)) != len(mods):
        raise UserError(f"--modalities: {text!r} names a modality twice")
    if len(mods) < minimum:
        raise UserError(f"--modalities: give at least {minimum} of {', '.join(MODALITIES)}, e.g. audio,rgb")
    return [m for m in MODALITIES if m in mods]  # canonical order: audio, rgb, flow


def parse_weights(text: str, heads: list[str]) -> dict[str, float]:
    """'rgb=.630,audio=.014,fused=.356' -> normalised weights; 'equal' -> 1/(k+1) each."""
    if text.strip() == "equal":
        return {h: 1.0 / len(heads) for h in heads}
    w = {}
    for part in text.split(","):
        if "=" not in part:
            raise UserError(f"--weights: expected HEAD=W pairs like rgb=.63,audio=.01,fused=.36; got {part!r}")
        h, v = part.split("=", 1)
        h = h.strip()
        if h not in heads:
            raise UserError(f"--weights: head {h!r} is not in this model (heads: {', '.join(heads)})")
        try:
            w[h] = float(v)
        except ValueError:
            raise UserError(f"--weights: {h}={v!r} is not a number") from None
        if w[h] < 0:
            raise UserError(f"--weights: {h}={v} is negative")
    total = sum(w.values())
    if total <= 0:
        raise UserError("--weights: the weights sum to 0")
    return {h: w.get(h, 0.0) / total for h in heads}


def run_name(method: str, modalities: list[str], seed: int, mode: str | None = None) -> str:
    """e.g. unimodal-rgb-s0, naive-audio+rgb-s0, gblend-offline-audio+rgb-s1."""
    tag = f"{method}-{mode}" if mode else method
    return f"{tag}-{'+'.join(modalities)}-s{seed}"


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


def train(cfg: dict, method: str, modalities: list[str], *, data: Path | None = None, out: Path | None = None,
          resume: bool = False, mode: str | None = None, weights: str | None = None) -> dict:
    """Train one run through the core; returns final.json's content."""
    from .train import FixedWeights, RunSpec, Trainer

    seed = cfg["train"]["seed"]
    if method == "unimodal":
        heads, eval_head = [modalities[0]], modalities[0]
        policy = FixedWeights({modalities[0]: 1.0})
    elif method == "naive":
        heads, eval_head = ["fused"], "fused"
        policy = FixedWeights({"fused": 1.0})
    elif method == "gblend":
        heads, eval_head = modalities + ["fused"], "fused"
        weights = weights or cfg["gblend"]["weights"]  # --weights, else the recipe's gblend.weights
        if weights or mode == "fixed":
            policy = FixedWeights(parse_weights(weights or "equal", heads))
            mode = "fixed" if (weights or "equal") != "equal" else "equal"
        else:
            from .blend import GradientBlending

            policy = GradientBlending(cfg["gblend"] | {"mode": mode}, cfg["train"]["epochs"], heads)
    else:  # pragma: no cover
        raise ValueError(method)
    assert all(h in HEADS for h in heads)
    data_path = ensure_data(cfg, data)
    run_dir = Path(out) if out else results_dir(cfg) / run_name(method, modalities, seed, mode if method == "gblend" else None)
    _refuse_overwrite(run_dir, resume)
    spec = RunSpec(method, modalities, heads, eval_head, extra={"mode": mode} if method == "gblend" else {})
    from .distributed import launch_rank

    lock = folder_lock(run_dir, "training run") if launch_rank() == 0 else contextlib.nullcontext()
    with lock:  # only rank 0 writes the run folder
        trainer = Trainer(cfg, spec, run_dir, data_path, resume=resume)
        final = trainer.fit(policy)
    if trainer.env.is_main:
        console.print(f"{run_dir}: {eval_head} head video top-1 {final['video_top1']:.1f}%, clip top-1 "
                      f"{final['clip_top1']:.1f}%, train top-1 {final['train_top1']:.1f}%")
    from . import distributed

    distributed.cleanup()
    return final


def _refuse_overwrite(run_dir: Path, resume: bool) -> None:
    if resume:
        return
    if (run_dir / "final.json").exists() or (run_dir / "checkpoints" / "last.pt").exists():
        raise UserError(f"{run_dir}: already holds a run; use --resume to continue it, or another --out "
                        f"(nothing was changed)")
