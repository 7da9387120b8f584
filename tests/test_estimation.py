"""G-Blend's weight estimation (Algorithm 1) inside a run: the estimators train only their own
backbone and measure in eval mode, offline weights read from the uni-modal and naive runs equal
Algorithm 2's own (bit for bit) and pool over seeds, the accuracy metric, a run without a held-out
split refused, φ_0 measured with BatchNorm statistics of the training clips, and an interrupted
estimation resuming to the same weights."""

from __future__ import annotations

import copy
import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

from blend_check import check_blend_run
from conftest import gblend_cmd, gblend_env
from test_train import TINY, _final_numbers, _trainer, tiny_cfg


def test_estimators_train_only_their_own_backbone_and_measure_in_eval_mode(tiny_demo, tmp_path, monkeypatch):
    from gblend_cli import blend
    from gblend_cli.models import EstimatorEnsemble, MultiModalNet

    tr = _trainer(tiny_demo, tmp_path)
    main_before = copy.deepcopy(tr.model.state_dict())

    # structure: each uni-modal estimator owns only its backbone and head
    ens = EstimatorEnsemble(tr.model, tr.cfg["model"])
    assert {k.split(".")[0] + "." + k.split(".")[1] for k in ens.estimators["audio"].state_dict()} == {
        "backbones.audio", "heads.audio"}
    assert set(ens.estimators["fused"].backbones) == {"audio", "rgb"}

    # disjoint parameters: training all k+1 together leaves the audio estimator exactly where
    # training the audio loss alone leaves it, and the loss-free estimators untouched
    from gblend_cli.engine import make_optimizer, make_scheduler

    def train_once(weights):
        torch.manual_seed(0)
        e = EstimatorEnsemble(tr.model, tr.cfg["model"])
        opt = make_optimizer(e.parameters(), tr.tcfg)
        tr.run_epoch(e, opt, make_scheduler(opt, tr.data.steps_per_epoch, tr.tcfg), weights, 0, clip_groups=e.clip_groups())
        return e

    joint = train_once({"audio": 1.0, "rgb": 1.0, "fused": 1.0})
    alone = train_once({"audio": 1.0, "rgb": 0.0, "fused": 0.0})
    for k, v in alone.estimators["audio"].state_dict().items():
        assert torch.equal(v, joint.estimators["audio"].state_dict()[k]), k
    start = EstimatorEnsemble(tr.model, tr.cfg["model"])
    for name in ("rgb", "fused"):  # parameters untouched (BN running statistics do move in the forward pass)
        start_params = dict(start.estimators[name].named_parameters())
        for k, v in alone.estimators[name].named_parameters():
            assert torch.equal(v, start_params[k]), (name, k)
    assert any(not torch.equal(v, start.estimators["audio"].state_dict()[k])
               for k, v in alone.estimators["audio"].state_dict().items())

    # measurement passes run in eval mode
    modes = []
    orig = MultiModalNet.forward

    def spy(self, inputs):
        modes.append(("eval" if not self.training else "train", tr._in_eval))
        return orig(self, inputs)

    tr._in_eval = False

    def measuring(orig):  # evaluation passes and the BN recalibration pass at φ_0 are measurements
        def wrapped(*a, **k):
            tr._in_eval = True
            try:
                return orig(*a, **k)
            finally:
                tr._in_eval = False
        return wrapped

    monkeypatch.setattr(MultiModalNet, "forward", spy)
    monkeypatch.setattr(tr, "evaluate", measuring(tr.evaluate))
    monkeypatch.setattr(tr, "bn_recalibrated", measuring(tr.bn_recalibrated))
    from gblend_cli.train import RunContext

    row = blend.estimate_blend_weights(RunContext(tr, tr.folder), 0, 1, tr.cfg["gblend"])
    assert {m for m, in_eval in modes if in_eval} == {"eval"}
    assert {m for m, in_eval in modes if not in_eval} == {"train"}
    # the main model is not modified by the estimation
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, main_before[k]), k
    assert set(row["heads"]) == {"audio", "rgb", "fused"}
    h = row["heads"]["audio"]
    assert h["delta_G"] == pytest.approx(h["LV_before"] - h["LV_after"])
    assert h["delta_O"] == pytest.approx((h["LV_after"] - h["LT_after"]) - (h["LV_before"] - h["LT_before"]))
    assert sum(r["w"] for r in row["heads"].values()) == pytest.approx(1.0)


