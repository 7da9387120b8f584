"""The paper's claims as checks on a results folder (report.json "checks"), and the same checks
pooled over several results folders of one matrix (report.json "pooled_checks": the demo on
several data seeds).

A margin check (Table 1's drop, G-Blend's lead) states its conditions once — each a shown value
(a difference of two rows' video top-1 means) that must lie in [lo, hi] — and its verdict, its
standard errors and whether the verdict is clear of their 95% intervals (Student's t) all follow
from those conditions, in one folder (over its training seeds) and pooled (over the folders)."""

from __future__ import annotations

import math
import statistics

from . import paper

# Accuracies are stored from float32 (77.6% reads 77.59999...): a difference this small is that,
# not a measurement, so the checks' bounds (1 point, 2 points, "below") allow it.
TOL = 1e-4
LEVEL = 0.95  # a margin verdict is "clear" when no value in its two-sided 95% interval would change it
VERDICT = {True: "HOLDS", False: "DOES NOT HOLD", None: "CANNOT BE CHECKED"}


def difference(a: dict, b: dict) -> tuple[float, float | None, float | None]:
    """a − b of two rows' means ({"mean", "std", "n"}), its standard error sqrt(s_a²/n_a + s_b²/n_b)
    and the Welch-Satterthwaite degrees of freedom: the runs are taken as independent (not paired
    by seed), which errs towards calling a verdict noise. SE and df None where either row has
    fewer than 2 seeds (no spread measured)."""
    d = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return d, None, None
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    if va + vb == 0:
        return d, 0.0, float(a["n"] + b["n"] - 2)
    df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
    return d, math.sqrt(va + vb), df


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile (p > 0.5), by bisection on its CDF (`_t_cdf`); df need not be whole."""
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, hi * 2
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def _t_cdf(t: float, df: float) -> float:
    """P(T <= t) for t >= 0: 1 − I_x(df/2, 1/2) / 2 with x = df / (df + t²)."""
    return 1.0 - 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, modified Lentz)."""
    if x <= 0 or x >= 1:
        return 0.0 if x <= 0 else 1.0
    if x > (a + 1) / (a + b + 2):
        return 1.0 - _betainc(b, a, 1 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)) / a
    tiny, f, c, d = 1e-300, 1.0, 1.0, 0.0
    for i in range(400):
        m = i // 2
        if i == 0:
            num = 1.0
        elif i % 2 == 0:
            num = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        else:
            num = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        f *= c * d
        if abs(1.0 - c * d) < 1e-14:
            break
    return front * (f - 1.0)


def half_width(se: float, df: float) -> float:
    """Half the two-sided LEVEL interval of a value with this standard error and df."""
    return 0.0 if se == 0 else t_quantile(0.5 + LEVEL / 2, df) * se


def _bound(x: float | None, default: float) -> float:
    return default if x is None else x


Measured = tuple[float, float | None, float | None]  # (value, its standard error, degrees of freedom)


def holds(measured: list[Measured], conditions: list[dict]) -> bool:
    """Every value in its [lo, hi] (None: open), within TOL."""
    return all(_bound(c["lo"], -math.inf) - TOL <= v <= _bound(c["hi"], math.inf) + TOL
               for (v, _, _), c in zip(measured, conditions))


def clear(measured: list[Measured], conditions: list[dict]) -> bool | None:
    """Whether the verdict stands for every value in the measured one's two-sided 95% interval
    (Student's t with its df): every interval inside its bounds, or one wholly outside. None where
    an SE is unknown."""
    if any(se is None for _, se, _ in measured):
        return None
    inside, outside = [], []
    for (v, se, df), c in zip(measured, conditions):
        lo, hi, w = _bound(c["lo"], -math.inf), _bound(c["hi"], math.inf), half_width(se, df)
        inside.append(lo - TOL <= v - w and v + w <= hi + TOL)
        outside.append(v + w < lo - TOL or v - w > hi + TOL)
    return all(inside) or any(outside)


