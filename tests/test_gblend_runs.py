"""What G-Blend's runs stand on, checked on real tiny runs (`tiny_demo`, `matrix_runs`):
`--init-from` (load_backbones), online G-Blend's resume, the estimators' learning rate in a real
run, `gblend.metric = accuracy` when the run estimates its own terms, and `--weights equal` with
its Table 4 row. Every G-Blend run trained here is also checked row by row against the formulas
recomputed from its own logged losses (tests/blend_check.py)."""

from __future__ import annotations

import copy
import json
import math
import shutil
import pytest
import torch

from blend_check import check_blend_row, check_blend_run, check_fixed_weights_run
from test_train import _final_numbers, _trainer, tiny_cfg


# ============================================================================================ --init-from

@pytest.mark.parametrize("method,heads", [("gblend", ["audio", "rgb", "fused"]), ("naive", ["fused"])])
def test_init_from_copies_the_unimodal_backbones_and_matching_heads(matrix_runs, tiny_demo, tmp_path, method, heads):
    """train.init_from = the uni-modal runs: every backbone tensor (parameters and BatchNorm
    statistics) of each modality and the head of that modality, where the model has one, are
    exactly those runs' last checkpoint; everything else (the fused head) is as initialised."""
    from gblend_cli.experiment import RunKey
    from gblend_cli.models import MultiModalNet
    from gblend_cli.run_folder import RunFolder
    from gblend_cli.train import Trainer

    src = {"audio": matrix_runs["ua"], "rgb": matrix_runs["ur"]}
    cfg = tiny_cfg(**{"train.seed": 4, "train.init_from": ",".join(str(p) for p in src.values())})
    tr = Trainer(cfg, RunKey(method, ("audio", "rgb"), 4, "offline" if method == "gblend" else None),
                 RunFolder(tmp_path / "run"), tiny_demo)
    got = tr.model.state_dict()
    fresh = MultiModalNet(["audio", "rgb"], heads, 8, cfg["model"], init_seed=4).state_dict()
    assert got.keys() == fresh.keys()
    copied = set()
    for m, run in src.items():
        state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
        wanted = {k for k in state if k.startswith(f"backbones.{m}.") or (k.startswith(f"heads.{m}.") and m in heads)}
        assert any(k.startswith(f"backbones.{m}.") for k in wanted)
        assert any(not torch.equal(state[k], fresh[k]) for k in wanted), "the source run did not train?"
        for k in wanted:
            assert torch.equal(got[k], state[k]), k
        copied |= wanted
    rest = set(got) - copied
    assert any(k.startswith("fused.") for k in rest)
    assert not any(k.startswith("backbones.") for k in rest)
    for k in rest:
        assert torch.equal(got[k], fresh[k]), k


# ============================================================================================ online G-Blend

ONLINE = {"train.epochs": 3, "train.seed": 8, "gblend.mode": "online", "gblend.warmup_super_epoch": 2,
          "gblend.super_epoch": 1, "train.warmup_epochs": 1.0}


@pytest.fixture(scope="module")
def online_ref(tiny_demo, tmp_path_factory):
    """An uninterrupted online G-Blend run (estimations at epochs 0 and 2; warm-up then cosine
    learning rate), with the learning rate of every step of every call of train_one_epoch recorded:
    [(is the main run, epoch, [lr of each step])]."""
    from gblend_cli import runs, train

    out = tmp_path_factory.mktemp("online") / "ref"
    calls, trainers = [], []
    real_epoch, real_fit = train.train_one_epoch, train.Trainer.fit

    def spy_epoch(model, loader, optimizer, scheduler, weights, *, epoch, on_step=None, **kw):
        lrs = [optimizer.param_groups[0]["lr"]]  # the first step's; then after each step the next one's

        def step(*a):
            lrs.append(optimizer.param_groups[0]["lr"])
            if on_step is not None:
                on_step(*a)

        result = real_epoch(model, loader, optimizer, scheduler, weights, epoch=epoch, on_step=step, **kw)
        calls.append((optimizer is trainers[-1].optimizer, epoch, lrs[:-1]))
        return result

    def spy_fit(self, policy):
        trainers.append(self)
        return real_fit(self, policy)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "train_one_epoch", spy_epoch)
        mp.setattr(train.Trainer, "fit", spy_fit)
        runs.train(tiny_cfg(**ONLINE), "gblend", ["audio", "rgb"], data=tiny_demo, out=out)
    return out, calls


