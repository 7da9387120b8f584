"""A run folder and every file in it, in one place.

    <run>/config.toml           the resolved recipe (every key), reloadable
    <run>/env.json              versions, device, world size, git commit, split sizes
    <run>/metrics.jsonl         one object per epoch (journal)
    <run>/summary.csv           metrics.jsonl flattened, rewritten after every epoch
    <run>/final.json            the final evaluation and the run's identity (method, modalities, seed, mode)
    <run>/blend_weights.jsonl   G-Blend: one object per estimation (journal)
    <run>/early_stop.json       naive runs: the best-by-V checkpoint's final evaluation (early stopping)
    <run>/checkpoints/last.pt, best.pt

Every write is atomic or a whole appended line; only the writing process (rank 0) writes. A
folder's files carry `format_version`; files from a newer gblend are refused here, once, rather
than read with a layout this version does not know.
"""

from __future__ import annotations

import json
import math
import platform
import subprocess
import tomllib
from pathlib import Path

from . import FORMAT_VERSION, __version__
from .config import DEFAULTS, to_toml
from .errors import UserError
from .experiment import RunKey
from .storage import (append_jsonl, read_jsonl, require_known_format, rewrite_jsonl_atomic, torch_save_atomic,
                      write_json_atomic, write_text_atomic)

# recipe keys that may differ on --resume: where and how fast a run executes, not what it computes
RESUME_MAY_CHANGE = {("train", "workers"), ("train", "threads"), ("train", "device"), ("prepare", "workers"),
                     ("dataset", "data_dir"), ("dataset", "results_dir")}
JOURNALS = ("metrics.jsonl", "blend_weights.jsonl")
# recipe keys that may differ between a run and the finished runs it reads (offline G-Blend's
# estimators, UMT's teachers, UME's members): where and how fast they ran; every other key of
# these sections must agree, the seed included
SAME_SETUP_SECTIONS = ("dataset", "prepare", "demo", "clip", "model", "train")
SAME_SETUP_EXCEPT = {("train", "workers"), ("train", "threads"), ("train", "device"), ("prepare", "workers"),
                     ("dataset", "results_dir")}