def margin_check(check: str, combo: str, shown: dict, measured: dict[str, Measured], conditions: list[dict],
                 paper_values: dict[str, float] | None = None) -> dict:
    """A margin check's row: `shown` values, then per condition its value, "<value> se" and
    "<value> df" (rounded; verdicts are taken on the unrounded ones), `holds`, `clear` and
    `conditions`; and `paper`, the same conditions applied to the paper's own Kinetics numbers
    (`paper_values`: the same values, from paper.compared's rows), where the paper has the rows:
    a margin the paper itself does not reach says more about the margin than about the demo."""
    m = [measured[c["value"]] for c in conditions]
    values = dict(shown)
    for c, (v, se, df) in zip(conditions, m):
        values[c["value"]] = round(v, 2)
        values[f"{c['value']} se"] = None if se is None else round(se, 2)
        values[f"{c['value']} df"] = None if df is None else round(df, 1)
    row = {"check": check, "combo": combo, "holds": holds(m, conditions), "values": values, "clear": clear(m, conditions),
           "conditions": conditions}
    if paper_values is not None:
        row["paper"] = {"holds": holds([(paper_values[c["value"]], None, None) for c in conditions], conditions),
                        "values": {c["value"]: round(paper_values[c["value"]], 2) for c in conditions}}
    return row


def checks(mx, overfit_rows: list[dict], labels: dict[str, str]) -> list[dict]:
    """The paper's claims on every combination of `mx` (a report.Matrix), with the margins of the
    demo's target (issue 19): naive below the best uni-modal model by 1 to 8 points (Table 1; the
    paper's drops are 1.2-3.8); each G-Blend mode at least 1 point above both (2 on the main
    combination: the paper's +2.1/+3.2 on A+RGB); the uni-modal ranking of Kinetics (RGB, then
    flow, then audio, which overfits most: largest train-val gap and OGR); and every G-Blend
    weight within 0.05 of the formula's w_raw (of the estimation in force at the end, every seed).
    Video top-1, means over the seeds found; the best uni-modal model over the combination's seeds.
    A check the recipe's matrix asks for whose runs are missing has `holds` None (CANNOT BE CHECKED).

    The margin checks also give each difference's standard error and degrees of freedom over the
    seeds (`difference`) and `clear` (None with one seed a row): with three seeds a training seed's
    spread is often larger than the margin asked for."""
    out = []

    def unmeasured(check: str, combo: str) -> None:  # a check the recipe's matrix asks for, its runs missing
        out.append({"check": check, "combo": combo, "holds": None, "values": {"runs": "missing"}})

    v1 = {m: mx.metric("unimodal", m, "video_top1")["mean"] for m in ("audio", "rgb", "flow")}
    for combo in mx.combos():
        label, best = paper.combo_label(combo), mx.best_unimodal(combo)
        naive_s = mx.metric("naive", combo, "video_top1")
        uni_s = mx.unimodal_metric(best, combo, "video_top1") if best else None
        naive, uni = naive_s["mean"], uni_s["mean"] if uni_s else None
        table1_check = "naive below the best uni-modal model by 1 to 8 points"
        if naive is not None and uni is not None:
            theirs = paper.compared("naive", combo)
            out.append(margin_check(table1_check, label,
                                    {"naive": round(naive, 2), f"best uni-modal ({paper.combo_label(best)})": round(uni, 2)},
                                    {"difference": difference(naive_s, uni_s)},
                                    [{"value": "difference", "lo": -8, "hi": -1}],
                                    theirs and {"difference": theirs["naive"] - theirs["best uni-modal"]}))
        elif combo in mx.seeds:
            unmeasured(table1_check, label)
        expected = [f"gblend-{m}" for m in mx.modes.get(combo, [])]
        found = [v for (v, c) in mx.by_key if c == combo and v in ("gblend-offline", "gblend-online")]
        for variant in sorted(set(expected + found)):
            gb_s = mx.metric(variant, combo, "video_top1")
            margin = 2 if combo == mx.main else 1
            check = f"{labels[variant]} at least {margin} point{'s' if margin > 1 else ''} above naive and the best uni-modal model"
            if gb_s["mean"] is not None and naive is not None and uni is not None:
                shown, theirs = {"gblend": round(gb_s["mean"], 2)}, paper.compared(variant, combo)
                row = margin_check(check, label, shown,
                                   {"over naive": difference(gb_s, naive_s), "over best uni-modal": difference(gb_s, uni_s)},
                                   [{"value": "over naive", "lo": margin, "hi": None},
                                    {"value": "over best uni-modal", "lo": margin, "hi": None}],
                                   theirs and {"over naive": theirs["gblend"] - theirs["naive"],
                                               "over best uni-modal": theirs["gblend"] - theirs["best uni-modal"]})
                if (oracle := mx.oracle.get(combo)) is not None:  # the demo: how far above any model can go
                    row["values"]["oracle"] = oracle
                out.append(row)
            elif variant in expected:
                unmeasured(check, label)
            deviations = [abs(v["w"] - v["w_raw"]) if v.get("w_raw") is not None else float("inf")
                          for f in mx.get(variant, combo) if (row := f.blend_in_force()) for v in row["heads"].values()]
            weights_check = f"{labels[variant]} weights within 0.05 of w_raw"
            if deviations:
                out.append({"check": weights_check, "combo": label,
                            "holds": max(deviations) <= 0.05 + 1e-9,
                            "values": {"largest |w - w_raw|": round(max(deviations), 4) if max(deviations) < 1e9 else None}})
            elif variant in expected:
                unmeasured(weights_check, label)
    if all(v1[m] is not None for m in v1):
        uni_rows = {r["modalities"]: r for r in overfit_rows if r["method"] == "unimodal"}
        gaps = {m: uni_rows.get(paper.SHORT[m], {}).get("gap") for m in v1}
        ogrs = {m: uni_rows.get(paper.SHORT[m], {}).get("ogr") for m in v1}
        order = v1["rgb"] > v1["flow"] > v1["audio"]
        most = all(x is not None for x in list(gaps.values()) + list(ogrs.values())) and \
            max(gaps, key=gaps.get) == "audio" and max(ogrs, key=ogrs.get) == "audio"
        out.append({"check": "uni-modal ranking: RGB, then flow, then audio, which overfits most", "combo": "uni-modal",
                    "holds": bool(order and most),
                    "values": {"video top-1": {m: round(v, 2) for m, v in v1.items()}, "gap": gaps, "ogr": ogrs}})
    return out


