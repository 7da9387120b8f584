"""The README's "Guarantees", checked on the real entry point (`python -m gblend_cli` subprocesses):

- interruption: SIGINT (Ctrl-C: the whole process group) and SIGTERM (the main process) during
  prepare-data, a train command and reproduce -> exit 130, a hint how to resume, no traceback, every
  file complete or absent; SIGKILL at some point, then the same command completes (train commands
  with --resume, reproducing the numbers of an uninterrupted run); a killed `report --out`;
- bad configuration: one line on stderr, exit code 2, no file changed;
- numerical faults: NaN loss -> exit 3 with the last good checkpoint; G-Blend weights always a
  distribution;
- one writer per folder (locks, stale locks);
- safety: weights_only checkpoints, recipes are data, manifest paths outside the root.

Several scenarios are chains on one folder (kill, resume, interrupt, resume, ...) built once per
module, and independent commands run a few at a time, to keep the whole file near a minute of
wall time on 2 cores."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import gblend_cmd, gblend_env

TINY = ["--set", "model.visual_widths=[4,8,8,8]", "--set", "model.audio_widths=[4,8,8,8]",
        "--set", "train.batch_size=8", "--set", "clip.eval_clips=3", "--set", "train.train_eval_size=16"]
RESUME_HINTS = ("again", "--resume")


# ============================================================================================ helpers

class Proc:
    """A gblend command running in its own session (process group), stdout/stderr in files."""

    def __init__(self, args, cwd: Path, name: str):
        cwd = Path(cwd)
        self.out_path, self.err_path = cwd / f"{name}.stdout", cwd / f"{name}.stderr"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.p = subprocess.Popen(gblend_cmd(*args), cwd=cwd, env=gblend_env(), stdout=out, stderr=err,
                                      start_new_session=True)
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
    f.pop("seconds")
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


# ============================================================================================ prepare-data

PREP_ARGS = ["prepare-data", "--dataset", "demo", "--set", "demo.train_videos=48", "--set", "demo.test_videos=12",
             "--workers", "2"]
N_CLIPS = 60


@pytest.fixture(scope="module")
def prepare_chain(tmp_path_factory):
    """One demo folder: SIGKILL (group) while the videos render -> SIGINT (group) while clips are
    prepared -> SIGTERM (main process) while clips are prepared -> the same command to the end."""
    tmp = tmp_path_factory.mktemp("prep_chain")
    out = tmp / "demo"
    args = [*PREP_ARGS, "--out", out]
    videos = out / "media" / "videos"
    journal = out / "progress.jsonl"
    stages: dict[str, dict] = {}

    def n_videos() -> int:
        return sum(1 for p in videos.rglob("*.mp4") if not p.name.startswith(".")) if videos.exists() else 0

    p = Proc(args, tmp, "kill_render")
    caught = wait_for(lambda: n_videos() >= 6, p)
    p.signal(signal.SIGKILL, group=True)
    p.wait()
    time.sleep(0.2)
    stages["kill_render"] = {"caught": caught, "videos": n_videos(), "rc": p.p.returncode,
                             **safe_check(out, mp4_frames=16)}

    for name, sig, group in (("sigint", signal.SIGINT, True), ("sigterm", signal.SIGTERM, False)):
        before = journal_lines(journal)
        p = Proc(args, tmp, name)
        caught = wait_for(lambda: journal_lines(journal) >= before + 3, p)
        alive = p.alive()
        p.signal(sig, group=group)
        rc = p.wait()
        time.sleep(0.2)
        stages[name] = {"caught": caught and alive, "rc": rc, "stderr": p.stderr, "stdout": p.stdout,
                        "journal": journal_lines(journal), **safe_check(out, mp4_frames=16)}

    p = Proc(args, tmp, "final")
    rc = p.wait()
    stages["final"] = {"rc": rc, "stderr": p.stderr, **safe_check(out, mp4_frames=16)}
    return out, stages


def test_prepare_sigkill_while_rendering_leaves_only_complete_videos(prepare_chain):
    _, st = prepare_chain
    s = st["kill_render"]
    assert s["caught"] and s["rc"] == -signal.SIGKILL, s
    assert 6 <= s["videos"] < N_CLIPS, f"the kill came too late to test rendering ({s['videos']} videos)"
    assert s["error"] is None, s["error"]  # every visible mp4 decodes all of its 16 frames
    assert s["locks"], "a SIGKILLed prepare-data leaves its .lock (stale: the next stage must take it over)"
    assert st["sigint"]["caught"]  # ... which it did: the next command ran


@pytest.mark.parametrize("stage", ["sigint", "sigterm"])
def test_prepare_interrupt_says_how_to_resume_and_leaves_complete_files(prepare_chain, stage):
    _, st = prepare_chain
    s = st[stage]
    assert s["caught"], f"prepare-data ended before the {stage} could be sent"
    assert_interrupt_message(s["rc"], s["stderr"], s["stdout"])
    assert s["error"] is None, s["error"]
    assert not s["locks"], "an interrupted prepare-data left its .lock behind"
    assert s["journal"] < N_CLIPS


@pytest.mark.parametrize("stage", ["sigint", "sigterm"])
def test_prepare_interrupt_exits_130(prepare_chain, stage):
    _, st = prepare_chain
    assert st[stage]["rc"] == 130, (st[stage]["rc"], st[stage]["stderr"][-500:])


def test_prepare_rerun_after_kill_and_interrupts_completes(prepare_chain):
    out, st = prepare_chain
    s = st["final"]
    assert s["rc"] == 0, s["stderr"][-3000:]
    assert "Traceback" not in s["stderr"]
    assert s["error"] is None, s["error"]
    assert not s["locks"]
    report = json.loads((out / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (N_CLIPS, [])
    with open(out / "index.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == N_CLIPS and all(r["status"] == "ok" for r in rows)
    for m in ("rgb", "audio", "flow"):
        assert len([p for p in (out / m).iterdir() if p.suffix == ".npy" and not p.name.startswith(".")]) == N_CLIPS
    done = [json.loads(ln)["clip"] for ln in (out / "progress.jsonl").read_text().splitlines(keepends=True)
            if ln.endswith("\n")]
    assert sorted(set(done)) == sorted(r["clip_id"] for r in rows)


# ============================================================================================ train-gblend

def gblend_args(tiny_demo) -> list:
    return ["train-gblend", "--modalities", "audio,rgb", "--mode", "offline", "--data", tiny_demo, "--epochs", "3",
            "--seed", "1", *TINY, "--set", "train.eval_every=1"]


@pytest.fixture(scope="module")
def train_chain(tiny_demo, tmp_path_factory):
    """An offline G-Blend run: SIGKILL during the estimation (before epoch 1) -> --resume, SIGINT
    (group) after the first checkpoint -> --resume, SIGTERM (main process) after the next
    checkpoint -> --resume to the end; an uninterrupted run with the same seed runs beside it."""
    tmp = tmp_path_factory.mktemp("train_chain")
    args = gblend_args(tiny_demo)
    ref = Proc([*args, "--out", tmp / "ref"], tmp, "ref")
    run = tmp / "run"
    last = run / "checkpoints" / "last.pt"
    stages: dict[str, dict] = {}

    p = Proc([*args, "--out", run], tmp, "kill_estimation")
    caught = wait_for(lambda: journal_lines(run / "metrics.jsonl") >= 1, p)  # epoch 0 logged: estimation next
    time.sleep(0.1)
    alive = p.alive()
    p.signal(signal.SIGKILL, group=True)
    p.wait()
    stages["kill_estimation"] = {"caught": caught and alive, "blend_weights": (run / "blend_weights.jsonl").exists(),
                                 "last": last.exists(), **safe_check(run)}

    for name, sig, group in (("sigint", signal.SIGINT, True), ("sigterm", signal.SIGTERM, False)):
        before = last.stat().st_mtime_ns if last.exists() else 0
        p = Proc([*args, "--out", run, "--resume"], tmp, name)
        caught = wait_for(lambda: last.exists() and last.stat().st_mtime_ns != before, p)
        alive = p.alive()
        p.signal(sig, group=group)
        rc = p.wait()
        stages[name] = {"caught": caught and alive, "rc": rc, "stderr": p.stderr, "stdout": p.stdout,
                        "final": (run / "final.json").exists(), **safe_check(run)}

    p = Proc([*args, "--out", run, "--resume"], tmp, "final")
    stages["final"] = {"rc": p.wait(), "stderr": p.stderr, **safe_check(run)}
    stages["ref"] = {"rc": ref.wait(), "stderr": ref.stderr}
    return tmp / "ref", run, stages


def test_train_sigkill_mid_estimation_leaves_complete_files(train_chain):
    _, _, st = train_chain
    s = st["kill_estimation"]
    assert s["caught"], "the run ended before it could be killed"
    assert not s["blend_weights"] and not s["last"], "the kill came after the G-Blend estimation"
    assert s["error"] is None, s["error"]


@pytest.mark.parametrize("stage", ["sigint", "sigterm"])
def test_train_interrupt_exits_130_with_resume_hint(train_chain, stage):
    _, _, st = train_chain
    s = st[stage]
    assert s["caught"], f"the run ended before the {stage} could be sent"
    assert s["rc"] == 130, (s["rc"], s["stderr"][-2000:])
    assert_interrupt_message(s["rc"], s["stderr"], s["stdout"])
    assert "--resume" in s["stderr"]
    assert s["error"] is None, s["error"]
    assert not s["temps"], f"temp files left by a clean interrupt: {s['temps']}"
    assert not s["locks"], "an interrupted run left its .lock behind"
    assert not s["final"]


def test_train_resumed_after_kill_and_interrupts_matches_uninterrupted_run(train_chain):
    ref, run, st = train_chain
    assert st["ref"]["rc"] == 0, st["ref"]["stderr"][-3000:]
    assert st["final"]["rc"] == 0, st["final"]["stderr"][-3000:]
    assert st["final"]["error"] is None and not st["final"]["locks"]
    assert final_numbers(run) == final_numbers(ref)
    assert [r["epoch"] for r in metrics_rows(run)] == [0, 1, 2, 3]
    assert metrics_rows(run) == metrics_rows(ref)
    assert (run / "blend_weights.jsonl").read_text() == (ref / "blend_weights.jsonl").read_text()
    last = torch.load(run / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    ref_last = torch.load(ref / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == 3 and last["policy"]["weights"] == final_numbers(run)["weights"]
    for k, v in ref_last["model"].items():
        assert torch.equal(v, last["model"][k]), k


def test_kill_between_last_and_best_checkpoint_keeps_best(tiny_demo, tmp_path, monkeypatch):
    """Deterministic version of a SIGKILL landing between the two checkpoint writes of an epoch."""
    from gblend_cli import run_folder, runs
    from gblend_cli.config import load_config

    cfg = load_config(None, {"model.visual_widths": [4, 8, 8, 8], "model.audio_widths": [4, 8, 8, 8],
                             "train.batch_size": 8, "clip.eval_clips": 3, "train.train_eval_size": 16,
                             "train.epochs": 1, "train.seed": 5})
    runs.train(cfg, "unimodal", ["audio"], data=tiny_demo, out=tmp_path / "ref")
    real = run_folder.torch_save_atomic

    def killed_after_last(path, obj):
        real(path, obj)
        if Path(path).name == "last.pt":
            raise KeyboardInterrupt  # the process dies right after last.pt's rename

    monkeypatch.setattr(run_folder, "torch_save_atomic", killed_after_last)
    with pytest.raises(KeyboardInterrupt):
        runs.train(cfg, "unimodal", ["audio"], data=tiny_demo, out=tmp_path / "run")
    monkeypatch.setattr(run_folder, "torch_save_atomic", real)
    (tmp_path / "run" / ".lock").unlink(missing_ok=True)
    runs.train(cfg, "unimodal", ["audio"], data=tiny_demo, out=tmp_path / "run", resume=True)
    ref_best = torch.load(tmp_path / "ref" / "checkpoints" / "best.pt", weights_only=True)
    best = tmp_path / "run" / "checkpoints" / "best.pt"
    assert best.exists(), "best.pt was never written"
    assert torch.load(best, weights_only=True)["epoch"] == ref_best["epoch"]


def test_gblend_weights_in_the_run_are_a_distribution(train_chain):
    _, run, _ = train_chain
    rows = [json.loads(line) for line in (run / "blend_weights.jsonl").read_text().splitlines()]
    assert rows
    for r in rows:
        w = [h["w"] for h in r["heads"].values()]
        assert all(v >= 0 and math.isfinite(v) for v in w) and sum(w) == pytest.approx(1.0)


# ============================================================================================ reproduce

def reproduce_recipe(tmp: Path, data: Path) -> Path:
    text = f"""
