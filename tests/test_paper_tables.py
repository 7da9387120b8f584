"""The paper's other experiments (issue 14): Table 3 (optimisers), Table 5 (regularisers) and
Figure 1 (attempted fixes).

- the runs: `RunKey`'s fix and optimizer (names, commands, dependencies) and the tables' matrix,
  each run once whichever tables share it;
- the tables, built from hand-made run folders (final.json, early_stop.json) against numbers
  computed by hand here; a missing run is `null` with its command, never a zero;
- the model options (model.fusion) and pre-training: each trains, is interrupted after its first
  epoch's checkpoint and resumes to the numbers of an uninterrupted run; a naive run's
  early_stop.json is its best-by-V epoch.
"""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path

import pytest
import torch

from gblend_cli.config import load_config
from gblend_cli.errors import UserError
from gblend_cli.experiment import RunKey, matrix, table_keys, tables_matrix
from gblend_cli.report import build
from gblend_cli.report_render import render, render_csv

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
AR = ("audio", "rgb")


def recipe_cfg(tmp_path, seeds=(0, 1), extra: str = "") -> tuple[dict, Path]:
    """A recipe with only the main combination (the tables' seeds are reproduce.seeds)."""
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(f"""
[reproduce]
seeds = {list(seeds)}
main = "audio+rgb"
other_combos = []
gblend_modes = ["offline"]
other_gblend_modes = []
{extra}""")
    return load_config(recipe), recipe


# --- keys, names, commands ------------------------------------------------------------------------
def test_every_table_key_has_a_name_that_reads_back(tmp_path):
    cfg, _ = recipe_cfg(tmp_path)
    keys = tables_matrix(cfg, ["table1", "table4", "overfit", "table5", "fig1", "table3"])
    assert len({k.name for k in keys}) == len(keys)
    for k in keys:
        assert RunKey.parse(k.name) == k, k.name
    assert RunKey.parse("naive-se-gate-audio+rgb-adam-s3") == RunKey("naive", AR, 3, fix="se-gate", optimizer="adam")
    assert RunKey.parse("naive-audio+rgb-s0") == RunKey("naive", AR, 0)  # names of existing runs are unchanged
    assert RunKey.parse("gblend-offline-audio+rgb+flow-s2") == RunKey("gblend", ("audio", "rgb", "flow"), 2, "offline")
    for bad in ("unimodal-pretrain-rgb-s0", "gblend-offline-midconcat-audio+rgb-s0", "naive-audio+rgb-sgd-s0"):
        assert RunKey.parse(bad) is None, bad
    final = {"method": "naive", "modalities": ["audio", "rgb"], "seed": 1, "fix": "nl-gate", "optimizer": "adagrad"}
    assert RunKey.from_final(final) == RunKey("naive", AR, 1, fix="nl-gate", optimizer="adagrad")


def test_a_run_key_reads_its_fix_and_optimizer_from_the_recipe(tmp_path):
    def key(method, mods, **over):
        return RunKey.for_config(method, mods, load_config(None, over))

    assert key("naive", AR, **{"model.fusion": "midconcat"}).name == "naive-midconcat-audio+rgb-s0"
    assert key("naive", AR, **{"train.init_from": "a,b"}).name == "naive-pretrain-audio+rgb-s0"
    assert key("unimodal", ("rgb",), **{"train.optimizer": "adam"}).name == "unimodal-rgb-adam-s0"
    assert key("unimodal", ("rgb",), **{"model.fusion": "se-gate"}).name == "unimodal-rgb-s0"  # no fusion to fix
    assert key("gblend", AR, **{"train.optimizer": "adagrad"}).name == "gblend-offline-audio+rgb-adagrad-s0"
    assert key("naive", AR).name == "naive-audio+rgb-s0"
    for method, mods, over, needle in [
        ("gblend", AR, {"model.fusion": "dropout"}, "train-naive --fusion dropout"),
        ("naive", AR, {"model.fusion": "nl-gate", "train.init_from": "x"}, "one attempted fix"),
        ("naive", ("rgb", "flow"), {"model.fusion": "midconcat"}, "audio and one visual"),
        ("naive", ("audio", "rgb", "flow"), {"model.fusion": "se-gate"}, "audio and one visual"),
    ]:
        with pytest.raises(UserError, match=needle):
            key(method, mods, **over)


