"""`gblend report --table methods` on hand-made run folders (final.json + metrics.jsonl): every
number checked against one computed by hand here; a missing run — or a number a run does not
have — is shown as missing, never as zero; the best uni-modal model is chosen on V."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest

from gblend_cli.config import load_config
from gblend_cli.errors import UserError
from gblend_cli.experiment import RunKey
from gblend_cli.report import build
from gblend_cli.report_render import render, render_csv

RECIPE = """
[reproduce]
seeds = [0, 1]
methods_combos = ["audio+rgb"]
methods = ["ogm-ge", "umt"]
"""


def curve(per_head: dict) -> list[dict]:
    """metrics.jsonl rows: epoch 0 and 2 evaluated, 1 not; per head (L_T', L_V) before and after."""
    rows = []
    for epoch, i in ((0, 0), (1, None), (2, 1)):
        row = {"epoch": epoch, "lr": 0.05, "weights": {}}
        if i is not None:
            for split in ("train", "holdout", "val"):
                row[split] = {}
                for h, ((lt0, lv0, top0), (lt1, lv1, top1)) in per_head.items():
                    lt, lv, top = (lt0, lv0, top0) if i == 0 else (lt1, lv1, top1)
                    row[split][h] = {"loss": lt if split == "train" else lv, "top1": top}
        rows.append(row)
    return rows


# (L_T', L_V, V top-1) at epoch 0 and 2. OGR = |ΔO / ΔG|, ΔO = (LV1 - LT1) - (LV0 - LT0), ΔG = LV0 - LV1
HEAD_CURVE = ((2.0, 2.0, 10.0), (1.0, 1.5, 60.0))   # ΔO 0.5, ΔG 0.5: OGR 1.0
FUSED_CURVE = ((2.0, 2.0, 10.0), (0.5, 1.5, 70.0))  # ΔO 1.0, ΔG 0.5: OGR 2.0


def write(results, method, mods, seed, video, *, heads=None, contribution=None, seconds=10.0, memory=500.0,
          v_top1=None, mode=None):
    key = RunKey(method, tuple(mods), seed, mode)
    d = results / key.name
    d.mkdir(parents=True)
    head = key.eval_head
    heads = heads or {}
    final = {"head": head, "clip_top1": video - 1, "video_top1": video, "video_top5": 99.0, "train_top1": 90.0,
             "heads": {h: {"clip_top1": v - 1, "video_top1": v, "video_top5": 99.0, "train_top1": 90.0}
                       for h, v in (heads | {head: video}).items()},
             "method": method, "modalities": list(key.modalities), "seed": seed, "epochs": 2, "weights": {},
             "dataset": "demo", "splits": {}, "seconds": seconds, "peak_memory_mb": memory,
             "peak_memory_kind": "process_max_rss", "format_version": 1} | ({"mode": mode} if mode else {})
    if contribution is not None:
        final["diagnostics"] = {"value": "video_top1", "neutral": "T' mean", "contribution": contribution,
                                "subset_top1": {}}
    (d / "final.json").write_text(json.dumps(final))
    per_head = {h: HEAD_CURVE for h in final["heads"] if h != "fused"}
    if "fused" in final["heads"]:
        per_head["fused"] = FUSED_CURVE
    rows = curve(per_head)
    if v_top1 is not None:  # the judged head's top-1 on V at the last epoch
        rows[-1]["holdout"][head]["top1"] = v_top1
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def results(tmp_path):
    r = tmp_path / "results"
    # audio is the better model on V (80 vs 70) but the worse one on the evaluation split (55 vs 78):
    # the best uni-modal row must be audio (chosen on V), whatever the evaluation split says
    write(r, "unimodal", ["audio"], 0, 55.0, v_top1=80.0, seconds=4.0, memory=300.0)
    write(r, "unimodal", ["audio"], 1, 57.0, v_top1=82.0, seconds=6.0, memory=310.0)
    write(r, "unimodal", ["rgb"], 0, 78.0, v_top1=70.0)
    write(r, "unimodal", ["rgb"], 1, 80.0, v_top1=72.0)
    write(r, "naive", ["audio", "rgb"], 0, 70.0, contribution={"audio": 40.0, "rgb": 20.0}, seconds=20.0, memory=600.0)
    write(r, "naive", ["audio", "rgb"], 1, 74.0, contribution={"audio": 42.0, "rgb": 22.0}, seconds=30.0, memory=700.0)
    # a G-Blend run from before the diagnostics (no "diagnostics"), and its seed 1 missing
    write(r, "gblend", ["audio", "rgb"], 0, 82.0, heads={"audio": 50.0, "rgb": 77.0}, mode="offline")
    write(r, "ogm-ge", ["audio", "rgb"], 0, 80.0, heads={"audio": 40.0, "rgb": 70.0},
          contribution={"audio": 10.0, "rgb": 50.0}, seconds=25.0, memory=650.0)
    write(r, "ogm-ge", ["audio", "rgb"], 1, 84.0, heads={"audio": 44.0, "rgb": 74.0},
          contribution={"audio": 12.0, "rgb": 54.0}, seconds=35.0, memory=750.0)
    # no umt run at all
    return r


@pytest.fixture
def cfg(tmp_path):
    path = tmp_path / "recipe.toml"
    path.write_text(RECIPE)
    return load_config(path)


def rows_by_method(results, cfg):
    rep = build(results, ["methods"], cfg)
    return {r["method"]: r for r in rep["methods"]}, rep


def test_methods_rows_hold_the_numbers_computed_by_hand(results, cfg):
    rows, _ = rows_by_method(results, cfg)
    assert list(rows) == ["best-unimodal", "naive", "gblend-offline", "ogm-ge", "umt"]
    best = rows["best-unimodal"]
    assert best["modality"] == "audio" and best["label"] == "best uni-modal (A)"  # chosen on V
    assert best["video_top1"] == 56.0 and best["head_top1"] == {"audio": 56.0}
    assert best["ogr"] == {"audio": 1.0} and best["seconds"] == 5.0 and best["peak_memory_mb"] == 305.0
    naive = rows["naive"]
    assert naive["video_top1"] == 72.0 and naive["video_top1_std"] == pytest.approx(2.83, abs=0.01)
    assert naive["head_top1"] == {}  # naive has no uni-modal heads: not applicable, not zero
    assert naive["ogr"] == {"fused": 2.0} and naive["contribution"] == {"audio": 41.0, "rgb": 21.0}
    assert naive["seconds"] == 25.0 and naive["peak_memory_mb"] == 650.0 and naive["seeds"] == [0, 1]
    ogm = rows["ogm-ge"]
    assert ogm["combo"] == "A+RGB" and ogm["video_top1"] == 82.0
    assert ogm["head_top1"] == {"audio": 42.0, "rgb": 72.0}
    assert ogm["ogr"] == {"audio": 1.0, "rgb": 1.0, "fused": 2.0}
    assert ogm["contribution"] == {"audio": 11.0, "rgb": 52.0} and ogm["seconds"] == 30.0


def test_a_missing_run_is_missing_never_zero(results, cfg):
    rows, rep = rows_by_method(results, cfg)
    umt = rows["umt"]
    for k in ("video_top1", "head_top1", "ogr", "contribution", "seconds", "peak_memory_mb"):
        assert umt[k] is None, k
    assert umt["seeds"] == [] and len(umt["missing"]) == 2
    assert "gblend train-method --method umt --modalities audio,rgb --seed 0" in umt["missing"][0]
    gb = rows["gblend-offline"]  # one seed of two, and from before the diagnostics
    assert gb["video_top1"] == 82.0 and gb["seeds"] == [0] and gb["contribution"] is None
    assert any("train-gblend --modalities audio,rgb --mode offline --seed 1" in c for c in gb["missing"])
    doc = json.loads(render(rep, "json"))
    assert list(doc) == ["methods"]
    j = {r["method"]: r for r in doc["methods"]}
    for r in doc["methods"]:
        for k in ("method", "combo", "video_top1", "head_top1", "ogr", "contribution", "seconds", "peak_memory_mb"):
            assert k in r, k
    assert j["umt"]["video_top1"] is None and j["umt"]["contribution"] is None
    md = render(rep, "markdown")
    umt_line = next(line for line in md.splitlines() if "| UMT" in line)
    assert umt_line.count("missing") >= 6 and " 0.0 " not in umt_line and "| 0 " not in umt_line
    gb_line = next(line for line in md.splitlines() if "| G-Blend offline" in line)
    assert "missing" in gb_line  # its contribution cell
    naive_line = next(line for line in md.splitlines() if "| naive" in line)
    assert "—" in naive_line and "audio +41.0, rgb +21.0" in naive_line


def test_csv_and_latex_renderings(results, cfg):
    rep = build(results, ["methods"], cfg)
    df = pd.read_csv(io.StringIO(render_csv(rep, "methods")))
    ogm = df[df["method"] == "ogm-ge"].iloc[0]
    assert ogm["head_top1_audio"] == 42.0 and ogm["contribution_rgb"] == 52.0 and ogm["ogr_fused"] == 2.0
    assert pd.isna(df[df["method"] == "umt"].iloc[0]["video_top1"])
    tex = render(rep, "latex")
    assert "\\toprule" in tex and "OGM-GE" in tex


def test_report_table_methods_through_the_command_line(results, cfg, tmp_path, run_gblend):
    recipe = tmp_path / "recipe.toml"
    p = run_gblend("report", "--results", results, "--table", "methods", "--format", "json", "--recipe", recipe)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert [r["method"] for r in doc["methods"]] == ["best-unimodal", "naive", "gblend-offline", "ogm-ge", "umt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    p = run_gblend("report", "--results", empty, "--table", "methods", "--recipe", recipe)
    assert p.returncode == 2 and "no runs for methods" in p.stderr


def test_reproduce_table_methods_plans_the_methods_matrix_once(tmp_path, run_gblend):
    """`reproduce --table methods --print-commands`: the methods matrix for one seed, each run after
    the runs it reads (UMT/UME: --from-runs the uni-modal runs), finished runs — shared with the
    paper's matrix — not trained again."""
    results = tmp_path / "results"
    write(results, "unimodal", ["audio"], 0, 55.0)  # finished: shared, not planned again
    p = run_gblend("reproduce", "--table", "methods", "--seeds", "0", "--results", results, "--print-commands",
                   "--set", f"dataset.data_dir={tmp_path / 'data'}")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert "prepare-data" in lines[0]
    names = [line.split("--out ")[1].split()[0].rsplit("/", 1)[1] for line in lines[1:]]
    assert len(names) == 16 and "unimodal-audio-s0" not in names and len(set(names)) == 16
    for combo in ("audio+rgb", "audio+rgb+flow"):
        for m in ("ogm-ge", "mmpareto", "umt", "ume", "inforeg"):
            assert f"{m}-{combo}-s0" in names
    umt = next(line for line in lines if "--method umt --modalities audio,rgb,flow" in line)
    assert f"--from-runs {results.resolve()}/unimodal-audio-s0,{results.resolve()}/unimodal-rgb-s0," in umt
    assert names.index("unimodal-flow-s0") < names.index("umt-audio+rgb+flow-s0")
    assert names.index("naive-audio+rgb-s0") < names.index("gblend-offline-audio+rgb-s0")


def test_methods_epochs_sets_every_run_of_the_methods_matrix(tmp_path, run_gblend):
    """`reproduce.methods_epochs`: each command of the methods matrix trains that many epochs (the
    run folder's config says so); a finished run trained for another number of epochs in the same
    results folder is refused in one line before anything is prepared or trained."""
    results = tmp_path / "results"
    data = tmp_path / "data"
    p = run_gblend("reproduce", "--table", "methods", "--seeds", "0", "--results", results, "--print-commands",
                   "--set", f"dataset.data_dir={data}", "--set", "reproduce.methods_epochs=3")
    assert p.returncode == 0, p.stderr
    runs = [line for line in p.stdout.strip().splitlines() if "--out" in line and "prepare-data" not in line]
    assert len(runs) == 17 and all("--set train.epochs=3" in line for line in runs)
    write(results, "unimodal", ["audio"], 0, 55.0)  # a finished run of 2 epochs
    (results / "unimodal-audio-s0" / "config.toml").write_text("[train]\nepochs = 2\n")
    p = run_gblend("reproduce", "--table", "methods", "--seeds", "0", "--results", results,
                   "--set", f"dataset.data_dir={data}", "--set", "reproduce.methods_epochs=3")
    assert p.returncode == 2 and "train.epochs = 2" in p.stderr and "own --results" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and not data.exists()


def test_only_a_methods_epochs_setting_refuses_finished_runs(tmp_path):
    """The refusal compares the recipe's train.epochs, not final.json's epochs (UME trains 0 of
    them by design), and only when `reproduce.methods_epochs` is set."""
    from gblend_cli.reproduce import _refuse_other_epochs, methods_settings

    results = tmp_path / "results"
    write(results, "ume", ["audio", "rgb"], 0, 80.0)
    (results / "ume-audio+rgb-s0" / "config.toml").write_text("[train]\nepochs = 3\n")
    final = results / "ume-audio+rgb-s0" / "final.json"
    final.write_text(json.dumps(json.loads(final.read_text()) | {"epochs": 0}))  # UME trains nothing
    keys = [RunKey("ume", ("audio", "rgb"), 0)]
    plain = load_config(None, {"train.epochs": 20})
    _refuse_other_epochs(plain, keys, results)  # methods_epochs = 0: the recipe's own runs, no check
    cfg, sets = methods_settings(load_config(None, {"train.epochs": 20, "reproduce.methods_epochs": 3}), [])
    assert cfg["train"]["epochs"] == 3 and sets == ["train.epochs=3"]
    _refuse_other_epochs(cfg, keys, results)  # trained with 3 (its final.json says 0 epochs: UME)
    cfg, _ = methods_settings(load_config(None, {"train.epochs": 20, "reproduce.methods_epochs": 4}), [])
    with pytest.raises(UserError, match="train.epochs = 3"):
        _refuse_other_epochs(cfg, keys, results)
