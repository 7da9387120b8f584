"""`report`: the paper's Table 1, Table 4 and the overfitting comparison (Fig. 4), built only
from run folders (final.json, metrics.jsonl, blend_weights.jsonl); Table 3, Table 5 and Figure 1
come from gblend_cli/paper_tables.py and are built here beside them (how they are printed:
gblend_cli/report_render.py). The paper's numbers come from
gblend_cli/paper.py and are labelled `paper_*`. A run the recipe's matrix expects but that is not
there is shown as missing, with the command that would produce it.

`--table methods` (G-Blend's successors): gblend_cli/methods_table.py.
"""

from __future__ import annotations

import contextlib
import statistics
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterator

from . import checks, methods_table, paper, paper_tables
from .checks import TOL
from .errors import UserError
from .experiment import RunKey, matrix
from .ogr import evaluated_epochs, ogr_between
from .run_folder import RunFolder, estimate_in_force
from .storage import folder_lock, remove_stale_temps, save_figure_atomic

METHOD_LABELS = {"unimodal": "uni-modal", "naive": "naive", "gblend-offline": "G-Blend offline",
                 "gblend-online": "G-Blend online", "gblend-equal": "auxiliary loss (equal w)",
                 "gblend-fixed": "G-Blend fixed w"} | methods_table.LABELS


def _stats(values: list[float]) -> dict:
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


class Matrix:
    """The finished runs found under a results folder, grouped by (variant, combo), beside the
    matrix the recipe expects."""

    def __init__(self, folders: list[RunFolder], cfg: dict | None = None, recipe_arg: str = "",
                 results: Path | None = None, sets=()):
        self.folders, self.cfg, self.recipe_arg, self.results, self.sets = folders, cfg, recipe_arg, results, list(sets)
        self.data = _common_data_dir(folders)
        self.by_key: dict[tuple[str, str], list[RunFolder]] = {}
        self.base_optimizer = None if (cfg or {}).get("train", {}).get("optimizer", "sgd") == "sgd" else cfg["train"]["optimizer"]
        seen: dict[RunKey, RunFolder] = {}
        for f in folders:
            k = f.key()
            if k in seen:  # averaging both would count one seed twice (a copy, or two data sets in one folder)
                raise UserError(f"{seen[k].path} and {f.path} are the same run ({k.name}) under one results "
                                f"folder; move one out (a report averages every run it finds, once per seed)")
            seen[k] = f
            if k.fix is None and k.optimizer == self.base_optimizer:  # the other tables' runs: paper_tables.py
                self.by_key.setdefault((k.variant, k.combo), []).append(f)
        rp = (cfg or {}).get("reproduce")
        self.main = rp["main"] if rp else "audio+rgb"
        self.expected = matrix(cfg) if rp else []
        self.seeds = {c: (rp["seeds"] if c == self.main else rp["other_seeds"]) for c in [self.main] + rp["other_combos"]} if rp else {}
        self.modes = {c: (rp["gblend_modes"] if c == self.main else rp["other_gblend_modes"]) for c in self.seeds} if rp else {}

    def combos(self) -> list[str]:
        present = {c for (m, c) in self.by_key if "+" in c} | set(self.seeds)
        return [c for c in paper.COMBOS if c in present] + sorted(present - set(paper.COMBOS))

    def get(self, variant: str, combo: str) -> list[RunFolder]:
        return sorted(self.by_key.get((variant, combo), []), key=lambda f: f.key().seed)

    def expected_seeds(self, combo: str) -> list[int]:
        return list(self.seeds.get(combo, [0]))

    def matrix_seeds(self, variant: str, combo: str) -> list[int]:
        """The seeds the recipe's matrix has for (variant, combo), e.g. every seed of a uni-modal run."""
        return sorted({k.seed for k in self.expected if k.variant == variant and k.combo == combo})

    def missing(self, variant: str, combo: str, seeds: list[int] | None = None) -> list[str]:
        """Commands that would produce the expected but absent runs of (variant, combo)."""
        have = {f.key().seed for f in self.get(variant, combo)}
        want = seeds if seeds is not None else self.expected_seeds(combo)
        keys = [RunKey.from_variant(variant, combo.split("+"), s, optimizer=self.base_optimizer)
                for s in want if s not in have]
        return [k.command(recipe=self.recipe_arg or None, data=self.data,
                          out=self.results / k.name if self.results else None, sets=self.sets) for k in keys]

    def metric(self, variant: str, combo: str, key: str) -> dict:
        return _stats([f.final()[key] for f in self.get(variant, combo) if f.final().get(key) is not None])

    def row_seeds(self, combo: str) -> list[int]:
        """The seeds of a combination's rows: those of its naive runs found, else the recipe's."""
        return sorted({f.key().seed for f in self.get("naive", combo)}) or self.expected_seeds(combo)

    def unimodal(self, modality: str, combo: str) -> list[RunFolder]:
        """The uni-modal runs a combination is compared with: those of its rows' seeds, so that
        naive and the best single modality are means over the same seeds (a recipe's main
        combination may have more seeds than the others)."""
        seeds = set(self.row_seeds(combo))
        return [f for f in self.get("unimodal", modality) if f.key().seed in seeds]

    def unimodal_metric(self, modality: str, combo: str, key: str) -> dict:
        return _stats([f.final()[key] for f in self.unimodal(modality, combo)])

    @cached_property
    def oracle(self) -> dict:
        """The demo's oracle video top-1 per stream set on the evaluation split (`demo_data.oracle`),
        read from the prepared folder the runs trained on; empty for other data."""
        from .demo_data import read_oracle

        return read_oracle(self.data) or {}

    def best_unimodal(self, combo: str) -> str | None:
        """The modality of `combo` whose uni-modal runs (of the combination's seeds) have the best
        mean video top-1."""
        scores = {m: self.unimodal_metric(m, combo, "video_top1")["mean"] for m in combo.split("+")}
        scores = {m: s for m, s in scores.items() if s is not None}
        return max(scores, key=scores.get) if scores else None


