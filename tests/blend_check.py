"""A G-Blend run folder checked against its own logs (`from blend_check import check_blend_run`):

- every blend_weights.jsonl row: ΔO, ΔG and OGR equal `ogr.gradient_blend_terms` of the row's own
  L^T/L^V before and after; w_raw equals `blend.raw_weights`, w equals `blend.blend_weights` (the
  run's rule, min_weight and the row's SE(ΔO)), the flags (noise_bound, floored, equal_fallback)
  follow from them and from the clipped ΔG (max(ΔG, 0), NaN/Inf 0: what the rules weigh by), and
  the weights are a distribution;
- the rows sit where Algorithm 2 / 3 estimates: offline once at epoch 0 for estimate_epochs (or
  the whole run), online at 0, then every super-epoch after the warm-up one;
- online, a later row whose every ΔG is within gblend.evidence_z SE(ΔG) of 0, or (with
  gblend.keep_noise_bound) in which a generalising head's |ΔO| is below SE(ΔO) — and only such a
  row — keeps the weights of the estimate in force (`kept_why` says which): its w and flags are that row's, its `kept_from`
  that row's epoch, and `w_estimated` and the `<flag>_estimated` what the formula and guards gave;
- metrics.jsonl: every trained epoch's "weights" are the w of the latest estimation at or before
  that epoch (the row of epoch e records the weights epoch e was trained with, e = 1, 2, ...);
  final.json's weights are the last row's.

`check_terms_from_runs` adds, for a run whose terms were read from finished runs (--estimate-from):
L^T/L^V before and after are those runs' epoch-0 and last-epoch T' and V values (the mean loss, or
the error rate 1 - top1/100 for gblend.metric = accuracy), and SE(ΔO) combines their standard
errors (loss_se, or the binomial SE of the error rate) through `blend.delta_o_se`.

`check_fixed_weights_run` checks a run with hand-set or equal weights: the same weights at every
epoch and in final.json, no blend_weights.jsonl.
"""

from __future__ import annotations

import json
import math
from pathlib import Path


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _config(run: Path) -> dict:
    from gblend_cli.config import read_saved_config

    return read_saved_config(run / "config.toml")


def estimation_points(cfg: dict) -> dict[int, int]:
    """{epoch: n epochs} where the run must have estimated (Algorithms 2 and 3), from the recipe."""
    g, epochs = cfg["gblend"], cfg["train"]["epochs"]
    if g["mode"] == "offline":
        return {0: g["estimate_epochs"] or epochs}
    points, e, n = {}, 0, g["warmup_super_epoch"]
    while e < epochs:
        points[e] = min(n, epochs - e)
        e += n
        n = g["super_epoch"]
    return points


def check_blend_row(row: dict, gcfg: dict) -> None:
    """One blend_weights.jsonl row against the formulas recomputed from its own L^T/L^V."""
    from gblend_cli.blend import blend_weights, noise_bound, raw_weights
    from gblend_cli.ogr import gradient_blend_terms

    assert row["metric"] == gcfg["metric"] and row["rule"] == gcfg["rule"], row
    heads = row["heads"]
    dg, do, se = {}, {}, {}
    for h, r in heads.items():
        t = gradient_blend_terms(r["LT_before"], r["LV_before"], r["LT_after"], r["LV_after"])
        assert r["delta_O"] == t["delta_O"] and r["delta_G"] == t["delta_G"], (h, r, t)
        assert r["ogr"] == (t["ogr"] if math.isfinite(t["ogr"]) else None), (h, r["ogr"], t["ogr"])
        dg[h], do[h], se[h] = t["delta_G"], t["delta_O"], r.get("delta_O_se")
    w_raw = raw_weights(dg, do)
    w = blend_weights(dg, do, gcfg["rule"], gcfg["min_weight"], se)
    formula = gcfg["rule"] == "formula"  # the formula alone: no guard acts, none is flagged
    g = {h: max(v, 0.0) if math.isfinite(v) else 0.0 for h, v in dg.items()}  # clipped, as the rules weigh
    fallback = w_raw[next(iter(heads))] is None if formula else not any(v > 0 for v in g.values())
    # the guard moves a weight only where the head has a clipped ΔG > 0 to divide, and not in the fallback
    bound = {h: not formula and not fallback and g[h] > 0 and nb for h, nb in noise_bound(do, se).items()}
    kept = row.get("kept_from") is not None  # the weights in force stayed: the estimate's own are *_estimated
    own = "_estimated" if kept else ""
    assert row["equal_fallback" + own] == fallback
    for h, r in heads.items():
        assert r["w_raw"] == w_raw[h], (h, r["w_raw"], w_raw[h])
        assert r["w" + own] == w[h], (h, r, w[h])
        assert r["noise_bound" + own] == bound[h], h
        assert r["floored" + own] == (gcfg["rule"] == "regularised" and not fallback and g[h] == 0 and w[h] > 0), h
        assert r["w"] >= 0
    assert math.isclose(sum(r["w"] for r in heads.values()), 1.0, rel_tol=1e-12)


