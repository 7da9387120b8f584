"""The `gblend` command line: thin Typer wrappers over the stage modules.

Heavy imports (torch, torchvision, PyAV, OpenCV) happen inside the commands so `gblend --help`
stays fast. Every user error is one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape

from .errors import UserError
from .ui import console

app = typer.Typer(
    name="gblend",
    help="Reproduce 'What Makes Training Multi-Modal Classification Networks Hard?' (Wang, Tran, "
         "Feiszli, CVPR 2020): uni-modal, naive late-fusion and Gradient-Blending training, OGR, and the "
         "paper's tables.\n\nQuick start: gblend reproduce",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _sigterm_to_interrupt(signum, frame):  # pragma: no cover - exercised by subprocess tests
    raise KeyboardInterrupt


def command(fn):
    """Run a command with the project's error contract: UserError -> one line, exit 2;
    Ctrl-C / SIGTERM -> how to resume, exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            console.print("[red]error:[/red]", escape(str(e)), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            console.print("[yellow]interrupted[/yellow]: every file written so far is complete; run the same "
                          "command again (with --resume for train commands) to continue", soft_wrap=True)
            raise typer.Exit(130) from None
        except OSError as e:
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            console.print("[red]error:[/red]", escape(f"{where}{e.strerror or e}"), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _overrides(**dotted) -> dict:
    """CLI options -> recipe keys (None = not given). Keys use '__' for '.'."""
    return {k.replace("__", "."): v for k, v in dotted.items() if v is not None}


RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe TOML (default: recipes/demo.toml), or a bundled name like kinetics400.")
SetOpt = typer.Option(None, "--set", help="Override any recipe key: --set train.lr=0.1 (repeatable).")


# ---------------------------------------------------------------------------------------------
@app.command("prepare-data", epilog="Examples:\n\n  gblend prepare-data --dataset demo --out data/demo\n\n"
             "  gblend prepare-data --dataset kinetics400 --root /data/k400 --annotations train.csv "
             "--annotations validate.csv --out data/k400 --workers 16 --flow tvl1")
@command
def prepare_data(
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="demo|kinetics400|kinetics600|kinetics700|kinetics-sounds|audioset|epic-kitchens|cremad|csv|folder"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Prepared dataset folder (default: data/<dataset>)."),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder of media files."),
    annotations: Optional[List[Path]] = typer.Option(None, "--annotations", "-a", help="Annotation CSV (repeatable: train and validate)."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help="Parallel decoding processes."),
    flow: Optional[str] = typer.Option(None, "--flow", help="Optical flow: dis (fast) | tvl1 (paper) | none."),
    fps: Optional[float] = typer.Option(None, "--fps", help="Frame rate frames are resampled to."),
    short_side: Optional[int] = typer.Option(None, "--short-side", help="Resize frames to this short side (px)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Demo only: the data seed of the generated videos (recipe: demo.seed)."),
    label_field: Optional[str] = typer.Option(None, "--label-field", help="EPIC-Kitchens: verb|noun|action."),
    allow_outside_root: Optional[bool] = typer.Option(None, "--allow-outside-root", help="Accept manifest paths outside --root."),
    recipe: Optional[Path] = RecipeOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Decode media into RGB frames, 16 kHz log-mel audio and optical flow, ready for training."""
    from .config import NO_RECIPE, RECIPES_DIR, data_dir, load_config
    from .prepare import prepare_dataset

    if recipe is None and dataset and dataset != "demo":  # a dataset's own recipe, else built-in defaults
        recipe = RECIPES_DIR / f"{dataset}.toml" if (RECIPES_DIR / f"{dataset}.toml").exists() else NO_RECIPE
    cfg = load_config(recipe, _overrides(
        dataset__name=dataset, dataset__root=str(root) if root else None,
        dataset__annotations=[str(a) for a in annotations] if annotations else None,
        prepare__workers=workers, prepare__flow=flow, prepare__fps=fps, prepare__short_side=short_side,
        dataset__label_field=label_field, dataset__allow_outside_root=allow_outside_root, demo__seed=seed), sets)
    out = out or data_dir(cfg)
    report = prepare_dataset(cfg, out)
    console.print(f"prepared {report['ok']} clips ({report['no_audio']} without audio), "
                  f"{len(report['failed'])} failed -> {out}/prepare_report.json")
    for f in report["failed"][:10]:
        console.print(f"  skipped {f['clip']}: {f['reason']}", soft_wrap=True)
    if len(report["failed"]) > 10:
        console.print(f"  ... and {len(report['failed']) - 10} more (see prepare_report.json)")


def _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from, extra=None):
    from .config import load_config

    return load_config(recipe, _overrides(
        train__epochs=epochs, train__seed=seed, train__batch_size=batch_size, train__lr=lr,
        train__optimizer=optimizer, train__device=device, train__workers=workers, train__threads=threads,
        train__init_from=str(init_from) if init_from else None, **(extra or {})), sets)


DataOpt = typer.Option(None, "--data", help="Prepared dataset folder (default: the recipe's, e.g. data/demo; the demo is prepared on first use).")
OutOpt = typer.Option(None, "--out", "-o", help="Run folder (default: results/<dataset>/<method>-<modalities>-s<seed>).")
EpochsOpt = typer.Option(None, "--epochs", help="Training epochs (recipe: train.epochs).")
SeedOpt = typer.Option(None, "--seed", help="Random seed (recipe: train.seed); CPU runs are deterministic given it.")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from checkpoints/last.pt.")
BatchOpt = typer.Option(None, "--batch-size", help="Clips per batch per process.")
LrOpt = typer.Option(None, "--lr", help="Peak learning rate.")
OptimOpt = typer.Option(None, "--optimizer", help="sgd|adam|adagrad (the paper's Table 3).")
DeviceOpt = typer.Option(None, "--device", help="auto|cpu|cuda|cuda:N.")
WorkersOpt = typer.Option(None, "--workers", help="DataLoader worker processes.")
ThreadsOpt = typer.Option(None, "--threads", help="CPU threads per process.")
InitOpt = typer.Option(None, "--init-from", help="Run folder(s), comma-separated, whose uni-modal backbones initialise the model (the paper's pre-training baseline).")


@app.command("train-unimodal", epilog="Examples:\n\n  gblend train-unimodal --modality audio\n\n"
             "  gblend train-unimodal --data data/k400 --modality rgb --recipe kinetics400 --out results/k400/rgb")
@command
def train_unimodal(
    modality: str = typer.Option(..., "--modality", "-m", help="audio|rgb|flow"),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optional[str] = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Train one modality's backbone with its own linear head (the uni-modal rows of Tables 1 and 4)."""
    from .experiment import parse_modalities
    from .runs import train

    mods = parse_modalities(modality)
    if len(mods) != 1:
        raise UserError("--modality takes one of audio, rgb, flow")
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, None)
    train(cfg, "unimodal", mods, data=data, out=out, resume=resume)


@app.command("train-naive", epilog="Examples:\n\n  gblend train-naive --modalities audio,rgb\n\n"
             "  torchrun --nproc_per_node=8 -m gblend_cli train-naive --recipe kinetics400 --modalities audio,rgb,flow")
@command
def train_naive(
    modalities: str = typer.Option(..., "--modalities", help="Two or three of audio,rgb,flow."),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optional[str] = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    init_from: Optional[str] = InitOpt, sets: Optional[List[str]] = SetOpt,
):
    """Naive late fusion: every backbone trained only through the fused head's loss (Table 1)."""
    from .experiment import parse_modalities
    from .runs import train

    mods = parse_modalities(modalities, minimum=2)
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from)
    train(cfg, "naive", mods, data=data, out=out, resume=resume)


