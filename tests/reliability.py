"""Subprocess and kill machinery shared by the tests of the README's "Guarantees"
(test_interrupt_resume.py, test_locks.py, test_bad_input.py, test_numerical.py, test_safety.py) and by
their shared fixtures in conftest.py: `import reliability` / `from reliability import ...`.

- ``Proc``: a gblend command running in its own session (process group), stdout/stderr in files;
  ``run_many``: independent commands a few at a time; ``wait_for``: poll a condition.
- ``check_outputs`` / ``safe_check``: every visible file under a folder is complete; ``is_temp``,
  ``snapshot``, ``journal_lines``, ``final_numbers``, ``metrics_rows``.
- ``assert_interrupt_message`` / ``assert_one_line_error``: what an interrupted / refused command prints.
- locks: ``dead_pid``, ``write_stale_lock``, ``lock_owner``, ``pid_alive``, ``hold_while_stopped``.
- ``TINY`` (a tiny model for train commands), ``RESUME_HINTS``, ``gblend_args`` (the offline G-Blend
  command of the ``train_chain`` fixture)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import numpy as np
import torch

from conftest import gblend_cmd, gblend_env

TINY = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
        "--set", "train.batch_size=8", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16"]
RESUME_HINTS = ("again", "--resume")


# ============================================================================================ helpers

def default_interrupt() -> None:
    """In the child before exec: SIGINT handled by default, as from a terminal. A shell starts a
    background job with SIGINT ignored, and Python keeps an inherited SIG_IGN, so a suite run in
    the background would otherwise test nothing about Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class Proc:
    """A gblend command running in its own session (process group), stdout/stderr in files."""

    def __init__(self, args, cwd: Path, name: str):
        cwd = Path(cwd)
        self.out_path, self.err_path = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.p = subprocess.Popen(gblend_cmd(*args), cwd=cwd, env=gblend_env(), stdout=out, stderr=err,
                                      start_new_session=True, preexec_fn=default_interrupt)
        self.pid = self.p.pid

    def alive(self) -> bool:
        return self.p.poll() is None

    def signal(self, sig: int, group: bool) -> None:
        try:
            (os.killpg if group else os.kill)(self.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout: float = 180) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL, group=True)
            self.p.wait(10)
            raise

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")