def test_online_estimators_step_with_the_main_runs_learning_rates(online_ref):
    """In a real online run, the estimators of each super-epoch (a fresh optimiser and schedule)
    step with exactly the learning rates the main run steps with in the same epochs."""
    run, calls = online_ref
    main = {e: lrs for is_main, e, lrs in calls if is_main}
    est = [(e, lrs) for is_main, e, lrs in calls if not is_main]
    assert sorted(main) == [0, 1, 2] and [e for e, _ in est] == [0, 1, 2]
    assert len({lr for lrs in main.values() for lr in lrs}) >= 7  # warm-up then cosine: the rate moves
    for e, lrs in est:
        assert lrs == main[e], e
    check_blend_run(run)


def test_an_online_run_whose_later_estimate_shows_nothing_keeps_the_weights(tiny_demo, tmp_path):
    """A real online run with gblend.evidence_z so high that no later estimate counts as evidence:
    the estimate at epoch 2 is made and logged (w_estimated) but the weights of epoch 0 stay for
    the rest of the run (metrics.jsonl, final.json); Table 4 reads the w_raw of the estimate in
    force and names the seed as kept."""
    from gblend_cli import report, runs
    from gblend_cli.run_folder import RunFolder

    run = tmp_path / "run"
    runs.train(tiny_cfg(**ONLINE, **{"gblend.evidence_z": 1e9}), "gblend", ["audio", "rgb"], data=tiny_demo, out=run)
    rows = check_blend_run(run)  # every row against its formulas, the kept one against the rule
    assert [r["epoch"] for r in rows] == [0, 2] and rows[1]["kept_from"] == 0
    first = {h: v["w"] for h, v in rows[0]["heads"].items()}
    assert {h: v["w"] for h, v in rows[1]["heads"].items()} == first
    assert {h: v["w_estimated"] for h, v in rows[1]["heads"].items()} != first
    assert json.loads((run / "final.json").read_text())["weights"] == first
    summary = report.blend_summary([RunFolder(run)])
    assert summary["kept"] == [8]
    assert summary["weights_raw"] == {h: round(v["w_raw"], 3) for h, v in rows[0]["heads"].items()}


def test_online_resume_after_a_later_estimation_trims_and_matches(online_ref, tiny_demo, tmp_path, monkeypatch):
    """Killed right after the estimation at epoch 2 was logged (checkpoint at epoch 2), --resume
    drops blend_weights.jsonl rows from epoch 2 on before estimating again, and the run ends
    identical to the uninterrupted one: blend rows, metrics rows, final numbers."""
    from gblend_cli import run_folder, runs
    from gblend_cli.storage import read_jsonl

    ref, _ = online_ref
    run = tmp_path / "run"
    real = run_folder.RunFolder.log_blend

    def killed_after_second_estimation(self, row):
        real(self, row)
        if row["epoch"] == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(run_folder.RunFolder, "log_blend", killed_after_second_estimation)
    with pytest.raises(KeyboardInterrupt):
        runs.train(tiny_cfg(**ONLINE), "gblend", ["audio", "rgb"], data=tiny_demo, out=run)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert [r["epoch"] for r in read_jsonl(run / "blend_weights.jsonl")] == [0, 2]  # the kill came after it
    on_disk = []

    def logged(self, row):  # what the file holds when the resumed run appends its estimation
        on_disk.append([r["epoch"] for r in read_jsonl(self.path / "blend_weights.jsonl")])
        real(self, row)

    monkeypatch.setattr(run_folder.RunFolder, "log_blend", logged)
    runs.train(tiny_cfg(**ONLINE), "gblend", ["audio", "rgb"], data=tiny_demo, out=run, resume=True)
    assert on_disk == [[0]]
    assert (run / "blend_weights.jsonl").read_text() == (ref / "blend_weights.jsonl").read_text()
    strip = lambda r: {k: v for k, v in r.items() if k not in ("epoch_seconds", "train_running")}  # noqa: E731
    assert [strip(r) for r in read_jsonl(run / "metrics.jsonl")] == [strip(r) for r in read_jsonl(ref / "metrics.jsonl")]
    assert _final_numbers(run) == _final_numbers(ref)
    check_blend_run(run)


