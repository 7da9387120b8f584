"""Runs under `torchrun --nproc_per_node=2` on CPU (gloo), through the real entry point.

- A multi-head model with a head weighted 0 trains under DistributedDataParallel: that head's
  parameters get no gradient, which DDP refuses unless it looks for unused parameters
  (distributed.wrap_model); the zero-weight head stays as initialised, as in one process.
- Kill and resume: an offline G-Blend run whose two ranks are SIGKILLed during the estimation,
  resumed, killed again after its first checkpoint and resumed to the end, ends with the numbers of
  an uninterrupted run. Each rank's dropout draws from its own generator, so each checkpoint
  (last.pt and estimation.pt) carries every rank's RNG state and each rank restores its own;
  before, every rank restored rank 0's. (~30 s: slow.) And, in one process, what a rank restores
  from a checkpoint of an older gblend or one saved with fewer processes.
- A naive run on two processes writes one set of outputs, and its numbers are those of the model
  it saved (every rank evaluates rank 0's BatchNorm statistics); φ_0's recalibrated statistics are
  the average over every rank's batches.
- Only a failed collective is reported as another process having stopped.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import gblend_env
from reliability import final_numbers, metrics_rows, wait_for
from test_faults_distributed import rank_pids, torchrun

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


def _kill_ranks(job: subprocess.Popen, port: int) -> None:
    """SIGKILL every rank of the torchrun on `port` at once (a job killed by its scheduler), then
    wait for the launcher."""
    for pid in rank_pids(port).values():
        os.kill(pid, signal.SIGKILL)
    job.communicate(timeout=120)


def _rank0_output(logs: Path) -> str:
    return "".join(p.read_text() for p in sorted(logs.rglob("0/std*.log")))


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker environments from /proc")
def test_a_killed_and_resumed_ddp_run_ends_as_an_uninterrupted_one(tiny_demo, tmp_path):
    args = ["train-gblend", "--modalities", "audio,rgb", "--data", tiny_demo, "--epochs", "3", "--seed", "2", *TINY]
    ports = {name: free_port() for name in ("ref", "kill1", "kill2", "end")}
    ref = torchrun([*args, "--out", tmp_path / "ref"], ports["ref"], tmp_path / "logs_ref")
    run = tmp_path / "run"
    ckpt = run / "checkpoints"
    job = torchrun([*args, "--out", run], ports["kill1"], tmp_path / "logs1")
    assert wait_for(lambda: (ckpt / "estimation.pt").exists() and len(rank_pids(ports["kill1"])) == 2, timeout=300), \
        job.communicate()[0][-3000:]
    _kill_ranks(job, ports["kill1"])  # during the estimation (3 epochs), after its first epoch
    assert job.returncode != 0 and not (ckpt / "last.pt").exists()

    job = torchrun([*args, "--out", run, "--resume"], ports["kill2"], tmp_path / "logs2")
    assert wait_for(lambda: (ckpt / "last.pt").exists() and len(rank_pids(ports["kill2"])) == 2, timeout=300), \
        job.communicate()[0][-3000:]
    _kill_ranks(job, ports["kill2"])  # after the run's first checkpoint
    assert job.returncode != 0 and not (run / "final.json").exists()
    assert "resuming the G-Blend estimation from epoch 0" in _rank0_output(tmp_path / "logs2")
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert state["epoch"] < 3 and len(state["rng"]["ranks"]) == 2  # every rank's state, loadable as plain data
    assert not torch.equal(state["rng"]["ranks"][0]["torch"], state["rng"]["ranks"][1]["torch"])

    job = torchrun([*args, "--out", run, "--resume"], ports["end"], tmp_path / "logs3")
    out, _ = job.communicate(timeout=300)
    assert job.returncode == 0, out[-3000:]
    assert f"resuming {run} from epoch" in _rank0_output(tmp_path / "logs3")
    out, _ = ref.communicate(timeout=300)
    assert ref.returncode == 0, out[-3000:]
    blend = [(tmp_path / r / "blend_weights.jsonl").read_text() for r in ("ref", "run")]
    assert blend[0] == blend[1]
    assert metrics_rows(run) == metrics_rows(tmp_path / "ref")
    assert final_numbers(run) == final_numbers(tmp_path / "ref")


def test_each_rank_restores_its_own_rng_state_and_older_checkpoints_still_load(tmp_path):
    from gblend_cli.distributed import restore_rng_states, rng_states

    cpu = torch.device("cpu")

    def draws(n=4):
        return torch.rand(n)

    states = []
    for seed in (11, 12):  # two ranks' states, as rng_states gathers them
        torch.manual_seed(seed)
        draws()
        states.append(rng_states(cpu)["ranks"][0])
    saved = {"torch": states[0]["torch"], "ranks": states}
    torch.save({"rng": saved}, tmp_path / "s.pt")
    saved = torch.load(tmp_path / "s.pt", weights_only=True)["rng"]  # plain data
    expected = []
    for st in states:
        torch.set_rng_state(st["torch"])
        expected.append(draws())
    assert not torch.equal(expected[0], expected[1])
    for rank in (0, 1):
        torch.manual_seed(99)
        restore_rng_states(saved, rank, cpu, fallback_seed=7)
        assert torch.equal(draws(), expected[rank]), rank
    # rank 2 of a run saved with 2 processes: seeded from the fallback, not a copy of another rank
    restore_rng_states(saved, 2, cpu, fallback_seed=7)
    got = draws()
    torch.manual_seed(7)
    assert torch.equal(got, draws())
    # an older checkpoint held rank 0's CPU state only (a bare tensor in estimation.pt, {"torch"} in
    # last.pt): every rank restores it, as before
    for old in (states[0]["torch"], {"torch": states[0]["torch"]}):
        restore_rng_states(old, 1, cpu, fallback_seed=7)
        assert torch.equal(draws(), expected[0])


PEER_SCRIPT = """
import json
import sys

