"""Disk full and read-only folders (README "Guarantees", reliability figures): ENOSPC while writing a
checkpoint, a prepared clip or the report, and a folder without write permission. One line naming
the file and the fix, exit 1, every file written before whole, and the same command completes once
there is room.

How the disk fills up:
- by injection (always): GBLEND_TEST_ENOSPC="<name part>[@n]" (gblend_cli/storage.py) makes the n-th
  atomic write or journal append to a matching file write half its bytes and fail with ENOSPC;
- for real (where unprivileged user namespaces are allowed, as on most Linux CI runners): a
  256 MiB tmpfs mounted in `unshare -rm`, filled with a ballast file while the command is stopped
  (SIGSTOP) between two checkpoints; the ballast is removed and --resume completes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from conftest import TINY_DEMO_OVERRIDES, gblend_cmd, gblend_env
from reliability import TINY, check_outputs


def gblend(*args, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(gblend_cmd(*args), cwd=cwd, env=gblend_env() | (env or {}), capture_output=True, text=True,
                          timeout=timeout)


def error_line(p: subprocess.CompletedProcess, *needles: str, code: int = 1) -> str:
    """The command's one error line (the last on stderr; progress lines of a train command before it)."""
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    assert "Traceback" not in p.stderr + p.stdout, p.stderr[-3000:]
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("error:") and sum(ln.startswith("error:") for ln in lines) == 1, p.stderr
    for n in needles:
        assert n in lines[-1], (n, lines[-1])
    return lines[-1]


def full_disk(p: subprocess.CompletedProcess, *needles: str) -> str:
    line = error_line(p, *needles)
    assert "No space left on device" in line and "free space" in line, line
    return line


def train_args(data: Path) -> list:
    return ["train-unimodal", "--modality", "audio", "--data", data, "--epochs", "3", "--seed", "5", *TINY]


