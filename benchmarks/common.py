"""What every benchmark section shares: sizes, the log, the statistics, the table, the machine, and
the set-up (`Ctx`: demo corpus, prepared data, recipe, trainers, cached batches).

The sections reach the training core only through its public interfaces (engine, data, Trainer,
RunContext), so a redesign of the core's insides cannot silently change what they measure.
Heavy imports (torch, gblend_cli) happen inside the functions: `--render` needs none of them.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO_RECIPE = REPO / "recipes" / "demo.toml"

# Sizes. The models, clip shape (8 frames x 16 x 16 RGB/flow, 100 x 40 log-mel) and batch size (32)
# are the demo recipe's throughout; only the number of clips and repetitions change.
SIZES = {
    "quick": {"train_videos": 320, "test_videos": 80, "mem_small": 80, "decode_clips": 80, "reps": 5,
              "stage_clips": 20, "est_epochs": 1, "scaling": [64, 128, 256], "ddp_epochs": 7, "ddp_pairs": 2,
              "disk_clips": 24, "store_clips": 12, "store_batches": 4},
    "full": {"train_videos": 800, "test_videos": 200, "mem_small": 100, "decode_clips": 200, "reps": 7,
             "stage_clips": 40, "est_epochs": 2, "scaling": [128, 256, 512], "ddp_epochs": 8, "ddp_pairs": 5,
             "disk_clips": 64, "store_clips": 24, "store_batches": 8},
}

_T0 = time.perf_counter()


def elapsed() -> float:
    """Seconds since the benchmarks started (this module's import)."""
    return time.perf_counter() - _T0


def log(msg: str) -> None:
    print(f"[{elapsed():6.1f}s] {msg}", flush=True)


def fmt_rate(x: float) -> str:
    return f"{x:,.0f} clips/s" if x >= 100 else f"{x:.1f} clips/s"


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# --- statistics -----------------------------------------------------------------------------------
def med(xs) -> float:
    return float(statistics.median(xs))


def paired_ratio(subject: list[float], baseline: list[float]) -> float:
    """Median of the per-repetition ratios (subject and baseline measured side by side)."""
    return med([s / b for s, b in zip(subject, baseline)])


def interleave(subjects: dict, reps: int, warmup: int = 1, label: str = "") -> dict[str, list[float]]:
    """Run each callable `warmup` times, then `reps` rounds, rotating the order every round.
    Each callable returns the seconds of the part it measures."""
    names = list(subjects)
    for _ in range(warmup):
        for n in names:
            subjects[n]()
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(reps):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            out[n].append(subjects[n]())
    if label:
        log(f"{label}: " + ", ".join(f"{n} {1000 * med(v):.0f} ms" for n, v in out.items()))
    return out


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y = a + b x -> (a, b, R^2)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0


# --- the table ------------------------------------------------------------------------------------
class Table:
    COLUMNS = ("#", "figure", "measured", "baseline (same run)", "ratio", "target", "status")

    def __init__(self):
        self.rows: list[dict] = []

    def add(self, sec: str, figure: str, measured: str, baseline: str, ratio: float | None, target: str = "",
            ok: bool | None = None, note: str = "") -> None:
        self.rows.append({"section": sec, "figure": figure, "measured": measured, "baseline": baseline,
                          "ratio": ratio, "target": target,
                          "status": "" if ok is None else ("ok" if ok else "MISSED"), "note": note})

    @staticmethod
    def render(rows: list[dict]) -> str:
        from tabulate import tabulate

        body = [[r["section"], r["figure"], r["measured"], r["baseline"],
                 "" if r["ratio"] is None else f"{r['ratio']:.2f}x", r["target"], r["status"]] for r in rows]
        return tabulate(body, headers=Table.COLUMNS, tablefmt="github", disable_numparse=True)


# --- the machine ----------------------------------------------------------------------------------
def machine_info() -> dict:
    import torch

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kb = int(Path("/proc/meminfo").read_text().split("MemTotal:")[1].split()[0])
    return {"cpu_model": model or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "memory_gb": round(mem_kb / 2**20, 1), "torch": torch.__version__, "python": platform.python_version(),
            "platform": platform.platform(), "host": platform.node(), "cuda": torch.cuda.is_available(),
            "loadavg_start": os.getloadavg()}


def machine_slug(info: dict) -> str:
    cpu = re.sub(r"\(r\)|\(tm\)|cpu|processor|@.*|\d+-core", "", info["cpu_model"].lower())
    cpu = re.sub(r"[^a-z0-9]+", "-", cpu).strip("-")[:32] or "cpu"
    return f"{info['cores']}cpu-{cpu}"


# --- training on given batches ----------------------------------------------------------------------
class CachedLoader:
    """Pre-loaded batches in place of a DataLoader. `engine.train_one_epoch` only iterates a loader
    and calls `set_epoch` on its dataset and sampler where they have one: fixed batches have
    neither, so both are None."""

    dataset = None
    sampler = None

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def train_epoch(trainer, loader, weights: dict[str, float], epoch: int) -> dict[str, float]:
    """One epoch of `trainer`'s model, optimiser and schedule over `loader` (cached batches, a subset
    of T), with the same arguments `Trainer.run_epoch` passes for its own loader."""
    from gblend_cli.engine import train_one_epoch

    return train_one_epoch(trainer.model, loader, trainer.optimizer, trainer.scheduler, weights, epoch=epoch,
                           precision=trainer.precision, scaler=trainer.scaler, modalities=trainer.key.modalities,
                           multilabel=trainer.data.ds.multilabel, grad_clip=trainer.tcfg["grad_clip"])


# --- shared set-up ----------------------------------------------------------------------------------
class Ctx:
    def __init__(self, work: Path, sizes: dict, quick: bool):
        self.work, self.S, self.quick = work, sizes, quick
        self.media = work / "media"
        self.prepared = work / "prepared"
        self.table = Table()
        self.details: dict = {}
        self.trainers: dict = {}
        self.batches = None

    # subprocesses: quiet, 1 thread each
    @staticmethod
    def env() -> dict:
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TERM": "dumb", "COLUMNS": "200",
                    "PYTHONPATH": str(REPO) + os.pathsep + env.get("PYTHONPATH", "")})
        return env

    def child(self, mode: str, spec: dict, tag: str) -> dict:
        """Run `benchmarks._child <mode>` in a fresh process, echo its progress, return its result."""
        spec_path, out_path = self.work / f"{tag}.spec.json", self.work / f"{tag}.result.json"
        spec_path.write_text(json.dumps(spec))
        out_path.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks._child", mode, "--spec", str(spec_path),
                                 "--out", str(out_path)], cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        t = threading.Thread(target=lambda: err.extend(proc.stderr), daemon=True)
        t.start()
        for line in proc.stdout:  # the child's progress lines
            log("  " + line.rstrip())
        proc.wait()
        t.join()
        if proc.returncode != 0 or not out_path.exists():
            raise RuntimeError(f"benchmarks._child {mode} failed (exit {proc.returncode}): {''.join(err)[-2000:]}")
        return json.loads(out_path.read_text())

    def corpus(self) -> None:
        """The demo's mp4 files (Kinetics layout + CSVs), rendered once per work folder."""
        from gblend_cli.config import load_config
        from gblend_cli.prepare import generate_demo_media

        t = time.perf_counter()
        cfg = load_config(DEMO_RECIPE, {"demo.train_videos": self.S["train_videos"],
                                        "demo.test_videos": self.S["test_videos"], "prepare.workers": 2})
        generate_demo_media(cfg, self.media)
        n = len(list((self.media / "videos").rglob("*.mp4")))
        log(f"set-up: {n} demo mp4 files in {self.media} ({time.perf_counter() - t:.1f}s)")
        self.ann_all = [str(self.media / "annotations" / "train.csv"), str(self.media / "annotations" / "validate.csv")]
        lines = (self.media / "annotations" / "train.csv").read_text().splitlines()
        for name, k in (("small", self.S["mem_small"]), ("decode", self.S["decode_clips"])):
            p = self.work / f"ann-{name}.csv"
            p.write_text("\n".join(lines[:k + 1]) + "\n")
            setattr(self, f"ann_{name}", str(p))

    def memory_run(self, which: str) -> dict:
        ann = [self.ann_small] if which == "small" else self.ann_all
        out = self.work / "prep-small" if which == "small" else self.prepared
        return self.child("memory", {"recipe": str(DEMO_RECIPE), "root": str(self.media / "videos"), "annotations": ann,
                                     "workers": 2, "out_dir": str(out)}, f"memory-{which}")

    def ensure_prepared(self) -> None:
        if not (self.prepared / "dataset.json").exists():
            log("set-up: preparing the benchmark dataset")
            self.details["memory_large"] = self.memory_run("large")

    # trainers on the prepared demo data (constructing a Trainer writes nothing; only fit() does)
    def cfg(self) -> dict:
        from gblend_cli.config import load_config

        return load_config(DEMO_RECIPE, {"dataset.data_dir": str(self.prepared)})

    def trainer(self, name: str, method: str, mods: list[str]):
        """The Trainer of a `method` run on `mods` (its heads follow from its RunKey), built once."""
        if name not in self.trainers:
            from gblend_cli.experiment import RunKey
            from gblend_cli.run_folder import RunFolder
            from gblend_cli.train import Trainer

            cfg = self.cfg()
            self.trainers[name] = Trainer(cfg, RunKey.for_config(method, mods, cfg),
                                          RunFolder(self.work / "runs" / name), self.prepared)
        return self.trainers[name]

    def naive(self):
        return self.trainer("naive", "naive", ["audio", "rgb"])

    def cached_batches(self) -> list[dict]:
        """The naive trainer's epoch-0 batches of T, loaded once."""
        if self.batches is None:
            loader = self.naive().data.train_loader
            loader.dataset.set_epoch(0)
            loader.sampler.set_epoch(0)
            self.batches = list(loader)
        return self.batches
