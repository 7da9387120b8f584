"""Shared fixtures.

- ``tiny_demo``: a prepared demo dataset (32 train + 16 val clips, 8 classes, 2 s at 8 fps,
  32 px, audio + RGB + DIS flow), built once per session; returns the prepared folder. Treat it
  as read-only (copy it with ``shutil.copytree`` before changing anything in it).
- ``run_gblend``: run ``python -m gblend_cli ...`` in a subprocess (the real entry point, exit
  codes and stderr included).
- ``time_limit``: fail a test body that runs longer than N seconds instead of hanging.

`tests/media_factory.py` writes real media files for tests (``import media_factory``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:  # `import media_factory` from any test file
    sys.path.insert(0, str(TESTS_DIR))

TINY_DEMO_OVERRIDES = {"demo.train_videos": 32, "demo.test_videos": 16, "prepare.workers": 1}


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A prepared tiny demo dataset folder (see the module docstring); read-only for tests.

    Runs `prepare_dataset(load_config(None, TINY_DEMO_OVERRIDES), out)` in a fresh interpreter:
    its workers are forked, and a fork of a process that already ran OpenCV code (any test using
    optical_flow) deadlocks in the worker's cv2.setNumThreads (see test_prepare.py)."""
    out = tmp_path_factory.mktemp("tiny_demo") / "prepared"
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
