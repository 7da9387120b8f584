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

Damage is found, never trained on: every checkpoint carries a checksum of its state (integrity.py)
and a copy of the journals' rows so far. A damaged last.pt is replaced on --resume by best.pt
when that one is whole (the epochs after it are trained again, to the same numbers); a journal
with a damaged line is refused by readers (report) and rewritten from last.pt by --resume.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tomllib
from pathlib import Path

from . import FORMAT_VERSION, __version__
from .config import read_saved_toml, saved_value, to_toml
from .errors import UserError
from .experiment import RunKey
from .integrity import state_checksum
from .run_schema import names_earlier_estimate, final_problem, row_problem
from .storage import (LOCK_FILE, append_jsonl, read_jsonl, remove_stale_temps, require_known_format, rewrite_jsonl_atomic,
                      stale_temps, torch_save_atomic, write_json_atomic, write_text_atomic)

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


def estimate_in_force(rows: list[dict]) -> dict | None:
    """Of a run's blend_weights.jsonl rows, the G-Blend estimate whose weights the run ended with:
    the last row, or, where that online estimate kept the weights in force (`blend.keep_weights`),
    the row they came from. None without rows."""
    if not rows or rows[-1].get("kept_from") is None:
        return rows[-1] if rows else None
    return next(r for r in rows if r["epoch"] == rows[-1]["kept_from"])


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
            problem = final_problem(final)
            if problem:
                raise UserError(f"{path}: damaged ({problem}); delete it and run the same train command with "
                                f"--resume to evaluate the run again")
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
        """metrics.jsonl rows (read once); a damaged line is refused (`journal`)."""
        if self._metrics is None:
            self._metrics = self.journal("metrics.jsonl")
        return self._metrics

    def blend_rows(self) -> list[dict]:
        return self.journal("blend_weights.jsonl")

    def blend_in_force(self) -> dict | None:
        return estimate_in_force(self.blend_rows())

    def journal(self, name: str, strict: bool = True) -> list[dict]:
        """A journal's rows. A whole line that is not a row (damage, not a cut last line) is an
        error with `strict`: a row silently lost would change a report's numbers."""
        path = self.path / name
        damaged: list[int] = []
        rows = read_jsonl(path, damaged)
        bad = [n for n, r in enumerate(rows, 1) if row_problem(name, r) or
               (name == "blend_weights.jsonl" and not names_earlier_estimate(r, rows[:n - 1]))]
        if strict and (damaged or bad):
            line = min(damaged + bad) if not damaged or not bad else min(damaged[0], bad[0])
            raise UserError(f"{path}: line {line} is damaged; the same train command with --resume rewrites it "
                            f"from {self.last}")
        return [r for n, r in enumerate(rows, 1) if n not in bad]

    def damaged_journals(self) -> list[str]:
        out = []
        for name in JOURNALS:
            try:
                self.journal(name)
            except UserError:
                out.append(name)
        return out

    def env_info(self) -> dict | None:
        """env.json (what the run's last start ran on); None when absent or unreadable."""
        try:
            info = json.loads((self.path / "env.json").read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

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
    def start(self, cfg: dict, env_info: dict, resume_from: int | None, journals: dict | None = None) -> None:
        """Claim the folder for a run: from scratch, drop the files an earlier run left; resuming
        from epoch N, drop journal rows written after checkpoint N (they are recomputed exactly)
        and restore damaged ones from the checkpoint's copy (`journals`)."""
        if not self.writer:
            return
        remove_stale_temps(self.path, self.checkpoints)  # left by a killed run; we hold the lock
        if resume_from is None:
            for stale in ("metrics.jsonl", "blend_weights.jsonl", "summary.csv", "final.json", "early_stop.json"):
                (self.path / stale).unlink(missing_ok=True)
        else:
            self.restore_journals(journals or {}, resume_from)
        self._metrics = None
        write_text_atomic(self.path / "config.toml", to_toml(cfg))
        write_json_atomic(self.path / "env.json", env_info)

    def restore_journals(self, journals: dict, upto: int) -> None:
        """Rewrite the journals up to checkpoint `upto`: the rows the checkpoint carries
        (`journals`: {file name: rows}, whole by its checksum) where it has them, else the file's
        whole rows. metrics.jsonl keeps epochs <= upto, blend_weights.jsonl estimations < upto."""
        keep = {"metrics.jsonl": lambda e: e <= upto, "blend_weights.jsonl": lambda e: e < upto}
        for name in JOURNALS:
            rows = journals.get(name)
            if rows is None:  # a checkpoint of an older gblend: the file's rows, refused when damaged
                if not (self.path / name).exists():
                    continue
                rows = self.journal(name)
            rewrite_jsonl_atomic(self.path / name, [r for r in rows if keep[name](r["epoch"])])
        if upto and (self.path / "metrics.jsonl").exists():
            self._metrics = None
            self._write_summary_csv()

    def left_by_a_kill(self) -> bool:
        """What a run killed after its last write but before releasing the folder leaves beside its
        files: the `.lock` file (harmless to flock, but a stale lock to the lock-file fallback of
        file systems without flock) or atomic-write temps. Only where this process could remove them."""
        return os.access(self.path, os.W_OK) and ((self.path / LOCK_FILE).exists() or
                                                   bool(stale_temps(self.path, self.checkpoints)))

    def tidy_finished(self) -> list[str]:
        """A finished run made whole again (call while holding its lock, whose release removes
        `.lock`): damaged journals rewritten from last.pt's copy (`repair_journals`), stale temps
        removed. Returns the journals rewritten."""
        remove_stale_temps(self.path, self.checkpoints)
        return self.repair_journals()

    def repair_journals(self) -> list[str]:
        """A finished run's damaged journals rewritten from last.pt's copy; the names repaired."""
        damaged = self.damaged_journals()
        if damaged:
            state = self.load_checkpoint("last")
            journals = state.get("journals")
            if journals is None:
                raise UserError(f"{self.path / damaged[0]}: damaged, and {self.last} (an older gblend's) holds no copy; "
                                f"train the run again with a new --out")
            self.restore_journals(journals, state["epoch"])
        return damaged

    def journal_copy(self) -> dict:
        """The journals' rows so far, for a checkpoint (rank 0 only writes them)."""
        return {name: self.journal(name, strict=False) for name in JOURNALS}

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
        state = {**state, "format_version": FORMAT_VERSION, "journals": self.journal_copy()}
        state["checksum"] = state_checksum(state)
        if is_best:
            torch_save_atomic(self.best, state)
        torch_save_atomic(self.last, state)

    def save_estimation(self, state: dict) -> None:
        """checkpoints/estimation.pt: an estimation in progress (G-Blend's estimators after an epoch)."""
        if self.writer:
            state = {**state, "format_version": FORMAT_VERSION}
            torch_save_atomic(self.estimation, {**state, "checksum": state_checksum(state)})

    def estimation_state(self, cfg: dict, epoch: int, n_epochs: int) -> dict | None:
        """The saved estimation that started at `epoch` for `n_epochs`, if there is one (checked to
        come from the same recipe); None otherwise."""
        if not self.estimation.exists():
            return None
        try:
            state = load_checkpoint(self.estimation)
        except DamagedCheckpoint as e:  # estimated again from its start, to the same weights
            from .ui import console

            console.print(f"warning: {e}; estimating again from epoch {epoch}", soft_wrap=True)
            return None
        if state.get("epoch") != epoch or state.get("n_epochs") != n_epochs:
            return None
        self._same_recipe(tomllib.loads(state["config"]), cfg)
        return state

    def drop_estimation(self) -> None:
        if self.writer:
            self.estimation.unlink(missing_ok=True)

    def saved_recipe(self) -> dict:
        """config.toml, parsed (saved_value reads keys added since); one line when it is missing or damaged."""
        try:
            return read_saved_toml(self.path / "config.toml", "train this run again (delete its folder) or use a new --out")
        except OSError:
            raise UserError(f"{self.path}: no config.toml; not a gblend run folder") from None

    def _same_recipe(self, old: dict, cfg: dict) -> None:
        new = tomllib.loads(to_toml(cfg))
        for section, values in new.items():
            for k, value in values.items():
                was = saved_value(old, section, k)
                if (section, k) not in RESUME_MAY_CHANGE and was != value:
                    raise UserError(f"{self.path}: --resume with a different recipe: {section}.{k} was "
                                    f"{was!r}, now {value!r}; use the original settings or a new --out")

    def check_same_recipe(self, cfg: dict) -> None:
        """The finished run here ran with `cfg` (its config.toml), up to where and how fast."""
        self._same_recipe(self.saved_recipe(), cfg)

    def check_same_setup(self, cfg: dict, why: str) -> None:
        """The finished run here ran with the data, model and training recipe of `cfg` (same seed),
        up to SAME_SETUP_EXCEPT; `why` ends the message when it did not."""
        ours = tomllib.loads(to_toml(cfg))
        theirs = self.saved_recipe()
        for section in SAME_SETUP_SECTIONS:
            for k, v in ours[section].items():
                was = saved_value(theirs, section, k)
                if (section, k) not in SAME_SETUP_EXCEPT and was != v:
                    raise UserError(f"{self.path}: ran with {section}.{k} = {was!r}, this run with {v!r}; {why}")

    def resume_state(self, cfg: dict, key: RunKey) -> dict:
        """last.pt, checked to belong to the same run with the same recipe; when last.pt is
        damaged, best.pt (an earlier epoch's whole state: the epochs after it are trained again)."""
        try:
            state = self.load_checkpoint("last")
        except DamagedCheckpoint as e:
            try:
                state = self.load_checkpoint("best")
            except DamagedCheckpoint:
                raise UserError(f"{e}, and there is no whole {self.best} to resume from; delete {self.checkpoints} to "
                                f"train this run again from the start, or use a new --out") from None
            from .ui import console

            console.print(f"warning: {e}; resuming from {self.best} (epoch {state['epoch']}) instead", soft_wrap=True)
        self._same_recipe(tomllib.loads(state["config"]), cfg)
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


class DamagedCheckpoint(UserError):
    """A checkpoint that is missing, does not load or whose state differs from its checksum."""


def finished_runs(sources, want: dict[str, tuple[str, tuple[str, ...]]], option: str, needs: str) -> dict[str, RunFolder]:
    """{role: the run among `sources` whose (method, modalities) is want[role]}: the finished runs a
    run reads (`option` names the recipe key they came from; `needs` says what it needs)."""
    return {r: runs[-1] for r, runs in finished_run_sets(sources, want, option, needs).items()}


def finished_run_sets(sources, want: dict[str, tuple[str, tuple[str, ...]]], option: str,
                      needs: str) -> dict[str, list[RunFolder]]:
    """{role: every run among `sources` whose (method, modalities) is want[role], in the order given}."""
    found: dict[str, list[RunFolder]] = {r: [] for r in want}
    for src in sources:
        f = RunFolder(src, writer=False)
        key = f.key()
        if key is None:
            raise UserError(f"{src}: not a finished gblend run ({option} needs final.json)")
        for role, (method, mods) in want.items():
            if key.method == method and key.modalities == tuple(mods):
                found[role].append(f)
    missing = [r for r in want if not found[r]]
    if missing:
        raise UserError(f"{option}: no {', '.join(missing)} run among {', '.join(map(str, sources))} ({needs})")
    return found


def load_checkpoint(path: Path) -> dict:
    """A checkpoint (only tensors and plain data: loaded with weights_only=True), refused when
    unreadable, damaged (its checksum) or written by a newer gblend."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path}: no such checkpoint") from None
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is a user-facing error
        raise DamagedCheckpoint(f"{path}: cannot load checkpoint, damaged or cut short "
                                f"({type(e).__name__}: {' '.join(str(e).split())[:100]})") from None
    if not isinstance(state, dict):
        raise DamagedCheckpoint(f"{path}: not a gblend checkpoint")
    require_known_format(state, path)
    if "checksum" in state and state_checksum(state) != state["checksum"]:
        raise DamagedCheckpoint(f"{path}: damaged checkpoint (its contents differ from its checksum)")
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