def test_offline_weights_read_from_runs_equal_algorithm_2(matrix_runs, tiny_demo, tmp_path):
    """Algorithm 2's estimators are the uni-modal and naive runs of the same seed: reading their
    logs gives, bit for bit, the terms and weights that training the estimators gives, and the
    G-Blend run then trains identically. Both runs' rows agree with the formulas recomputed from
    their own losses, and the terms read are those runs' epoch-0 and last-epoch T' and V rows."""
    from blend_check import check_terms_from_runs

    from conftest import MATRIX_ARGS

    runs = matrix_runs
    sources = {"audio": runs["ua"], "rgb": runs["ur"], "fused": runs["n"]}
    (own,) = check_blend_run(runs["self"])
    read = check_terms_from_runs(runs["from_runs"], sources)
    assert read["source"] == "runs" and read["runs"] == ["ua", "ur", "n"] and "source" not in own
    for h in ("audio", "rgb", "fused"):
        for k in ("LT_before", "LV_before", "LT_after", "LV_after", "delta_O", "delta_G", "delta_O_se", "w_raw", "w"):
            assert read["heads"][h][k] == own["heads"][h][k], (h, k)
    assert _final_numbers(runs["from_runs"]) == _final_numbers(runs["self"])
    # runs trained with another recipe do not stand for this run's estimators: refused, one line,
    # nothing trained (another seed is allowed: pooled estimation, below)
    bad = subprocess.run(gblend_cmd("train-gblend", "--modalities", "audio,rgb", "--estimate-from",
                                    ",".join(str(p) for p in sources.values()), "--data", tiny_demo, *MATRIX_ARGS,
                                    "--set", "train.lr=0.07", "--out", tmp_path / "other_lr"),
                         env=gblend_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "train.lr" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "other_lr" / "final.json").exists()


