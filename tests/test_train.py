"""The training core on a tiny prepared demo: outputs, checkpoints, resume, G-Blend runs' weights
files, bad configuration, out of memory. G-Blend's estimation inside a run: test_estimation.py;
torchrun with 2 CPU processes: test_distributed.py."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from blend_check import check_blend_run
from conftest import gblend_cmd, gblend_env

TINY = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
        "--set", "train.batch_size=8", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16",
        "--set", "train.eval_every=1"]


def tiny_cfg(**over):
    from gblend_cli.config import load_config

    o = {"model.visual_widths": [4, 8, 8, 8], "model.audio_widths": [4, 8, 8, 8], "train.batch_size": 8,
         "clip.eval_clips": 3, "train.train_eval_size": 16, "train.epochs": 2, "train.eval_every": 1}
    o.update(over)
    return load_config(None, o)


def _final_numbers(run: Path) -> dict:
    f = json.loads((run / "final.json").read_text())
    for k in ("seconds", "peak_memory_mb"):  # wall clock and memory: not part of a run's numbers
        f.pop(k, None)
    return f


AUDIO_RUN = ["train-unimodal", "--modality", "audio", "--epochs", "2", *TINY]


@pytest.fixture(scope="module")
def audio_run(tiny_demo, tmp_path_factory):
    """A finished 2-epoch uni-modal audio run (CLI), and its CompletedProcess; read-only."""
    run = tmp_path_factory.mktemp("audio_run") / "audio"
    p = subprocess.run(gblend_cmd(*AUDIO_RUN, "--data", tiny_demo, "--out", run), env=gblend_env(),
                       capture_output=True, text=True, timeout=300)
    return run, p


def test_unimodal_run_writes_the_run_folder(audio_run, tiny_demo, run_gblend):
    run, p = audio_run
    assert p.returncode == 0, p.stderr[-2000:]
    for name in ("config.toml", "env.json", "metrics.jsonl", "summary.csv", "final.json",
                 "checkpoints/last.pt", "checkpoints/best.pt"):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    for r in rows:
        for split in ("train", "holdout", "val"):
            assert set(r[split]) == {"audio"}
            assert r[split]["audio"]["loss"] > 0 and 0 <= r[split]["audio"]["top1"] <= 100
    final = json.loads((run / "final.json").read_text())
    assert final["head"] == "audio"
    for k in ("clip_top1", "video_top1", "video_top5", "train_top1"):
        assert 0 <= final[k] <= 100
    assert final["video_top5"] >= final["video_top1"]
    # the resolved config records the overrides and reads back through the schema
    from gblend_cli.config import read_saved_config

    saved = read_saved_config(run / "config.toml")
    assert saved["model"]["audio_widths"] == [4, 8, 8, 8] and saved["train"]["epochs"] == 2
    assert len((run / "summary.csv").read_text().strip().splitlines()) == 4  # header + 3 epochs
    # checkpoints hold only plain data: loadable with weights_only=True
    state = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "scaler", "epoch", "config", "rng", "policy"} <= set(state)
    assert state["epoch"] == 2
    assert any(k.startswith("backbones.audio.") for k in state["model"])
    assert not any(k.startswith("backbones.rgb.") for k in state["model"])
    # a second run into the same folder refuses and changes nothing
    before = (run / "final.json").read_bytes()
    p2 = run_gblend(*AUDIO_RUN, "--data", tiny_demo, "--out", run)
    assert p2.returncode == 2 and "--resume" in p2.stderr and "Traceback" not in p2.stderr
    assert (run / "final.json").read_bytes() == before


def test_naive_model_has_only_the_fused_head_and_uses_every_backbone():
    from gblend_cli.models import MultiModalNet

    cfg = tiny_cfg()
    net = MultiModalNet(["audio", "rgb"], ["fused"], 8, cfg["model"])
    x = {"audio": torch.randn(2, 100, 40), "rgb": torch.randint(0, 255, (2, 8, 16, 16, 3), dtype=torch.uint8)}
    out = net(x)
    assert set(out) == {"fused"} and out["fused"].shape == (2, 8)
    out["fused"].sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    gb = MultiModalNet(["audio", "rgb"], ["audio", "rgb", "fused"], 8, cfg["model"])
    assert set(gb(x)) == {"audio", "rgb", "fused"}


def test_standard_backbones_match_torchvision():
    from torchvision.models.video import r2plus1d_18, r3d_18

    from gblend_cli.models import VideoBackbone

    ours = sum(p.numel() for p in VideoBackbone("rgb", "r2plus1d_18").parameters())
    tv = r2plus1d_18()
    assert ours == sum(p.numel() for p in tv.parameters()) - sum(p.numel() for p in tv.fc.parameters())
    ours3 = sum(p.numel() for p in VideoBackbone("rgb", "r3d_18").parameters())
    tv3 = r3d_18()
    assert ours3 == sum(p.numel() for p in tv3.parameters()) - sum(p.numel() for p in tv3.fc.parameters())
    flow = VideoBackbone("flow", "r2plus1d_34")
    assert flow.stem[0].in_channels == 2 and [len(l) for l in flow.layers] == [3, 4, 6, 3]


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_final_numbers(tiny_demo, tmp_path):
    args = ["train-naive", "--modalities", "audio,rgb", "--data", tiny_demo, "--epochs", "4", "--seed", "3", *TINY]
    ref = tmp_path / "ref"
    p = subprocess.run(gblend_cmd(*args, "--out", ref), env=gblend_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    run = tmp_path / "killed"
    proc = subprocess.Popen(gblend_cmd(*args, "--out", run), env=gblend_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (run / "checkpoints" / "last.pt").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)  # mid-epoch 2 (epoch 1's checkpoint was just written)
    proc.wait()
    assert not (run / "final.json").exists()
    p = subprocess.run(gblend_cmd(*args, "--out", run, "--resume"), env=gblend_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resuming" in p.stderr
    assert _final_numbers(run) == _final_numbers(ref)
    ref_rows = [json.loads(line) for line in (ref / "metrics.jsonl").read_text().splitlines()]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4]
    strip = lambda r: {k: v for k, v in r.items() if k not in ("epoch_seconds", "train_running")}  # noqa: E731
    assert [strip(r) for r in rows] == [strip(r) for r in ref_rows]


def test_resume_with_a_different_recipe_is_refused(audio_run, tiny_demo, tmp_path, run_gblend):
    import shutil

    assert audio_run[1].returncode == 0, audio_run[1].stderr[-2000:]
    run = tmp_path / "audio"
    shutil.copytree(audio_run[0], run)
    before = {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}
    p = run_gblend(*AUDIO_RUN, "--data", tiny_demo, "--out", run, "--lr", "0.3", "--resume")
    assert p.returncode == 2
    assert "train.lr" in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
    assert before == {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}


def test_modality_not_prepared_is_a_clear_error(tiny_demo, tmp_path, run_gblend):
    import shutil

    data = tmp_path / "noflow"
    shutil.copytree(tiny_demo, data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modalities"] = ["audio", "rgb"]
    (data / "dataset.json").write_text(json.dumps(meta))
    p = run_gblend("train-unimodal", "--modality", "flow", "--data", data, "--out", tmp_path / "r", *TINY)
    assert p.returncode == 2 and "flow" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "r" / "final.json").exists()


def _trainer(tiny_demo, tmp_path, modalities=("audio", "rgb"), **over):
    from gblend_cli.experiment import RunKey
    from gblend_cli.run_folder import RunFolder
    from gblend_cli.train import Trainer

    cfg = tiny_cfg(**over)
    return Trainer(cfg, RunKey("gblend", tuple(modalities), cfg["train"]["seed"], "offline"),
                   RunFolder(tmp_path / "run"), tiny_demo)


@pytest.mark.parametrize("mode", ["offline", "online"])
def test_train_gblend_writes_blend_weights(tiny_demo, tmp_path, run_gblend, mode):
    run = tmp_path / mode
    p = run_gblend("train-gblend", "--modalities", "audio,rgb", "--mode", mode, "--data", tiny_demo, "--out", run,
                   "--epochs", "3", *TINY, "--set", "gblend.warmup_super_epoch=2", "--set", "gblend.super_epoch=1",
                   timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = [json.loads(line) for line in (run / "blend_weights.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == ([0] if mode == "offline" else [0, 2])
    assert rows[0]["n_epochs"] == (3 if mode == "offline" else 2)
    for r in rows:
        assert set(r["heads"]) == {"audio", "rgb", "fused"}
        for h in r["heads"].values():
            assert {"LT_before", "LV_before", "LT_after", "LV_after", "delta_O", "delta_G", "ogr", "w_raw", "w"} <= set(h)
        assert sum(h["w"] for h in r["heads"].values()) == pytest.approx(1.0)
    final = json.loads((run / "final.json").read_text())
    assert final["head"] == "fused" and set(final["heads"]) == {"audio", "rgb", "fused"}
    assert final["weights"] == pytest.approx({h: v["w"] for h, v in rows[-1]["heads"].items()})
    assert "G-Blend weights" in p.stderr
    check_blend_run(run)


def test_hand_set_weights_and_bad_weights(tiny_demo, tmp_path, run_gblend):
    run = tmp_path / "fixed"
    p = run_gblend("train-gblend", "--modalities", "audio,rgb", "--weights", "rgb=.630,audio=.014,fused=.356",
                   "--data", tiny_demo, "--out", run, "--epochs", "1", *TINY)
    assert p.returncode == 0, p.stderr[-2000:]
    final = json.loads((run / "final.json").read_text())
    assert final["weights"] == pytest.approx({"audio": .014, "rgb": .630, "fused": .356})
    assert not (run / "blend_weights.jsonl").exists()
    p = run_gblend("train-gblend", "--modalities", "audio,rgb", "--weights", "flow=1", "--data", tiny_demo,
                   "--out", tmp_path / "bad", "--epochs", "1", *TINY)
    assert p.returncode == 2 and "flow" in p.stderr and "Traceback" not in p.stderr


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tiny_demo, tmp_path, monkeypatch):
    from gblend_cli import engine, runs, train

    calls = {"n": 0}
    real = engine.head_loss

    def poisoned(logits, y, multilabel, reduction="mean"):
        loss = real(logits, y, multilabel, reduction)
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] > 3:  # epoch 2 (3 steps per epoch)
                return loss * float("nan")
        return loss

    monkeypatch.setattr(engine, "head_loss", poisoned)
    cfg = tiny_cfg(**{"train.epochs": 3})
    out = tmp_path / "nan"
    with pytest.raises(train.TrainingDiverged, match="last good checkpoint"):
        runs.train(cfg, "unimodal", ["rgb"], data=tiny_demo, out=out)
    state = torch.load(out / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 - 1
    assert not (out / "final.json").exists()


def test_disk_reads_equal_ram_cached_reads(tiny_demo):
    """Large datasets read clip windows from disk with pread; small ones from RAM: same batches."""
    import numpy as np

    from gblend_cli.data import ClipDataset, PreparedDataset, eval_items

    cfg = tiny_cfg()
    ram, disk = PreparedDataset(tiny_demo), PreparedDataset(tiny_demo, cache_bytes=0)
    assert ram._cache_ok and not disk._cache_ok
    idx = ram.split_indices("val")
    for train in (True, False):
        items = [(i, -1) for i in idx] if train else eval_items(ram, idx, 10, cfg["clip"]["frames"])
        a = ClipDataset(ram, items, ["audio", "rgb", "flow"], cfg["clip"], train=train, seed=1)
        b = ClipDataset(disk, items, ["audio", "rgb", "flow"], cfg["clip"], train=train, seed=1)
        for ks in ([0, 1, 2, 3], [5, 7, len(items) - 1]):
            x, y = a.__getitems__(ks), b.__getitems__(ks)
            for k in x:
                assert np.array_equal(x[k].numpy(), y[k].numpy()), k
    # a window that runs past the end of a short clip repeats the last frame
    i = idx[0]
    n = disk.length("rgb", i)
    assert disk.rows("rgb", i, n - 2, n + 5).shape[0] == 2


def test_a_run_records_the_demo_its_data_was_generated_with(matrix_runs, tiny_demo):
    """The tiny demo was generated with other demo settings than the default recipe's (32 training
    videos, not 400). config.toml must say what the run trained on, and runs made on that data
    agree with each other (gblend.estimate_from compares them)."""
    import tomllib

    from gblend_cli.config import DEFAULT_RECIPE, load_config

    made = tomllib.loads((tiny_demo / "prepare_config.toml").read_text())["demo"]
    assert load_config(DEFAULT_RECIPE)["demo"] != made  # else this test could not fail
    for run in matrix_runs.values():
        assert tomllib.loads((run / "config.toml").read_text())["demo"] == made, run


def test_data_made_before_a_generator_key_existed_is_recorded_as_made(tmp_path):
    """A demo folder generated before demo.drift_amp existed had no drifting quadrants: a run on it
    records drift_amp 0 (what gblend did without the key), not the recipe's 0.8, and a resumed
    preparation into it is refused as another dataset, naming the key."""
    import tomllib

    from gblend_cli.config import DEFAULT_RECIPE, load_config, to_toml
    from gblend_cli.errors import UserError
    from gblend_cli.prepare import _check_settings
    from gblend_cli.runs import adopt_data_settings

    cfg = load_config(DEFAULT_RECIPE)
    assert cfg["demo"]["drift_amp"] > 0  # else this test could not fail
    old = "\n".join(ln for ln in to_toml(cfg).splitlines() if not ln.startswith("drift_amp"))
    (tmp_path / "prepare_config.toml").write_text(old + "\n")
    assert "drift_amp" not in tomllib.loads(old)["demo"]
    adopted = load_config(DEFAULT_RECIPE)
    adopt_data_settings(adopted, tmp_path)
    assert adopted["demo"]["drift_amp"] == 0.0
    assert {k: v for k, v in adopted["demo"].items() if k != "drift_amp"} == \
        {k: v for k, v in cfg["demo"].items() if k != "drift_amp"}
    with pytest.raises(UserError, match=r"demo\.drift_amp=0\.0, now 0\.8"):
        _check_settings(tmp_path, cfg)
    _check_settings(tmp_path, adopted)  # the settings it was made with resume it


OOM_SCRIPT = """
import sys

import torch

from gblend_cli import train
from gblend_cli.cli import main


def out_of_memory(*args, **kwargs):  # what a GPU too small for the batch raises (no GPU here)
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79 GiB")


train.train_one_epoch = out_of_memory
main(sys.argv[1:])
"""


def test_out_of_memory_is_one_line_with_the_fix(tiny_demo, tmp_path):
    """A GPU that runs out of memory mid-run (stood in for by raising torch's OutOfMemoryError from
    the epoch loop: this machine has no GPU): one line naming the fix, exit 1, no traceback, what
    was written (epoch 0's evaluation) whole."""
    script = tmp_path / "oom.py"
    script.write_text(OOM_SCRIPT)
    run = tmp_path / "run"
    p = subprocess.run([sys.executable, str(script), "train-unimodal", "--modality", "rgb", "--data", str(tiny_demo),
                        "--out", str(run), "--epochs", "2", *TINY], env=gblend_env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    errors = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "out of memory (CUDA out of memory" in errors[0], p.stderr[-2000:]
    assert "train.batch_size" in errors[0] and "--resume" in errors[0]
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [0]
    assert not list(run.rglob("*.tmp"))
