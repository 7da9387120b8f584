"""`reproduce`: a recipe's whole matrix — prepare the data, the uni-modal, naive and G-Blend runs
(each one `gblend train-*` subprocess, `reproduce.jobs` at a time, one thread each), the OGR
comparison and the report. A run whose final.json exists is skipped and one with a last.pt is
resumed, so an interrupted reproduce continues where it stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from .config import data_dir, results_dir
from .errors import UserError
from .report import expected_run_names
from .runs import run_name
from .storage import write_text_atomic
from .ui import console, progress


def job_command(item, recipe: Path | None, data: Path, results: Path, sets: list[str]) -> list[str]:
    method, mods, seed, mode = item
    cmd = [sys.executable, "-m", "gblend_cli"]
    if method == "unimodal":
        cmd += ["train-unimodal", "--modality", mods[0]]
    elif method == "naive":
        cmd += ["train-naive", "--modalities", ",".join(mods)]
    else:
        cmd += ["train-gblend", "--modalities", ",".join(mods), "--mode", mode]
    run = results / run_name(method, mods, seed, mode)
    cmd += ["--seed", str(seed), "--data", str(data), "--out", str(run), "--threads", "1"]
    if recipe:
        cmd += ["--recipe", str(recipe)]
    for s in sets:
        cmd += ["--set", s]
    if (run / "checkpoints" / "last.pt").exists():
        cmd.append("--resume")
    return cmd


def _cost(item) -> int:
    """Rough relative cost, to start the longest runs first."""
    method, mods, _, _ = item
    return (3 if method == "gblend" else 1) * len(mods)


def reproduce(cfg: dict, recipe: Path | None, sets: list[str], results: Path | None = None,
              tables: list[str] | None = None, recipe_arg: str = "") -> dict:
    from .prepare import prepare_dataset
    from .report import build, overfit_figure, print_rich, render

    data = data_dir(cfg)
    results = Path(results or results_dir(cfg))
    t0 = time.perf_counter()
    if not (data / "dataset.json").exists():
        console.print(f"[bold]1/3 preparing {cfg['dataset']['name']} data in {data}")
        prepare_dataset(cfg, data)
    items = expected_run_names(cfg)
    todo = [it for it in items if not (results / run_name(it[0], it[1], it[2], it[3]) / "final.json").exists()]
    console.print(f"[bold]2/3 training: {len(items)} runs in the matrix, {len(items) - len(todo)} already done, "
                  f"{len(todo)} to run, {cfg['reproduce']['jobs']} at a time")
    failed = _run_jobs(sorted(todo, key=_cost, reverse=True), cfg["reproduce"]["jobs"], recipe, data, results, sets)
    console.print("[bold]3/3 report")
    rep = build(results, tables or ["table1", "table4", "overfit"], cfg, recipe_arg)
    out_dir = results / "report"
    for fmt, name in (("markdown", "report.md"), ("json", "report.json"), ("csv", "report.csv")):
        write_text_atomic(out_dir / name, render(rep, fmt))
    fig = overfit_figure(rep["_matrix"], out_dir / "overfitting.png")
    print_rich(rep)
    console.print(f"report written to {out_dir}/ (report.md, report.json, report.csv"
                  f"{', overfitting.png' if fig else ''}) in {time.perf_counter() - t0:.0f} s")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their logs are in {results / 'logs'}; "
                        f"run `gblend reproduce` again to retry them")
    return rep


def _run_jobs(todo: list, jobs: int, recipe, data: Path, results: Path, sets: list[str]) -> list[str]:
    """Run the train commands as subprocesses, `jobs` at a time, logs in results/logs/."""
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    running: list[tuple[subprocess.Popen, str, object]] = []
    failed: list[str] = []
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    queue = list(todo)
    try:
        with progress() as bar:
            task = bar.add_task("runs", total=len(todo), info="")
            while queue or running:
                while queue and len(running) < max(1, jobs):
                    item = queue.pop(0)
                    name = run_name(*item[:3], item[3])
                    log = open(logs / f"{name}.log", "w")
                    proc = subprocess.Popen(job_command(item, recipe, data, results, sets), stdout=log,
                                            stderr=subprocess.STDOUT, env=env)
                    running.append((proc, name, log))
                    bar.update(task, info=", ".join(n for _, n, _ in running))
                time.sleep(0.2)
                for entry in list(running):
                    proc, name, log = entry
                    if proc.poll() is not None:
                        log.close()
                        running.remove(entry)
                        if proc.returncode != 0:
                            failed.append(name)
                            console.print(f"[red]run {name} failed[/red] (exit {proc.returncode}); log: {logs / (name + '.log')}")
                        bar.update(task, advance=1, info=", ".join(n for _, n, _ in running))
    except KeyboardInterrupt:
        for proc, _, log in running:
            proc.terminate()
        for proc, _, log in running:
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
            log.close()
        raise
    return failed