def test_the_tables_need_exactly_their_runs_each_once_dependencies_first(tmp_path):
    cfg, _ = recipe_cfg(tmp_path, seeds=(0, 1))
    t5 = tables_matrix(cfg, ["table5"])
    names = [k.name for k in t5]
    want = {f"{n}-s{s}" for s in (0, 1) for n in (
        "unimodal-audio", "unimodal-rgb", "naive-pretrain-audio+rgb", "naive-audio+rgb", "naive-dropout-audio+rgb",
        "gblend-equal-audio+rgb", "gblend-offline-audio+rgb")}
    assert set(names) == want and len(names) == len(want)
    for i, k in enumerate(t5):  # every dependency is listed before the run that needs it
        assert all(d in t5[:i] for d in k.dependencies()), k.name
    fig1 = {k.name for k in tables_matrix(cfg, ["fig1"])}
    assert fig1 == {f"{n}-s{s}" for s in (0, 1) for n in (
        "unimodal-audio", "unimodal-rgb", "naive-audio+rgb", "naive-pretrain-audio+rgb", "naive-dropout-audio+rgb",
        "naive-midconcat-audio+rgb", "naive-se-gate-audio+rgb", "naive-nl-gate-audio+rgb")}
    t3 = {k.name for k in tables_matrix(cfg, ["table3"])}
    assert t3 == {f"{n}-{o}-s{s}" for s in (0, 1) for o in ("adam", "adagrad") for n in (
        "unimodal-rgb", "unimodal-audio", "naive-audio+rgb", "gblend-offline-audio+rgb")}
    both = tables_matrix(cfg, ["table1", "table4", "overfit", "table5", "fig1", "table3"])
    assert len(both) == len(set(both))
    assert set(both) == set(matrix(cfg)) | set(t5) | {RunKey.parse(n) for n in fig1 | t3}


def test_commands_carry_the_init_runs_the_fusion_and_the_optimizers_learning_rate(tmp_path):
    cfg, _ = recipe_cfg(tmp_path, extra="[tables]\nadam_lr = 0.0007\n")
    r = tmp_path / "R"
    pre = RunKey("naive", AR, 2, fix="pretrain")
    argv = pre.argv(out=r / pre.name, init_from=[r / k.name for k in pre.init_keys()], cfg=cfg)
    assert argv[argv.index("--init-from") + 1] == f"{r}/unimodal-audio-s2,{r}/unimodal-rgb-s2"
    gate = RunKey("naive", AR, 0, fix="nl-gate").argv(cfg=cfg)
    assert gate[gate.index("--fusion") + 1] == "nl-gate" and "--lr" not in gate
    adam = RunKey("gblend", AR, 0, "offline", optimizer="adam")
    argv = adam.argv(cfg=cfg, estimate_from=[r / k.name for k in adam.estimator_keys()])
    assert argv[argv.index("--optimizer") + 1] == "adam" and argv[argv.index("--lr") + 1] == "0.0007"
    assert argv[argv.index("--estimate-from") + 1] == f"{r}/unimodal-audio-adam-s0,{r}/unimodal-rgb-adam-s0,{r}/naive-audio+rgb-adam-s0"


def test_print_commands_for_table_5(tmp_path, run_gblend):
    _, recipe = recipe_cfg(tmp_path, seeds=(0,))
    res = tmp_path / "R"
    p = run_gblend("reproduce", "--print-commands", "--recipe", recipe, "--table", "5", "--results", res)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = [ln for ln in p.stdout.strip().splitlines() if " prepare-data " not in ln]
    outs = [ln.split("--out ")[1].split()[0] for ln in lines]
    assert sorted(Path(o).name for o in outs) == sorted(k.name for k in tables_matrix(load_config(recipe), ["table5"]))
    pre = next(ln for ln in lines if "naive-pretrain" in ln)
    assert f"--init-from {res}/unimodal-audio-s0,{res}/unimodal-rgb-s0" in pre
    assert lines.index(pre) > max(i for i, ln in enumerate(lines) if "train-unimodal" in ln)


