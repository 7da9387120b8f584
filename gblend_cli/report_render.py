"""How `report` prints its tables: the terminal (rich), Markdown, LaTeX, JSON and CSV, from the
dict that `report.build` makes (what is in a table: gblend_cli/report.py)."""

from __future__ import annotations

import json

from rich.markup import escape

from . import checks, methods_table, paper_tables
from .report import ALL_TITLES, TABLES
from .storage import finite_or_null


def _pm(row: dict, key: str) -> str:
    v = row.get(key)
    if v is None:
        return "missing"
    s = row.get(f"{key}_std")
    n = len(row["seeds"]) if isinstance(row.get("seeds"), list) else row.get("naive_seeds", 1)
    return f"{v:.1f} ± {s:.1f}" if s is not None and n and n > 1 else f"{v:.1f}"


def _num(v, digits: int = 1) -> str:
    return "missing" if v is None else f"{v:.{digits}f}"


def _w(w: dict | None, std: dict | None = None, marks: dict | None = None) -> str:
    """'rgb .63±.01, fused .36' with a mark after each weight a guard moved."""
    if not w:
        return ""
    marks = marks or {}

    def one(h, v):
        s = f"{h} {v:.2f}" + (f"±{std[h]:.2f}" if std and std.get(h) else "")
        return s + marks.get(h, "")
    return ", ".join(one(h, v) for h, v in w.items())


ORACLE_NOTE = "Oracle (the demo only): the best video top-1 any model could reach on these evaluation videos, " \
              "reading every cue its streams show (the motion: RGB and flow; a still object of its class's hue: " \
              "RGB; the class tone: audio) and guessing where none shows (prepare-data's oracle.json)"
WEIGHT_MARKS = "w: the weights trained with (mean±std over seeds); w_raw: the formula ΔG/ΔO²/Z with ΔG clipped at 0; " \
               "† lifted by the floor (ΔG <= 0), ‡ ΔO within its noise (guarded); " \
               "kept: seeds whose last online estimate showed no generalisation and kept the weights in force"


def _has_oracle(table1_rows: list[dict]) -> bool:
    return any(r.get("oracle_video_top1") is not None for r in table1_rows)


def _marks(r: dict) -> dict:
    return {h: ("†" if h in r.get("floored", []) else "") + ("‡" if h in r.get("noise_bound", []) else "")
            for h in (r.get("weights") or {})}


