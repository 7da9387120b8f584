"""The paper's effect on a reduced demo, end to end (real mp4 -> prepare-data -> training core ->
G-Blend weights from the runs -> report), so a regression in data, model, training or blending
shows up in CI.

The default recipe (data seed 3) with 200 validation videos instead of 500, one training seed,
A+RGB only, offline G-Blend: 4 runs, ~1.5 minutes on 2 idle cores.

What is asserted is what holds on the demo on every seed we measured (README, "What the demo
shows"): audio memorises and overfits most, RGB generalises better than audio, naive A+RGB fits
the training set better than RGB alone, and G-Blend's weights are the ones Algorithm 1 sets from
the runs' own losses, with no guard or floor moving any of them (every stream overfits
measurably, so the estimate is not set by noise). What is NOT asserted: the accuracy claims of
Tables 1 and 4. Naive A+RGB is below RGB on some seeds and above on others (published: level on
average, 0.0 ± 7.3; on this test's seed 78.0 vs 74.5), and G-Blend above both holds on the
published data seed but not on every data seed we tuned on; the README publishes both as
measured."""

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
    # audio memorises: it overfits strongly, RGB generalises
    assert audio["train_top1"] - audio["val_top1"] >= 30, audio
    assert rgb["train_top1"] - rgb["val_top1"] < audio["train_top1"] - audio["val_top1"] - 15, (rgb, audio)
    assert audio["val_top1"] > 100 / 8 + 10, audio  # well above chance (8 classes)...
    assert audio["val_top1"] < rgb["val_top1"] - 5, (audio, rgb)  # ...but well below RGB
    # OGR: audio overfits most per unit of generalisation, naive in between
    assert audio["ogr"] > naive["ogr"] > rgb["ogr"], (audio, naive, rgb)

    t4 = {r["method"]: r for r in report["table4"] if r["combo"] == "A+RGB"}
    uni, nv, gb = t4["best uni-modal (RGB)"], t4["naive"], t4["G-Blend offline"]
    # naive late fusion fits the training set better than RGB alone (whether it generalises worse,
    # Table 1, depends on the seed here: not asserted); the report's Table 1 check reads these runs
    assert naive["train_top1"] > rgb["train_top1"] + 5, (naive, rgb)
    table1 = [c for c in report["checks"] if c["combo"] == "A+RGB" and c["check"].startswith("naive below")]
    assert len(table1) == 1 and table1[0]["values"]["difference"] == round(nv["video_top1"] - uni["video_top1"], 2)

    # G-Blend: the weights are Algorithm 1's, read from the uni-modal and naive runs of this seed
    run = results / f"gblend-offline-audio+rgb-s{seed}"
    (row,) = check_blend_run(run)  # every term and weight recomputed from the row's own losses
    read = check_terms_from_runs(run, {"audio": results / f"unimodal-audio-s{seed}",
                                       "rgb": results / f"unimodal-rgb-s{seed}",
                                       "fused": results / f"naive-audio+rgb-s{seed}"})
    heads = read["heads"]
    assert heads["audio"]["delta_O"] > heads["fused"]["delta_O"] > heads["rgb"]["delta_O"], heads
    assert heads["rgb"]["delta_G"] > heads["audio"]["delta_G"], heads
    assert heads["rgb"]["w"] > heads["fused"]["w"] > heads["audio"]["w"], heads
    for h, v in heads.items():  # the formula's own weights: no noise guard acted, a floor at most lifts to 0.05
        assert not v["noise_bound"] and abs(v["w"] - v["w_raw"]) <= 0.05, (h, heads)
        if v["floored"]:
            assert v["delta_G"] <= 0 and v["w"] <= 0.05 + 1e-9, (h, v)
    assert gb["weights"] == {h: round(v["w"], 3) for h, v in heads.items()}, (gb, heads)
    assert gb["weights_raw"] == {h: round(v["w_raw"], 3) for h, v in heads.items()}, (gb, heads)