# --- the tables from hand-made run folders -------------------------------------------------------
# (seed -> (clip, video, top5)) per run name without seed
NUMBERS = {
    "unimodal-audio": {0: (30, 35, 60), 1: (32, 37, 62)},
    "unimodal-rgb": {0: (70, 78, 92), 1: (72, 79, 93)},
    "naive-audio+rgb": {0: (66, 71, 90), 1: (64, 73.5, 91)},
    "naive-pretrain-audio+rgb": {0: (67, 74, 90)},  # seed 1 not run
    "gblend-equal-audio+rgb": {0: (68, 76, 92), 1: (69, 77, 93)},
    "gblend-offline-audio+rgb": {0: (75, 82, 95), 1: (76, 83.5, 96)},
    "naive-midconcat-audio+rgb": {0: (60, 70, 88), 1: (62, 72, 89)},
    "unimodal-rgb-adam": {0: (50, 55, 80)},
    "naive-audio+rgb-adam": {0: (51, 52, 81)},
}
EARLY = {0: (65, 72, 89, 12)}  # naive seed 0's early_stop.json (clip, video, top5, epoch); seed 1 has none


def write_run(results: Path, key: RunKey, clip, video, top5):
    d = results / key.name
    d.mkdir(parents=True)
    head = key.eval_head
    final = {"head": head, "clip_top1": clip, "video_top1": video, "video_top5": top5, "train_top1": 99.0,
             "val_loss": 1.0, "train_loss": 0.1, "method": key.method, "modalities": list(key.modalities),
             "seed": key.seed, "epochs": 20, "weights": {h: 1.0 / len(key.heads) for h in key.heads},
             "heads": {h: {"clip_top1": clip, "video_top1": video, "video_top5": top5, "train_top1": 99.0} for h in key.heads},
             "dataset": "demo", "format_version": 1}
    final |= {k: v for k, v in (("mode", key.mode), ("fix", key.fix), ("optimizer", key.optimizer)) if v}
    (d / "final.json").write_text(json.dumps(final))
    (d / "metrics.jsonl").write_text(json.dumps({"epoch": 0, "lr": 0.05, "weights": {}}) + "\n")
    return d


@pytest.fixture
def hand_results(tmp_path):
    results = tmp_path / "results"
    for name, per_seed in NUMBERS.items():
        for seed, nums in per_seed.items():
            write_run(results, RunKey.parse(f"{name}-s{seed}"), *nums)
    clip, video, top5, epoch = EARLY[0]
    (results / "naive-audio+rgb-s0" / "early_stop.json").write_text(json.dumps(
        {"epoch": epoch, "head": "fused", "clip_top1": clip, "video_top1": video, "video_top5": top5}))
    return results


def _row(rows, row, opt=None):
    return next(r for r in rows if r["row"] == row and r.get("optimizer") == opt)


def mean(xs):
    return round(statistics.fmean(xs), 2)