def test_disk_full_while_writing_a_checkpoint(tiny_demo, tmp_path):
    run = tmp_path / "run"
    p = gblend(*train_args(tiny_demo), "--out", run, cwd=tmp_path, env={"GBLEND_TEST_ENOSPC": "last.pt@2"})
    full_disk(p, "last.pt")
    found = check_outputs(run)
    assert not found["temps"] and not found["locks"]  # no half-written file left, lock released
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1  # the previous one, whole
    p = gblend(*train_args(tiny_demo), "--out", run, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    check_outputs(run)
    assert (run / "final.json").exists()


@pytest.mark.slow
def test_disk_full_while_appending_a_journal_line(tiny_demo, tmp_path):
    run = tmp_path / "run"
    p = gblend(*train_args(tiny_demo), "--out", run, cwd=tmp_path, env={"GBLEND_TEST_ENOSPC": "metrics.jsonl@3"})
    full_disk(p, "metrics.jsonl")
    p = gblend(*train_args(tiny_demo), "--out", run, "--resume", cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-2000:]
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [int(ln.split(",")[0].split(":")[1]) for ln in lines] == [0, 1, 2, 3]  # the torn line is gone


def test_disk_full_while_preparing_a_clip(tiny_demo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_demo / "media", data / "media")
    args = ["prepare-data", "--dataset", "demo", "--out", data, "--workers", "1",
            "--set", f"demo.train_videos={TINY_DEMO_OVERRIDES['demo.train_videos']}",
            "--set", f"demo.test_videos={TINY_DEMO_OVERRIDES['demo.test_videos']}"]
    p = gblend(*args, cwd=tmp_path, env={"GBLEND_TEST_ENOSPC": ".npy@7"})
    full_disk(p, ".npy", "prepare-data")
    journal = (data / "progress.jsonl").read_text()
    assert "No space" not in journal and '"failed"' not in journal  # not recorded as a bad clip
    assert not check_outputs(data)["temps"]
    p = gblend(*args, cwd=tmp_path)
    assert p.returncode == 0 and "0 failed" in p.stdout + p.stderr, p.stderr[-2000:]
    p = gblend("prepare-data", "--check", data, cwd=tmp_path)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.fixture(scope="module")
def finished_results(tiny_demo, tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("disk_report") / "results"
    p = gblend(*train_args(tiny_demo)[:-len(TINY)], "--epochs", "1", *TINY, "--out", results / "ua", cwd=results.parent)
    assert p.returncode == 0, p.stderr[-2000:]
    return results


def test_disk_full_while_writing_the_report(finished_results, tmp_path):
    out = tmp_path / "tables.md"
    report = ["report", "--results", finished_results, "--table", "1", "--format", "markdown", "--out", out]
    p = gblend(*report, cwd=tmp_path)
    assert out.exists(), p.stderr[-2000:]
    before = out.read_bytes()
    p = gblend(*report, cwd=tmp_path, env={"GBLEND_TEST_ENOSPC": "tables.md"})
    full_disk(p, "tables.md")
    assert out.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["tables.md"]


def userns() -> bool:
    """Whether `unshare -rm` works here (a private mount namespace to mount a tmpfs in)."""
    return shutil.which("unshare") is not None and not subprocess.run(["unshare", "-rm", "true"],
                                                                       capture_output=True).returncode


def test_read_only_folder_while_writing_the_report(finished_results, tmp_path):
    """A folder that is not writable: a read-only tmpfs (EROFS), or a chmod 555 folder (EACCES)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    args = gblend_cmd("report", "--results", finished_results, "--table", "1", "--out", ro / "tables.md")
    if userns():
        p = subprocess.run(["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o ro,size=1m tmpfs "{ro}" && exec "$@"', "sh",
                            *args], env=gblend_env(), capture_output=True, text=True, timeout=300)
        needle = "Read-only file system"
    else:
        ro.chmod(0o555)
        if os.access(ro, os.W_OK):
            pytest.skip("root without user namespaces: no folder here is read-only")
        p = subprocess.run(args, env=gblend_env(), capture_output=True, text=True, timeout=300)
        ro.chmod(0o755)
        needle = "Permission denied"
    line = error_line(p, needle, "tables.md")
    assert "make the folder writable" in line
    assert not list(ro.iterdir())


# ------------------------------------------------------------------------------------ a real full disk

DRIVER = textwrap.dedent("""
    import json, os, signal, subprocess, sys, time
    from pathlib import Path
    mnt, args, env = Path(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(mnt)], check=True)
    run, last = mnt / "run", mnt / "run" / "checkpoints" / "last.pt"
    p = subprocess.Popen(args + ["--out", str(run)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not last.exists() and p.poll() is None:
        time.sleep(0.01)
    p.send_signal(signal.SIGSTOP)  # between two checkpoints: fill the disk
    with open(mnt / "ballast", "wb") as f:
        try:
            while True:
                f.write(b"\\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    before = last.read_bytes()
    p.send_signal(signal.SIGCONT)
    out, err = p.communicate(timeout=300)
    after = last.read_bytes()
    temps = [str(q) for q in run.rglob("*") if q.name.startswith(".") and ".tmp" in q.name]
    (mnt / "ballast").unlink()
    r = subprocess.run(args + ["--out", str(run), "--resume"], env=env, capture_output=True, text=True)
    print(json.dumps({"rc": p.returncode, "stderr": err, "same_last": before == after, "temps": temps,
                      "resume_rc": r.returncode, "resume_err": r.stderr[-2000:], "final": (run / "final.json").exists()}))
""")


@pytest.mark.slow
def test_a_real_full_disk_while_training(tiny_demo, tmp_path):
    if not userns():
        pytest.skip("no unprivileged user namespaces here to mount a tmpfs in (the injected ENOSPC tests above run)")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    import json

    args = gblend_cmd(*train_args(tiny_demo)[:-len(TINY)], "--epochs", "6", *TINY)
    p = subprocess.run(["unshare", "-rm", sys.executable, "-c", DRIVER, str(mnt), json.dumps(args),
                        json.dumps(gblend_env())], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    got = json.loads(p.stdout.strip().splitlines()[-1])
    err = [ln for ln in got["stderr"].splitlines() if ln.strip() and not ln.startswith(("resum", " "))]
    assert got["rc"] == 1 and "No space left on device" in got["stderr"], got
    assert err and err[-1].startswith("error:") and "free space" in err[-1], got["stderr"]
    assert "Traceback" not in got["stderr"] and not got["temps"], got
    assert got["resume_rc"] == 0 and got["final"], got


def test_writes_survive_a_power_cut_their_folder_is_synced(tmp_path, monkeypatch):
    """A rename is durable only once its folder is fsynced: results (final.json, checkpoints, a new
    journal) sync it; prepared clip files do not (a rerun re-checks each against its journal)."""
    from gblend_cli import clip_files, storage

    synced = []
    real = os.fsync

    def spy(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    storage.write_json_atomic(tmp_path / "final.json", {"a": 1})
    assert synced[-1] == str(tmp_path) and (tmp_path / "final.json").exists()
    synced.clear()
    storage.append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 0})
    assert synced == [str(tmp_path / "metrics.jsonl"), str(tmp_path)]  # created: its name synced too
    synced.clear()
    storage.append_jsonl(tmp_path / "metrics.jsonl", {"epoch": 1})
    assert synced == [str(tmp_path / "metrics.jsonl")]
    synced.clear()
    (tmp_path / "rgb").mkdir()
    clip_files.write_output(tmp_path / "rgb" / "c.npy", b"x" * 10)
    assert len(synced) == 1 and synced[0].startswith(str(tmp_path / "rgb" / ".c.npy."))  # the temp file only


def test_a_report_from_a_read_only_results_folder_still_prints_its_tables(finished_results, tmp_path):
    """Someone else's results, mounted read-only: the tables come out (JSON on stdout, exit 0) and
    the figure the report would write beside them is a one-line warning; a --figure that cannot be
    written stays an error."""
    if not userns():
        pytest.skip("needs a private mount namespace (unshare -rm) for a read-only bind mount")
    ro = tmp_path / "ro"
    shutil.copytree(finished_results, ro)

    def report(*extra):
        args = gblend_cmd("report", "--results", ro, "--table", "overfit", "--format", "json", *extra)
        mount = f'mount --bind "{ro}" "{ro}" && mount -o remount,ro,bind "{ro}" && exec "$@"'
        return subprocess.run(["unshare", "-rm", "sh", "-c", mount, "sh", *args], env=gblend_env(),
                              capture_output=True, text=True, timeout=300)

    p = report()
    assert p.returncode == 0, p.stderr[-2000:]
    assert "overfit" in json.loads(p.stdout)
    warnings = [ln for ln in p.stderr.splitlines() if ln.startswith("warning: figure not written")]
    assert len(warnings) == 1 and "Read-only file system" in warnings[0], p.stderr
    assert not (ro / "report").exists()
    line = error_line(report("--figure", ro / "fig.png"), "Read-only file system")
    assert "fig.png" in line