[dataset]
name = "demo"
data_dir = "{data}"
results_dir = "{tmp / 'results'}"

[prepare]
short_side = 16

[clip]
crop = 16
eval_clips = 3

[model]
visual_widths = [4, 8, 8, 8]
audio_widths = [4, 8, 8, 8]

[train]
epochs = 5
batch_size = 8
train_eval_size = 16
holdout_fraction = 0.2

[gblend]
fused_min_weight = 0.3

[reproduce]
seeds = [0]
main = "audio+rgb"
other_combos = []
other_seeds = [0]
gblend_modes = ["offline"]
other_gblend_modes = []
jobs = 2
"""
    path = tmp / "tiny_reproduce.toml"
    path.write_text(text)
    return path


RUN_NAMES = ["unimodal-audio-s0", "unimodal-rgb-s0", "naive-audio+rgb-s0", "gblend-offline-audio+rgb-s0"]


@pytest.fixture(scope="module")
def reproduce_chain(tiny_demo, tmp_path_factory):
    """One results folder: SIGINT (group) -> SIGTERM (main process) -> SIGKILL of the main
    process only -> SIGKILL of the group -> `reproduce` to the end."""
    tmp = tmp_path_factory.mktemp("repro_chain")
    recipe = reproduce_recipe(tmp, tiny_demo)
    results = tmp / "results"
    args = ["reproduce", "--recipe", recipe]
    stages: dict[str, dict] = {}

    def locks() -> list[Path]:
        return list(results.glob("*/.lock")) if results.exists() else []

    def live_lock() -> bool:
        return any(pid_alive(lock_owner(lk.parent) or 0) for lk in locks())

    def has_checkpoint() -> bool:
        return bool(list(results.glob("*/checkpoints/last.pt"))) if results.exists() else False

    p = Proc(args, tmp, "sigint")
    caught = wait_for(has_checkpoint, p)
    alive = p.alive()
    p.signal(signal.SIGINT, group=True)
    rc = p.wait()
    stages["sigint"] = {"caught": caught and alive, "rc": rc, "stderr": p.stderr, "stdout": p.stdout,
                        **safe_check(results)}

    for name, sig, group in (("sigterm", signal.SIGTERM, False), ("kill_main", signal.SIGKILL, False),
                             ("kill_group", signal.SIGKILL, True)):
        p = Proc(args, tmp, name)
        caught = wait_for(live_lock, p)
        time.sleep(0.3)
        alive = p.alive()
        p.signal(sig, group=group)
        rc = p.wait()
        stage = {"caught": caught and alive, "rc": rc, "stderr": p.stderr, "stdout": p.stdout}
        if name == "kill_main":
            owners = [pid for pid in (lock_owner(lk.parent) for lk in locks()) if pid and pid != p.pid]
            # the runs notice that their reproduce is gone and stop themselves (cleanly, within seconds)
            wait_for(lambda: not any(pid_alive(pid) for pid in owners), timeout=15, poll=0.05)
            stage["orphans"] = [pid for pid in owners if pid_alive(pid)]
            for pid in stage["orphans"]:  # the orphaned runs (descendants of our command): stop them cleanly
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            wait_for(lambda: not any(pid_alive(pid) for pid in stage["orphans"]), timeout=60, poll=0.05)
        time.sleep(0.2)
        stages[name] = stage | safe_check(results)

    p = Proc(args, tmp, "final")
    stages["final"] = {"rc": p.wait(), "stderr": p.stderr, **safe_check(results)}
    return tmp, results, recipe, stages


@pytest.mark.parametrize("stage", ["sigint", "sigterm"])
def test_reproduce_interrupt_exits_130_with_hint(reproduce_chain, stage):
    *_, st = reproduce_chain
    s = st[stage]
    assert s["caught"], f"reproduce ended before the {stage} could be sent"
    assert s["rc"] == 130, (s["rc"], s["stderr"][-2000:])
    assert_interrupt_message(s["rc"], s["stderr"], s["stdout"])
    assert s["error"] is None, s["error"]
    assert not s["locks"], "runs of an interrupted reproduce left their .lock behind (still running?)"


@pytest.mark.parametrize("stage", ["kill_main", "kill_group"])
def test_reproduce_sigkill_leaves_complete_files(reproduce_chain, stage):
    *_, st = reproduce_chain
    s = st[stage]
    assert s["caught"], f"reproduce ended before the {stage} could be sent"
    assert s["rc"] == -signal.SIGKILL
    assert s["error"] is None, s["error"]


def test_reproduce_sigkill_of_the_main_process_leaves_no_orphan_runs(reproduce_chain):
    *_, st = reproduce_chain
    assert st["kill_main"]["caught"]
    orphans = st["kill_main"]["orphans"]
    assert orphans == [], f"runs still training 15 s after the kill: pids {orphans}"


def test_reproduce_rerun_after_kills_completes_with_the_report(reproduce_chain):
    _, results, _, st = reproduce_chain
    s = st["final"]
    assert s["rc"] == 0, s["stderr"][-3000:]
    assert "Traceback" not in s["stderr"]
    assert s["error"] is None and not s["locks"], s
    for name in RUN_NAMES:
        f = json.loads((results / name / "final.json").read_text())
        assert f["epochs"] == 5 and 0 <= f["video_top1"] <= 100, name
    rep = results / "report"
    json.loads((rep / "report.json").read_text())
    assert "Table" in (rep / "report.md").read_text()
    assert (rep / "report.csv").read_text().strip()
    assert not [p for p in rep.iterdir() if is_temp(p.name)]


def test_report_out_killed_midway_is_absent_or_complete(reproduce_chain):
    tmp, results, recipe, _ = reproduce_chain
    ref_dir = tmp / "report_ref"
    ref_dir.mkdir()
    base = ["report", "--recipe", recipe, "--results", results, "--table", "all", "--format", "markdown"]
    t0 = time.monotonic()
    p = Proc([*base, "--out", ref_dir / "tables.md", "--figure", ref_dir / "fig.png"], ref_dir, "ref")
    assert p.wait() == 0, p.stderr[-2000:]
    duration = time.monotonic() - t0
    ref = (ref_dir / "tables.md").read_bytes()
    assert ref.endswith(b"\n") and b"Table 1" in ref
    outcomes = []
    for i, when in enumerate(("temp_file", 0.8 * duration)):
        d = tmp / f"report_kill{i}"
        d.mkdir()
        target = d / "out" / "tables.md"
        p = Proc([*base, "--out", target, "--figure", d / "out" / "fig.png"], d, "kill")
        if when == "temp_file":  # kill as soon as the atomic write's temp file shows up
            wait_for(lambda: target.parent.exists() and any(is_temp(x.name) and "tables" in x.name
                                                           for x in target.parent.iterdir()), p, poll=0.0005)
        else:
            wait_for(lambda: False, p, timeout=when)
        p.signal(signal.SIGKILL, group=True)
        p.wait()
        outcomes.append((p.p.returncode, target.exists()))
        assert not target.exists() or target.read_bytes() == ref, f"{target} is half-written"
        if target.parent.exists():
            check_outputs(target.parent)
    assert outcomes


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


@pytest.fixture(scope="module")
def train_lock_scenario(tiny_demo, tmp_path_factory):
    """A run folder holding a stale .lock (a dead pid on this host): a train-unimodal run takes it
    over; while it holds the lock, the same command on the same --out is refused."""
    tmp = tmp_path_factory.mktemp("train_lock")
    run = tmp / "run"
    stale = write_stale_lock(run)
    args = ["train-unimodal", "--modality", "rgb", "--data", tiny_demo, "--out", run, "--epochs", "3", "--seed", "2",
            *TINY]
    first = Proc(args, tmp, "first")
    held = hold_while_stopped(first, run, args, tmp)
    rc1 = first.wait()
    return {"run": run, "stale": stale, "first": first, "rc1": rc1, **held}


def test_stale_train_lock_is_taken_over(train_lock_scenario):
    s = train_lock_scenario
    assert s["took"], "the run did not take over the stale lock"
    assert s["rc1"] == 0, s["first"].stderr[-3000:]
    assert (s["run"] / "final.json").exists() and not (s["run"] / ".lock").exists()


def test_second_train_command_on_the_same_folder_is_refused(train_lock_scenario):
    s = train_lock_scenario
    line = assert_one_line_error(s["rc2"], s["second"].stderr, s["second"].stdout, str(s["first"].pid), ".lock")
    assert "another gblend" in line
    assert s["rc1"] == 0  # the first one was not disturbed
    assert [json.loads(x)["epoch"] for x in (s["run"] / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def prepare_lock_scenario(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prep_lock")
    out = tmp / "data"
    write_stale_lock(out)
    args = ["prepare-data", "--dataset", "demo", "--set", "demo.train_videos=24", "--set", "demo.test_videos=8",
            "--workers", "1", "--flow", "none", "--out", out]
    first = Proc(args, tmp, "first")
    held = hold_while_stopped(first, out, args, tmp)
    rc1 = first.wait()
    return {"out": out, "first": first, "rc1": rc1, **held}


def test_stale_prepare_lock_is_taken_over(prepare_lock_scenario):
    s = prepare_lock_scenario
    assert s["took"] and s["rc1"] == 0, s["first"].stderr[-3000:]
    report = json.loads((s["out"] / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (32, [])
    assert not (s["out"] / ".lock").exists()


def test_second_prepare_on_the_same_folder_is_refused(prepare_lock_scenario):
    s = prepare_lock_scenario
    assert_one_line_error(s["rc2"], s["second"].stderr, s["second"].stdout, str(s["first"].pid), ".lock")


def test_folder_lock_rules(tmp_path):
    from gblend_cli.errors import UserError
    from gblend_cli.storage import folder_lock

    # a live owner on another host is never taken over (its pid means nothing here)
    d = tmp_path / "other_host"
    d.mkdir()
    (d / ".lock").write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname() + "-elsewhere"}))
    with pytest.raises(UserError, match="pid"):
        with folder_lock(d):
            pass
    # a live owner on this host: refused, the lock is left alone
    d2 = tmp_path / "live"
    with folder_lock(d2):
        before = (d2 / ".lock").read_bytes()
        with pytest.raises(UserError, match=str(os.getpid())):
            with folder_lock(d2):
                pass
        assert (d2 / ".lock").read_bytes() == before
    assert not (d2 / ".lock").exists()
    # an empty lock (its writer was killed between create and write) is stale
    d3 = tmp_path / "empty"
    d3.mkdir()
    (d3 / ".lock").write_text("")
    with folder_lock(d3):
        assert json.loads((d3 / ".lock").read_text())["pid"] == os.getpid()


def test_stale_lock_takeover_cannot_steal_a_fresh_lock(tmp_path, monkeypatch):
    """Two commands start on a folder with a stale lock. A takes it over; B had read the lock
    while it still named the dead owner (simulated: B's read returns what it saw then)."""
    from gblend_cli.errors import UserError
    from gblend_cli.storage import folder_lock

    d = tmp_path / "run"
    write_stale_lock(d)
    lock = d / ".lock"
    seen_by_b = lock.read_text()
    with folder_lock(d):  # A
        a_lock = lock.read_text()
        real = Path.read_text
        monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: seen_by_b if self == lock else real(self, *a, **k))
        try:
            with pytest.raises(UserError):
                with folder_lock(d):  # B must not get in while A holds the folder
                    pass
        finally:
            monkeypatch.undo()
        assert lock.read_text() == a_lock