@app.command("train-gblend", epilog="Examples:\n\n  gblend train-gblend --modalities audio,rgb,flow\n\n"
             "  gblend train-gblend --modalities audio,rgb --mode online\n\n"
             "  gblend train-gblend --modalities audio,rgb --weights rgb=.630,audio=.014,fused=.356\n\n"
             "  gblend train-gblend --modalities audio,rgb --weights equal   # auxiliary-loss baseline (Table 5)")
@command
def train_gblend(
    modalities: str = typer.Option(..., "--modalities", help="Two or three of audio,rgb,flow."),
    mode: Optional[str] = typer.Option(None, "--mode", help="offline (Alg. 2: estimate once) | online (Alg. 3: every super-epoch)."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Fixed weights instead of estimating: HEAD=W,... or 'equal'."),
    metric: Optional[str] = typer.Option(None, "--metric", help="loss|accuracy: what ΔG and ΔO are measured with."),
    blend_rule: Optional[str] = typer.Option(None, "--blend-rule", help="regularised (default) | raw (the paper's formula, minimal guards)."),
    estimate_from: Optional[str] = typer.Option(None, "--estimate-from", help="Offline: read Algorithm 2's terms from these finished runs (the uni-modal run of each modality and the naive run, same recipe and seed; comma-separated) instead of training the estimators again."),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optional[str] = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    init_from: Optional[str] = InitOpt, sets: Optional[List[str]] = SetOpt,
):
    """Gradient-Blending: L = sum_k w_k CE_k over every head, w_k = ΔG_k/ΔO_k² / Z estimated by Algorithm 1."""
    from .experiment import parse_modalities
    from .runs import train

    mods = parse_modalities(modalities, minimum=2)
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from,
                     {"gblend__mode": mode, "gblend__metric": metric, "gblend__rule": blend_rule,
                      "gblend__weights": weights,
                      "gblend__estimate_from": [p for p in estimate_from.split(",") if p] if estimate_from else None})
    train(cfg, "gblend", mods, data=data, out=out, resume=resume)


@app.command("measure-ogr", epilog="Examples:\n\n  gblend measure-ogr results/demo/unimodal-audio-s0 results/demo/unimodal-rgb-s0 "
             "results/demo/naive-audio+rgb-s0\n\n  gblend measure-ogr results/demo/naive-audio+rgb-s0 --from 0 --to 10 --format json")
