"""`report`'s other tables: the paper's Table 3 (optimisers), Table 5 (regularisers, A+RGB) and
Figure 1 (attempted fixes, A+RGB), built only from run folders (final.json; a naive run's
early_stop.json for Figure 1's early stopping), the paper's Kinetics numbers beside them
(gblend_cli/paper.py).

Which runs make each row is `experiment.table_keys`; a run two tables share (naive, the uni-modal
runs, offline G-Blend) is the same folder. A row whose runs are absent shows `null` numbers and
the commands that train them, never a zero. This module reads a report `Matrix` (report.py)
without importing report.py.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from . import paper
from .config import DEFAULTS
from .experiment import EXTRA_TABLES, RunKey, dependencies, estimators, table_keys, tables_pair
from .storage import save_figure_atomic

LABELS = {
    "table5": {"audio": "audio only", "rgb": "RGB only", "pretrain": "pre-training", "naive": "naive",
               "dropout": "dropout", "aux": "auxiliary loss (equal weights)", "gblend": "G-Blend"},
    "fig1": {"rgb": "RGB only", "late": "late concat (naive)", "pretrain": "pre-train", "earlystop": "early stop",
             "dropout": "dropout", "midconcat": "mid concat", "se-gate": "SE gate", "nl-gate": "NL gate"},
    "table3": {"rgb": "RGB only", "naive": "naive A+RGB", "gblend": "G-Blend"},
}
TITLES = {
    "table5": "Table 5: A+RGB, uni-modal vs naive vs regularisers vs G-Blend (clip top-1 / video top-1 / video top-5, %)",
    "fig1": "Figure 1: attempted fixes for naive A+RGB (video top-1, %)",
    "table3": "Table 3: optimisers (clip top-1 / video top-1 / video top-5, %)",
}
METRICS = ("clip_top1", "video_top1", "video_top5")
LEVEL = 1.0  # video top-1 points: a smaller difference counts as level (the paper's fixes differ by 0.1-1.5)


def _stats(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return round(statistics.fmean(values), 2), round(statistics.stdev(values), 2) if len(values) > 1 else 0.0


def _label(table: str, row: str, cfg: dict) -> str:
    """The row's name; 'RGB' becomes 'OF' when the tables' pair is audio+flow."""
    visual = [m for m in tables_pair(cfg) if m != "audio"][0]
    return LABELS[table][row].replace("RGB", paper.SHORT[visual]) if visual != "rgb" else LABELS[table][row]


def _commands(mx, key: RunKey, cfg: dict, found: dict) -> list[str]:
    """The commands that train `key` into mx.results, the runs it depends on first (those absent)."""
    results = Path(mx.results) if mx.results else None
    cmds = []
    for dep in dependencies(cfg, key):
        if dep not in found:
            cmds += _commands(mx, dep, cfg, found)
    where = (lambda ks: [results / k.name for k in ks]) if results else (lambda ks: [Path(k.name) for k in ks])
    ests = estimators(cfg, key)
    cmds.append(key.command(recipe=mx.recipe_arg or None, data=mx.data, out=results / key.name if results else None,
                            sets=mx.sets, init_from=where(key.init_keys()), estimate_from=where(ests), cfg=cfg))
    return cmds


def rows(mx, table: str) -> list[dict]:
    """One row per method (Table 3: per optimiser and method), mean ± std over the seeds found of
    `reproduce.seeds`; `missing` holds the commands of the absent runs."""
    cfg = mx.cfg if mx.cfg and "tables" in mx.cfg else {**DEFAULTS, **(mx.cfg or {})}
    found = {f.key(): f for f in mx.folders}
    seeds = list(cfg["reproduce"]["seeds"])
    per_seed = {s: table_keys(cfg, table, s) for s in seeds}
    out = []
    for i, (row, opt, key0) in enumerate(per_seed[seeds[0]] if seeds else []):
        values = {m: [] for m in METRICS}
        got, missing, notes, epochs = [], [], [], []
        for s in seeds:
            key = per_seed[s][i][2]
            folder = found.get(key)
            result = folder.final() if folder else None
            if folder and row == "earlystop":
                result = folder.early_stop()
                if result is None:
                    notes.append(f"{folder.path}: no early_stop.json (a naive run trained before gblend recorded "
                                 f"its best-by-V evaluation); train it again into an empty --out to get it")
                else:
                    epochs.append(result["epoch"])
            if result is None:
                if not folder:
                    missing += [c for c in _commands(mx, key, cfg, found) if c not in missing]
                continue
            got.append(s)
            for m in METRICS:
                if result.get(m) is not None:
                    values[m].append(result[m])
        r = {"method": _label(table, row, cfg), "row": row} | ({"optimizer": opt} if table == "table3" else {})
        r["run"] = RunKey(key0.method, key0.modalities, 0, key0.mode, key0.fix, key0.optimizer).name[:-3]
        for m in METRICS:
            r[m], r[f"{m}_std"] = _stats(values[m])
        r["seeds"] = got
        if table == "fig1":
            r["best_epochs"] = epochs if row == "earlystop" else None
            r |= {"paper_clip_top1": None, "paper_video_top1": paper.FIG1.get(row), "paper_video_top5": None}
        else:
            p = paper.TABLE5.get(row) if table == "table5" else paper.TABLE3.get(opt, {}).get(row)
            r |= {f"paper_{m}": p[j] if p else None for j, m in enumerate(METRICS)}
            if table == "table5":
                ms = paper.TABLE5_MINI_SPORTS.get(row)
                r |= {f"paper_mini_sports_{m}": ms[j] if ms else None for j, m in enumerate(METRICS)}
        r["missing"], r["notes"] = missing, notes
        out.append(r)
    if table == "fig1":  # each fix against late concat, ours and the paper's
        base = next((r for r in out if r["row"] == "late"), None)
        for r in out:
            r["vs_late"] = None if base is None or r["video_top1"] is None or base["video_top1"] is None \
                else round(r["video_top1"] - base["video_top1"], 2)
            r["paper_vs_late"] = round(r["paper_video_top1"] - paper.FIG1["late"], 2)
    return out


def build(mx, tables) -> dict:
    """{table: rows} for the requested ones of Table 3, Table 5 and Figure 1."""
    return {t: rows(mx, t) for t in EXTRA_TABLES if t in tables}


def findings(report: dict) -> list[str]:
    """Each of the paper's findings these tables test, on our numbers (means over the seeds found):
    for every fix and G-Blend (Table 5, Fig. 1), whether it lands on the same side of naive fusion
    and of the uni-modal model as in the paper's Kinetics numbers (within LEVEL points counts as
    level with); for every optimiser (Table 3), whether naive < RGB < G-Blend, as in the paper."""
    out = []

    def side(x: float) -> str:
        return "above" if x > LEVEL else "below" if x < -LEVEL else "level with"

    for table, base_row in (("table5", "naive"), ("fig1", "late")):
        if table not in report:
            continue
        t, name = report[table], TITLES[table].split(":")[0]
        rows_ = {r["row"]: r for r in t}
        uni, naive = rows_["rgb"], rows_[base_row]
        if uni["video_top1"] is None or naive["video_top1"] is None:
            out.append(f"{name}: cannot be checked: the uni-modal or naive run is missing")
            continue
        for r in t:
            if r["row"] in ("rgb", "audio", base_row) or r["video_top1"] is None:
                continue
            parts, same = [], True
            for ref, label in ((naive, "naive"), (uni, uni["method"])):
                ours, theirs = r["video_top1"] - ref["video_top1"], r["paper_video_top1"] - ref["paper_video_top1"]
                same &= side(ours) == side(theirs)
                parts.append(f"{side(ours)} {label} ({ours:+.1f}; paper {theirs:+.1f})")
            out.append(f"{name}, {r['method']}: {' and '.join(parts)}: {'AS IN THE PAPER' if same else 'NOT AS IN THE PAPER'}")
    if "table3" in report:
        for opt in dict.fromkeys(r["optimizer"] for r in report["table3"]):
            vals = {r["row"]: r["video_top1"] for r in report["table3"] if r["optimizer"] == opt}
            if None in vals.values():
                out.append(f"Table 3, {opt}: cannot be checked: runs are missing")
                continue
            ok = vals["naive"] < vals["rgb"] < vals["gblend"]
            out.append(f"Table 3, {opt}: naive below RGB below G-Blend (paper): {'HOLDS' if ok else 'DOES NOT HOLD'} "
                       f"(naive {vals['naive']:.1f}, RGB {vals['rgb']:.1f}, G-Blend {vals['gblend']:.1f})")
    return out


# --- rendering -----------------------------------------------------------------------------------
def _num(v, std=None, n: int = 1) -> str:
    if v is None:
        return "missing"
    return f"{v:.1f} ± {std:.1f}" if std is not None and n > 1 else f"{v:.1f}"


def _paper(r: dict) -> str:
    vals = [r.get(f"paper_{m}") for m in METRICS]
    return "/".join("-" if x is None else f"{x:.1f}" for x in vals) if any(x is not None for x in vals) else ""


def display_rows(name: str, rows_: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Human-readable cells for the terminal, Markdown and LaTeX."""
    def cell(r, m):
        return _num(r[m], r[f"{m}_std"], len(r["seeds"]))

    seeds = lambda r: ",".join(map(str, r["seeds"])) or "-"  # noqa: E731
    if name == "fig1":
        headers = ["Method", "V@1", "vs late concat", "Seeds", "Paper V@1", "Paper vs late concat"]
        body = [[r["method"] + (f" (epochs {','.join(map(str, r['best_epochs']))})" if r.get("best_epochs") else ""),
                 cell(r, "video_top1"), "missing" if r["vs_late"] is None else f"{r['vs_late']:+.1f}", seeds(r),
                 _num(r["paper_video_top1"]), f"{r['paper_vs_late']:+.1f}"]
                for r in rows_]
        return headers, body
    headers = (["Optimizer"] if name == "table3" else []) + ["Method", "Clip", "V@1", "V@5", "Seeds", "Paper clip/V@1/V@5"]
    body = [([r["optimizer"]] if name == "table3" else []) + [r["method"]] + [cell(r, m) for m in METRICS]
            + [seeds(r), _paper(r)] for r in rows_]
    return headers, body