# ============================================================================================ bad configuration

@pytest.fixture(scope="module")
def bad_config(tiny_demo, train_lock_scenario, tmp_path_factory):
    """Every refused command in its own folder, run a few at a time; snapshots before/after."""
    tmp = tmp_path_factory.mktemp("bad_config")
    done_run = train_lock_scenario["run"]
    rgb = ["train-unimodal", "--modality", "rgb", "--data", tiny_demo, "--epochs", "3", "--seed", "2", *TINY]
    cases: dict[str, dict] = {}

    def case(name: str, args: list, needles=(), code: int = 2, one_line: bool = True) -> Path:
        d = tmp / name
        d.mkdir()
        cases[name] = {"args": args, "cwd": d, "needles": needles, "code": code, "one_line": one_line}
        return d

    def copy_run(d: Path) -> Path:
        shutil.copytree(done_run, d / "run")
        return d / "run"

    def copy_data(d: Path) -> Path:
        shutil.copytree(tiny_demo, d / "data", ignore=shutil.ignore_patterns("media"))
        return d / "data"

    d = case("unknown_recipe_key", [], ["epochz", "bad.toml"])
    (d / "bad.toml").write_text("[train]\nepochz = 3\n")
    cases["unknown_recipe_key"]["args"] = [*rgb, "--recipe", d / "bad.toml", "--out", d / "out"]
    d = case("wrong_type", [], ["train.epochs", "three"])
    (d / "bad.toml").write_text('[train]\nepochs = "three"\n')
    cases["wrong_type"]["args"] = [*rgb, "--recipe", d / "bad.toml", "--out", d / "out"]
    d = case("negative_epochs", [], ["train.epochs", "-1"])
    cases["negative_epochs"]["args"] = [*rgb, "--epochs", "-1", "--out", d / "out"]
    d = case("modality_not_prepared", [], ["flow"])
    data = copy_data(d)
    meta = json.loads((data / "dataset.json").read_text())
    meta["modalities"] = ["audio", "rgb"]
    (data / "dataset.json").write_text(json.dumps(meta))
    cases["modality_not_prepared"]["args"] = ["train-unimodal", "--modality", "flow", "--data", data,
                                              "--out", d / "out", *TINY]
    d = case("resume_other_recipe", [], ["train.lr"])
    run = copy_run(d)
    cases["resume_other_recipe"]["args"] = [*rgb, "--out", run, "--resume", "--lr", "0.3"]
    d = case("newer_dataset", [], ["newer"])
    data = copy_data(d)
    meta = json.loads((data / "dataset.json").read_text())
    meta["format_version"] = 99
    (data / "dataset.json").write_text(json.dumps(meta))
    cases["newer_dataset"]["args"] = ["train-unimodal", "--modality", "rgb", "--data", data, "--out", d / "out", *TINY]
    d = case("newer_checkpoint", [], ["newer"])
    run = copy_run(d)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["format_version"] = 99
    torch.save(state, run / "checkpoints" / "last.pt")
    cases["newer_checkpoint"]["args"] = [*rgb, "--out", run, "--resume"]
    d = case("run_folder_holds_a_run", [], ["already holds a run", "--resume"])
    run = copy_run(d)
    cases["run_folder_holds_a_run"]["args"] = [*rgb, "--out", run]
    # recipes are data: strings that look like code stay strings
    d = case("code_in_recipe", [], ["init-from"])
    (d / "evil.toml").write_text("[train]\ninit_from = '__import__(\"os\").system(\"touch PWNED_A\")'\n"
                                 "[dataset]\nroot = \"$(touch PWNED_B)\"\nresults_dir = \"`touch PWNED_C`\"\n")
    cases["code_in_recipe"]["args"] = ["train-naive", "--modalities", "audio,rgb", "--recipe", d / "evil.toml",
                                       "--data", tiny_demo, "--out", d / "out", *TINY]
    d = case("code_in_set", [], ["train.optimizer"])
    cases["code_in_set"]["args"] = [*rgb, "--set", "train.optimizer=__import__('os').system('touch PWNED_D')",
                                    "--out", d / "out"]
    # versions newer than this gblend, everywhere
    d = case("init_from_newer_checkpoint", [], ["newer"])
    run = copy_run(d)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    state["format_version"] = 99
    torch.save(state, run / "checkpoints" / "last.pt")
    cases["init_from_newer_checkpoint"]["args"] = ["train-naive", "--modalities", "audio,rgb", "--data", tiny_demo,
                                                   "--epochs", "1", "--init-from", run, "--out", d / "out", *TINY]
    d = case("report_newer_results", [], ["newer"])
    run = copy_run(d / "results")
    final = json.loads((run / "final.json").read_text())
    final["format_version"] = 99
    (run / "final.json").write_text(json.dumps(final))
    cases["report_newer_results"]["args"] = ["report", "--results", d / "results", "--table", "1"]
    d = case("prepare_into_newer_dataset", [], ["newer"])
    data = d / "data"
    shutil.copytree(tiny_demo, data)
    meta = json.loads((data / "dataset.json").read_text())
    meta["format_version"] = 99
    (data / "dataset.json").write_text(json.dumps(meta))
    cases["prepare_into_newer_dataset"]["args"] = ["prepare-data", "--dataset", "demo", "--out", data,
                                                   "--set", "demo.train_videos=32", "--set", "demo.test_videos=16",
                                                   "--workers", "1"]
    # a NaN loss: epoch 1 at lr 1e-6, then the step schedule multiplies it by 1e38 -> exit 3
    d = case("diverged", [], ["nan", "last good checkpoint"], code=3, one_line=False)
    cases["diverged"]["args"] = [*rgb[:-len(TINY)], "--epochs", "3", *TINY, "--lr", "1e-6",
                                 "--set", "train.schedule=step", "--set", "train.milestones=[1]",
                                 "--set", "train.gamma=1e38", "--set", "train.eval_every=1", "--out", d / "out"]

    demo_before = snapshot(tiny_demo)
    for name, c in cases.items():
        c["before"] = snapshot(c["cwd"])
    run_many(cases)
    for name, c in cases.items():
        c["after"] = snapshot(c["cwd"])
        for log in ("stdout", "stderr"):  # our own capture files are not the command's doing
            c["before"].pop(str(c["cwd"] / f"{name}.{log}"), None)
            c["after"].pop(str(c["cwd"] / f"{name}.{log}"), None)
    assert snapshot(tiny_demo) == demo_before
    return cases