@command
def measure_ogr(
    runs: List[Path] = typer.Argument(..., help="One or more run folders (with metrics.jsonl)."),
    from_epoch: Optional[int] = typer.Option(None, "--from", help="Checkpoint N (default: the first evaluated epoch, 0)."),
    to_epoch: Optional[int] = typer.Option(None, "--to", help="Checkpoint N+n (default: the last evaluated epoch)."),
    metric: str = typer.Option("loss", "--metric", help="loss|accuracy (error rate) for O and G."),
    fmt: str = typer.Option("table", "--format", help="table|csv|json"),
):
    """Overfitting-to-Generalization Ratio OGR = |ΔO/ΔG| between two epochs, per head, with O = L^V - L^T."""
    from .ogr import measure, print_measure

    if fmt not in ("table", "csv", "json"):
        raise UserError(f"--format must be table, csv or json; got {fmt!r}")
    if metric not in ("loss", "accuracy"):
        raise UserError(f"--metric must be loss or accuracy; got {metric!r}")
    rows = measure(runs, from_epoch, to_epoch, metric)
    print_measure(rows, fmt)


@app.command("report", epilog="Examples:\n\n  gblend report --table 4\n\n"
             "  gblend report --results results/k400 --table all --format latex --out tables.tex")
@command
def report(
    table: str = typer.Option("all", "--table", "-t", help="1|4|overfit|all"),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder (default: the recipe's, results/demo)."),
    fmt: Optional[str] = typer.Option(None, "--format", "-f", help="markdown|csv|latex|json (default: tables on the terminal)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the formatted tables here."),
    figure: Optional[Path] = typer.Option(None, "--figure", help="Where to write the Fig. 4 PNG (default: RESULTS/report/overfitting.png)."),
    recipe: Optional[Path] = RecipeOpt, sets: Optional[List[str]] = SetOpt,
):
    """The paper's Table 1, Table 4 and the overfitting comparison, from run folders only (paper numbers beside)."""
    from .config import load_config, results_dir
    from .report import build, overfit_figure, parse_tables, print_rich, render
    from .storage import write_text_atomic

    if fmt is not None and fmt not in ("markdown", "csv", "latex", "json"):
        raise UserError(f"--format must be markdown, csv, latex or json; got {fmt!r}")
    cfg = load_config(recipe, None, sets)
    results = results or results_dir(cfg)
    if not results.is_dir():
        raise UserError(f"{results}: no such results folder (--results); run `gblend reproduce` or a train command first")
    rep = build(results, parse_tables(table), cfg, str(recipe) if recipe else "")
    if "overfit" in rep:
        fig = overfit_figure(rep["_matrix"], figure or results / "report" / "overfitting.png")
        if fig:
            console.print(f"figure: {fig}")
    if fmt is None and out is None:
        print_rich(rep)
        return
    text = render(rep, fmt or "markdown")
    if out:
        write_text_atomic(out, text)
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(text)


@app.command("reproduce", epilog="Examples:\n\n  gblend reproduce                       # the embedded demo, CPU, minutes\n\n"
             "  gblend reproduce --seeds 0             # one seed: faster\n\n"
             "  gblend reproduce --recipe kinetics400  # the paper's setting (GPUs)")
@command
def reproduce_cmd(
    recipe: Optional[Path] = RecipeOpt,
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Seeds of the main combination's rows, e.g. 0,1,2."),
    table: str = typer.Option("all", "--table", "-t", help="1|4|all (which tables to print at the end)."),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder (default: the recipe's, results/demo)."),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help="Runs in parallel (default: recipe reproduce.jobs)."),
    sets: Optional[List[str]] = SetOpt,
):
    """Run a recipe's whole matrix (data, uni-modal, naive, G-Blend runs, OGR, report), resumably."""
    from .config import load_config
    from .report import parse_tables
    from .reproduce import reproduce

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds: expected comma-separated integers like 0,1,2; got {seeds!r}") from None
        if not seed_list:
            raise UserError("--seeds: give at least one seed")
    tables = parse_tables(table) + (["overfit"] if table in ("1", "4") else [])
    cfg = load_config(recipe, _overrides(reproduce__seeds=seed_list, reproduce__jobs=jobs,
                                         dataset__results_dir=str(results) if results else None), sets)
    if seed_list is not None:
        cfg["reproduce"]["other_seeds"] = [s for s in cfg["reproduce"]["other_seeds"] if s in seed_list] or seed_list[:1]
    from .config import resolve_recipe_path

    reproduce(cfg, run_argv, resolve_recipe_path(recipe), sets or [], results, sorted(set(tables), key=tables.index),
              str(recipe) if recipe else "")


def main() -> None:  # console-script entry point
    app()


def run_argv(argv: list[str]) -> None:
    """`gblend <argv>` in this process: the entry point `reproduce` starts its runs with."""
    app(args=argv, prog_name="gblend")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
