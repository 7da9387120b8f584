"""`gblend report`: Table 1, Table 4 and the overfitting comparison, checked on small hand-made run
folders (final.json + metrics.jsonl) against numbers computed by hand in the tests.

Most number checks call gblend_cli.report.build/render directly (fast); a few go through the real
entry point (`python -m gblend_cli report ...`) for exit codes, --out, --figure and the default
recipe's missing-run commands.
"""

from __future__ import annotations

import io
import json
import math
import re
import shutil

import pandas as pd
import pytest

from gblend_cli import paper
from gblend_cli.config import load_config
from gblend_cli.checks import lines as check_lines
from gblend_cli.report import TITLES, build
from gblend_cli.report_render import render, render_csv
from gblend_cli.experiment import RunKey

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The default matrix (the [reproduce] defaults of gblend_cli/config.py, which recipes/demo.toml
# inherits), written out explicitly so the direct tests do not depend on recipes/demo.toml.
FULL_MATRIX = """
[reproduce]
seeds = [0, 1, 2]
main = "audio+rgb"
other_combos = ["rgb+flow", "audio+flow", "audio+rgb+flow"]
other_seeds = [0]
gblend_modes = ["offline", "online"]
other_gblend_modes = ["offline"]
"""

# Only the main combination, two seeds: a recipe whose matrix differs from the defaults.
SMALL_MATRIX = """
[reproduce]
seeds = [0, 1]
main = "audio+rgb"
other_combos = []
other_seeds = [0]
gblend_modes = ["offline"]
other_gblend_modes = []
"""


# --- hand-made run folders -----------------------------------------------------------------------
def heads_of(method: str, mods: list[str]) -> list[str]:
    return [mods[0]] if method == "unimodal" else ["fused"] if method == "naive" else mods + ["fused"]


def metric_rows(heads: list[str], points) -> list[dict]:
    """points: [(epoch, None | (L_train, L_holdout, L_val) | {head: (L_train, L_holdout, L_val)})];
    None = a trained but not evaluated epoch (the core writes no train/holdout/val then)."""
    rows = []
    for epoch, p in points:
        row = {"epoch": epoch, "lr": 0.05, "weights": {h: round(1 / len(heads), 6) for h in heads}}
        if p is not None:
            per = p if isinstance(p, dict) else {h: p for h in heads}
            for split, i in (("train", 0), ("holdout", 1), ("val", 2)):
                row[split] = {h: {"loss": per[h][i], "top1": 100.0 - 25.0 * per[h][i]} for h in heads}
        if epoch > 0:
            row["train_running"] = {"total": 1.0}
        rows.append(row)
    return rows


DEFAULT_CURVE = [(0, (2.0, 2.0, 2.0)), (1, None), (2, (1.0, 1.5, 1.5))]  # OGR = |0.5 / 0.5| = 1


def write_run(results, method: str, mods: list[str], seed: int, *, video: float, clip: float, top5: float,
              train: float, mode: str | None = None, weights: dict | None = None, curve=DEFAULT_CURVE,
              blend_rows: list[dict] | None = None):
    heads = heads_of(method, mods)
    head = heads[0] if method == "unimodal" else "fused"
    d = results / RunKey(method, tuple(mods), seed, mode).name
    d.mkdir(parents=True)
    final = {"head": head, "clip_top1": clip, "video_top1": video, "video_top5": top5, "train_top1": train,
             "val_loss": 1.0, "train_loss": 0.5, "method": method, "modalities": mods, "seed": seed, "epochs": 2,
             "weights": weights or {h: 1.0 / len(heads) for h in heads},
             "heads": {h: {"clip_top1": clip, "video_top1": video, "video_top5": top5, "train_top1": train} for h in heads},
             "dataset": "demo", "format_version": 1}
    if method == "gblend":
        final["mode"] = mode
    if blend_rows:
        (d / "blend_weights.jsonl").write_text("".join(json.dumps(r) + "\n" for r in blend_rows))
    (d / "final.json").write_text(json.dumps(final, indent=2))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in metric_rows(heads, curve)))
    return d


AR = ["audio", "rgb"]
# (method, modalities, mode) -> {seed: (clip, video, top5, train)}
NUMBERS = {
    # audio: higher clip top-1 and the highest single-seed video top-1 (70), but a lower MEAN video
    # top-1 (50.67) than rgb (60.17): the best uni-modal model must be rgb for A+RGB.
    ("unimodal", ("audio",), None): {0: (70, 40, 70, 99), 1: (71, 42, 72, 99), 2: (72, 70, 74, 99)},
    ("unimodal", ("rgb",), None): {0: (50, 60, 85, 80), 1: (52, 62.5, 86, 82), 2: (51, 58, 90, 81)},
    ("unimodal", ("flow",), None): {0: (55, 65, 88, 75)},
    ("naive", ("audio", "rgb"), None): {0: (45, 55, 80, 95), 1: (47, 57.5, 82, 97), 2: (46, 52.4, 81, 96)},
    ("naive", ("rgb", "flow"), None): {0: (58, 70, 89, 90)},
    ("gblend", ("audio", "rgb"), "offline"): {0: (58, 66, 91, 90), 1: (60, 64, 92, 91), 2: (59, 65.5, 93, 92)},
    ("gblend", ("audio", "rgb"), "online"): {0: (61, 67, 94, 93), 2: (63, 69, 95, 94)},  # seed 1 not run
}
# w_raw of each run's last estimation; audio's ΔG <= 0 in offline seed 1 (lifted by the floor)
GB_RAW = {
    "offline": {0: {"audio": 0.05, "rgb": 0.55, "fused": 0.4}, 1: {"audio": 0.0, "rgb": 0.6, "fused": 0.4},
                2: {"audio": 0.1, "rgb": 0.5, "fused": 0.4}},
    "online": {0: {"audio": 0.0, "rgb": 0.65, "fused": 0.35}, 2: {"audio": 0.07, "rgb": 0.5, "fused": 0.43}},
}


def blend_rows_of(mode: str, seed: int) -> list[dict]:
    """blend_weights.jsonl rows: online runs estimate twice (the report reads the last row)."""
    def row(epoch, w, raw):
        return {"epoch": epoch, "heads": {h: {"w": w[h], "w_raw": raw[h], "floored": raw[h] == 0.0 and w[h] > 0,
                                              "noise_bound": False} for h in w}}
    w, raw = GB_WEIGHTS[mode][seed], GB_RAW[mode][seed]
    early = {"audio": 0.9, "rgb": 0.05, "fused": 0.05}
    return ([row(0, early, early)] if mode == "online" else []) + [row(8 if mode == "online" else 0, w, raw)]


GB_WEIGHTS = {
    "offline": {0: {"audio": 0.1, "rgb": 0.5, "fused": 0.4}, 1: {"audio": 0.2, "rgb": 0.4, "fused": 0.4},
                2: {"audio": 0.15, "rgb": 0.45, "fused": 0.4}},
    "online": {0: {"audio": 0.05, "rgb": 0.6, "fused": 0.35}, 2: {"audio": 0.07, "rgb": 0.5, "fused": 0.43}},
}
# naive A+RGB curves: holdout (not val) must be used for the OGR
#   s0: O_first = 2.1 - 2.0 = 0.1, O_last = 1.5 - 0.4 = 1.1 -> ΔO = 1.0; ΔG = 2.1 - 1.5 = 0.6 -> OGR 5/3
#   s1: O 0.0 -> 1.0, ΔO = 1.0; ΔG = 2.0 - 1.5 = 0.5 -> OGR 2
#   s2: O 0.2 -> 0.2, ΔO = 0;   ΔG = 1.0 -> OGR 0
# (with val instead of holdout: 0.778, 0.667, 1.0)
CURVES = {
    ("naive", ("audio", "rgb"), 0): [(0, (2.0, 2.1, 2.2)), (1, None), (2, (1.0, 1.6, 1.7)), (3, None), (4, (0.4, 1.5, 1.3))],
    ("naive", ("audio", "rgb"), 1): [(0, (2.0, 2.0, 2.3)), (4, (0.5, 1.5, 1.4))],
    ("naive", ("audio", "rgb"), 2): [(0, (2.0, 2.2, 2.0)), (4, (1.0, 1.2, 1.5))],
    # rgb s0: O 0 -> 0.3, ΔG 0.2 -> OGR 1.5 (s1, s2: DEFAULT_CURVE, OGR 1)
    ("unimodal", ("rgb",), 0): [(0, (2.0, 2.0, 2.0)), (2, (1.5, 1.8, 1.9))],
}


