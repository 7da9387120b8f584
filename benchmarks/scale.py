"""Section 6, scale without Kinetics on disk: prepare-data's bookkeeping on a simulated 260,000-row
Kinetics-400 manifest — main-process memory and wall time, against the same simulation at 10,000
rows (memory must be flat: <= 1.10x).

The simulation (`write_simulation`) is the official CSV format with `rows` rows over 400 classes
(quoted labels, some with commas) and the flat `<root>/<split>/<id>_<start>_<end>.mp4` layout in
which half the files are missing and half are empty stubs; a journal already holds every stub but
32, as in a preparation resumed near its end. So prepare_dataset reads the whole CSV, walks the
media folder, matches every row, plans, loads a journal of rows/2 records, runs the 32 remaining
stubs through a worker (each fails at once: an empty file) and writes index.csv and
prepare_report.json for every row — everything but decoding video.

    python -m benchmarks.run --only scale                       # as a section of the benchmarks
    python -m benchmarks.scale [--rows 10000,260000] [--compare-with REV]

`--compare-with REV` runs the same simulation on another revision's gblend_cli (extracted with
`git archive`), e.g. the one before the streaming planner, as a second baseline in the same run.
Each run is a fresh process (benchmarks/_child.py `scale`): its peak RSS (VmHWM) is the main
preparing process's own.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from .common import REPO, Ctx, Table, log

ROWS = (10_000, 260_000)  # Kinetics-400: ~246k train + 20k validation rows
UNDONE = 32


def write_simulation(folder: Path, rows: int, *, stub_every: int = 2, undone: int = UNDONE) -> dict:
    """The simulated dataset (see the module docstring) under `folder`; returns its paths. Writes
    streaming, so it costs the writing process no memory per row either."""
    from gblend_cli.config import to_toml

    folder = Path(folder)
    shutil.rmtree(folder, ignore_errors=True)
    root, out = folder / "k400", folder / "prepared"
    for split in ("train", "val"):
        (root / split).mkdir(parents=True)
    out.mkdir(parents=True)
    ann = folder / "kinetics400_train_and_validate.csv"
    stubs = [i for i in range(rows) if i % stub_every == 0]
    undone_from = stubs[-undone] if 0 < undone <= len(stubs) else (rows if undone == 0 else 0)  # stubs from here: to do
    with open(ann, "w", newline="", encoding="utf-8") as f, open(out / "progress.jsonl", "w", encoding="utf-8") as j:
        w = csv.writer(f)
        w.writerow(["label", "youtube_id", "time_start", "time_end", "split", "is_cc"])
        for i in range(rows):
            k = i % 400
            label = f"class {k:03d}" + (", with a comma" if k % 10 == 0 else "")
            ytid, start = f"y{i:010d}", (i * 7) % 290
            split = "validate" if i % 12 == 0 else "train"
            w.writerow([label, ytid, start, start + 10, split, 0])
            if i % stub_every:
                continue
            clip = f"{ytid}_{start:06d}_{start + 10:06d}"
            path = root / ("val" if split == "validate" else "train") / f"{clip}.mp4"
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            if i < undone_from:
                j.write(json.dumps({"clip": clip, "split": "val" if split == "validate" else "train",
                                    "labels": [k], "source": str(path), "status": "ok", "has_audio": True,
                                    "seconds": 10.0, "frames": 150, "height": 128, "width": 171},
                                   separators=(",", ":")) + "\n")
    cfg = config(root, ann, out)
    (out / "prepare_config.toml").write_text(to_toml(cfg))
    return {"root": str(root), "annotations": [str(ann)], "out": str(out), "rows": rows,
            "stubs": len(stubs), "journaled": sum(1 for i in stubs if i < undone_from)}


def config(root, ann, out) -> dict:
    from gblend_cli.config import NO_RECIPE, load_config

    return load_config(NO_RECIPE, {"dataset.name": "kinetics400", "dataset.root": str(root),
                                   "dataset.annotations": [str(ann)], "dataset.data_dir": str(out),
                                   "prepare.workers": 1, "prepare.flow": "none", "prepare.decode_timeout_s": 60.0})


def run_child(spec: dict, tag: str, work: Path, pythonpath: str | None = None) -> dict:
    """benchmarks._child scale in a fresh process (optionally with another gblend_cli first on the path)."""
    spec_path, out_path = work / f"{tag}.spec.json", work / f"{tag}.result.json"
    spec_path.write_text(json.dumps(spec))
    out_path.unlink(missing_ok=True)
    env = Ctx.env()
    # `python -m` puts the working folder first on sys.path: run in the folder whose gblend_cli is
    # measured (benchmarks/ comes from REPO through PYTHONPATH)
    proc = subprocess.run([sys.executable, "-m", "benchmarks._child", "scale", "--spec", str(spec_path),
                           "--out", str(out_path)], cwd=pythonpath or REPO, env=env, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0 or not out_path.exists():
        raise RuntimeError(f"scale child {tag} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(out_path.read_text())


def extract_revision(rev: str, dest: Path) -> Path:
    """gblend_cli of git revision `rev`, extracted under `dest` (for --compare-with)."""
    dest.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "gblend_cli"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True)
    return dest


def measure(work: Path, rows=ROWS, compare_with: str | None = None) -> dict:
    """Set up each size, then run the child on it (fresh set-up per run: the run rewrites its outputs)."""
    results: dict = {"rows": list(rows), "current": {}, "baseline": {}, "compare_with": compare_with}
    old = extract_revision(compare_with, work / "rev") if compare_with else None
    for which, path in (("current", None), ("baseline", old)):
        if which == "baseline" and old is None:
            continue
        for n in rows:
            t = time.perf_counter()
            sim = write_simulation(work / f"sim-{n}", n)
            log(f"6 scale: {which} {n:,} rows: simulation written ({sim['stubs']:,} stubs, {sim['journaled']:,} "
                f"journaled) in {time.perf_counter() - t:.1f}s")
            res = run_child(sim, f"scale-{which}-{n}", work, str(path) if path else None)
            res["simulation"] = sim
            results[which][n] = res
            log(f"  main process peak RSS {res['vm_hwm_kb'] / 1024:.1f} MB (after imports {res['rss_before_kb'] / 1024:.1f} MB), "
                f"wall {res['wall_s']:.1f}s: " + ", ".join(f"{k} {v:.1f}s" for k, v in res["phases"].items()))
            shutil.rmtree(work / f"sim-{n}", ignore_errors=True)
    return results


def add_rows(table: Table, res: dict) -> None:
    small, large = res["rows"][0], res["rows"][-1]
    for which, label in (("current", "prepare-data"), ("baseline", f"prepare-data at {res['compare_with']}")):
        r = res[which]
        if not r:
            continue
        a, b = r[small], r[large]
        ratio = b["vm_hwm_kb"] / a["vm_hwm_kb"]
        per_clip = (b["vm_hwm_kb"] - a["vm_hwm_kb"]) * 1024 / (large - small)
        target = which == "current"
        table.add("6", f"{label}: main process peak RSS, simulated Kinetics-400 manifest of {large:,} vs {small:,} rows "
                       f"(half the files missing, half empty stubs journaled but {UNDONE}); growth "
                       f"{per_clip:.0f} B/row", f"{b['vm_hwm_kb'] / 1024:.1f} MB", f"{a['vm_hwm_kb'] / 1024:.1f} MB", ratio,
                  "flat (<= 1.10x)" if target else "", (ratio <= 1.10) if target else None)
        table.add("6", f"{label}: wall time of the bookkeeping, {large:,} vs {small:,} rows ("
                       + ", ".join(f"{k} {v:.1f}s" for k, v in b["phases"].items()) + f"; {b['rows_per_s']:,.0f} rows/s)",
                  f"{b['wall_s']:.1f} s", f"{a['wall_s']:.1f} s", b["wall_s"] / a["wall_s"])
    if res["baseline"]:
        a, b = res["current"][large], res["baseline"][large]
        table.add("6", f"prepare-data vs prepare-data at {res['compare_with']}: main process peak RSS at {large:,} rows",
                  f"{a['vm_hwm_kb'] / 1024:.1f} MB", f"{b['vm_hwm_kb'] / 1024:.1f} MB", a["vm_hwm_kb"] / b["vm_hwm_kb"])
        table.add("6", f"prepare-data vs prepare-data at {res['compare_with']}: wall time at {large:,} rows",
                  f"{a['wall_s']:.1f} s", f"{b['wall_s']:.1f} s", a["wall_s"] / b["wall_s"])


def section_scale(ctx: Ctx) -> None:
    res = measure(ctx.work / "scale", ROWS, ctx.S.get("scale_compare_with"))
    ctx.details["scale"] = res
    add_rows(ctx.table, res)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.scale", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default=",".join(map(str, ROWS)), help="row counts, smallest first (default %(default)s)")
    ap.add_argument("--compare-with", help="also run a git revision's gblend_cli (e.g. the commit before a change)")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary folder, removed)")
    ap.add_argument("--out", type=Path, help="write the results JSON here")
    a = ap.parse_args(argv)
    rows = [int(x) for x in a.rows.split(",")]
    work = a.work or Path(tempfile.mkdtemp(prefix="gblend-scale-"))
    try:
        res = measure(work, rows, a.compare_with)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    table = Table()
    add_rows(table, res)
    print(Table.render(table.rows))
    if a.out:
        a.out.write_text(json.dumps({"rows": table.rows, "details": res}, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
