"""`report --table methods`: G-Blend's successors beside naive fusion, G-Blend and the best
uni-modal model (chosen on V), one row per (method, combination), built only from run folders:
video top-1, each uni-modal head's video top-1, OGR per head over the run, each modality's Shapley
contribution to the fused prediction (final.json "diagnostics", gblend_cli/diagnostics.py), wall
time and peak memory; means over the seeds found. A run the recipe's methods matrix expects but
that is not there is shown as missing (never as zero), with the command that would produce it.

`report.py` calls `rows(mx, labels)` with its `Matrix` and renders `display(rows)`; this module
imports nothing from report.py (no import circle).
"""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

from . import paper
from .experiment import BALANCING_METHODS
from .ogr import ogr_per_head

if TYPE_CHECKING:
    from .run_folder import RunFolder

LABELS = {"ogm-ge": "OGM-GE", "mmpareto": "MMPareto", "umt": "UMT", "ume": "UME", "inforeg": "InfoReg",
          "best-unimodal": "best uni-modal"}
TITLE = ("G-Blend's successors: video top-1, each uni-modal head's video top-1, OGR per head, each modality's "
         "Shapley contribution to the fused prediction, wall time and peak memory (mean over seeds)")
NOTE = ("best uni-modal: chosen on V. Head V@1: each modality's own head (a stop-gradient probe for OGM-GE and "
        "UMT; naive has none: —). OGR: |ΔO/ΔG| from the first to the last evaluated epoch. Contribution: Shapley "
        "values of the fused head's V@1 over the modality subsets, missing modalities' features at their T' "
        "mean. Seconds: the run's own training and evaluation (UMT, UME and offline G-Blend read finished "
        "uni-modal/naive runs, whose time is in their own rows). Peak MB: the run process's peak RSS on CPU, "
        "peak allocated device memory on CUDA.")
LEFT = ("Head V@1", "OGR", "Contribution (V@1 points)")  # left-justified columns in the terminal


def run_ogr(folder: RunFolder) -> dict[str, float | None]:
    """{head: OGR between the run's first and last evaluated epochs}, from its metrics.jsonl (so
    runs from before final.json's diagnostics have it too)."""
    return ogr_per_head(folder.metrics(), (folder.final() or {}).get("heads", {}))


def holdout_top1(folder: RunFolder) -> float | None:
    """The judged head's clip top-1 on V at the run's last evaluated epoch (what the best uni-modal
    model is chosen by: never the evaluation split)."""
    head = folder.final()["head"]
    rows = [r for r in folder.metrics() if r.get("holdout")]
    return rows[-1]["holdout"].get(head, {}).get("top1") if rows else None


def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return (round(statistics.fmean(values), 2),
            round(statistics.stdev(values), 2) if len(values) > 1 else 0.0)


def _mean_dict(dicts: list[dict | None]) -> dict | None:
    """Per-key mean over runs (None for a key no run has a number for); None when any run lacks
    the dict altogether (e.g. a run from before the diagnostics): never a made-up zero."""
    if not dicts or any(d is None for d in dicts):
        return None
    out = {}
    for k in dict.fromkeys(k for d in dicts for k in d):
        vals = [d[k] for d in dicts if d.get(k) is not None]
        out[k] = round(statistics.fmean(vals), 3) if vals else None
    return out


