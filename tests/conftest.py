"""Shared fixtures.

- ``demo_media``: the demo's mp4 files (default generator, seed 0: the first 48 train and 16 val
  videos) rendered once per session; ``seed_demo_media(demo_media, out, train, val)`` links those a
  demo of that size uses into a prepare-data ``--out`` folder, so the command does not render them
  again (it renders only missing videos). Tests of rendering itself render their own.
- ``tiny_demo``: a prepared demo dataset (32 train + 16 val clips, 8 classes, 2 s at 8 fps,
  32 px, audio + RGB + DIS flow), built once per session; returns the prepared folder. Treat it
  as read-only (copy it with ``shutil.copytree`` before changing anything in it).
- ``run_gblend``: run ``python -m gblend_cli ...`` in a subprocess (the real entry point, exit
  codes and stderr included).
- ``time_limit``: fail a test body that runs longer than N seconds instead of hanging.

Fixtures of the README's "Guarantees" tests that several test files share, each built once per
session (the helpers they use live in `tests/reliability.py`):

- ``train_chain``: an offline G-Blend run killed, interrupted and resumed, beside an uninterrupted
  run (test_interrupt_resume.py, test_numerical.py, test_safety.py).
- ``train_lock_scenario``: a train run that takes over a stale lock while a second command on its
  folder is refused (test_locks.py, test_safety.py; ``bad_config`` copies its finished run).
- ``bad_config``: every refused command in its own folder, with snapshots before/after
  (test_bad_input.py; its ``diverged`` case, a NaN loss, in test_numerical.py).
- ``matrix_runs``: the runs of one seed of the matrix on ``tiny_demo`` (uni-modal audio and RGB,
  naive, offline G-Blend, G-Blend reading its terms from those runs with loss and with accuracy,
  equal weights): test_train.py, test_estimation.py, test_gblend_runs.py, test_metrics.py.

`tests/media_factory.py` writes real media files for tests (``import media_factory``).

Speed: a test is `slow` when it takes more than ~20 s on 2 cores or uses a fixture that does
(``SLOW_FIXTURES``, marked here at collection); ``python -m pytest -q -m "not slow"`` is the fast
subset, ``python -m pytest -q`` (CI) runs everything.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # `import media_factory` from any test file
    sys.path.insert(0, str(TESTS_DIR))

TINY_DEMO_OVERRIDES = {"demo.train_videos": 32, "demo.test_videos": 16, "prepare.workers": 1}
DEMO_MEDIA_VIDEOS = (48, 16)  # (train, val): the most any fixture's demo uses


@pytest.fixture(scope="session")
def demo_media(tmp_path_factory) -> Path:
    """The rendered demo videos (see the module docstring): a prepare-data folder's `media` folder.
    Rendered in a fresh interpreter, like every prepare-data (see `tiny_demo`)."""
    media = tmp_path_factory.mktemp("demo_media") / "media"
    over = {"demo.train_videos": DEMO_MEDIA_VIDEOS[0], "demo.test_videos": DEMO_MEDIA_VIDEOS[1]}
    code = ("import json, sys\nfrom pathlib import Path\n"
            "from gblend_cli.config import load_config\nfrom gblend_cli.prepare import generate_demo_media\n"
            "generate_demo_media(load_config(None, json.loads(sys.argv[1])), Path(sys.argv[2]))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(over), str(media)], env=gblend_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return media


def seed_demo_media(media: Path, out: Path, train_videos: int, test_videos: int) -> int:
    """Link (or copy) the rendered videos a demo of `train_videos` + `test_videos` (default generator
    settings) uses into `out`/media; returns how many. Video i of a split is the same file whatever
    the counts, so a smaller demo's videos are a subset of `demo_media`'s."""
    from gblend_cli.config import load_config
    from gblend_cli.demo_data import video_jobs

    assert train_videos <= DEMO_MEDIA_VIDEOS[0] and test_videos <= DEMO_MEDIA_VIDEOS[1]
    p = load_config(None, {"demo.train_videos": train_videos, "demo.test_videos": test_videos})["demo"]
    jobs = video_jobs(Path(out) / "media", p, p["seed"])
    for job in jobs:
        dst = Path(job["path"])
        src = media / dst.relative_to(Path(out) / "media")
        dst.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
    return len(jobs)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory, demo_media) -> Path:
    """A prepared tiny demo dataset folder (see the module docstring); read-only for tests.

    Runs `prepare_dataset(load_config(None, TINY_DEMO_OVERRIDES), out)` in a fresh interpreter:
    its workers are forked, and a fork of a process that already ran OpenCV code (any test using
    optical_flow) deadlocks in the worker's cv2.setNumThreads (see test_prepare.py)."""
    out = tmp_path_factory.mktemp("tiny_demo") / "prepared"
    seed_demo_media(demo_media, out, TINY_DEMO_OVERRIDES["demo.train_videos"], TINY_DEMO_OVERRIDES["demo.test_videos"])
    code = ("import json, sys\n"
            "from gblend_cli.config import load_config\n"
            "from gblend_cli.prepare import prepare_dataset\n"
            "report = prepare_dataset(load_config(None, json.loads(sys.argv[1])), sys.argv[2])\n"
            "print(json.dumps({'ok': report['ok'], 'failed': report['failed']}))\n")
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(TINY_DEMO_OVERRIDES), str(out)],
                          env=gblend_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"ok": 48, "failed": []}, report
    return out