import torch.distributed as dist

from gblend_cli import distributed

distributed.setup("cpu")
said = {k: distributed.peer_failure(e) for k, e in {
    "peer": RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4"),
    "dist_error": dist.DistBackendError("NCCL communicator was aborted on rank 1"),
    "oom": RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    "ddp": RuntimeError("Expected to have finished reduction in the prior iteration before starting a new one"),
    "value": ValueError("not a collective"),
    "loader": RuntimeError("DataLoader timed out after 60 seconds"),
}.items()}
open(sys.argv[1] + f".{dist.get_rank()}", "w").write(json.dumps(said))
distributed.cleanup()
"""


def test_only_a_failed_collective_is_blamed_on_another_process(tmp_path):
    """In a real 2-process group, a collective's error (gloo's 'connection closed by peer', a
    DistError) reads 'another process of this distributed run stopped ... --resume'; this rank's
    own RuntimeError (CUDA out of memory, a DDP reduction error, its DataLoader timing out) is not
    disguised as that."""
    script = tmp_path / "peer.py"
    script.write_text(PEER_SCRIPT)
    port = str(free_port())
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", port,
                        str(script), str(tmp_path / "said")], env=gblend_env() | {"MASTER_PORT": port},
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    for rank in (0, 1):
        said = json.loads((tmp_path / f"said.{rank}").read_text())
        for k in ("peer", "dist_error"):
            assert said[k].startswith(f"rank {rank} of 2: another process of this distributed run stopped"), said[k]
            assert "--resume" in said[k]
        assert said["peer"].count("Connection closed by peer") == 1
        assert said["oom"] is None and said["ddp"] is None and said["value"] is None and said["loader"] is None


def test_torchrun_two_cpu_processes(tiny_demo, tmp_path):
    run = tmp_path / "ddp"
    env = gblend_env() | {"MASTER_PORT": str(29500 + os.getpid() % 1000)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", env["MASTER_PORT"],
           "-m", "gblend_cli", "train-naive", "--modalities", "audio,rgb", "--data", str(tiny_demo), "--out", str(run),
           "--epochs", "2", *TINY, "--set", "train.eval_every=1"]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads((run / "env.json").read_text())
    assert info["world_size"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]  # one set of outputs: only rank 0 writes
    final = json.loads((run / "final.json").read_text())
    assert final["splits"]["val"] == 16
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 2 and not any(k.startswith("module.") for k in state["model"])
    assert not list(run.rglob("*.tmp"))
    # the numbers are those of the saved model: one process evaluating last.pt gets the same
    # final.json (each rank's BatchNorm statistics differ by its own last batch; rank 0's are saved)
    from test_metrics import EVAL_SCRIPT, _final

    script = tmp_path / "evaluate_checkpoint.py"
    script.write_text(EVAL_SCRIPT)
    one = subprocess.run([sys.executable, str(script), str(run), str(tmp_path / "one")], env=gblend_env(),
                         capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _final(tmp_path / "one"), _final(run)
    for k in ("val_loss", "train_loss"):
        assert b.pop(k) == pytest.approx(a.pop(k), rel=1e-5), k
    assert b == a


BN_SCRIPT = """
import sys

import torch

from gblend_cli import distributed
from gblend_cli.engine import Precision, recalibrated_bn

env, device = distributed.setup("cpu")
g = torch.Generator().manual_seed(0)
batches = [{"rgb": torch.randn(3, 4, 5, generator=g) * (i + 1) + i, "label": torch.zeros(3, dtype=torch.long)}
           for i in range(6)]


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.bn = torch.nn.BatchNorm1d(4)

    def forward(self, inputs):
        return self.bn(inputs["rgb"])


mine = batches[env.rank::env.world]  # each rank's share, as the evaluation loaders shard
bn = recalibrated_bn(Net(), mine, precision=Precision(device), modalities=["rgb"]).bn
torch.save({"mean": bn.running_mean, "var": bn.running_var, "n": bn.num_batches_tracked}, sys.argv[1] + f".{env.rank}")
distributed.cleanup()
"""


def test_bn_recalibration_averages_every_rank_batches(tmp_path):
    """φ_0's BatchNorm statistics (engine.recalibrated_bn) in a 2-process run are the cumulative
    average over both ranks' batches: the same on every rank, and those of one process passing
    over all of them."""
    script = tmp_path / "bn.py"
    script.write_text(BN_SCRIPT)
    env = gblend_env() | {"MASTER_PORT": str(29500 + (os.getpid() + 3) % 1000)}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                          env["MASTER_PORT"], str(script), str(tmp_path / "two")], env=env, capture_output=True,
                         text=True, timeout=120)
    assert two.returncode == 0, two.stderr[-3000:]
    ref = torch.load(tmp_path / "one.0", weights_only=True)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"two.{rank}", weights_only=True)
        assert int(got["n"]) == int(ref["n"]) == 6
        for k in ("mean", "var"):
            assert torch.allclose(got[k], ref[k], rtol=1e-5, atol=1e-6), (rank, k)