def _common_data_dir(folders: list[RunFolder]) -> str | None:
    """The prepared data every found run trained on (from their config.toml), when they agree: the
    commands for missing runs then train on the same data."""
    import tomllib

    seen = set()
    for f in folders:
        try:
            seen.add(tomllib.loads((f.path / "config.toml").read_text())["dataset"]["data_dir"])
        except (OSError, KeyError, tomllib.TOMLDecodeError):
            return None
    return seen.pop() if len(seen) == 1 else None


def _mean(stats: dict) -> float | None:
    return None if stats["mean"] is None else round(stats["mean"], 2)


def _std(stats: dict) -> float | None:
    return None if stats["mean"] is None else round(stats["std"], 2)


# --- Table 1 -------------------------------------------------------------------------------------
def table1(mx: Matrix) -> list[dict]:
    """Naive late fusion vs the best uni-modal model, video top-1 (paper Table 1)."""
    rows = []
    for combo in mx.combos():
        naive = mx.metric("naive", combo, "video_top1")
        best = mx.best_unimodal(combo)
        best_v = mx.unimodal_metric(best, combo, "video_top1") if best else _stats([])
        p = paper.TABLE1.get(combo, {})
        missing = mx.missing("naive", combo) + [c for m in combo.split("+") for c in mx.missing("unimodal", m, mx.expected_seeds(combo))]
        oracle = mx.oracle
        rows.append({
            "combo": paper.combo_label(combo),
            "naive_video_top1": _mean(naive), "naive_std": _std(naive), "naive_seeds": naive["n"],
            "best_unimodal": paper.combo_label(best) if best else None,
            "best_unimodal_video_top1": _mean(best_v), "best_unimodal_std": _std(best_v),
            "drop": None if naive["mean"] is None or best_v["mean"] is None else round(naive["mean"] - best_v["mean"], 2),
            "paper_late_fusion": p.get("late_fusion"), "paper_best_unimodal": p.get("best_unimodal_video_top1"),
            "paper_drop": p.get("drop"),
            # the demo only: the best any model of the combination / of that modality could score
            "oracle_video_top1": oracle.get(combo), "oracle_best_unimodal_video_top1": oracle.get(best) if best else None,
            "missing": sorted(set(missing)),
        })
    return rows