def want(results, command: str, recipe=None) -> str:
    """The command report suggests for a missing run: `command` writing into the results folder."""
    m = re.match(r"gblend train-(\w+) --modalit(?:y|ies) ([a-z,]+)(?: --mode (\w+)| --weights (equal))? --seed (\d+)", command)
    method, mods, mode, equal, seed = m.groups()
    key = RunKey(method, tuple(mods.split(",")), int(seed), mode or equal)
    return command + f" --out {results / key.name}" + (f" --recipe {recipe}" if recipe else "")


def hand_mean(xs):
    return sum(xs) / len(xs)


def hand_std(xs):  # sample standard deviation (n - 1)
    m = hand_mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def col(method, mods, mode, i, seeds=None):
    """Column i (0 clip, 1 video, 2 top5, 3 train) of NUMBERS over `seeds` (default: all)."""
    runs = NUMBERS[(method, tuple(mods), mode)]
    return [runs[s][i] for s in sorted(runs) if seeds is None or s in seeds]


def make_results(root):
    results = root / "results"
    for (method, mods, mode), seeds in NUMBERS.items():
        for seed, (clip, video, top5, train) in seeds.items():
            kw = {}
            if (method, mods, seed) in CURVES:
                kw["curve"] = CURVES[(method, mods, seed)]
            if method == "gblend":
                kw["weights"] = GB_WEIGHTS[mode][seed]
                kw["blend_rows"] = blend_rows_of(mode, seed)
            write_run(results, method, list(mods), seed, video=video, clip=clip, top5=top5, train=train, mode=mode, **kw)
    return results


@pytest.fixture
def results(tmp_path):
    return make_results(tmp_path)


@pytest.fixture
def cfg(tmp_path):
    p = tmp_path / "full.toml"
    p.write_text(FULL_MATRIX)
    return load_config(p)


def by_combo(rows, combo_label):
    found = [r for r in rows if r["combo"] == combo_label]
    assert len(found) == 1, [r["combo"] for r in rows]
    return found[0]


def t4_row(rows, combo_label, method_prefix):
    found = [r for r in rows if r["combo"] == combo_label and r["method"].startswith(method_prefix)]
    assert len(found) == 1, [(r["combo"], r["method"]) for r in rows]
    return found[0]


def close(a, b, tol=1e-9):
    return a is not None and b is not None and abs(a - b) <= tol


# --- Table 1 -------------------------------------------------------------------------------------
def test_table1_numbers_best_unimodal_drop_and_paper_columns(results, cfg):
    rows = build(results, ["table1"], cfg)["table1"]
    assert [r["combo"] for r in rows] == ["A+RGB", "RGB+OF", "A+OF", "A+RGB+OF"]

    ar = by_combo(rows, "A+RGB")
    naive_v = col("naive", AR, None, 1)  # 55, 57.5, 52.4
    rgb_v, audio_v = col("unimodal", ["rgb"], None, 1), col("unimodal", ["audio"], None, 1)
    assert hand_mean(rgb_v) > hand_mean(audio_v) and max(audio_v) > max(rgb_v)  # the trap is set
    assert ar["best_unimodal"] == "RGB"
    assert close(ar["naive_video_top1"], round(hand_mean(naive_v), 2)) and close(ar["naive_video_top1"], 54.97)
    assert close(ar["naive_std"], round(hand_std(naive_v), 2)) and close(ar["naive_std"], 2.55)
    assert ar["naive_seeds"] == 3
    assert close(ar["best_unimodal_video_top1"], 60.17)
    assert close(ar["best_unimodal_std"], round(hand_std(rgb_v), 2))
    assert close(ar["drop"], round(hand_mean(naive_v) - hand_mean(rgb_v), 2)) and close(ar["drop"], -5.2)
    assert ar["missing"] == []

    rf = by_combo(rows, "RGB+OF")  # flow (65) beats rgb (60.17) here
    assert rf["best_unimodal"] == "OF" and close(rf["best_unimodal_video_top1"], 65.0)
    assert close(rf["naive_video_top1"], 70.0) and rf["naive_std"] == 0.0 and close(rf["drop"], 5.0)
    assert rf["missing"] == []

    af = by_combo(rows, "A+OF")  # no naive run: shown as missing, with its command
    assert af["naive_video_top1"] is None and af["drop"] is None and af["naive_seeds"] == 0
    assert af["best_unimodal"] == "OF"
    assert af["missing"] == [want(results, "gblend train-naive --modalities audio,flow --seed 0")]
    arf = by_combo(rows, "A+RGB+OF")
    assert arf["missing"] == [want(results, "gblend train-naive --modalities audio,rgb,flow --seed 0")]

    for combo in paper.COMBOS:
        r, p = by_combo(rows, paper.combo_label(combo)), paper.TABLE1[combo]
        assert (r["paper_late_fusion"], r["paper_best_unimodal"], r["paper_drop"]) == \
            (p["late_fusion"], p["best_unimodal_video_top1"], p["drop"])
    assert (ar["paper_late_fusion"], ar["paper_best_unimodal"], ar["paper_drop"]) == (71.4, 72.6, -1.2)


def test_table1_deleted_naive_seed_is_missing_with_recipe_command(results, tmp_path):
    recipe = tmp_path / "small.toml"
    recipe.write_text(SMALL_MATRIX)
    cfg = load_config(recipe)
    shutil.rmtree(results / "naive-audio+rgb-s1")
    rows = build(results, ["table1"], cfg, str(recipe))["table1"]
    # rows: the recipe's main combo, plus the combo present on disk (naive rgb+flow), nothing else
    assert [r["combo"] for r in rows] == ["A+RGB", "RGB+OF"]
    ar = by_combo(rows, "A+RGB")
    assert ar["missing"] == [want(results, "gblend train-naive --modalities audio,rgb --seed 1", recipe)]
    assert ar["naive_seeds"] == 2 and close(ar["naive_video_top1"], round(hand_mean([55, 52.4]), 2))

    # the same folder with seed 2 deleted too: the recipe expects seeds 0 and 1 only
    shutil.rmtree(results / "naive-audio+rgb-s2")
    ar = by_combo(build(results, ["table1"], cfg, str(recipe))["table1"], "A+RGB")
    assert ar["missing"] == [want(results, "gblend train-naive --modalities audio,rgb --seed 1", recipe)]
    assert ar["naive_seeds"] == 1 and close(ar["naive_video_top1"], 55.0)


def test_cli_table1_json_missing_seed(results, run_gblend, tmp_path):
    shutil.rmtree(results / "naive-audio+rgb-s1")
    recipe = tmp_path / "full.toml"
    recipe.write_text(FULL_MATRIX)
    proc = run_gblend("report", "--results", results, "--table", "1", "--format", "json", "--recipe", recipe)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert set(out) == {"table1"}
    ar = by_combo(out["table1"], "A+RGB")
    assert ar["missing"] == [want(results, "gblend train-naive --modalities audio,rgb --seed 1", recipe)]
    assert ar["naive_seeds"] == 2 and close(ar["naive_video_top1"], 53.7)  # (55 + 52.4) / 2
    # against RGB on the same seeds (0 and 2), not on all three RGB runs: a paired comparison
    assert close(ar["drop"], round(53.7 - hand_mean([60, 58]), 2)) and close(ar["best_unimodal_video_top1"], 59.0)
    assert [r["combo"] for r in out["table1"]] == ["A+RGB", "RGB+OF", "A+OF", "A+RGB+OF"]
    assert not (results / "report").exists()  # no figure for --table 1


