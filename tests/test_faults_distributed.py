"""Distributed faults (README "Guarantees", reliability figures).

- One rank of a `torchrun --nproc_per_node=2` run (gloo, CPU) SIGKILLed mid-epoch: the job stops,
  the surviving rank says in one `error:` line what happened and how to continue (no traceback of
  ours), no file in the run folder is half-written, and the same torchrun command with --resume
  completes. (~40 s: slow.)
- The run-folder lock where flock is not available (Lustre mounted without `-o flock`, some NFS
  set-ups): the O_EXCL lock file fallback (gblend_cli/storage.py), in-process with flock failing
  as it does there (ENOLCK)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import gblend_env
from reliability import TINY, check_outputs, dead_pid, wait_for

from gblend_cli import storage
from gblend_cli.errors import UserError


def torchrun(args: list, port: int, logs: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(port),
           "--log-dir", str(logs), "--redirects", "3", "-m", "gblend_cli", *map(str, args)]
    return subprocess.Popen(cmd, env=gblend_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def rank_pids(port: int) -> dict[int, int]:
    """{rank: pid} of the worker processes of the torchrun that uses `port`."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = dict(x.split(b"=", 1) for x in (d / "environ").read_bytes().split(b"\0") if b"=" in x)
        except OSError:
            continue
        if env.get(b"MASTER_PORT") == str(port).encode() and b"LOCAL_RANK" in env:
            found[int(env[b"RANK"])] = int(d.name)
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads worker environments from /proc")
def test_a_rank_killed_mid_epoch_stops_the_job_cleanly_and_resume_completes(tiny_demo, tmp_path):
    run = tmp_path / "run"
    args = ["train-unimodal", "--modality", "rgb", "--data", tiny_demo, "--epochs", "6", "--seed", "1", *TINY,
            "--set", "train.batch_size=4", "--out", run]
    port = free_port()
    job = torchrun(args, port, tmp_path / "logs")
    last = run / "checkpoints" / "last.pt"
    assert wait_for(lambda: last.exists(), timeout=300), job.communicate()[0][-3000:]
    ranks = rank_pids(port)
    assert set(ranks) == {0, 1}, ranks
    os.kill(ranks[1], signal.SIGKILL)  # mid-epoch 2
    out, _ = job.communicate(timeout=300)
    assert job.returncode != 0, out[-3000:]
    rank0 = next((tmp_path / "logs").rglob("0/stderr.log")).read_text()
    lines = [ln for ln in rank0.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "rank 0 of 2" in lines[0] and "--resume" in lines[0], rank0[-3000:]
    assert "Traceback" not in rank0, rank0[-3000:]
    found = check_outputs(run)  # every visible file whole
    assert not (run / "final.json").exists()
    shutil.rmtree(tmp_path / "logs")
    job = torchrun([*args, "--resume"], free_port(), tmp_path / "logs")
    out, _ = job.communicate(timeout=600)
    assert job.returncode == 0, out[-3000:]
    found = check_outputs(run)
    assert (run / "final.json").exists() and not found["temps"] and not found["locks"]
    rows = [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows == list(range(7))


# ------------------------------------------------------------------------------------ lock without flock

@pytest.fixture
def no_flock(monkeypatch):
    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", flock)


def test_lock_fallback_where_flock_is_unavailable(no_flock, tmp_path):
    run = tmp_path / "run"
    with storage.folder_lock(run, "training run"):
        owner = json.loads((run / ".lock").read_text())
        assert owner == {"pid": os.getpid(), "host": socket.gethostname(), "kind": "exclusive-file"}
        with pytest.raises(UserError, match="another gblend training run .* wait for it"):
            with storage.folder_lock(run, "training run"):
                pass
        (run / "out.txt").write_text("x")
    assert not (run / ".lock").exists()  # released
    assert not [p for p in run.iterdir() if p.name.startswith(".lock")]


def test_lock_fallback_takes_over_a_dead_pid_and_never_steals_from_another_host(no_flock, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))
    with storage.folder_lock(run):
        assert json.loads((run / ".lock").read_text())["pid"] == os.getpid()
    (run / ".lock").write_text(json.dumps({"pid": 1, "host": "other-node-17"}))
    with pytest.raises(UserError, match=r"other-node-17.*remove .*\.lock if that process is gone"):
        with storage.folder_lock(run):
            pass
    assert json.loads((run / ".lock").read_text())["host"] == "other-node-17"  # left alone


def test_lock_fallback_is_exclusive_across_processes(no_flock, tmp_path):
    """Two processes at once on a file system without flock: exactly one gets the folder."""
    run = tmp_path / "run"
    run.mkdir()
    code = ("import fcntl, errno, sys, time\n"
            "def f(fd, op): raise OSError(errno.ENOLCK, 'No locks available')\n"
            "fcntl.flock = f\n"
            "from gblend_cli.storage import folder_lock\n"
            "from gblend_cli.errors import UserError\n"
            "try:\n"
            "    with folder_lock(sys.argv[1]):\n"
            "        print('got', flush=True); time.sleep(3)\n"
            "except UserError as e:\n"
            "    print('refused', flush=True)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(run)], env=gblend_env(), stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert outs == ["got", "refused"], outs


# ------------------------------------------------------------------------------------ SIGTERM from the launcher

@pytest.mark.parametrize("world", [2, 1])
def test_a_rank_the_launcher_stops_says_why_in_one_error_line(monkeypatch, capsys, world):
    """torchrun SIGTERMs every rank left when one fails; a rank that gets that signal before any
    collective fails must still say, in one `error:` line, that the run stopped and how to resume
    (the kill test above can land either way: this pins the SIGTERM side). Outside a distributed
    run SIGTERM stays an ordinary interruption (exit 130)."""
    import typer

    from gblend_cli import cli, distributed

    monkeypatch.setattr(distributed.dist, "is_available", lambda: True)
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: world)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 0)

    @cli.command
    def stopped():
        raise cli.Terminated

    with pytest.raises(typer.Exit) as stop:
        stopped()
    printed = capsys.readouterr()
    text = " ".join((printed.err + printed.out).split())
    if world == 2:
        assert stop.value.exit_code == 1 and text.count("error:") == 1, text
        assert "rank 0 of 2" in text and "stopped by the launcher" in text and "--resume" in text, text
    else:
        assert stop.value.exit_code == 130 and "interrupted" in text and "error:" not in text, text