REFUSED = ["unknown_recipe_key", "wrong_type", "negative_epochs",
           "modality_not_prepared", "resume_other_recipe", "newer_dataset", "newer_checkpoint",
           "run_folder_holds_a_run", "code_in_recipe", "code_in_set"]


def _check_refused(c: dict) -> None:
    assert_one_line_error(c["rc"], c["stderr"], c["stdout"], *c["needles"], code=c["code"])
    assert c["after"] == c["before"], sorted(set(c["after"].items()) ^ set(c["before"].items()))[:10]


@pytest.mark.parametrize("name", REFUSED)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(bad_config, name):
    _check_refused(bad_config[name])


def test_recipe_strings_are_never_run(bad_config):
    for name in ("code_in_recipe", "code_in_set"):
        cwd = bad_config[name]["cwd"]
        assert not [p for p in cwd.rglob("PWNED*")], name
        assert not list(Path.cwd().glob("PWNED*"))


NEGATIVE_VALUES = {"train.momentum": -1.0, "train.gamma": -1.0, "train.seed": -1, "model.fusion_dropout": -0.5,
                   "model.audio_widths": [-4, 8, 8, 8], "model.visual_layers": [-1, 1, 1, 1], "prepare.threads": -1,
                   "prepare.decode_timeout_s": -1.0, "prepare.max_seconds": -1.0, "gblend.delta_o_floor": -1.0,
                   "demo.seconds": -1.0}


