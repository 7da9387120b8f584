"""The README's "Interrupt and resume" guarantee, checked on the real entry point (`python -m gblend_cli`
subprocesses): SIGINT (Ctrl-C: the whole process group) and SIGTERM (the main process) during
prepare-data, a train command and reproduce -> exit 130, a hint how to resume, no traceback, every
file complete or absent; SIGKILL at some point, then the same command completes (train commands
with --resume, reproducing the numbers of an uninterrupted run); a killed `report --out`.

Several scenarios are chains on one folder (kill, resume, interrupt, resume, ...) built once per
module (the train chain once per session, in conftest.py: test_numerical.py and test_safety.py read
its run too), to keep the whole file near a minute of wall time on 2 cores."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from reliability import (Proc, assert_interrupt_message, check_outputs, default_interrupt, final_numbers, is_temp,
                         journal_lines, lock_owner, metrics_rows, pid_alive, safe_check, wait_for)


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
# (the train_chain fixture is in conftest.py)

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
    assert all((rep / f"report_{k}.csv").read_text().strip() for k in ("table1", "table4", "overfit"))
    assert not [p for p in rep.iterdir() if is_temp(p.name)]


def test_reproduce_rerun_removes_what_a_kill_left_in_its_report_folder(reproduce_chain):
    """A reproduce killed while writing its report leaves that write's temp in results/report/ (the
    fault campaign found `.overfitting.png.<random>.tmp`); the next reproduce — every run done, so
    only the report — writes it under the report folder's lock and removes the leftover; another
    file's temp there (`report --out` may write into that folder) is not its to remove."""
    tmp, results, recipe, _ = reproduce_chain
    left = results / "report" / ".overfitting.png.x1y2z3.tmp"
    left.write_bytes(b"\x89PNG cut short")
    other = results / "report" / ".my_tables.md.a1b2c3.tmp"
    other.write_text("someone else's write")
    p = Proc(["reproduce", "--recipe", recipe], tmp, "tidy_report")
    assert p.wait() == 0, p.stderr[-3000:]
    assert "0 to run" in p.stdout + p.stderr
    assert not left.exists() and not (results / "report" / ".lock").exists()
    assert other.exists()
    other.unlink()
    assert check_outputs(results / "report")["temps"] == []


# `gblend report` whose atomic write of one file (named by GBLEND_TEST_TARGET) stops inside the
# write - half the bytes in the temp file ("mid_write") or all of them, not yet renamed
# ("before_rename") - signals it (GBLEND_TEST_MARKER: the full length) and waits to be killed.
PAUSED_REPORT = """
import io, os, sys, time
from pathlib import Path

from gblend_cli import storage
from gblend_cli.cli import main

real = storage._atomic_write
name, stage = os.environ["GBLEND_TEST_TARGET"], os.environ["GBLEND_TEST_STAGE"]
marker = Path(os.environ["GBLEND_TEST_MARKER"])


def paused(path, write, *args, **kwargs):
    if Path(path).name != name:
        return real(path, write, *args, **kwargs)

    def write_then_wait(f):
        buf = io.BytesIO()
        write(buf)
        data = buf.getvalue()
        f.write(data if stage == "before_rename" else data[:len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
        marker.write_text(str(len(data)))
        time.sleep(600)

    return real(path, write_then_wait, *args, **kwargs)


storage._atomic_write = paused
main(sys.argv[1:])
"""


def test_report_out_killed_midway_is_absent_or_complete(reproduce_chain):
    """SIGKILL while `report --out` writes its file - half of it in the temp file, or all of it
    but not renamed, and once over an older complete report: the file is absent (or the old one,
    intact), never partial; only a hidden temp file is left; the same command then completes."""
    import subprocess
    import sys

    from conftest import gblend_env

    tmp, results, recipe, _ = reproduce_chain
    ref_dir = tmp / "report_ref"
    ref_dir.mkdir()
    base = ["report", "--recipe", recipe, "--results", results, "--table", "all", "--format", "markdown"]
    p = Proc([*base, "--out", ref_dir / "tables.md", "--figure", ref_dir / "fig.png"], ref_dir, "ref")
    assert p.wait() == 0, p.stderr[-2000:]
    ref = (ref_dir / "tables.md").read_bytes()
    assert ref.endswith(b"\n") and b"Table 1" in ref
    old = b"# an older report\n"
    for stage, before in (("mid_write", None), ("before_rename", None), ("mid_write", old)):
        d = tmp / f"report_kill_{stage}_{'over_old' if before else 'new'}"
        target = d / "out" / "tables.md"
        marker = d / "paused"
        target.parent.mkdir(parents=True)
        if before:
            target.write_bytes(before)
        env = gblend_env() | {"GBLEND_TEST_TARGET": "tables.md", "GBLEND_TEST_STAGE": stage,
                              "GBLEND_TEST_MARKER": str(marker)}
        proc = subprocess.Popen([sys.executable, "-c", PAUSED_REPORT, *map(str, base), "--out", str(target),
                                 "--figure", str(d / "out" / "fig.png")], cwd=d, env=env, start_new_session=True,
                                preexec_fn=default_interrupt,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            caught = wait_for(marker.exists, timeout=120)
            alive = proc.poll() is None
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert caught and alive, (stage, proc.stderr.read()[-2000:])
        assert proc.returncode == -signal.SIGKILL
        assert int(marker.read_text()) == len(ref)  # it was writing this very report
        if before:  # the file is intact: the older report, or no report
            assert target.read_bytes() == before, f"{target} is half-written"
        else:
            assert not target.exists(), f"{target} exists ({target.stat().st_size} of {len(ref)} bytes)"
        temps = [x for x in target.parent.iterdir() if is_temp(x.name) and "tables" in x.name]
        assert len(temps) == 1, temps  # the kill landed inside the atomic write
        assert temps[0].read_bytes() == (ref if stage == "before_rename" else ref[:len(ref) // 2])
        check_outputs(target.parent)
        again = Proc([*base, "--out", target, "--figure", d / "out" / "fig.png"], d, "again")
        assert again.wait() == 0, again.stderr[-2000:]
        assert target.read_bytes() == ref