def test_table5_means_over_seeds_and_missing_runs_are_missing(hand_results, tmp_path):
    cfg, recipe = recipe_cfg(tmp_path)
    rep = build(hand_results, ["table5"], cfg, str(recipe))
    rows = rep["table5"]
    assert [r["row"] for r in rows] == ["audio", "rgb", "pretrain", "naive", "dropout", "aux", "gblend"]
    for row, name in (("audio", "unimodal-audio"), ("naive", "naive-audio+rgb"), ("gblend", "gblend-offline-audio+rgb")):
        r = _row(rows, row)
        for i, m in enumerate(("clip_top1", "video_top1", "video_top5")):
            assert r[m] == mean([NUMBERS[name][s][i] for s in (0, 1)]), (row, m)
        assert r["seeds"] == [0, 1]
    assert _row(rows, "naive")["video_top1_std"] == round(statistics.stdev([71, 73.5]), 2)
    pre = _row(rows, "pretrain")  # one seed of two: its number, and the command of the other
    assert pre["video_top1"] == 74 and pre["seeds"] == [0] and pre["video_top1_std"] == 0.0
    res = hand_results
    assert pre["missing"] == [f"gblend train-naive --modalities audio,rgb --seed 1 --init-from {res}/unimodal-audio-s1,"
                              f"{res}/unimodal-rgb-s1 --out {res}/naive-pretrain-audio+rgb-s1 --recipe {recipe}"]
    drop = _row(rows, "dropout")  # no run at all: null, never 0
    assert drop["video_top1"] is None and drop["clip_top1"] is None and drop["seeds"] == []
    assert len(drop["missing"]) == 2 and all("--fusion dropout" in c for c in drop["missing"])
    assert _row(rows, "gblend")["paper_video_top1"] == 74.7 and _row(rows, "aux")["paper_clip_top1"] == 60.5
    md = render(rep, "markdown")
    line = next(ln for ln in md.splitlines() if ln.startswith("| dropout"))
    assert "missing" in line and "0.0" not in line
    assert "--fusion dropout" in md
    csv = render_csv(rep, "table5")
    assert csv.splitlines()[0].startswith("method,row,run,clip_top1")