# ============================================================================================ metric = accuracy

def test_self_estimated_accuracy_terms_are_the_measured_error_rates(tiny_demo, tmp_path, monkeypatch):
    """gblend.metric = accuracy in Algorithm 1: L^T/L^V before and after are 1 - top1/100 of the
    estimators' T' and V evaluations, SE(ΔO) combines their binomial standard errors."""
    from gblend_cli import blend
    from gblend_cli.train import RunContext

    tr = _trainer(tiny_demo, tmp_path, **{"gblend.metric": "accuracy"})
    seen = []
    real = tr.evaluate

    def spy(model, split, heads, video_level=False):
        r = real(model, split, heads, video_level)
        seen.append((split, copy.deepcopy(r)))
        return r

    monkeypatch.setattr(tr, "evaluate", spy)
    row = blend.estimate_blend_weights(RunContext(tr, tr.folder), 0, 1, tr.cfg["gblend"])
    assert [s for s, _ in seen] == ["train", "holdout", "train", "holdout"]
    (_, bt), (_, bv), (_, at), (_, av) = seen
    assert row["metric"] == "accuracy"
    for h, r in row["heads"].items():
        err = [1 - m[h]["top1"] / 100 for m in (bt, bv, at, av)]
        assert [r["LT_before"], r["LV_before"], r["LT_after"], r["LV_after"]] == err, h
        se = [math.sqrt(e * (1 - e) / m[h]["n"]) for e, m in zip(err, (bt, bv, at, av))]
        assert r["delta_O_se"] == pytest.approx(math.sqrt(sum(x * x for x in se)), rel=1e-12)
        assert r["LT_before"] != bt[h]["loss"]
    check_blend_row(row, tr.cfg["gblend"])


# ============================================================================================ --weights equal

def test_equal_weights_are_one_over_k_plus_one():
    from gblend_cli.policies import parse_weights

    assert parse_weights("equal", ["audio", "rgb", "fused"]) == {h: 1 / 3 for h in ("audio", "rgb", "fused")}
    assert parse_weights("equal", ["audio", "rgb", "flow", "fused"]) == {h: 0.25 for h in ("audio", "rgb", "flow", "fused")}


def test_equal_weights_run_and_its_table4_row(matrix_runs, tmp_path):
    """`--weights equal`: every epoch trains with w = 1/(k+1) = 1/3 per head, no estimation; the
    report's Table 4 shows it as "auxiliary loss (equal w)" with those weights and the run's own
    clip and video accuracies."""
    from gblend_cli.report import build
    from gblend_cli.report_render import render

    run = matrix_runs["equal"]
    check_fixed_weights_run(run, {h: 1 / 3 for h in ("audio", "rgb", "fused")})
    final = json.loads((run / "final.json").read_text())
    assert final["mode"] == "equal"
    results = tmp_path / "results"
    for name in ("ua", "ur", "n", "equal"):
        shutil.copytree(matrix_runs[name], results / name, ignore=shutil.ignore_patterns("checkpoints"))
    rep = build(results, ["table4"], None)
    rows = [r for r in rep["table4"] if r["method"] == "auxiliary loss (equal w)"]
    assert len(rows) == 1, [r["method"] for r in rep["table4"]]
    row = rows[0]
    assert row["combo"] == "A+RGB" and row["seeds"] == [4]
    assert row["weights"] == {h: round(1 / 3, 3) for h in ("audio", "rgb", "fused")}
    for k in ("clip_top1", "video_top1", "video_top5"):
        assert row[k] == round(final[k], 2), k
    md = render(rep, "markdown")
    line = next(ln for ln in md.splitlines() if "auxiliary loss (equal w)" in ln)
    assert "audio 0.33, rgb 0.33, fused 0.33" in line and f"{final['video_top1']:.1f}" in line, line