# --- Table 4 -------------------------------------------------------------------------------------
def blend_summary(runs: list[RunFolder]) -> dict:
    """The weights a G-Blend row trained with, over its seeds: `weights` (final.json's w) and
    `weights_raw` (the formula's w_raw of the estimation those weights came from: the last one of
    each run, or the one an online run kept), mean and std per head, the heads whose weight a floor
    lifted or the noise guard set in any seed, and `kept` (the seeds whose last online estimate kept
    the weights in force)."""
    finals = [r.final()["weights"] for r in runs if r.final().get("weights")]
    journals = [(r, rows) for r in runs if (rows := r.blend_rows())]
    rows = [estimate_in_force(rows) for _, rows in journals]
    out = {"weights": None, "weights_std": None, "weights_raw": None, "weights_raw_std": None,
           "floored": [], "noise_bound": [], "weights_source": None,
           "kept": sorted(r.key().seed for r, rows in journals if rows[-1].get("kept_from") is not None)}
    if finals:
        heads = list(finals[0])
        out["weights"] = {h: round(statistics.fmean(w.get(h, 0.0) for w in finals), 3) for h in heads}
        out["weights_std"] = {h: round(_stats([w.get(h, 0.0) for w in finals])["std"], 3) for h in heads}
    raws = [{h: v["w_raw"] for h, v in row["heads"].items()} for row in rows]
    if raws and all(v is not None for raw in raws for v in raw.values()):
        heads = list(raws[0])
        out["weights_raw"] = {h: round(statistics.fmean(r[h] for r in raws), 3) for h in heads}
        out["weights_raw_std"] = {h: round(_stats([r[h] for r in raws])["std"], 3) for h in heads}
    for flag in ("floored", "noise_bound"):
        out[flag] = sorted({h for row in rows for h, v in row["heads"].items() if v.get(flag)})
    if rows:
        out["weights_source"] = "runs" if all(row.get("source") == "runs" for row in rows) else "estimated"
    return out


def table4(mx: Matrix) -> list[dict]:
    """Best uni-modal vs naive vs G-Blend: clip top-1 / video top-1 / top-5, mean ± std over seeds."""
    rows = []
    for combo in mx.combos():
        p = paper.TABLE4.get(combo, {})
        best = mx.best_unimodal(combo)
        gb_methods = [f"gblend-{m}" for m in mx.modes.get(combo, [])]
        gb_methods += sorted({m for (m, c) in mx.by_key if c == combo and m.startswith("gblend-")} - set(gb_methods))
        for method, key_combo, paper_key in ([("unimodal", best or combo.split("+")[0], "best_unimodal"),
                                              ("naive", combo, "naive")] + [(m, combo, "gblend") for m in gb_methods]):
            runs = mx.unimodal(key_combo, combo) if method == "unimodal" else mx.get(method, key_combo)
            clip, v1, v5 = (_stats([f.final()[k] for f in runs]) for k in ("clip_top1", "video_top1", "video_top5"))
            label = METHOD_LABELS.get(method, method)
            if method == "unimodal":
                label = f"best uni-modal ({paper.combo_label(best)})" if best else "best uni-modal"
                missing = sorted({c for m in combo.split("+") for c in mx.missing("unimodal", m, mx.expected_seeds(combo))})
            else:
                missing = mx.missing(method, combo)
            # the paper's Table 4 G-Blend rows are offline (they equal Table 2's offline A+RGB row);
            # its only online numbers are Table 2's (A+RGB, no weights given)
            pv = p.get(paper_key) if paper_key != "gblend" or method == "gblend-offline" else None
            if method == "gblend-online" and combo == "audio+rgb":
                pv = paper.TABLE2["gblend-online"]
            blend = blend_summary(runs if method.startswith("gblend") else [])
            rows.append({
                "combo": paper.combo_label(combo), "method": label, **blend,
                "clip_top1": _mean(clip), "video_top1": _mean(v1), "video_top5": _mean(v5),
                "clip_top1_std": _std(clip), "video_top1_std": _std(v1), "video_top5_std": _std(v5),
                "seeds": [r.key().seed for r in runs],
                "paper_clip_top1": pv[0] if pv else None, "paper_video_top1": pv[1] if pv else None,
                "paper_video_top5": pv[2] if pv else None,
                "paper_weights": p.get("weights") if method == "gblend-offline" and pv else None,
                "missing": missing,
            })
    return rows


