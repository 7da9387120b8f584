"""`reproduce`: a recipe's whole matrix — prepare the data, the uni-modal, naive and G-Blend runs
(each one `gblend train-*` command in its own process, `reproduce.jobs` at a time, one thread each), the OGR
comparison and the report; with `--table 3|5|fig1|all`, the runs of the paper's Table 3, Table 5 and
Figure 1 (experiment.tables_matrix), each run once whichever tables share it; with `--table methods`,
the matrix of G-Blend's successors (experiment.methods_matrix). A run whose final.json
exists is skipped and one with a last.pt is resumed, so an interrupted reproduce continues where it stopped."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from .config import data_dir, results_dir, saved_value, to_toml
from .errors import UserError
from .experiment import RunKey, dependencies, estimators, tables_matrix
from .run_folder import RunFolder
from .storage import write_text_atomic
from .ui import console, progress


@dataclass
class Job:
    name: str
    argv: list[str]
    cost: float  # rough relative cost: the longest ready runs start first
    deps: list[str] = field(default_factory=list)  # runs that must finish first


def plan(cfg: dict, keys: list[RunKey], results: Path, data: Path, recipe, sets: list[str], *,
         threads: int | None = 1, include_complete: bool = False) -> list[Job]:
    """A job per unfinished run (every run with `include_complete`; a finished one that a kill left
    its lock or temps in, to tidy them), in matrix order, which puts
    each run after the runs it depends on. With `reproduce.offline_from_runs`, an offline G-Blend
    run reads its terms from its estimator runs (experiment.estimators: every seed of its row with
    `reproduce.offline_pool`) and waits for them; UMT and
    UME read their uni-modal runs (RunKey.source_keys) and wait for them; a pre-training run waits
    for the uni-modal runs it starts from (RunKey.init_keys)."""
    jobs = []
    for k in keys:
        folder = RunFolder(results / k.name)
        if folder.is_complete() and not include_complete and not folder.left_by_a_kill():
            continue  # (a finished run a kill left a lock or temps in is resumed: --resume tidies it)
        ests = estimators(cfg, k)
        sources = k.source_keys()
        deps = dependencies(cfg, k)
        cost = len(k.modalities) * (3.0 if k.method == "gblend" and not ests else 0.3 if k.method == "ume"
                                    else 1.6 if k.method == "mmpareto" else 1.2 if ests or sources else 1.0)
        jobs.append(Job(k.name, k.argv(recipe=recipe, data=data, out=folder.path, sets=sets, threads=threads,
                                       resume=folder.is_complete() or folder.has_checkpoint(),
                                       estimate_from=[results / d.name for d in ests + sources],
                                       init_from=[results / d.name for d in k.init_keys()], cfg=cfg),
                        cost, [d.name for d in deps]))
    return jobs


def methods_settings(cfg: dict, sets: list[str]) -> tuple[dict, list[str]]:
    """The recipe and --set options of the methods matrix: with `reproduce.methods_epochs` > 0 every
    run of it trains that many epochs (`--set train.epochs=N` on each command, so a run folder
    says how it was trained); give it its own --results then, as its runs share folder names with
    the paper's matrix. 0: the recipe's own train settings."""
    n = cfg["reproduce"]["methods_epochs"]
    if not n or n == cfg["train"]["epochs"]:
        return cfg, list(sets)
    return cfg | {"train": cfg["train"] | {"epochs": n}}, list(sets) + [f"train.epochs={n}"]


def _refuse_other_epochs(cfg: dict, keys: list[RunKey], results: Path) -> None:
    """With `reproduce.methods_epochs`: a finished run in `results` trained with another
    train.epochs would be read (UMT, UME, offline G-Blend) and reported beside runs it cannot be
    compared with: refuse, in one line."""
    if not cfg["reproduce"]["methods_epochs"]:
        return
    for k in keys:
        f = RunFolder(results / k.name, writer=False)
        if f.is_complete():
            theirs = saved_value(f.saved_recipe(), "train", "epochs")
            if theirs != cfg["train"]["epochs"]:
                raise UserError(f"{f.path}: trained with train.epochs = {theirs}, the methods matrix with "
                                f"{cfg['train']['epochs']} (reproduce.methods_epochs): give it its own --results")


def print_commands(cfg: dict, recipe: Path | None, sets: list[str], launcher: str = "gblend",
                   include_complete: bool = False, tables=("table1", "table4", "overfit")) -> None:
    """The matrix as shell commands on stdout, one per line, each run after the runs it depends on:
    `prepare-data` first when the data is not prepared, then every unfinished run (every run with
    `include_complete`: a finished one then answers 'already complete')."""
    import shlex

    from .ui import out

    data, results = data_dir(cfg).resolve(), results_dir(cfg).resolve()
    recipe = Path(recipe).resolve() if recipe else None
    lines = []
    if not (data / "dataset.json").exists():
        lines.append(["prepare-data", "--out", str(data)] + (["--recipe", str(recipe)] if recipe else [])
                     + [a for s in sets for a in ("--set", s)])
    if list(tables) == ["methods"]:
        cfg, sets = methods_settings(cfg, sets)
    lines += [job.argv for job in plan(cfg, tables_matrix(cfg, tables), results, data, recipe, sets, threads=None,
                                       include_complete=include_complete)]
    for argv in lines:
        out.print(f"{launcher} {shlex.join(argv)}", soft_wrap=True, markup=False, highlight=False)


RAN_WITH = "reproduce_config.toml"  # in a results folder: the resolved recipe of the last `reproduce` into it


def reproduce(cfg: dict, entry, recipe: Path | None, sets: list[str], results: Path | None = None,
              tables: list[str] | None = None, recipe_arg: str = "") -> dict:
    """`entry(argv)` runs one `gblend` command line in a child process (the CLI passes its own)."""
    from .prepare import prepare_dataset
    from .report import REPORT_DIR, TABLES, build, figures, report_folder
    from .report_render import print_rich, render, render_csv

    data = data_dir(cfg)
    results = Path(results or results_dir(cfg))
    t0 = time.perf_counter()
    tables = tables or ["table1", "table4", "overfit"]
    methods_only = tables == ["methods"]  # `--table methods`: the methods matrix and its report
    if methods_only:
        cfg, sets = methods_settings(cfg, sets)
    keys = tables_matrix(cfg, tables)
    if methods_only:
        _refuse_other_epochs(cfg, keys, results)
    # the recipe this folder's matrix was run with: `gblend report --results` expects these runs
    write_text_atomic(results / RAN_WITH, to_toml(cfg))
    if not (data / "dataset.json").exists():
        console.print(f"[bold]1/3 preparing {cfg['dataset']['name']} data in {data}")
        prepare_dataset(cfg, data)
    jobs = plan(cfg, keys, results, data.resolve(), recipe, sets)
    console.print(f"[bold]2/3 training: {len(keys)} runs in the matrix, {len(keys) - len(jobs)} already done, "
                  f"{len(jobs)} to run, {cfg['reproduce']['jobs']} at a time")
    failed = _run_jobs(jobs, cfg["reproduce"]["jobs"], results, entry)
    console.print("[bold]3/3 report")
    rep = build(results, tables, cfg, recipe_arg, sets)
    out_dir = results / REPORT_DIR
    stem = "report_methods" if methods_only else "report"  # the paper's tables' report stays as it is
    csvs = [f"report_{k}.csv" for k in TABLES if k in rep]
    with report_folder(out_dir, "reproduce report"):
        for fmt, name in (("markdown", f"{stem}.md"), ("json", f"{stem}.json")):
            write_text_atomic(out_dir / name, render(rep, fmt))
        for k, name in zip([k for k in TABLES if k in rep], csvs):
            write_text_atomic(out_dir / name, render_csv(rep, k))
        figs = [draw(out_dir / name) for name, draw in figures(rep).items()]
    print_rich(rep)
    console.print(f"report written to {out_dir}/ ({stem}.md, {stem}.json, {', '.join(csvs)}"
                  f"{''.join(f', {f.name}' for f in figs if f)}) in {time.perf_counter() - t0:.0f} s")
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: {', '.join(failed)}; their logs are in {results / 'logs'}; "
                        f"run `gblend reproduce` again to retry them")
    return rep


def _run_jobs(jobs: list[Job], parallel: int, results: Path, entry) -> list[str]:
    """Run the jobs' commands in their own processes, `parallel` at a time (the costliest ready job
    first), logs in results/logs/. A job whose dependency failed fails without running."""
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    from .workers import worker_context

    ctx = worker_context()
    running: list[tuple[object, str]] = []
    failed: list[str] = []
    queue = sorted(jobs, key=lambda j: -j.cost)
    pending = {j.name for j in jobs}
    try:
        with progress() as bar:
            task = bar.add_task("runs", total=len(jobs), info="")
            while queue or running:
                for job in [j for j in queue if set(j.deps) & set(failed)]:
                    queue.remove(job)
                    pending.discard(job.name)
                    failed.append(job.name)
                    console.print(f"[red]run {job.name} not started[/red]: {', '.join(set(job.deps) & set(failed))} failed")
                    bar.update(task, advance=1)
                ready = [j for j in queue if not set(j.deps) & pending]
                while ready and len(running) < max(1, parallel):
                    job = ready.pop(0)
                    queue.remove(job)
                    proc = ctx.Process(target=_job_main, args=(entry, job.argv, str(logs / f"{job.name}.log"),
                                                               os.getpid()), name=job.name)
                    proc.start()
                    running.append((proc, job.name))
                    bar.update(task, info=", ".join(n for _, n in running))
                time.sleep(0.2)
                for entry_ in list(running):
                    proc, name = entry_
                    if proc.exitcode is not None:
                        running.remove(entry_)
                        pending.discard(name)
                        if proc.exitcode != 0:
                            failed.append(name)
                            console.print(f"[red]run {name} failed[/red] (exit {proc.exitcode}); log: {logs / (name + '.log')}")
                        bar.update(task, advance=1, info=", ".join(n for _, n in running))
    except KeyboardInterrupt:
        for proc, _ in running:
            proc.terminate()  # SIGTERM: the run stops at once, its files complete or absent
        for proc, _ in running:
            proc.join(30)
            if proc.exitcode is None:
                proc.kill()
        raise
    return failed


def _stop_with_parent(parent: int) -> None:
    """A run outlives no reproduce: when the parent is gone (even SIGKILLed), SIGTERM ourselves,
    which stops the run cleanly (complete files, resumable)."""
    import signal
    import threading

    try:  # Linux: the kernel signals us as soon as our parent (the forkserver, which follows it) exits
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch():
        while True:
            time.sleep(1.0)
            try:
                os.kill(parent, 0)
            except ProcessLookupError:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, daemon=True).start()


def _job_main(entry, argv: list[str], log_path: str, parent: int | None = None) -> None:
    """One run of the matrix in a process forked from the forkserver (torch already imported):
    `entry(argv)` with stdout and stderr going to the run's log file."""
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    os.environ.update({"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    if parent:
        _stop_with_parent(parent)
    entry(argv)  # exits via SystemExit with the command's exit code