def pooled(folders: list[list[dict]]) -> list[dict]:
    """The checks of several results folders of one matrix (each folder's `checks`), pooled; a row
    per check of any folder, in the first folder's order.

    A margin check measured in every folder: each condition's value is the mean of the folders'
    values (each a mean over that folder's seeds), its standard error that of a mean over the
    folders, stdev/sqrt(n) with n − 1 df (n >= 2); `holds` and `clear` are the check's own
    conditions applied to them, and "<value> per folder" lists the folders' values (as their rows
    show them, to 2 decimals). Any other check (weights, ranking) holds where it holds in every
    folder. `held_in`: in how many folders it held; a check some folder could not measure is
    CANNOT BE CHECKED (holds None). A margin check the paper has numbers for also carries
    `at_paper_effect`: the same check on the folders' values moved about the paper's."""
    keyed = [{(r["combo"], r["check"]): r for r in rows} for rows in folders]
    keys = list(dict.fromkeys(k for rows in keyed for k in rows))
    out = []
    for key in keys:
        rows = [k.get(key) for k in keyed]
        measured = [r for r in rows if r is not None and r["holds"] is not None]
        row = {"check": key[1], "combo": key[0], "folders": len(folders), "held_in": sum(r["holds"] is True for r in measured)}
        if len(measured) < len(folders):
            out.append(row | {"holds": None, "values": {"measured in": f"{len(measured)} of {len(folders)} folders"}})
            continue
        conditions = measured[0].get("conditions")
        if conditions and len(folders) >= 2:
            m, values, columns = [], {}, []
            for c in conditions:
                xs = [r["values"][c["value"]] for r in measured]
                columns.append(xs)
                mean, se = statistics.fmean(xs), statistics.stdev(xs) / math.sqrt(len(xs))
                m.append((mean, se, len(xs) - 1))
                values |= {c["value"]: round(mean, 2), f"{c['value']} se": round(se, 2), f"{c['value']} df": len(xs) - 1,
                           f"{c['value']} per folder": xs}
            row |= {"holds": holds(m, conditions), "values": values, "clear": clear(m, conditions), "conditions": conditions}
            if "paper" in measured[0]:
                row |= {"paper": measured[0]["paper"],
                        "at_paper_effect": at_paper_effect(columns, conditions, measured[0]["paper"]["values"])}
            out.append(row)
        else:
            out.append(row | {"holds": all(r["holds"] for r in measured),
                              "values": {"held in": f"{row['held_in']} of {len(folders)} folders"}})
    return out