# building any of these takes more than ~20 s on 2 cores: every test that uses one is `slow`
SLOW_FIXTURES = {"train_chain", "bad_config", "reproduce_chain", "prepare_chain", "matrix_runs", "resumed"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


def gblend_env() -> dict:
    env = dict(os.environ)
    env.update({"PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb",
                "OMP_NUM_THREADS": "1"})
    return env


def gblend_cmd(*args) -> list[str]:
    return [sys.executable, "-m", "gblend_cli", *map(str, args)]


@pytest.fixture
def run_gblend(tmp_path):
    """run_gblend(*args, timeout=120, cwd=tmp_path) -> CompletedProcess (text, stdout/stderr)."""

    def run(*args, timeout: float = 120, cwd: Path | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(gblend_cmd(*args), cwd=cwd or tmp_path, env=gblend_env(), capture_output=True,
                              text=True, timeout=timeout)

    return run


class _TimeLimit(Exception):
    pass


@pytest.fixture
def time_limit():
    """`with time_limit(5): ...` fails the test if the block runs longer than 5 s (SIGALRM: it
    interrupts Python code, e.g. a demux loop that never ends)."""

    @contextlib.contextmanager
    def limit(seconds: float):
        def on_alarm(signum, frame):
            raise _TimeLimit(f"still running after {seconds} s")

        old = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        except _TimeLimit as e:
            pytest.fail(f"hang: {e}")
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)

    return limit


# ============================================================================================ guarantees
# (built once per session, shared by several test files; helpers in tests/reliability.py)

@pytest.fixture(scope="session")
def train_chain(tiny_demo, tmp_path_factory):
    """An offline G-Blend run: SIGKILL during the estimation (after its first epoch's checkpoint,
    before the run's epoch 1) -> --resume (continues the estimation), SIGINT
    (group) after the first checkpoint -> --resume, SIGTERM (main process) after the next
    checkpoint -> --resume to the end; an uninterrupted run with the same seed runs beside it."""
    from reliability import Proc, gblend_args, journal_lines, safe_check, wait_for

    tmp = tmp_path_factory.mktemp("train_chain")
    args = gblend_args(tiny_demo)
    ref = Proc([*args, "--out", tmp / "ref"], tmp, "ref")
    run = tmp / "run"
    last = run / "checkpoints" / "last.pt"
    stages: dict[str, dict] = {}

    p = Proc([*args, "--out", run], tmp, "kill_estimation")
    # the first estimator epoch is checkpointed (estimation.pt): kill in the middle of the estimation
    caught = wait_for(lambda: (run / "checkpoints" / "estimation.pt").exists(), p)
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


@pytest.fixture(scope="session")
def train_lock_scenario(tiny_demo, tmp_path_factory):
    """A run folder holding a stale .lock (a dead pid on this host): a train-unimodal run takes it
    over; while it holds the lock, the same command on the same --out is refused."""
    from reliability import TINY, Proc, hold_while_stopped, write_stale_lock

    tmp = tmp_path_factory.mktemp("train_lock")
    run = tmp / "run"
    stale = write_stale_lock(run)
    args = ["train-unimodal", "--modality", "rgb", "--data", tiny_demo, "--out", run, "--epochs", "3", "--seed", "2",
            *TINY]
    first = Proc(args, tmp, "first")
    held = hold_while_stopped(first, run, args, tmp)
    rc1 = first.wait()
    return {"run": run, "stale": stale, "first": first, "rc1": rc1, **held}


@pytest.fixture(scope="session")
def bad_config(tiny_demo, train_lock_scenario, tmp_path_factory):
    """Every refused command in its own folder, run a few at a time; snapshots before/after."""
    import torch
    from reliability import TINY, run_many, snapshot

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
    d = case("negative_epochs", [], ["--epochs", "-1"])  # named as the user typed it
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
    (run / "final.json").unlink()  # an unfinished run: --resume must read its newer checkpoint
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


MATRIX_ARGS = ["--epochs", "2", "--seed", "4", "--set", "model.visual_widths=[4,8,8,8]",
               "--set", "model.audio_widths=[4,8,8,8]", "--set", "train.batch_size=8", "--set", "clip.eval_clips=3",
               "--set", "train.train_eval_size=16", "--set", "train.eval_every=1",
               "--set", "clip.crop=12"]  # smaller than the 16-px frames, as in every real recipe: crops are drawn


@pytest.fixture(scope="session")
def matrix_runs(tiny_demo, tmp_path_factory) -> dict[str, Path]:
    """{name: run folder}, trained through the real entry point a few at a time (seed 4, 2 epochs):
    "ua"/"ur" uni-modal audio/RGB, "n" naive A+RGB, "self" offline G-Blend estimating its own
    weights, "from_runs" / "from_runs_acc" offline G-Blend reading Algorithm 2's terms from ua, ur
    and n (gblend.metric loss / accuracy), "equal" equal weights (the auxiliary-loss baseline);
    "ua5"/"ur5"/"n5" the same uni-modal and naive runs with seed 5, and "pooled" an offline G-Blend
    run (seed 4) reading its terms from both seeds' runs."""
    tmp = tmp_path_factory.mktemp("matrix")
    common = ["--data", tiny_demo, *MATRIX_ARGS]
    sources = ",".join(str(tmp / n) for n in ("ua", "ur", "n"))
    seed5 = ["--seed", "5"]  # after MATRIX_ARGS' --seed 4 (the last one counts): runs named *5
    rounds = [
        {"ua": ["train-unimodal", "--modality", "audio"], "ur": ["train-unimodal", "--modality", "rgb"],
         "ua5": ["train-unimodal", "--modality", "audio"]},
        {"n": ["train-naive", "--modalities", "audio,rgb"], "self": ["train-gblend", "--modalities", "audio,rgb"],
         "ur5": ["train-unimodal", "--modality", "rgb"], "n5": ["train-naive", "--modalities", "audio,rgb"]},
        {"from_runs": ["train-gblend", "--modalities", "audio,rgb", "--estimate-from", sources],
         "from_runs_acc": ["train-gblend", "--modalities", "audio,rgb", "--estimate-from", sources,
                           "--metric", "accuracy"],
         "equal": ["train-gblend", "--modalities", "audio,rgb", "--weights", "equal"],
         "pooled": ["train-gblend", "--modalities", "audio,rgb", "--estimate-from",
                    sources + "," + ",".join(str(tmp / n) for n in ("ua5", "ur5", "n5"))]},
    ]
    for r in rounds:
        procs = {name: subprocess.Popen(gblend_cmd(*args, *common, *(seed5 if name.endswith("5") else []),
                                                   "--out", tmp / name), env=gblend_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for name, args in r.items()}
        for name, p in procs.items():
            _, err = p.communicate(timeout=600)
            assert p.returncode == 0, (name, err[-3000:])
    return {name: tmp / name for r in rounds for name in r}