class RunFolder:
    """One run's folder. With `writer=False` (ranks > 0 of a distributed run) writes do nothing."""

    def __init__(self, path: Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self._final: dict | None = None
        self._metrics: list[dict] | None = None

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / "last.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    # --- reading ------------------------------------------------------------------------------
    def has_run(self) -> bool:
        """A run was started here (a checkpoint) or finished (final.json)."""
        return self.is_complete() or self.has_checkpoint()

    def is_complete(self) -> bool:
        return (self.path / "final.json").exists()

    def has_checkpoint(self) -> bool:
        """Something to resume from: last.pt, or an offline estimation in progress (estimation.pt)."""
        return self.last.exists() or self.estimation.exists()

    @property
    def estimation(self) -> Path:
        return self.checkpoints / "estimation.pt"

    def final(self) -> dict | None:
        """final.json (None when absent or unreadable); refused when written by a newer gblend."""
        if self._final is None:
            path = self.path / "final.json"
            try:
                final = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError):
                return None
            if not isinstance(final, dict):
                return None
            require_known_format(final, path)
            self._final = final
        return self._final

    def key(self) -> RunKey | None:
        """The run's identity from final.json; None when this is not a finished gblend run."""
        final = self.final()
        try:
            return RunKey.from_final(final) if final else None
        except (KeyError, TypeError, ValueError):
            return None

    def metrics(self) -> list[dict]:
        """metrics.jsonl rows (read once)."""
        if self._metrics is None:
            self._metrics = read_jsonl(self.path / "metrics.jsonl")
        return self._metrics

    def blend_rows(self) -> list[dict]:
        return read_jsonl(self.path / "blend_weights.jsonl")

    def load_checkpoint(self, which: str = "last") -> dict:
        return load_checkpoint(self.checkpoints / f"{which}.pt")

    @staticmethod
    def discover(results: Path) -> list["RunFolder"]:
        """Every finished run folder under `results` (one with a readable final.json naming a run)."""
        found = []
        for fj in sorted(Path(results).rglob("final.json")):
            folder = RunFolder(fj.parent, writer=False)
            if folder.key() is not None:
                found.append(folder)
        return found

    # --- writing ------------------------------------------------------------------------------
    def start(self, cfg: dict, env_info: dict, resume_from: int | None) -> None:
        """Claim the folder for a run: from scratch, drop the files an earlier run left; resuming
        from epoch N, drop journal rows written after checkpoint N (they are recomputed exactly)."""
        if not self.writer:
            return
        if resume_from is None:
            for stale in ("metrics.jsonl", "blend_weights.jsonl", "summary.csv", "final.json", "early_stop.json"):
                (self.path / stale).unlink(missing_ok=True)
        else:
            rewrite_jsonl_atomic(self.path / "metrics.jsonl",
                                 [r for r in read_jsonl(self.path / "metrics.jsonl") if r["epoch"] <= resume_from])
            if (self.path / "blend_weights.jsonl").exists():
                rewrite_jsonl_atomic(self.path / "blend_weights.jsonl",
                                     [r for r in self.blend_rows() if r["epoch"] < resume_from])
        self._metrics = None
        write_text_atomic(self.path / "config.toml", to_toml(cfg))
        write_json_atomic(self.path / "env.json", env_info)

    def log_metrics(self, row: dict) -> None:
        """One epoch's row: metrics.jsonl, then summary.csv rewritten from it."""
        if not self.writer:
            return
        append_jsonl(self.path / "metrics.jsonl", row)
        self._metrics = None
        self._write_summary_csv()

    def log_blend(self, row: dict) -> None:
        if self.writer:
            append_jsonl(self.path / "blend_weights.jsonl", row)

    def early_stop(self) -> dict | None:
        """early_stop.json (naive runs): best.pt's final evaluation; None when absent."""
        path = self.path / "early_stop.json"
        try:
            row = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        if isinstance(row, dict):
            require_known_format(row, path)
        return row if isinstance(row, dict) else None

    def write_early_stop(self, row: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / "early_stop.json", {**row, "format_version": FORMAT_VERSION})

    def write_final(self, final: dict) -> None:
        if self.writer:
            write_json_atomic(self.path / "final.json", {**final, "format_version": FORMAT_VERSION})
            self._final = None

    def save_checkpoint(self, state: dict, is_best: bool) -> None:
        """last.pt, and best.pt first when this epoch is the best so far (so a kill between the two
        never leaves last.pt recording a best.pt that was not written)."""
        if not self.writer:
            return
        state = {**state, "format_version": FORMAT_VERSION}
        if is_best:
            torch_save_atomic(self.best, state)
        torch_save_atomic(self.last, state)

    def save_estimation(self, state: dict) -> None:
        """checkpoints/estimation.pt: an estimation in progress (G-Blend's estimators after an epoch)."""
        if self.writer:
            torch_save_atomic(self.estimation, {**state, "format_version": FORMAT_VERSION})

    def estimation_state(self, cfg: dict, epoch: int, n_epochs: int) -> dict | None:
        """The saved estimation that started at `epoch` for `n_epochs`, if there is one (checked to
        come from the same recipe); None otherwise."""
        if not self.estimation.exists():
            return None
        state = load_checkpoint(self.estimation)
        if state.get("epoch") != epoch or state.get("n_epochs") != n_epochs:
            return None
        self._same_recipe(state["config"], cfg)
        return state

    def drop_estimation(self) -> None:
        if self.writer:
            self.estimation.unlink(missing_ok=True)

    def _same_recipe(self, saved_toml: str, cfg: dict) -> None:
        old, new = tomllib.loads(saved_toml), tomllib.loads(to_toml(cfg))
        for section, values in new.items():
            for k, value in values.items():
                was = old.get(section, {}).get(k, DEFAULTS.get(section, {}).get(k))  # a key added since: its default
                if (section, k) not in RESUME_MAY_CHANGE and was != value:
                    raise UserError(f"{self.path}: --resume with a different recipe: {section}.{k} was "
                                    f"{was!r}, now {value!r}; use the original settings or a new --out")

    def check_same_recipe(self, cfg: dict) -> None:
        """The finished run here ran with `cfg` (its config.toml), up to where and how fast."""
        try:
            saved = (self.path / "config.toml").read_text()
        except OSError:
            raise UserError(f"{self.path}: no config.toml; not a gblend run folder") from None
        self._same_recipe(saved, cfg)

    def check_same_setup(self, cfg: dict, why: str) -> None:
        """The finished run here ran with the data, model and training recipe of `cfg` (same seed),
        up to SAME_SETUP_EXCEPT; `why` ends the message when it did not."""
        ours = tomllib.loads(to_toml(cfg))
        theirs = tomllib.loads((self.path / "config.toml").read_text())
        for section in SAME_SETUP_SECTIONS:
            for k, v in ours[section].items():
                was = theirs.get(section, {}).get(k, DEFAULTS.get(section, {}).get(k))  # a key added since: its default
                if (section, k) not in SAME_SETUP_EXCEPT and was != v:
                    raise UserError(f"{self.path}: ran with {section}.{k} = {was!r}, this run with {v!r}; {why}")

    def resume_state(self, cfg: dict, key: RunKey) -> dict:
        """last.pt, checked to belong to the same run with the same recipe."""
        state = self.load_checkpoint("last")
        self._same_recipe(state["config"], cfg)
        spec = state["spec"]
        if spec["modalities"] != list(key.modalities) or spec["method"] != key.method:
            raise UserError(f"{self.path}: --resume of a {spec['method']} run on {','.join(spec['modalities'])} "
                            f"with {key.method} on {','.join(key.modalities)}")
        return state

    def _write_summary_csv(self) -> None:
        """summary.csv mirrors metrics.jsonl, one row per epoch, flattened (split_head_metric)."""
        cols: list[str] = []
        flat_rows = []
        for r in self.metrics():
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
        write_text_atomic(self.path / "summary.csv", "\n".join(lines) + "\n")