@pytest.mark.parametrize("key", list(NEGATIVE_VALUES))
def test_negative_values_are_rejected_by_the_schema(key):
    from gblend_cli.config import load_config
    from gblend_cli.errors import UserError

    with pytest.raises(UserError, match=key.replace(".", r"\.")):
        load_config(None, {key: NEGATIVE_VALUES[key]})


def test_init_from_a_newer_checkpoint_is_refused(bad_config):
    _check_refused(bad_config["init_from_newer_checkpoint"])


def test_report_on_newer_results_is_refused(bad_config):
    _check_refused(bad_config["report_newer_results"])


def test_prepare_into_a_newer_dataset_is_refused(bad_config):
    _check_refused(bad_config["prepare_into_newer_dataset"])


def test_refused_train_command_creates_no_folder(bad_config):
    assert not (bad_config["modality_not_prepared"]["cwd"] / "out").exists()


def test_nan_loss_exits_3_and_keeps_the_last_good_checkpoint(bad_config):
    c = bad_config["diverged"]
    assert c["rc"] == 3, c["stderr"][-2000:]
    assert "Traceback" not in c["stderr"] + c["stdout"]
    last = [ln for ln in c["stderr"].splitlines() if ln.strip()][-1]
    assert last.startswith("error:") and "nan" in last and "last good checkpoint" in last, last
    out = c["cwd"] / "out"
    state = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (out / "final.json").exists() and not (out / ".lock").exists()
    check_outputs(out)