def test_fig1_reads_early_stopping_from_the_naive_run_and_draws_the_bars(hand_results, tmp_path):
    from gblend_cli.paper_tables import fig1_figure

    cfg, recipe = recipe_cfg(tmp_path)
    rows = build(hand_results, ["fig1"], cfg, str(recipe))["fig1"]
    assert [r["row"] for r in rows] == ["rgb", "late", "pretrain", "earlystop", "dropout", "midconcat", "se-gate", "nl-gate"]
    es = _row(rows, "earlystop")  # seed 0 from early_stop.json; seed 1's naive run has none: a note, no number
    assert es["video_top1"] == 72 and es["clip_top1"] == 65 and es["seeds"] == [0] and es["best_epochs"] == [12]
    assert es["missing"] == [] and len(es["notes"]) == 1 and "naive-audio+rgb-s1" in es["notes"][0]
    late = _row(rows, "late")
    assert late["video_top1"] == mean([71, 73.5])
    mid = _row(rows, "midconcat")
    assert mid["vs_late"] == round(mean([70, 72]) - mean([71, 73.5]), 2) and mid["paper_vs_late"] == 1.4
    assert _row(rows, "se-gate")["video_top1"] is None and _row(rows, "se-gate")["vs_late"] is None
    from gblend_cli.paper_tables import findings

    lines = findings({"fig1": rows})  # mid concat: below late concat here (-1.2), above it in the paper (+1.4)
    mid_line = next(x for x in lines if x.startswith("Figure 1, mid concat"))
    assert "below naive (-1.2; paper +1.4)" in mid_line and mid_line.endswith("NOT AS IN THE PAPER")
    # early stop (72 vs late concat 72.25) is level with it (within 1 point), as in the paper (-0.1), and
    # below RGB (-6.5), as in the paper (-1.3); pre-train (+1.75) is above, the paper's +0.3 level
    es_line = next(x for x in lines if x.startswith("Figure 1, early stop"))
    assert es_line.endswith("level with naive (-0.2; paper -0.1) and below RGB only (-6.5; paper -1.3): AS IN THE PAPER")
    pre_line = next(x for x in lines if x.startswith("Figure 1, pre-train"))
    assert pre_line.endswith("above naive (+1.8; paper +0.3) and below RGB only (-4.5; paper -0.9): NOT AS IN THE PAPER")
    assert not any("SE gate" in x for x in lines)  # no run, no finding
    png = fig1_figure(rows, tmp_path / "figs" / "fig1.png")
    assert png.read_bytes()[:8] == PNG_MAGIC
    empty = [dict(r, video_top1=None) for r in rows]
    assert fig1_figure(empty, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_table3_per_optimizer_and_plain_tables_ignore_the_other_runs(hand_results, tmp_path):
    cfg, recipe = recipe_cfg(tmp_path, seeds=(0,))
    rep = build(hand_results, ["table3", "table1", "table4"], cfg, str(recipe))
    rows = rep["table3"]
    assert [(r["optimizer"], r["row"]) for r in rows] == [(o, x) for o in ("adam", "adagrad") for x in ("rgb", "naive", "gblend")]
    assert _row(rows, "rgb", "adam")["video_top1"] == 55 and _row(rows, "naive", "adam")["clip_top1"] == 51
    gb = _row(rows, "gblend", "adam")  # missing: its estimator runs first (audio with Adam), then itself
    assert gb["video_top1"] is None
    assert [c.split("--out ")[1].split()[0].rsplit("/", 1)[1] for c in gb["missing"]] == \
        ["unimodal-audio-adam-s0", "gblend-offline-audio+rgb-adam-s0"]
    assert all("--optimizer adam --lr 0.001" in c for c in gb["missing"])
    assert _row(rows, "naive", "adagrad")["paper_video_top1"] == 65.2
    # Tables 1 and 4 see only the plain runs: the pretrain, mid-concat and Adam runs do not enter them
    t1 = rep["table1"][0]
    assert t1["naive_video_top1"] == mean([71, 73.5]) and t1["best_unimodal_video_top1"] == mean([78, 79])
    naive = next(r for r in rep["table4"] if r["method"] == "naive")
    assert naive["video_top1"] == mean([71, 73.5]) and naive["seeds"] == [0, 1]


def test_cli_report_json_keys_and_exit_codes(hand_results, tmp_path, run_gblend):
    _, recipe = recipe_cfg(tmp_path)
    p = run_gblend("report", "--results", hand_results, "--recipe", recipe, "--table", "all", "--format", "json")
    assert p.returncode == 0, p.stderr[-2000:]
    js = json.loads(p.stdout)
    assert {"table5", "fig1", "table3", "table1", "table4", "overfit"} <= set(js)
    for t in ("table5", "fig1", "table3"):
        for r in js[t]:
            assert {"method", "video_top1", "clip_top1", "video_top5", "seeds", "paper_video_top1"} <= set(r)
            assert ("optimizer" in r) == (t == "table3")
    assert _row(js["table5"], "dropout")["video_top1"] is None
    assert (hand_results / "report" / "fig1.png").read_bytes()[:8] == PNG_MAGIC
    # a table asked for by name without a single run: exit 2; with --table all it may be empty
    only_core = tmp_path / "core"
    only_core.mkdir()
    for name in ("unimodal-audio", "unimodal-rgb", "naive-audio+rgb", "gblend-offline-audio+rgb"):
        write_run(only_core, RunKey.parse(f"{name}-s0"), *NUMBERS[name][0])
    p = run_gblend("report", "--results", only_core, "--recipe", recipe, "--table", "3", "--format", "json")
    assert p.returncode == 2 and "table3" in p.stderr.strip().splitlines()[-1]
    p = run_gblend("report", "--results", only_core, "--recipe", recipe, "--table", "all", "--format", "markdown")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "Figure 1" in p.stdout and "--fusion nl-gate" in p.stdout


# --- the model options train, and resume --------------------------------------------------------
def tiny_cfg(**over):
    o = {"model.visual_widths": [4, 8, 8, 8], "model.audio_widths": [4, 8, 8, 8], "train.batch_size": 8,
         "clip.eval_clips": 3, "train.train_eval_size": 16, "train.epochs": 2, "train.eval_every": 1, "train.seed": 5}
    o.update(over)
    return load_config(None, o)


def _numbers(run: Path) -> dict:
    f = json.loads((run / "final.json").read_text())
    for k in ("seconds", "peak_memory_mb"):  # wall clock and memory: not part of a run's numbers
        f.pop(k, None)
    return f


@pytest.fixture(scope="module")
def unimodal_runs(tiny_demo, tmp_path_factory):
    from gblend_cli import runs

    root = tmp_path_factory.mktemp("uni")
    for m in AR:
        runs.train(tiny_cfg(**{"train.epochs": 1}), "unimodal", (m,), data=tiny_demo, out=root / f"unimodal-{m}-s5")
    return root


@pytest.mark.parametrize("option", ["dropout", "midconcat", "se-gate", "nl-gate", "pretrain"])
def test_each_model_option_trains_and_resumes_to_the_same_numbers(option, tiny_demo, unimodal_runs, tmp_path, monkeypatch):
    from gblend_cli import run_folder, runs

    over = {"train.init_from": f"{unimodal_runs}/unimodal-audio-s5,{unimodal_runs}/unimodal-rgb-s5"} \
        if option == "pretrain" else {"model.fusion": option}
    cfg = tiny_cfg(**over)
    ref = runs.train(copy.deepcopy(cfg), "naive", AR, data=tiny_demo, out=tmp_path / "ref")
    assert ref["fix"] == option and RunKey.from_final(ref).name == f"naive-{option}-audio+rgb-s5"
    real, calls = run_folder.RunFolder.save_checkpoint, []

    def stop_after_first(self, state, is_best):
        real(self, state, is_best)
        calls.append(state["epoch"])
        raise KeyboardInterrupt  # Ctrl-C right after epoch 1's checkpoint

    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", stop_after_first)
    with pytest.raises(KeyboardInterrupt):
        runs.train(copy.deepcopy(cfg), "naive", AR, data=tiny_demo, out=tmp_path / "run")
    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", real)
    run = tmp_path / "run"
    assert calls == [1] and not (run / "final.json").exists()
    (run / ".lock").unlink(missing_ok=True)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)  # plain tensors and data
    assert state["epoch"] == 1
    runs.train(copy.deepcopy(cfg), "naive", AR, data=tiny_demo, out=run, resume=True)
    assert _numbers(run) == _numbers(tmp_path / "ref")
    ref_model = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)["model"]
    got_model = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert ref_model.keys() == got_model.keys() and all(torch.equal(ref_model[k], got_model[k]) for k in ref_model)