# --- Table 4 -------------------------------------------------------------------------------------
def test_table4_means_stds_seeds_weights_and_paper(results, cfg):
    rows = build(results, ["table4"], cfg)["table4"]
    ar = [r for r in rows if r["combo"] == "A+RGB"]
    assert [r["method"] for r in ar] == ["best uni-modal (RGB)", "naive", "G-Blend offline", "G-Blend online"]

    for r, (method, mods, mode) in zip(ar, [("unimodal", ["rgb"], None), ("naive", AR, None),
                                            ("gblend", AR, "offline"), ("gblend", AR, "online")]):
        seeds = sorted(NUMBERS[(method, tuple(mods), mode)])
        assert r["seeds"] == seeds, r
        for i, key in enumerate(("clip_top1", "video_top1", "video_top5")):
            xs = col(method, mods, mode, i)
            assert close(r[key], round(hand_mean(xs), 2)), (r["method"], key, r[key])
            assert close(r[f"{key}_std"], round(hand_std(xs), 2)), (r["method"], key, r[f"{key}_std"])

    uni, naive, off, on = ar
    # spot values, by hand: sample (n-1) std, not population std
    assert close(uni["video_top1_std"], 2.25) and close(off["video_top1"], 65.17) and close(off["video_top1_std"], 1.04)
    assert close(on["clip_top1_std"], 1.41) and on["seeds"] == [0, 2]
    assert uni["weights"] is None and naive["weights"] is None
    assert off["weights"] == {"audio": 0.15, "rgb": 0.45, "fused": 0.4}
    assert on["weights"] == {"audio": 0.06, "rgb": 0.55, "fused": 0.39}
    # w_raw beside w, both mean ± std over seeds; the report reads each run's last estimation
    assert off["weights_raw"] == {"audio": 0.05, "rgb": 0.55, "fused": 0.4}
    assert off["weights_raw_std"] == {"audio": 0.05, "rgb": 0.05, "fused": 0.0}
    assert off["weights_std"] == {"audio": 0.05, "rgb": 0.05, "fused": 0.0}
    assert on["weights_raw"] == {"audio": 0.035, "rgb": 0.575, "fused": 0.39}
    assert off["floored"] == ["audio"] and on["floored"] == ["audio"] and off["noise_bound"] == []
    assert uni["weights_raw"] is None and naive["floored"] == []
    md = render({"table4": rows}, "markdown")
    assert "audio 0.15±0.05†" in md and "rgb 0.55±0.05" in md and "lifted by the floor" in md
    assert on["missing"] == [want(results, "gblend train-gblend --modalities audio,rgb --mode online --seed 1")]
    assert off["missing"] == [] and naive["missing"] == [] and uni["missing"] == []

    t4 = paper.TABLE4["audio+rgb"]
    assert (uni["paper_clip_top1"], uni["paper_video_top1"], uni["paper_video_top5"]) == t4["best_unimodal"]
    assert (naive["paper_clip_top1"], naive["paper_video_top1"], naive["paper_video_top5"]) == t4["naive"]
    assert (off["paper_clip_top1"], off["paper_video_top1"], off["paper_video_top5"]) == t4["gblend"]
    assert (on["paper_clip_top1"], on["paper_video_top1"], on["paper_video_top5"]) == paper.TABLE2["gblend-online"]
    assert off["paper_weights"] == t4["weights"]

    # another combination: best uni-modal is flow; its G-Blend offline run is missing
    rf = [r for r in rows if r["combo"] == "RGB+OF"]
    assert [r["method"] for r in rf] == ["best uni-modal (OF)", "naive", "G-Blend offline"]
    assert rf[0]["seeds"] == [0] and close(rf[0]["video_top1"], 65.0) and rf[0]["video_top1_std"] == 0.0
    gb = rf[2]
    assert gb["seeds"] == [] and gb["clip_top1"] is None and gb["video_top1"] is None and gb["weights"] is None
    assert gb["missing"] == [want(results, "gblend train-gblend --modalities rgb,flow --mode offline --seed 0")]
    assert (gb["paper_clip_top1"], gb["paper_video_top1"], gb["paper_video_top5"]) == paper.TABLE4["rgb+flow"]["gblend"]
    assert {r["combo"] for r in rows} == {"A+RGB", "RGB+OF", "A+OF", "A+RGB+OF"}


# --- overfitting comparison ----------------------------------------------------------------------
def test_overfit_train_val_gap_and_ogr_from_holdout(results, cfg):
    rep = build(results, ["overfit"], cfg)
    rows = {r["run"]: r for r in rep["overfit"]}
    naive = rows["naive A+RGB"]
    tr, va = hand_mean(col("naive", AR, None, 3)), hand_mean(col("naive", AR, None, 0))  # 96, 46
    assert close(naive["train_top1"], round(tr, 2)) and close(naive["val_top1"], round(va, 2))
    assert close(naive["gap"], 50.0) and naive["seeds"] == [0, 1, 2]

    def ogr(lt0, lv0, lt1, lv1):  # by hand: O = L^V - L^T, ΔO = O_last - O_first, ΔG = L^V_first - L^V_last
        return abs(((lv1 - lt1) - (lv0 - lt0)) / (lv0 - lv1))

    per_seed = [ogr(2.0, 2.1, 0.4, 1.5), ogr(2.0, 2.0, 0.5, 1.5), ogr(2.0, 2.2, 1.0, 1.2)]  # holdout column
    assert per_seed == pytest.approx([5 / 3, 2.0, 0.0])
    assert close(naive["ogr"], round(hand_mean(per_seed), 3)) and close(naive["ogr"], 1.222)
    with_val = hand_mean([ogr(2.0, 2.2, 0.4, 1.3), ogr(2.0, 2.3, 0.5, 1.4), ogr(2.0, 2.0, 1.0, 1.5)])
    assert abs(naive["ogr"] - with_val) > 0.1  # the val split would give another number

    rgb = rows["uni-modal RGB"]
    assert close(rgb["ogr"], round(hand_mean([1.5, 1.0, 1.0]), 3))
    assert close(rgb["train_top1"], 81.0) and close(rgb["val_top1"], 51.0) and close(rgb["gap"], 30.0)
    assert close(rows["uni-modal OF"]["ogr"], 1.0)
    off = rows["G-Blend offline A+RGB"]
    assert close(off["ogr"], 1.0) and close(off["val_top1"], 59.0) and close(off["gap"], 32.0)
    assert rows["naive A+OF"]["train_top1"] is None and rows["naive A+OF"]["ogr"] is None
    assert rows["naive A+OF"]["missing"] == [want(results, "gblend train-naive --modalities audio,flow --seed 0")]


def _claim(claims, n):
    found = [c for c in claims if c.startswith(f"Claim {n} ")]
    assert len(found) == 1, claims
    return found[0]


def verdict(text):
    holds, fails = "HOLDS" in text, "DOES NOT HOLD" in text
    assert holds != fails, text
    return holds


def test_claims_hold_on_the_full_matrix(results, cfg):
    claims = build(results, ["overfit"], cfg)["claims"]
    c1 = _claim(claims, 1)
    assert verdict(c1) and "(RGB)" in c1
    assert "train top-1 96.0 vs 81.0" in c1 and "val video top-1 55.0 vs 60.2" in c1
    c2 = _claim(claims, 2)
    assert re.search(r"G-Blend offline 65\.2: HOLDS", c2) and re.search(r"G-Blend online 68\.0: HOLDS", c2)
    assert "DOES NOT HOLD" not in c2