# --- overfitting comparison (Fig. 4) ------------------------------------------------------------
def overfit(mx: Matrix) -> tuple[list[dict], list[str]]:
    """Final train vs validation top-1 (clip level, both centre-cropped in eval mode), their gap and
    the OGR over the whole run, for the uni-modal, naive and G-Blend runs; plus the paper's claims
    checked on these numbers."""
    entries = [("unimodal", m) for m in ("audio", "rgb", "flow")] + [("naive", c) for c in mx.combos()]
    entries += [(m, mx.main) for m in sorted({m for (m, c) in mx.by_key if c == mx.main and m.startswith("gblend-")})]
    rows = []
    for method, combo in entries:
        runs = mx.get(method, combo)
        expected = method == "unimodal" and any(combo in c.split("+") for c in mx.seeds) or combo in mx.seeds
        if not runs and not expected:
            continue
        ogrs = []
        for r in runs:
            ep = evaluated_epochs(r.metrics())
            o = ogr_between(r.metrics(), r.final()["head"], ep[0], ep[-1]) if len(ep) >= 2 else None
            if o and o["ogr"] is not None:
                ogrs.append(o["ogr"])
        tr, va = mx.metric(method, combo, "train_top1"), mx.metric(method, combo, "clip_top1")
        rows.append({
            "run": f"{METHOD_LABELS.get(method, method)} {paper.combo_label(combo)}", "method": method,
            "modalities": paper.combo_label(combo), "train_top1": _mean(tr), "val_top1": _mean(va),
            "gap": None if tr["mean"] is None or va["mean"] is None else round(tr["mean"] - va["mean"], 2),
            "ogr": round(statistics.fmean(ogrs), 3) if ogrs else None, "seeds": [r.key().seed for r in runs],
            "missing": mx.missing(method, combo, mx.matrix_seeds(method, combo)),
        })
    return rows, claims(mx)


def claims(mx: Matrix) -> list[str]:
    """The paper's two claims, evaluated on the main combination's numbers."""
    c = mx.main
    best = mx.best_unimodal(c)
    out = []
    naive_tr, naive_va = mx.metric("naive", c, "train_top1")["mean"], mx.metric("naive", c, "video_top1")["mean"]
    if best and naive_tr is not None:
        uni_tr, uni_va = (mx.unimodal_metric(best, c, k)["mean"] for k in ("train_top1", "video_top1"))
        holds = naive_tr > uni_tr + TOL and naive_va < uni_va - TOL
        out.append(f"Claim 1 ({paper.combo_label(c)}): naive multi-modal has lower train error but higher validation error "
                   f"than the best uni-modal model ({paper.combo_label(best)}): {'HOLDS' if holds else 'DOES NOT HOLD'} "
                   f"(train top-1 {naive_tr:.1f} vs {uni_tr:.1f}; val video top-1 {naive_va:.1f} vs {uni_va:.1f})")
    else:
        out.append(f"Claim 1 ({paper.combo_label(c)}): cannot be checked: naive or uni-modal runs are missing")
    gb = {m: mx.metric(m, c, "video_top1")["mean"] for m in (f"gblend-{x}" for x in ("offline", "online"))}
    gb = {m: v for m, v in gb.items() if v is not None}
    uni_va = mx.unimodal_metric(best, c, "video_top1")["mean"] if best else None
    if gb and naive_va is not None and uni_va is not None:
        parts = []
        for m, v in gb.items():
            holds = v > naive_va + TOL and v > uni_va + TOL
            parts.append(f"{METHOD_LABELS[m]} {v:.1f}: {'HOLDS' if holds else 'DOES NOT HOLD'}")
        out.append(f"Claim 2 ({paper.combo_label(c)}): G-Blend beats both naive ({naive_va:.1f}) and the best uni-modal "
                   f"model ({uni_va:.1f}) in video top-1: " + "; ".join(parts))
    else:
        out.append(f"Claim 2 ({paper.combo_label(c)}): cannot be checked: G-Blend, naive or uni-modal runs are missing")
    return out


# --- RESULTS/report: reproduce's report files (report*.md|json|csv) and the default figures -----
REPORT_DIR = "report"
FIGURE_FILES = {"overfit": "overfitting.png", "fig1": "fig1.png"}  # each figure's file name there
REPORT_WAIT_S = 30.0  # how long a writer there waits for another (each holds the folder for seconds)


@contextlib.contextmanager
def report_folder(folder: Path, what: str) -> Iterator[None]:
    """RESULTS/report for one writer at a time (reproduce's report, report's default figures: a
    second waits up to REPORT_WAIT_S instead of refusing), who first removes what a killed writer
    left of the report's files there — and nothing else (`report --out` may write there too)."""
    with folder_lock(folder, what, wait_s=REPORT_WAIT_S):
        remove_stale_temps(folder, of=["report*", *FIGURE_FILES.values()])
        yield


def figures(rep: dict, overfit_name: str = FIGURE_FILES["overfit"]) -> dict[str, Callable[[Path], Path | None]]:
    """The figures `rep` has, by file name (Fig. 4's may be renamed: report --figure): each a
    function that draws it to a path and returns that path (None: nothing to draw)."""
    out = {}
    if "overfit" in rep:
        out[overfit_name] = lambda path: overfit_figure(rep["_matrix"], path)
    if "fig1" in rep:
        out[FIGURE_FILES["fig1"]] = lambda path: paper_tables.fig1_figure(rep["fig1"], path)
    return out


