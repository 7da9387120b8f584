"""The Overfitting-to-Generalization Ratio (paper Sec. 2, Eq. 3) and `measure-ogr`.

O_N = L^V_N - L^T_N (held-out minus train loss); between checkpoints N and N+n:
ΔO = O_{N+n} - O_N, ΔG = L^V_N - L^V_{N+n}, OGR = |ΔO / ΔG|.
From a run's metrics.jsonl: L^T is the clean eval-mode loss on T', L^V the loss on the held-out V
(the evaluation split when a run has no V)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .errors import UserError
from .storage import finite_or_null


def gradient_blend_terms(LT_before: float, LV_before: float, LT_after: float, LV_after: float) -> dict:
    """ΔO, ΔG and OGR of one head between two checkpoints (Eq. 3)."""
    delta_o = (LV_after - LT_after) - (LV_before - LT_before)
    delta_g = LV_before - LV_after
    ogr = abs(delta_o / delta_g) if delta_g != 0 else math.inf
    return {"delta_O": delta_o, "delta_G": delta_g, "ogr": ogr}


def loss_like(metrics: dict, head: str, metric: str) -> float:
    """L for G and O: the mean per-sample loss, or the error rate (1 - top-1) for metric=accuracy."""
    m = metrics[head]
    return m["loss"] if metric == "loss" else 1.0 - m["top1"] / 100.0


def se_like(metrics: dict, head: str, metric: str) -> float | None:
    """The standard error of `loss_like` (None for runs logged before it was recorded)."""
    m = metrics[head]
    if metric == "loss":
        return m.get("loss_se")
    if "n" not in m:
        return None
    e = 1.0 - m["top1"] / 100.0
    return math.sqrt(max(e * (1 - e), 0.0) / max(1, m["n"]))


def evaluated_epochs(rows: list[dict]) -> list[int]:
    return [r["epoch"] for r in rows if r.get("train") and (r.get("holdout") or r.get("val"))]


def ogr_between(rows: list[dict], head: str, a: int, b: int, metric: str = "loss") -> dict | None:
    """OGR of `head` between epochs a and b of one run's metrics.jsonl rows."""
    by_epoch = {r["epoch"]: r for r in rows}
    ra, rb = by_epoch.get(a), by_epoch.get(b)
    if not ra or not rb:
        return None
    vsplit = "holdout" if ra.get("holdout") and rb.get("holdout") else "val"
    try:
        lt_a, lv_a = loss_like(ra["train"], head, metric), loss_like(ra[vsplit], head, metric)
        lt_b, lv_b = loss_like(rb["train"], head, metric), loss_like(rb[vsplit], head, metric)
    except KeyError:
        return None
    t = gradient_blend_terms(lt_a, lv_a, lt_b, lv_b)
    return {"head": head, "from": a, "to": b, "held_out": vsplit, **t,
            "ogr": t["ogr"] if math.isfinite(t["ogr"]) else None}


def ogr_per_head(rows: list[dict], heads) -> dict[str, float | None]:
    """{head: OGR from the run's first to its last evaluated epoch} (None where undefined: a run
    that trained nothing, or a ΔG of 0)."""
    ep = evaluated_epochs(rows)
    out = {}
    for h in heads:
        o = ogr_between(rows, h, ep[0], ep[-1]) if len(ep) >= 2 else None
        out[h] = o["ogr"] if o else None
    return out


def measure(runs: list[Path], start: int | None, end: int | None, metric: str = "loss") -> list[dict]:
    """`measure-ogr`: per run and head, the OGR between `start` and `end` (default: first and last
    evaluated epochs) plus the per-epoch OGR between consecutive evaluated epochs."""
    out = []
    from .run_folder import RunFolder

    for run in runs:
        folder = RunFolder(Path(run), writer=False)
        folder.final()  # refuses a run written by a newer gblend; a damaged final.json does not stop us
        rows = folder.metrics()
        if not rows:
            raise UserError(f"{run}: no metrics.jsonl with epochs (not a gblend run folder?)")
        epochs = evaluated_epochs(rows)
        if len(epochs) < 2:
            raise UserError(f"{run}: needs at least two evaluated epochs, has {len(epochs)}")
        a = epochs[0] if start is None else start
        b = epochs[-1] if end is None else end
        for e, opt in ((a, "--from"), (b, "--to")):
            if e not in epochs:
                raise UserError(f"{run}: epoch {e} ({opt}) was not evaluated; evaluated epochs: {', '.join(map(str, epochs))}")
        if b <= a:
            raise UserError(f"--to ({b}) must be after --from ({a})")
        heads = list({r["epoch"]: r for r in rows}[b]["train"])  # the last row may be an unevaluated epoch
        for h in heads:
            r = ogr_between(rows, h, a, b, metric)
            per_epoch = []
            seg = [e for e in epochs if a <= e <= b]
            for e0, e1 in zip(seg, seg[1:]):
                p = ogr_between(rows, h, e0, e1, metric)
                per_epoch.append({"from": e0, "to": e1, "delta_O": p["delta_O"], "delta_G": p["delta_G"], "ogr": p["ogr"]})
            out.append({"run": str(run), "head": h, "from": a, "to": b, "delta_O": r["delta_O"], "delta_G": r["delta_G"],
                        "ogr": r["ogr"], "held_out": r["held_out"], "metric": metric, "per_epoch": per_epoch})
    return out


def most_overfitting(rows: list[dict]) -> dict | None:
    finite = [r for r in rows if r["ogr"] is not None]
    return max(finite, key=lambda r: r["ogr"]) if finite else None


def print_measure(rows: list[dict], fmt: str) -> None:
    if not rows:
        raise UserError("measure-ogr: no heads with evaluated epochs in these runs")
    if fmt == "json":
        sys.stdout.write(json.dumps(finite_or_null(rows), indent=2, allow_nan=False) + "\n")
        return
    if fmt == "csv":
        import csv

        w = csv.writer(sys.stdout, lineterminator="\n")
        w.writerow(["run", "head", "from", "to", "delta_O", "delta_G", "ogr"])
        for r in rows:
            w.writerow([r["run"], r["head"], r["from"], r["to"], f"{r['delta_O']:.6g}", f"{r['delta_G']:.6g}",
                        "" if r["ogr"] is None else f"{r['ogr']:.6g}"])
        return
    from rich.table import Table

    from .ui import out

    t = Table(title=f"OGR = |ΔO/ΔG| ({rows[0]['metric']}; O = L^V - L^T)", title_justify="left")
    for c in ("run", "head", "epochs", "ΔO", "ΔG", "OGR", "per-epoch OGR (median)"):
        t.add_column(c, justify="left" if c in ("run", "head") else "right")
    for r in rows:
        pe = sorted(p["ogr"] for p in r["per_epoch"] if p["ogr"] is not None)
        t.add_row(Path(r["run"]).name, r["head"], f"{r['from']}→{r['to']}", f"{r['delta_O']:.3f}", f"{r['delta_G']:.3f}",
                  "inf" if r["ogr"] is None else f"{r['ogr']:.3f}", f"{pe[len(pe) // 2]:.3f}" if pe else "-")
    out.print(t)
    top = most_overfitting(rows)
    if top:
        out.print(f"overfits most: {Path(top['run']).name} ({top['head']} head), OGR {top['ogr']:.3f} "
                      f"(ΔO {top['delta_O']:.3f} for ΔG {top['delta_G']:.3f})")