def finished_runs(sources, want: dict[str, tuple[str, tuple[str, ...]]], option: str, needs: str) -> dict[str, RunFolder]:
    """{role: the run among `sources` whose (method, modalities) is want[role]}: the finished runs a
    run reads (`option` names the recipe key they came from; `needs` says what it needs)."""
    found: dict[str, RunFolder] = {}
    for src in sources:
        f = RunFolder(src, writer=False)
        key = f.key()
        if key is None:
            raise UserError(f"{src}: not a finished gblend run ({option} needs final.json)")
        for role, (method, mods) in want.items():
            if key.method == method and key.modalities == tuple(mods):
                found[role] = f
    missing = [r for r in want if r not in found]
    if missing:
        raise UserError(f"{option}: no {', '.join(missing)} run among {', '.join(map(str, sources))} ({needs})")
    return {r: found[r] for r in want}


def load_checkpoint(path: Path) -> dict:
    """A checkpoint (only tensors and plain data: loaded with weights_only=True), refused when
    unreadable or written by a newer gblend."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
        raise UserError(f"{path}: cannot load checkpoint ({type(e).__name__}: {' '.join(str(e).split())[:120]})") from None
    require_known_format(state, path)
    return state


def environment_info(device, world: int, amp_dtype, splits: dict) -> dict:
    """env.json: what ran this run, where."""
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "gblend": __version__, "torch": torch.__version__, "python": platform.python_version(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "world_size": world, "threads": torch.get_num_threads(), "git_commit": commit,
        "host": platform.node(), "amp": str(amp_dtype) if amp_dtype else "none",
        "splits": splits,
    }


def best_score(metrics: dict, head: str) -> float:
    """What best.pt is chosen by: the head's top-1 on V; -inf when this epoch was not evaluated or
    the run has no V (then no best.pt is written: choosing an epoch on the evaluation split would
    break the protocol, README "One protocol for every method"). The reported numbers are always
    the last epoch's."""
    score = (metrics.get("holdout") or {}).get(head, {}).get("top1")
    return -math.inf if score is None else score