def _row(variant: str, label: str, combo: str, runs: list[RunFolder], missing: list[str],
         modality: str | None = None) -> dict:
    finals = [r.final() for r in runs]
    if modality:  # the best uni-modal row: its own head is the modality's
        heads = [{modality: f["video_top1"]} for f in finals]
        contribution = [{} for _ in finals]
    else:
        heads = [{h: v["video_top1"] for h, v in f.get("heads", {}).items() if h != "fused"} for f in finals]
        contribution = [f["diagnostics"]["contribution"] if "diagnostics" in f else None for f in finals]
    v1, v1_std = _mean_std([f["video_top1"] for f in finals])
    return {
        "method": variant, "label": label + (f" ({paper.combo_label(modality)})" if modality else ""),
        "combo": paper.combo_label(combo), "modality": modality,
        "video_top1": v1, "video_top1_std": v1_std,
        "head_top1": _mean_dict(heads) if runs else None,
        "ogr": _mean_dict([run_ogr(r) for r in runs]) if runs else None,
        "contribution": _mean_dict(contribution) if runs else None,
        "seconds": _mean_std([f["seconds"] for f in finals if f.get("seconds") is not None])[0],
        "peak_memory_mb": _mean_std([f["peak_memory_mb"] for f in finals if f.get("peak_memory_mb") is not None])[0],
        "seeds": [r.key().seed for r in runs], "missing": missing,
    }


def rows(mx, labels: dict[str, str]) -> list[dict]:
    """One row per (method, combination) of a report.Matrix `mx`: the best uni-modal model (chosen
    on V), naive, G-Blend (offline; online where there are runs) and each of G-Blend's successors,
    on the recipe's `reproduce.methods_combos` and any other combination holding a successor's run,
    expecting every seed of `reproduce.seeds`."""
    rp = (mx.cfg or {}).get("reproduce")
    wanted = list(rp["methods"]) if rp else list(BALANCING_METHODS)
    seeds = list(rp["seeds"]) if rp else [0]
    present = {c for (v, c) in mx.by_key if v in BALANCING_METHODS}
    combos = list(dict.fromkeys((list(rp["methods_combos"]) if rp else []) + [c for c in mx.combos() if c in present]))
    methods = list(dict.fromkeys(wanted + sorted({v for (v, c) in mx.by_key if v in BALANCING_METHODS})))
    out = []
    for combo in combos:
        mods = combo.split("+")
        on_v = {m: _mean_std([x for x in (holdout_top1(f) for f in mx.get("unimodal", m)) if x is not None])[0]
                for m in mods}
        on_v = {m: s for m, s in on_v.items() if s is not None}
        best = max(on_v, key=on_v.get) if on_v else None
        uni_missing = sorted({c for m in mods for c in mx.missing("unimodal", m, seeds)})
        out.append(_row("best-unimodal", labels.get("best-unimodal", "best uni-modal"), combo,
                        mx.get("unimodal", best) if best else [], uni_missing, modality=best))
        variants = ["naive", "gblend-offline"] + (["gblend-online"] if mx.get("gblend-online", combo) else []) + methods
        for v in variants:
            out.append(_row(v, labels.get(v, v), combo, mx.get(v, combo), mx.missing(v, combo, seeds)))
    return out


# --- rendering -----------------------------------------------------------------------------------
def _num(v, digits: int = 1) -> str:
    return "missing" if v is None else f"{v:.{digits}f}"


def _d(d: dict | None, digits: int, signed: bool = False) -> str:
    """'audio 57.2, rgb 78.1'; 'missing' for no runs (or runs without the number), '—' when the
    method has no such heads (naive: no uni-modal heads)."""
    if d is None:
        return "missing"
    if not d:
        return "—"
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return ", ".join(f"{k} {'—' if v is None else fmt.format(v)}" for k, v in d.items())


def display(table: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Human-readable cells for the terminal, Markdown and LaTeX."""
    headers = ["Combo", "Method", "V@1", "Head V@1", "OGR", "Contribution (V@1 points)", "Seconds", "Peak MB", "Seeds"]
    body = []
    for r in table:
        v1 = _num(r["video_top1"])
        if r["video_top1"] is not None and len(r["seeds"]) > 1:
            v1 += f" ± {r['video_top1_std']:.1f}"
        body.append([r["combo"], r["label"], v1, _d(r["head_top1"], 1), _d(r["ogr"], 2),
                     _d(r["contribution"], 1, signed=True), _num(r["seconds"], 0), _num(r["peak_memory_mb"], 0),
                     ",".join(map(str, r["seeds"])) or "-"])
    return headers, body
