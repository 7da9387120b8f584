"""The `gblend` command line: thin Typer wrappers over the stage modules.

Heavy imports (torch, torchvision, PyAV, OpenCV) happen inside the commands so `gblend --help`
stays fast. Results go to stdout; progress, logs and errors to stderr. Every bad value — ours or
one Typer parses — is one line on stderr naming the option, with exit code 2."""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
from pathlib import Path
from typing import List, Literal, Optional

import typer
from rich.markup import escape

from .errors import UserError, out_of_memory
from .ui import console, stop_loading

if not sys.stdout.isatty():  # help piped to a file or `less`: wide lines, no cut option names
    import typer.rich_utils

    typer.rich_utils.MAX_WIDTH = typer.rich_utils.MAX_WIDTH or 120

app = typer.Typer(
    name="gblend",
    help="Reproduce 'What Makes Training Multi-Modal Classification Networks Hard?' (Wang, Tran, "
         "Feiszli, CVPR 2020): uni-modal, naive late-fusion and Gradient-Blending training, OGR, and the "
         "paper's tables.\n\nQuick start: gblend reproduce",
    no_args_is_help=True, add_completion=False, rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _recipe_defaults() -> dict:
    """The default recipe's values, shown as the defaults in --help (--recipe changes them)."""
    from .config import DEFAULTS, load_config

    try:
        return load_config(None)
    except UserError:  # a broken default recipe must not break --help
        return DEFAULTS


D = _recipe_defaults()


def _d(dotted: str) -> str:
    section, key = dotted.split(".")
    v = D[section][key]
    return escape(f"[default: {v if not isinstance(v, str) or v else '-'}]")  # help text is rich markup


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is (a scheduler's or torchrun's stop)."""


def _sigterm_to_interrupt(signum, frame):  # pragma: no cover - exercised by subprocess tests
    raise Terminated


def _rank_stop_message(e: BaseException) -> str | None:
    """The one line that says why a distributed rank stopped — the launcher stopped it (SIGTERM), or a
    collective failed because another rank did — or None. The module is looked up, not imported: a
    command that never started a process group has nothing to say here."""
    dist = sys.modules.get("gblend_cli.distributed")
    if dist is None:
        return None
    if isinstance(e, Terminated):
        return dist.launcher_stop()
    if isinstance(e, RuntimeError):
        return dist.peer_failure(e)
    return None


def command(fn):
    """Run a command with the project's error contract: UserError -> one line, exit 2;
    Ctrl-C / SIGTERM -> how to resume, exit 130."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _sigterm_to_interrupt)
        try:
            try:
                fn(*args, **kwargs)
            finally:
                stop_loading()
                # past the command, a SIGTERM (torchrun stopping a job whose other rank failed) just ends
                # the process: never a KeyboardInterrupt traceback from an exit handler
                signal.signal(signal.SIGTERM, previous)
        except UserError as e:
            console.print("[red]error:[/red]", escape(str(e)), soft_wrap=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt as e:
            message = _rank_stop_message(e)
            if message is not None:  # a distributed rank stopped because another one failed: say so
                console.print("[red]error:[/red]", escape(message), soft_wrap=True)
                raise typer.Exit(1) from None
            console.print("[yellow]interrupted[/yellow]: every file written so far is complete; run the same "
                          "command again (with --resume for train commands) to continue", soft_wrap=True)
            raise typer.Exit(130) from None
        except RuntimeError as e:  # a distributed run whose other process stopped: one line on every rank left
            message = _rank_stop_message(e) or out_of_memory(e)
            if message is None:
                raise
            console.print("[red]error:[/red]", escape(message), soft_wrap=True)
            raise typer.Exit(1) from None
        except OSError as e:  # disk full, read-only folder...: one line with the fix, exit 1
            from .errors import output_error

            console.print("[red]error:[/red]", escape(str(output_error(e, "run the same command again (with --resume "
                                                                        "for train commands)"))), soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


# CLI options and the recipe keys they set (a bad value is reported under the option's name)
OPTION_KEYS = {
    "train.epochs": "--epochs", "train.seed": "--seed", "train.batch_size": "--batch-size", "train.lr": "--lr",
    "train.optimizer": "--optimizer", "train.device": "--device", "train.workers": "--workers",
    "train.threads": "--threads", "train.init_from": "--init-from", "gblend.mode": "--mode",
    "gblend.metric": "--metric", "gblend.rule": "--blend-rule", "gblend.weights": "--weights",
    "gblend.estimate_from": "--estimate-from", "methods.from_runs": "--from-runs", "dataset.name": "--dataset", "dataset.root": "--root",
    "dataset.annotations": "--annotations", "prepare.workers": "--workers", "prepare.flow": "--flow",
    "prepare.fps": "--fps", "prepare.short_side": "--short-side", "demo.seed": "--seed",
    "dataset.label_field": "--label-field", "dataset.allow_outside_root": "--allow-outside-root",
    "dataset.ucf_split": "--ucf-split", "model.fusion": "--fusion",
    "reproduce.seeds": "--seeds", "reproduce.other_seeds": "--seeds", "reproduce.jobs": "--jobs", "dataset.results_dir": "--results",
}


def _config(recipe, sets, **dotted) -> dict:
    """The recipe with `--set` overrides and the CLI options given (keys use '__' for '.')."""
    from .config import load_config

    overrides = {k.replace("__", "."): v for k, v in dotted.items() if v is not None}
    return load_config(recipe, overrides, sets, OPTION_KEYS)


DATASETS = Literal["demo", "kinetics400", "kinetics600", "kinetics700", "kinetics-sounds", "audioset",
                   "epic-kitchens", "cremad", "ave", "ucf101", "vggsound", "csv", "folder"]
RecipeOpt = typer.Option(None, "--recipe", "-r", help="Recipe TOML, or a bundled name like kinetics400 " + escape("[default: recipes/demo.toml]."))
SetOpt = typer.Option(None, "--set", help="Override any recipe key, e.g. --set train.lr=0.1 (repeatable).")


# ---------------------------------------------------------------------------------------------
@app.command("prepare-data", epilog="Examples:\n\n  gblend prepare-data --dataset demo --seed 1 --out data/demo-s1\n\n"
             "  gblend prepare-data --dataset kinetics400 --root /data/k400 --annotations train.csv "
             "--annotations validate.csv --out data/k400 --workers 16 --flow tvl1\n\n"
             "  gblend prepare-data --check /data/k400 --dataset kinetics400 --annotations train.csv --workers 16   "
             "# before preparing\n\n"
             "  gblend prepare-data --check data/k400 > damaged.txt   # after: exit 1 and one line per bad clip")
@command
def prepare_data(
    dataset: Optional[DATASETS] = typer.Option(None, "--dataset", "-d", help=f"Which reader {_d('dataset.name')}."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Prepared dataset folder " + escape("[default: data/DATASET].")),
    root: Optional[Path] = typer.Option(None, "--root", help="Folder of media files."),
    annotations: Optional[List[Path]] = typer.Option(None, "--annotations", "-a", help="Annotation file (repeatable: train and validate); for ave and ucf101 also the folder holding them."),
    workers: Optional[int] = typer.Option(None, "--workers", "-j", help=f"Parallel decoding processes {_d('prepare.workers')}."),
    flow: Optional[Literal["dis", "tvl1", "none"]] = typer.Option(None, "--flow", help=f"Optical flow: dis (fast), tvl1 (the paper's) or none {_d('prepare.flow')}."),
    fps: Optional[float] = typer.Option(None, "--fps", help=f"Frame rate frames are resampled to {_d('prepare.fps')}."),
    short_side: Optional[int] = typer.Option(None, "--short-side", help=f"Resize frames to this short side, px {_d('prepare.short_side')}."),
    seed: Optional[int] = typer.Option(None, "--seed", help=f"Demo only: the data seed of the generated videos {_d('demo.seed')}."),
    label_field: Optional[Literal["verb", "noun", "action"]] = typer.Option(None, "--label-field", help="EPIC-Kitchens: which label to classify " + escape("[default: verb].")),
    ucf_split: Optional[int] = typer.Option(None, "--ucf-split", help="UCF-101: which official train/test split, 1, 2 or 3 " + escape("[default: 1].")),
    allow_outside_root: Optional[bool] = typer.Option(None, "--allow-outside-root", help="Accept manifest paths outside --root."),
    check: Optional[Path] = typer.Option(None, "--check", metavar="DIR", help="Check instead of preparing. DIR: a prepared folder (every clip's arrays whole) or a media folder, the dataset root read with --dataset/--annotations (every listed file present, opens, not cut short). Prints one line per damaged or missing clip on stdout (PROBLEM<TAB>CLIP<TAB>REASON; PROBLEM: missing, unreadable, damaged or incomplete) and a summary per split and class on stderr (clips without audio, annotation rows, published split sizes); exit code 0 when every clip is complete, 1 otherwise."),
    recipe: Optional[Path] = RecipeOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Decode media into RGB frames, 16 kHz log-mel audio and optical flow, ready for training; or, with --check, check a dataset."""
    from .config import NO_RECIPE, RECIPES_DIR, data_dir
    from .prepare import prepare_dataset
    from .ui import out as stdout

    if recipe is None and dataset and dataset != "demo":  # a dataset's own recipe, else built-in defaults
        recipe = RECIPES_DIR / f"{dataset}.toml" if (RECIPES_DIR / f"{dataset}.toml").exists() else NO_RECIPE
    cfg = _config(recipe, sets, dataset__name=dataset, dataset__root=str(root) if root else None,
                  dataset__annotations=[str(a) for a in annotations] if annotations else None,
                  prepare__workers=workers, prepare__flow=flow, prepare__fps=fps, prepare__short_side=short_side,
                  dataset__label_field=label_field, dataset__allow_outside_root=allow_outside_root, demo__seed=seed,
                  dataset__ucf_split=ucf_split)
    if check is not None:
        from .doctor import check as check_dataset

        problems = check_dataset(check, cfg)
        raise typer.Exit(1 if problems else 0)
    out = out or data_dir(cfg)
    report = prepare_dataset(cfg, out)
    n_failed = report.get("failed_count", len(report["failed"]))
    stdout.print(f"prepared {report['ok']} clips ({report['no_audio']} without audio), "
                 f"{n_failed} failed -> {out}/prepare_report.json", soft_wrap=True, markup=False)
    for f in report["failed"][:10]:
        stdout.print(f"  skipped {f['clip']}: {f['reason']}", soft_wrap=True, markup=False)
    if n_failed > 10:
        stdout.print(f"  ... and {n_failed - 10} more (see prepare_report.json)")
    shared = report.get("sources_in_two_splits") or {}
    if shared.get("count"):
        console.print(f"warning: {shared['count']} source videos have clips in two splits (e.g. "
                      f"{', '.join(shared['examples'][:3])}): the evaluation split shares content with training; "
                      f"see {out}/prepare_report.json \"sources_in_two_splits\"", soft_wrap=True, markup=False)


DataOpt = typer.Option(None, "--data", help="Prepared dataset folder " + escape("[default: the recipe's dataset.data_dir; the demo is prepared on first use]."))
OutOpt = typer.Option(None, "--out", "-o", help="Run folder " + escape("[default: RESULTS/METHOD-MODALITIES-sSEED]."))
EpochsOpt = typer.Option(None, "--epochs", help=f"Training epochs {_d('train.epochs')}.")
SeedOpt = typer.Option(None, "--seed", help=f"Training seed; CPU runs are deterministic given it {_d('train.seed')}.")
ResumeOpt = typer.Option(False, "--resume", help="Continue the run in --out from its last checkpoint.")
BatchOpt = typer.Option(None, "--batch-size", help=f"Clips per batch per process {_d('train.batch_size')}.")
LrOpt = typer.Option(None, "--lr", help=f"Peak learning rate {_d('train.lr')}.")
OptimOpt = typer.Option(None, "--optimizer", help=f"The optimiser (the paper's Table 3) {_d('train.optimizer')}.")
DeviceOpt = typer.Option(None, "--device", help=f"auto, cpu, cuda or cuda:N {_d('train.device')}.")
WorkersOpt = typer.Option(None, "--workers", help=f"DataLoader worker processes {_d('train.workers')}.")
ThreadsOpt = typer.Option(None, "--threads", help=f"CPU threads per process {_d('train.threads')}.")
InitOpt = typer.Option(None, "--init-from", help="Run folder(s), comma-separated, whose uni-modal backbones initialise the model (the paper's pre-training baseline).")
Optimizer = Optional[Literal["sgd", "adam", "adagrad"]]


def _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from, **extra):
    return _config(recipe, sets, train__epochs=epochs, train__seed=seed, train__batch_size=batch_size, train__lr=lr,
                   train__optimizer=optimizer, train__device=device, train__workers=workers, train__threads=threads,
                   train__init_from=str(init_from) if init_from else None, **extra)


def _loading(what: str) -> None:
    """A spinner before the heavy imports (torch, the data): no blank screen while they load."""
    from .ui import start_loading

    start_loading(f"{what}: loading torch and the prepared data ...")


@app.command("train-unimodal", epilog="Examples:\n\n  gblend train-unimodal --modality audio\n\n"
             "  gblend train-unimodal --data data/k400 --modality rgb --recipe kinetics400 --out results/k400/rgb")
@command
def train_unimodal(
    modality: Literal["audio", "rgb", "flow"] = typer.Option(..., "--modality", "-m", help="The modality to train."),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optimizer = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    sets: Optional[List[str]] = SetOpt,
):
    """Train one modality's backbone with its own linear head (the uni-modal rows of Tables 1 and 4)."""
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, None)
    _loading("train-unimodal")
    from .runs import train

    train(cfg, "unimodal", (modality,), data=data, out=out, resume=resume)


@app.command("train-naive", epilog="Examples:\n\n  gblend train-naive --modalities audio,rgb\n\n"
             "  torchrun --nproc_per_node=8 -m gblend_cli train-naive --recipe kinetics400 --modalities audio,rgb,flow")
@command
def train_naive(
    modalities: str = typer.Option(..., "--modalities", help="Two or three of audio, rgb, flow, comma-separated."),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optimizer = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    init_from: Optional[str] = InitOpt, sets: Optional[List[str]] = SetOpt,
    fusion: Optional[Literal["late", "dropout", "midconcat", "se-gate", "nl-gate"]] = typer.Option(None, "--fusion", help=f"late concat, or one of the paper's attempted fixes (Fig. 1): dropout (stronger, model.fix_dropout), midconcat, se-gate, nl-gate (audio meets the visual features after model.fusion_stage) {_d('model.fusion')}."),
):
    """Naive late fusion: every backbone trained only through the fused head's loss (Table 1)."""
    from .experiment import parse_modalities

    mods = parse_modalities(modalities, minimum=2)
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from,
                     model__fusion=fusion)
    _loading("train-naive")
    from .runs import train

    train(cfg, "naive", mods, data=data, out=out, resume=resume)


@app.command("train-gblend", epilog="Examples:\n\n  gblend train-gblend --modalities audio,rgb,flow\n\n"
             "  gblend train-gblend --modalities audio,rgb --mode online\n\n"
             "  gblend train-gblend --modalities audio,rgb --weights rgb=.630,audio=.014,fused=.356\n\n"
             "  gblend train-gblend --modalities audio,rgb --weights equal   # auxiliary-loss baseline (Table 5)")
@command
def train_gblend(
    modalities: str = typer.Option(..., "--modalities", help="Two or three of audio, rgb, flow, comma-separated."),
    mode: Optional[Literal["offline", "online"]] = typer.Option(None, "--mode", help=f"offline: estimate once from φ0 (Alg. 2); online: every super-epoch (Alg. 3) {_d('gblend.mode')}."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Hand-set weights instead of estimating: HEAD=W,... or 'equal' (the auxiliary-loss baseline)."),
    metric: Optional[Literal["loss", "accuracy"]] = typer.Option(None, "--metric", help=f"What ΔG and ΔO are measured with {_d('gblend.metric')}."),
    blend_rule: Optional[Literal["regularised", "raw", "formula"]] = typer.Option(None, "--blend-rule", help=f"formula: w_raw, the paper's formula alone; raw: the formula with its noise guard; regularised: also lifts heads with ΔG <= 0 to gblend.min_weight {_d('gblend.rule')}."),
    estimate_from: Optional[str] = typer.Option(None, "--estimate-from", help="Offline: read Algorithm 2's terms from these finished runs (the uni-modal run of each modality and the naive run, same recipe and seed; comma-separated) instead of training the estimators again; those of several seeds are pooled (mean ΔG and ΔO over the seeds)."),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optimizer = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    init_from: Optional[str] = InitOpt, sets: Optional[List[str]] = SetOpt,
):
    """Gradient-Blending: L = sum_k w_k CE_k over every head, w_k = ΔG_k/ΔO_k² / Z estimated by Algorithm 1."""
    from .experiment import parse_modalities

    mods = parse_modalities(modalities, minimum=2)
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from,
                     gblend__mode=mode, gblend__metric=metric, gblend__rule=blend_rule, gblend__weights=weights,
                     gblend__estimate_from=_folders(estimate_from))
    _loading("train-gblend")
    from .runs import train

    train(cfg, "gblend", mods, data=data, out=out, resume=resume)


def _folders(text: Optional[str]) -> Optional[list[str]]:
    """A comma-separated list of run folders (--estimate-from, --from-runs); None when not given."""
    return [p for p in text.split(",") if p] if text else None


MethodChoice = Literal["ogm-ge", "mmpareto", "umt", "ume", "inforeg"]


@app.command("train-method", epilog="Examples:\n\n  gblend train-method --method ogm-ge --modalities audio,rgb\n\n"
             "  gblend train-method --method mmpareto --modalities audio,rgb,flow --seed 1\n\n"
             "  gblend train-method --method umt --modalities audio,rgb   # reads RESULTS/unimodal-audio-s0 and unimodal-rgb-s0\n\n"
             "  gblend train-method --method ogm-ge --modalities audio,rgb --set methods.ogm_alpha=0.5")
@command
def train_method(
    method: MethodChoice = typer.Option(..., "--method", "-m", help="ogm-ge: OGM-GE (Peng et al. 2022), gradient modulation of the dominant encoders + noise; mmpareto: MMPareto (Wei & Hu 2024), fused and uni-modal gradients combined per encoder; umt / ume: uni-modal teacher / ensemble (Du et al. 2023), built on the finished uni-modal runs; inforeg: InfoReg (Huang et al. 2025), the modality ahead regulated in its prime learning window. Hyper-parameters: the recipe's [methods] keys (--set methods.KEY=VALUE)."),
    modalities: str = typer.Option(..., "--modalities", help="Two or three of audio, rgb, flow, comma-separated."),
    from_runs: Optional[str] = typer.Option(None, "--from-runs", help="umt, ume: the finished uni-modal runs to read, comma-separated " + escape("[default: RESULTS/unimodal-M-sSEED for each modality M].")),
    data: Optional[Path] = DataOpt, out: Optional[Path] = OutOpt, recipe: Optional[Path] = RecipeOpt,
    epochs: Optional[int] = EpochsOpt, seed: Optional[int] = SeedOpt, resume: bool = ResumeOpt,
    batch_size: Optional[int] = BatchOpt, lr: Optional[float] = LrOpt, optimizer: Optimizer = OptimOpt,
    device: Optional[str] = DeviceOpt, workers: Optional[int] = WorkersOpt, threads: Optional[int] = ThreadsOpt,
    init_from: Optional[str] = InitOpt, sets: Optional[List[str]] = SetOpt,
):
    """G-Blend's successors on the same training core and run folder: OGM-GE, MMPareto, UMT, UME, InfoReg."""
    from .experiment import parse_modalities

    mods = parse_modalities(modalities, minimum=2)
    cfg = _train_cfg(recipe, sets, epochs, seed, batch_size, lr, optimizer, device, workers, threads, init_from,
                     methods__from_runs=_folders(from_runs))
    _loading("train-method")
    from .runs import train

    train(cfg, method, mods, data=data, out=out, resume=resume)


@app.command("measure-ogr", epilog="Examples:\n\n  gblend measure-ogr results/demo/unimodal-audio-s0 results/demo/unimodal-rgb-s0 "
             "results/demo/naive-audio+rgb-s0\n\n  gblend measure-ogr results/demo/naive-audio+rgb-s0 --from 0 --to 10 --format json")
@command
def measure_ogr(
    runs: List[Path] = typer.Argument(..., help="One or more run folders (with metrics.jsonl)."),
    from_epoch: Optional[int] = typer.Option(None, "--from", help="Checkpoint N " + escape("[default: the first evaluated epoch, 0].")),
    to_epoch: Optional[int] = typer.Option(None, "--to", help="Checkpoint N+n " + escape("[default: the last evaluated epoch].")),
    metric: Literal["loss", "accuracy"] = typer.Option("loss", "--metric", help="O and G from the loss or the error rate."),
    fmt: Literal["table", "csv", "json"] = typer.Option("table", "--format", help="How to print the results (on stdout)."),
):
    """Overfitting-to-Generalization Ratio OGR = |ΔO/ΔG| between two epochs, per head, with O = L^V - L^T."""
    from .ogr import measure, print_measure

    print_measure(measure(runs, from_epoch, to_epoch, metric), fmt)


TableChoice = Literal["1", "4", "overfit", "3", "5", "fig1", "all", "methods"]


def _pooled_checks(rep: dict, results: Path, pool: list[Path], recipe: Optional[Path], sets) -> dict:
    """report --pool: every folder's checks (each read with the recipe `reproduce` ran there, like
    RESULTS), pooled (`checks.pooled`)."""
    from . import checks
    from .report import build
    from .reproduce import RAN_WITH

    if "checks" not in rep:
        raise UserError("--pool pools the checks, which come with the overfitting comparison: give --table overfit, "
                        "core or all, or no --table")
    folders = [results, *pool]
    resolved = [f.resolve() for f in folders]
    for i, a in enumerate(resolved):
        if not folders[i].is_dir():
            raise UserError(f"{folders[i]}: no such results folder (--pool)")
        for j, b in enumerate(resolved):
            if i != j and (a == b or b in a.parents):
                how = "given twice" if a == b else f"lies inside {folders[j]}"
                raise UserError(f"--pool {folders[i]}: {how}, so its runs would count twice; "
                                f"pool folders of different data, none inside another")
    per_folder = [rep["checks"]]
    for f in pool:
        cfg = _config(f / RAN_WITH if recipe is None and (f / RAN_WITH).exists() else recipe, sets)
        per_folder.append(build(f, ["overfit"], cfg, str(recipe or ""), sets or [])["checks"])
    return {"pooled_checks": checks.pooled(per_folder), "pooled_folders": [str(f) for f in folders]}


@app.command("report", epilog="Examples:\n\n  gblend report --table 4 > table4.txt\n\n"
             "  gblend report --results results/k400 --table all --format latex --out tables.tex\n\n"
             "  gblend report --results results/demo --pool results/d11 --pool results/d12   # checks over three data seeds")
@command
def report(
    table: Optional[TableChoice] = typer.Option(None, "--table", "-t", help="Which table: 1, 4, overfit (Fig. 4), 3, 5, fig1 (the paper's other experiments), all (every table of the paper) or methods (G-Blend's successors) " + escape("[default: 1, 4 and overfit].")),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder " + escape("[default: the recipe's, results/demo].")),
    fmt: Optional[Literal["markdown", "csv", "latex", "json"]] = typer.Option(None, "--format", "-f", help="Text format " + escape("[default: tables for the terminal]") + ". csv: one table per file."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Write the formatted tables here (csv with several tables: OUT_table1.csv, ...)."),
    figure: Optional[Path] = typer.Option(None, "--figure", help="Where to write the Fig. 4 PNG " + escape("[default: RESULTS/report/overfitting.png]") + "; the Fig. 1 bar chart goes beside it (fig1.png)."),
    pool: Optional[List[Path]] = typer.Option(None, "--pool", help="Another results folder of the same matrix on other data, e.g. another demo data seed (repeatable): the checks are also given pooled over RESULTS and these, each difference the mean of the folders' means ± its SE over the folders."),
    recipe: Optional[Path] = RecipeOpt, sets: Optional[List[str]] = SetOpt,
):
    """The paper's tables from run folders only (paper numbers beside): Table 1, Table 4 and the overfitting comparison; Table 3, Table 5 and Figure 1 with --table 3|5|fig1|all (all: every table of the paper); --table methods: G-Blend's successors beside naive, G-Blend and the best uni-modal model, with their diagnostics.

    Missing runs are listed once, each with the command that trains it into RESULTS; a requested
    table without any data exits with code 2. Without --recipe, a results folder `gblend reproduce`
    ran into is read with the recipe it ran (RESULTS/reproduce_config.toml: its --seeds and --set)."""
    from .config import results_dir
    from .report import FIGURE_FILES, REPORT_DIR, build, empty_tables, figures, parse_tables, report_folder
    from .report_render import print_rich, render, render_csv
    from .reproduce import RAN_WITH
    from .storage import write_text_atomic

    cfg = _config(recipe, sets)
    results = results or results_dir(cfg)
    if not results.is_dir():
        raise UserError(f"{results}: no such results folder (--results); run `gblend reproduce` or a train command first")
    recipe_arg = str(recipe) if recipe else ""
    if recipe is None and (results / RAN_WITH).exists():  # the matrix `reproduce` ran here (its --seeds, --set)
        cfg, recipe_arg = _config(results / RAN_WITH, sets), str(results / RAN_WITH)
    tables = parse_tables(table or "core")
    if out is not None and out.is_dir():
        raise UserError(f"--out {out}: is a folder; give a file name, e.g. {out / 'tables.md'}")
    if fmt == "csv" and len(tables) > 1 and out is None:
        raise UserError("--format csv writes one table per file: give --table 1|4|overfit|3|5|fig1|methods, or --out FILE.csv "
                        "(then FILE_table1.csv, FILE_table4.csv, ...)")
    rep = build(results, tables, cfg, recipe_arg, sets or [])
    if pool:
        rep |= _pooled_checks(rep, results, pool, recipe, sets)

    def draw(make, path: Path) -> None:
        """A figure beside the tables. Asked for (--figure): a write that fails is the command's
        error; by default (RESULTS/report) it is a warning, and the tables still come out (a report
        read from someone else's read-only results folder)."""
        try:
            fig = make(path)
        except OSError as e:
            if figure is not None:
                raise
            console.print(f"warning: figure not written ({e.strerror or e}: {e.filename or path}); "
                          f"--figure PATH writes it elsewhere", soft_wrap=True, markup=False)
            return
        if fig:
            console.print(f"figure: {fig}")

    fig_dir = figure.parent if figure else results / REPORT_DIR
    drawn = figures(rep, figure.name if figure else FIGURE_FILES["overfit"])
    with contextlib.ExitStack() as held:
        if figure is None and drawn:  # RESULTS/report, where reproduce writes too
            try:
                held.enter_context(report_folder(fig_dir, "report"))
            except OSError:
                pass  # a results folder we cannot write to: each figure's own warning says so
            except UserError as e:
                console.print(f"warning: figures not written ({e}); --figure PATH writes them elsewhere",
                              soft_wrap=True, markup=False)
                drawn = {}
        for name, make in drawn.items():
            draw(make, fig_dir / name)
    if fmt is None and out is None:
        print_rich(rep)
    elif fmt == "csv" and len(tables) > 1:
        for k in tables:
            path = out.with_name(f"{out.stem}_{k}{out.suffix or '.csv'}")
            write_text_atomic(path, render_csv(rep, k))
            console.print(f"wrote {path}")
    elif out:
        write_text_atomic(out, render(rep, fmt or "markdown"))
        console.print(f"wrote {out}")
    else:
        sys.stdout.write(render(rep, fmt))
    empty = empty_tables(rep, optional=("table5", "fig1", "table3") if table == "all" else ())
    if empty:
        raise UserError(f"{results}: no runs for {', '.join(empty)}; the commands above train them")


@app.command("reproduce", epilog="Examples:\n\n  gblend reproduce                       # the embedded demo, CPU, minutes\n\n"
             "  gblend reproduce --seeds 0             # one seed: faster\n\n"
             "  gblend reproduce --print-commands --recipe kinetics400 --launcher 'torchrun --nproc_per_node=8 -m gblend_cli'")
@command
def reproduce_cmd(
    recipe: Optional[Path] = RecipeOpt,
    seeds: Optional[str] = typer.Option(None, "--seeds", help=f"Training seeds of every combination's rows, e.g. 3,4,5 {_d('reproduce.seeds')}."),
    table: Optional[TableChoice] = typer.Option(None, "--table", "-t", help="Which tables' runs to train and print: 1, 4 or overfit (the matrix of [reproduce]), 3, 5 or fig1 (their own runs, sharing any already there), all (every table of the paper), methods (G-Blend's successors: reproduce.methods on reproduce.methods_combos) " + escape("[default: 1, 4 and overfit].")),
    results: Optional[Path] = typer.Option(None, "--results", help="Results folder " + escape("[default: the recipe's, results/demo].")),
    jobs: Optional[int] = typer.Option(None, "--jobs", "-j", help=f"Runs in parallel {_d('reproduce.jobs')}."),
    print_commands: bool = typer.Option(False, "--print-commands", help="Print the matrix's commands (unfinished runs, dependencies first), one per line, instead of running them."),
    all_runs: bool = typer.Option(False, "--all", help="With --print-commands: every run, finished ones too (each resumes or says it is complete)."),
    launcher: str = typer.Option("gblend", "--launcher", help="With --print-commands: what starts each command, e.g. 'torchrun --nproc_per_node=8 -m gblend_cli'."),
    sets: Optional[List[str]] = SetOpt,
):
    """Run a recipe's whole matrix (data, uni-modal, naive, G-Blend runs, OGR, report), resumably; --table methods: the matrix of G-Blend's successors (reproduce.methods on reproduce.methods_combos), sharing its uni-modal, naive and G-Blend runs."""
    from .config import resolve_recipe_path
    from .report import parse_tables
    from .reproduce import print_commands as print_matrix, reproduce

    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seeds: expected comma-separated integers like 0,1,2; got {seeds!r}") from None
        if not seed_list:
            raise UserError("--seeds: give at least one seed")
    tables = parse_tables(table or "core") + (["overfit"] if table in ("1", "4") else [])
    cfg = _config(recipe, sets, reproduce__seeds=seed_list, reproduce__other_seeds=seed_list, reproduce__jobs=jobs,
                  dataset__results_dir=str(results) if results else None)
    if print_commands:
        print_matrix(cfg, resolve_recipe_path(recipe), sets or [], launcher, all_runs, tables)
        return
    _loading("reproduce")
    reproduce(cfg, run_argv, resolve_recipe_path(recipe), sets or [], results, sorted(set(tables), key=tables.index),
              str(recipe) if recipe else "")


def main(argv: list[str] | None = None) -> None:
    """The console-script entry point. Typer's own parsing errors (a bad --lr, a missing option, a
    choice that is not one) get the same one-line form and exit code as ours."""
    try:
        code = app(args=argv, prog_name="gblend", standalone_mode=False)
    except Exception as e:  # click's UsageError family (vendored by Typer): format_message + exit_code
        if not (hasattr(e, "format_message") and hasattr(e, "exit_code")):
            raise
        message = " ".join(e.format_message().split()).replace("Value error, ", "")
        option = getattr(getattr(e, "param", None), "opts", None)
        if option and option[0] not in message:
            message = f"{option[0]}: {message}"
        console.print("[red]error:[/red]", escape(message), soft_wrap=True)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)


def run_argv(argv: list[str]) -> None:
    """`gblend <argv>` in this process: the entry point `reproduce` starts its runs with."""
    main(argv)


if __name__ == "__main__":  # pragma: no cover
    main()
