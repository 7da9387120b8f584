"""gblend's CPU benchmarks: every figure a ratio against a baseline measured in the same run.

    python -m benchmarks.run [--quick] [--work DIR --keep] [--only decode,loading,core,gblend,scaling]
    python -m benchmarks.run --render benchmarks/results/2026-11-28-2cpu-amd-epyc.json   # markdown table

Prints one table and writes benchmarks/results/<YYYY-MM-DD>-<machine>.json (every sample, the
machine, the sizes). Timings are medians of >= 5 repetitions; where a figure compares two things,
they are measured alternately (the order rotates each repetition) and the ratio is the median of
the per-repetition ratios, so a slow stretch of a shared machine hits both sides.

Sections (see docs/PERFORMANCE.md for what each figure means and the latest numbers):
  1 decode   prepare-data clips/s per worker vs the ffmpeg command line decoding the same files;
             1 vs 2 workers; peak memory of the preparing processes, small vs large dataset
  2 loading  data-loader clips/s vs training clips/s on the same batches (demo models); bytes per
             Kinetics-sized clip and memory-mapped read throughput on this disk -> loader limit
  3 core     Trainer.run_epoch per-step time vs a hand-written PyTorch loop, same model and batches
  4 gblend   G-Blend epoch vs naive epoch; Algorithm 1 in one data pass vs k+1 separate trainings;
             whole online/offline G-Blend run vs naive, computed from the measured components
  5 scaling  epoch time vs training clips (linear fit); torchrun 2 CPU processes vs 1
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "benchmarks" / "results"
DEMO_RECIPE = REPO / "recipes" / "demo.toml"
SECTIONS = ("decode", "loading", "core", "gblend", "scaling")

# Sizes. The models, clip shape (8 frames x 16 x 16 RGB/flow, 100 x 40 log-mel) and batch size (32)
# are the demo recipe's throughout; only the number of clips and repetitions change.
SIZES = {
    "quick": {"train_videos": 320, "test_videos": 80, "mem_small": 80, "decode_clips": 80, "reps": 5,
              "stage_clips": 20, "est_epochs": 1, "scaling": [64, 128, 256], "ddp_epochs": 7, "ddp_pairs": 2,
              "disk_clips": 24},
    "full": {"train_videos": 800, "test_videos": 200, "mem_small": 100, "decode_clips": 200, "reps": 7,
             "stage_clips": 40, "est_epochs": 2, "scaling": [128, 256, 512], "ddp_epochs": 8, "ddp_pairs": 5,
             "disk_clips": 64},
}

_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


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
        spec_path, out_path = self.work / f"{tag}.spec.json", self.work / f"{tag}.result.json"
        spec_path.write_text(json.dumps(spec))
        out_path.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks._child", mode, "--spec", str(spec_path),
                                 "--out", str(out_path)], cwd=REPO, env=self.env(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        err: list[str] = []
        import threading

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

    # trainers on the prepared demo data (Trainer.__init__ writes nothing; only fit() does)
    def cfg(self) -> dict:
        from gblend_cli.config import load_config

        return load_config(DEMO_RECIPE, {"dataset.data_dir": str(self.prepared)})

    def trainer(self, name: str, method: str, mods: list[str], heads: list[str]):
        if name not in self.trainers:
            from gblend_cli.train import RunSpec, Trainer

            eval_head = "fused" if "fused" in heads else heads[0]
            self.trainers[name] = Trainer(self.cfg(), RunSpec(method, mods, heads, eval_head),
                                          self.work / "runs" / name, self.prepared)
        return self.trainers[name]

    def naive(self):
        return self.trainer("naive", "naive", ["audio", "rgb"], ["fused"])

    def cached_batches(self) -> list[dict]:
        if self.batches is None:
            tr = self.naive()
            tr.train_set.set_epoch(0)
            tr.train_loader.sampler.set_epoch(0)
            self.batches = list(tr.train_loader)
        return self.batches


class CachedLoader:
    """Pre-loaded batches in place of a DataLoader (run_epoch only iterates it and asks its sampler)."""

    sampler = None

    def __init__(self, batches: list[dict]):
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


@contextlib.contextmanager
def swapped(trainer, loader, train_set=None):
    old = trainer.train_loader, trainer.train_set
    trainer.train_loader = loader
    if train_set is not None:
        trainer.train_set = train_set
    try:
        yield
    finally:
        trainer.train_loader, trainer.train_set = old


def fmt_rate(x: float) -> str:
    return f"{x:,.0f} clips/s" if x >= 100 else f"{x:.1f} clips/s"


# --- 1. decoding ----------------------------------------------------------------------------------
def find_ffmpeg() -> tuple[str | None, str]:
    try:
        import imageio_ffmpeg

        return imageio_ffmpeg.get_ffmpeg_exe(), "imageio-ffmpeg"
    except (ImportError, RuntimeError):
        pass
    exe = shutil.which("ffmpeg")
    return (exe, "PATH") if exe else (None, "")


def section_decode(ctx: Ctx) -> None:
    S, T = ctx.S, ctx.table
    log(f"1 decode: peak memory, {S['mem_small']} vs {S['train_videos'] + S['test_videos']} clips (fresh process each)")
    small = ctx.memory_run("small")
    large = ctx.memory_run("large")
    ctx.details["memory_small"], ctx.details["memory_large"] = small, large
    log(f"  small: {small['clips']} clips, max RSS main {small['maxrss_main_kb'] / 1024:.0f} MB, workers "
        f"{small['maxrss_children_kb'] / 1024:.0f} MB; large: {large['clips']} clips, main "
        f"{large['maxrss_main_kb'] / 1024:.0f} MB, workers {large['maxrss_children_kb'] / 1024:.0f} MB")

    exe, source = find_ffmpeg()
    if exe is None:
        log("  ffmpeg: not found (pip install -e '.[bench]' installs imageio-ffmpeg, which ships one): "
            "the decode-vs-ffmpeg ratio is skipped")
    log(f"1 decode: clips/s, {S['decode_clips']} clips, {S['reps']} interleaved repetitions")
    res = ctx.child("decode", {"recipe": str(DEMO_RECIPE), "root": str(ctx.media / "videos"),
                               "annotations": [ctx.ann_decode], "work": str(ctx.work / "decode"),
                               "ffmpeg": exe or "", "reps": S["reps"], "stage_clips": S["stage_clips"]}, "decode")
    ctx.details["decode"] = res | {"ffmpeg_source": source, "ffmpeg": exe}
    w1 = [s["clips_per_s"] for s in res["samples"]["prepare_w1"]]
    w2 = [s["clips_per_s"] for s in res["samples"]["prepare_w2"]]
    n = res["clips"]
    if exe:
        ff = [s["clips_per_s"] for s in res["samples"]["ffmpeg"]]
        T.add("1", f"prepare-data, 1 worker vs `ffmpeg` CLI decode to raw frames+audio (1 process per file, -threads 1), "
                   f"{n} demo clips", fmt_rate(med(w1)), fmt_rate(med(ff)), paired_ratio(w1, ff))
        start_ms = [s["ms_per_command"] for s in res["samples"]["ffmpeg_start"]]
        # per-file time minus the command start of the same repetition (a rep where noise makes it <= 0 is dropped)
        pairs = [(w, 1000 / (1000 / f - st)) for w, f, st in zip(w1, ff, start_ms) if 1000 / f - st > 0.5]
        figure = (f"prepare-data, 1 worker vs ffmpeg decode alone (per-file time minus the {med(start_ms):.0f} ms "
                  f"start of an ffmpeg command, measured alongside)")
        if len(pairs) >= (len(w1) + 1) // 2:
            T.add("1", figure, fmt_rate(med([w for w, _ in pairs])), fmt_rate(med([d for _, d in pairs])),
                  paired_ratio([w for w, _ in pairs], [d for _, d in pairs]),
                  note=f"{len(pairs)} of {len(w1)} repetitions usable")
        else:
            T.add("1", figure, fmt_rate(med(w1)), "n/a", None,
                  note="command start-up >= per-file time in most repetitions (noise): not computed")
        ctx.details["decode_ffmpeg_note"] = (f"ffmpeg CLI {1000 / med(ff):.1f} ms per file, of which "
                                             f"{med(start_ms):.1f} ms starting the command")
    else:
        T.add("1", "prepare-data, 1 worker vs `ffmpeg` CLI", fmt_rate(med(w1)), "ffmpeg not installed", None,
              note="skipped: no ffmpeg binary (pip install -e '.[bench]')")
    T.add("1", "prepare-data, 2 workers vs 1 worker (ideal 2.0x; 2 cores, shared)",
          f"{fmt_rate(med(w2))} ({med(w2) / 2:.1f}/worker)", fmt_rate(med(w1)), paired_ratio(w2, w1))
    for key, label in (("maxrss_children_kb", "largest preparing process (worker), max RSS"),
                       ("maxrss_main_kb", "main process, max RSS"),
                       ("tree_pss_kb", "all preparing processes, peak total PSS (sampled 10/s)")):
        if not small[key]:
            continue
        r = large[key] / small[key]
        T.add("1", f"{label}: {large['clips']} vs {small['clips']} clips", f"{large[key] / 1024:.0f} MB",
              f"{small[key] / 1024:.0f} MB", r, "flat (<= 1.10x)", r <= 1.10)
    per_clip_kb = (large["maxrss_main_kb"] - small["maxrss_main_kb"]) / max(1, large["clips"] - small["clips"])
    kinetics_clips = 260_000  # Kinetics-400: ~240k train + 20k validation clips
    T.add("1", f"main process growth per clip (from the two runs above), extrapolated to {kinetics_clips:,} clips "
               f"(Kinetics-400) vs its size at {small['clips']} clips",
          f"{per_clip_kb:.2f} kB/clip -> {(small['maxrss_main_kb'] + per_clip_kb * kinetics_clips) / 1024:.0f} MB",
          f"{small['maxrss_main_kb'] / 1024:.0f} MB",
          (small["maxrss_main_kb"] + per_clip_kb * kinetics_clips) / small["maxrss_main_kb"])
    st = res["stages"]
    ctx.details["decode_stage_note"] = ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in st.items()) + (
        f"; {ctx.details['decode_ffmpeg_note']}" if "decode_ffmpeg_note" in ctx.details else "")
    log("  per clip: " + ctx.details["decode_stage_note"])


# --- 2. loading -----------------------------------------------------------------------------------
KINETICS = {  # the kinetics400 recipe's storage (README "Prepared data"): 15 fps, 10 s, 4:3 frames
    "112": {"short": 128, "long": 171}, "224": {"short": 256, "long": 341}}


def clip_bytes(short: int, long: int, frames: int = 16, audio_frames: int = 100) -> dict:
    """Bytes a training clip reads from the stored arrays: `frames` full stored frames of RGB (3 x
    uint8) and flow (2 x uint8) — the crop is taken from those rows — and the log-mel window (float16)."""
    rgb, flow, audio = frames * short * long * 3, frames * short * long * 2, audio_frames * 40 * 2
    return {"rgb": rgb, "flow": flow, "audio": audio, "total": rgb + flow + audio}


def section_loading(ctx: Ctx) -> None:
    import numpy as np

    from gblend_cli.data import ClipDataset, PreparedDataset, make_loader

    S, T = ctx.S, ctx.table
    tr = ctx.naive()
    mods = tr.spec.modalities
    mm_ds = PreparedDataset(ctx.prepared, cache_bytes=0)  # memory-mapped per clip, as for a large dataset
    mm_set = ClipDataset(mm_ds, tr.train_set.items, mods, tr.cfg["clip"], train=True, seed=tr.tcfg["seed"])
    mm_loader = make_loader(mm_set, tr.batch_size, shuffle=True, seed=tr.tcfg["seed"], drop_last=True,
                            workers=tr.tcfg["workers"])
    state = {"epoch": 0, "batches": None}

    def load(loader, ds):
        def fn():
            ds.set_epoch(state["epoch"])
            loader.sampler.set_epoch(state["epoch"])
            t = time.perf_counter()
            batches = list(loader)
            dt = time.perf_counter() - t
            if ds is tr.train_set:
                state["batches"] = batches
            return dt
        return fn

    def train():
        if state["batches"] is None:
            load(tr.train_loader, tr.train_set)()
        with swapped(tr, CachedLoader(state["batches"])):
            t = time.perf_counter()
            tr.run_epoch(tr.model, tr.optimizer, tr.scheduler, {"fused": 1.0}, state["epoch"])
            dt = time.perf_counter() - t
        state["epoch"] += 1
        return dt

    clips = len(tr.train_loader) * tr.batch_size
    log(f"2 loading: loader vs training on the same {clips} clips (audio+rgb naive, batch {tr.batch_size}), "
        f"{S['reps']} repetitions")
    s = interleave({"load_ram": load(tr.train_loader, tr.train_set), "load_mmap": load(mm_loader, mm_set),
                    "train": train}, S["reps"], label="  per epoch")
    ctx.details["loading"] = s | {"clips": clips}
    for key, label in (("load_ram", "held in RAM (the demo's default)"), ("load_mmap", "memory-mapped .npy per clip")):
        r = paired_ratio(s["train"], s[key])
        T.add("2", f"data loader ({label}) vs model training, same batches", fmt_rate(clips / med(s[key])),
              fmt_rate(clips / med(s["train"])), r, ">= 3x", r >= 3)

    # Kinetics-sized clips on this disk
    K = S["disk_clips"]
    d = ctx.work / "kinetics-like"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    shapes = {"rgb": ((150, 128, 171, 3), np.uint8), "flow": ((150, 128, 171, 2), np.uint8),
              "audio": ((1000, 40), np.float16)}
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=16 << 20, dtype=np.uint8)
    t = time.perf_counter()
    files: dict[str, list[Path]] = {m: [] for m in shapes}
    for k in range(K):
        for m, (shape, dtype) in shapes.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            off = int(rng.integers(0, len(block) - nbytes)) if nbytes < len(block) else 0
            arr = block[off:off + nbytes].view(dtype).reshape(shape)
            p = d / m / f"{k:04d}.npy"
            p.parent.mkdir(exist_ok=True)
            with open(p, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[m].append(p)
    total_bytes = sum(p.stat().st_size for ps in files.values() for p in ps)
    write_s = time.perf_counter() - t
    log(f"2 loading: wrote {K} Kinetics-sized clips (150x128x171 RGB + flow + 10 s log-mel, "
        f"{total_bytes / 1e6:.0f} MB) in {write_s:.1f}s")
    all_files = [p for ps in files.values() for p in ps]

    def evict():
        for p in all_files:
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    buf = bytearray(1 << 20)

    def sequential():
        evict()
        t = time.perf_counter()
        for p in files["rgb"] + files["flow"]:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        return time.perf_counter() - t

    wb = clip_bytes(128, 171)
    warm_times: list[float] = []

    def windows():
        evict()
        picks = [(k, int(rng.integers(0, 150 - 16 + 1)), int(rng.integers(0, 128 - 112 + 1)),
                  int(rng.integers(0, 171 - 112 + 1))) for k in range(K) for _ in range(2)]
        rng.shuffle(picks)

        def read_all():
            for k, t0, y0, x0 in picks:
                for m in ("rgb", "flow"):
                    a = np.load(files[m][k], mmap_mode="r")
                    np.ascontiguousarray(a[t0:t0 + 16, y0:y0 + 112, x0:x0 + 112])
                a = np.load(files["audio"][k], mmap_mode="r")
                s0 = int(round((t0 + 8) / 15 * 100 - 50))
                np.ascontiguousarray(a[max(0, s0):max(0, s0) + 100])
        t = time.perf_counter()
        read_all()
        cold = time.perf_counter() - t
        t = time.perf_counter()
        read_all()  # the same windows again, now in the page cache
        warm_times.append(time.perf_counter() - t)
        return cold

    def pread_windows():
        """The same reads as one pread per modality window (16 contiguous stored frames)."""
        evict()
        picks = [(k, int(rng.integers(0, 150 - 16 + 1)), int(rng.integers(0, 128 - 112 + 1)),
                  int(rng.integers(0, 171 - 112 + 1))) for k in range(K) for _ in range(2)]
        rng.shuffle(picks)
        t = time.perf_counter()
        for k, t0, y0, x0 in picks:
            for m in ("rgb", "flow"):
                a = read_rows(files[m][k], t0, 16)
                np.ascontiguousarray(a[:, y0:y0 + 112, x0:x0 + 112])
            s0 = int(round((t0 + 8) / 15 * 100 - 50))
            read_rows(files["audio"][k], max(0, s0), 100)
        return time.perf_counter() - t

    cached_after_evict = fincore_bytes(files["rgb"][0]) if shutil.which("fincore") else None
    s = interleave({"sequential": sequential, "windows": windows, "pread": pread_windows}, S["reps"],
                   label="  Kinetics-sized reads")
    warm_times = warm_times[1:]  # drop the warm-up pass: one warm time per measured cold pass
    n_win = 2 * K
    seq_mbs = [(sum(p.stat().st_size for p in files["rgb"] + files["flow"]) / 1e6) / x for x in s["sequential"]]
    win_mbs = [(n_win * wb["total"] / 1e6) / x for x in s["windows"]]
    pread_mbs = [(n_win * wb["total"] / 1e6) / x for x in s["pread"]]
    ctx.details["kinetics_read"] = {"clips": K, "bytes_written": total_bytes, "write_s": write_s,
                                    "cached_bytes_after_evict": cached_after_evict, "samples": s,
                                    "warm_window_s": warm_times, "windows_per_pass": n_win,
                                    "bytes_per_clip": {k: clip_bytes(**v) for k, v in KINETICS.items()}}
    T.add("2", "memory-mapped 16-frame window reads, as ClipDataset does (page cache dropped) vs sequential "
               "read of the same files", f"{med(win_mbs):.0f} MB/s", f"{med(seq_mbs):.0f} MB/s",
          paired_ratio(win_mbs, seq_mbs))
    T.add("2", "proposed: one os.pread per 16-frame window vs memory-mapped window reads (both cold)",
          f"{med(pread_mbs):.0f} MB/s", f"{med(win_mbs):.0f} MB/s", paired_ratio(pread_mbs, win_mbs))
    for key, v in KINETICS.items():
        b = clip_bytes(v["short"], v["long"])
        limit = [m * 1e6 / b["total"] for m in win_mbs]
        warm_limit = [n_win / x * wb["total"] / b["total"] for x in warm_times]
        T.add("2", f"Kinetics 16x{key}x{key} clip ({b['total'] / 1e6:.2f} MB read: 16x{v['short']}x{v['long']} RGB+flow, "
                   f"1 s log-mel): one loader process's read limit, from disk (mmap) vs from page cache",
              fmt_rate(med(limit)), fmt_rate(med(warm_limit)), paired_ratio(limit, warm_limit))
    shutil.rmtree(d, ignore_errors=True)


def read_rows(path: Path, start: int, n: int):
    """Rows [start, start + n) of a .npy file with one pread (no memory map)."""
    import numpy as np

    with open(path, "rb", buffering=0) as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(f)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        buf = os.pread(f.fileno(), n * row, f.tell() + start * row)
    return np.frombuffer(buf, dtype).reshape((-1, *shape[1:]))


def fincore_bytes(p: Path) -> int | None:
    with contextlib.suppress(Exception):
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(p)],
                           capture_output=True, text=True, timeout=10)
        return int(r.stdout.split()[0])
    return None


# --- 3. training core -----------------------------------------------------------------------------
def section_core(ctx: Ctx) -> None:
    import torch
    import torch.nn.functional as F

    S, T = ctx.S, ctx.table
    tr = ctx.naive()
    batches = ctx.cached_batches()
    mods = tr.spec.modalities
    hand_model = copy.deepcopy(tr.model)
    tc = tr.tcfg
    hand_opt = torch.optim.SGD(hand_model.parameters(), lr=tc["lr"], momentum=tc["momentum"],
                               weight_decay=tc["weight_decay"])
    epoch = [100]

    def core():
        with swapped(tr, CachedLoader(batches)):
            t = time.perf_counter()
            tr.run_epoch(tr.model, tr.optimizer, tr.scheduler, {"fused": 1.0}, epoch[0])
            dt = time.perf_counter() - t
        epoch[0] += 1
        return dt

    def hand():
        hand_model.train()
        t = time.perf_counter()
        for b in batches:
            out = hand_model({m: b[m] for m in mods})["fused"]
            loss = F.cross_entropy(out, b["label"])
            hand_opt.zero_grad(set_to_none=True)
            loss.backward()
            hand_opt.step()
        return time.perf_counter() - t

    log(f"3 core: Trainer.run_epoch vs a hand-written loop, {len(batches)} cached batches x {S['reps'] * 2} repetitions")
    s = interleave({"run_epoch": core, "hand": hand}, S["reps"] * 2, label="  per epoch")
    ctx.details["core"] = s | {"steps": len(batches)}
    r = paired_ratio(s["run_epoch"], s["hand"])
    n = len(batches)
    T.add("3", "Trainer.run_epoch step vs hand-written loop (forward, CE, backward, SGD), same model+batches",
          f"{1000 * med(s['run_epoch']) / n:.1f} ms/step", f"{1000 * med(s['hand']) / n:.1f} ms/step", r,
          "< 1.05x", r < 1.05)


# --- 4. G-Blend -----------------------------------------------------------------------------------
def section_gblend(ctx: Ctx) -> None:
    from gblend_cli.blend import GradientBlending, estimate_blend_weights
    from gblend_cli.train import make_optimizer, make_scheduler

    S, T = ctx.S, ctx.table
    mods = ["audio", "rgb"]
    naive = ctx.naive()
    gb = ctx.trainer("gblend", "gblend", mods, mods + ["fused"])
    uni = {m: ctx.trainer(f"uni-{m}", "unimodal", [m], [m]) for m in mods}
    gcfg = gb.cfg["gblend"]
    n_est = S["est_epochs"]
    comp = {"ens_epoch": [], "fixed": []}
    last = {}

    def estimation():
        times = {"run_epoch": []}
        orig = gb.run_epoch

        def timed(*a, **k):
            t = time.perf_counter()
            r = orig(*a, **k)
            times["run_epoch"].append(time.perf_counter() - t)
            return r

        gb.run_epoch = timed
        try:
            t = time.perf_counter()
            last["row"] = estimate_blend_weights(gb, gb.model, 0, n_est, gcfg)
            dt = time.perf_counter() - t
        finally:
            del gb.run_epoch
        comp["ens_epoch"] += times["run_epoch"]
        comp["fixed"].append(dt - sum(times["run_epoch"]))
        return dt

    def separate():
        t = time.perf_counter()
        src = gb.model
        for trainer in (uni["audio"], uni["rgb"], naive):
            model = trainer._new_model()
            for m in trainer.spec.modalities:
                model.backbones[m].load_state_dict(src.backbones[m].state_dict())
                if m in model.heads:
                    model.heads[m].load_state_dict(src.heads[m].state_dict())
            if hasattr(model, "fused"):
                model.fused.load_state_dict(src.fused.state_dict())
            heads = trainer.spec.heads
            opt = make_optimizer(model.parameters(), trainer.tcfg)
            sched = make_scheduler(opt, trainer.steps_per_epoch, trainer.tcfg)
            for s in ("train", "holdout"):
                trainer.evaluate(model, trainer.eval_sets[s], heads)
            for e in range(n_est):
                trainer.run_epoch(model, opt, sched, {h: 1.0 for h in heads}, e)
            for s in ("train", "holdout"):
                trainer.evaluate(model, trainer.eval_sets[s], heads)
        return time.perf_counter() - t

    log(f"4 gblend: Algorithm 1 ({len(mods) + 1} estimators, {n_est} epoch(s), evaluation on T' and V before and "
        f"after) in one pass vs {len(mods) + 1} separate trainings, {S['reps']} repetitions")
    s_est = interleave({"one_pass": estimation, "separate": separate}, S["reps"], label="  per estimation")
    comp["ens_epoch"], comp["fixed"] = comp["ens_epoch"][n_est:], comp["fixed"][1:]  # drop the warm-up run
    r = paired_ratio(s_est["one_pass"], s_est["separate"])
    T.add("4", f"G-Blend weight estimation (k+1={len(mods) + 1} estimators, {n_est} epoch(s), one data pass) vs "
               f"{len(mods) + 1} separate trainings of the same epochs", f"{med(s_est['one_pass']):.2f} s",
          f"{med(s_est['separate']):.2f} s", r)
    weights = {h: v["w"] for h, v in last["row"]["heads"].items()}

    epoch = [200]

    def run(trainer, w):
        def fn():
            t = time.perf_counter()
            trainer.run_epoch(trainer.model, trainer.optimizer, trainer.scheduler, w, epoch[0])
            epoch[0] += 1
            return time.perf_counter() - t
        return fn

    def evaluate(trainer):
        def fn():
            t = time.perf_counter()
            trainer.evaluate_splits(trainer.model, trainer.spec.heads)
            return time.perf_counter() - t
        return fn

    log(f"4 gblend: G-Blend epoch (weights {', '.join(f'{h} {w:.2f}' for h, w in weights.items())}) vs naive epoch")
    s = interleave({"gblend": run(gb, weights), "naive": run(naive, {"fused": 1.0}),
                    "eval_gblend": evaluate(gb), "eval_naive": evaluate(naive)}, S["reps"], label="  per epoch")
    r = paired_ratio(s["gblend"], s["naive"])
    T.add("4", "G-Blend epoch (all heads' losses, estimated weights) vs naive epoch (fused head), data loading included",
          f"{med(s['gblend']):.2f} s", f"{med(s['naive']):.2f} s", r, "< 1.10x", r < 1.10)

    # a whole run, from the components (demo recipe: epochs, eval_every, super-epochs)
    E, every = gb.tcfg["epochs"], gb.tcfg["eval_every"]
    n_evals = 1 + sum(1 for e in range(E) if (e + 1) % every == 0 or e + 1 == E)
    t_gb, t_nv, t_egb, t_env = med(s["gblend"]), med(s["naive"]), med(s["eval_gblend"]), med(s["eval_naive"])
    t_ens, t_fix = med(comp["ens_epoch"]), med(comp["fixed"])
    naive_total = E * t_nv + n_evals * t_env
    whole = {}
    for mode in ("online", "offline"):
        points = GradientBlending(gcfg | {"mode": mode}, E, mods + ["fused"]).schedule()
        est = sum(t_fix + n * t_ens for n in points.values())
        whole[mode] = {"points": points, "estimation_s": est, "total_s": E * t_gb + n_evals * t_egb + est}
    ctx.details["gblend"] = {"estimation": s_est, "epochs": s, "components": comp, "weights": weights,
                             "whole_run": whole | {"naive_total_s": naive_total, "epochs": E, "evaluations": n_evals,
                                                   "t_ens_epoch": t_ens, "t_estimation_fixed": t_fix}}
    for mode in ("online", "offline"):
        w = whole[mode]
        pts = ", ".join(f"@{e}:{n}" for e, n in w["points"].items())
        T.add("4", f"{mode} G-Blend run vs naive run, {E} epochs (demo recipe; estimations {pts}), computed: "
                   f"E*epoch + evaluations + sum(fixed + n*ensemble epoch)",
              f"{w['total_s']:.1f} s", f"{naive_total:.1f} s", w["total_s"] / naive_total)


# --- 5. scaling -----------------------------------------------------------------------------------
def section_scaling(ctx: Ctx) -> None:
    from gblend_cli.data import ClipDataset, make_loader

    S, T = ctx.S, ctx.table
    tr = ctx.naive()
    items = tr.train_set.items
    sizes = [n for n in S["scaling"] if n <= len(items)]
    loaders = {}
    for n in sizes:
        ds = ClipDataset(tr.ds, items[:n], tr.spec.modalities, tr.cfg["clip"], train=True, seed=tr.tcfg["seed"])
        loaders[n] = (make_loader(ds, tr.batch_size, shuffle=True, seed=tr.tcfg["seed"], drop_last=True,
                                  workers=tr.tcfg["workers"]), ds)
    epoch = [300]

    def run(n):
        def fn():
            loader, ds = loaders[n]
            with swapped(tr, loader, ds):
                t = time.perf_counter()
                tr.run_epoch(tr.model, tr.optimizer, tr.scheduler, {"fused": 1.0}, epoch[0])
                dt = time.perf_counter() - t
            epoch[0] += 1
            return dt
        return fn

    log(f"5 scaling: epoch time vs training clips {sizes}, {S['reps'] * 2} repetitions")
    s = interleave({str(n): run(n) for n in sizes}, S["reps"] * 2, label="  per epoch")
    xs, ys = sizes, [med(s[str(n)]) for n in sizes]
    a, b, r2 = linear_fit(xs, ys)
    per_clip = [y / x for x, y in zip(xs, ys)]
    ctx.details["scaling"] = {"samples": s, "fit": {"intercept_s": a, "slope_s_per_clip": b, "r2": r2}}
    T.add("5", f"epoch time vs training clips {'/'.join(map(str, sizes))}: linear fit t = a + b*n "
               f"(a = {a * 1000:.0f} ms, R^2 = {r2:.4f}); ratio = time per clip at {sizes[-1]} vs {sizes[0]}",
          f"b = {b * 1000:.2f} ms/clip", f"{per_clip[0] * 1000:.2f} ms/clip at {sizes[0]}",
          per_clip[-1] / per_clip[0])
    section_ddp(ctx)


def section_ddp(ctx: Ctx) -> None:
    S, T = ctx.S, ctx.table
    E = S["ddp_epochs"]
    common = ["train-naive", "--modalities", "audio,rgb", "--data", str(ctx.prepared), "--epochs", str(E),
              "--threads", "1", "--workers", "0", "--set", "train.eval_every=1000", "--set", "clip.eval_clips=1",
              "--set", "train.train_eval_size=64"]

    def run(nproc: int, k: int) -> dict:
        out = ctx.work / "runs" / f"ddp{nproc}-{k}"
        shutil.rmtree(out, ignore_errors=True)
        launcher = [sys.executable, "-m", "gblend_cli"] if nproc == 1 else \
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m", "gblend_cli"]
        t = time.perf_counter()
        p = subprocess.run(launcher + common + ["--out", str(out)], cwd=ctx.work, env=ctx.env(), capture_output=True,
                           text=True, timeout=600)
        wall = time.perf_counter() - t
        if p.returncode != 0:
            raise RuntimeError(f"{nproc}-process training failed: {p.stderr[-1500:]}")
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
        # epoch 1 warms up; the last epoch also evaluates: epochs 2..E-1 are pure training epochs
        ep = [r["epoch_seconds"] for r in rows if 2 <= r["epoch"] <= E - 1]
        log(f"  {nproc} process(es): wall {wall:.1f}s, training epoch {1000 * med(ep):.0f} ms (median of {len(ep)})")
        return {"wall_s": wall, "epoch_s": ep}

    log(f"5 scaling: torchrun 2 CPU processes (gloo) vs 1 process, {E} epochs, {S['ddp_pairs']} interleaved pairs")
    res = {1: [], 2: []}
    for k in range(S["ddp_pairs"]):
        for nproc in ((1, 2) if k % 2 == 0 else (2, 1)):
            res[nproc].append(run(nproc, k))
    ctx.details["ddp"] = res
    e1 = [x for r in res[1] for x in r["epoch_s"]]
    e2 = [x for r in res[2] for x in r["epoch_s"]]
    w1, w2 = [r["wall_s"] for r in res[1]], [r["wall_s"] for r in res[2]]
    T.add("5", f"torchrun 2 processes vs 1 process: training epoch time ({len(e1)} epochs each; ideal 0.50x)",
          f"{1000 * med(e2):.0f} ms", f"{1000 * med(e1):.0f} ms", med(e2) / med(e1))
    T.add("5", f"torchrun 2 processes vs 1 process: wall clock of the whole command, {E} epochs "
               f"({len(w1)} pairs; start-up included)", f"{med(w2):.1f} s", f"{med(w1):.1f} s", paired_ratio(w2, w1))


# --- main -----------------------------------------------------------------------------------------
def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller sizes: under 10 minutes on 2 cores")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary folder, removed at the end)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its media are reused by a later --work)")
    ap.add_argument("--only", help=f"comma-separated sections ({','.join(SECTIONS)})")
    ap.add_argument("--reps", type=int, help="repetitions per figure (default: 5 quick, 7 full; at least 5)")
    ap.add_argument("--machine", help="machine name in the results file name (default: cores + CPU model)")
    ap.add_argument("--out", type=Path, help="results JSON (default: benchmarks/results/<date>-<machine>.json)")
    ap.add_argument("--render", type=Path, metavar="JSON", help="print a results file's table as markdown and exit")
    a = ap.parse_args(argv)
    if a.render:
        data = json.loads(a.render.read_text())
        print(Table.render(data["rows"]))
        return 0
    only = [s.strip() for s in a.only.split(",")] if a.only else list(SECTIONS)
    bad = [s for s in only if s not in SECTIONS]
    if bad:
        ap.error(f"--only: unknown section(s) {', '.join(bad)}; choose from {', '.join(SECTIONS)}")
    sizes = dict(SIZES["quick" if a.quick else "full"])
    if a.reps:
        if a.reps < 5:
            ap.error("--reps: at least 5 (every figure is a median of >= 5 repetitions)")
        sizes["reps"] = a.reps

    import torch

    torch.set_num_threads(1)
    from gblend_cli.ui import console

    console.quiet = True  # the package's progress bars and per-epoch lines
    info = machine_info()
    log(f"gblend benchmarks ({'quick' if a.quick else 'full'}): {info['cores']} cores ({info['cpu_model']}), "
        f"torch {info['torch']}, load average {info['loadavg_start'][0]:.2f}")
    work = a.work or Path(tempfile.mkdtemp(prefix="gblend-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    ctx = Ctx(work.resolve(), sizes, a.quick)
    errors = []
    try:
        ctx.corpus()
        for name in only:
            if name != "decode":
                ctx.ensure_prepared()
            before = os.getloadavg()[0]
            try:
                {"decode": section_decode, "loading": section_loading, "core": section_core,
                 "gblend": section_gblend, "scaling": section_scaling}[name](ctx)
            except Exception as e:  # noqa: BLE001 - one failed section still reports the others
                import traceback

                traceback.print_exc()
                errors.append(f"{name}: {type(e).__name__}: {e}")
                ctx.table.add(name, f"section {name} failed", f"{type(e).__name__}: {str(e)[:80]}", "", None, ok=False)
            ctx.details.setdefault("loadavg_1min", {})[name] = [before, os.getloadavg()[0]]
    finally:
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.perf_counter() - _T0
    info["loadavg_end"] = os.getloadavg()
    table = Table.render(ctx.table.rows)
    print()
    print(table)
    if "decode_stage_note" in ctx.details:
        print(f"\nprepare-data per clip (1 thread, median): {ctx.details['decode_stage_note']}")
    print(f"\n{'quick' if a.quick else 'full'} run: {wall:.0f} s wall; {info['cores']} cores ({info['cpu_model']}), "
          f"torch {info['torch']}; 1-minute load average at the start and end of each section: " + ", ".join(
              f"{k} {v[0]:.1f}->{v[1]:.1f}" for k, v in ctx.details.get("loadavg_1min", {}).items()))
    if not info["cuda"]:
        print("GPU: no CUDA device here; on a GPU machine run `python benchmarks/gpu.py`.")
    date = datetime.date.today().isoformat()
    out = a.out or RESULTS_DIR / f"{date}-{a.machine or machine_slug(info)}.json"
    write_atomic(out, json.dumps({"date": date, "mode": "quick" if a.quick else "full", "wall_s": round(wall, 1),
                                  "sections": only, "machine": info, "sizes": sizes, "rows": ctx.table.rows,
                                  "table_markdown": table, "details": ctx.details, "errors": errors},
                                 indent=1, default=str) + "\n")
    print(f"results: {out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
