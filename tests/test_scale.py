"""prepare-data's bookkeeping at scale without Kinetics on disk: a simulated Kinetics-400 manifest
(benchmarks/scale.py: CSV rows over 400 classes, half the files missing, half empty stubs already in
the journal) goes through the reader, the planner and the journal. The main process's Python
memory must not grow with the number of rows; the benchmark measures the whole process's peak
RSS at 10k vs 260k rows, this test the cheap, deterministic part: tracemalloc's peak."""

from __future__ import annotations

import csv
import json
import tracemalloc
from pathlib import Path

from benchmarks.scale import config, write_simulation
from gblend_cli.prepare import REPORT_FAILED_MAX, prepare_dataset


def run(tmp_path, rows: int) -> tuple[int, dict, dict]:
    sim = write_simulation(tmp_path / f"sim-{rows}", rows, undone=0)  # every stub journaled: nothing to decode
    cfg = config(sim["root"], sim["annotations"][0], sim["out"])
    tracemalloc.start()
    try:
        report = prepare_dataset(cfg, sim["out"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, report, sim


def test_bookkeeping_memory_does_not_grow_with_the_rows(tmp_path):
    run(tmp_path, 200)  # imports and caches: not part of the comparison
    # both sizes fill the returned report's capped list of failed rows (REPORT_FAILED_MAX)
    small, _, _ = run(tmp_path, 2_000)
    large, report, sim = run(tmp_path, 20_000)
    per_row = (large - small) / 18_000
    # the list-based planner this replaced held ~3-4.5 kB per row (docs/PERFORMANCE.md)
    assert per_row < 16, f"{per_row:.0f} bytes per row ({small:,} -> {large:,} bytes)"
    # ... while still doing all the bookkeeping
    assert report["total"] == 20_000 and report["ok"] == sim["journaled"] == 10_000
    assert report["failed_count"] == 10_000 and len(report["failed"]) == REPORT_FAILED_MAX
    out = Path(sim["out"])
    assert len(json.loads((out / "prepare_report.json").read_text())["failed"]) == 10_000
    with open(out / "index.csv", newline="") as f:
        assert sum(1 for _ in csv.DictReader(f)) == 10_000
    meta = json.loads((out / "dataset.json").read_text())
    assert len(meta["classes"]) == 400 and sum(meta["clips"].values()) == 10_000
