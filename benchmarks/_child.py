"""Subprocess entry points of benchmarks.run (each measurement that needs a fresh process).

    python -m benchmarks._child decode  --spec SPEC.json --out RESULT.json
    python -m benchmarks._child memory  --spec SPEC.json --out RESULT.json
    python -m benchmarks._child scale   --spec SPEC.json --out RESULT.json

`decode`: prepare-data clips/s with 1 and 2 workers vs the ffmpeg command line on the same files,
interleaved, plus a per-stage breakdown of one clip's preparation (in this process).
`memory`: one prepare_dataset run in this fresh process; reports the peak RSS of this (main)
process (VmHWM), the max RSS of the largest other preparing process (getrusage(RUSAGE_CHILDREN)
once the forkserver, which reaps its workers, is stopped and reaped) and the sampled peak of the
whole process tree's RSS and PSS.
`scale`: prepare_dataset on a simulated Kinetics-400 manifest (benchmarks/scale.py): peak RSS of
this (main) process and the wall time of the planner's phases.

prepare_dataset starts its workers from a forkserver that re-imports the main module, so this
module does its work only under `if __name__ == "__main__"`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path


def _demo_cfg(spec: dict, annotations: list[str], workers: int) -> dict:
    from gblend_cli.config import load_config

    return load_config(spec["recipe"], {"dataset.name": "kinetics400", "dataset.root": spec["root"],
                                        "dataset.annotations": annotations, "prepare.workers": workers,
                                        "prepare.threads": 1})


def _record_completions():
    """Timestamps of every finished clip: prepare_dataset journals each record as it arrives."""
    import gblend_cli.prepare as prepare

    stamps: list[float] = []
    original = prepare.append_jsonl

    def append(path, obj):
        stamps.append(time.perf_counter())
        original(path, obj)

    prepare.append_jsonl = append
    return stamps


def ffmpeg_decode_cmd(exe: str, path: str) -> list[str]:
    """The same file to raw frames (rgb24, native size) and raw 16 kHz mono audio, one thread."""
    return [exe, "-nostdin", "-hide_banner", "-v", "error", "-threads", "1", "-filter_threads", "1",
            "-i", path,
            "-map", "0:v:0", "-f", "rawvideo", "-pix_fmt", "rgb24", "-y", "/dev/null",
            "-map", "0:a:0?", "-ac", "1", "-ar", "16000", "-f", "f32le", "-y", "/dev/null"]


def child_decode(spec: dict) -> dict:
    import gblend_cli.prepare as prepare
    from gblend_cli.manifests import read_manifest

    stamps = _record_completions()
    work = Path(spec["work"])
    ann = spec["annotations"]
    paths = [str(c.path) for c in read_manifest("kinetics400", Path(spec["root"]), [Path(a) for a in ann]).clips]
    n = len(paths)
    cfgs = {w: _demo_cfg(spec, ann, w) for w in (1, 2)}

    def run_prepare(w: int) -> dict:
        out = work / f"prep-w{w}"
        shutil.rmtree(out, ignore_errors=True)
        stamps.clear()
        t0 = time.perf_counter()
        report = prepare.prepare_dataset(cfgs[w], out)
        wall = time.perf_counter() - t0
        if report["ok"] != n:
            raise RuntimeError(f"prepare: {report['ok']} of {n} clips ok: {report['failed'][:3]}")
        skip = min(2 * w, n // 4)  # each worker's first clip pays lazy initialisation
        steady = (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip])
        return {"wall_s": wall, "clips_per_s": steady, "wall_clips_per_s": n / wall, "first_clip_s": stamps[0] - t0}

    def run_ffmpeg() -> dict:
        t0 = time.perf_counter()
        for p in paths:
            r = subprocess.run(ffmpeg_decode_cmd(spec["ffmpeg"], p), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"ffmpeg failed on {p}: {r.stderr.strip()[:300]}")
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "clips_per_s": n / wall}

    concat = work / "concat.txt"
    concat.parent.mkdir(parents=True, exist_ok=True)
    concat.write_text("".join("file '" + p.replace("'", "'\\''") + "'\n" for p in paths))

    def run_ffmpeg_long() -> dict:
        """The stable baseline: every clip decoded by ONE ffmpeg command (concat demuxer), so its
        start-up is a small part of the time instead of most of it (2-s clips: 20 of 27 ms)."""
        cmd = ffmpeg_decode_cmd(spec["ffmpeg"], str(concat))
        i = cmd.index("-i")
        cmd[i:i] = ["-f", "concat", "-safe", "0"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            raise RuntimeError(f"ffmpeg (concat) failed: {r.stderr.strip()[:300]}")
        return {"wall_s": wall, "clips_per_s": n / wall}

    def run_ffmpeg_start() -> dict:
        """The fixed cost of one ffmpeg command: a 1-frame synthetic input, nothing decoded from disk."""
        k = 20
        t0 = time.perf_counter()
        for _ in range(k):
            subprocess.run([spec["ffmpeg"], "-nostdin", "-hide_banner", "-v", "error", "-threads", "1", "-f", "lavfi",
                            "-i", "color=c=black:s=32x32:d=0.125:r=8", "-f", "rawvideo", "-pix_fmt", "rgb24", "-y",
                            "/dev/null"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        wall = time.perf_counter() - t0
        return {"wall_s": wall, "clips_per_s": k / wall, "ms_per_command": 1000 * wall / k}

    subjects = {"prepare_w1": lambda: run_prepare(1), "prepare_w2": lambda: run_prepare(2)}
    if spec["ffmpeg"]:
        subjects = {"ffmpeg": run_ffmpeg, "ffmpeg_long": run_ffmpeg_long, "ffmpeg_start": run_ffmpeg_start} | subjects
    t0 = time.perf_counter()
    warm = {name: fn() for name, fn in subjects.items()}  # starts the forkserver; fills the file cache
    print(f"decode: warm-up {time.perf_counter() - t0:.1f}s (forkserver start "
          f"{warm['prepare_w1']['first_clip_s']:.1f}s)", flush=True)
    samples: dict[str, list[dict]] = {k: [] for k in subjects}
    names = list(subjects)
    for rep in range(spec["reps"]):
        order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no subject always first
        for name in order:
            samples[name].append(subjects[name]())
        print(f"decode: rep {rep + 1}/{spec['reps']}: " + ", ".join(
            f"{k} {samples[k][-1]['clips_per_s']:.1f} clips/s" for k in names), flush=True)
    return {"clips": n, "warmup": warm, "samples": samples, "stages": stage_breakdown(paths[:spec["stage_clips"]], work)}


def stage_breakdown(paths: list[str], work: Path) -> dict:
    """Per-clip time of each stage of prepare_one (decode, log-mel, flow, the three atomic writes),
    in this process with 1 thread, as prepare_one does them."""
    import cv2
    import numpy as np
    import torch

    from gblend_cli.media import decode_clip, log_mel, optical_flow
    from gblend_cli.storage import save_npy_atomic

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    out = work / "stages"
    shutil.rmtree(out, ignore_errors=True)
    times: dict[str, list[float]] = {"decode (PyAV + resize)": [], "decode only, no audio": [], "log-mel": [],
                                     "optical flow (DIS)": [], "3 atomic .npy writes (fsync)": [],
                                     "3 .npy writes without fsync": []}
    for i, p in enumerate(paths + paths[:2]):  # the first two repeated at the end: warm-up discarded
        t = time.perf_counter()
        clip = decode_clip(p, fps=8.0, short_side=16)
        t_dec = time.perf_counter() - t
        t = time.perf_counter()
        decode_clip(p, fps=8.0, short_side=16, want_audio=False)
        t_vid = time.perf_counter() - t
        t = time.perf_counter()
        mel = log_mel(clip.audio).astype(np.float16)
        t_mel = time.perf_counter() - t
        t = time.perf_counter()
        flow = optical_flow(clip.frames, "dis")
        t_flow = time.perf_counter() - t
        t = time.perf_counter()
        for name, arr in (("rgb", clip.frames), ("audio", mel), ("flow", flow)):
            save_npy_atomic(out / name / f"{i}.npy", arr)
        t_save = time.perf_counter() - t
        t = time.perf_counter()
        for name, arr in (("rgb", clip.frames), ("audio", mel), ("flow", flow)):
            (out / f"{name}-plain").mkdir(parents=True, exist_ok=True)
            np.save(out / f"{name}-plain" / f"{i}.npy", arr)
        t_plain = time.perf_counter() - t
        if i >= 2:
            for k, v in zip(times, (t_dec, t_vid, t_mel, t_flow, t_save, t_plain)):
                times[k].append(v)
    shutil.rmtree(out, ignore_errors=True)
    return {k: {"median_ms": 1000 * statistics.median(v), "n": len(v)} for k, v in times.items()}


# --- memory ---------------------------------------------------------------------------------------
def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def _rss_pss_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except OSError:
        pass
    return rss, pss


def _vm_hwm_kb() -> int:
    """Peak RSS of this process's own address space (since its exec)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_memory(spec: dict) -> dict:
    import multiprocessing.forkserver as forkserver

    import gblend_cli.prepare as prepare

    stamps = _record_completions()
    peak = {"tree_rss_kb": 0, "tree_pss_kb": 0, "processes": 0}
    stop = threading.Event()

    def sample():
        me = os.getpid()
        while not stop.is_set():
            pids = _tree(me)
            tot = [_rss_pss_kb(p) for p in pids]
            peak["tree_rss_kb"] = max(peak["tree_rss_kb"], sum(r for r, _ in tot))
            peak["tree_pss_kb"] = max(peak["tree_pss_kb"], sum(p for _, p in tot))
            peak["processes"] = max(peak["processes"], len(pids))
            stop.wait(0.1)

    out = Path(spec["out_dir"])
    shutil.rmtree(out, ignore_errors=True)
    cfg = _demo_cfg(spec, spec["annotations"], spec["workers"])
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    report = prepare.prepare_dataset(cfg, out)
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if forkserver._forkserver._forkserver_pid is not None:
        forkserver._forkserver._stop()  # reap the forkserver: its (reaped) workers join RUSAGE_CHILDREN
    skip = min(2 * spec["workers"], len(stamps) // 4)
    return {"clips": report["ok"], "failed": len(report["failed"]), "wall_s": wall,
            "clips_per_s": (len(stamps) - 1 - skip) / (stamps[-1] - stamps[skip]),
            # VmHWM, not ru_maxrss: a fork+exec'd process's ru_maxrss starts at its parent's RSS
            "maxrss_main_kb": _vm_hwm_kb(), "ru_maxrss_main_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "maxrss_children_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, **peak}


def _vm_rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def child_scale(spec: dict) -> dict:
    """prepare_dataset on a simulated Kinetics manifest (benchmarks/scale.py): the main process's
    peak RSS and the wall time of its phases (timed by wrapping the planner's steps, where this
    gblend_cli has them)."""
    import gblend_cli.prepare as prepare
    from benchmarks.scale import config

    phases: dict[str, float] = {}

    def timed(owner, name: str, label: str):
        fn = getattr(owner, name, None)
        if fn is None:
            return

        def wrapper(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                phases[label] = phases.get(label, 0.0) + time.perf_counter() - t

        setattr(owner, name, wrapper)

    plan = getattr(prepare, "_Plan", None)
    if plan is not None:
        timed(plan, "add", "read+match+plan")
        timed(plan, "load_journal", "journal")
    else:
        timed(prepare, "_load_manifest", "read+match")
    timed(prepare, "write_outputs", "outputs")
    cfg = config(spec["root"], spec["annotations"][0], spec["out"])
    print(f"scale: gblend_cli from {Path(prepare.__file__).parent}", file=sys.stderr)
    rss_before = _vm_rss_kb()
    t0 = time.perf_counter()
    report = prepare.prepare_dataset(cfg, Path(spec["out"]))
    wall = time.perf_counter() - t0
    phases["rest (journal, pool, workers' 32 stubs)" if plan is None else "pool (32 stubs)"] = wall - sum(phases.values())
    return {"wall_s": wall, "rows_per_s": spec["rows"] / wall, "phases": phases, "vm_hwm_kb": _vm_hwm_kb(),
            "rss_before_kb": rss_before, "gblend_cli": str(Path(prepare.__file__).parent), "ok": report["ok"], "failed": report.get("failed_count", len(report["failed"])),
            "total": report["total"]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=("decode", "memory", "scale"))
    ap.add_argument("--spec", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    spec = json.loads(Path(a.spec).read_text())
    result = {"decode": child_decode, "memory": child_memory, "scale": child_scale}[a.mode](spec)
    Path(a.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    sys.exit(main())