@pytest.mark.parametrize("naive_train, naive_video, holds", [
    (95, 55, True),   # lower train error and higher val error than rgb (train 80, video 60)
    (70, 55, False),  # naive does not even fit the training set better
    (95, 61, False),  # naive generalises better than rgb
])
def test_claim1_verdict(tmp_path, naive_train, naive_video, holds):
    r = tmp_path / "results"
    write_run(r, "unimodal", ["rgb"], 0, clip=50, video=60, top5=90, train=80)
    write_run(r, "unimodal", ["audio"], 0, clip=40, video=30, top5=60, train=99)
    write_run(r, "naive", AR, 0, clip=45, video=naive_video, top5=85, train=naive_train)
    p = tmp_path / "r.toml"
    p.write_text(SMALL_MATRIX)
    c1 = _claim(build(r, ["overfit"], load_config(p))["claims"], 1)
    assert verdict(c1) is holds, c1


def test_claim2_per_mode_verdicts_and_uncheckable(tmp_path):
    r = tmp_path / "results"
    p = tmp_path / "r.toml"
    p.write_text(SMALL_MATRIX)
    write_run(r, "unimodal", ["rgb"], 0, clip=50, video=60, top5=90, train=80)
    c2 = _claim(build(r, ["overfit"], load_config(p))["claims"], 2)
    assert "cannot be checked" in c2  # no naive, no G-Blend
    write_run(r, "naive", AR, 0, clip=45, video=55, top5=85, train=95)
    write_run(r, "gblend", AR, 0, mode="offline", clip=58, video=66, top5=91, train=90)
    write_run(r, "gblend", AR, 0, mode="online", clip=50, video=58, top5=88, train=90)  # beats naive, not rgb
    c2 = _claim(build(r, ["overfit"], load_config(p))["claims"], 2)
    assert re.search(r"G-Blend offline 66\.0: HOLDS", c2), c2
    assert re.search(r"G-Blend online 58\.0: DOES NOT HOLD", c2), c2


# --- formats -------------------------------------------------------------------------------------
def test_csv_is_one_table_per_file_with_the_same_numbers_as_json(results, cfg):
    rep = build(results, ["table1", "table4", "overfit"], cfg)
    js = json.loads(render(rep, "json"))
    with pytest.raises(ValueError):
        render(rep, "csv")  # several tables never share one CSV
    checked = 0
    for name in ("table1", "table4", "overfit"):
        text = render_csv(rep, name)
        assert "{" not in text and "[" not in text  # plain cells: no JSON inside
        df = pd.read_csv(io.StringIO(text))
        rows = js[name]
        assert len(df) == len(rows)
        for i, row in enumerate(rows):
            for k, v in row.items():
                if isinstance(v, dict):  # one column per head
                    for h, x in v.items():
                        assert float(df[f"{k}_{h}"].iloc[i]) == pytest.approx(x), (name, i, k, h)
                        checked += 1
                    continue
                c = df[k].iloc[i]
                if v is None or v == []:
                    assert pd.isna(c), (name, i, k, c)
                elif isinstance(v, list):
                    assert str(c).split(";") == [str(x) for x in v], (name, i, k, c)
                elif isinstance(v, (int, float)):
                    assert float(c) == pytest.approx(v), (name, i, k, c)
                    checked += 1
                else:
                    assert c == v, (name, i, k, c)
    assert checked > 50


def test_markdown_titles_missing_cells_commands_and_claims(results, cfg):
    shutil.rmtree(results / "naive-audio+rgb-s1")
    text = render(build(results, ["table1", "table4", "overfit"], cfg), "markdown")
    for k in ("table1", "table4", "overfit"):  # the tables asked for ("methods" is asked for by name)
        assert f"### {TITLES[k]}" in text
    assert TITLES["methods"] not in text
    af_line = next(line for line in text.splitlines() if line.startswith("| A+OF"))
    assert "missing" in af_line  # naive A+OF video top-1 cell
    assert "Missing runs (commands that would produce them):" in text
    for cmd in (want(results, "gblend train-naive --modalities audio,rgb --seed 1"),
                want(results, "gblend train-naive --modalities audio,flow --seed 0"),
                want(results, "gblend train-gblend --modalities audio,rgb --mode online --seed 1")):
        assert f"    {cmd}" in text.splitlines(), cmd
    assert "- Claim 1 (A+RGB)" in text and "- Claim 2 (A+RGB)" in text
    v = col("unimodal", ["rgb"], None, 1, seeds=(0, 2))  # rgb in Table 4, on naive A+RGB's seeds 0 and 2 (59.0 ± 1.4)
    assert f"{round(hand_mean(v), 2):.1f} ± {round(hand_std(v), 2):.1f}" in text


def test_latex_uses_booktabs(results, cfg):
    text = render(build(results, ["table1", "table4"], cfg), "latex")
    assert text.count("\\toprule") == 2 and text.count("\\bottomrule") == 2 and "\\midrule" in text
    assert f"% {TITLES['table1']}" in text
    v = col("naive", AR, None, 1)  # naive A+RGB video top-1, shown with one decimal
    assert f"{round(hand_mean(v), 2):.1f} ± {round(hand_std(v), 2):.1f}" in text


def test_json_has_only_tables_and_claims(results, cfg):
    js = json.loads(render(build(results, ["table4", "overfit"], cfg), "json"))
    assert set(js) == {"table4", "overfit", "claims", "checks"}


