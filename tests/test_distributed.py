"""Runs under `torchrun --nproc_per_node=2` on CPU (gloo), through the real entry point.

- A multi-head model with a head weighted 0 trains under DistributedDataParallel: that head's
  parameters get no gradient, which DDP refuses unless it looks for unused parameters
  (distributed.wrap_model); the zero-weight head stays as initialised, as in one process.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import torch

from conftest import gblend_env

TINY = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
        "--set", "train.batch_size=4", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_cmd(args: list) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(free_port()),
            "-m", "gblend_cli", *map(str, args)]


def test_a_head_weighted_zero_trains_under_ddp(tiny_demo, tmp_path):
    """--weights audio=0: the audio head is left out of every step's loss. Before, DDP stopped at
    the second step ("Expected to have finished reduction in the prior iteration")."""
    from gblend_cli.config import read_saved_config
    from gblend_cli.data import PreparedDataset
    from gblend_cli.fusion import build_model

    run = tmp_path / "zero"
    p = subprocess.run(torchrun_cmd(["train-gblend", "--modalities", "audio,rgb", "--weights", "audio=0,rgb=.5,fused=.5",
                                     "--data", tiny_demo, "--out", run, "--epochs", "2", "--seed", "3", *TINY]),
                       env=gblend_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    assert "Traceback" not in p.stderr and "Expected to have finished reduction" not in p.stderr
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert all(r["weights"] == {"audio": 0.0, "rgb": 0.5, "fused": 0.5} for r in rows[1:])
    trained = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"]
    cfg = read_saved_config(run / "config.toml")
    init = build_model(["audio", "rgb"], ["audio", "rgb", "fused"], len(PreparedDataset(tiny_demo).classes),
                       cfg["model"], init_seed=3).state_dict()
    for k, v in init.items():
        moved = not torch.equal(trained[k], v)
        if k.startswith("heads.audio."):
            assert not moved, k  # no gradient, no step (no weight decay either): as in one process
        elif k.startswith(("heads.rgb.", "fused.")) and k.endswith("weight"):
            assert moved, k
