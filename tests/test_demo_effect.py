"""The paper's effect on a reduced demo, end to end (real mp4 -> prepare-data -> training core ->
G-Blend -> report), so a regression in data, model, training or blending shows up in CI.

One seed, 320 training videos, A+RGB only, offline G-Blend: ~1.5-2 minutes on 2 cores."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import gblend_env


@pytest.mark.slow
def test_reduced_demo_shows_the_paper_effect(tmp_path):
    cmd = [sys.executable, "-m", "gblend_cli", "reproduce", "--seeds", "0", "--results", str(tmp_path / "results"),
           "--set", f"dataset.data_dir={tmp_path / 'data'}", "--set", "reproduce.other_combos=[]",
           "--set", 'reproduce.gblend_modes=["offline"]', "--set", "demo.train_videos=320",
           "--set", "demo.test_videos=200"]
    p = subprocess.run(cmd, cwd=tmp_path, env=gblend_env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    report = json.loads((tmp_path / "results" / "report" / "report.json").read_text())
    over = {r["run"]: r for r in report["overfit"]}
    audio, rgb, naive = over["uni-modal A"], over["uni-modal RGB"], over["naive A+RGB"]
    # audio memorises: it overfits strongly, RGB generalises
    assert audio["train_top1"] - audio["val_top1"] >= 30, audio
    assert rgb["train_top1"] - rgb["val_top1"] < audio["train_top1"] - audio["val_top1"] - 15, (rgb, audio)
    assert audio["val_top1"] > 100 / 8 + 10, audio  # well above chance (8 classes)...
    assert audio["val_top1"] < rgb["val_top1"] - 10, (audio, rgb)  # ...but far below RGB
    # OGR: audio overfits most per unit of generalisation
    assert audio["ogr"] > naive["ogr"] > rgb["ogr"], (audio, naive, rgb)

    t4 = {r["method"]: r for r in report["table4"] if r["combo"] == "A+RGB"}
    uni, nv, gb = t4["best uni-modal (RGB)"], t4["naive"], t4["G-Blend offline"]
    # Table 1: naive late fusion fits the training set better and generalises worse than RGB alone
    assert naive["train_top1"] > rgb["train_top1"]
    assert nv["video_top1"] < uni["video_top1"] - 2, (nv, uni)
    # Table 4: G-Blend, with weights the tool estimated itself, beats naive and is not below RGB
    assert gb["video_top1"] > nv["video_top1"] + 3, (gb, nv)
    assert gb["video_top1"] >= uni["video_top1"], (gb, uni)
    assert gb["weights"]["audio"] < gb["weights"]["rgb"], gb["weights"]
    rows = [json.loads(line) for line in
            (tmp_path / "results" / "gblend-offline-audio+rgb-s0" / "blend_weights.jsonl").read_text().splitlines()]
    est = rows[0]["heads"]
    assert est["audio"]["delta_O"] > est["rgb"]["delta_O"]  # audio overfits most during estimation
    assert est["rgb"]["delta_G"] > est["audio"]["delta_G"]  # and RGB generalises most
    assert "Claim 1 (A+RGB)" in report["claims"][0] and "HOLDS" in report["claims"][0]