def check_blend_run(run: Path) -> list[dict]:
    """Every row of a finished G-Blend run (see the module docstring); returns the rows."""
    run = Path(run)
    cfg = _config(run)
    final = json.loads((run / "final.json").read_text())
    rows = _jsonl(run / "blend_weights.jsonl")
    assert rows, f"{run}: no blend_weights.jsonl rows"
    points = estimation_points(cfg)
    assert {r["epoch"]: r["n_epochs"] for r in rows} == points and [r["epoch"] for r in rows] == sorted(points), \
        (run, [(r["epoch"], r["n_epochs"]) for r in rows], points)
    heads = final["heads"].keys()
    source = None  # the row whose weights are in force
    for i, row in enumerate(rows):
        assert set(row["heads"]) == set(heads), row["heads"].keys()
        check_blend_row(row, cfg["gblend"])
        # online: a later estimate without measurable generalisation (no ΔG above z·SE(ΔG), the rule
        # restated here rather than asked of blend.shows_generalisation) keeps the weights in force, and only then
        z = cfg["gblend"]["evidence_z"]
        no_evidence = z > 0 and not any(r["delta_G"] > z * r["delta_G_se"] for r in row["heads"].values())
        # ... and, with keep_noise_bound, one in which a generalising head's |ΔO| is below SE(ΔO)
        # (the rules' own guards apart: rule formula has none)
        in_noise = cfg["gblend"].get("keep_noise_bound", False) and cfg["gblend"]["rule"] != "formula" and \
            any(math.isfinite(r["delta_G"]) and r["delta_G"] > 0 and r.get("delta_O_se") is not None
                and abs(r["delta_O"]) < r["delta_O_se"]
                for r in row["heads"].values())
        keeps = cfg["gblend"]["mode"] == "online" and i > 0 and (no_evidence or in_noise)
        assert (row.get("kept_from") is not None) == keeps, (run, row["epoch"], row.get("kept_from"))
        if keeps:  # the weights in force, and the flags that describe them
            assert row["kept_why"] == ("no_generalisation" if no_evidence else "noise_bound"), (run, row["epoch"])
            assert row["kept_from"] == source["epoch"] and row["equal_fallback"] == source["equal_fallback"]
            in_force = lambda r: (r["w"], r["noise_bound"], r["floored"])  # noqa: E731
            assert {h: in_force(r) for h, r in row["heads"].items()} == {h: in_force(r) for h, r in source["heads"].items()}
        else:
            source = row
    metrics = _jsonl(run / "metrics.jsonl")
    assert [m["epoch"] for m in metrics] == list(range(cfg["train"]["epochs"] + 1)), run
    for m in metrics[1:]:  # the row of epoch e: the weights training epoch e (0-based e - 1) used
        est = [r for r in rows if r["epoch"] <= m["epoch"] - 1][-1]
        assert m["weights"] == {h: round(est["heads"][h]["w"], 6) for h in heads}, (run, m["epoch"], m["weights"])
    assert final["weights"] == {h: rows[-1]["heads"][h]["w"] for h in heads}, run
    return rows


def _value(split: dict, head: str, metric: str) -> tuple[float, float]:
    """(L, SE(L)) of one logged split: the mean loss and loss_se, or for metric = accuracy the error
    rate e = 1 - top1/100 and its binomial standard error sqrt(e (1 - e) / n)."""
    m = split[head]
    if metric == "loss":
        return m["loss"], m["loss_se"]
    e = 1.0 - m["top1"] / 100.0
    return e, math.sqrt(e * (1 - e) / m["n"])


def check_terms_from_runs(run: Path, sources: dict[str, Path]) -> dict:
    """A run whose Algorithm 2 terms were read from finished runs (`sources`: {head: run folder}):
    its row's L^T/L^V before/after and SE(ΔO) are those runs' logged epoch-0 and last-epoch values."""
    from gblend_cli.blend import delta_o_se

    run = Path(run)
    cfg = _config(run)
    metric = cfg["gblend"]["metric"]
    n_epochs = cfg["gblend"]["estimate_epochs"] or cfg["train"]["epochs"]
    (row,) = check_blend_run(run)
    assert row.get("source") == "runs", row
    assert row["runs"] == [Path(sources[h]).name for h in row["heads"]]
    for h, r in row["heads"].items():
        by_epoch = {m["epoch"]: m for m in _jsonl(Path(sources[h]) / "metrics.jsonl")}
        a, b = by_epoch[0], by_epoch[n_epochs]
        (lt_b, s1), (lv_b, s2) = _value(a["train"], h, metric), _value(a["holdout"], h, metric)
        (lt_a, s3), (lv_a, s4) = _value(b["train"], h, metric), _value(b["holdout"], h, metric)
        assert (r["LT_before"], r["LV_before"], r["LT_after"], r["LV_after"]) == (lt_b, lv_b, lt_a, lv_a), (h, r)
        assert r["delta_O_se"] == delta_o_se(s1, s2, s3, s4), h
        assert math.isclose(r["delta_O_se"], math.sqrt(s1 ** 2 + s2 ** 2 + s3 ** 2 + s4 ** 2), rel_tol=1e-12)
    return row


def check_fixed_weights_run(run: Path, weights: dict[str, float]) -> None:
    """Hand-set or equal weights: every trained epoch and final.json use `weights`; no estimation."""
    run = Path(run)
    assert not (run / "blend_weights.jsonl").exists()
    final = json.loads((run / "final.json").read_text())
    assert final["weights"].keys() == weights.keys()
    for h, w in weights.items():
        assert math.isclose(final["weights"][h], w, rel_tol=1e-12), (h, final["weights"])
    for m in _jsonl(run / "metrics.jsonl"):
        assert m["weights"] == {h: round(w, 6) for h, w in weights.items()}, (m["epoch"], m["weights"])