# ============================================================================================ numerical faults

@pytest.mark.parametrize("rule", ["raw", "regularised"])
@pytest.mark.parametrize("heads", [["audio", "fused"], ["audio", "rgb", "fused"], ["audio", "rgb", "flow", "fused"]])
def test_gblend_weights_when_no_head_generalises(rule, heads):
    """Every ΔG <= 0 (negative, zero, -0.0, with ΔO of any sign or 0): the documented fallback,
    equal weights, which also satisfies the regularised floors."""
    from gblend_cli.blend import blend_weights

    cases = [({h: -0.1 * (i + 1) for i, h in enumerate(heads)}, {h: 0.5 for h in heads}),
             ({h: 0.0 for h in heads}, {h: 0.0 for h in heads}),
             ({h: -0.0 for h in heads}, {h: (-1) ** i * 1e-9 for i, h in enumerate(heads)}),
             ({h: -1e-12 for h in heads}, {h: 3.0 for h in heads})]
    for dg, do in cases:
        w = blend_weights(dg, do, rule=rule, min_weight=0.05, fused_min_weight=0.3)
        assert set(w) == set(heads)
        assert all(v >= 0 and math.isfinite(v) for v in w.values()), w
        assert sum(w.values()) == pytest.approx(1.0)
        if rule == "raw" or 1 / len(heads) >= 0.3:
            assert all(v == pytest.approx(1 / len(heads)) for v in w.values()), w
        else:  # equal weights, then the fused head raised to its floor, the mass taken evenly
            assert w["fused"] == pytest.approx(0.3)
            assert all(w[h] == pytest.approx(0.7 / (len(heads) - 1)) for h in heads if h != "fused"), w