def _logged_terms(run: Path, head: str, n_epochs: int) -> tuple[list[float], float]:
    """([L^T before, L^V before, L^T after, L^V after], SE(ΔO)) as one run logged them."""
    from blend_check import _value

    from gblend_cli.blend import delta_o_se

    by_epoch = {}
    for line in (Path(run) / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        by_epoch[r["epoch"]] = r
    values = [_value(by_epoch[e][s], head, "loss") for e in (0, n_epochs) for s in ("train", "holdout")]
    return [v for v, _ in values], delta_o_se(*(se for _, se in values))


def test_offline_terms_pooled_over_seeds(matrix_runs, tiny_demo, tmp_path):
    """Estimator runs of several seeds are pooled: each of L^T/L^V before and after is the mean over
    the seeds (so ΔO and ΔG are the seeds' means), SE(ΔO) that of a mean, and the weights follow
    from those terms by the package's rule; a set of runs missing a head's run for one seed is
    refused in one line."""
    from blend_check import check_blend_run

    from gblend_cli.blend import blend_weights, raw_weights

    from conftest import MATRIX_ARGS

    (row,) = check_blend_run(matrix_runs["pooled"])
    seeds = {4: {"audio": "ua", "rgb": "ur", "fused": "n"}, 5: {"audio": "ua5", "rgb": "ur5", "fused": "n5"}}
    assert row["source"] == "runs" and sorted(row["runs"]) == sorted(n for s in seeds.values() for n in s.values())
    (alone,) = check_blend_run(matrix_runs["from_runs"])  # seed 4's runs only
    for h, r in row["heads"].items():
        per_seed = [_logged_terms(matrix_runs[seeds[s][h]], h, 2) for s in seeds]
        for i, k in enumerate(("LT_before", "LV_before", "LT_after", "LV_after")):
            assert math.isclose(r[k], (per_seed[0][0][i] + per_seed[1][0][i]) / 2, rel_tol=1e-12), (h, k)
        assert math.isclose(r["delta_O"], (r["LV_after"] - r["LT_after"]) - (r["LV_before"] - r["LT_before"]),
                            rel_tol=1e-9, abs_tol=1e-12)
        assert math.isclose(r["delta_O_se"], math.hypot(per_seed[0][1], per_seed[1][1]) / 2, rel_tol=1e-12)
    assert any(row["heads"][h]["LT_after"] != alone["heads"][h]["LT_after"] for h in row["heads"])
    dg = {h: r["delta_G"] for h, r in row["heads"].items()}
    do = {h: r["delta_O"] for h, r in row["heads"].items()}
    se = {h: r["delta_O_se"] for h, r in row["heads"].items()}
    cfg_rule = json.loads((matrix_runs["pooled"] / "final.json").read_text())
    assert row["rule"] == "regularised" and cfg_rule["weights"] == {h: r["w"] for h, r in row["heads"].items()}
    w = blend_weights(dg, do, "regularised", 0.05, se)
    assert all(math.isclose(w[h], row["heads"][h]["w"], rel_tol=1e-12) for h in w)
    assert all(math.isclose(raw_weights(dg, do)[h], row["heads"][h]["w_raw"], rel_tol=1e-12) for h in w)
    # seed 5 without its naive run: the seeds do not match head by head -> one line, nothing trained
    partial = [matrix_runs[n] for n in ("ua", "ur", "n", "ua5", "ur5")]
    bad = subprocess.run(gblend_cmd("train-gblend", "--modalities", "audio,rgb", "--estimate-from",
                                    ",".join(map(str, partial)), "--data", tiny_demo, *MATRIX_ARGS,
                                    "--out", tmp_path / "partial"),
                         env=gblend_env(), capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "seeds" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1 and not (tmp_path / "partial" / "final.json").exists()


def test_gblend_metric_accuracy_measures_error_rates(matrix_runs):
    """gblend.metric = accuracy: L^T and L^V are error rates, 1 - top1/100 of the logged T' and V
    evaluations, their standard errors binomial; the weights follow from those terms."""
    from blend_check import check_terms_from_runs

    sources = {"audio": matrix_runs["ua"], "rgb": matrix_runs["ur"], "fused": matrix_runs["n"]}
    row = check_terms_from_runs(matrix_runs["from_runs_acc"], sources)
    assert row["metric"] == "accuracy"
    loss_row = check_terms_from_runs(matrix_runs["from_runs"], sources)
    assert all(0 <= r[k] <= 1 for r in row["heads"].values() for k in ("LT_before", "LV_before", "LT_after", "LV_after"))
    assert any(row["heads"][h]["LT_after"] != loss_row["heads"][h]["LT_after"] for h in row["heads"])


@pytest.mark.parametrize("mode", ["offline", "online --estimate-from"])
def test_gblend_without_a_held_out_split_is_refused(tiny_demo, tmp_path, run_gblend, mode):
    """Online, --estimate-from (offline only) does not stand in for V: before, it let the run start
    and fail at the first estimate (KeyError)."""
    extra = ["--mode", "online", "--estimate-from", tmp_path / "runs"] if mode != "offline" else []
    p = run_gblend("train-gblend", "--modalities", "audio,rgb", "--data", tiny_demo, "--out", tmp_path / "g",
                   "--epochs", "1", *TINY, "--set", "train.holdout_fraction=0", *extra)
    assert p.returncode == 2 and "train.holdout_fraction" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()


def test_phi0_measurements_use_batchnorm_statistics_of_the_training_clips(tiny_demo, tmp_path):
    tr = _trainer(tiny_demo, tmp_path)
    before = copy.deepcopy(tr.model.state_dict())
    calibrated = tr.bn_recalibrated(tr.model)
    frames = torch.cat([b["audio"].float().flatten() for b in tr.data.eval_loaders["train"]])
    norm = calibrated.backbones["audio"].input_norm  # the first BatchNorm sees the raw log-mel values
    assert norm.running_mean.item() == pytest.approx(frames.mean().item(), rel=1e-4)
    assert norm.running_var.item() == pytest.approx(frames.var().item(), rel=1e-3)  # unbiased, as BatchNorm keeps it
    assert tr.model.backbones["audio"].input_norm.running_mean.item() == 0.0  # the run's model is untouched
    for k, v in tr.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert not calibrated.training


def test_an_interrupted_estimation_resumes_to_the_same_weights(tiny_demo, tmp_path, monkeypatch):
    """Ctrl-C (or a kill) during offline G-Blend's estimation: --resume continues the estimators
    from checkpoints/estimation.pt and ends with the weights and numbers of an uninterrupted run."""
    from gblend_cli import run_folder, runs

    cfg = tiny_cfg(**{"train.epochs": 3, "train.seed": 6})
    runs.train(copy.deepcopy(cfg), "gblend", ["audio", "rgb"], data=tiny_demo, out=tmp_path / "ref")
    real = run_folder.RunFolder.save_estimation
    saved = []

    def interrupted_after_two(self, state):
        real(self, state)
        saved.append(state["done"])
        if state["done"] == 2:
            raise KeyboardInterrupt  # Ctrl-C right after the second estimator epoch's checkpoint

    monkeypatch.setattr(run_folder.RunFolder, "save_estimation", interrupted_after_two)
    with pytest.raises(KeyboardInterrupt):
        runs.train(copy.deepcopy(cfg), "gblend", ["audio", "rgb"], data=tiny_demo, out=tmp_path / "run")
    monkeypatch.setattr(run_folder.RunFolder, "save_estimation", real)
    run = tmp_path / "run"
    assert (run / "checkpoints" / "estimation.pt").exists() and not (run / "checkpoints" / "last.pt").exists()
    assert not (run / "blend_weights.jsonl").exists()
    (run / ".lock").unlink(missing_ok=True)
    resumed = []
    monkeypatch.setattr(run_folder.RunFolder, "save_estimation", lambda self, st: (resumed.append(st["done"]), real(self, st)))
    runs.train(copy.deepcopy(cfg), "gblend", ["audio", "rgb"], data=tiny_demo, out=run, resume=True)
    assert saved == [1, 2] and resumed == [3]  # only the third estimator epoch was trained again
    ref = json.loads((tmp_path / "ref" / "blend_weights.jsonl").read_text())
    got = json.loads((run / "blend_weights.jsonl").read_text())
    assert got == ref
    assert _final_numbers(run) == _final_numbers(tmp_path / "ref")
    assert not (run / "checkpoints" / "estimation.pt").exists()  # superseded by last.pt
    check_blend_run(run)
