"""--resume computes in the precision its checkpoint was made in (Trainer.check_precision).

train.amp may not change on --resume (the recipe check); train.device may, but not to a device on
which the run would compute in another precision (train.amp = auto is bf16 on CUDA, float32 on
CPU). Such a resume is refused in one line naming the key, exit 2, before anything is written —
from last.pt, from an estimation in progress (estimation.pt), and from a checkpoint of an older
gblend that records no precision (env.json's amp then). A checkpoint made on CUDA is stood in for
by one whose "precision" says so (this machine may have no GPU). The GradScaler state is loaded
only when the checkpoint holds one and the scaler is enabled (fp16)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

TINY = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
        "--set", "train.batch_size=8", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16"]
AUDIO = ["train-unimodal", "--modality", "audio", "--epochs", "1", "--seed", "4", *TINY]


def _files(run: Path) -> dict:
    return {f: f.read_bytes() for f in run.rglob("*") if f.is_file()}


def _rewrite(path: Path, **changes) -> None:
    """A checkpoint with `changes` (None: the key removed), its checksum recomputed: whole, as if
    written so."""
    from gblend_cli.integrity import state_checksum

    state = torch.load(path, weights_only=True)
    for k, v in changes.items():
        if v is None:
            state.pop(k, None)
        else:
            state[k] = v
    state["checksum"] = state_checksum(state)
    torch.save(state, path)


@pytest.fixture(scope="module")
def stopped_run(tiny_demo, tmp_path_factory):
    """A 1-epoch audio run stopped after its last checkpoint, before final.json (read-only)."""
    import subprocess

    from conftest import gblend_cmd, gblend_env

    run = tmp_path_factory.mktemp("precision") / "audio"
    p = subprocess.run(gblend_cmd(*AUDIO, "--data", tiny_demo, "--out", run), env=gblend_env(),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    (run / "final.json").unlink()
    return run


def _refused(p, *words) -> None:
    assert p.returncode == 2, p.stderr[-2000:]
    err = p.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)


def test_a_checkpoint_records_its_precision_and_the_same_precision_resumes(stopped_run, tiny_demo, tmp_path,
                                                                           run_gblend):
    run = tmp_path / "audio"
    shutil.copytree(stopped_run, run)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["precision"] == "none"  # CPU: float32
    # another train.device, the same precision (float32 on the CPU either way): allowed
    p = run_gblend(*AUDIO, "--data", tiny_demo, "--out", run, "--set", "train.device=cpu", "--resume")
    assert p.returncode == 0, p.stderr[-2000:]
    assert (run / "final.json").exists()


@pytest.mark.parametrize("how", ["recorded", "older_checkpoint"])
def test_resume_in_another_precision_is_refused_naming_the_key(stopped_run, tiny_demo, tmp_path, run_gblend, how):
    run = tmp_path / "audio"
    shutil.copytree(stopped_run, run)
    last = run / "checkpoints" / "last.pt"
    if how == "recorded":  # a run made on CUDA (train.amp = auto: bf16), resumed here on the CPU
        _rewrite(last, precision="bf16")
    else:  # a checkpoint of a gblend that recorded no precision: env.json's amp says bf16
        _rewrite(last, precision=None)
        env = json.loads((run / "env.json").read_text())
        (run / "env.json").write_text(json.dumps(env | {"amp": "torch.bfloat16", "device": "cuda:0"}))
    before = _files(run)
    p = run_gblend(*AUDIO, "--data", tiny_demo, "--out", run, "--resume")
    _refused(p, "train.device", "bf16", "--resume", str(last))
    assert _files(run) == before


def test_resume_with_another_amp_is_refused_naming_it(stopped_run, tiny_demo, tmp_path, run_gblend):
    run = tmp_path / "audio"
    shutil.copytree(stopped_run, run)
    before = _files(run)
    p = run_gblend(*AUDIO, "--data", tiny_demo, "--out", run, "--set", "train.amp=fp16", "--resume")
    _refused(p, "train.amp")
    assert _files(run) == before


def test_an_estimation_in_another_precision_is_refused_before_anything_is_written(tiny_demo, tmp_path, run_gblend):
    """An offline G-Blend run stopped during its estimation (estimation.pt, no last.pt), made in fp16."""
    from gblend_cli.config import load_config, to_toml
    from gblend_cli.run_folder import RunFolder

    run = tmp_path / "gb"
    args = ["train-gblend", "--modalities", "audio,rgb", "--epochs", "2", *TINY, "--data", tiny_demo, "--out", run]
    cfg = load_config(None, {"train.epochs": 2})
    RunFolder(run).checkpoints.mkdir(parents=True)
    RunFolder(run).save_estimation({"epoch": 0, "n_epochs": 2, "done": 1, "config": to_toml(cfg), "precision": "fp16"})
    (run / "config.toml").write_text(to_toml(cfg))
    before = _files(run)
    p = run_gblend(*args, "--resume")
    _refused(p, "train.device", "fp16", "estimation.pt")
    assert _files(run) == before


def test_the_scaler_state_is_loaded_only_when_saved_and_enabled():
    from gblend_cli.engine import Precision

    prec = Precision(torch.device("cpu"))
    saved = torch.amp.GradScaler("cpu", init_scale=1024.0).state_dict()
    enabled = torch.amp.GradScaler("cpu", init_scale=8.0)
    for empty in ({}, None):  # saved by a disabled scaler (bf16, float32), or no scaler state at all
        prec.load_scaler_state(enabled, empty)
        assert enabled.state_dict()["scale"] == 8.0
    prec.load_scaler_state(enabled, saved)
    assert enabled.state_dict()["scale"] == 1024.0
    disabled = torch.amp.GradScaler("cpu", enabled=False)
    prec.load_scaler_state(disabled, saved)
    assert not disabled.is_enabled() and disabled.state_dict() == {}