def wait_for(cond, proc: Proc | None = None, timeout: float = 120, poll: float = 0.005) -> bool:
    """Poll `cond()` until true (True), the process ends or the time is up (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except (OSError, ValueError):
            pass
        if proc is not None and not proc.alive():
            return bool(cond())
        time.sleep(poll)
    return False


def journal_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def is_temp(name: str) -> bool:
    """Temp files of atomic writes: hidden and carrying .tmp (`.<name>.<random>.tmp`,
    `.<name>.tmp.<ext>`); never picked up by a reader (readers skip hidden files)."""
    return name.startswith(".") and ".tmp" in name


def check_outputs(folder: Path, mp4_frames: int | None = None) -> dict:
    """Every visible file under `folder` is complete: .npy loads, .pt loads with weights_only,
    .json parses, every '\\n'-terminated .jsonl line parses, .toml parses, .csv ends with a
    newline and parses, .png has its IEND chunk, .mp4 decodes all its frames. Raises on the first
    incomplete file; returns the temp files and locks found."""
    import av

    temps, locks, checked = [], [], 0
    for dirpath, _, files in os.walk(folder):
        for name in files:
            p = Path(dirpath) / name
            if name == ".lock":
                locks.append(p)
                continue
            if is_temp(name):
                temps.append(p)
                continue
            if name.startswith("."):
                continue
            if ".tmp" in name:
                raise AssertionError(f"a temp file that readers could take for an output: {p}")
            suffix = p.suffix
            try:
                if suffix == ".npy":
                    np.load(p, allow_pickle=False)
                elif suffix == ".pt":
                    torch.load(p, map_location="cpu", weights_only=True)
                elif suffix == ".json":
                    json.loads(p.read_text())
                elif suffix == ".jsonl":
                    for line in p.read_text().splitlines(keepends=True):
                        if line.endswith("\n") and line.strip():
                            json.loads(line)
                elif suffix == ".toml":
                    tomllib.loads(p.read_text())
                elif suffix == ".csv":
                    text = p.read_text()
                    assert text.endswith("\n"), "csv does not end with a newline"
                    list(csv.reader(io.StringIO(text)))
                elif suffix == ".png":
                    data = p.read_bytes()
                    assert data.startswith(b"\x89PNG") and data[-12:-8] == b"\x00\x00\x00\x00" \
                        and data[-8:-4] == b"IEND", "png without IEND"
                elif suffix == ".mp4":
                    with av.open(str(p)) as c:
                        n = sum(1 for _ in c.decode(video=0))
                    assert n >= 1 and (mp4_frames is None or n == mp4_frames), f"{n} frames"
                else:
                    continue
            except Exception as e:  # noqa: BLE001 - report which file is incomplete
                raise AssertionError(f"incomplete or unreadable output {p}: {type(e).__name__}: {e}") from None
            checked += 1
    return {"temps": temps, "locks": locks, "checked": checked}


def safe_check(folder: Path, **kw) -> dict:
    try:
        return check_outputs(folder, **kw) | {"error": None}
    except AssertionError as e:
        return {"error": str(e), "temps": [], "locks": [], "checked": 0}


def snapshot(*roots: Path) -> dict:
    """{path: (size, mtime_ns, sha1)} of every file under `roots`."""
    snap = {}
    for root in roots:
        for dirpath, _, files in os.walk(root):
            for name in files:
                p = Path(dirpath) / name
                st = p.lstat()
                digest = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else ""
                snap[str(p)] = (st.st_size, st.st_mtime_ns, digest)
    return snap


def assert_interrupt_message(rc: int, stderr: str, stdout: str = "") -> None:
    assert rc != 0, "an interrupted command must not exit 0"
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    assert any(h in stderr for h in RESUME_HINTS), stderr[-2000:]


def assert_one_line_error(rc: int, stderr: str, stdout: str, *needles: str, code: int = 2) -> str:
    assert rc == code, (rc, stderr[-2000:])
    assert "Traceback" not in stderr + stdout, stderr[-3000:]
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr[-2000:]
    assert lines[0].startswith("error:"), lines[0]
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def final_numbers(run: Path) -> dict:
    f = json.loads((run / "final.json").read_text())
    for k in ("seconds", "peak_memory_mb"):  # wall clock and memory: not part of a run's numbers
        f.pop(k, None)
    return f


def metrics_rows(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in ("epoch_seconds", "train_running")} for r in rows]


def dead_pid() -> int:
    """The pid of a process that has finished (and been reaped)."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def write_stale_lock(folder: Path) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    pid = dead_pid()
    (folder / ".lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    return pid


@contextlib.contextmanager
def folder_held(folder: Path, what: str, release: threading.Event):
    """Another writer on `folder` (folder_lock in a thread of this process) until `release` is
    set; yields the list that then gets the time.time() of its release."""
    from gblend_cli.storage import folder_lock

    held, released_at = threading.Event(), []

    def writer():
        with folder_lock(folder, what):
            held.set()
            release.wait(60)
            released_at.append(time.time())

    t = threading.Thread(target=writer)
    t.start()
    assert held.wait(30), f"could not hold {folder}"
    try:
        yield released_at
    finally:
        release.set()
        t.join(60)


def lock_owner(folder: Path) -> int | None:
    try:
        return json.loads((folder / ".lock").read_text()).get("pid")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is dead
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return True


def run_many(cases: dict[str, dict], parallel: int = 3) -> dict[str, dict]:
    """Run independent commands a few at a time. case: {"args", "cwd"} -> adds rc/stdout/stderr."""
    todo = list(cases.items())
    running: list[tuple[str, Proc]] = []
    while todo or running:
        while todo and len(running) < parallel:
            name, case = todo.pop(0)
            case["_deadline"] = time.monotonic() + 240
            running.append((name, Proc(case["args"], case["cwd"], name)))
        time.sleep(0.05)
        for entry in list(running):
            name, proc = entry
            if not proc.alive():
                running.remove(entry)
                cases[name].update(rc=proc.p.returncode, stdout=proc.stdout, stderr=proc.stderr)
            elif time.monotonic() > cases[name]["_deadline"]:
                proc.signal(signal.SIGKILL, group=True)
    return cases

# ============================================================================================ train-gblend

def gblend_args(tiny_demo) -> list:
    return ["train-gblend", "--modalities", "audio,rgb", "--mode", "offline", "--data", tiny_demo, "--epochs", "3",
            "--seed", "1", *TINY, "--set", "train.eval_every=1"]


# ============================================================================================ one writer per folder

def hold_while_stopped(first: Proc, folder: Path, second_args, cwd: Path) -> dict:
    """Wait until `first` owns the folder's lock, freeze it (SIGSTOP: alive, lock held, no CPU),
    run `second_args` to its end, then let `first` go on."""
    took = wait_for(lambda: lock_owner(folder) == first.pid, first)
    first.signal(signal.SIGSTOP, group=True)
    try:
        second = Proc(second_args, cwd, "second")
        rc2 = second.wait()
    finally:
        first.signal(signal.SIGCONT, group=True)
    return {"took": took, "second": second, "rc2": rc2}
