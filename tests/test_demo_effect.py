"""The paper's effect on a reduced demo, end to end (real mp4 -> prepare-data -> training core ->
G-Blend weights from the runs -> report), so a regression in data, model, training or blending
shows up in CI.

The default recipe (data seed 10) with 200 validation videos instead of 500, one training seed,
A+RGB only, offline G-Blend: 4 runs, ~1.5 minutes on 2 idle cores.

What is asserted is what holds on the demo on every seed we measured with this recipe (README,
"What the demo shows"; docs/DEMO_TUNING.md, item 10: 22 A+RGB runs over data seeds 0, 2 and
10-15):
audio memorises and overfits most (OGR, ΔO), RGB generalises better than audio, G-Blend's
weights are the ones Algorithm 1 sets from the runs' own losses with no guard or floor moving any
of them, and offline G-Blend is above RGB alone (by 1.0 to 14.2 points on those runs). Two
assertions hold on this test's data seed (10) but not on every one: audio at least 5 points below
RGB by video top-1 (on data seed 14 it is 3.4-5.0 below, on 15 1.6-8.0), and audio's train-val
gap at least 5 points above RGB's and naive's (on data seed 15, training seed 37, RGB's 28.2
against audio's 27.7; over that data seed's three seeds audio's is still the largest). What is
NOT asserted: Table 1's claim (naive A+RGB is below RGB on some seeds and level or above on others:
published 77.7 ± 4.8 against 78.3) and Table 4's margins; the README publishes both as measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import gblend_env

SEED = 1


@pytest.mark.slow
def test_reduced_demo_shows_the_paper_effect(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "gblend_cli", "reproduce", "--seeds", str(SEED), "--results", str(results),
           "--set", f"dataset.data_dir={tmp_path / 'data'}", "--set", "reproduce.other_combos=[]",
           "--set", 'reproduce.gblend_modes=["offline"]', "--set", "demo.test_videos=200"]
    p = subprocess.run(cmd, cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    check_reduced_demo(results, SEED)
    # `report` on its own reads the recipe reproduce ran (its --seeds, its --set): the same tables, nothing missing
    r = subprocess.run([sys.executable, "-m", "gblend_cli", "report", "--results", str(results), "--format", "json"],
                       cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    alone, ran = json.loads(r.stdout), json.loads((results / "report" / "report.json").read_text())
    for k in ("table1", "table4", "overfit"):
        assert alone[k] == ran[k] and not any(row.get("missing") for row in alone[k]), k


def check_reduced_demo(results, seed: int) -> None:
    """The assertions, on a results folder holding one seed of the reduced A+RGB matrix."""
    from blend_check import check_blend_run, check_terms_from_runs

    report = json.loads((results / "report" / "report.json").read_text())
    over = {r["run"]: r for r in report["overfit"]}
    audio, rgb, naive = over["uni-modal A"], over["uni-modal RGB"], over["naive A+RGB"]

    def gap(r):
        return r["train_top1"] - r["val_top1"]

    # audio memorises: it overfits most, by the train-validation gap and by OGR
    assert gap(audio) >= 25 and gap(audio) > max(gap(rgb), gap(naive)) + 5, (audio, rgb, naive)
    assert audio["ogr"] > max(naive["ogr"], rgb["ogr"]), (audio, naive, rgb)
    # by video top-1, as Tables 1 and 4 compare (the overfitting table above is per clip)
    video = {m: json.loads((results / f"unimodal-{m}-s{seed}" / "final.json").read_text())["video_top1"]
             for m in ("audio", "rgb")}
    assert video["audio"] > 100 / 8 + 10, video  # well above chance (8 classes)...
    assert video["audio"] < video["rgb"] - 5, video  # ...but well below RGB

    t4 = {r["method"]: r for r in report["table4"] if r["combo"] == "A+RGB"}
    uni, nv, gb = t4["best uni-modal (RGB)"], t4["naive"], t4["G-Blend offline"]
    # the report's Table 1 check reads these runs (whether naive is below RGB depends on the seed)
    table1 = [c for c in report["checks"] if c["combo"] == "A+RGB" and c["check"].startswith("naive below")]
    assert len(table1) == 1 and table1[0]["values"]["difference"] == round(nv["video_top1"] - uni["video_top1"], 2)
    # G-Blend, trained with the formula's weights, is above RGB alone
    assert gb["video_top1"] > uni["video_top1"], (gb, uni)

    # G-Blend: the weights are Algorithm 1's, read from the uni-modal and naive runs of this seed
    run = results / f"gblend-offline-audio+rgb-s{seed}"
    (row,) = check_blend_run(run)  # every term and weight recomputed from the row's own losses
    read = check_terms_from_runs(run, {"audio": results / f"unimodal-audio-s{seed}",
                                       "rgb": results / f"unimodal-rgb-s{seed}",
                                       "fused": results / f"naive-audio+rgb-s{seed}"})
    heads = read["heads"]
    assert heads["audio"]["delta_O"] > max(heads["fused"]["delta_O"], heads["rgb"]["delta_O"]), heads
    assert heads["rgb"]["delta_G"] > heads["audio"]["delta_G"], heads
    assert min(heads["rgb"]["w"], heads["fused"]["w"]) > heads["audio"]["w"], heads  # RGB vs fused: by data seed
    for h, v in heads.items():  # the formula's own weights: no noise guard acted, a floor at most lifts to 0.05
        assert not v["noise_bound"] and abs(v["w"] - v["w_raw"]) <= 0.05, (h, heads)
        if v["floored"]:
            assert v["delta_G"] <= 0 and v["w"] <= 0.05 + 1e-9, (h, v)
    assert gb["weights"] == {h: round(v["w"], 3) for h, v in heads.items()}, (gb, heads)
    assert gb["weights_raw"] == {h: round(v["w_raw"], 3) for h, v in heads.items()}, (gb, heads)
