"""The demo generator: the same seed gives the same files, whichever process renders them."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from conftest import gblend_env

RENDER = """
import hashlib, sys
from pathlib import Path
from gblend_cli import demo_data
from gblend_cli.config import load_config
p = load_config(None)["demo"]
out = Path(sys.argv[1])
jobs = demo_data.video_jobs(out, p, seed=0)
for j in jobs[:int(sys.argv[2])]:  # what this process encodes before the video we compare
    demo_data.render_job(dict(j, path=str(out / f"warm{j['index']}.mp4")), p)
demo_data.render_job(jobs[23], p)
print(hashlib.md5(Path(jobs[23]["path"]).read_bytes()).hexdigest())
"""


def test_a_demo_video_does_not_depend_on_what_its_process_encoded_before(tmp_path):
    # x264's lookahead once made the 24th video differ between a fresh worker and one that had
    # encoded 5 videos before it (demo data then depended on worker scheduling)
    digests = set()
    for warm in (0, 5):
        p = subprocess.run([sys.executable, "-c", RENDER, str(tmp_path / f"w{warm}"), str(warm)], env=gblend_env(),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr[-2000:]
        digests.add(p.stdout.split()[-1])
    assert len(digests) == 1, digests


def test_the_data_seed_chooses_the_videos_and_a_folder_keeps_its_seed(tmp_path, run_gblend):
    small = ["--set", "demo.train_videos=8", "--set", "demo.test_videos=8", "--set", "prepare.workers=1"]
    p = run_gblend("prepare-data", "--dataset", "demo", "--seed", "5", "--out", tmp_path / "d5", *small)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "seed = 5" in (tmp_path / "d5" / "prepare_config.toml").read_text()
    first = sorted((tmp_path / "d5" / "media" / "videos" / "train").rglob("*.mp4"))[0]
    assert first.name.startswith("d05t")  # the seed is part of every video id
    # another data seed into the same folder would mix two datasets: refused, nothing changed
    before = sorted(x.name for x in (tmp_path / "d5" / "rgb").iterdir())
    p = run_gblend("prepare-data", "--dataset", "demo", "--seed", "6", "--out", tmp_path / "d5", *small)
    assert p.returncode == 2 and "demo.seed" in p.stderr and len(p.stderr.strip().splitlines()) == 1
    assert sorted(x.name for x in (tmp_path / "d5" / "rgb").iterdir()) == before
    # and the seed, not the slot, decides what a video shows
    from gblend_cli import demo_data
    from gblend_cli.config import load_config

    p_demo = load_config(None)["demo"]
    paths = [demo_data.render_job(demo_data.video_jobs(tmp_path / f"s{seed}", p_demo, seed)[0], p_demo) for seed in (5, 6)]
    assert Path(paths[0]).read_bytes() != Path(paths[1]).read_bytes()


def test_blank_videos_drift_in_their_own_directions_and_blob_videos_do_not_change(monkeypatch):
    """`demo.drift_amp`: the blank videos' quadrants drift, each its own way, in a way 16-px DIS
    flow (what prepare-data computes for the demo) can follow; videos with a blob are the same
    files with or without it."""
    import math

    import cv2
    import numpy as np

    from gblend_cli import demo_data
    from gblend_cli.config import load_config
    from gblend_cli.media import dequantise_flow, optical_flow

    p = load_config(None)["demo"] | {"drift_amp": 0.8, "pixel_noise": 0.1, "texture_amp": 0.0}
    blob = p | {"blank_fraction": 0.0}
    for i in range(3):
        a, b = (demo_data.render_video(np.random.default_rng([0, 1, i]), i, q) for q in (blob, blob | {"drift_amp": 0.0}))
        np.testing.assert_array_equal(a, b)
    blank = p | {"blank_fraction": 1.0}
    drawn = []  # the velocities render_video draws, as it draws them
    draw = demo_data._drifting_quadrants
    monkeypatch.setattr(demo_data, "_drifting_quadrants", lambda *a: drawn.append(draw(*a)) or drawn[-1])
    true, seen = [], []
    for i in range(6):
        frames = demo_data.render_video(np.random.default_rng([0, 9, i]), 0, blank)
        quads = drawn[-1]
        small = np.stack([cv2.resize(f, (16, 16), interpolation=cv2.INTER_AREA) for f in frames])
        flow = dequantise_flow(optical_flow(small, "dis", 4.0), 4.0)
        for k, (vx, vy, _) in enumerate(quads):
            r, c = divmod(k, 2)
            true.append((vx / 2, vy / 2))  # px per frame at 16 px
            seen.append(flow[:-1, 8 * r + 2:8 * r + 6, 8 * c + 2:8 * c + 6].mean(axis=(0, 1, 2)))
    true, seen = np.array(true), np.array(seen)
    assert min(math.hypot(*v) for v in true) >= 0.7 * p["drift_speed"] / 2 - 1e-9
    assert np.corrcoef(true.ravel(), seen.ravel())[0, 1] > 0.7, (true, seen)