def overfit_figure(mx: Matrix, path: Path) -> Path | None:
    """Train (dashed) and validation (solid) error per epoch for the uni-modal runs and naive and
    G-Blend on the main combination (first seed), like the paper's Figure 4."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    picks = [("unimodal", m) for m in ("audio", "rgb", "flow")] + [("naive", mx.main), ("gblend-offline", mx.main),
                                                                   ("gblend-online", mx.main)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = 0
    for i, (method, combo) in enumerate(picks):
        runs = mx.get(method, combo)
        if not runs:
            continue
        r, head = runs[0], runs[0].final()["head"]
        rows = [x for x in r.metrics() if x.get("train") and x.get("val")]
        ep = [x["epoch"] for x in rows]
        colour = f"C{i}"
        label = f"{METHOD_LABELS.get(method, method)} {paper.combo_label(combo)}"
        ax.plot(ep, [100 - x["train"][head]["top1"] for x in rows], "--", color=colour)
        ax.plot(ep, [100 - x["val"][head]["top1"] for x in rows], "-", color=colour, label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xlabel("epoch")
    ax.set_ylabel("clip error (%)")
    ax.set_title("Train (dashed) and validation (solid) error")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        save_figure_atomic(path, fig)
    finally:
        plt.close(fig)
    return path


# --- rendering -----------------------------------------------------------------------------------
TITLES = {"table1": "Table 1: naive late fusion vs the best uni-modal model (video top-1, %)",
          "table4": "Table 4: G-Blend vs uni-modal vs naive (clip top-1 / video top-1 / video top-5, %; mean ± std over seeds)",
          "overfit": "Overfitting comparison (paper Fig. 4): final train vs validation clip top-1 (%), OGR over the run",
          "methods": methods_table.TITLE}


def build(results: Path, tables: list[str], cfg: dict | None, recipe_arg: str = "", sets=()) -> dict:
    """The requested tables from the run folders under `results`. Missing runs are listed (once,
    in `_missing`) with the command that trains each into `results`."""
    mx = Matrix(RunFolder.discover(results), cfg, recipe_arg, Path(results), sets)
    out: dict = {}
    if "table1" in tables:
        out["table1"] = table1(mx)
    if "table4" in tables:
        out["table4"] = table4(mx)
    if "overfit" in tables:
        out["overfit"], out["claims"] = overfit(mx)
        out["checks"] = checks.checks(mx, out["overfit"], METHOD_LABELS)
    if "methods" in tables:
        out["methods"] = methods_table.rows(mx, METHOD_LABELS)
    out |= paper_tables.build(mx, tables)
    out["_matrix"] = mx
    out["_missing"] = sorted({c for k in TABLES if k in out for r in out[k] for c in r.get("missing", [])})
    return out


TABLES = ("table1", "table4", "overfit", "table5", "fig1", "table3", "methods")
HAS_DATA = {"table1": ("naive_video_top1", "best_unimodal_video_top1"), "table4": ("video_top1",),
            "overfit": ("train_top1",), "table5": ("video_top1",), "fig1": ("video_top1",), "table3": ("video_top1",),
            "methods": ("video_top1",)}
ALL_TITLES = TITLES | paper_tables.TITLES  # TITLES: this module's tables (methods: methods_table.py)


def empty_tables(report: dict, optional=()) -> list[str]:
    """Requested tables without a single measured number (`optional` ones may be empty)."""
    return [k for k in TABLES if k in report and k not in optional
            and not any(r.get(c) is not None for r in report[k] for c in HAS_DATA[k])]


def parse_tables(table: str) -> list[str]:
    """--table's value -> table names. "core": Tables 1, 4 and the overfitting comparison; "all":
    every table of the paper (core, Table 5, Figure 1, Table 3); "methods" (G-Blend's successors,
    not in the paper) is asked for by name."""
    core = ["table1", "table4", "overfit"]
    names = {"1": ["table1"], "4": ["table4"], "overfit": ["overfit"], "3": ["table3"], "5": ["table5"],
             "fig1": ["fig1"], "core": core, "all": core + ["table5", "fig1", "table3"], "methods": ["methods"]}
    if table not in names:
        raise UserError(f"--table must be 1, 4, overfit, 3, 5, fig1, all or methods; got {table!r}")
    return names[table]
