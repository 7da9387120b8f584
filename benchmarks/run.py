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
  3 core     engine.train_one_epoch per-step time vs a hand-written PyTorch loop, same model and batches
  4 gblend   G-Blend epoch vs naive epoch; Algorithm 1 in one data pass vs k+1 separate trainings;
             whole online/offline G-Blend run vs naive, computed from the measured components
  5 scaling  epoch time vs training clips (linear fit); torchrun 2 CPU processes vs 1
  6 scale    prepare-data's bookkeeping on a simulated 260k-row Kinetics-400 manifest vs 10k rows:
             main-process peak memory (flat) and wall time (benchmarks/scale.py)
  7 store    the prepared store: raw .npy vs packed JPEG vs H.264 on the same clips: bytes per clip,
             fidelity, one loader core's clips/s from the page cache and cold (benchmarks/store.py)

Each section is a module, benchmarks/<name>.py with `section_<name>(ctx)`, that reaches the training
core only through its public interfaces; benchmarks/common.py holds the set-up (`Ctx`), the
statistics and the table. This module parses the command line, runs them and writes the results.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

from .common import REPO, SIZES, Ctx, Table, elapsed, log, machine_info, machine_slug, write_atomic

RESULTS_DIR = REPO / "benchmarks" / "results"
SECTIONS = ("decode", "loading", "core", "gblend", "scaling", "scale", "store")
NO_CORPUS = {"scale", "store"}  # sections that make their own data (no demo corpus, no prepared demo)


def run_sections(ctx: Ctx, only: list[str]) -> list[str]:
    """Set up the corpus, then run each section (`section_<name>` of benchmarks/<name>.py, imported
    here: --render needs neither torch nor gblend_cli). A failed section, its import included,
    becomes a table row and an error; the others still report. Returns the errors."""
    errors = []
    if set(only) - NO_CORPUS:
        ctx.corpus()
    for name in only:
        if name not in ("decode", *NO_CORPUS):
            ctx.ensure_prepared()
        before = os.getloadavg()[0]
        try:
            getattr(importlib.import_module(f".{name}", __package__), f"section_{name}")(ctx)
        except Exception as e:  # noqa: BLE001 - one failed section still reports the others
            traceback.print_exc()
            errors.append(f"{name}: {type(e).__name__}: {e}")
            ctx.table.add(name, f"section {name} failed", f"{type(e).__name__}: {str(e)[:80]}", "", None, ok=False)
        ctx.details.setdefault("loadavg_1min", {})[name] = [before, os.getloadavg()[0]]
    return errors


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
    try:
        errors = run_sections(ctx, only)
    finally:
        if not a.keep and not a.work:
            shutil.rmtree(work, ignore_errors=True)
    wall = elapsed()
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