NON_FINITE = [pytest.param(rule, bad, id=f"{rule}-{bad}") for rule in ("raw", "regularised")
              for bad in ("nan_dg", "nan_do", "inf_do", "inf_dg")]


@pytest.mark.parametrize("rule,bad", NON_FINITE)
def test_gblend_weights_with_non_finite_terms(rule, bad):
    """A diverged estimator can give NaN/Inf losses; the weights must still be a distribution."""
    from gblend_cli.blend import blend_weights

    dg = {"audio": 0.3, "rgb": 0.2, "fused": 0.1}
    do = {"audio": 0.5, "rgb": 0.4, "fused": 0.3}
    if bad == "nan_dg":
        dg["audio"] = math.nan
    elif bad == "nan_do":
        do["rgb"] = math.nan
    elif bad == "inf_do":
        do["rgb"] = math.inf
    else:
        dg["audio"] = math.inf
    w = blend_weights(dg, do, rule=rule)
    assert all(v >= 0 and math.isfinite(v) for v in w.values()), w
    assert sum(w.values()) == pytest.approx(1.0)


# ============================================================================================ safety

@pytest.fixture(scope="module")
def outside_root(tmp_path_factory):
    """A generic-CSV dataset whose manifest points outside --root three ways."""
    import media_factory as mf

    tmp = tmp_path_factory.mktemp("outside")
    root = tmp / "root"
    mf.write_video(root / "cats" / "inside.mp4", seconds=1.0)
    outside = mf.write_video(tmp / "outside.mp4", seconds=1.0)
    os.symlink(outside, root / "cats" / "link.mp4")
    ann = tmp / "train.csv"
    ann.write_text(f"path,label,split\ncats/inside.mp4,cat,train\n../outside.mp4,cat,train\n{outside},dog,train\n"
                   "cats/link.mp4,dog,train\n")
    recipe = mf.write_bytes(tmp / "r.toml",
                            '[prepare]\nfps = 8.0\nshort_side = 32\nflow = "none"\n\n[clip]\ncrop = 32\n')
    base = ["prepare-data", "--dataset", "csv", "--root", root, "--annotations", ann, "--recipe", recipe,
            "--workers", "1"]
    cases = {"strict": {"args": [*base, "--out", tmp / "strict"], "cwd": tmp},
             "allowed": {"args": [*base, "--out", tmp / "allowed", "--allow-outside-root"], "cwd": tmp}}
    run_many(cases, parallel=2)
    return tmp, cases