def at_paper_effect(columns: list[list[float]], conditions: list[dict], theirs: dict[str, float]) -> dict:
    """Would these folders have shown the paper's effect, had the demo had it? `columns`: per
    condition the folders' values; `theirs`: the paper's, by value name. Each folder's value
    is moved by (the paper's value − the pooled mean), so it keeps its own deviation from the mean
    (its data seed's and training seeds' luck) about the paper's size instead of ours, and the
    check's conditions are applied to it: `held_in` folders of `folders`, `per_folder` in the
    folders' order; and `every_folder_needs`, per condition the [lo, hi] (None: open) the mean
    would have to lie in for the check to hold in every folder (None where the spread is wider
    than the condition's window). A rough power estimate: deviations from the sample mean
    understate the spread a little (by sqrt((n−1)/n)), which errs towards holding."""
    devs = [[x - statistics.fmean(xs) for x in xs] for xs in columns]  # each folder's luck about the mean
    per_folder = [holds([(d + theirs[c["value"]], None, None) for c, d in zip(conditions, folder)], conditions)
                  for folder in zip(*devs)]
    needs = {}
    for c, dev in zip(conditions, devs):
        lo, hi = _bound(c["lo"], -math.inf) - min(dev), _bound(c["hi"], math.inf) - max(dev)
        needs[c["value"]] = None if lo > hi + TOL else [None if math.isinf(lo) else round(lo, 2),
                                                        None if math.isinf(hi) else round(hi, 2)]
    return {"held_in": sum(per_folder), "folders": len(per_folder), "per_folder": per_folder, "every_folder_needs": needs}


def lines(rows: list[dict], over: str = "seeds") -> list[str]:
    """One line per check: verdict, values, and for a margin check whether it is clear of its 95%
    interval (of the spread over `over`: the seeds, or the pooled folders)."""
    noise = {True: "; clear of its 95% interval", False: f"; within its 95% interval: not decided by these {over}",
             None: ""}
    return [f"{r['combo']}: {r['check']}: {VERDICT[r['holds']]} ({_values(r['values'])}"
            f"{noise[r.get('clear') if r['holds'] is not None else None]}{_paper(r)})" for r in rows]


def _paper(row: dict) -> str:
    theirs, at = row.get("paper"), row.get("at_paper_effect")
    return ("" if theirs is None else f"; the paper's Kinetics numbers: {VERDICT[theirs['holds']]} ({_values(theirs['values'])})") + \
        ("" if at is None else f"; at the paper's size with these folders' spread: held in {at['held_in']} of {at['folders']} folders")