def fig1_figure(rows_: list[dict], path: Path) -> Path | None:
    """Figure 1 as a bar chart: our video top-1 per fix (mean, ± std over seeds) beside the
    paper's Kinetics numbers, each with its late-concat level as a dashed line; a missing run has
    no bar and says so. None when no row has a number."""
    if not any(r["video_top1"] is not None for r in rows_):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 5.5), sharey=False)
    x = list(range(len(rows_)))
    names = [r["method"] for r in rows_]
    ours = [r["video_top1"] or 0.0 for r in rows_]
    errs = [r["video_top1_std"] or 0.0 for r in rows_]
    axes[0].bar(x, ours, yerr=errs, color=["C0" if r["video_top1"] is not None else "none" for r in rows_], capsize=3)
    axes[1].bar(x, [r["paper_video_top1"] for r in rows_], color="C1")
    for ax, title, vals, base in ((axes[0], "this run (demo)", [r["video_top1"] for r in rows_], "late"),
                                  (axes[1], "paper (Kinetics)", [r["paper_video_top1"] for r in rows_], "late")):
        have = [v for v in vals if v is not None]
        late = next((v for r, v in zip(rows_, vals) if r["row"] == base), None)
        if late is not None:
            ax.axhline(late, ls="--", color="grey", lw=1)
        if have:
            ax.set_ylim(max(0.0, min(have) - 10), min(100.0, max(have) + 5))
        for i, v in enumerate(vals):
            if v is None:
                ax.text(i, ax.get_ylim()[0], "missing", rotation=90, ha="center", va="bottom", fontsize=8, color="red")
        ax.set_xticks(x, names, rotation=45, ha="right", fontsize=8)
        ax.set_title(title)
        ax.set_ylabel("video top-1 (%)")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Figure 1: attempted fixes for naive A+RGB (dashed: late concat)")
    fig.tight_layout()
    try:
        save_figure_atomic(path, fig)
    finally:
        plt.close(fig)
    return path