def test_manifest_paths_outside_the_root_are_rejected(outside_root):
    tmp, cases = outside_root
    c = cases["strict"]
    assert c["rc"] == 0 and "Traceback" not in c["stderr"], c["stderr"][-2000:]
    report = json.loads((tmp / "strict" / "prepare_report.json").read_text())
    assert report["ok"] == 1
    reasons = {f["clip"]: f["reason"] for f in report["failed"]}
    assert len(reasons) == 3, reasons
    assert all("escapes dataset root" in r for r in reasons.values()), reasons
    assert not list((tmp / "strict" / "rgb").glob("*outside*")) and not list((tmp / "strict" / "rgb").glob("*link*"))


def test_allow_outside_root_accepts_them(outside_root):
    tmp, cases = outside_root
    c = cases["allowed"]
    assert c["rc"] == 0, c["stderr"][-2000:]
    report = json.loads((tmp / "allowed" / "prepare_report.json").read_text())
    assert (report["ok"], report["failed"]) == (4, [])


def test_every_checkpoint_loads_with_weights_only(train_chain, train_lock_scenario):
    ref, run, _ = train_chain
    paths = [p for d in (ref, run, train_lock_scenario["run"]) for p in d.rglob("*.pt")]
    assert len(paths) >= 5
    for p in paths:
        state = torch.load(p, map_location="cpu", weights_only=True)
        assert state["format_version"] >= 1 and isinstance(state["config"], str)