def glance(rows: list[dict], pooled_rows: list[dict] | None = None) -> tuple[list[str], list[list[str]]]:
    """The checks as one table (headers, body): per check its verdict with each margin's value ±
    standard error and whether the seeds decide it, the same pooled over the folders where
    `pooled_rows` are given (and in how many folders it would have held at the paper's size:
    `at_paper_effect`), and the paper's own numbers against the same conditions."""
    pooled = {(r["combo"], r["check"]): r for r in pooled_rows or []}
    power = any("at_paper_effect" in r for r in pooled.values())
    headers = ["Combo", "Check", "Over the seeds"] + (["Pooled over the folders"] if pooled_rows else []) + \
        (["At the paper's size"] if power else []) + ["The paper"]
    body = []
    for r in rows:
        cells = [r["combo"], r["check"], _cell(r)]
        if pooled_rows:
            p = pooled.get((r["combo"], r["check"]))
            cells.append("-" if p is None else _cell(p))
        if power:
            at = (p or {}).get("at_paper_effect")
            cells.append("" if at is None else f"held in {at['held_in']} of {at['folders']} folders")
        theirs = r.get("paper")
        cells.append("" if theirs is None else
                     f"{VERDICT[theirs['holds']]}: " + " / ".join(_signed(v) for v in theirs["values"].values()))
        body.append(cells)
    return headers, body


def _cell(r: dict) -> str:
    """One check's verdict in a few words: a margin's values ± SE and whether decided; a weights
    check's largest deviation; a pooled check's count of folders."""
    if r["holds"] is None or "conditions" not in r:
        extra = None
        if "largest |w - w_raw|" in r["values"]:
            extra = f"w off w_raw by up to {_values(r['values']['largest |w - w_raw|'])}"
        elif "held_in" in r:
            extra = f"in {r['held_in']} of {r['folders']} folders"
        return VERDICT[r["holds"]] + ("" if r["holds"] is None or extra is None else f" ({extra})")
    v = r["values"]
    shown = " / ".join(_signed(v[c["value"]]) + ("" if v[f"{c['value']} se"] is None else f" ± {v[c['value'] + ' se']:.1f}")
                       for c in r["conditions"])
    return f"{VERDICT[r['holds']]}: {shown}" + {True: ", decided", False: ", not decided", None: ""}[r.get("clear")]


def _signed(x: float) -> str:
    return f"{x:+.1f}"


def summary(rows: list[dict], over: str = "seeds") -> str:
    """One line: how many checks hold, and how many margin verdicts either way stand clear of their
    95% intervals."""
    held = [r for r in rows if r["holds"] is True]
    failed = [r for r in rows if r["holds"] is False]
    margins = [r for r in held + failed if r.get("clear") is not None]
    n_clear = lambda group: sum(r.get("clear") is True for r in group)  # noqa: E731
    line = f"{len(held)} of {len(held) + len(failed)} checks hold"
    if margins:
        line += (f"; of the {len(margins)} margin checks, {n_clear(held)} hold and {n_clear(failed)} fail clear of their "
                 f"95% intervals, {len(margins) - n_clear(margins)} are within them (not decided by these {over})")
    theirs = [r["paper"]["holds"] for r in held + failed if r.get("paper")]
    if theirs:
        line += f"; the paper's own Kinetics numbers meet {sum(theirs)} of those {len(theirs)} margins"
    met = [r["at_paper_effect"]["per_folder"] for r in held + failed if r.get("at_paper_effect") and r["paper"]["holds"]]
    if met:
        per_folder = [sum(col) for col in zip(*met)]
        line += (f"; had each margin the paper's size with these {over}' spread about it, those {len(met)} would all "
                 f"have held in {per_folder.count(len(met))} of {len(per_folder)} {over} (per {over[:-1]}: "
                 f"{', '.join(map(str, per_folder))})")
    return line + "."


def _values(v) -> str:
    if isinstance(v, dict):
        return ", ".join(f"{k} {_values(x)}" for k, x in v.items())
    if isinstance(v, list):
        return "[" + ", ".join(_values(x) for x in v) + "]"
    return "-" if v is None else f"{v:g}" if isinstance(v, float) else str(v)