def display_rows(name: str, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Human-readable cells (mean ± std, 'missing') for the terminal, Markdown and LaTeX."""
    if name in paper_tables.TITLES:
        return paper_tables.display_rows(name, rows)
    if name == "table1":
        headers = ["Combo", "Naive V@1", "Best uni-modal", "Uni-modal V@1", "Drop", "Paper naive", "Paper uni-modal", "Paper drop"]
        body = [[r["combo"], f"{_num(r['naive_video_top1'])}" + (f" ± {r['naive_std']:.1f}" if r["naive_seeds"] > 1 else ""),
                 r["best_unimodal"] or "missing", _num(r["best_unimodal_video_top1"]), _num(r["drop"]),
                 _num(r["paper_late_fusion"]), _num(r["paper_best_unimodal"]), _num(r["paper_drop"])] for r in rows]
        if _has_oracle(rows):  # the demo: what its data allows
            headers.append("Oracle fused / uni-modal")
            for r, row in zip(rows, body):
                row.append(f"{_num(r.get('oracle_video_top1'))} / {_num(r.get('oracle_best_unimodal_video_top1'))}")
    elif name == "table4":
        headers = ["Combo", "Method", "w", "w_raw", "Clip", "V@1", "V@5", "Seeds", "Paper clip/V@1/V@5", "Paper weights"]
        body = [[r["combo"], r["method"] + (f" (kept: {','.join(map(str, r['kept']))})" if r.get("kept") else ""),
                 _w(r["weights"], r.get("weights_std"), _marks(r)),
                 _w(r.get("weights_raw"), r.get("weights_raw_std")), _pm(r, "clip_top1"), _pm(r, "video_top1"), _pm(r, "video_top5"),
                 ",".join(map(str, r["seeds"])) or "-",
                 "/".join(_num(r[k]) for k in ("paper_clip_top1", "paper_video_top1", "paper_video_top5")) if r["paper_video_top1"] else "",
                 _w(r["paper_weights"])] for r in rows]
    elif name == "methods":
        return methods_table.display(rows)
    else:
        headers = ["Run", "Train top-1", "Val top-1", "Gap", "OGR", "Seeds"]
        body = [[r["run"], _num(r["train_top1"]), _num(r["val_top1"]), _num(r["gap"]), _num(r["ogr"], 3),
                 ",".join(map(str, r["seeds"])) or "-"] for r in rows]
    return headers, body


GLANCE_TITLE = ("The paper's claims at a glance (margins: difference ± standard error, decided where the verdict "
                "stands for every value in its 95% interval; the paper: its Kinetics numbers, same conditions)")
POOLED_TITLE = ("The same claims pooled over the results folders (each value the mean of the folders' means, its SE "
                "over the folders; weights and ranking: in every folder)")


def render(report: dict, fmt: str) -> str:
    """markdown | latex | json text of the tables in `report` (csv: `render_csv`, one table at a time)."""
    from tabulate import tabulate

    tables = [k for k in TABLES if k in report]
    if fmt == "json":
        doc = {k: report[k] for k in tables} | {k: report[k] for k in ("claims", "checks", "pooled_checks", "pooled_folders")
                                                if k in report}
        if set(report) & set(paper_tables.TITLES):
            doc["findings"] = paper_tables.findings(report)
        return json.dumps(finite_or_null(doc), indent=2, allow_nan=False)
    if fmt == "csv":
        if len(tables) != 1:
            raise ValueError("csv holds one table: use render_csv per table")
        return render_csv(report, tables[0])
    parts = []
    for k in tables:
        headers, body = display_rows(k, report[k])
        tablefmt = {"markdown": "github", "latex": "latex_booktabs"}[fmt]
        title = f"### {ALL_TITLES[k]}\n\n" if fmt == "markdown" else f"% {ALL_TITLES[k]}\n"
        parts.append(title + tabulate(body, headers=headers, tablefmt=tablefmt)
                     + (f"\n\n{WEIGHT_MARKS}" if k == "table4" and fmt == "markdown" else "")
                     + (f"\n\n{ORACLE_NOTE}" if k == "table1" and fmt == "markdown" and _has_oracle(report[k]) else "")
                     + (f"\n\n{methods_table.NOTE}" if k == "methods" and fmt == "markdown" else ""))
    if report.get("_missing") and fmt == "markdown":
        parts.append("Missing runs (commands that would produce them):\n\n" + "\n".join(f"    {c}" for c in report["_missing"]))
    if fmt == "markdown" and set(report) & set(paper_tables.TITLES):
        parts.append("\n".join(f"- {c}" for c in paper_tables.findings(report)))
    if "claims" in report and fmt == "markdown":
        parts.append("\n".join(f"- {c}" for c in report["claims"]))
    if report.get("checks") and fmt == "markdown":
        headers, body = checks.glance(report["checks"], report.get("pooled_checks"))
        parts.append(f"### {GLANCE_TITLE}\n\n" + tabulate(body, headers=headers, tablefmt="github"))
        parts += [f"{heading}\n\n" + "\n".join(f"- {c}" for c in lines) + f"\n\n{count}"
                  for heading, lines, count in _check_sections(report)]
    return "\n\n".join(parts) + "\n"


def _check_sections(report: dict) -> list[tuple[str, list[str], str]]:
    """(heading, a line per check, the count line) of the checks and, with --pool, of the pooled
    checks: what the markdown and the terminal reports print under the table at a glance."""
    out = []
    if report.get("checks"):
        out.append(("The paper's claims on every combination (means over seeds):", checks.lines(report["checks"]),
                    checks.summary(report["checks"])))
    if report.get("pooled_checks"):
        out.append((f"{POOLED_TITLE} ({', '.join(report['pooled_folders'])}):",
                    checks.lines(report["pooled_checks"], "folders"), checks.summary(report["pooled_checks"], "folders")))
    return out


def render_csv(report: dict, table: str) -> str:
    """One table as CSV with plain cells: a dict of weights becomes one column per head
    (`weights_rgb`, ...), a list becomes its items joined by ';'."""
    import pandas as pd

    rows = []
    for r in report[table]:
        flat = {}
        for c, v in r.items():
            if isinstance(v, dict):
                flat |= {f"{c}_{h}": x for h, x in v.items()}
            elif isinstance(v, list):
                flat[c] = ";".join(map(str, v))
            else:
                flat[c] = v
        rows.append(flat)
    return pd.DataFrame(rows).to_csv(index=False)


def print_rich(report: dict) -> None:
    """The tables on stdout (a terminal gets colours, a pipe plain text), then each missing run once."""
    from rich.table import Table

    from .ui import out

    for k in TABLES:
        if k not in report:
            continue
        headers, body = display_rows(k, report[k])
        t = Table(title=ALL_TITLES[k], title_justify="left")
        for h in headers:
            t.add_column(h, justify="left" if h in ("Combo", "Method", "Run", "w", "w_raw", "Paper weights")
                         + methods_table.LEFT else "right")
        for row in body:
            t.add_row(*[f"[red]{c}[/red]" if c == "missing" else escape(c) for c in row])
        out.print(t)
        if k == "table4":
            out.print(WEIGHT_MARKS, soft_wrap=True)
        if k == "table1" and _has_oracle(report[k]):
            out.print(ORACLE_NOTE, soft_wrap=True)
        if k == "methods":
            out.print(methods_table.NOTE, soft_wrap=True)
    if report.get("_missing"):
        out.print("missing runs; produce them with:\n" + "\n".join(f"  {c}" for c in report["_missing"]),
                  soft_wrap=True, markup=False)
    for c in report.get("claims", []) + (paper_tables.findings(report) if set(report) & set(paper_tables.TITLES) else []):
        out.print(c, soft_wrap=True, markup=False)
    if report.get("checks"):
        headers, body = checks.glance(report["checks"], report.get("pooled_checks"))
        t = Table(title=GLANCE_TITLE, title_justify="left")
        for h in headers:
            t.add_column(h, justify="left")
        for row in body:
            t.add_row(*map(escape, row))
        out.print(t)
    for heading, lines, count in _check_sections(report):
        out.print(heading, soft_wrap=True, markup=False)
        for c in lines:
            out.print(f"  {c}", soft_wrap=True, markup=False)
        out.print(count, soft_wrap=True, markup=False)
