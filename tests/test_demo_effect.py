"""The paper's effect on a reduced demo, end to end (real mp4 -> prepare-data -> training core ->
G-Blend weights from the runs -> report), so a regression in data, model, training or blending
shows up in CI.

The default recipe (data seed 1) with 200 validation videos instead of 500, one training seed,
A+RGB only, offline G-Blend: 4 runs, ~3 minutes on 2 cores.

What is asserted is what holds on the demo on every seed we measured (README, "What the demo
shows"): audio memorises and overfits most, RGB generalises best, naive A+RGB fits the training
set better and generalises worse than RGB alone (Table 1), and G-Blend's weights are the ones
Algorithm 1 sets from the runs' own losses (no floor above 0.05, every deviation from the raw
formula flagged). What is NOT asserted: G-Blend's accuracy above RGB (Table 4). On this demo it
holds on some seeds and collapses on others (the raw formula gives the fused head ~0.02 when RGB
barely overfits, and that head is then under-trained); the README publishes that as measured."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import gblend_env

SEED = 1  # naive A+RGB is below RGB by 4-15 points on seeds 0-2 of this setting; seed 1 is the closest call


@pytest.mark.slow
def test_reduced_demo_shows_the_paper_effect(tmp_path):
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "gblend_cli", "reproduce", "--seeds", str(SEED), "--results", str(results),
           "--set", f"dataset.data_dir={tmp_path / 'data'}", "--set", "reproduce.other_combos=[]",
           "--set", 'reproduce.gblend_modes=["offline"]', "--set", "demo.test_videos=200"]
    p = subprocess.run(cmd, cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=1500)
    assert p.returncode == 0, p.stderr[-3000:]
    check_reduced_demo(results, SEED)


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
    assert audio["val_top1"] < rgb["val_top1"] - 10, (audio, rgb)  # ...but far below RGB
    # OGR: audio overfits most per unit of generalisation, naive in between
    assert audio["ogr"] > naive["ogr"] > rgb["ogr"], (audio, naive, rgb)

    t4 = {r["method"]: r for r in report["table4"] if r["combo"] == "A+RGB"}
    uni, nv, gb = t4["best uni-modal (RGB)"], t4["naive"], t4["G-Blend offline"]
    # Table 1: naive late fusion fits the training set better and generalises worse than RGB alone
    assert naive["train_top1"] > rgb["train_top1"] + 5, (naive, rgb)
    assert nv["video_top1"] < uni["video_top1"] - 1, (nv, uni)
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
    for h, v in heads.items():  # a weight moved by more than 0.05 is flagged, and only a noise guard moves one that far
        if abs(v["w"] - v["w_raw"]) > 0.05:
            assert any(x["noise_bound"] for x in heads.values()), (h, heads)
        if v["floored"]:
            assert v["delta_G"] <= 0 and v["w"] <= 0.05 + 1e-9, (h, v)
    assert gb["weights"] == {h: round(v["w"], 3) for h, v in heads.items()}, (gb, heads)
    assert gb["weights_raw"] == {h: round(v["w_raw"], 3) for h, v in heads.items()}, (gb, heads)