def test_checks_cover_every_combination(results, cfg):
    rows = build(results, ["overfit"], cfg)["checks"]
    by = {(r["combo"], r["check"]): r for r in rows}
    t1 = by[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    naive, rgb = hand_mean(col("naive", AR, None, 1)), hand_mean(col("unimodal", ["rgb"], None, 1))
    assert t1["holds"] == (1 <= rgb - naive <= 8) and t1["values"]["difference"] == pytest.approx(round(naive - rgb, 2))
    off = by[("A+RGB", "G-Blend offline at least 2 points above naive and the best uni-modal model")]  # 2 on the main combo
    assert off["holds"] == (65.17 >= naive + 2 and 65.17 >= rgb + 2)
    assert off["values"]["over best uni-modal"] == pytest.approx(round(65.17 - rgb, 2), abs=0.01)
    assert ("RGB+OF", "G-Blend offline at least 1 point above naive and the best uni-modal model") in by or \
        not any(r["combo"] == "RGB+OF" and "G-Blend" in r["check"] for r in rows)
    # seed 1's offline weights are 0.2 away from w_raw (audio 0.2 vs 0.0): the check says so
    w = by[("A+RGB", "G-Blend offline weights within 0.05 of w_raw")]
    assert not w["holds"] and w["values"]["largest |w - w_raw|"] == pytest.approx(0.2)
    # flow (65.0) beats RGB (60.17) here: the ranking check fails
    rank = by[("uni-modal", "uni-modal ranking: RGB, then flow, then audio, which overfits most")]
    assert not rank["holds"]
    # only combinations whose runs exist get a verdict; the others the matrix expects cannot be checked
    table1 = {r["combo"]: r["holds"] for r in rows if r["check"].startswith("naive below")}
    assert {c for c, h in table1.items() if h is not None} == {"A+RGB", "RGB+OF"}
    assert table1["A+OF"] is None and table1["A+RGB+OF"] is None


# --- a deleted run folder ------------------------------------------------------------------------
def test_deleted_run_folders_show_as_missing(results, cfg):
    shutil.rmtree(results / "naive-rgb+flow-s0")
    shutil.rmtree(results / "unimodal-flow-s0")
    rep = json.loads(render(build(results, ["table1", "table4", "overfit"], cfg), "json"))
    rf = by_combo(rep["table1"], "RGB+OF")
    assert rf["naive_video_top1"] is None and rf["drop"] is None
    assert rf["best_unimodal"] == "RGB" and close(rf["best_unimodal_video_top1"], 60.0)  # flow is gone; RGB of the row's seed 0
    assert rf["missing"] == [want(results, "gblend train-naive --modalities rgb,flow --seed 0"),
                             want(results, "gblend train-unimodal --modality flow --seed 0")]
    naive = t4_row(rep["table4"], "RGB+OF", "naive")
    assert naive["clip_top1"] is None and naive["video_top1"] is None and naive["video_top5"] is None
    assert naive["seeds"] == [] and naive["missing"] == [want(results, "gblend train-naive --modalities rgb,flow --seed 0")]
    of = {r["run"]: r for r in rep["overfit"]}
    assert of["uni-modal OF"]["val_top1"] is None and of["uni-modal OF"]["ogr"] is None
    assert of["uni-modal OF"]["missing"] == [want(results, "gblend train-unimodal --modality flow --seed 0")]
    assert of["naive RGB+OF"]["train_top1"] is None
    assert of["naive RGB+OF"]["missing"] == [want(results, "gblend train-naive --modalities rgb,flow --seed 0")]


# --- CLI: --out, figures, bad input --------------------------------------------------------------
def test_cli_out_file_and_default_figure(results, run_gblend, tmp_path):
    out = tmp_path / "tables" / "report.md"
    proc = run_gblend("report", "--results", results, "--table", "all", "--format", "markdown", "--out", out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout == ""  # the tables went to the file
    text = out.read_text()
    assert f"### {TITLES['table1']}" in text and f"### {TITLES['overfit']}" in text
    png = results / "report" / "overfitting.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 1000


def test_cli_report_figures_wait_for_the_report_folder_and_remove_a_killed_writers_temps(results, run_gblend, tmp_path):
    """The default figures go to RESULTS/report, where `reproduce` writes its report too: `report`
    takes that folder's lock — waiting while another writer holds it, not refusing — and then
    removes what a killed writer left of its own figures (the fault campaign's
    `.overfitting.png.<random>.tmp`); another file's temp there is not its to remove."""
    import threading

    from reliability import folder_held

    folder = results / "report"
    folder.mkdir(exist_ok=True)
    left = folder / ".overfitting.png.k1ll3d.tmp"
    left.write_bytes(b"\x89PNG cut short")
    other = folder / ".notes.md.s0meone.tmp"
    other.write_text("not the report's")
    release = threading.Event()
    with folder_held(folder, "reproduce report", release) as released_at:  # a reproduce writing its report
        threading.Timer(6, release.set).start()
        proc = run_gblend("report", "--results", results, "--format", "json", "--out", tmp_path / "t.json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    png = folder / "overfitting.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_mtime >= released_at[0] - 0.01  # written after the wait
    assert not left.exists() and other.exists() and not (folder / ".lock").exists()


def test_cli_overfit_json_with_figure_path(results, run_gblend, tmp_path):
    fig = tmp_path / "figs" / "fig4.png"
    proc = run_gblend("report", "--results", results, "--table", "overfit", "--format", "json", "--figure", fig)
    assert proc.returncode == 0, proc.stderr[-2000:]
    js = json.loads(proc.stdout)
    assert set(js) == {"overfit", "claims", "checks"}
    assert close({r["run"]: r for r in js["overfit"]}["naive A+RGB"]["ogr"], 1.222)
    assert fig.read_bytes()[:8] == PNG_MAGIC
    assert not (results / "report" / "overfitting.png").exists()


def _one_line_error(proc):
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    return lines[0]


@pytest.mark.parametrize("args, needle", [
    (["--table", "7"], "--table"),
    (["--format", "xml"], "--format"),
    (["--results", "RESULTS/does-not-exist"], "does-not-exist"),
])
def test_cli_bad_input_exits_2_with_one_line(results, run_gblend, args, needle):
    args = [str(a).replace("RESULTS", str(results)) for a in args]
    if "--results" not in args:
        args += ["--results", str(results)]
    proc = run_gblend("report", *args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert needle in _one_line_error(proc)


def test_cli_bad_value_with_brackets_is_one_line_error(results, run_gblend):
    proc = run_gblend("report", "--results", results, "--table", "[/x]")
    assert proc.returncode == 2, proc.stderr[-500:]
    assert "[/x]" in _one_line_error(proc)


def test_cli_out_naming_a_folder_is_refused(results, run_gblend, tmp_path):
    folder = tmp_path / "tables"
    folder.mkdir()
    proc = run_gblend("report", "--results", results, "--table", "4", "--out", folder)
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "--out" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and list(folder.iterdir()) == []


# --- what a report must not silently average, compare or pass -----------------------------------
def test_two_copies_of_one_run_are_refused_not_averaged_twice(results, run_gblend):
    """A run copied into a subfolder (an old attempt, another data seed's results in one folder)
    would count its seed twice in every mean: one line naming both folders, exit 2."""
    shutil.copytree(results / "naive-audio+rgb-s1", results / "old" / "naive-audio+rgb-s1")
    proc = run_gblend("report", "--results", results, "--table", "1")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line_error(proc)
    assert "old/naive-audio+rgb-s1" in line and "naive-audio+rgb-s1 and" in line


def test_checks_do_not_fail_on_float32_noise(tmp_path, cfg):
    """Accuracies come from float32 (78% is stored as 77.99999713...): an exact 1-point drop and an
    exact 2-point margin hold, as the printed values say."""
    import numpy as np

    results = tmp_path / "r"
    f32 = lambda x: float(np.float32(x / 100)) * 100  # noqa: E731 - how train.py stores an accuracy
    for seed in (0, 1, 2):
        write_run(results, "unimodal", ["audio"], seed, video=f32(50.0), clip=50, top5=90, train=99)
        write_run(results, "unimodal", ["rgb"], seed, video=f32(78.0), clip=70, top5=90, train=90)
        write_run(results, "naive", AR, seed, video=f32(77.0), clip=70, top5=90, train=95)
        write_run(results, "gblend", AR, seed, video=f32(80.0), clip=70, top5=90, train=95, mode="offline")
    assert 78.0 - f32(77.0) < 1 or f32(78.0) - f32(77.0) < 1  # the trap: stored values miss by float noise
    by = {r["check"]: r for r in build(results, ["overfit"], cfg)["checks"] if r["combo"] == "A+RGB"}
    assert by["naive below the best uni-modal model by 1 to 8 points"]["holds"] is True
    assert by["G-Blend offline at least 2 points above naive and the best uni-modal model"]["holds"] is True


def _ar_folder(root, rgb, naive, gb, flow_seed0=None):
    """A+RGB rows of three seeds (audio far behind), plus RGB+OF of one seed when flow_seed0 is given."""
    for seed in (0, 1, 2):
        write_run(root, "unimodal", ["audio"], seed, video=50.0, clip=50, top5=90, train=99)
        write_run(root, "unimodal", ["rgb"], seed, video=rgb[seed], clip=70, top5=90, train=90)
        write_run(root, "naive", AR, seed, video=naive[seed], clip=70, top5=90, train=95)
        write_run(root, "gblend", AR, seed, video=gb[seed], clip=70, top5=90, train=95, mode="offline")
    if flow_seed0 is not None:
        write_run(root, "unimodal", ["flow"], 0, video=flow_seed0, clip=50, top5=90, train=90)
        write_run(root, "naive", ["rgb", "flow"], 0, video=77.0, clip=70, top5=90, train=95)
    return root


@pytest.mark.parametrize("naive_videos,clear", [((74, 75, 76), True),      # drop 4 ± 2.78·0.82 (df 4): inside [1, 8]
                                                ((76, 77.5, 79), False),   # drop 1.5 ± 3.0·1.04 (df 3.5): 1 is inside
                                                ((80.5, 81, 81.5), True)])  # drop −2 ± 3.2·0.65 (df 2.9): clearly not 1 below
def test_margin_checks_say_whether_the_seeds_decide_them(tmp_path, cfg, naive_videos, clear):
    """Each margin check gives its difference's standard error over the seeds (runs taken as
    independent: sqrt(s_a²/n_a + s_b²/n_b)) with Welch's degrees of freedom, and `clear`: whether
    the verdict stands for every difference in its two-sided 95% Student-t interval; one seed a
    row measures no spread (se, df and clear null). The report's lines and its summary say it."""
    import statistics

    from gblend_cli.checks import summary as checks_summary

    rgb, gb = (78, 79, 80), (86, 88, 90)
    results = _ar_folder(tmp_path / "r", rgb, naive_videos, gb, flow_seed0=60.0)
    rep = build(results, ["overfit"], cfg)
    by = {(r["combo"], r["check"]): r for r in rep["checks"]}
    t1 = by[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    va, vb = statistics.variance(rgb) / 3, statistics.variance(naive_videos) / 3
    se, df = math.sqrt(va + vb), (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    assert t1["values"]["difference se"] == pytest.approx(round(se, 2)) and t1["values"]["difference df"] == round(df, 1)
    assert t1["clear"] is clear and t1["holds"] is (1 <= 79 - statistics.fmean(naive_videos) <= 8)
    off = by[("A+RGB", "G-Blend offline at least 2 points above naive and the best uni-modal model")]
    se_u = math.sqrt(statistics.variance(gb) / 3 + statistics.variance(rgb) / 3)  # 88 − 79 = 9 ± 1.29: clear
    assert off["holds"] and off["clear"] is True and off["values"]["over best uni-modal se"] == pytest.approx(round(se_u, 2))
    rf = by[("RGB+OF", "naive below the best uni-modal model by 1 to 8 points")]  # one seed: no spread
    assert rf["values"]["difference se"] is None and rf["clear"] is None
    lines = {line.split(":")[0] + ":" + line.split(":")[1]: line for line in check_lines(rep["checks"])}
    table1 = lines["A+RGB: naive below the best uni-modal model by 1 to 8 points"]
    assert ("; clear of its 95% interval;" if clear else "; within its 95% interval: not decided by these seeds;") in table1
    assert "95%" not in lines["RGB+OF: naive below the best uni-modal model by 1 to 8 points"]
    held = sum(r["holds"] is True for r in rep["checks"])
    assert checks_summary(rep["checks"]).startswith(f"{held} of {sum(r['holds'] is not None for r in rep['checks'])} checks hold")
    assert f"{1 + (t1['holds'] and clear)} hold and {int(not t1['holds'] and clear)} fail clear" in checks_summary(rep["checks"])


def test_margin_checks_hold_the_papers_own_numbers_to_the_same_conditions(tmp_path, cfg):
    """Each margin check also applies its conditions to the paper's Kinetics numbers (Table 1 for
    the drop, Table 4 for offline G-Blend, Table 2 for online), whatever the folder's runs say:
    the paper's own RGB+OF G-Blend is 0.5 above RGB (73.1 against 72.6), short of the 1 point
    the check asks for. The lines, the summary and the pooled rows carry it."""
    from gblend_cli.checks import pooled, summary as checks_summary

    results = _ar_folder(tmp_path / "r", (78, 79, 80), (79, 80, 81), (86, 88, 90), flow_seed0=60.0)
    write_run(results, "gblend", ["rgb", "flow"], 0, video=90.0, clip=70, top5=90, train=95, mode="offline")
    rep = build(results, ["overfit"], cfg)
    by = {(r["combo"], r["check"]): r for r in rep["checks"]}
    t1 = by[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    assert t1["holds"] is False and t1["paper"] == {"holds": True, "values": {"difference": pytest.approx(71.4 - 72.6)}}
    off = by[("A+RGB", "G-Blend offline at least 2 points above naive and the best uni-modal model")]
    assert off["paper"]["holds"] is True
    assert off["paper"]["values"] == {"over naive": pytest.approx(74.7 - 71.4), "over best uni-modal": pytest.approx(74.7 - 72.6)}
    rf = by[("RGB+OF", "G-Blend offline at least 1 point above naive and the best uni-modal model")]
    assert rf["holds"] is True and rf["paper"]["holds"] is False  # ours clears it here; the paper's 73.1 does not
    assert rf["paper"]["values"]["over best uni-modal"] == pytest.approx(0.5)
    assert "paper" not in by[("A+RGB", "G-Blend offline weights within 0.05 of w_raw")]
    line = next(ln for ln in check_lines(rep["checks"]) if ln.startswith("RGB+OF: G-Blend offline at least"))
    assert line.endswith("; the paper's Kinetics numbers: DOES NOT HOLD (over naive 1.8, over best uni-modal 0.5))")
    margins = [r for r in rep["checks"] if r.get("clear") is not None or "paper" in r]
    met = sum(r["paper"]["holds"] for r in margins)
    assert met == len(margins) - 1  # every margin the paper reports but RGB+OF's G-Blend lead
    assert checks_summary(rep["checks"]).endswith(f"; the paper's own Kinetics numbers meet {met} of those {len(margins)} margins.")
    pooled_t1 = {(r["combo"], r["check"]): r for r in pooled([rep["checks"], rep["checks"]])}[
        ("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    assert pooled_t1["paper"] == t1["paper"]


def test_checks_at_a_glance_one_row_per_check_in_every_format(tmp_path, cfg, results):
    """checks.glance: one row per check — its verdict, each margin's value ± SE and whether the
    seeds decide it, the pooled verdict with --pool, the paper's — rendered as a markdown table
    whose rows keep their columns (no cell holds a '|')."""
    import statistics

    from gblend_cli.checks import glance, pooled

    ar = _ar_folder(tmp_path / "r", (78, 79, 80), (74, 75, 76), (86, 88, 90), flow_seed0=60.0)
    rep = build(ar, ["overfit"], cfg)
    headers, body = glance(rep["checks"])
    assert headers == ["Combo", "Check", "Over the seeds", "The paper"] and len(body) == len(rep["checks"])
    cell = {(r[0], r[1]): r for r in body}
    t1 = cell[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    se = math.sqrt(statistics.variance((78, 79, 80)) / 3 + statistics.variance((74, 75, 76)) / 3)
    assert t1[2] == f"HOLDS: -4.0 ± {se:.1f}, decided" and t1[3] == "HOLDS: -1.2"
    assert cell[("RGB+OF", "naive below the best uni-modal model by 1 to 8 points")][2] == "HOLDS: -1.0"  # one seed (77 against RGB seed 0's 78): no spread
    assert cell[("A+RGB", "G-Blend offline weights within 0.05 of w_raw")][2:] == ["CANNOT BE CHECKED", ""]  # no blend rows
    w = {(r[0], r[1]): r for r in glance(build(results, ["overfit"], cfg)["checks"])[1]}[
        ("A+RGB", "G-Blend offline weights within 0.05 of w_raw")]  # seed 1's weights 0.2 off w_raw
    assert w[2:] == ["DOES NOT HOLD (w off w_raw by up to 0.2)", ""]
    headers, body = glance(rep["checks"], pooled([rep["checks"], rep["checks"]]))
    assert headers[3:] == ["Pooled over the folders", "At the paper's size", "The paper"] and all(len(r) == 6 for r in body)
    assert {r[3] for r in body if "ranking" in r[1]} == {"HOLDS (in 2 of 2 folders)"}
    text = render(rep, "markdown")
    table = [ln for ln in text.split("at a glance")[1].split("\n\n")[1].splitlines()]
    assert len(table) == 2 + len(rep["checks"]) and len({ln.count("|") for ln in table}) == 1


def test_student_t_quantiles_and_welch_degrees_of_freedom():
    """checks.t_quantile against the printed table (two-sided 95%: the 0.975 quantile; df need not
    be whole), and checks.difference's Welch-Satterthwaite df: n_a + n_b − 2 for equal spreads and
    sizes, n − 1 of the noisier row when the other has (almost) none."""
    from gblend_cli.checks import difference, t_quantile

    for df, table in ((1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (30, 2.042), (1e6, 1.960)):
        assert t_quantile(0.975, df) == pytest.approx(table, abs=1e-3), df
    assert t_quantile(0.95, 5) == pytest.approx(2.015, abs=1e-3)
    assert 3.182 < t_quantile(0.975, 2.5) < 4.303
    row = lambda mean, std, n: {"mean": mean, "std": std, "n": n}  # noqa: E731
    assert difference(row(80, 1, 3), row(78, 1, 3)) == pytest.approx((2, math.sqrt(2 / 3), 4))
    assert difference(row(80, 3, 3), row(78, 1e-6, 3))[2] == pytest.approx(2)
    assert difference(row(80, 1, 1), row(78, 1, 3)) == (2, None, None)


def test_pooled_checks_average_the_folders_and_judge_by_the_same_conditions(tmp_path, cfg):
    """checks.pooled over three folders: a margin check's value is the mean of the folders' values,
    its SE stdev/sqrt(3) over the folders, and holds/clear follow the check's own conditions (Table
    1: difference in [-8, -1]); a check some folder cannot measure is CANNOT BE CHECKED; any other
    check holds where it holds in every folder."""
    import statistics

    from gblend_cli.checks import pooled

    drops = (-0.5, -3.0, -4.0)  # naive − RGB per folder: one folder fails Table 1, the mean holds
    folders = []
    for i, d in enumerate(drops):
        rgb = (78.0, 79.0, 80.0)
        root = _ar_folder(tmp_path / f"f{i}", rgb, tuple(x + d for x in rgb), (88.0, 89.0, 90.0),
                          flow_seed0=60.0 if i < 2 else None)  # the third folder has no RGB+OF runs
        folders.append(build(root, ["overfit"], cfg)["checks"])
    assert [r["holds"] for r in folders[0] if r["check"].startswith("naive below") and r["combo"] == "A+RGB"] == [False]
    rows = {(r["combo"], r["check"]): r for r in pooled(folders)}
    t1 = rows[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    mean, se = statistics.fmean(drops), statistics.stdev(drops) / math.sqrt(3)
    assert t1["values"]["difference"] == pytest.approx(round(mean, 2)) and t1["values"]["difference se"] == pytest.approx(round(se, 2))
    assert t1["values"]["difference per folder"] == list(drops)
    assert t1["holds"] is (-8 <= mean <= -1) and t1["held_in"] == 2 and t1["folders"] == 3
    assert t1["values"]["difference df"] == 2 and t1["clear"] is False  # −2.5 ± 4.30·1.04 reaches past −1
    off = rows[("A+RGB", "G-Blend offline at least 2 points above naive and the best uni-modal model")]
    assert off["holds"] and off["values"]["over best uni-modal"] == pytest.approx(10.0)
    assert off["values"]["over best uni-modal se"] == 0.0 and off["clear"] is True  # the same lead in every folder
    rf = rows[("RGB+OF", "naive below the best uni-modal model by 1 to 8 points")]
    assert rf["holds"] is None and "2 of 3" in rf["values"]["measured in"]
    # the ranking needs flow: the third folder has no such check at all (not even unmeasured)
    rank = rows[("uni-modal", "uni-modal ranking: RGB, then flow, then audio, which overfits most")]
    per = [r["holds"] for f in folders for r in f if r["combo"] == "uni-modal"]
    assert len(per) == 2 and rank["holds"] is None and rank["held_in"] == sum(per)
    two = {(r["combo"], r["check"]): r for r in pooled(folders[:2])}
    assert two[("uni-modal", "uni-modal ranking: RGB, then flow, then audio, which overfits most")]["holds"] is all(per)
    assert two[("uni-modal", "uni-modal ranking: RGB, then flow, then audio, which overfits most")]["values"] == \
        {"held in": f"{sum(per)} of 2 folders"}


def test_pooled_checks_say_whether_the_folders_would_show_the_papers_effect(tmp_path, cfg):
    """checks.at_paper_effect: each folder keeps its deviation from the pooled mean about the
    paper's value instead of ours. Table 1 on A+RGB: drops −1.5, −3, −4.5 hold in all three folders
    (mean −3); moved to the paper's −1.2 they read +0.3, −1.2, −2.7, so the first folder fails.
    G-Blend's lead over naive (10.5, 12, 13.5) moved to the paper's 3.3 reads 1.8 in the first
    folder (< 2). The summary counts the folders in which every margin the paper meets would have
    held; the glance table gives each check's count."""
    from gblend_cli.checks import at_paper_effect, glance, pooled, summary as checks_summary

    folders = []
    for i, d in enumerate((-1.5, -3.0, -4.5)):
        rgb = (78.0, 79.0, 80.0)
        folders.append(build(_ar_folder(tmp_path / f"f{i}", rgb, tuple(x + d for x in rgb), (86.0, 88.0, 90.0)),
                             ["overfit"], cfg)["checks"])
    rows = {(r["combo"], r["check"]): r for r in pooled(folders)}
    t1 = rows[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")]
    assert t1["held_in"] == 3 and t1["at_paper_effect"] == {
        "held_in": 2, "folders": 3, "per_folder": [False, True, True],
        "every_folder_needs": {"difference": [-6.5, -2.5]}}  # deviations ±1.5 about the mean: [−8 + 1.5, −1 − 1.5]
    off = rows[("A+RGB", "G-Blend offline at least 2 points above naive and the best uni-modal model")]
    assert off["values"]["over naive per folder"] == [10.5, 12.0, 13.5] and off["held_in"] == 3
    assert off["at_paper_effect"]["per_folder"] == [False, True, True]  # over RGB: 9 everywhere, moved to 2.1: holds
    assert off["at_paper_effect"]["every_folder_needs"] == {"over naive": [3.5, None], "over best uni-modal": [2.0, None]}
    assert "at_paper_effect" not in rows[("A+RGB", "G-Blend offline weights within 0.05 of w_raw")]
    assert checks_summary(list(rows.values()), "folders").endswith(
        "; had each margin the paper's size with these folders' spread about it, those 2 would all have held in "
        "2 of 3 folders (per folder: 0, 2, 2).")
    assert "had each margin" not in checks_summary(folders[0])  # one folder: no spread to move
    assert at_paper_effect([[0.0, -9.0]], [{"value": "difference", "lo": -8, "hi": -1}], {"difference": -1.2}) == {
        "held_in": 1, "folders": 2, "per_folder": [False, True],  # −1.2 ± 4.5
        "every_folder_needs": {"difference": None}}  # a spread of 9 points fits no 7-point window
    headers, body = glance(folders[0], list(rows.values()))
    assert headers[4] == "At the paper's size"
    cell = {(r[0], r[1]): r[4] for r in body}
    assert cell[("A+RGB", "naive below the best uni-modal model by 1 to 8 points")] == "held in 2 of 3 folders"
    assert cell[("A+RGB", "G-Blend offline weights within 0.05 of w_raw")] == ""


def test_cli_report_pool_adds_pooled_checks_and_refuses_counting_a_folder_twice(tmp_path, run_gblend):
    """`report --pool` puts pooled_checks and pooled_folders beside each folder's checks (json), a
    section in markdown; the same folder twice, a folder inside another, or --pool without the
    checks (--table 1) is one line and exit 2."""
    a = _ar_folder(tmp_path / "a", (78.0, 79.0, 80.0), (75.0, 76.0, 77.0), (88.0, 89.0, 90.0))
    b = _ar_folder(tmp_path / "b", (78.0, 79.0, 80.0), (74.0, 75.0, 76.0), (87.0, 88.0, 89.0))
    proc = run_gblend("report", "--results", a, "--pool", b, "--format", "json", "--figure", tmp_path / "f.png")
    assert proc.returncode == 0, proc.stderr[-2000:]
    js = json.loads(proc.stdout)
    assert js["pooled_folders"] == [str(a), str(b)]
    t1 = next(r for r in js["pooled_checks"] if r["combo"] == "A+RGB" and r["check"].startswith("naive below"))
    assert t1["values"]["difference per folder"] == [-3.0, -4.0] and t1["values"]["difference"] == -3.5 and t1["holds"]
    md = run_gblend("report", "--results", a, "--pool", b, "--format", "markdown", "--figure", tmp_path / "f.png")
    section = md.stdout.split("pooled over the results folders")[1]
    assert "- A+RGB: naive below the best uni-modal model by 1 to 8 points: HOLDS (difference -3.5, difference se 0.5, " \
           "difference df 1, difference per folder [-3, -4]; within its 95% interval: not decided by these folders; " \
           "the paper's Kinetics numbers: HOLDS (difference -1.2); at the paper's size with these folders' spread: " \
           "held in 1 of 2 folders)" in section  # two folders: −3.5 ± 12.7·0.5 (df 1) reaches past −1; −1.2 ± 0.5: −0.7, −1.7
    for args, needle in ((["--pool", a], "count twice"), (["--pool", a / "naive-audio+rgb-s0"], "lies inside"),
                         (["--pool", b, "--table", "1"], "--pool pools the checks"),
                         (["--pool", tmp_path / "nowhere"], "nowhere")):
        bad = run_gblend("report", "--results", a, *args, "--figure", tmp_path / "f.png")
        assert bad.returncode == 2, bad.stderr[-2000:]
        assert needle in _one_line_error(bad)


def test_best_unimodal_is_compared_over_the_rows_seeds(results, cfg):
    """RGB+OF's naive row has seed 0 only (other_seeds = [0]); its best uni-modal model is measured
    on seed 0 too (RGB 60.0), not on the main combination's three RGB seeds (60.17)."""
    write_run(results, "unimodal", ["flow"], 1, video=50, clip=50, top5=80, train=70)  # flow s1: not RGB+OF's seed
    rep = build(results, ["table1", "table4", "overfit"], cfg)
    rf = by_combo(rep["table1"], "RGB+OF")
    assert rf["best_unimodal"] == "OF" and close(rf["best_unimodal_video_top1"], 65.0)  # seed 0 only, not (65+50)/2
    uni = t4_row(rep["table4"], "RGB+OF", "best uni-modal")
    assert uni["seeds"] == [0] and close(uni["video_top1"], 65.0)
    ar = t4_row(rep["table4"], "A+RGB", "best uni-modal")  # the main combination keeps its three seeds
    assert ar["seeds"] == [0, 1, 2] and close(ar["video_top1"], 60.17)


def test_a_combination_spelt_in_another_order_names_the_same_runs(results, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(FULL_MATRIX.replace('main = "audio+rgb"', 'main = "rgb+audio"')
                      .replace('"rgb+flow", ', '"flow+rgb", '))
    cfg = load_config(recipe)
    assert cfg["reproduce"]["main"] == "audio+rgb" and cfg["reproduce"]["other_combos"][0] == "rgb+flow"
    rep = build(results, ["table1", "overfit"], cfg)
    assert [r["combo"] for r in rep["table1"]] == ["A+RGB", "RGB+OF", "A+OF", "A+RGB+OF"]
    assert by_combo(rep["table1"], "A+RGB")["missing"] == []
    margins = [r["check"] for r in rep["checks"] if r["combo"] == "A+RGB" and "above naive" in r["check"]]
    assert margins and all("at least 2 points" in c for c in margins)  # the main combination's margin


def test_checks_the_matrix_expects_but_cannot_measure_say_so(results, cfg):
    """A G-Blend mode or a combination the recipe's matrix has, without runs: its checks read
    CANNOT BE CHECKED (holds null) instead of vanishing from the count."""
    shutil.rmtree(results / "gblend-online-audio+rgb-s0")
    shutil.rmtree(results / "gblend-online-audio+rgb-s2")
    rep = build(results, ["overfit"], cfg)
    by = {(r["combo"], r["check"]): r for r in rep["checks"]}
    for check in ("G-Blend online at least 2 points above naive and the best uni-modal model",
                  "G-Blend online weights within 0.05 of w_raw"):
        assert by[("A+RGB", check)]["holds"] is None
    assert by[("A+OF", "naive below the best uni-modal model by 1 to 8 points")]["holds"] is None
    assert by[("A+OF", "G-Blend offline at least 1 point above naive and the best uni-modal model")]["holds"] is None
    md = render(rep, "markdown")
    assert "A+RGB: G-Blend online weights within 0.05 of w_raw: CANNOT BE CHECKED (runs missing)" in md


@pytest.mark.parametrize("damage, needle", [
    (lambda final: final.pop("head"), "head is missing"),
    (lambda final: final.update(video_top1=None), "video_top1 is missing"),
    (lambda final: final.pop("train_top1"), "train_top1 is missing"),
    (lambda final: final["weights"].update(audio=None), "weights holds a value that is not a number"),
])
def test_damaged_final_json_is_one_line(results, run_gblend, damage, needle):
    path = results / "gblend-offline-audio+rgb-s1" / "final.json"
    final = json.loads(path.read_text())
    damage(final)
    path.write_text(json.dumps(final))
    proc = run_gblend("report", "--results", results, "--table", "all")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line_error(proc)
    assert str(path) in line and needle in line


@pytest.mark.parametrize("damage", ["null weight", "kept from nowhere"])
def test_damaged_blend_journal_is_one_line(results, run_gblend, damage):
    path = results / "gblend-online-audio+rgb-s0" / "blend_weights.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    if damage == "null weight":
        rows[-1]["heads"]["rgb"]["w"] = None
    else:
        rows[-1]["kept_from"] = 4  # no estimate at epoch 4: the weights in force came from nowhere
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = run_gblend("report", "--results", results, "--table", "4")
    assert proc.returncode == 2, proc.stderr[-2000:]
    line = _one_line_error(proc)
    assert str(path) in line and "line 2 is damaged" in line


def test_the_demo_oracle_shows_beside_table1_and_the_gblend_checks(results, cfg, tmp_path):
    """Runs trained on a prepared demo folder with an oracle.json: Table 1 gets the best any model
    of the combination / of its best modality could score, and the G-Blend checks the headroom;
    runs on other data (no file, or no data_dir) get neither."""
    from gblend_cli.demo_data import ORACLE_FILE

    plain = build(results, ["table1", "overfit"], cfg)
    assert all(r["oracle_video_top1"] is None for r in plain["table1"])
    assert "Oracle" not in render(plain, "markdown")
    assert not any("oracle" in c["values"] for c in plain["checks"])

    data = tmp_path / "prepared"
    data.mkdir()
    top1 = {"audio": 74.8, "rgb": 78.3, "flow": 78.3, "audio+rgb": 92.12, "rgb+flow": 78.3,
            "audio+flow": 92.12, "audio+rgb+flow": 92.12}
    (data / ORACLE_FILE).write_text(json.dumps({"val": {"videos": 500, "video_top1": top1}}))
    for run in results.iterdir():
        if (run / "final.json").exists():
            (run / "config.toml").write_text(f'[dataset]\ndata_dir = "{data}"\n')
    rep = build(results, ["table1", "overfit"], cfg)
    ar, rf = by_combo(rep["table1"], "A+RGB"), by_combo(rep["table1"], "RGB+OF")
    assert (ar["oracle_video_top1"], ar["oracle_best_unimodal_video_top1"]) == (92.12, 78.3)  # best is RGB
    assert (rf["oracle_video_top1"], rf["oracle_best_unimodal_video_top1"]) == (78.3, 78.3)  # best is flow
    md = render(rep, "markdown")
    assert "Oracle fused / uni-modal" in md and "92.1 / 78.3" in md and "Oracle (the demo only)" in md
    off = [c for c in rep["checks"] if c["combo"] == "A+RGB" and c["check"].startswith("G-Blend offline at least")]
    assert off and off[0]["values"]["oracle"] == 92.12
    assert not any("oracle" in c["values"] for c in rep["checks"] if c["check"].startswith("naive below"))
