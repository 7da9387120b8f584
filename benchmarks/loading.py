"""Section 2, loading: data-loader clips/s vs training clips/s on the same batches (demo models);
bytes per Kinetics-sized clip and memory-mapped read throughput on this disk -> loader limit.

The training side runs `engine.train_one_epoch` on the batches the loader just produced (held in a
CachedLoader), so the ratio compares loading and training of exactly the same clips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from gblend_cli.data import ClipDataset, PreparedDataset, make_loader

from .common import CachedLoader, Ctx, fmt_rate, interleave, log, med, paired_ratio, train_epoch

KINETICS = {  # the kinetics400 recipe's storage (README "Prepared data"): 15 fps, 10 s, 4:3 frames
    "112": {"short": 128, "long": 171}, "224": {"short": 256, "long": 341}}
STORED = {"rgb": ((150, 128, 171, 3), np.uint8), "flow": ((150, 128, 171, 2), np.uint8),
          "audio": ((1000, 40), np.float16)}  # one 10 s Kinetics clip at 112 storage


def clip_bytes(short: int, long: int, frames: int = 16, audio_frames: int = 100) -> dict:
    """Bytes a training clip reads from the stored arrays: `frames` full stored frames of RGB (3 x
    uint8) and flow (2 x uint8) — the crop is taken from those rows — and the log-mel window (float16)."""
    rgb, flow, audio = frames * short * long * 3, frames * short * long * 2, audio_frames * 40 * 2
    return {"rgb": rgb, "flow": flow, "audio": audio, "total": rgb + flow + audio}


def section_loading(ctx: Ctx) -> None:
    loader_vs_training(ctx)
    kinetics_reads(ctx)


# --- the demo's loader vs its training ------------------------------------------------------------
def loader_vs_training(ctx: Ctx) -> None:
    S, T = ctx.S, ctx.table
    tr = ctx.naive()
    train_loader, batch, seed = tr.data.train_loader, tr.tcfg["batch_size"], tr.tcfg["seed"]
    mm_ds = PreparedDataset(ctx.prepared, cache_bytes=0)  # read from disk per clip, as for a large dataset
    mm_set = ClipDataset(mm_ds, train_loader.dataset.items, list(tr.key.modalities), tr.cfg["clip"], train=True,
                         seed=seed)
    mm_loader = make_loader(mm_set, batch, shuffle=True, seed=seed, drop_last=True, workers=tr.tcfg["workers"])
    state = {"epoch": 0, "batches": None}

    def load(loader):
        def fn():
            loader.dataset.set_epoch(state["epoch"])
            loader.sampler.set_epoch(state["epoch"])
            t = time.perf_counter()
            batches = list(loader)
            dt = time.perf_counter() - t
            if loader is train_loader:
                state["batches"] = batches
            return dt
        return fn

    def train():
        if state["batches"] is None:
            load(train_loader)()
        t = time.perf_counter()
        train_epoch(tr, CachedLoader(state["batches"]), {"fused": 1.0}, state["epoch"])
        dt = time.perf_counter() - t
        state["epoch"] += 1
        return dt

    clips = len(train_loader) * batch
    log(f"2 loading: loader vs training on the same {clips} clips (audio+rgb naive, batch {batch}), "
        f"{S['reps']} repetitions")
    s = interleave({"load_ram": load(train_loader), "load_mmap": load(mm_loader), "train": train}, S["reps"],
                   label="  per epoch")
    ctx.details["loading"] = s | {"clips": clips}
    for key, label in (("load_ram", "held in RAM (the demo's default)"), ("load_mmap", "memory-mapped .npy per clip")):
        r = paired_ratio(s["train"], s[key])
        T.add("2", f"data loader ({label}) vs model training, same batches", fmt_rate(clips / med(s[key])),
              fmt_rate(clips / med(s["train"])), r, ">= 3x", r >= 3)


# --- Kinetics-sized clips on this disk --------------------------------------------------------------
def kinetics_reads(ctx: Ctx) -> None:
    """Cold window reads (memory-mapped, as ClipDataset read them, and one pread per window) vs a
    sequential read of the same files, and the read limit they put on one loader process."""
    S, T = ctx.S, ctx.table
    K = S["disk_clips"]
    d = ctx.work / "kinetics-like"
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    block = rng.integers(0, 256, size=16 << 20, dtype=np.uint8)
    t = time.perf_counter()
    files = write_clips(d, K, block, rng)
    write_s = time.perf_counter() - t
    total_bytes = sum(p.stat().st_size for ps in files.values() for p in ps)
    log(f"2 loading: wrote {K} Kinetics-sized clips (150x128x171 RGB + flow + 10 s log-mel, "
        f"{total_bytes / 1e6:.0f} MB) in {write_s:.1f}s")
    all_files = [p for ps in files.values() for p in ps]
    buf = bytearray(1 << 20)
    warm_times: list[float] = []

    def sequential():
        evict(all_files)
        t = time.perf_counter()
        for p in files["rgb"] + files["flow"]:
            with open(p, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        return time.perf_counter() - t

    def windows():
        evict(all_files)
        picks = random_windows(rng, K)
        t = time.perf_counter()
        mmap_reads(files, picks)
        cold = time.perf_counter() - t
        t = time.perf_counter()
        mmap_reads(files, picks)  # the same windows again, now in the page cache
        warm_times.append(time.perf_counter() - t)
        return cold

    def pread_windows():
        evict(all_files)
        picks = random_windows(rng, K)
        t = time.perf_counter()
        pread_reads(files, picks)
        return time.perf_counter() - t

    cached_after_evict = fincore_bytes(files["rgb"][0]) if shutil.which("fincore") else None
    s = interleave({"sequential": sequential, "windows": windows, "pread": pread_windows}, S["reps"],
                   label="  Kinetics-sized reads")
    warm_times = warm_times[1:]  # drop the warm-up pass: one warm time per measured cold pass
    n_win = 2 * K
    wb = clip_bytes(128, 171)
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


def write_clips(d: Path, k: int, block: np.ndarray, rng) -> dict[str, list[Path]]:
    """`k` clips in Kinetics storage shapes cut at random offsets from a block of random bytes, one
    .npy per modality, fsynced (so the reads that follow come from the disk once the page cache is
    dropped)."""
    files: dict[str, list[Path]] = {m: [] for m in STORED}
    for i in range(k):
        for m, (shape, dtype) in STORED.items():
            nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
            off = int(rng.integers(0, len(block) - nbytes)) if nbytes < len(block) else 0
            arr = block[off:off + nbytes].view(dtype).reshape(shape)
            p = d / m / f"{i:04d}.npy"
            p.parent.mkdir(exist_ok=True)
            with open(p, "wb") as f:
                np.save(f, arr, allow_pickle=False)
                f.flush()
                os.fsync(f.fileno())
            files[m].append(p)
    return files


def evict(paths: list[Path]) -> None:
    """Drop the files from the page cache."""
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def random_windows(rng, k: int) -> list[tuple[int, int, int, int]]:
    """Two random (clip, first frame, crop y, crop x) training windows per clip, in random order."""
    picks = [(i, int(rng.integers(0, 150 - 16 + 1)), int(rng.integers(0, 128 - 112 + 1)),
              int(rng.integers(0, 171 - 112 + 1))) for i in range(k) for _ in range(2)]
    rng.shuffle(picks)
    return picks


def audio_start(t0: int) -> int:
    """First log-mel frame (100/s) of the 1 s window centred on a 16-frame clip at 15 fps."""
    return max(0, int(round((t0 + 8) / 15 * 100 - 50)))


def mmap_reads(files: dict[str, list[Path]], picks) -> None:
    """The windows read through a memory map per file, as ClipDataset read them before PreparedDataset.rows."""
    for k, t0, y0, x0 in picks:
        for m in ("rgb", "flow"):
            a = np.load(files[m][k], mmap_mode="r")
            np.ascontiguousarray(a[t0:t0 + 16, y0:y0 + 112, x0:x0 + 112])
        a = np.load(files["audio"][k], mmap_mode="r")
        s0 = audio_start(t0)
        np.ascontiguousarray(a[s0:s0 + 100])


def pread_reads(files: dict[str, list[Path]], picks) -> None:
    """The same reads as one pread per modality window (16 contiguous stored frames)."""
    for k, t0, y0, x0 in picks:
        for m in ("rgb", "flow"):
            a = read_rows(files[m][k], t0, 16)
            np.ascontiguousarray(a[:, y0:y0 + 112, x0:x0 + 112])
        read_rows(files["audio"][k], audio_start(t0), 100)


def read_rows(path: Path, start: int, n: int):
    """Rows [start, start + n) of a .npy file with one pread (no memory map)."""
    with open(path, "rb", buffering=0) as f:
        version = np.lib.format.read_magic(f)
        header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = header(f)
        row = int(np.prod(shape[1:])) * dtype.itemsize
        buf = os.pread(f.fileno(), n * row, f.tell() + start * row)
    return np.frombuffer(buf, dtype).reshape((-1, *shape[1:]))


def fincore_bytes(p: Path) -> int | None:
    """Bytes of `p` in the page cache right after evicting it (checks that eviction works here)."""
    with contextlib.suppress(Exception):
        fd = os.open(p, os.O_RDONLY)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        r = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES", str(p)],
                           capture_output=True, text=True, timeout=10)
        return int(r.stdout.split()[0])
    return None