def test_fusion_options_start_from_the_naive_weights_and_differ_where_they_should(tiny_demo):
    from gblend_cli.fusion import build_model

    cfg = tiny_cfg()
    naive = build_model(list(AR), ["fused"], 8, cfg["model"], 5).state_dict()
    drop = build_model(list(AR), ["fused"], 8, {**cfg["model"], "fusion": "dropout"}, 5)
    assert drop.fused.net[0].p == cfg["model"]["fix_dropout"] != cfg["model"]["fusion_dropout"]
    assert all(torch.equal(v, naive[k]) for k, v in drop.state_dict().items())
    for fusion in ("se-gate", "nl-gate", "midconcat"):
        m = build_model(list(AR), ["fused"], 8, {**cfg["model"], "fusion": fusion}, 5).state_dict()
        shared = [k for k in m if k.startswith("backbones.rgb.")]
        assert shared and all(torch.equal(m[k], naive[k]) for k in shared), fusion
        assert any(not k.startswith(("backbones.", "fused.")) for k in m), fusion  # its own joining layers
    mid = build_model(list(AR), ["fused"], 8, {**cfg["model"], "fusion": "midconcat", "fusion_stage": 2}, 5)
    assert len(mid.backbones["audio"].layers) == 2  # the audio pathway ends at the fusion point


def test_a_naive_run_records_its_best_by_v_epoch(tiny_demo, tmp_path):
    from gblend_cli import runs

    cfg = tiny_cfg(**{"train.epochs": 3, "train.seed": 2})
    final = runs.train(cfg, "naive", AR, data=tiny_demo, out=tmp_path / "naive")
    es = json.loads((tmp_path / "naive" / "early_stop.json").read_text())
    rows = [json.loads(x) for x in (tmp_path / "naive" / "metrics.jsonl").read_text().splitlines()]
    v = {r["epoch"]: r["holdout"]["fused"]["top1"] for r in rows if r["epoch"] > 0}
    assert es["epoch"] == next(e for e in sorted(v) if v[e] == max(v.values()))  # the first epoch with the best V
    if es["epoch"] == 3:
        assert (es["video_top1"], es["clip_top1"]) == (final["video_top1"], final["clip_top1"])
    best = torch.load(tmp_path / "naive" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == es["epoch"]
    assert 0 <= es["video_top1"] <= 100 and 0 <= es["video_top5"] <= 100 and es["video_top5"] >= es["video_top1"]
